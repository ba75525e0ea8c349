"""Land change between two epochs of one legend: pairs, held-out blocks, the field's measures and baselines.

This module is plain NumPy (no torch); the change model itself lives in ``change_model.py``.

**Pairs.** Two class rasters t1 and t2 must share CRS, transform and size. When they do not, nothing is
resampled silently: :func:`open_pair` refuses, or with ``align=True`` reads t2 through a nearest-neighbour view
on t1's grid and warns with the offset of the two grids in t1 pixels and the share of the changes it then sees
that are one-pixel edge swaps (t2's class is one of t1's 8 neighbours' classes), the tell-tale of a grid offset.

**Blocks.** The pair is cut into square blocks with one role each: train, validation or test
(:func:`block_roles`). The chip file of a pair (:func:`make_pair_chips`) holds train-block chips as its
``train_data`` and validation-block chips as its ``test_data`` (so training's validation loss never sees a test
block); test blocks are read back from the rasters only for evaluation. A chip's channel 0 is t2's class index,
channels 1..K the one-hot t1 map: the chip-file contract with t1 as covariates, which the land-cover model reads
unchanged through its covariate prefix.

**Measures** (Pontius et al.): for a predicted t2 against the observed t2, given t1, every pixel is a *hit*
(observed change, predicted as change to the right class), a *wrong hit* (change predicted, wrong class), a
*miss* (observed change, predicted persistence), a *false alarm* (observed persistence, predicted change) or a
correct rejection; the Figure of Merit is hits / (hits + wrong hits + misses + false alarms). Quantity and
allocation disagreement (Pontius and Millones 2011) split 1 - accuracy of the t2 maps into how much of each
class is wrong and where it is wrong.

**Baselines.** Persistence (t2 = t1), and Markov-CA: a transition matrix counted on the train blocks gives how
many pixels of each class i turn into each class j in the region (its quantity), and a cellular-automaton
neighbourhood rule gives where (allocation): pixels of class i are ranked by the share of class j in their
(2r+1)^2 neighbourhood on the t1 map, as the classic tools' contiguity filters do.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.warp
from rasterio.windows import Window
from scipy import ndimage

from landformer.core.chips import CHIP_FORMAT, CHIP_FORMAT_VERSION, BlockSplit, ChipExtractor, write_chips
from landformer.core.errors import UserError
from landformer.core.legend import NODATA_INDEX, Legend, load_legend
from landformer.core.raster import RasterGrid, aligned_vrt, chip_centre_lonlat, crs_name, iter_windows, open_raster

TRAIN, VALIDATION, TEST = 0, 1, 2
SMOOTHING = 0.5  # add-1/2 on transition counts: the Markov baseline's bits stay finite for unseen transitions


# ---------------------------------------------------------------------------------------------------- pairs


@dataclass
class PairCheck:
    """How t2 was put on t1's grid, and what its changes look like."""

    aligned: bool  # True when t2 was resampled onto t1's grid
    offset_pixels: tuple[float, float]  # t2's upper-left corner on t1's grid, (columns, rows) of t1 pixels
    scale: tuple[float, float]  # t2's pixel size over t1's, (x, y)
    changed_share: float  # pixels valid in both whose class differs
    edge_swap_share: float  # of those, the share whose t2 class is the t1 class of one of its 8 neighbours

    def to_dict(self) -> dict[str, Any]:
        return {
            "aligned": self.aligned,
            "offset_pixels": list(self.offset_pixels),
            "scale": list(self.scale),
            "changed_share": self.changed_share,
            "edge_swap_share": self.edge_swap_share,
        }


def _grid_difference(t1: RasterGrid, t2: RasterGrid) -> str | None:
    """What differs between two grids (CRS, size, transform), or None when they are the same."""
    if t1.crs != t2.crs:
        return f"CRS {crs_name(t2.crs)} (t1: {crs_name(t1.crs)})"
    if (t1.width, t1.height) != (t2.width, t2.height):
        return f"size {t2.width}x{t2.height} px (t1: {t1.width}x{t1.height})"
    pixel = max(abs(t1.transform.a), abs(t1.transform.e))
    if not t1.transform.almost_equals(t2.transform, precision=1e-6 * pixel):
        return f"transform {tuple(t2.transform)[:6]} (t1: {tuple(t1.transform)[:6]})"
    return None


