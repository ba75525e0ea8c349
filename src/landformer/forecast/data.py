"""From rasters to forecast windows: the series, its covariates, the spatial and temporal hold-outs.

**Series.** A list of rasters with their years (a config list, or a filename pattern such as
``hm_{year}.tif``), oldest first and evenly spaced: the ConvLSTM advances one cadence per step, so an irregular
series is refused rather than silently mis-timed. Every raster must share the first one's size, CRS and
transform; one on another grid is refused unless ``align_series`` is on, which resamples it onto the first
(bilinear, through core/raster.py) where it overlaps. A model's inputs must lie in its valid range (0..1 for HM):
values outside are refused, not clipped into a forecast. Values are divided by ``scale`` (10000 for HM published
as integers 0..10000, detected when not given) so the "series units" of every report are the index itself. Nodata pixels
and NaN are *missing*: they are masked in inputs, loss and metrics, never filled with zeros.

**Covariates** (a DEM, ...) are static rasters on any grid, aligned onto the series grid (bilinear, NaN where
they have no data). After normalization a missing covariate value becomes 0, the training mean.

**Windows.** A window starting at step ``s`` reads steps ``s .. s+K-1`` and forecasts ``s+K .. s+K+H-1``;
horizons past the series end have no ground truth and are masked. With HM 1990..2020 every 5 years
(T = 7 steps), K = 3 and H = 4:

=====  =================  ==================================  ==========================
start  inputs             targets (h = 1..4)                  used by
=====  =================  ==================================  ==========================
-1     - 1990 1995        2000 2005 2010 2015                 train/val (min_input_steps)
0      1990 1995 2000     2005 2010 2015 *2020*               train/val (2020 masked)
1      1995 2000 2005     2010 2015 *2020* -                  train/val (2020 masked)
2      2000 2005 2010     2015 *2020* - -                     train/val (2020 masked)
3      2005 2010 2015     *2020* - - -                        evaluation only
=====  =================  ==================================  ==========================

Start -1 has its first input missing (masked): with ``min_input_steps = 2`` such windows give the longest
horizon ground truth in training without touching 2020. **Temporal hold-out**: training and validation never
see the last step (2020), neither as a target nor as an input, and the normalizer is fitted without it.

**Spatial hold-out**: the raster is cut into square blocks (:class:`landformer.core.chips.BlockSplit`); a
``test_fraction`` of them is kept for ``forecast evaluate``, a ``val_fraction`` of the rest drives early
stopping and the best checkpoint, and training chips lie entirely inside the remaining blocks. Evaluation runs
every full window (starts 0..3 above, so every target year including 2020) on every held-out block, and also
reports the targets in the last step alone: places *and* a year that training never saw.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rasterio.windows import Window

from landformer.core.chips import BlockSplit
from landformer.core.errors import UserError
from landformer.core.normalize import AffineNormalizer, fit_normalizer
from landformer.core.raster import RasterGrid, aligned_vrt, open_raster
from landformer.forecast.config import ForecastDataConfig
from landformer.synth.world import load_world, make_world

log = logging.getLogger(__name__)

HM_SCALE = 10000.0  # HM published as integers: 0..10000 for 0..1
Purpose = Literal["train", "evaluate", "predict"]
Block = tuple[int, int, int, int]  # row, col, height, width


# ------------------------------------------------------------------------------------------------ the series


@dataclass(frozen=True)
class SeriesSpec:
    """The rasters of a series with their years, checked: increasing, evenly spaced."""

    paths: tuple[Path, ...]
    years: tuple[int, ...]

    @property
    def n_steps(self) -> int:
        return len(self.paths)

    @property
    def cadence(self) -> int | None:
        """Years between steps; None for a single raster (no spacing to speak of)."""
        return self.years[1] - self.years[0] if len(self.years) > 1 else None

    @classmethod
    def from_lists(cls, paths: Sequence[str | Path], years: Sequence[int]) -> SeriesSpec:
        paths = [Path(path) for path in paths]
        if not paths:
            raise UserError("forecast series: no rasters given")
        if len(paths) != len(years):
            raise UserError(f"forecast series: {len(paths)} rasters but {len(years)} years; give one year per raster")
        for (year_a, path_a), (year_b, path_b) in itertools.pairwise(zip(years, paths, strict=True)):
            if year_b <= year_a:
                raise UserError(
                    f"forecast series: dates out of order: {year_b} ({path_b.name}) follows {year_a} ({path_a.name}); "
                    "list rasters oldest first"
                )
        gaps = sorted({b - a for a, b in itertools.pairwise(years)})
        if len(gaps) > 1:
            raise UserError(
                f"forecast series: years {list(years)} are not evenly spaced (gaps {gaps}); the model steps one "
                "cadence at a time, so give rasters at a constant interval"
            )
        return cls(tuple(paths), tuple(int(year) for year in years))

    @classmethod
    def from_pattern(cls, pattern: str) -> SeriesSpec:
        """Every existing file matching ``pattern`` (``{year}`` stands for the year), ordered by year."""
        if "{year}" not in pattern:
            raise UserError(f"forecast series: pattern {pattern!r} should contain {{year}}, e.g. hm_{{year}}.tif")
        prefix, suffix = pattern.split("{year}", 1)
        if "{year}" in suffix:
            raise UserError(f"forecast series: pattern {pattern!r} should contain {{year}} only once")
        matcher = re.compile(re.escape(prefix) + r"(\d{1,4})" + re.escape(suffix))
        found = []
        for name in glob.glob(glob.escape(prefix) + "*" + glob.escape(suffix)):
            match = matcher.fullmatch(name)
            if match:
                found.append((int(match.group(1)), Path(name)))
        if not found:
            raise UserError(f"forecast series: no file matches pattern {pattern!r}")
        found.sort()
        return cls.from_lists([path for _, path in found], [year for year, _ in found])

    def require_steps(self, n_input_steps: int, purpose: Purpose) -> None:
        """Refuse a series too short for ``purpose``: predict needs K steps, evaluate K + 1, train K + 2."""
        needed = {"predict": n_input_steps, "evaluate": n_input_steps + 1, "train": n_input_steps + 2}[purpose]
        if self.n_steps >= needed:
            return
        why = {
            "predict": "K inputs",
            "evaluate": "K inputs and a target",
            "train": "K inputs, a training target and the last step held out for evaluation",
        }[purpose]
        raise UserError(
            f"forecast series: {self.n_steps} step(s) ({self.years[0]}..{self.years[-1]}) is fewer than the "
            f"{needed} needed to {purpose} with K = {n_input_steps} ({why})"
        )


def resolve_series(config: ForecastDataConfig, run_dir: Path | None, seed: int) -> tuple[SeriesSpec, list[Path]]:
    """The series and covariates a recipe names: a world folder (its HM series, its elevation first among the
    covariates), explicit rasters, a pattern, or, with none of these, a synthetic world built in
    ``run_dir/world`` (reused when it is already there, e.g. on --resume)."""
    config.validate()
    extra = [Path(path) for path in config.covariates]
    if config.series:
        return SeriesSpec.from_lists(config.series, config.years), extra
    if config.pattern:
        return SeriesSpec.from_pattern(config.pattern), extra
    if config.world is not None:
        world = load_world(config.world)
    elif run_dir is None:
        raise UserError("forecast data: no series given (world, series + years, or pattern)")
    elif (Path(run_dir) / "world" / "world.json").is_file():
        world = load_world(Path(run_dir) / "world")
    else:
        world_seed = seed if config.world_seed is None else config.world_seed
        log.info("no series given: building a %d px synthetic world (seed %d)", config.world_size, world_seed)
        world = make_world(Path(run_dir) / "world", size=config.world_size, seed=world_seed)
    return SeriesSpec.from_lists(world.hm, world.hm_years), [world.elevation, *extra]


def detect_scale(max_value: float, source: str) -> float:
    """10000 when valid values exceed 1 (HM stored as integers 0..10000), else 1."""
    if not math.isfinite(max_value):
        raise UserError(f"{source}: no valid pixel to read the value range from")
    if max_value <= 1.0 + 1e-6:
        return 1.0
    if max_value <= HM_SCALE:
        log.info("%s: values reach %g, read as HM scaled to 0..10000 (set scale to override)", source, max_value)
        return HM_SCALE
    return 1.0


def series_valid_range(setting: Sequence[float] | None, values: np.ndarray) -> tuple[float, float] | None:
    """The range forecasts are clipped to, in series units: ``setting`` when given, else 0..1 when every
    observed value (already divided by the scale) lies in it, as HM's do; else None (an unbounded series)."""
    if setting is not None:
        return float(setting[0]), float(setting[1])
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0 + 1e-6:
        return 0.0, 1.0
    return None


