"""Strong simple baselines for categorical maps, and the fair held-out chips to score models and baselines on.

A model of land cover has learned something only if it beats these:

- :class:`CausalContextModel`: a table of class counts given the classes of the west, north, north-west and
  north-east neighbours, fitted on training chips, smoothed add-1/2 and scored in raster order. Neighbours
  outside the chip, and nodata neighbours, read as one extra symbol "outside": both say "no class here". On real
  32x32 land-cover chips it needs about 0.4-0.5 bits/pixel where the class entropy is about 3. Drawn in raster
  order from its counts (backing off to shorter contexts where a context was never seen) it is also a
  4-neighbour Markov-chain generator: the realism baseline for samples.
- :func:`compressed_bits`: gzip, bz2, lzma, PNG and WebP-lossless, both on each chip alone (headers included,
  as a file per chip would cost) and on all chips in one stream or mosaic (generous: headers paid once,
  statistics shared across chips).
- :func:`heldout_chips` / :func:`fair_test_split`: test chips without exact duplicates and without two chips
  sharing a pixel, so no chip is scored twice and pooled compressors cannot copy one chip from its neighbour.

Bits are per valid pixel for the context model (nodata is neither scored nor predicted); the compressors encode
every cell (nodata as byte 255) and are divided by every cell, as before.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import lzma
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from PIL import Image, features

from landformer.core.chips import ChipSet
from landformer.core.errors import UserError
from landformer.landcover.evaluate import check_maps, first_occurrences

CODECS = ("gzip", "bz2", "lzma", "png", "webp")
NODATA_BYTE = 255  # compressors see nodata as this byte: no class index reaches it
WEBP_MAX_SIDE = 16383  # libwebp's largest image side; larger mosaics are split
CHUNK_CHIPS = 4096  # chips whose context ids are counted at once, so fitting memory stays bounded
LZMA_MAX_DICTIONARY = 64 * 2**20  # preset 9's dictionary

BASELINE_DESCRIPTIONS = {
    "context": "causal-context model: class counts given the W, N, NW, NE neighbours (chip edge and nodata = "
    "'outside'), fitted on the train chips (all, or one copy of each distinct chip: the fit that scores better), "
    "add-1/2 smoothing, raster order",
    "class_entropy": "class entropy: i.i.d. pixels with the test chips' own class frequencies",
    **{codec: f"{codec}: all test chips in one stream (PNG/WebP: one mosaic), headers paid once" for codec in CODECS},
    **{f"{codec}_per_chip": f"{codec}: each chip compressed alone, headers included" for codec in CODECS},
}


# ------------------------------------------------------------------------------------------ context model


def chip_labels(data: np.ndarray) -> np.ndarray:
    """Channel 0 of (N, C, H, W) chip data as (N, H, W) int64 class indices; float files' NaN becomes -1."""
    classes = np.asarray(data)[:, 0]
    if classes.dtype.kind == "f":
        classes = np.where(np.isfinite(classes), classes, -1)
    return classes.astype(np.int64)