def grid_offset(t1: RasterGrid, t2: RasterGrid) -> tuple[tuple[float, float], tuple[float, float]]:
    """t2's upper-left corner in t1's pixel coordinates (columns, rows), and t2's pixel size over t1's."""
    x, y = t2.transform.c, t2.transform.f
    if t1.crs != t2.crs:
        xs, ys = rasterio.warp.transform(t2.crs, t1.crs, [x], [y])
        x, y = xs[0], ys[0]
    col, row = ~t1.transform @ (x, y)
    scale = (
        (abs(t2.transform.a / t1.transform.a), abs(t2.transform.e / t1.transform.e))
        if t1.crs == t2.crs
        else (
            math.nan,
            math.nan,
        )
    )
    return (float(col), float(row)), scale


def change_counts(t1: np.ndarray, t2: np.ndarray) -> tuple[int, int, int]:
    """(pixels valid in both, changed pixels, changed pixels that are one-pixel edge swaps) of two index maps.

    A change a -> b is an edge swap when b is the t1 class of one of the pixel's 8 neighbours: a boundary moved by
    one pixel, which is what a sub-pixel grid offset produces. Border pixels see only the neighbours inside.
    """
    valid = (t1 >= 0) & (t2 >= 0)
    changed = valid & (t1 != t2)
    swaps = np.zeros_like(changed)
    padded = np.pad(t1, 1, constant_values=NODATA_INDEX)
    height, width = t1.shape
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr or dc:
                swaps |= padded[1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width] == t2
    return int(valid.sum()), int(changed.sum()), int((changed & swaps).sum())


def class_reader(dataset: Any, legend: Legend) -> Callable[[Window], np.ndarray]:
    """A function reading one window of a class raster as legend indices (int64, -1 nodata); codes the legend
    lacks are a UserError naming the raster, as when chips are cut."""
    extractor = ChipExtractor(dataset, [], legend, 1)
    return lambda window: extractor.read_classes(window).astype(np.int64)


@contextlib.contextmanager
def open_pair(
    t1: str | os.PathLike[str],
    t2: str | os.PathLike[str],
    legend: Legend,
    align: bool = False,
    assume_crs: str | None = None,
    tile: int = 1024,
) -> Iterator[tuple[Any, Any, PairCheck]]:
    """Open t1 and t2 (t2 on t1's grid) and check them; yields (t1 dataset, t2 dataset or view, check).

    Grids that differ are refused unless ``align``; with it, t2 is read through a nearest-neighbour view on t1's
    grid and a warning reports the grid offset and the share of changes that are one-pixel edge swaps. Codes the
    legend lacks are refused in either raster. Change statistics take one windowed pass over both rasters.
    """
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(open_raster(t1, assume_crs))
        second = stack.enter_context(open_raster(t2, assume_crs))
        grid, other = RasterGrid.of(first), RasterGrid.of(second)
        difference = _grid_difference(grid, other)
        offset, scale = grid_offset(grid, other)
        if difference is not None:
            if not align:
                raise UserError(
                    f"t2 raster {t2} does not share t1 raster {t1}'s grid: {difference}; pass --align (pair.align) "
                    "to resample t2 onto t1's grid by nearest neighbour"
                )
            second = stack.enter_context(aligned_vrt(second, grid, categorical=True))
        read_first, read_second = class_reader(first, legend), class_reader(second, legend)
        valid = changed = swaps = 0
        for window in iter_windows(grid.height, grid.width, tile):
            # One pixel more on each side so edge swaps across window edges are seen.
            row0, col0 = max(int(window.row_off) - 1, 0), max(int(window.col_off) - 1, 0)
            row1 = min(int(window.row_off + window.height) + 1, grid.height)
            col1 = min(int(window.col_off + window.width) + 1, grid.width)
            wide = Window(col0, row0, col1 - col0, row1 - row0)
            a, b = read_first(wide), read_second(wide)
            inner = (
                slice(int(window.row_off) - row0, int(window.row_off) - row0 + int(window.height)),
                slice(int(window.col_off) - col0, int(window.col_off) - col0 + int(window.width)),
            )
            b_inner = np.full_like(b, NODATA_INDEX)
            b_inner[inner] = b[inner]
            counts = change_counts(a, b_inner)
            valid, changed, swaps = valid + counts[0], changed + counts[1], swaps + counts[2]
        check = PairCheck(
            aligned=difference is not None,
            offset_pixels=offset,
            scale=scale,
            changed_share=changed / valid if valid else math.nan,
            edge_swap_share=swaps / changed if changed else math.nan,
        )
        if check.aligned:
            warnings.warn(
                f"t2 raster {t2} was aligned to t1 raster {t1} ({difference}): its grid is offset by "
                f"{offset[0]:.2f} columns, {offset[1]:.2f} rows of t1 pixels; {100 * check.changed_share:.1f}% of "
                f"pixels changed, {100 * check.edge_swap_share:.0f}% of the changes are one-pixel edge swaps "
                "(a sub-pixel offset shows as many of them)",
                stacklevel=3,
            )
        yield first, second, check