def same_grid(a: RasterGrid, b: RasterGrid) -> bool:
    """Same CRS and size, transforms equal to a millionth of a pixel."""
    if (a.width, a.height) != (b.width, b.height) or a.crs != b.crs:
        return False
    tolerance = 1e-6 * max(abs(a.transform.a), abs(a.transform.e))
    return a.transform.almost_equals(b.transform, precision=tolerance)


def read_padded(dataset: Any, row: int, col: int, height: int, width: int) -> np.ndarray:
    """(bands, height, width) float32 of a window that may leave the raster: NaN outside it and at nodata."""
    out = np.full((dataset.count, height, width), np.nan, dtype=np.float32)
    top, left = max(row, 0), max(col, 0)
    bottom, right = min(row + height, dataset.height), min(col + width, dataset.width)
    if bottom <= top or right <= left:
        return out
    data = dataset.read(window=Window(left, top, right - left, bottom - top))
    block = data.astype(np.float32)
    nodata = dataset.nodata
    if nodata is not None and not np.isnan(nodata):
        block[data == np.asarray(nodata).astype(data.dtype)] = np.nan
    out[:, top - row : bottom - row, left - col : right - col] = block
    return out


def _strip_year(name: str) -> str:
    """ "hm_1990" -> "hm": a channel keeps its name from one year to the next."""
    return re.sub(r"[_-]?\d{4}$", "", name)


