"""Chips: square training samples cut from a class raster plus aligned covariates, split by spatial blocks.

The steps, in order:

1. choose chip windows: ``count`` random ones, or a regular grid with a ``stride``;
2. split the raster into square spatial blocks, hold out a ``test_fraction`` of them, and keep only chips that
   lie entirely inside one block, so no test chip shares a pixel with any train chip;
3. read the windows in raster order, region by region, so each part of the raster is decompressed once and
   memory stays bounded whatever the raster's size; covariates (a DEM in any CRS and resolution) are
   resampled bilinearly onto the class grid (:class:`~landformer.core.raster.AlignedCovariate`);
4. map raw class codes to indices through the legend (with ``unknown="error"``, a code the legend lacks
   anywhere in the class raster is refused before any chip is cut, not only one in a sampled window) and drop
   chips with too much nodata or too large a share of a limited class (``max_class_fraction``, e.g. ``{0: 0.5}``
   keeps IGBP chips that are at least half land);
   random chips are also de-duplicated (identical class + covariate chips are kept once, the first drawn);
   grid chips are every position, so identical chips of uniform areas stay;
5. write the chip file: ``train_data``/``test_data`` (N, C, H, W), ``train_coords``/``test_coords`` (N, 2)
   lon/lat of chip centres, a ``metadata`` JSON string, and the same JSON as a sidecar file.

Channel 0 holds class indices 0..K-1 with nodata :data:`~landformer.core.legend.NODATA_INDEX`; the data are
int16 without covariates and float32 with them (covariate nodata is NaN).

Files in the original four-array format record no legend; :func:`as_class_indices` says whether their channel 0
holds raw legend codes or indices, and refuses to guess when both readings fit but differ.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from affine import Affine
from numpy.lib.stride_tricks import sliding_window_view
from rasterio.windows import Window
from tqdm import tqdm

from landformer.core.config import option
from landformer.core.errors import UserError
from landformer.core.io import atomic_path, read_json, read_npz
from landformer.core.legend import NODATA_INDEX, Legend, load_legend
from landformer.core.raster import (
    AlignedCovariate,
    RasterGrid,
    chip_centre_lonlat,
    crs_name,
    display_name,
    iter_windows,
    lonlat_to_pixel,
    open_raster,
    parse_crs,
    refuse_infinite,
)

log = logging.getLogger(__name__)

CHIP_FORMAT = "landformer-chips"
CHIP_FORMAT_VERSION = 1
ARRAY_KEYS = ("train_data", "test_data", "train_coords", "test_coords")
CLASS_CHANNEL = "landcover"
DEFAULT_COUNT = 1000
REGION_SIZE = 512  # side of the raster regions read in one go; a few compressed tiles, a few MB
BATCH_SIZE = 4096  # windows whose covariate positions are projected in one call
GDAL_CACHE_BYTES = 128 * 2**20
MAX_DRAW_FACTOR = 20  # random sampling gives up after drawing this many times `count` windows
# Why each window read was kept or dropped (an int8 per window; counted into the chip file's metadata).
KEPT, DROPPED_NODATA, DROPPED_CLASS, DROPPED_DUPLICATE = 0, 1, 2, 3


@dataclass
class ChipConfig:
    """What to cut out of which rasters; see the module docstring. Loadable from YAML with ``load_config``; the
    :func:`~landformer.core.config.option` fields are also flags of ``landformer data chips``, whose help names
    their defaults."""

    class_raster: Path  # categorical raster (band 1) whose codes the legend maps to indices
    covariates: list[Path] = field(default_factory=list)  # continuous rasters; every band becomes a channel
    legend: str = option("nlcd", help="built-in legend (nlcd, corine, igbp) or legend JSON file (default: nlcd)")
    chip_size: int = option(32, help="chip side in pixels (default: 32)")
    count: int | None = None  # random sampling of `count` chips ...
    stride: int | None = None  # ... or a regular grid with this stride (default: count=1000)
    # a pixel counts as nodata when any channel lacks a value
    max_nodata: float = option(0.0, help="drop chips whose nodata fraction exceeds this (default: 0.0)")
    max_class_fraction: dict[int, float] = field(default_factory=dict)  # raw class code -> drop chips whose share
    # of that class exceeds this, e.g. {0: 0.5} for chips that are at least half land under the IGBP legend
    test_fraction: float = option(0.2, help="share of spatial blocks held out (default: 0.2)")
    block_size: int | None = option(None, help="side of the split blocks in pixels (default: 8 x chip size)")
    seed: int = option(0, help="seed for sampling and the split (default: 0)")
    unknown: Literal["error", "nodata"] = option(
        "error", help="what to do with class codes the legend lacks (default: error)"
    )
    assume_crs: str | None = option(None, help="CRS for rasters that carry none, e.g. EPSG:5070")
    # false: chips stored uncompressed, so loaders memory-map them (see load_chips)
    compress: bool = option(
        True,
        flag="--uncompressed",
        help="store the chips uncompressed, so DDP ranks and loader workers memory-map one shared copy",
    )

    def __post_init__(self) -> None:
        # YAML mappings and the config loader give keys as strings; class codes are integers.
        limits = {}
        for code, fraction in self.max_class_fraction.items():
            try:
                limits[int(code)] = fraction
            except ValueError:
                raise UserError(f"max class fraction: {code!r} is not an integer class code") from None
        self.max_class_fraction = limits

    def validate(self) -> None:
        """Refuse impossible settings before any raster is opened."""
        if self.chip_size < 1:
            raise UserError(f"chip size must be at least 1 pixel, got {self.chip_size}")
        if self.count is not None and self.stride is not None:
            raise UserError(f"give either count ({self.count}) or stride ({self.stride}), not both")
        if self.count is not None and self.count < 1:
            raise UserError(f"count must be at least 1, got {self.count}")
        if self.stride is not None and self.stride < 1:
            raise UserError(f"stride must be at least 1 pixel, got {self.stride}")
        if not 0.0 <= self.max_nodata <= 1.0:
            raise UserError(f"max nodata fraction must lie in [0, 1], got {self.max_nodata}")
        for code, fraction in self.max_class_fraction.items():
            if not 0.0 <= fraction <= 1.0:
                raise UserError(f"max class fraction of code {code} must lie in [0, 1], got {fraction}")
        if not 0.0 <= self.test_fraction <= 1.0:
            raise UserError(f"test fraction must lie in [0, 1], got {self.test_fraction}")
        if self.block_size is not None and self.block_size < self.chip_size:
            raise UserError(f"block size {self.block_size} is smaller than the chip size {self.chip_size}")
        if self.seed < 0:
            raise UserError(f"seed must be 0 or more, got {self.seed}")
        if self.unknown not in ("error", "nodata"):
            raise UserError(f"unknown must be 'error' or 'nodata', got {self.unknown!r}")

    @property
    def resolved_block_size(self) -> int:
        return self.block_size if self.block_size is not None else 8 * self.chip_size


@dataclass
class ChipSet:
    """A loaded chip file. ``metadata`` is empty for files that carry only the four arrays."""

    train_data: np.ndarray
    test_data: np.ndarray
    train_coords: np.ndarray
    test_coords: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    @property
    def legend(self) -> Legend:
        if "legend" not in self.metadata:
            raise UserError(f"chip file {self.source or ''} records no legend; rebuild it with `landformer data chips`")
        return Legend.from_dict(self.metadata["legend"], source=f"legend of chip file {self.source or ''}")

    def centre_pixels(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray] | str:
        """Chip centres (rows, cols) in pixels of the source grid for chip-centre ``coords`` (lon, lat), or why
        they cannot be known (a file without CRS and pixel size). Any origin will do: only differences between
        centres matter, to tell which chips overlap or share a spatial block."""
        crs, pixel_size = self.metadata.get("crs"), self.metadata.get("pixel_size")
        if not crs or not pixel_size:
            return "the chip file records no CRS and pixel size"
        width, height = (abs(float(v)) for v in pixel_size)
        grid = Affine(width, 0, 0, 0, -height, 0)
        return lonlat_to_pixel(grid, parse_crs(str(crs), "chip file CRS"), *np.asarray(coords, dtype=np.float64).T)

    @property
    def channel_names(self) -> list[str]:
        names = self.metadata.get("channel_names")
        if names:
            return list(names)
        return [CLASS_CHANNEL] + [f"channel{i}" for i in range(1, self.train_data.shape[1])]

    @property
    def chip_size(self) -> int:
        return int(self.train_data.shape[-1])

    @property
    def memory_mapped(self) -> bool:
        """Whether the chips are mapped from the file (shared by every process that maps it) rather than read."""
        return isinstance(self.train_data, np.memmap)


@dataclass(frozen=True)
class BlockSplit:
    """Square spatial blocks of ``block_size`` pixels tiling the raster from its top-left corner.

    ``test_blocks[i, j]`` says whether block row i, block column j is held out. A chip belongs to a block only
    if it lies entirely inside it; :meth:`axis_offsets` gives the chip positions for which that holds.
    """

    block_size: int
    test_blocks: np.ndarray

    @classmethod
    def random(
        cls, height: int, width: int, chip_size: int, block_size: int, test_fraction: float, seed: int, source: str
    ) -> BlockSplit:
        """Hold out ``round(test_fraction * n)`` of the n blocks that can hold a chip, chosen by ``seed``.

        With test_fraction 0 or 1 there is nothing to separate, so one block covers the raster and no chip
        is dropped for crossing a block edge.
        """
        if test_fraction in (0.0, 1.0):
            return cls(max(height, width), np.full((1, 1), test_fraction == 1.0))
        n_rows, n_cols = -(-height // block_size), -(-width // block_size)
        usable_rows = [min(block_size, height - i * block_size) >= chip_size for i in range(n_rows)]
        usable_cols = [min(block_size, width - j * block_size) >= chip_size for j in range(n_cols)]
        usable = np.flatnonzero(np.outer(usable_rows, usable_cols).ravel())
        if len(usable) < 2:
            raise UserError(
                f"{source}: the {height}x{width} raster holds only {len(usable)} split block(s) of {block_size} px "
                f"able to contain a {chip_size} px chip; lower --block-size (at least the chip size) or use "
                "--test-fraction 0"
            )
        n_test = min(max(round(test_fraction * len(usable)), 1), len(usable) - 1)
        rng = np.random.default_rng([seed, 1])
        test = np.zeros(n_rows * n_cols, dtype=bool)
        test[rng.choice(usable, size=n_test, replace=False)] = True
        return cls(block_size, test.reshape(n_rows, n_cols))

    @property
    def n_blocks(self) -> int:
        return int(self.test_blocks.size)

    @property
    def n_test_blocks(self) -> int:
        return int(self.test_blocks.sum())

    def axis_offsets(self, length: int, chip_size: int) -> np.ndarray:
        """Top-left offsets along one axis (rows or columns) where a chip fits inside the raster and one block."""
        offsets = np.arange(length - chip_size + 1, dtype=np.int64)
        return offsets[offsets // self.block_size == (offsets + chip_size - 1) // self.block_size]

    def is_test(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.test_blocks[np.asarray(rows) // self.block_size, np.asarray(cols) // self.block_size]

    def usable_blocks(self, height: int, width: int, chip_size: int) -> np.ndarray:
        """(block rows, block cols) bool: the blocks large enough to hold a ``chip_size`` chip (edge blocks may
        be clipped by the raster)."""
        n_rows, n_cols = self.test_blocks.shape
        rows = [min(self.block_size, height - i * self.block_size) >= chip_size for i in range(n_rows)]
        cols = [min(self.block_size, width - j * self.block_size) >= chip_size for j in range(n_cols)]
        return np.outer(rows, cols)

    def validation_blocks(
        self, height: int, width: int, chip_size: int, val_fraction: float, seed: int, at_least_one: bool = False
    ) -> np.ndarray:
        """(block rows, block cols) bool: ``val_fraction`` of the usable blocks (at least one if asked), drawn with
        ``seed`` among the usable blocks that are not test blocks; at least one such block is left to train on.
        The land-change and forecast pipelines both split their rasters this way."""
        usable = self.usable_blocks(height, width, chip_size)
        candidates = np.flatnonzero((usable & ~self.test_blocks).ravel())
        n_val = round(val_fraction * usable.sum())
        n_val = min(max(n_val, 1) if at_least_one else n_val, len(candidates) - 1)
        val = np.zeros(usable.size, dtype=bool)
        if n_val > 0:
            val[np.random.default_rng([seed, 3]).choice(candidates, size=n_val, replace=False)] = True
        return val.reshape(usable.shape)


class RandomWindows:
    """Draws distinct chip windows uniformly among ``row_offsets`` x ``col_offsets``, reproducibly from a seed."""

    def __init__(self, row_offsets: np.ndarray, col_offsets: np.ndarray, seed: int, expected: int) -> None:
        self.row_offsets, self.col_offsets = row_offsets, col_offsets
        self.total = len(row_offsets) * len(col_offsets)
        self.rng = np.random.default_rng([seed, 2])
        # Few positions: walk one permutation. Many: draw with rejection, remembering what was drawn.
        self._permutation = self.rng.permutation(self.total) if self.total <= max(2**20, 4 * expected) else None
        self._seen: set[int] = set()
        self.drawn = 0

    @property
    def exhausted(self) -> bool:
        return self.drawn >= self.total

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` windows (rows, cols) never drawn before; fewer only when every position was drawn."""
        n = min(n, self.total - self.drawn)
        if self._permutation is not None:
            flat = self._permutation[self.drawn : self.drawn + n]
        else:
            picked: list[int] = []
            while len(picked) < n:
                for value in self.rng.integers(self.total, size=n - len(picked) + 16).tolist():
                    if value not in self._seen:
                        self._seen.add(value)
                        picked.append(value)
                        if len(picked) == n:
                            break
            flat = np.array(picked, dtype=np.int64)
        self.drawn += n
        row_index, col_index = np.divmod(flat, len(self.col_offsets))
        return self.row_offsets[row_index], self.col_offsets[col_index]