# --------------------------------------------------------------------------------------------------- blocks


def block_roles(
    height: int,
    width: int,
    chip_size: int,
    block_size: int,
    test_fraction: float,
    val_fraction: float,
    seed: int,
    source: str,
) -> np.ndarray:
    """(block rows, block cols) int8 roles TRAIN / VALIDATION / TEST of square blocks tiling the raster.

    Test blocks are exactly those of the chip split with the same seed (``BlockSplit.random``); validation blocks
    are then drawn among the other blocks that can hold a chip.
    """
    if not 0 <= val_fraction < 1 or not 0 < test_fraction < 1 or test_fraction + val_fraction >= 1:
        raise UserError(
            f"{source}: test_fraction {test_fraction} and val_fraction {val_fraction} should each lie in [0, 1) "
            "and leave blocks to train on"
        )
    split = BlockSplit.random(height, width, chip_size, block_size, test_fraction, seed, source)
    roles = np.where(split.test_blocks, TEST, TRAIN).astype(np.int8)
    roles[split.validation_blocks(height, width, chip_size, val_fraction, seed)] = VALIDATION
    return roles


def role_blocks(
    roles: np.ndarray, role: int, block_size: int, height: int, width: int
) -> list[tuple[int, int, int, int]]:
    """(row, col, height, width) of the blocks with ``role``, in raster order, clipped to the raster."""
    blocks = []
    for i, j in zip(*np.nonzero(roles == role), strict=True):
        row, col = int(i) * block_size, int(j) * block_size
        blocks.append((row, col, min(block_size, height - row), min(block_size, width - col)))
    return blocks


# ---------------------------------------------------------------------------------------------------- chips


def one_hot(indices: np.ndarray, n_classes: int) -> np.ndarray:
    """(..., H, W) class indices -> (..., K, H, W) float32 one-hot; nodata (-1) is all zeros."""
    eye = np.vstack([np.eye(n_classes, dtype=np.float32), np.zeros((1, n_classes), dtype=np.float32)])
    return np.moveaxis(eye[np.where(indices >= 0, indices, n_classes)], -1, -3)


@dataclass
class PairChipConfig:
    """How to cut chips from a pair (see the module docstring)."""

    t1: Path
    t2: Path
    legend: str = "nlcd"
    chip_size: int = 16
    stride: int = 8
    block_size: int = 64
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    max_nodata: float = 0.0
    seed: int = 0
    align: bool = False
    assume_crs: str | None = None

    def validate(self) -> None:
        if self.chip_size < 2 or self.stride < 1:
            raise UserError(f"pair chips: chip_size {self.chip_size} (>= 2) and stride {self.stride} (>= 1)")
        if self.block_size < self.chip_size:
            raise UserError(f"pair chips: block_size {self.block_size} is smaller than chip_size {self.chip_size}")
        if not 0 <= self.max_nodata <= 1:
            raise UserError(f"pair chips: max_nodata {self.max_nodata} should lie in [0, 1]")