def _series_channel_names(descriptions: Sequence[str | None], path: Path) -> list[str]:
    """One name per band: its description or the file name, without the year."""
    stem = _strip_year(path.stem) or "series"
    if len(descriptions) == 1:
        return [_strip_year(descriptions[0] or "") or stem]
    return [_strip_year(description or "") or f"{stem}_{band}" for band, description in enumerate(descriptions, 1)]


def _on_grid(dataset: Any, grid: RasterGrid, align: bool, what: str, reference: str) -> Any:
    """``dataset`` itself when it lies on ``grid``, else a bilinear view of it on ``grid`` (or a UserError)."""
    if same_grid(RasterGrid.of(dataset), grid):
        return dataset
    if not align:
        origin = f"origin {dataset.transform.c:g}, {dataset.transform.f:g}, pixel {dataset.transform.a:g}"
        raise UserError(
            f"{what} {dataset.name} lies on another grid than {reference} ({dataset.width}x{dataset.height} px, "
            f"{dataset.crs}, {origin} vs {grid.width}x{grid.height} px, {grid.crs}, origin {grid.transform.c:g}, "
            f"{grid.transform.f:g}, pixel {grid.transform.a:g}); align it with `landformer data align`, or resample "
            "it on the fly with --align-series (data.align_series: true)"
        )
    return aligned_vrt(dataset, grid)  # refuses, in one line, a raster that does not overlap