def context_ids(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, H, W) id of each cell's causal context ``((W * B + N) * B + NW) * B + NE`` with base B = K + 1, where
    symbol K is "outside the chip or nodata"."""
    outside = n_classes
    base = n_classes + 1
    count, height, width = labels.shape
    padded = np.full((count, height + 1, width + 2), outside, dtype=np.int64)
    padded[:, 1:, 1:-1] = np.where(labels >= 0, labels, outside)
    return _context_id(padded[:, 1:, :-2], padded[:, :-1, 1:-1], padded[:, :-1, :-2], padded[:, :-1, 2:], base)


def _context_id(
    west: np.ndarray, north: np.ndarray, north_west: np.ndarray, north_east: np.ndarray, base: int
) -> np.ndarray:
    return ((west * base + north) * base + north_west) * base + north_east


@dataclass
class CausalContextModel:
    """p(class | W, N, NW, NE neighbours) = (count + 1/2) / (total + K/2), counted on training chips.

    Only contexts seen in training are stored (``contexts``, sorted, with their per-class ``counts``): the full
    table has (K+1)^4 x K cells, 200 million for CORINE's 45 classes. An unseen context has no counts, so its
    smoothed distribution is uniform.

    Sampling draws from the raw counts of the longest seen part of the context instead: (W, N, NW, NE), else
    (W, N, NW), else (W, N), else W, else the class frequencies. Drawing from the smoothed table is a weak
    generator: add-1/2 gives a rarely seen context's unseen classes much of its mass (K/2 pseudo-counts), and one
    such draw leads into unseen contexts whose uniform distributions spread noise over the rest of the map (on a
    256 px synthetic world's 16x16 chips: patch density +2000 % against test chips, +116 % with the back-off).
    """

    n_classes: int
    contexts: np.ndarray  # (M,) int64, sorted context ids seen in training
    counts: np.ndarray  # (M, K) int64 class counts per context

    @classmethod
    def fit(cls, labels: np.ndarray, n_classes: int) -> CausalContextModel:
        """Count every valid cell of the (N, H, W) training maps under its context; nodata cells are skipped."""
        if n_classes < 1:
            raise UserError(f"the context model needs at least one class, got {n_classes}")
        labels = check_maps(labels, n_classes, "context model training chips")
        if not (labels >= 0).any():
            raise UserError("the context model's training chips hold no valid pixel")
        keys, key_counts = [], []
        for start in range(0, len(labels), CHUNK_CHIPS):
            chunk = labels[start : start + CHUNK_CHIPS]
            valid = chunk >= 0
            key = context_ids(chunk, n_classes)[valid] * n_classes + chunk[valid]
            unique, counts = np.unique(key, return_counts=True)
            keys.append(unique)
            key_counts.append(counts)
        # Chunks share keys: merge their counts.
        unique_keys, inverse = np.unique(np.concatenate(keys), return_inverse=True)
        totals = np.bincount(inverse, weights=np.concatenate(key_counts)).astype(np.int64)
        contexts, row = np.unique(unique_keys // n_classes, return_inverse=True)
        counts = np.zeros((len(contexts), n_classes), dtype=np.int64)
        counts[row, unique_keys % n_classes] = totals
        return cls(n_classes, contexts, counts)

    @property
    def n_training_pixels(self) -> int:
        return int(self.counts.sum())

    def probabilities(self, ids: np.ndarray) -> np.ndarray:
        """(..., K) smoothed class probabilities for context ids of any shape."""
        ids = np.asarray(ids, dtype=np.int64)
        position = np.minimum(np.searchsorted(self.contexts, ids), len(self.contexts) - 1)
        seen = self.contexts[position] == ids
        counts = np.where(seen[..., None], self.counts[position], 0)
        return (counts + 0.5) / (counts.sum(axis=-1, keepdims=True) + self.n_classes / 2)

    def log2_prob(self, labels: np.ndarray) -> np.ndarray:
        """(N, H, W) log2 p of each cell given its causal neighbours; NaN at nodata cells."""
        labels = check_maps(labels, self.n_classes, "context model chips")
        probabilities = self.probabilities(context_ids(labels, self.n_classes))
        chosen = np.take_along_axis(probabilities, np.maximum(labels, 0)[..., None], axis=-1)[..., 0]
        return np.where(labels >= 0, np.log2(chosen), np.nan)

    def bits_per_pixel(self, labels: np.ndarray) -> float:
        """Mean code length in bits over the valid cells of (N, H, W) maps scored in raster order; NaN if none."""
        log2_p = self.log2_prob(labels)
        valid = np.isfinite(log2_p)
        return float(-log2_p[valid].sum() / valid.sum()) if valid.any() else math.nan

    @cached_property
    def backoff_tables(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(divisor, sorted keys, (M_k, K) counts) for the contexts (W, N, NW, NE), (W, N, NW), (W, N) and W: a
        context id floor-divided by (K + 1)^k drops its last k neighbours."""
        base = self.n_classes + 1
        tables = []
        for dropped in range(4):
            divisor = base**dropped
            # Ids are sorted, so the ids sharing a shorter context are contiguous: sum them in runs.
            keys, first = np.unique(self.contexts // divisor, return_index=True)
            tables.append((divisor, keys, np.add.reduceat(self.counts, first, axis=0)))
        return tables

    def sampling_weights(self, ids: np.ndarray) -> np.ndarray:
        """(n, K) unnormalised class weights for (n,) context ids: the counts of the longest seen part of each
        context (see the class docstring)."""
        ids = np.asarray(ids, dtype=np.int64)
        weights = np.tile(self.counts.sum(axis=0), (len(ids), 1))
        found = np.zeros(len(ids), dtype=bool)
        for divisor, keys, counts in self.backoff_tables:
            shorter = ids // divisor
            position = np.minimum(np.searchsorted(keys, shorter), len(keys) - 1)
            use = (keys[position] == shorter) & ~found
            weights[use] = counts[position[use]]
            found |= use
        return weights

    def sample(self, n: int, height: int, width: int, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        """(n, height, width) int64 maps drawn cell by cell in raster order, each from its
        :meth:`sampling_weights` raised to 1 / ``temperature`` and renormalised."""
        if n < 1 or height < 1 or width < 1:
            raise UserError(f"context model samples need n, height and width >= 1, got {n}, {height}, {width}")
        if not temperature > 0:
            raise UserError(f"temperature must be > 0, got {temperature}")
        base = self.n_classes + 1
        canvas = np.full((n, height + 1, width + 2), self.n_classes, dtype=np.int64)  # "outside" all round
        for row in range(1, height + 1):
            for col in range(1, width + 1):
                above = canvas[:, row - 1]
                ids = _context_id(canvas[:, row, col - 1], above[:, col], above[:, col - 1], above[:, col + 1], base)
                weights = self.sampling_weights(ids).astype(np.float64)
                weights = (weights / weights.max(axis=-1, keepdims=True)) ** (1.0 / temperature)  # no overflow
                cumulative = np.cumsum(weights, axis=-1)
                draw = rng.random(n) * cumulative[:, -1]
                canvas[:, row, col] = np.minimum((cumulative < draw[:, None]).sum(axis=-1), self.n_classes - 1)
        return canvas[:, 1:, 1:-1].copy()


# ------------------------------------------------------------------------------------------ compressors


def _lzma(data: bytes) -> bytes:
    """xz at preset 9 extreme with the dictionary cut to the input: the same stream as the preset would write,
    without allocating its 64 MB dictionary for every small chip."""
    dictionary = min(max(len(data), 4096), LZMA_MAX_DICTIONARY)
    return lzma.compress(
        data, filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": dictionary}]
    )


def _image_bytes(image: np.ndarray, codec: str) -> int:
    buffer = io.BytesIO()
    picture = Image.fromarray(image, mode="L")
    if codec == "png":
        picture.save(buffer, format="PNG", optimize=True, compress_level=9)
    else:
        picture.save(buffer, format="WEBP", lossless=True, quality=100, method=6)
    return len(buffer.getvalue())


STREAM_CODECS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda data: gzip.compress(data, compresslevel=9, mtime=0),
    "bz2": lambda data: bz2.compress(data, compresslevel=9),
    "lzma": _lzma,
}


def available_codecs() -> tuple[str, ...]:
    """:data:`CODECS` less WebP when this Pillow was built without it."""
    return CODECS if features.check("webp") else tuple(c for c in CODECS if c != "webp")


def _mosaics(pixels: np.ndarray) -> list[np.ndarray]:
    """Chips side by side on near-square mosaics (nodata byte between), each within WebP's size limit."""
    count, height, width = pixels.shape
    per_side = max(1, min(WEBP_MAX_SIDE // height, WEBP_MAX_SIDE // width))
    mosaics = []
    for start in range(0, count, per_side * per_side):
        group = pixels[start : start + per_side * per_side]
        columns = math.ceil(math.sqrt(len(group)))
        rows = math.ceil(len(group) / columns)
        mosaic = np.full((rows * height, columns * width), NODATA_BYTE, dtype=np.uint8)
        for i, chip in enumerate(group):
            r, c = divmod(i, columns)
            mosaic[r * height : (r + 1) * height, c * width : (c + 1) * width] = chip
        mosaics.append(mosaic)
    return mosaics


def compressed_bits(labels: np.ndarray) -> dict[str, float]:
    """Bits per cell of gzip, bz2, lzma (xz), PNG and WebP-lossless on (N, H, W) class maps, strongest settings.

    Key ``codec``: all chips pooled, one byte stream for gzip/bz2/lzma and one 8-bit grey mosaic for PNG/WebP
    (generous: headers paid once, statistics shared). Key ``codec_per_chip``: every chip compressed alone, header
    included, averaged. Cells are one byte each, nodata :data:`NODATA_BYTE`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.size == 0:
        raise UserError(f"compressed_bits: expected non-empty (N, H, W) class maps, got shape {labels.shape}")
    if labels.max() >= NODATA_BYTE:
        raise UserError(f"compressed_bits: class {int(labels.max())} does not fit a byte below {NODATA_BYTE}")
    pixels = np.where(labels >= 0, labels, NODATA_BYTE).astype(np.uint8)
    bits = {}
    for codec in available_codecs():
        if codec in STREAM_CODECS:
            compress = STREAM_CODECS[codec]
            pooled = len(compress(pixels.tobytes()))
            per_chip = sum(len(compress(chip.tobytes())) for chip in pixels)
        else:
            pooled = sum(_image_bytes(mosaic, codec) for mosaic in _mosaics(pixels))
            per_chip = sum(_image_bytes(chip, codec) for chip in pixels)
        bits[codec] = 8.0 * pooled / pixels.size
        bits[f"{codec}_per_chip"] = 8.0 * per_chip / pixels.size
    return bits


# ------------------------------------------------------------------------------------------ fair test chips


@dataclass(frozen=True)
class HeldOut:
    """Which test chips of a chip file to score: ``indices`` into its test split, in file order."""

    indices: np.ndarray
    total: int
    duplicates: int  # exact copies (every channel) of an earlier chip, dropped
    overlapping: int | None  # chips sharing a pixel with a kept chip, dropped; None: overlap was not checked
    note: str = ""  # why overlap was not checked

    def describe(self) -> str:
        """One line: how many chips are kept and why the others were dropped."""
        text = f"{len(self.indices)} of {self.total} test chips kept: {self.duplicates} exact duplicate(s) dropped"
        if self.overlapping is None:
            return f"{text}; overlap not checked ({self.note})"
        return f"{text}, {self.overlapping} overlapping a kept chip dropped"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept": len(self.indices),
            "total": self.total,
            "duplicates_dropped": self.duplicates,
            "overlapping_dropped": self.overlapping,
            "description": self.describe(),
        }


def non_overlapping(rows: np.ndarray, cols: np.ndarray, chip_size: int) -> np.ndarray:
    """Greedy in the order given: keep a chip unless it shares a pixel with a chip already kept. ``rows`` and
    ``cols`` are chip centres in pixels (any origin); two chips share a pixel when both offsets are below the
    chip size (half a pixel of slack absorbs the rounding of the lon/lat round trip). Returns a bool mask."""
    limit = chip_size - 0.5
    cell_rows = np.floor(np.asarray(rows) / chip_size).astype(np.int64)
    cell_cols = np.floor(np.asarray(cols) / chip_size).astype(np.int64)
    # Chips that overlap lie in the same or a neighbouring cell of a chip-sized grid: only those are compared.
    cells: dict[tuple[int, int], list[int]] = {}
    keep = np.zeros(len(rows), dtype=bool)
    for i in range(len(rows)):
        r, c = int(cell_rows[i]), int(cell_cols[i])
        clash = any(
            abs(rows[j] - rows[i]) < limit and abs(cols[j] - cols[i]) < limit
            for dr in (-1, 0, 1)
            for dc in (-1, 0, 1)
            for j in cells.get((r + dr, c + dc), ())
        )
        if not clash:
            keep[i] = True
            cells.setdefault((r, c), []).append(i)
    return keep


def heldout_chips(chip_set: ChipSet) -> HeldOut:
    """The test chips to score: exact duplicates dropped, then greedily (in file order) every chip that shares
    a pixel with a chip already kept. Overlap is decided from the chip centres (``test_coords``) and the
    metadata's CRS and pixel size; without those the chips are only de-duplicated, and the result says so."""
    data = chip_set.test_data
    distinct = first_occurrences(data)
    duplicates = len(data) - len(distinct)
    centres = chip_set.centre_pixels(chip_set.test_coords[distinct])
    if isinstance(centres, str):
        return HeldOut(distinct, len(data), duplicates, None, centres)
    keep = non_overlapping(centres[0], centres[1], chip_set.chip_size)
    return HeldOut(distinct[keep], len(data), duplicates, int((~keep).sum()))


def fair_test_split(chip_set: ChipSet) -> tuple[ChipSet, HeldOut]:
    """``chip_set`` with its test split cut to :func:`heldout_chips`, and what was kept."""
    heldout = heldout_chips(chip_set)
    fair = dataclasses.replace(
        chip_set, test_data=chip_set.test_data[heldout.indices], test_coords=chip_set.test_coords[heldout.indices]
    )
    return fair, heldout


def fit_context_model(chip_set: ChipSet, n_classes: int, deduplicate: bool = False) -> CausalContextModel | None:
    """The context model fitted on the chip file's train split (with ``deduplicate``, on one copy of each distinct
    chip, as land-cover training does by default); None when that split is empty."""
    if len(chip_set.train_data) == 0:
        return None
    data = chip_set.train_data
    return CausalContextModel.fit(chip_labels(data[first_occurrences(data)] if deduplicate else data), n_classes)


CONTEXT_FITS = {False: "every train chip", True: "one copy of each distinct train chip"}


def strongest_context_bits(chip_set: ChipSet, labels: np.ndarray, n_classes: int) -> tuple[float, str] | None:
    """Bits per pixel of ``labels`` under the better of the two context-model fits (every train chip, or one copy
    of each distinct one), and which fit that was; None when the train split is empty.

    The better fit is picked on the scored chips themselves, which can only favour the baseline: the model is
    held to the stronger of the two. On smooth maps the fits differ a lot (Koppen-Geiger 16 px chips: 0.264 bits
    with every chip, 0.237 with distinct ones, since most windows are copies of one uniform chip)."""
    scores = []
    for deduplicate, fit in CONTEXT_FITS.items():
        model = fit_context_model(chip_set, n_classes, deduplicate)
        if model is None:
            return None
        scores.append((model.bits_per_pixel(labels), fit))
    return min(scores)