def pair_roles(config: PairChipConfig, height: int, width: int) -> np.ndarray:
    return block_roles(
        height,
        width,
        config.chip_size,
        config.block_size,
        config.test_fraction,
        config.val_fraction,
        config.seed,
        str(config.t1),
    )


def make_pair_chips(config: PairChipConfig, out: str | os.PathLike[str]) -> Path:
    """Write the chip file of a pair: train-block chips as ``train_data``, validation-block chips as ``test_data``;
    channel 0 t2, channels 1..K one-hot t1. Its metadata records the pair, its check and the block roles."""
    config.validate()
    legend = load_legend(config.legend)
    size = config.chip_size
    with open_pair(config.t1, config.t2, legend, config.align, config.assume_crs) as (first, second, check):
        grid = RasterGrid.of(first)
        if size > min(grid.height, grid.width):
            raise UserError(f"chip size {size} is larger than raster {config.t1} ({grid.height}x{grid.width} px)")
        roles = pair_roles(config, grid.height, grid.width)
        split = BlockSplit(config.block_size, roles)
        row_offsets = split.axis_offsets(grid.height, size)
        col_offsets = split.axis_offsets(grid.width, size)
        row_offsets = row_offsets[row_offsets % config.stride == 0]
        col_offsets = col_offsets[col_offsets % config.stride == 0]
        rows, cols = (axis.ravel() for axis in np.meshgrid(row_offsets, col_offsets, indexing="ij"))
        role = roles[rows // config.block_size, cols // config.block_size]
        keep = role != TEST
        rows, cols, role = rows[keep], cols[keep], role[keep]
        later = ChipExtractor(second, [], legend, size).read(rows, cols)[:, 0].astype(np.int16)
        earlier = ChipExtractor(first, [], legend, size).read(rows, cols)[:, 0].astype(np.int16)
        missing = ((later < 0) | (earlier < 0)).mean(axis=(1, 2))
        keep = missing <= config.max_nodata
        if not keep.any():
            raise UserError(f"pair {config.t1}, {config.t2}: no chip has at most {config.max_nodata:g} nodata")
        rows, cols, role, later, earlier = rows[keep], cols[keep], role[keep], later[keep], earlier[keep]
        data = np.concatenate([later[:, None].astype(np.float32), one_hot(earlier, legend.n_classes)], axis=1)
        lon, lat = chip_centre_lonlat(grid, rows, cols, size)
        coords = np.stack([lon, lat], axis=1)
        train, val = role == TRAIN, role == VALIDATION
        metadata = {
            "format": CHIP_FORMAT,
            "format_version": CHIP_FORMAT_VERSION,
            "legend": legend.to_dict(),
            "crs": crs_name(grid.crs),
            "pixel_size": [abs(grid.transform.a), abs(grid.transform.e)],
            "chip_size": size,
            "channel_names": ["landcover"] + [f"t1_{name}" for name in legend.names],
            "dtype": "float32",
            "nodata": {"class_index": NODATA_INDEX, "covariates": "NaN"},
            "sources": {"class_raster": str(config.t2), "covariates": [str(config.t1)]},
            "change_pair": {
                "t1": str(config.t1),
                "t2": str(config.t2),
                "check": check.to_dict(),
                "test_data_holds": "validation blocks; test blocks are read from the rasters for evaluation",
            },
            "split": {
                "block_size": config.block_size,
                "test_fraction": config.test_fraction,
                "val_fraction": config.val_fraction,
                "seed": config.seed,
                "roles": roles.tolist(),
            },
            "counts": {"train": int(train.sum()), "test": int(val.sum())},
        }
        return write_chips(out, data[train], data[val], coords[train], coords[val], metadata)


def read_pair_blocks(
    t1: str | os.PathLike[str],
    t2: str | os.PathLike[str],
    legend: Legend,
    blocks: list[tuple[int, int, int, int]],
    align: bool = False,
    assume_crs: str | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(t1, t2) class-index arrays of each block (row, col, height, width) of a pair; -1 nodata."""
    pairs = []
    with open_pair(t1, t2, legend, align, assume_crs) as (first, second, _):
        read_first, read_second = class_reader(first, legend), class_reader(second, legend)
        for row, col, height, width in blocks:
            window = Window(col, row, width, height)
            pairs.append((read_first(window), read_second(window)))
    return pairs


# ------------------------------------------------------------------------------------------------- measures


@dataclass
class ChangeScore:
    """Pixel counts of a predicted t2 against the observed t2 given t1, and the measures built on them."""

    pixels: int
    hits: int  # observed change, predicted change to the observed class
    wrong_hits: int  # observed change, predicted change to another class
    misses: int  # observed change, predicted persistence
    false_alarms: int  # observed persistence, predicted change
    quantity: float  # quantity disagreement of the t2 maps (share of pixels)
    allocation: float  # allocation disagreement of the t2 maps (share of pixels)

    @property
    def figure_of_merit(self) -> float:
        denominator = self.hits + self.wrong_hits + self.misses + self.false_alarms
        return self.hits / denominator if denominator else math.nan

    def to_dict(self) -> dict[str, float]:
        share = 1.0 / self.pixels if self.pixels else math.nan
        return {
            "figure_of_merit": self.figure_of_merit,
            "hits": self.hits * share,
            "wrong_hits": self.wrong_hits * share,
            "misses": self.misses * share,
            "false_alarms": self.false_alarms * share,
            "quantity_disagreement": self.quantity,
            "allocation_disagreement": self.allocation,
            "pixels": self.pixels,
        }


def disagreement(observed: np.ndarray, predicted: np.ndarray, n_classes: int) -> tuple[float, float]:
    """Quantity and allocation disagreement (Pontius and Millones 2011) of two index maps over the pixels valid in
    both: quantity sum_g |p_g+ - p_+g| / 2, allocation sum_g 2 min(p_g+ - p_gg, p_+g - p_gg) / 2; they add up to
    the share of pixels that differ."""
    valid = (observed >= 0) & (predicted >= 0)
    if not valid.any():
        return math.nan, math.nan
    confusion = (
        np.bincount(
            predicted[valid].astype(np.int64) * n_classes + observed[valid].astype(np.int64), minlength=n_classes**2
        ).reshape(n_classes, n_classes)
        / valid.sum()
    )
    agree = np.diag(confusion)
    predicted_share, observed_share = confusion.sum(axis=1), confusion.sum(axis=0)
    quantity = float(np.abs(predicted_share - observed_share).sum() / 2)
    allocation = float(np.minimum(predicted_share - agree, observed_share - agree).sum())
    return quantity, allocation


def score_change(t1: np.ndarray, observed: np.ndarray, predicted: np.ndarray, n_classes: int) -> ChangeScore:
    """Hits, wrong hits, misses, false alarms and the disagreement components over pixels valid in all three."""
    valid = (t1 >= 0) & (observed >= 0) & (predicted >= 0)
    t1, observed, predicted = t1[valid], observed[valid], predicted[valid]
    observed_change, predicted_change = observed != t1, predicted != t1
    quantity, allocation = disagreement(observed, predicted, n_classes)
    return ChangeScore(
        pixels=int(valid.sum()),
        hits=int((observed_change & predicted_change & (predicted == observed)).sum()),
        wrong_hits=int((observed_change & predicted_change & (predicted != observed)).sum()),
        misses=int((observed_change & ~predicted_change).sum()),
        false_alarms=int((~observed_change & predicted_change).sum()),
        quantity=quantity,
        allocation=allocation,
    )


# ------------------------------------------------------------------------------------------------ baselines


def transition_counts(t1: np.ndarray, t2: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) int64: pixels of class i at t1 and class j at t2, over pixels valid in both."""
    valid = (t1 >= 0) & (t2 >= 0)
    flat = t1[valid].astype(np.int64) * n_classes + t2[valid].astype(np.int64)
    return np.bincount(flat, minlength=n_classes**2).reshape(n_classes, n_classes)


def transition_matrix(counts: np.ndarray, smoothing: float = 0.0) -> np.ndarray:
    """Row-normalised transition probabilities P[i, j] = p(t2 = j | t1 = i); a class never seen at t1 persists."""
    counts = counts.astype(np.float64) + smoothing
    totals = counts.sum(axis=1, keepdims=True)
    unseen = totals[:, 0] == 0
    matrix = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    matrix[unseen, unseen] = 1.0
    return matrix


def markov_bits(t1: np.ndarray, t2: np.ndarray, counts: np.ndarray) -> float:
    """Mean -log2 p(t2 | t1) per valid pixel, each pixel on its own, under the add-1/2 smoothed matrix."""
    matrix = transition_matrix(counts, SMOOTHING)
    valid = (t1 >= 0) & (t2 >= 0)
    return float(-np.log2(matrix[t1[valid], t2[valid]]).mean()) if valid.any() else math.nan


def expected_transitions(t1: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(K, K) pixels of each transition the matrix expects in a region: t1 class counts times its rows, rounded."""
    n_classes = matrix.shape[0]
    classes = np.bincount(t1[t1 >= 0].astype(np.int64), minlength=n_classes)
    return np.round(classes[:, None] * matrix).astype(np.int64)


def neighbourhood_shares(t1: np.ndarray, n_classes: int, radius: int) -> np.ndarray:
    """(K, H, W): the share of each class among the valid t1 pixels in the (2r+1)^2 window around each pixel."""
    size = 2 * radius + 1
    valid = (t1 >= 0).astype(np.float64)
    total = ndimage.uniform_filter(valid, size, mode="constant")
    shares = np.stack(
        [ndimage.uniform_filter((t1 == k).astype(np.float64), size, mode="constant") for k in range(n_classes)]
    )
    return shares / np.maximum(total, 1e-12)


def allocate(t1: np.ndarray, scores: np.ndarray, quantities: np.ndarray, seed: int = 0) -> np.ndarray:
    """Turn ``quantities[i, j]`` pixels of class i into class j, where ``scores[j]`` is highest.

    ``t1`` is a flat (n,) index array (-1 nodata), ``scores`` (K, n). Transitions are placed largest first, each
    on the best pixels of its class not yet taken; ties are broken at random (``seed``). Returns the predicted t2.
    """
    n_classes = quantities.shape[0]
    predicted = t1.copy()
    taken = t1 < 0
    jitter = np.random.default_rng(seed).random(t1.shape) * 1e-9
    off_diagonal = [(i, j) for i in range(n_classes) for j in range(n_classes) if i != j and quantities[i, j] > 0]
    for i, j in sorted(off_diagonal, key=lambda pair: -quantities[pair]):
        candidates = np.flatnonzero((t1 == i) & ~taken)
        count = min(int(quantities[i, j]), len(candidates))
        if count == 0:
            continue
        best = candidates[np.argpartition(-(scores[j, candidates] + jitter[candidates]), count - 1)[:count]]
        predicted[best] = j
        taken[best] = True
    return predicted


def markov_ca(blocks_t1: list[np.ndarray], matrix: np.ndarray, radius: int, seed: int = 0) -> list[np.ndarray]:
    """The Markov-CA prediction of t2 for each block: quantities of the matrix over all blocks together,
    allocated by t1 neighbourhood shares of radius ``radius`` computed inside each block."""
    n_classes = matrix.shape[0]
    flat_t1 = np.concatenate([block.ravel() for block in blocks_t1])
    scores = np.concatenate(
        [neighbourhood_shares(block, n_classes, radius).reshape(n_classes, -1) for block in blocks_t1], axis=1
    )
    predicted = allocate(flat_t1, scores, expected_transitions(flat_t1, matrix), seed)
    return split_like(predicted, blocks_t1)


def split_like(flat: np.ndarray, blocks: list[np.ndarray]) -> list[np.ndarray]:
    """Cut a flat array made of the blocks' pixels back into arrays shaped like the blocks."""
    pieces, start = [], 0
    for block in blocks:
        pieces.append(flat[start : start + block.size].reshape(block.shape))
        start += block.size
    return pieces


def pooled_score(
    blocks_t1: list[np.ndarray], blocks_t2: list[np.ndarray], predicted: list[np.ndarray], n_classes: int
) -> ChangeScore:
    """One score over the pixels of all blocks together."""
    return score_change(
        *(np.concatenate([block.ravel() for block in blocks]) for blocks in (blocks_t1, blocks_t2, predicted)),
        n_classes,
    )