class SeriesRasters:
    """The open rasters of a series and its covariates, all read on the grid of the first series raster."""

    def __init__(
        self,
        spec: SeriesSpec,
        covariates: Sequence[str | Path] = (),
        align_series: bool = False,
        assume_crs: str | None = None,
    ) -> None:
        self.spec = spec
        self._stack = contextlib.ExitStack()
        try:
            self._open(covariates, align_series, assume_crs)
        except BaseException:
            self._stack.close()
            raise

    def _open(self, covariates: Sequence[str | Path], align_series: bool, assume_crs: str | None) -> None:
        enter = self._stack.enter_context
        first = enter(open_raster(self.spec.paths[0], assume_crs))
        self.grid = RasterGrid.of(first)
        self.nodata = first.nodata
        self.n_channels = first.count
        reference = f"the first series raster {self.spec.paths[0].name}"
        self.series = [first]
        for path in self.spec.paths[1:]:
            dataset = enter(open_raster(path, assume_crs))
            if dataset.count != self.n_channels:
                raise UserError(
                    f"forecast series: {path} has {dataset.count} band(s), {reference} has {self.n_channels}"
                )
            view = _on_grid(dataset, self.grid, align_series, "series raster", reference)
            if view is not dataset:
                enter(view)
            self.series.append(view)
        self.covariates = []
        self.covariate_names: list[str] = []
        for path in covariates:
            dataset = enter(open_raster(path, assume_crs))
            view = _on_grid(dataset, self.grid, True, "covariate", reference)
            if view is not dataset:
                enter(view)
            self.covariates.append(view)
            stem = Path(path).stem
            for band, description in enumerate(dataset.descriptions, start=1):
                name = description or (stem if dataset.count == 1 else f"{stem}_{band}")
                while name in self.covariate_names:
                    name = f"{name}_{len(self.covariate_names)}"
                self.covariate_names.append(name)
        self.channel_names = _series_channel_names(first.descriptions, self.spec.paths[0])

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> SeriesRasters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def n_covariates(self) -> int:
        return len(self.covariate_names)

    def read_series(
        self, row: int, col: int, height: int, width: int, steps: Sequence[int] | None = None
    ) -> np.ndarray:
        """(T, C, height, width) float32 raw values (not yet divided by the scale), NaN where missing."""
        steps = range(self.spec.n_steps) if steps is None else steps
        return np.stack([read_padded(self.series[step], row, col, height, width) for step in steps])

    def read_covariates(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """(V, height, width) float32 covariates on the series grid, NaN where missing."""
        if not self.covariates:
            return np.empty((0, height, width), dtype=np.float32)
        return np.concatenate([read_padded(dataset, row, col, height, width) for dataset in self.covariates])

    def sample_max(self, step: int = -1, n_windows: int = 16, side: int = 256) -> float:
        """Largest valid value in up to ``n_windows`` windows spread over one raster: enough to tell 0..1 data
        from 0..10000 data without reading a huge raster whole."""
        dataset = self.series[step]
        per_axis = max(1, math.isqrt(n_windows))
        rows = np.linspace(0, max(dataset.height - side, 0), per_axis).astype(int)
        cols = np.linspace(0, max(dataset.width - side, 0), per_axis).astype(int)
        best = -math.inf
        for row in rows:
            for col in cols:
                block = read_padded(dataset, int(row), int(col), min(side, dataset.height), min(side, dataset.width))
                if np.isfinite(block).any():
                    best = max(best, float(np.nanmax(block)))
        return best


# ---------------------------------------------------------------------------------------------- windows


def train_starts(n_steps: int, n_input_steps: int, min_input_steps: int | None = None) -> list[int]:
    """Window starts whose first target comes before the held-out last step.

    With ``min_input_steps`` < K, windows may also start before the series, their first inputs missing (and
    masked): the longest horizons then get ground truth in training too, which full windows cannot give them
    without reaching into the held-out step.
    """
    earliest = -(n_input_steps - (n_input_steps if min_input_steps is None else min_input_steps))
    return list(range(earliest, max(n_steps - n_input_steps - 1, 0)))


def eval_starts(n_steps: int, n_input_steps: int) -> list[int]:
    """Every window start with at least one target inside the series."""
    return list(range(max(n_steps - n_input_steps, 0)))


def cut_windows(
    values: np.ndarray, starts: Sequence[int], n_input_steps: int, n_horizons: int, last_target_step: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (N, K, C, Y, X) and targets (N, H, C, Y, X) of the windows ``starts`` of one (T, C, Y, X) stack.

    Steps before the series start (negative) and target steps after ``last_target_step`` (the hold-out, or the
    series end) are NaN: missing, not zero.
    """
    n_steps = values.shape[0]
    inputs = np.full((len(starts), n_input_steps, *values.shape[1:]), np.nan, dtype=np.float32)
    targets = np.full((len(starts), n_horizons, *values.shape[1:]), np.nan, dtype=np.float32)
    for index, start in enumerate(starts):
        for offset in range(n_input_steps):
            if 0 <= start + offset < n_steps:
                inputs[index, offset] = values[start + offset]
        for horizon in range(n_horizons):
            step = start + n_input_steps + horizon
            if 0 <= step <= min(last_target_step, n_steps - 1):
                targets[index, horizon] = values[step]
    return inputs, targets


# ------------------------------------------------------------------------------------------ split and chips


@dataclass(frozen=True)
class ForecastSplit:
    """Which square blocks of the raster are for training, validation and testing."""

    block_size: int
    test: np.ndarray  # (block rows, block cols) bool
    val: np.ndarray
    train: np.ndarray

    @classmethod
    def make(
        cls,
        height: int,
        width: int,
        chip_size: int,
        block_size: int,
        test_fraction: float,
        val_fraction: float,
        seed: int,
        source: str,
    ) -> ForecastSplit:
        split = BlockSplit.random(height, width, chip_size, block_size, test_fraction, seed, source)
        usable = split.usable_blocks(height, width, chip_size)
        if usable.sum() < 3:
            raise UserError(
                f"{source}: the {height}x{width} raster holds {int(usable.sum())} block(s) of {block_size} px able "
                f"to hold a {chip_size} px chip; train, validation and test need 3 (lower data.block_size)"
            )
        test = split.test_blocks
        val = split.validation_blocks(height, width, chip_size, val_fraction, seed, at_least_one=True)
        return cls(block_size, test, val, usable & ~test & ~val)

    def blocks(self, which: Literal["train", "val", "test"], height: int, width: int) -> list[Block]:
        """(row, col, height, width) windows of the chosen blocks, in raster order."""
        chosen = getattr(self, which)
        size = self.block_size
        return [
            (i * size, j * size, min(size, height - i * size), min(size, width - j * size))
            for i, j in zip(*np.nonzero(chosen), strict=True)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "block_size": self.block_size,
            "n_train_blocks": int(self.train.sum()),
            "n_val_blocks": int(self.val.sum()),
            "n_test_blocks": int(self.test.sum()),
            "test_blocks": [[int(i), int(j)] for i, j in zip(*np.nonzero(self.test), strict=True)],
            "val_blocks": [[int(i), int(j)] for i, j in zip(*np.nonzero(self.val), strict=True)],
        }


def _offsets(start: int, length: int, chip_size: int, stride: int) -> list[int]:
    """Chip offsets every ``stride`` px inside [start, start + length), plus one flush with the end."""
    last = start + length - chip_size
    offsets = list(range(start, last + 1, stride))
    if offsets and offsets[-1] != last:
        offsets.append(last)
    return offsets


@dataclass
class ChipStack:
    """Chips of the whole series: values (N, T, C, S, S) in series units, NaN where missing; covariates
    (N, V, S, S) NaN where missing; and their top-left pixels (N, 2)."""

    values: np.ndarray
    covariates: np.ndarray
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.values)


def read_chips(
    rasters: SeriesRasters,
    blocks: Sequence[tuple[int, int, int, int]],
    chip_size: int,
    stride: int,
    max_nodata: float,
    max_chips: int | None = None,
    seed: int = 0,
) -> ChipStack:
    """Chips every ``stride`` px inside each block (one read per block and raster), minus those missing more
    than ``max_nodata`` of their series pixels; a random ``max_chips`` of them when there are more. Values are
    raw (not yet divided by the scale)."""
    candidates = [
        (block_index, r, c)
        for block_index, (row, col, height, width) in enumerate(blocks)
        for r in _offsets(row, height, chip_size, stride)
        for c in _offsets(col, width, chip_size, stride)
    ]
    if max_chips is not None and len(candidates) > max_chips:
        keep = np.sort(np.random.default_rng([seed, 4]).choice(len(candidates), size=max_chips, replace=False))
        candidates = [candidates[i] for i in keep]
    values, covariates, positions = [], [], []
    for block_index, (row, col, height, width) in enumerate(blocks):
        in_block = [(r, c) for b, r, c in candidates if b == block_index]
        if not in_block:
            continue
        block_values = rasters.read_series(row, col, height, width)
        block_covariates = rasters.read_covariates(row, col, height, width)
        for r, c in in_block:
            chip = block_values[..., r - row : r - row + chip_size, c - col : c - col + chip_size]
            missing = float(np.isnan(chip).mean())
            if missing > max_nodata or missing == 1.0:
                continue
            values.append(chip)
            covariates.append(block_covariates[:, r - row : r - row + chip_size, c - col : c - col + chip_size])
            positions.append((r, c))
    n_steps, n_channels, n_covariates = rasters.spec.n_steps, rasters.n_channels, rasters.n_covariates
    if not values:
        return ChipStack(
            np.empty((0, n_steps, n_channels, chip_size, chip_size), np.float32),
            np.empty((0, n_covariates, chip_size, chip_size), np.float32),
            np.empty((0, 2), np.int64),
        )
    return ChipStack(np.stack(values), np.stack(covariates), np.array(positions, dtype=np.int64))


# --------------------------------------------------------------------------------------- model inputs


def normalize_inputs(
    inputs: np.ndarray,
    covariates: np.ndarray | None,
    normalizer: AffineNormalizer,
    covariate_normalizer: AffineNormalizer | None,
) -> dict[str, np.ndarray | None]:
    """Series (N, K, C, Y, X) and covariates (N, V, Y, X) in series units -> the model's normalized inputs:
    ``series`` (0 where missing), ``series_mask``, ``covariates`` (0, the training mean, where missing)."""
    mask = np.isfinite(inputs)
    series = np.where(mask, normalizer.transform(np.nan_to_num(inputs)), 0.0).astype(np.float32)
    if covariate_normalizer is None or covariates is None or covariates.shape[1] == 0:
        return {"series": series, "series_mask": mask, "covariates": None}
    normalized = covariate_normalizer.transform(covariates)
    return {"series": series, "series_mask": mask, "covariates": np.nan_to_num(normalized).astype(np.float32)}


@dataclass
class ForecastData:
    """Everything training needs: the opened data, its split, the fitted normalizers and the chips."""

    spec: SeriesSpec
    covariate_paths: list[Path]
    scale: float
    grid: RasterGrid
    split: ForecastSplit
    channel_names: list[str]
    covariate_names: list[str]
    normalizer: AffineNormalizer
    covariate_normalizer: AffineNormalizer | None
    train: ChipStack
    val: ChipStack
    config: ForecastDataConfig
    valid_range: tuple[float, float] | None

    @property
    def n_steps(self) -> int:
        return self.spec.n_steps

    def describe(self) -> dict[str, Any]:
        """The resolved data: what ``forecast evaluate`` needs to rebuild the same held-out blocks."""
        config = self.config
        return {
            "series": [str(path.resolve()) for path in self.spec.paths],
            "years": list(self.spec.years),
            "covariates": [str(path.resolve()) for path in self.covariate_paths],
            "scale": self.scale,
            "valid_range": None if self.valid_range is None else list(self.valid_range),
            "align_series": config.align_series,
            "assume_crs": config.assume_crs,
            "chip_size": config.chip_size,
            "block_size": config.block_size,
            "test_fraction": config.test_fraction,
            "val_fraction": config.val_fraction,
            "split_seed": config.split_seed,
            "split": self.split.to_dict(),
            "grid": {"width": self.grid.width, "height": self.grid.height, "crs": str(self.grid.crs)},
            "n_train_chips": len(self.train),
            "n_val_chips": len(self.val),
        }


def resolve_scale(scale: float | None, rasters: SeriesRasters) -> float:
    """``scale`` when given, else detected from a sample of the series' last raster."""
    if scale is not None:
        return float(scale)
    return detect_scale(rasters.sample_max(), str(rasters.spec.paths[-1]))


def load_forecast_data(config: ForecastDataConfig, spec: SeriesSpec, covariates: Sequence[Path]) -> ForecastData:
    """Open the series, split its blocks, read training and validation chips, fit the normalizers on the
    training chips without the held-out last step."""
    config.validate()
    spec.require_steps(config.n_input_steps, "train")
    with SeriesRasters(spec, covariates, config.align_series, config.assume_crs) as rasters:
        grid = rasters.grid
        if config.chip_size > min(grid.height, grid.width):
            raise UserError(
                f"forecast data: chip size {config.chip_size} is larger than the {grid.height}x{grid.width} series"
            )
        split = ForecastSplit.make(
            grid.height,
            grid.width,
            config.chip_size,
            config.block_size,
            config.test_fraction,
            config.val_fraction,
            config.split_seed,
            source=str(spec.paths[0]),
        )
        read = {"chip_size": config.chip_size, "max_nodata": config.max_nodata, "seed": config.split_seed}
        train_blocks = split.blocks("train", grid.height, grid.width)
        val_blocks = split.blocks("val", grid.height, grid.width)
        train = read_chips(rasters, train_blocks, stride=config.chip_stride, max_chips=config.max_train_chips, **read)
        if len(train) == 0:
            raise UserError(
                f"forecast data: every training chip misses more than max_nodata = {config.max_nodata} of its pixels"
            )
        val = read_chips(rasters, val_blocks, stride=config.chip_size, **read)
        if len(val) == 0:
            raise UserError("forecast data: no validation chip has enough valid pixels (raise data.max_nodata)")
        observed_max = float(np.nanmax(train.values)) if np.isfinite(train.values).any() else math.nan
        scale = float(config.scale) if config.scale is not None else detect_scale(observed_max, str(spec.paths[0]))
        train.values /= np.float32(scale)
        val.values /= np.float32(scale)
        held_in = train.values[:, : spec.n_steps - 1]  # the normalizer never sees the held-out last step
        normalizer = fit_normalizer(config.normalizer, held_in, np.isfinite(held_in))
        covariate_normalizer = None
        if rasters.n_covariates:
            covariate_normalizer = fit_normalizer(config.normalizer, train.covariates, np.isfinite(train.covariates))
        return ForecastData(
            spec=spec,
            covariate_paths=[Path(path) for path in covariates],
            scale=scale,
            grid=grid,
            split=split,
            channel_names=rasters.channel_names,
            covariate_names=rasters.covariate_names,
            normalizer=normalizer,
            covariate_normalizer=covariate_normalizer,
            train=train,
            val=val,
            config=config,
            valid_range=series_valid_range(config.valid_range, train.values),
        )


def check_valid_range(
    values: np.ndarray,
    valid_range: tuple[float, float] | None,
    paths: Sequence[Path],
    scale: float,
    row: int,
    col: int,
) -> None:
    """Refuse series values (T, C, h, w) in series units outside a model's valid range: a forecast from them
    would be clipped into that range without a word. ``paths`` are the T rasters, (row, col) the window's corner."""
    if valid_range is None:
        return
    low, high = valid_range
    tolerance = 1e-6 * max(1.0, high - low)
    with np.errstate(invalid="ignore"):
        outside = (values < low - tolerance) | (values > high + tolerance)
    if not outside.any():
        return
    step, _, y, x = (int(i) for i in np.argwhere(outside)[0])
    value = float(values[step, :, y, x][outside[step, :, y, x]][0])
    raw = f"{value * scale:g} ({value:g} after dividing by scale {scale:g})" if scale != 1 else f"{value:g}"
    raise UserError(
        f"{paths[step]}: value {raw} at row {row + y}, col {col + x} lies outside the model's valid range "
        f"{low:g}..{high:g} ({int(outside.sum())} such pixel(s) in rows {row}..{row + values.shape[-2]}); "
        "fix the raster, mark those pixels nodata, or give the right --scale"
    )


def iter_block_windows(
    rasters: SeriesRasters,
    blocks: Sequence[tuple[int, int, int, int]],
    scale: float,
    n_input_steps: int,
    n_horizons: int,
    valid_range: tuple[float, float] | None = None,
) -> Iterator[tuple[tuple[int, int, int, int], list[int], np.ndarray, np.ndarray, np.ndarray]]:
    """Per block: (block, starts, inputs (N, K, C, Y, X), targets (N, H, C, Y, X), covariates (N, V, Y, X)),
    every window with a target in the series, in series units (missing = NaN); values outside ``valid_range``
    are refused (:func:`check_valid_range`)."""
    n_steps = rasters.spec.n_steps
    starts = eval_starts(n_steps, n_input_steps)
    for block in blocks:
        values = rasters.read_series(*block) / np.float32(scale)
        check_valid_range(values, valid_range, rasters.spec.paths, scale, block[0], block[1])
        inputs, targets = cut_windows(values, starts, n_input_steps, n_horizons, last_target_step=n_steps - 1)
        static = rasters.read_covariates(*block)
        covariates = np.broadcast_to(static, (len(starts), *static.shape))
        yield block, starts, inputs, targets, covariates


class WindowDataset(torch.utils.data.Dataset):
    """Training or validation windows of a chip stack, normalized, as the model's tensors.

    One item is (chip, window start): ``series`` (K, C, S, S) with 0 where missing, ``series_mask``,
    ``covariates`` (V, S, S), ``target`` (H, C, S, S) with 0 where missing and ``target_mask``, which is False
    past ``last_target_step`` (the temporal hold-out). With ``augment`` each item is turned and flipped at random
    (the 8 symmetries of the square), the same way in every tensor.
    """

    def __init__(
        self,
        chips: ChipStack,
        starts: Sequence[int],
        n_input_steps: int,
        n_horizons: int,
        last_target_step: int,
        normalizer: AffineNormalizer,
        covariate_normalizer: AffineNormalizer | None,
        augment: bool = False,
    ) -> None:
        self.values = normalizer.transform(chips.values).astype(np.float32)  # NaN stays NaN
        if covariate_normalizer is not None and chips.covariates.shape[1]:
            self.covariates = np.nan_to_num(covariate_normalizer.transform(chips.covariates)).astype(np.float32)
        else:
            self.covariates = np.zeros((len(chips), 0, *chips.values.shape[-2:]), dtype=np.float32)
        self.index = [(chip, start) for chip in range(len(chips)) for start in starts]
        self.n_input_steps, self.n_horizons, self.last_target_step = n_input_steps, n_horizons, last_target_step
        self.augment = augment

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        chip, start = self.index[item]
        inputs, targets = cut_windows(
            self.values[chip], [start], self.n_input_steps, self.n_horizons, self.last_target_step
        )
        tensors = {
            "series": torch.from_numpy(np.nan_to_num(inputs[0])),
            "series_mask": torch.from_numpy(np.isfinite(inputs[0])),
            "covariates": torch.from_numpy(self.covariates[chip]),
            "target": torch.from_numpy(np.nan_to_num(targets[0])),
            "target_mask": torch.from_numpy(np.isfinite(targets[0])),
        }
        if self.augment:
            turns = int(torch.randint(4, ()))
            flip = bool(torch.randint(2, ()))
            for name, tensor in tensors.items():
                tensor = torch.rot90(tensor, turns, dims=(-2, -1))
                tensors[name] = (tensor.flip(-1) if flip else tensor).contiguous()
        return tensors
