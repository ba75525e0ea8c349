"""Endless terrain: fringe-only outpainting with MaskGIT, seed-consistent random access, windowed writing.

Everything here works in windows of the training size (W x W tokens), so memory stays the same whatever the
size of the map; only the tokens of the new fringe are masked and generated, and the known tokens around
them are the nearest already-generated (or encoded) ones.

**The endless field** (:class:`TerrainField`). Token space is cut into tiles of s = W/2 tokens. The tile at
(i, j) is generated in one of four phases set by the parity of (i, j):

====================  =========================  ==============================================
phase (i mod 2, j mod 2)  known when it is made       unknown in its W x W window (shape in model.py)
====================  =========================  ==============================================
A (0, 0)              nothing                    everything (``tile_a``); the centre is kept
B (0, 1)              A left and right           the tile plus the rows above/below (``tile_b``)
C (1, 0)              A above and below, B at    the tile's rows (``tile_c``)
                      the four corners
D (1, 1)              all eight neighbours       the tile only (``tile_d``)
====================  =========================  ==============================================

Each window is centred on its tile and reaches s/2 tokens into each neighbour, so a tile is conditioned on
the nearest tokens of every neighbour made in an earlier phase. A tile therefore depends on (seed, i, j) and
on at most its 3 x 3 neighbourhood, recursively through at most three earlier phases: the tile at (i, j)
is the same whatever order tiles are asked in, and asking for a far-away tile costs a bounded amount of work.
Tiles of one phase are decoded in fixed groups of ``group x group`` (always the same tiles, in the same
order, in one batch) with a ``torch.Generator`` seeded from (seed, phase, group position) through NumPy's
``SeedSequence``; batch composition is fixed, so the floating-point results are too. Computed groups live in
an LRU cache of ``cache_groups`` groups; an evicted group is recomputed identically when needed again.

**Expanding a map** (:func:`expand_map`). The band along an edge is standardised row by row with the mean and
spread of the training-size squares lining the edge (:func:`edge_statistics`), so every window of it looks like a
standardised training tile, and encoded; new columns are generated ``W/2`` tokens at a time in W x W windows that
slide along the edge by half a window, each holding the band's (or the previous pass's) tokens as context, and
band and new tokens are decoded together (:func:`extend_right`). The map is continued at two scales, its own and
one 4x coarser, whose continuation gives the new strip its broad shape (:func:`extend_right_multiscale`), and the
map's last step runs on across the edge (:func:`join_edge`). Sides are grown in the order right, down, left, up,
each band including the strips made before it (:class:`GrowingMap`), so corners are filled. Only the bands
(:func:`band_depth` pixels deep) and the new strips are ever in memory, and the output GeoTIFF is written window
by window, copying the original's pixels through unchanged.

**Writing a world** (:func:`write_world`). The output GeoTIFF is written block by block: each block's tokens
(plus :meth:`~landformer.terrain.model.VQTokenizer.decoder_margin` tokens of context, taken from the
field too, so block edges match the whole-map decode exactly) are decoded and written, and a subsampled
preview is kept for the PNG.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import rasterio
import torch
from rasterio.transform import Affine
from rasterio.windows import Window
from tqdm import tqdm

from landformer.core.errors import UserError
from landformer.core.io import write_json
from landformer.core.legend import NODATA_INDEX, Legend
from landformer.core.raster import RasterGrid, aligned_vrt, geotiff_writer, iter_windows, open_raster, parse_crs
from landformer.core.viz import save_elevation_png
from landformer.terrain import metrics
from landformer.terrain.data import condition_tokens, pixel_size_metres
from landformer.terrain.export import LoadedTokenizer, TerrainGenerator, cast_heights
from landformer.terrain.model import steps_for
from landformer.terrain.scales import EXPAND_SCALES, SCALE_FACTOR

log = logging.getLogger(__name__)

PHASE_OF_PARITY = {(0, 0): 0, (0, 1): 1, (1, 0): 2, (1, 1): 3}
EXPAND_SIDES = ("right", "down", "left", "up")
# np.rot90 turns (counter-clockwise) that bring each side of a map to the right-hand edge.
TURNS_TO_RIGHT = {"right": 0, "down": 1, "left": 2, "up": -1}
CANDIDATE_STREAM = 1000  # seed-stream offset between the candidate continuations of one side
EXPAND_STREAM = 100  # seed-stream offset that keeps expansion windows apart from the field's phases
EXPAND_GDAL_CACHE_BYTES = 64 * 2**20  # GDAL block cache while expanding: enough for the windows in flight
SEAM_BLEND_PX = 16  # columns over which join_edge fades the shift that continues the map's slope
SHORT_FADE_PX = 4  # columns over which the row-to-row part of a difference at an edge fades (fade_in)
DRAIN_REACH_PX = 2  # depressions reaching this close to the edge are drained through the strip (drain_edge)
DRAIN_MAX_WIDEN_PX = 32  # the widest a cut valley's sides reach (drain_edge)
DETAIL_ROWS = 9  # rows of the running mean that separates a difference's broad part from its row-to-row part


def _zigzag(value: int) -> int:
    """Map any integer to a distinct non-negative one (SeedSequence takes no negatives)."""
    return 2 * value if value >= 0 else -2 * value - 1


def window_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed that depends only on (seed, parts), spread by SeedSequence so neighbours are unrelated."""
    state = np.random.SeedSequence([_zigzag(seed), *(_zigzag(part) for part in parts)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class ConditionSource(Protocol):
    """Condition classes on the token grid of a map (``n_classes`` where there is none)."""

    def tokens(self, row: int, col: int, height: int, width: int) -> np.ndarray: ...


class TerrainField:
    """The endless, seed-consistent token field of the module docstring."""

    def __init__(
        self,
        generator: TerrainGenerator,
        seed: int,
        group: int = 4,
        cache_groups: int = 512,
        condition: ConditionSource | None = None,
    ) -> None:
        if generator.grid != 2 * generator.tile:
            raise ValueError(f"the field needs tiles of half the window, got {generator.tile} in {generator.grid}")
        if group < 1 or cache_groups < 1:
            raise ValueError(f"group ({group}) and cache_groups ({cache_groups}) must be at least 1")
        self.generator = generator
        self.seed = seed
        self.group = group
        self.cache_groups = cache_groups
        self.condition = condition
        self.tile_side = generator.tile
        self.window = generator.grid
        self.margin = (self.window - self.tile_side) // 2
        self._cache: OrderedDict[tuple[int, int, int, int], dict[tuple[int, int], np.ndarray]] = OrderedDict()
        self.groups_computed = 0

    @staticmethod
    def phase(i: int, j: int) -> int:
        return PHASE_OF_PARITY[(i % 2, j % 2)]

    def group_key(self, i: int, j: int) -> tuple[int, int, int, int]:
        """(row parity, column parity, group row, group column) of the group that decodes tile (i, j)."""
        pi, pj = i % 2, j % 2
        return pi, pj, ((i - pi) // 2) // self.group, ((j - pj) // 2) // self.group

    def tile(self, i: int, j: int) -> np.ndarray:
        """(s, s) tokens of tile (i, j)."""
        return self._group_tiles(self.group_key(i, j))[(i, j)]

    def _group_tiles(self, key: tuple[int, int, int, int]) -> dict[tuple[int, int], np.ndarray]:
        tiles = self._cache.get(key)
        if tiles is not None:
            self._cache.move_to_end(key)
            return tiles
        tiles = self._compute_group(key)
        self._cache[key] = tiles
        while len(self._cache) > self.cache_groups:
            self._cache.popitem(last=False)
        return tiles

    def _compute_group(self, key: tuple[int, int, int, int]) -> dict[tuple[int, int], np.ndarray]:
        pi, pj, group_row, group_col = key
        phase = PHASE_OF_PARITY[(pi, pj)]
        side, window, margin, g = self.tile_side, self.window, self.margin, self.group
        members = [
            (2 * a + pi, 2 * b + pj)
            for a in range(group_row * g, (group_row + 1) * g)
            for b in range(group_col * g, (group_col + 1) * g)
        ]
        offsets = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]
        needed = {(i + di, j + dj) for i, j in members for di, dj in offsets if self.phase(i + di, j + dj) < phase}
        # Fetch each neighbouring group once and keep its tiles here, so a small cache never recomputes a
        # dependency more than once per group.
        neighbours: dict[tuple[int, int], np.ndarray] = {}
        for dependency in {self.group_key(*tile) for tile in needed}:
            neighbours.update(self._group_tiles(dependency))
        tokens = np.zeros((len(members), window, window), dtype=np.int64)
        known = np.zeros((len(members), window, window), dtype=bool)
        for index, (i, j) in enumerate(members):
            for di, dj in offsets:
                if (i + di, j + dj) in needed:
                    neighbour = neighbours[(i + di, j + dj)]
                    top, left = margin + di * side, margin + dj * side
                    rows = slice(max(top, 0), min(top + side, window))
                    cols = slice(max(left, 0), min(left + side, window))
                    part = neighbour[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left]
                    tokens[index, rows, cols] = part
                    known[index, rows, cols] = True
        condition = None
        if self.condition is not None:
            condition = np.stack(
                [self.condition.tokens(i * side - margin, j * side - margin, window, window) for i, j in members]
            )
        steps = steps_for(int((~known[0]).sum()), window * window, int(self.generator.sampling["steps"]))
        generator = torch.Generator().manual_seed(window_seed(self.seed, phase, group_row, group_col))
        decoded = self.generator.decode_windows(tokens, known, generator, condition, steps)
        self.groups_computed += 1
        inner = slice(margin, margin + side)
        return {member: decoded[index, inner, inner].copy() for index, member in enumerate(members)}

    def tokens(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """(height, width) tokens of the field starting at token (row, col); any integers, negative too."""
        side = self.tile_side
        out = np.empty((height, width), dtype=np.int64)
        for ti in range(math.floor(row / side), math.floor((row + height - 1) / side) + 1):
            for tj in range(math.floor(col / side), math.floor((col + width - 1) / side) + 1):
                tile = self.tile(ti, tj)
                top, left = ti * side, tj * side
                r0, r1 = max(top, row), min(top + side, row + height)
                c0, c1 = max(left, col), min(left + side, col + width)
                out[r0 - row : r1 - row, c0 - col : c1 - col] = tile[r0 - top : r1 - top, c0 - left : c1 - left]
        return out


class ConstantCondition:
    """One class for every token: a scale-conditioned model's pixel-size class for a whole map."""

    def __init__(self, value: int) -> None:
        self.value = value

    def tokens(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        return np.full((height, width), self.value, dtype=np.int64)

    def close(self) -> None:
        pass


class RasterCondition:
    """Condition classes of a categorical raster on the token grid of a map (majority per token)."""

    def __init__(self, path: str | os.PathLike[str], generator: TerrainGenerator, grid: Any) -> None:
        legend_data = generator.meta.get("condition_legend")
        if legend_data is None:
            raise UserError(f"{generator.source} was trained without condition maps; drop the condition raster")
        self.legend = Legend.from_dict(legend_data)
        self.n_classes = self.legend.n_classes
        self.downsample = generator.downsample
        self.grid = grid
        self.source = open_raster(path)
        self.vrt = aligned_vrt(self.source, grid, categorical=True)

    def close(self) -> None:
        self.vrt.close()
        self.source.close()

    def tokens(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        f = self.downsample
        pixels = np.full((height * f, width * f), NODATA_INDEX, dtype=np.int16)
        top, left = row * f, col * f
        r0, r1 = max(top, 0), min(top + height * f, self.grid.height)
        c0, c1 = max(left, 0), min(left + width * f, self.grid.width)
        if r0 < r1 and c0 < c1:
            raw = self.vrt.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
            indices = self.legend.encode(raw, unknown="nodata", source=str(self.source.name))
            if self.vrt.nodata is not None:
                indices[raw == self.vrt.nodata] = NODATA_INDEX
            pixels[r0 - top : r1 - top, c0 - left : c1 - left] = indices
        square = max(height, width) * f
        padded = np.full((square, square), NODATA_INDEX, dtype=np.int16)
        padded[: height * f, : width * f] = pixels
        return condition_tokens(padded[None], f, self.n_classes)[0][:height, :width]


class Preview:
    """Every ``step``-th pixel of a map written window by window, for a PNG of at most ``side`` pixels a side."""

    def __init__(self, height: int, width: int, side: int) -> None:
        self.step = max(1, math.ceil(max(height, width) / side))
        self.image = np.full((math.ceil(height / self.step), math.ceil(width / self.step)), np.nan, dtype=np.float32)

    def add(self, block: np.ndarray, row_off: int, col_off: int) -> None:
        """Keep the pixels of ``block`` (whose top-left is at (row_off, col_off)) that fall on the preview."""
        step = self.step
        rows = np.arange(-row_off % step, block.shape[0], step)
        cols = np.arange(-col_off % step, block.shape[1], step)
        self.image[np.ix_((row_off + rows) // step, (col_off + cols) // step)] = block[np.ix_(rows, cols)]


def decode_block(
    generator: TerrainGenerator, field: TerrainField, row: int, col: int, height: int, width: int
) -> np.ndarray:
    """Normalised elevation of token rows/cols [row, row+height) x [col, col+width), decoded with enough
    surrounding tokens that it equals the same pixels of a whole-map decode."""
    margin = generator.tokenizer.model.decoder_margin()
    tokens = field.tokens(row - margin, col - margin, height + 2 * margin, width + 2 * margin)
    f = generator.downsample
    pixels = generator.tokenizer.decode(tokens[None])[0]
    return pixels[margin * f : (margin + height) * f, margin * f : (margin + width) * f]


def write_world(
    generator: TerrainGenerator,
    out: str | os.PathLike[str],
    size: int,
    seed: int = 0,
    pixel_size: float | None = None,
    crs: str | None = None,
    origin: tuple[float, float] | None = None,
    offset: float | None = None,
    scale: float | None = None,
    condition: str | os.PathLike[str] | None = None,
    block: int = 512,
    preview_side: int = 1024,
    group: int = 4,
    cache_groups: int = 2048,
) -> dict[str, Any]:
    """Write a ``size`` x ``size`` DEM of the endless field for ``seed`` as a GeoTIFF, block by block, plus a
    shaded-relief PNG preview beside it (``<name>.png``); returns what was written and how long it took.

    The map is on the training DEM's grid (CRS, pixel size, data type) from its top-left corner unless ``crs``,
    ``pixel_size`` or ``origin`` say otherwise (:meth:`TerrainGenerator.map_grid`)."""
    if size < 1:
        raise UserError(f"world size must be at least 1 pixel, got {size}")
    f = generator.downsample
    if block < f or block % f:
        raise UserError(f"block {block} must be a positive multiple of the tokenizer's {f} pixels per token")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid = generator.map_grid(pixel_size, crs, origin)
    default_offset, default_scale = generator.default_offset_scale()
    offset = default_offset if offset is None else offset
    scale = default_scale if scale is None else scale
    transform = grid.transform()
    crs_value = parse_crs(grid.crs, "--crs")
    source: ConditionSource | None = None
    if condition is not None:
        source = RasterCondition(condition, generator, RasterGrid(crs_value, transform, size, size))
    elif (scale_class := generator.scale_class()) is not None:
        source = ConstantCondition(scale_class)
    field = TerrainField(generator, seed, group=group, cache_groups=cache_groups, condition=source)
    preview = Preview(size, size, preview_side)
    tags = {"generator": "landformer.terrain.world", "seed": seed, "offset_m": offset, "scale_m": scale}
    start = time.perf_counter()
    windows = list(iter_windows(size, size, block))
    try:
        nodata = grid.cast(np.full(1, np.nan))[1]
        profile = (size, size, 1, grid.dtype, transform, crs_value, nodata, ["elevation_m"], tags)
        with geotiff_writer(out, *profile, units=["m"]) as dst:
            for window in tqdm(windows, desc="world", unit="block", disable=None):
                height, width = int(window.height), int(window.width)
                normalized = decode_block(
                    generator, field, window.row_off // f, window.col_off // f, -(-height // f), -(-width // f)
                )[:height, :width]
                metres = generator.to_metres(normalized, offset, scale)
                dst.write(grid.cast(metres)[0][None], window=window)
                preview.add(metres, window.row_off, window.col_off)
    finally:
        if source is not None:
            source.close()
    seconds = time.perf_counter() - start
    png = save_elevation_png(
        out.with_suffix(".png"),
        preview.image,
        generator.reference_pixel_size_m * preview.step,
        title=f"seed {seed}, {size} px",
    )
    summary = {
        "geotiff": str(out),
        "preview": str(png),
        "size": size,
        "seed": seed,
        "pixel_size": list(grid.pixel),
        "origin": list(grid.origin),
        "dtype": grid.dtype,
        "offset_m": offset,
        "scale_m": scale,
        "seconds": round(seconds, 2),
        "groups_decoded": field.groups_computed,
    }
    write_json(out.with_suffix(".json"), summary)
    return summary


# ------------------------------------------------------------------------------------------------ expand


def band_depth(generator: TerrainGenerator, scales: int = 1) -> int:
    """Pixels of map beside an edge that expanding it reads: the context band plus the encoder's margin, or the
    training-size squares of :func:`edge_statistics`, whichever is deeper, at the coarsest of ``scales`` (each
    :data:`SCALE_FACTOR` times coarser than the last). Nothing further from the edge matters."""
    context = generator.grid - generator.tile
    depth = max(generator.grid, context + generator.tokenizer.model.encoder_margin()) * generator.downsample
    return depth * SCALE_FACTOR ** (scales - 1)


def block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """(H / factor, W / factor) means of ``factor`` x ``factor`` blocks; H and W must be multiples of it."""
    height, width = values.shape
    return values.reshape(height // factor, factor, width // factor, factor).mean(axis=(1, 3))


def upsample(values: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear interpolation between block centres back to ``factor`` times the size (the inverse grid of
    :func:`block_mean`); edges are held constant."""
    from scipy.ndimage import zoom  # scipy takes 0.5 s to import; `terrain world` never needs it

    return zoom(values, factor, order=1, mode="nearest", grid_mode=True)


def extend_right_multiscale(
    generator: TerrainGenerator,
    band: np.ndarray,
    amount: int,
    seed: int,
    stream: int,
    scales: int,
    pixel_size_m: float | None = None,
) -> np.ndarray:
    """:func:`extend_right` with relief at ``scales`` scales (a Laplacian pyramid, :data:`SCALE_FACTOR` apart).

    One window of the model sees a training tile (32 px for the tiny recipe), so on its own it can only continue
    what lies within half a tile of the edge: valleys and ridges wider than that, and the relief of the map at
    its own scale, fade into the model's typical tile. So the band is also averaged ``SCALE_FACTOR`` x
    ``SCALE_FACTOR`` and continued at that coarser scale (recursively); the new strip keeps the details of the
    fine continuation and takes its broad shape (everything the block averages hold) from the coarse one. The
    models are trained on DEMs from 80 m to 9 km pixels with per-tile normalisation, so the same model serves
    every scale. The last column of the map is kept continuous by fading the difference out as
    :func:`extend_right` does.
    """
    fine = extend_right(generator, band, amount, seed, stream, pixel_size_m)
    factor = SCALE_FACTOR
    usable = (band.shape[1] // factor) * factor
    context_px = (generator.grid - generator.tile) * generator.downsample
    if scales <= 1 or usable // factor < context_px or band.shape[0] < factor * generator.downsample:
        return fine
    height = band.shape[0]
    padded = -(-height // factor) * factor
    new_px = -(-amount // factor) * factor
    rows = ((0, padded - height), (0, 0))
    band_part = np.pad(band[:, band.shape[1] - usable :].astype(np.float64), rows, mode="edge")
    if not np.isfinite(band_part).all():  # nodata away from the edge: the coarse scale would need it
        return fine
    coarse_band = block_mean(band_part, factor)
    coarse_pixel = None if pixel_size_m is None else pixel_size_m * factor
    coarse_new = extend_right_multiscale(
        generator, coarse_band, new_px // factor, seed, stream + len(EXPAND_SIDES), scales - 1, coarse_pixel
    )
    fine_new = np.pad(fine.astype(np.float64), ((0, padded - height), (0, new_px - amount)), mode="edge")
    fine_full = np.concatenate([band_part, fine_new], axis=1)
    coarse_full = np.concatenate([coarse_band, coarse_new.astype(np.float64)], axis=1)
    composed = fine_full - upsample(block_mean(fine_full, factor), factor) + upsample(coarse_full, factor)
    composed = composed[:height]
    new = composed[:, usable : usable + amount]
    # Bilinear blending reaches half a block back over the edge; keep the map's last column continuous.
    residual = band[:, -1].astype(np.float64) - composed[:, usable - 1]
    return fade_in(new, residual, context_px).astype(np.float32)


def in_row_chunks(
    convert: Callable[[np.ndarray], np.ndarray], array: np.ndarray, chunk: int, margin: int, scale: float
) -> np.ndarray:
    """``convert`` (a tokenizer's encode or decode, which changes the side by ``scale``) applied to ``chunk`` rows
    of a tall array at a time, each with ``margin`` rows of context either side: the result of converting it
    whole, in memory that does not grow with its height."""
    rows = array.shape[0]
    parts = []
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        top, bottom = max(start - margin, 0), min(stop + margin, rows)
        converted = convert(array[None, top:bottom])[0]
        parts.append(converted[round((start - top) * scale) : round((stop - top) * scale)])
    return np.concatenate(parts)


def encode_tall(tokenizer: LoadedTokenizer, normalized: np.ndarray, chunk_px: int = 512) -> np.ndarray:
    """Tokens of a tall (H, w) normalised array, encoded in row chunks with the encoder's margin."""
    f = tokenizer.downsample
    chunk_px = max(chunk_px // f, 1) * f
    return in_row_chunks(tokenizer.encode, normalized, chunk_px, tokenizer.model.encoder_margin() * f, 1 / f)


def decode_tall(tokenizer: LoadedTokenizer, tokens: np.ndarray, chunk_tokens: int = 128) -> np.ndarray:
    """Normalised elevation of a tall (h, w) token grid, decoded in row chunks with the decoder's margin."""
    return in_row_chunks(tokenizer.decode, tokens, chunk_tokens, tokenizer.model.decoder_margin(), tokenizer.downsample)


def edge_statistics(band: np.ndarray, square: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row offset and scale along the right edge of ``band``: the mean and standard deviation of the
    ``square`` x ``square`` squares lining the edge (every half square down it), interpolated linearly to every
    row, the scale floored at a quarter of its median so a flat stretch is not blown up.

    The tokenizer knows tiles standardised one by one. One mean and spread for a whole band would hand it heights
    far outside that range (a ridge 5 standard deviations up), and it would misread the very edge the model has to
    continue; fields that follow the terrain along the edge keep every window of it close to a standardised tile,
    and, being smooth, keep one token grid (and one decoding) for the whole strip.
    """
    height = band.shape[0]
    columns = band[:, -min(square, band.shape[1]) :].astype(np.float64)
    rows = min(square, height)
    starts = list(range(0, height - rows + 1, max(rows // 2, 1)))
    if starts[-1] != height - rows:
        starts.append(height - rows)
    centres = np.array([start + (rows - 1) / 2 for start in starts])
    means = np.array([np.nanmean(columns[start : start + rows]) for start in starts])
    spreads = np.array([np.nanstd(columns[start : start + rows]) for start in starts])
    every_row = np.arange(height)
    offset = np.interp(every_row, centres, means)
    scale = np.interp(every_row, centres, spreads)
    return offset, np.maximum(scale, 0.25 * float(np.median(spreads)))


def extend_right(
    generator: TerrainGenerator,
    band: np.ndarray,
    amount: int,
    seed: int,
    stream: int,
    pixel_size_m: float | None = None,
) -> np.ndarray:
    """(H, ``amount``) new columns to the right of ``band``, the last :func:`band_depth` columns of a map (or all of
    it, when narrower), in metres, at the map's own scale (see the module docstring).

    The band is standardised row by row with :func:`edge_statistics` and encoded with the encoder's margin; new
    columns are generated ``tile`` tokens at a time in W x W windows sliding down the edge by half a window, each
    holding the band's (or the previous pass's) tokens as context; band and new tokens are decoded together, and
    the difference between the map's last column and its decoding is faded out over one context width.
    """
    tokenizer = generator.tokenizer
    f, window = generator.downsample, generator.grid
    new_side = generator.tile  # tokens generated per pass
    context = window - new_side  # tokens of context kept beside them
    context_px = context * f
    height = band.shape[0]
    if band.shape[1] < context_px:
        raise UserError(f"the map is {band.shape[1]} px across; expanding needs at least {context_px} px of it")
    edge = band[:, -context_px:].astype(np.float64)
    if not np.isfinite(edge).all():
        raise UserError(f"the map has nodata within {context_px} px of the edge being expanded; fill or crop it first")
    if float(edge.std()) <= 1e-6 * max(1.0, abs(float(edge.mean()))):
        raise UserError(
            f"the {context_px} px band along the edge being expanded is flat ({edge.mean():g} m); nothing to continue"
        )
    # Encode the context band with the encoder's margin of map beside it (where the map has it), so its tokens
    # are those of the whole map rather than of a band cut out of it; decoding keeps them as context too.
    read_px = min(band.shape[1] // f, context + tokenizer.model.encoder_margin()) * f
    if not np.isfinite(band[:, -read_px:]).all():
        read_px = context_px
    padded_height = -(-height // f) * f
    padded = np.pad(band[:, -read_px:].astype(np.float64), ((0, padded_height - height), (0, 0)), mode="edge")
    offset, scale = edge_statistics(padded, window * f)
    normalized = (padded - offset[:, None]) / scale[:, None]
    tokens = encode_tall(tokenizer, normalized.astype(np.float32))
    rows = tokens.shape[0]
    window_rows = min(window, rows)
    starts = list(range(0, rows - window_rows + 1, max(window_rows // 2, 1)))
    if starts[-1] != rows - window_rows:
        starts.append(rows - window_rows)
    n_passes = -(-math.ceil(amount / f) // new_side)
    scale_class = generator.scale_class(pixel_size_m)
    condition = None if scale_class is None else np.full((1, window_rows, window), scale_class, dtype=np.int64)
    for pass_index in range(n_passes):
        strip = np.zeros((rows, new_side), dtype=np.int64)
        done = np.zeros(rows, dtype=bool)
        for start in starts:
            rows_here = slice(start, start + window_rows)
            window_tokens = np.concatenate([tokens[rows_here, -context:], strip[rows_here]], axis=1)
            known = np.ones_like(window_tokens, dtype=bool)
            known[:, context:] = done[rows_here, None]
            n_unknown = int((~known).sum())
            if n_unknown == 0:
                continue
            steps = steps_for(n_unknown, window * window, int(generator.sampling["steps"]))
            rng = torch.Generator().manual_seed(window_seed(seed, EXPAND_STREAM + stream, pass_index, start))
            decoded = generator.decode_windows(window_tokens[None], known[None], rng, condition, steps)[0]
            strip[rows_here] = decoded[:, context:]
            done[rows_here] = True
        tokens = np.concatenate([tokens, strip], axis=1)
    metres = decode_tall(tokenizer, tokens).astype(np.float64) * scale[:, None] + offset[:, None]
    new = metres[:height, read_px : read_px + amount]
    # Fade the map's edge's reconstruction error out over one context width, so heights continue across the seam.
    residual = band[:, -1].astype(np.float64) - metres[:height, read_px - 1]
    return fade_in(new, residual, context_px).astype(np.float32)


def join_edge(band: np.ndarray, new: np.ndarray, blend: int = SEAM_BLEND_PX) -> np.ndarray:
    """``new`` (the columns right of ``band``) shifted near the edge so the map's slope runs on across it.

    The decoder draws the first generated tokens beside the map's last ones, and where they disagree it draws a
    short cliff: a line along the whole edge that the eye finds at once, however well the rest continues. So the
    first new column is moved to where the map's own last step would take it (last column + that step, row by
    row), and the shift fades out linearly over ``blend`` columns: the step across the edge is the real one,
    and the difference is spread thinly over the strip instead of piling up on one column.
    """
    if band.shape[1] < 2 or new.shape[1] == 0:
        return new
    band64 = band.astype(np.float64)
    continued = 2.0 * band64[:, -1] - band64[:, -2]
    shift = continued - new[:, 0].astype(np.float64)
    return fade_in(new, shift, blend).astype(new.dtype)


def fade_in(new: np.ndarray, difference: np.ndarray, reach: int) -> np.ndarray:
    """``new`` (columns right of an edge) plus a per-row ``difference`` at the edge that fades out into it.

    The whole difference applies to the first column. Its broad part (a running mean over :data:`DETAIL_ROWS`
    rows along the edge) fades out linearly over ``reach`` columns; its row-to-row part, the reconstruction's
    pixel noise, over :data:`SHORT_FADE_PX` columns only: faded as far as the broad part, it drew streaks
    across the edge, one per row.
    """
    from scipy.ndimage import uniform_filter1d  # as in upsample: only expansion needs scipy

    difference = np.asarray(difference, dtype=np.float64)
    broad = uniform_filter1d(difference, size=DETAIL_ROWS, mode="nearest")
    columns = np.arange(new.shape[1])
    long_fade = np.clip(1.0 - columns / max(reach, 1), 0.0, 1.0)
    short_fade = np.clip(1.0 - columns / SHORT_FADE_PX, 0.0, 1.0)
    return new + broad[:, None] * long_fade[None, :] + (difference - broad)[:, None] * short_fade[None, :]


class GrowingMap:
    """A map being expanded, on the grid of the output: the original at rows [top, top + height) and columns
    [left, left + width), read through ``read_original(row, col, height, width)`` (NaN for nodata), plus the
    strips generated so far. Only what :meth:`read` is asked for is in memory, never the whole map."""

    def __init__(
        self, read_original: Callable[[int, int, int, int], np.ndarray], height: int, width: int, top: int, left: int
    ) -> None:
        self.read_original = read_original
        self.original = (top, left, height, width)
        self.bounds = [top, left, top + height, left + width]  # top, left, bottom, right of what exists
        self.strips: list[tuple[int, int, np.ndarray]] = []

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """(height, width) float32 metres of the output grid from (row, col); NaN where nothing exists (yet)."""
        out = np.full((height, width), np.nan, dtype=np.float32)
        pieces: list[tuple[int, int, int, int, np.ndarray | None]] = [(*self.original, None)]
        pieces += [(top, left, *strip.shape, strip) for top, left, strip in self.strips]
        for top, left, piece_height, piece_width, strip in pieces:
            r0, r1 = max(row, top), min(row + height, top + piece_height)
            c0, c1 = max(col, left), min(col + width, left + piece_width)
            if r0 >= r1 or c0 >= c1:
                continue
            if strip is None:
                values = self.read_original(r0 - top, c0 - left, r1 - r0, c1 - c0)
            else:
                values = strip[r0 - top : r1 - top, c0 - left : c1 - left]
            out[r0 - row : r1 - row, c0 - col : c1 - col] = values
        return out

    def grow(
        self,
        generator: TerrainGenerator,
        amounts: dict[str, int],
        seed: int,
        scales: int = 1,
        pixel_size_m: float | None = None,
        candidates: int = 1,
        drain: bool = True,
    ) -> None:
        """Generate the new strips, one side after another (right, down, left, up): each side's band includes
        the strips made before it, so corners are filled too. ``pixel_size_m`` tells a scale-conditioned model
        the map's pixel size (default: its reference DEM's); each side keeps the least ponding of ``candidates``
        continuations (:func:`draining_continuation`), each drained through the strip where it closes a valley at
        the edge (:func:`drain_edge`) unless ``drain`` is off."""
        depth = band_depth(generator, scales)
        for stream, side in enumerate(EXPAND_SIDES):
            amount = int(amounts.get(side, 0))
            if amount == 0:
                continue
            top, left, bottom, right = self.bounds
            if side == "right":
                band_rows, band_cols, at = (top, bottom), (max(left, right - depth), right), (top, right)
                self.bounds[3] += amount
            elif side == "down":
                band_rows, band_cols, at = (max(top, bottom - depth), bottom), (left, right), (bottom, left)
                self.bounds[2] += amount
            elif side == "left":
                band_rows, band_cols, at = (top, bottom), (left, min(right, left + depth)), (top, left - amount)
                self.bounds[1] -= amount
            else:
                band_rows, band_cols, at = (top, min(bottom, top + depth)), (left, right), (top - amount, left)
                self.bounds[0] -= amount
            band = self.read(band_rows[0], band_cols[0], band_rows[1] - band_rows[0], band_cols[1] - band_cols[0])
            turns = TURNS_TO_RIGHT[side]
            turned = np.rot90(band, turns)
            new = draining_continuation(
                generator, turned, amount, seed, stream, scales, pixel_size_m, candidates, drain
            )
            strip = np.rot90(new, -turns)
            self.strips.append((*at, np.ascontiguousarray(strip)))


def edge_ponding(band: np.ndarray, new: np.ndarray, depth: int = 8) -> float:
    """Share of the cells ``depth`` px either side of the edge between ``band`` and ``new`` (the columns right of
    it) that lie in filled depressions of the two together; nodata counts as high ground."""
    heights = np.concatenate([band.astype(np.float64), new.astype(np.float64)], axis=1)
    missing = ~np.isfinite(heights)
    if missing.all():
        return 0.0
    heights[missing] = np.nanmax(heights) + 1.0
    ponded = metrics.fill_depressions(heights) > heights
    near = slice(max(band.shape[1] - depth, 0), band.shape[1] + depth)
    return float((ponded[:, near] & ~missing[:, near]).mean())


def drain_edge(band: np.ndarray, new: np.ndarray, reach: int = DRAIN_REACH_PX) -> np.ndarray:
    """``new`` (the columns right of ``band``) with a way out cut through it for every depression that it closes at
    the edge, so valleys that reach the edge drain across it instead of ponding against the strip.

    The decoder knows nothing of drainage: where a valley of the map runs into the edge, the strip often rises in
    front of it and the valley becomes a lake tens of metres deep. Depressions of band and strip together whose
    water reaches ``reach`` px of the edge are drained by a priority flood inward from the strip's outer border
    (so water has to leave through the strip, as it would on the grown map) that lowers the strip cells along the
    spill path to the depression's rim height (Priority-Flood with carving; Soille 2004, Barnes et al. 2014). A
    depression whose spill path would need a cell of the map lowered (its water spills over the map elsewhere, but
    the strip in front of it is what closes it) gets a cut straight out from its lowest cell on the edge instead
    (:func:`cut_outward`); this also drains the few ponds of the map's own that touch the edge. The cuts are widened
    into valleys whose sides rise at the map's steep (90th percentile) slope, so they read as valleys rather than
    one-pixel trenches. Depressions away from the edge, and every pit the strip has of its own, are untouched; the
    map itself is never changed.
    """
    from scipy import ndimage  # as in upsample: only expansion needs scipy

    heights = np.concatenate([band.astype(np.float64), new.astype(np.float64)], axis=1)
    if new.size == 0 or not np.isfinite(heights).all():
        return new
    edge = band.shape[1]
    strip = np.zeros(heights.shape, dtype=bool)
    strip[:, edge:] = True
    outlets = np.zeros(heights.shape, dtype=bool)
    outlets[[0, -1], :] = outlets[:, [0, -1]] = True
    # Water may leave only through the strip: the band's own border is a cut through the map, not an outlet, and
    # a valley that seems to drain through it would drain the other way on the grown map.
    walled = heights.copy()
    walled[outlets & ~strip] = float(heights.max()) + 1e6
    ponded = metrics.fill_depressions(walled) > walled
    labels, _ = ndimage.label(ponded, structure=np.ones((3, 3)))
    at_edge = np.unique(labels[:, max(edge - reach, 0) : edge + reach])
    drainable = np.isin(labels, at_edge[at_edge > 0])
    if not drainable.any():
        return new
    carved_heights = carve_spill_paths(heights, strip, outlets & strip, drainable)
    # Where the flood's spill path runs over the map's own cells, the flood leaves the depression, though the strip
    # in front of it is what closes it on the grown map: cut those straight out from the edge instead.
    walled[strip] = carved_heights[strip]
    still = metrics.fill_depressions(walled) > walled
    cut_outward(carved_heights, ndimage.label(still, structure=np.ones((3, 3)))[0], edge)
    carved = carved_heights < heights
    if not carved.any():
        return new
    gy, gx = np.gradient(band.astype(np.float64))
    side_slope = max(float(np.quantile(np.hypot(gx, gy), 0.9)), 1e-3)  # metres per pixel
    radius = int(min(DRAIN_MAX_WIDEN_PX, math.ceil(float((heights - carved_heights).max()) / side_slope)))
    rows, cols = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    high = float(heights.max()) + 1e6
    floors = np.where(carved, carved_heights, high)
    # The lowest cone of slope side_slope standing on any carved cell: every cell it lowers runs down to the cut.
    valley = ndimage.grey_erosion(floors, structure=-side_slope * np.hypot(rows, cols), mode="constant", cval=high)
    drained = np.where(strip, np.minimum(carved_heights, valley), heights)
    return drained[:, edge:].astype(new.dtype)


def cut_outward(heights: np.ndarray, depressions: np.ndarray, edge: int) -> None:
    """Lower ``heights`` (in place, columns ``edge`` on) along one path out of each labelled depression that touches
    column ``edge - 1``: from its lowest cell there, one column outward at a time to the lowest of the three cells
    ahead, the floor never rising, so the cut follows the strip's own low ground to its outer border."""
    height, width = heights.shape
    for label in np.unique(depressions[:, edge - 1]):
        if label == 0:
            continue
        rows = np.flatnonzero(depressions[:, edge - 1] == label)
        row = int(rows[np.argmin(heights[rows, edge - 1])])
        floor = float(heights[row, edge - 1])
        for col in range(edge, width):
            ahead = range(max(row - 1, 0), min(row + 2, height))
            row = min(ahead, key=lambda candidate: float(heights[candidate, col]))
            floor = min(floor, float(heights[row, col]))
            heights[row, col] = floor


def carve_spill_paths(
    heights: np.ndarray, editable: np.ndarray, outlets: np.ndarray, drainable: np.ndarray
) -> np.ndarray:
    """Heights in which water from every ``drainable`` cell reaches an ``outlets`` cell without climbing, made by
    lowering ``editable`` cells only: a priority flood from the outlets (lowest first, D8) that, on meeting a
    drainable cell below the level it came at, lowers the cells above it on the path back to the outlet to its
    height. Where that path holds a cell that may not be lowered, the cell is filled instead (left as it is)."""
    z = np.asarray(heights, dtype=np.float64).copy()
    height, width = z.shape
    flat = z.ravel()
    may_lower = editable.ravel()
    may_drain = drainable.ravel()
    parent = np.full(z.size, -1, dtype=np.int64)
    closed = outlets.ravel().copy()
    heap = [(flat[index], index) for index in np.flatnonzero(closed).tolist()]
    heapq.heapify(heap)
    while heap:
        level, cell = heapq.heappop(heap)
        row, col = divmod(cell, width)
        for d_row, d_col in metrics.D8_STEPS:
            n_row, n_col = row + d_row, col + d_col
            if not (0 <= n_row < height and 0 <= n_col < width):
                continue
            neighbour = n_row * width + n_col
            if closed[neighbour]:
                continue
            closed[neighbour] = True
            parent[neighbour] = cell
            target = flat[neighbour]
            if target < level:
                path = _spill_path(flat, parent, cell, target, may_lower) if may_drain[neighbour] else None
                if path is None:
                    target = level  # filled: the water stays
                else:
                    flat[path] = target
            heapq.heappush(heap, (target, neighbour))
    return z


def _spill_path(
    flat: np.ndarray, parent: np.ndarray, start: int, target: float, may_lower: np.ndarray
) -> list[int] | None:
    """Cells above ``target`` on the flood path from ``start`` back to its outlet, or None if one may not be
    lowered."""
    path = []
    cell = start
    while cell >= 0:
        if flat[cell] > target:
            if not may_lower[cell]:
                return None
            path.append(cell)
        cell = int(parent[cell])
    return path


def draining_continuation(
    generator: TerrainGenerator,
    band: np.ndarray,
    amount: int,
    seed: int,
    stream: int,
    scales: int,
    pixel_size_m: float | None,
    candidates: int = 1,
    drain: bool = True,
) -> np.ndarray:
    """The columns right of ``band``: of ``candidates`` continuations, the one that ponds least water along the edge,
    each with the depressions it closes at the edge drained through it (:func:`drain_edge`) unless ``drain`` is off.

    The decoder knows nothing of drainage, and a strip that rises where a valley reaches the edge dams it: the
    pond lies on the real DEM. Drawing several strips and keeping the one whose edge band (:func:`edge_ponding`)
    holds the least filled depression uses only the map itself. The first candidate is the one a single draw
    gives, so ``candidates=1`` changes nothing (and measures nothing); ties keep the earlier candidate.
    """
    strips = (
        join_edge(
            band,
            extend_right_multiscale(generator, band, amount, seed, stream + CANDIDATE_STREAM * k, scales, pixel_size_m),
        )
        for k in range(candidates)
    )
    if drain:
        strips = (drain_edge(band, strip) for strip in strips)
    if candidates == 1:
        return next(strips)
    return min(strips, key=lambda strip: edge_ponding(band, strip))


def _check_expansion(amounts: dict[str, int], candidates: int) -> None:
    if candidates < 1:
        raise UserError(f"expand: candidates = {candidates} should be at least 1")
    unknown = sorted(set(amounts) - set(EXPAND_SIDES))
    if unknown:
        raise UserError(f"unknown side(s) {unknown}; choose from {', '.join(EXPAND_SIDES)}")
    for side in EXPAND_SIDES:
        if int(amounts.get(side, 0)) < 0:
            raise UserError(f"cannot expand by a negative amount ({side} = {amounts[side]} px)")


def expand_array(
    generator: TerrainGenerator,
    elevation: np.ndarray,
    amounts: dict[str, int],
    seed: int,
    scales: int = EXPAND_SCALES,
    pixel_size_m: float | None = None,
    candidates: int = 1,
    drain: bool = True,
) -> np.ndarray:
    """``elevation`` grown by ``amounts[side]`` pixels on each side (right, down, left, up, in that order), its
    relief continued at ``scales`` scales (:func:`extend_right_multiscale`); ``pixel_size_m``, ``candidates``
    and ``drain`` as in :meth:`GrowingMap.grow`."""
    _check_expansion(amounts, candidates)
    z = np.asarray(elevation, dtype=np.float32)
    up, left = int(amounts.get("up", 0)), int(amounts.get("left", 0))

    def read_original(row: int, col: int, height: int, width: int) -> np.ndarray:
        return z[row : row + height, col : col + width]

    grown = GrowingMap(read_original, z.shape[0], z.shape[1], up, left)
    grown.grow(generator, amounts, seed, scales, pixel_size_m, candidates, drain)
    height, width = z.shape[0] + up + int(amounts.get("down", 0)), z.shape[1] + left + int(amounts.get("right", 0))
    return grown.read(0, 0, height, width)


def _has_data(dataset: Any, nodata: float | None, block: int) -> bool:
    """Whether any pixel of band 1 is valid, reading window by window and stopping at the first one."""
    for window in iter_windows(dataset.height, dataset.width, block):
        values = dataset.read(1, window=window)
        valid = np.isfinite(values) if values.dtype.kind == "f" else np.ones(values.shape, dtype=bool)
        if nodata is not None and not np.isnan(nodata):
            valid &= values != np.asarray(nodata).astype(values.dtype)
        if valid.any():
            return True
    return False


def expand_map(
    generator: TerrainGenerator,
    dem: str | os.PathLike[str],
    out: str | os.PathLike[str],
    amounts: dict[str, int],
    seed: int = 0,
    block: int = 512,
    preview_side: int = 1024,
    scales: int = EXPAND_SCALES,
    candidates: int = 1,
    drain: bool = True,
) -> dict[str, Any]:
    """Grow a DEM GeoTIFF on any side; write the larger GeoTIFF and a shaded-relief PNG beside it.

    The DEM is never read whole: the bands along its edges are read to generate the new strips, then the output
    is written ``block`` x ``block`` pixels at a time, copying the original's pixels through unchanged (as
    float32). Pixel size, CRS and nodata value stay; the origin moves for left/up growth.
    """
    if not any(amounts.get(side, 0) for side in EXPAND_SIDES):
        raise UserError("nothing to expand: give a number of pixels for at least one side (e.g. --right 64)")
    if block < 1:
        raise UserError(f"expand: block = {block} should be at least 1 pixel")
    _check_expansion(amounts, candidates)
    up, left = int(amounts.get("up", 0)), int(amounts.get("left", 0))
    out = Path(out)
    # GDAL's block cache (5% of RAM by default) would otherwise keep up to that much of a big map's blocks.
    with rasterio.Env(GDAL_CACHEMAX=EXPAND_GDAL_CACHE_BYTES), open_raster(dem) as dataset:
        nodata = dataset.nodata
        if not _has_data(dataset, nodata, block):
            raise UserError(f"DEM {dem} is full of nodata; there is nothing to expand")
        missing = np.float32(nodata) if nodata is not None and not np.isnan(nodata) else None

        def read_original(row: int, col: int, height: int, width: int) -> np.ndarray:
            values = dataset.read(1, window=Window(col, row, width, height)).astype(np.float32)
            if missing is not None:
                values[values == missing] = np.nan
            return values

        start = time.perf_counter()
        grown = GrowingMap(read_original, dataset.height, dataset.width, up, left)
        grown.grow(generator, amounts, seed, scales, pixel_size_metres(dataset), candidates, drain)
        seconds = time.perf_counter() - start
        height = dataset.height + up + int(amounts.get("down", 0))
        width = dataset.width + left + int(amounts.get("right", 0))
        shifted = dataset.transform @ Affine.translation(-left, -up)
        preview = Preview(height, width, preview_side)
        tags = {
            "generator": "landformer.terrain.expand",
            "seed": seed,
            "candidates": candidates,
            "drain": drain,
            "source": str(dem),
            **amounts,
        }
        # The output keeps the DEM's data type: an int16 DEM stays int16 (new heights rounded to whole metres).
        dtype = dataset.dtypes[0] if np.dtype(dataset.dtypes[0]).kind in "iu" else "float32"
        profile = (width, height, 1, dtype, shifted, dataset.crs, nodata, ["elevation_m"], tags)
        with geotiff_writer(out, *profile, units=["m"]) as dst:
            for window in tqdm(list(iter_windows(height, width, block)), desc="expand", unit="block", disable=None):
                values = grown.read(window.row_off, window.col_off, window.height, window.width)
                preview.add(values, window.row_off, window.col_off)
                dst.write(cast_heights(values, dtype, nodata)[0][None], window=window)
        pixel_size = pixel_size_metres(dataset)
        original_shape = [dataset.height, dataset.width]
    png = save_elevation_png(
        out.with_suffix(".png"), preview.image, pixel_size * preview.step, title=f"expanded {Path(dem).name}"
    )
    summary = {
        "geotiff": str(out),
        "preview": str(png),
        "shape": [height, width],
        "original_shape": original_shape,
        "seed": seed,
        "amounts": amounts,
        "candidates": candidates,
        "drain": drain,
        "seconds": round(seconds, 2),
    }
    write_json(out.with_suffix(".json"), summary)
    return summary