def _channel_names(covariates: list[Any]) -> list[str]:
    """One name per covariate band: its band description, else the file name (plus band number)."""
    names = [CLASS_CHANNEL]
    for dataset in covariates:
        stem = Path(str(dataset.name).split("?")[0]).stem
        for band, description in enumerate(dataset.descriptions, start=1):
            name = description or (stem if dataset.count == 1 else f"{stem}_{band}")
            while name in names:
                name = f"{name}_{len(names)}"
            names.append(name)
    return names


class ChipExtractor:
    """Reads chips (class indices + aligned covariate channels) for many windows of one class raster.

    Windows are grouped by :data:`REGION_SIZE` regions of the raster and each group is served by ONE read of
    the bounding box of its windows instead of one small read per chip, so neighbouring chips share
    decompression. Covariates are sampled onto the class grid by :class:`AlignedCovariate`, whose projected
    source positions are computed for a whole batch of windows in one call.
    """

    def __init__(
        self,
        classes: Any,
        covariates: list[Any],
        legend: Legend,
        chip_size: int,
        unknown: Literal["error", "nodata"] = "error",
        region_size: int = REGION_SIZE,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self.classes, self.legend, self.chip_size, self.unknown = classes, legend, chip_size, unknown
        self.region_size, self.batch_size = region_size, batch_size
        self.grid = RasterGrid.of(classes)
        self.channel_names = _channel_names(covariates)
        self.covariates: list[AlignedCovariate] = []
        for dataset in covariates:
            self.covariates.append(
                AlignedCovariate(dataset, self.grid, reference_name=f"class raster {display_name(classes)}")
            )
        self.dtype = np.dtype(np.float32 if covariates else np.int16)
        self._build_lookup()

    def close(self) -> None:
        for covariate in self.covariates:
            covariate.close()

    def __enter__(self) -> ChipExtractor:
        # GDAL's block cache defaults to 5% of RAM and fills with every tile read; regions are visited in
        # raster order, so a modest cache keeps the tiles neighbours share and bounds memory.
        self._env = rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)
        self._env.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self._env.__exit__(*exc)

    def read(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """All chips (N, C, S, S) for top-left pixels (rows, cols), in the order given."""
        out = np.empty((len(rows), len(self.channel_names), self.chip_size, self.chip_size), dtype=self.dtype)
        for positions, chips in self.read_groups(rows, cols):
            out[positions] = chips
        return out

    def read_groups(self, rows: np.ndarray, cols: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (positions into rows/cols, chips) one raster region at a time, in raster order."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        regions_per_row = -(-self.grid.width // self.region_size)
        region = (rows // self.region_size) * regions_per_row + cols // self.region_size
        order = np.lexsort((cols, rows, region))
        starts = np.flatnonzero(np.diff(region[order], prepend=-1)).tolist()
        bounds = list(zip(starts, [*starts[1:], len(order)], strict=True))
        batch_start = 0
        while batch_start < len(bounds):
            # Whole groups, about batch_size windows: one projection call per covariate for the batch.
            batch_stop = batch_start + 1
            first = bounds[batch_start][0]
            while batch_stop < len(bounds) and bounds[batch_stop][1] - first <= self.batch_size:
                batch_stop += 1
            last = bounds[batch_stop - 1][1]
            batch = order[first:last]
            lattices = [cov.chip_lattice(rows[batch], cols[batch], self.chip_size) for cov in self.covariates]
            for start, stop in bounds[batch_start:batch_stop]:
                in_batch = slice(start - first, stop - first)
                group = batch[in_batch]
                group_lattices = [None if lattice is None else lattice[in_batch] for lattice in lattices]
                yield group, self._read_group(rows[group], cols[group], group_lattices)
            batch_start = batch_stop

    def _read_group(self, rows: np.ndarray, cols: np.ndarray, lattices: list[np.ndarray | None]) -> np.ndarray:
        size = self.chip_size
        top, left = int(rows.min()), int(cols.min())
        window = Window(left, top, int(cols.max()) + size - left, int(rows.max()) + size - top)
        raw = self.classes.read(1, window=window)
        indices = self._encode(sliding_window_view(raw, (size, size))[rows - top, cols - left], window)
        if not self.covariates:
            return indices[:, None]
        chips = np.empty((len(rows), len(self.channel_names), size, size), dtype=np.float32)
        chips[:, 0] = indices
        channel = 1
        for covariate, lattice in zip(self.covariates, lattices, strict=True):
            chips[:, channel : channel + covariate.count] = covariate.read_chips(rows, cols, size, lattice)
            channel += covariate.count
        return chips

    def check_codes(self, tile: int = 1024) -> None:
        """Refuse class codes the legend lacks anywhere in the class raster, not only in the windows that happen
        to be sampled (one windowed pass over the raster; a table lookup per pixel for 8- and 16-bit codes)."""
        for window in iter_windows(self.grid.height, self.grid.width, tile):
            self.read_classes(window)

    def read_classes(self, window: Window) -> np.ndarray:
        """One window of the class raster as legend indices (nodata -1); codes the legend lacks are a UserError
        that names the raster and the rows, as when chips are cut."""
        return self._encode(self.classes.read(1, window=window), window)

    def _encode(self, raw: np.ndarray, window: Window) -> np.ndarray:
        """Legend indices of raw class codes; the raster's own nodata value is nodata whatever the legend says."""
        if self._lookup is not None:
            offset = raw.astype(np.int32) - self._lookup_start if self._lookup_start else raw
            if self.unknown == "nodata" or self._known[offset].all():
                return self._lookup[offset]
        nodata = self.classes.nodata
        mask = None
        if nodata is not None:
            mask = np.isnan(raw) if np.isnan(nodata) else raw == nodata
            raw = np.where(mask, self.legend.codes[0], raw)
        where = f"{display_name(self.classes)} (rows {window.row_off}..{window.row_off + window.height})"
        indices = self.legend.encode(raw, unknown=self.unknown, source=where)
        if mask is not None:
            indices[mask] = NODATA_INDEX
        return indices

    def _build_lookup(self) -> None:
        """For 8- and 16-bit class rasters, one table from every possible code to its index (and whether known).

        A table lookup per chip is several times faster than encoding through the legend; codes the legend does
        not know still go through :meth:`Legend.encode`, which names them in its error.
        """
        self._lookup: np.ndarray | None = None
        self._lookup_start = 0
        dtype = np.dtype(self.classes.dtypes[0])
        if dtype.kind not in "iu" or dtype.itemsize > 2:
            return
        info = np.iinfo(dtype)
        codes = np.arange(info.min, info.max + 1)
        self._lookup = self.legend.encode(codes, unknown="nodata")
        self._known = np.isin(codes, [*self.legend.codes, *self.legend.nodata_codes])
        nodata = self.classes.nodata
        if nodata is not None and info.min <= nodata <= info.max and float(nodata).is_integer():
            self._lookup[int(nodata) - info.min] = NODATA_INDEX
            self._known[int(nodata) - info.min] = True
        self._lookup_start = int(info.min)


def nodata_fraction(chips: np.ndarray) -> np.ndarray:
    """Per chip, the fraction of pixels with no class or with a missing covariate value."""
    missing = chips[:, 0] == NODATA_INDEX
    if chips.dtype.kind == "f" and chips.shape[1] > 1:
        missing |= np.isnan(chips[:, 1:]).any(axis=1)
    return missing.mean(axis=(1, 2))


def class_pixel_counts(data: np.ndarray, n_classes: int) -> np.ndarray:
    """Pixels of each class index 0..n_classes-1 in channel 0 of (N, C, H, W) chips; nodata is not counted."""
    classes = data[:, 0]
    valid = (classes >= 0) & (classes < n_classes)
    return np.bincount(classes[valid].astype(np.int64), minlength=n_classes)


def split_class_shares(chips: ChipSet) -> dict[str, np.ndarray]:
    """Per split (``train``, ``test``), each class's share of all the split's pixels, in legend order; what the
    shares leave to 1 is nodata. An empty split has all shares 0."""
    n_classes = chips.legend.n_classes
    shares = {}
    for split, data in (("train", chips.train_data), ("test", chips.test_data)):
        pixels = data.shape[0] * data.shape[2] * data.shape[3]
        shares[split] = class_pixel_counts(data, n_classes) / pixels if pixels else np.zeros(n_classes)
    return shares


def warn_if_splits_differ(legend: Legend, train: np.ndarray, test: np.ndarray, source: str) -> None:
    """One warning line when train and test chips do not hold the same classes, naming what each split lacks:
    a class never seen in training cannot be scored fairly, one never tested is never checked."""
    if len(train) == 0 or len(test) == 0:
        return
    in_train = class_pixel_counts(train, legend.n_classes) > 0
    in_test = class_pixel_counts(test, legend.n_classes) > 0
    missing = []
    for split, lacking in (("test", in_train & ~in_test), ("train", in_test & ~in_train)):
        if lacking.any():
            names = ", ".join(f"{legend.names[i]} ({legend.codes[i]})" for i in np.flatnonzero(lacking))
            missing.append(f"missing from {split}: {names}")
    if missing:
        log.warning("%s: train and test chips hold different classes; %s", source, "; ".join(missing))


@dataclass(frozen=True)
class ChipFilter:
    """Which chips to keep: nodata fraction at most ``max_nodata``, and for each limited class index, its share
    of the chip's pixels at most the limit."""

    max_nodata: float
    class_limits: dict[int, float]  # class index -> largest share of the chip's pixels

    def reasons(self, chips: np.ndarray) -> np.ndarray:
        """Per chip, KEPT, DROPPED_NODATA or DROPPED_CLASS (int8)."""
        reasons = np.where(nodata_fraction(chips) > self.max_nodata, DROPPED_NODATA, KEPT).astype(np.int8)
        for index, limit in self.class_limits.items():
            share = (chips[:, 0] == index).mean(axis=(1, 2))
            reasons[(reasons == KEPT) & (share > limit)] = DROPPED_CLASS
        return reasons


@dataclass
class _Sampled:
    """Chips that passed the filters, in their final order: chip i is ``buffer[selection[i]]``.

    Keeping the read buffer and an index (rather than reordered copies) lets the train/test split gather
    each chip once, so peak memory stays near the size of the output. ``reasons`` holds why each window read was
    kept or dropped; ``windows_read`` counts the windows needed for the chips kept.
    """

    rows: np.ndarray
    cols: np.ndarray
    buffer: np.ndarray
    selection: np.ndarray
    reasons: np.ndarray
    deduplicated: bool

    @property
    def windows_read(self) -> int:
        return len(self.reasons)

    def counts(self) -> dict[str, int | None]:
        """Windows read and dropped per reason (duplicates None where chips were not de-duplicated)."""
        dropped = np.bincount(self.reasons, minlength=4)
        return {
            "windows_read": self.windows_read,
            "dropped_nodata": int(dropped[DROPPED_NODATA]),
            "dropped_class_fraction": int(dropped[DROPPED_CLASS]),
            "dropped_duplicates": int(dropped[DROPPED_DUPLICATE]) if self.deduplicated else None,
        }


def _extract_kept(
    extractor: ChipExtractor, rows: np.ndarray, cols: np.ndarray, chip_filter: ChipFilter, bar: tqdm
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read every window and keep the chips that pass the filter: (positions kept, their chips, the reason of
    every window)."""
    size = extractor.chip_size
    buffer = np.empty((len(rows), len(extractor.channel_names), size, size), dtype=extractor.dtype)
    reasons = np.empty(len(rows), dtype=np.int8)
    kept_positions = [np.empty(0, dtype=np.int64)]
    n_kept = 0
    for positions, chips in extractor.read_groups(rows, cols):
        reasons[positions] = chip_filter.reasons(chips)
        keep = reasons[positions] == KEPT
        n_new = int(keep.sum())
        buffer[n_kept : n_kept + n_new] = chips[keep]
        kept_positions.append(positions[keep])
        n_kept += n_new
        bar.update(len(positions))
    return np.concatenate(kept_positions), buffer[:n_kept], reasons


def _first_copies(positions: np.ndarray, buffer: np.ndarray, seen: set[bytes]) -> np.ndarray:
    """Which chips of ``buffer`` (read at draw ``positions``) are not copies of one drawn earlier: this call's
    earlier draws or any chip whose digest is in ``seen`` (updated). 128-bit digests: a collision is never."""
    first = np.zeros(len(positions), dtype=bool)
    for i in np.argsort(positions, kind="stable").tolist():
        digest = hashlib.blake2b(buffer[i].tobytes(), digest_size=16).digest()
        if digest not in seen:
            seen.add(digest)
            first[i] = True
    return first


def make_chips(config: ChipConfig, out: str | os.PathLike[str]) -> Path:
    """Cut chips as ``config`` says and write ``out`` (.npz) plus its JSON sidecar; returns ``out``."""
    config.validate()
    out = _chip_path(out)
    legend = load_legend(config.legend)
    chip_filter = ChipFilter(config.max_nodata, _class_limits(config, legend))
    size = config.chip_size
    with contextlib.ExitStack() as stack:
        classes = stack.enter_context(open_raster(config.class_raster, config.assume_crs))
        if size > classes.height or size > classes.width:
            raise UserError(
                f"chip size {size} is larger than raster {classes.source_name} ({classes.height}x{classes.width} px)"
            )
        covariates = [stack.enter_context(open_raster(path, config.assume_crs)) for path in config.covariates]
        extractor = stack.enter_context(ChipExtractor(classes, covariates, legend, size, config.unknown))
        if config.unknown == "error":
            extractor.check_codes()
        split = BlockSplit.random(
            classes.height,
            classes.width,
            size,
            config.resolved_block_size,
            config.test_fraction,
            config.seed,
            source=classes.source_name,
        )
        row_offsets = split.axis_offsets(classes.height, size)
        col_offsets = split.axis_offsets(classes.width, size)
        bar = stack.enter_context(tqdm(desc="chips", unit="chip", disable=None, dynamic_ncols=True))
        sample = (_grid_chips if config.stride is not None else _random_chips)(
            extractor, row_offsets, col_offsets, config, chip_filter, bar
        )
        rows, cols = sample.rows, sample.cols
        if len(rows) == 0:
            raise UserError(
                f"{classes.source_name}: none of {sample.windows_read} chip(s) passes {_filter_flags(config)}"
            )
        lon, lat = chip_centre_lonlat(extractor.grid, rows, cols, size)
        coords = np.stack([lon, lat], axis=1)
        test = split.is_test(rows, cols)
        metadata = {
            "format": CHIP_FORMAT,
            "format_version": CHIP_FORMAT_VERSION,
            "landformer_version": _version(),
            "legend": legend.to_dict(),
            "crs": crs_name(classes.crs),
            "pixel_size": [abs(classes.transform.a), abs(classes.transform.e)],
            "chip_size": size,
            "channel_names": extractor.channel_names,
            "dtype": extractor.dtype.name,
            "nodata": {"class_index": NODATA_INDEX, "covariates": "NaN"},
            "sources": {
                "class_raster": classes.source_name,
                "covariates": [dataset.source_name for dataset in covariates],
            },
            "sampling": {
                "mode": "grid" if config.stride is not None else "random",
                "count": (config.count or DEFAULT_COUNT) if config.stride is None else None,
                "stride": config.stride,
                "max_nodata": config.max_nodata,
                "max_class_fraction": {str(code): limit for code, limit in config.max_class_fraction.items()},
                "unknown": config.unknown,
            },
            "split": {
                "block_size": split.block_size,
                "test_fraction": config.test_fraction,
                "seed": config.seed,
                "n_blocks": split.n_blocks,
                "n_test_blocks": split.n_test_blocks,
            },
            "counts": {"train": int((~test).sum()), "test": int(test.sum()), **sample.counts()},
        }
        train_chips, test_chips = sample.buffer[sample.selection[~test]], sample.buffer[sample.selection[test]]
        del sample
        warn_if_splits_differ(legend, train_chips, test_chips, str(out))
        return write_chips(out, train_chips, test_chips, coords[~test], coords[test], metadata, config.compress)


def _class_limits(config: ChipConfig, legend: Legend) -> dict[int, float]:
    """``max_class_fraction`` by class index; a code the legend lacks is a UserError."""
    index_of = {code: index for index, code in enumerate(legend.codes)}
    unknown = sorted(set(config.max_class_fraction) - set(index_of))
    if unknown:
        raise UserError(
            f"max class fraction names code(s) {unknown}, which are not classes of legend '{legend.name}' "
            f"(codes {legend.codes[0]}..{legend.codes[-1]})"
        )
    return {index_of[code]: limit for code, limit in config.max_class_fraction.items()}


def _filter_flags(config: ChipConfig) -> str:
    """The filters a chip must pass, as the flags that set them: ``--max-nodata 0 --max-class-fraction 0=0.5``."""
    flags = f"--max-nodata {config.max_nodata:g}"
    for code, limit in config.max_class_fraction.items():
        flags += f" --max-class-fraction {code}={limit:g}"
    return flags


def _grid_chips(
    extractor: ChipExtractor,
    row_offsets: np.ndarray,
    col_offsets: np.ndarray,
    config: ChipConfig,
    chip_filter: ChipFilter,
    bar: tqdm,
) -> _Sampled:
    """Every ``stride``-th position that fits a block, in row-major order, minus the chips the filter drops."""
    assert config.stride is not None
    grid_rows = row_offsets[row_offsets % config.stride == 0]
    grid_cols = col_offsets[col_offsets % config.stride == 0]
    rows, cols = (axis.ravel() for axis in np.meshgrid(grid_rows, grid_cols, indexing="ij"))
    bar.reset(total=len(rows))
    positions, buffer, reasons = _extract_kept(extractor, rows, cols, chip_filter, bar)
    selection = np.argsort(positions, kind="stable")
    positions = positions[selection]
    return _Sampled(rows[positions], cols[positions], buffer, selection, reasons, deduplicated=False)


def _random_chips(
    extractor: ChipExtractor,
    row_offsets: np.ndarray,
    col_offsets: np.ndarray,
    config: ChipConfig,
    chip_filter: ChipFilter,
    bar: tqdm,
) -> _Sampled:
    """The first ``count`` random windows (in draw order) that pass the filter and are no copy of an earlier one.

    Windows are drawn in rounds: the first asks for exactly ``count``; later rounds make up for dropped chips,
    scaled by the share kept so far, until ``count`` chips pass, every position was tried, or
    ``MAX_DRAW_FACTOR * count`` windows were read. Identical chips (a uniform forest, open water) would weigh
    twice in training and could sit in both splits, so only the first drawn is kept.
    """
    count = config.count or DEFAULT_COUNT
    sampler = RandomWindows(row_offsets, col_offsets, config.seed, expected=count)
    all_rows, all_cols, all_reasons, kept_draws, buffers = [], [], [], [], []
    seen: set[bytes] = set()
    n_kept = 0
    bar.reset(total=count)
    while n_kept < count and not sampler.exhausted and sampler.drawn < MAX_DRAW_FACTOR * count:
        keep_rate = n_kept / sampler.drawn if sampler.drawn else 1.0
        wanted = count - n_kept if sampler.drawn == 0 else int((count - n_kept) / max(keep_rate, 0.05) * 1.1) + 1
        first_draw = sampler.drawn
        rows, cols = sampler.draw(wanted)
        if sampler.drawn > count:
            bar.total = sampler.drawn
            bar.refresh()
        positions, buffer, reasons = _extract_kept(extractor, rows, cols, chip_filter, bar)
        first = _first_copies(positions, buffer, seen)
        reasons[positions[~first]] = DROPPED_DUPLICATE
        positions, buffer = positions[first], buffer[first]
        all_rows.append(rows)
        all_cols.append(cols)
        all_reasons.append(reasons)
        kept_draws.append(positions + first_draw)
        buffers.append(buffer)
        n_kept += len(positions)
    if n_kept < count:
        log.warning(
            "%s: only %d of %d requested chips pass %s and are distinct (%d windows tried)",
            extractor.classes.source_name,
            n_kept,
            count,
            _filter_flags(config),
            sampler.drawn,
        )
    draws = np.concatenate(kept_draws)
    selection = np.argsort(draws, kind="stable")[:count]
    draws = draws[selection]
    rows, cols = np.concatenate(all_rows)[draws], np.concatenate(all_cols)[draws]
    buffer = buffers[0] if len(buffers) == 1 else np.concatenate(buffers)
    # Windows after the last chip kept were read only because rounds overshoot: a one-by-one draw stops there.
    needed = int(draws[-1]) + 1 if n_kept >= count else sampler.drawn
    return _Sampled(rows, cols, buffer, selection, np.concatenate(all_reasons)[:needed], deduplicated=True)


def _version() -> str:
    from landformer import __version__

    return __version__


def _chip_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.suffix != ".npz":
        raise UserError(f"chip file {path} should end in .npz")
    return path


def write_chips(
    out: str | os.PathLike[str],
    train_data: np.ndarray,
    test_data: np.ndarray,
    train_coords: np.ndarray,
    test_coords: np.ndarray,
    metadata: dict[str, Any],
    compress: bool = True,
) -> Path:
    """Write the chip file and its JSON sidecar together: both appear, or (on any error) neither does.

    ``compress=False`` stores the arrays uncompressed (several times larger for class chips), so that
    :func:`load_chips` maps them from the file instead of reading them: DDP ranks and data-loader workers on one
    machine then share one copy in the page cache. Either way it is an ``.npz`` that ``np.load`` reads.
    """
    out = _chip_path(out)
    text = json.dumps(metadata, indent=2)
    arrays = {
        "train_data": train_data,
        "test_data": test_data,
        "train_coords": train_coords.astype(np.float64),
        "test_coords": test_coords.astype(np.float64),
        "metadata": np.array(text),
    }
    with atomic_path(out) as npz_tmp, atomic_path(out.with_suffix(".json")) as json_tmp:
        _save_npz(npz_tmp, arrays, compress)
        json_tmp.write_text(text + "\n", encoding="utf-8")
    return out


def _save_npz(path: Path, arrays: dict[str, np.ndarray], compress: bool) -> None:
    """Like ``np.savez_compressed`` (same file format) but at deflate level 1: several times faster to write;
    like ``np.savez`` when not ``compress``.

    Class channels still shrink about tenfold; float covariates barely compress at any level.
    """
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=compression, compresslevel=1 if compress else None) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def load_chips(path: str | os.PathLike[str], mmap: bool = True) -> ChipSet:
    """Load and check a chip file; anything off (keys, shapes, coordinates, class indices) is a UserError.

    Files with only the four arrays (the original land-cover GPT format) load with empty metadata, unless a
    JSON sidecar lies beside them. (N, H, W) data count as one channel. With ``mmap``, chip arrays stored
    uncompressed (``write_chips(compress=False)``, ``np.savez``) are memory-mapped copy-on-write rather than read
    (:attr:`ChipSet.memory_mapped`); compressed ones are always read into memory.
    """
    path = Path(path)
    mapped = ("train_data", "test_data") if mmap else ()
    arrays = read_npz(path, required=ARRAY_KEYS, what="chip file", mmap=mapped)
    metadata = _read_metadata(path, arrays.get("metadata"))
    train, test = arrays["train_data"], arrays["test_data"]
    if train.ndim == 3:
        train = train[:, None]
    if test.ndim == 3:
        test = test[:, None]
    if test.size == 0 and test.ndim != 4:
        test = np.empty((0, *train.shape[1:]), dtype=train.dtype)
    for name, data in (("train_data", train), ("test_data", test)):
        if data.ndim != 4 or data.shape[2] != data.shape[3]:
            raise UserError(f"chip file {path}: {name} should be (N, C, H, W) with H == W, got {data.shape}")
        if data.dtype.kind not in "iuf":
            raise UserError(f"chip file {path}: {name} holds {data.dtype}, expected numbers")
        refuse_infinite(data, f"chip file {path}: {name}")
    if train.shape[1:] != test.shape[1:]:
        raise UserError(f"chip file {path}: train chips {train.shape[1:]} and test chips {test.shape[1:]} differ")
    _check_coords(path, "train_coords", arrays["train_coords"], len(train))
    _check_coords(path, "test_coords", arrays["test_coords"], len(test))
    chips = ChipSet(
        train, test, arrays["train_coords"].reshape(-1, 2), arrays["test_coords"].reshape(-1, 2), metadata, path
    )
    _check_metadata(path, chips)
    return chips


def _read_metadata(path: Path, stored: np.ndarray | None) -> dict[str, Any]:
    sidecar = path.with_suffix(".json")
    if stored is None:
        return read_json(sidecar, "chip sidecar") if sidecar.exists() else {}
    if stored.ndim != 0 or stored.dtype.kind != "U":
        raise UserError(f"chip file {path}: 'metadata' should be one JSON string, got {stored.dtype} {stored.shape}")
    try:
        metadata = json.loads(str(stored))
    except json.JSONDecodeError as err:
        raise UserError(f"chip file {path}: 'metadata' is not valid JSON: {err}") from None
    if not isinstance(metadata, dict):
        raise UserError(f"chip file {path}: 'metadata' should be a JSON object")
    return metadata


def _check_coords(path: Path, name: str, coords: np.ndarray, n_chips: int) -> None:
    if coords.shape != (n_chips, 2) and not (n_chips == 0 and coords.size == 0):
        raise UserError(f"chip file {path}: {name} should be ({n_chips}, 2) lon/lat, got {coords.shape}")
    if coords.size == 0:
        return
    if coords.dtype.kind not in "iuf" or not np.isfinite(coords).all():
        raise UserError(f"chip file {path}: {name} holds non-finite or non-numeric coordinates")
    if np.abs(coords[:, 1]).max() > 90 or np.abs(coords[:, 0]).max() > 360:
        raise UserError(f"chip file {path}: {name} are not lon/lat degrees (|lat| <= 90, |lon| <= 360)")


def _check_metadata(path: Path, chips: ChipSet) -> None:
    if not chips.metadata:
        return
    names = chips.metadata.get("channel_names")
    if names is not None and len(names) != chips.train_data.shape[1]:
        raise UserError(f"chip file {path}: {len(names)} channel names for {chips.train_data.shape[1]} channels")
    size = chips.metadata.get("chip_size")
    if size is not None and size != chips.chip_size:
        raise UserError(f"chip file {path}: metadata says chip size {size}, arrays hold {chips.chip_size}")
    if "legend" in chips.metadata:
        n_classes = chips.legend.n_classes
        for data in (chips.train_data, chips.test_data):
            if data.size == 0:
                continue
            classes = np.asarray(data)[:, 0]  # a plain view: nanmin copies array subclasses such as memmaps
            lo, hi = np.nanmin(classes), np.nanmax(classes)
            if lo < NODATA_INDEX or hi >= n_classes:
                raise UserError(
                    f"chip file {path}: channel 0 holds class indices {lo:g}..{hi:g}, outside "
                    f"{NODATA_INDEX}..{n_classes - 1} of legend '{chips.legend.name}'"
                )


def as_class_indices(
    chips: ChipSet,
    legend: Legend,
    class_values: Literal["raw", "indices"] | None,
    setting: str = "class_values",
) -> ChipSet:
    """``chips`` with channel 0 holding class indices of ``legend`` (nodata codes become NODATA_INDEX).

    A file that records a legend holds indices by contract. A file in the original four-array format may hold
    raw legend codes (NLCD 11..95) or indices 0..K-1, and ``class_values`` says which. Left unset, the values
    decide when only one reading fits them (one warning line says which was taken) or when both readings give
    the same indices (IGBP codes 0..16); when both fit and differ, as CORINE codes 1..41 do (valid indices of its
    44 classes too), it is a UserError naming ``setting``: a guess would shift every class by one.
    """
    source = chips.source or "chip file"
    if "legend" in chips.metadata:
        if class_values == "raw":
            raise UserError(f"chip file {source} records its legend, so it holds class indices; unset {setting}")
        return chips
    values = _channel0_values(chips)
    if class_values is None:
        class_values = _reading_of(values, legend, str(source), setting)
    if class_values == "indices":
        return chips
    unknown = values[~np.isin(values, [*legend.codes, *legend.nodata_codes])]
    if unknown.size:
        shown = ", ".join(f"{value:g}" for value in unknown[:20]) + (" ..." if unknown.size > 20 else "")
        raise UserError(f"chip file {source}: {setting}=raw, but class values {shown} are not codes of '{legend.name}'")
    where = f"chip file {source}"
    return replace(
        chips,
        train_data=_codes_to_indices(chips.train_data, legend, where),
        test_data=_codes_to_indices(chips.test_data, legend, where),
    )


def _channel0_values(chips: ChipSet) -> np.ndarray:
    """The distinct values of channel 0 over both splits, NaN (nodata of float files) left out."""
    values = np.unique(np.concatenate([np.unique(chips.train_data[:, 0]), np.unique(chips.test_data[:, 0])]))
    return values[~np.isnan(values)] if values.dtype.kind == "f" else values


def _reading_of(values: np.ndarray, legend: Legend, source: str, setting: str) -> Literal["raw", "indices"]:
    """``"raw"`` or ``"indices"``: the one reading that fits ``values``; a UserError when none or two differing do."""
    integral = bool(np.all(values == np.round(values)))
    fits_indices = integral and bool(np.all((values >= NODATA_INDEX) & (values < legend.n_classes)))
    fits_codes = integral and bool(np.all(np.isin(values, [*legend.codes, *legend.nodata_codes])))
    span = f"{values.min():g}..{values.max():g}" if values.size else "none"
    if fits_indices and fits_codes:
        if np.array_equal(legend.encode(values), values):
            return "indices"  # the legend maps these codes to themselves: both readings agree
        raise UserError(
            f"chip file {source} records no legend and its class values {span} are both '{legend.name}' codes and "
            f"class indices, which differ: set {setting}=raw or {setting}=indices"
        )
    if fits_codes or fits_indices:
        reading: Literal["raw", "indices"] = "raw" if fits_codes else "indices"
        what = "raw codes" if fits_codes else "class indices"
        log.warning(
            "chip file %s: class values %s fit legend '%s' only as %s: read so (set %s=%s to say it)",
            source,
            span,
            legend.name,
            what,
            setting,
            reading,
        )
        return reading
    raise UserError(
        f"chip file {source}: class values {span} are neither codes of legend '{legend.name}' nor its class indices "
        f"{NODATA_INDEX}..{legend.n_classes - 1}"
    )


def _codes_to_indices(data: np.ndarray, legend: Legend, source: str) -> np.ndarray:
    """(N, C, H, W) chips with channel 0 mapped from raw codes to legend indices; covariates unchanged."""
    out = data.astype(np.result_type(data.dtype, np.int16))
    out[:, 0] = legend.encode(data[:, 0], source=source)
    return out
