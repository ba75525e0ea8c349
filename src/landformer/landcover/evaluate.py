"""Realism of generated land-cover maps: class histograms and landscape metrics against test chips.

A generator can match the class fractions of real maps and still produce speckle; landscape metrics from
landscape ecology (FRAGSTATS, McGarigal et al.) measure the spatial pattern that class fractions miss. Every
metric is computed per chip over its valid (non-nodata) cells and averaged over chips:

- ``patch_density``: patches per 100 valid cells. A patch is a connected region of one class; connectivity is
  FRAGSTATS' default 8-neighbour rule unless ``connectivity=4``.
- ``edge_density``: cell sides between two different classes (4-neighbour pairs, each counted once) per valid
  cell. The chip border and sides touching nodata are not edges (FRAGSTATS' default of not counting the
  landscape boundary).
- ``mean_patch_area``: valid cells per patch.
- ``shannon_diversity``: -sum p_k ln p_k over the chip's class fractions (SHDI).
- ``contagion``: Riitters et al. (1996) / FRAGSTATS CONTAG in percent,
  ``(1 + sum_ij q_ij ln q_ij / (2 ln t)) * 100``, where q_ij is the share of ordered 4-neighbour pairs
  (each adjacency counted twice, once from each side) with classes (i, j) and t the number of classes present.
  Undefined (NaN, left out of the average) for a chip with fewer than two classes.
- ``single_pixel_share``: patches of exactly one cell as a share of all patches (same connectivity). Speckle:
  maps with a minimum mapping unit (CORINE's is 25 cells at 100 m) have none.

Class histograms are compared on the pooled class fractions of each set: L1 distance and Jensen-Shannon
divergence (base 2, so it lies in [0, 1]).

The shuffled-pixel baseline permutes the valid pixels of every reference chip: it has exactly the reference's
class histogram and none of its spatial structure, so it shows how much of the gap the landscape metrics see
that the histogram cannot. The noise floor compares one half of the reference chips with the other (alternate
chips, so both halves cover the same ground): the gaps two sets of real chips show by chance alone. Its halves
hold half as many chips as the reference, so it is a little larger than the floor for n samples against n chips.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from landformer.core.errors import UserError

LANDSCAPE_METRICS = ("patch_density", "edge_density", "mean_patch_area", "shannon_diversity", "contagion")
# Every per-map metric. The single-pixel share is kept out of LANDSCAPE_METRICS, the ones compared by relative
# gap: real maps often have no single-cell patch (a minimum mapping unit), so a relative gap to them is undefined
# or huge; compare it as a ratio.
ALL_METRICS = (*LANDSCAPE_METRICS, "single_pixel_share")
METRIC_UNITS = {
    "patch_density": "patches / 100 cells",
    "edge_density": "edge sides / cell",
    "mean_patch_area": "cells",
    "shannon_diversity": "nats",
    "contagion": "%",
    "single_pixel_share": "share of patches",
    "class_l1": "L1",
    "class_js": "JS (bits)",
}


def check_maps(maps: np.ndarray, n_classes: int, what: str) -> np.ndarray:
    """(N, H, W) (or one (H, W)) integer maps of -1 (nodata) and classes 0..n_classes-1 as int64; else a UserError."""
    maps = np.asarray(maps)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3 or maps.dtype.kind not in "iu":
        raise UserError(f"{what}: expected (N, H, W) integer class maps, got {maps.dtype} {maps.shape}")
    if maps.shape[0] == 0:
        raise UserError(f"{what}: no maps given")
    if maps.size and (maps.min() < -1 or maps.max() >= n_classes):
        raise UserError(
            f"{what}: values {int(maps.min())}..{int(maps.max())}; expected -1 (nodata) or classes 0..{n_classes - 1}"
        )
    return maps.astype(np.int64)


def patch_counts(maps: np.ndarray, n_classes: int, connectivity: int = 8) -> np.ndarray:
    """Number of patches (connected one-class regions) in each of (N, H, W) maps, (N,) int64."""
    return patch_statistics(maps, n_classes, connectivity)[0]


def patch_statistics(maps: np.ndarray, n_classes: int, connectivity: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per map of (N, H, W) maps: the number of patches and the number of those made of one cell, (N,) int64 each."""
    if connectivity not in (4, 8):
        raise UserError(f"connectivity must be 4 or 8, got {connectivity}")
    maps = check_maps(maps, n_classes, "patch_counts")
    n_maps, height, width = maps.shape
    # A 3-D structure whose outer slices are empty labels all maps at once without joining neighbouring maps.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    counts = np.zeros(n_maps, dtype=np.int64)
    single = np.zeros(n_maps, dtype=np.int64)
    for k in range(n_classes):
        labelled, n_patches = ndimage.label(maps == k, structure=structure)
        if n_patches == 0:
            continue
        flat = labelled.ravel()
        patch_cells = np.flatnonzero(flat)  # label 0 is the background
        _, first_cell = np.unique(flat[patch_cells], return_index=True)  # patch labels 1..n_patches in order
        patch_map = patch_cells[first_cell] // (height * width)
        one_cell = np.bincount(flat, minlength=n_patches + 1)[1:] == 1
        counts += np.bincount(patch_map, minlength=n_maps)
        single += np.bincount(patch_map[one_cell], minlength=n_maps)
    return counts, single


def adjacency_counts(maps: np.ndarray, n_classes: int) -> np.ndarray:
    """Ordered 4-neighbour class pairs of each map, (N, K, K); every adjacency is counted from both sides.

    Pairs with a nodata cell are left out.
    """
    maps = check_maps(maps, n_classes, "adjacency_counts")
    n_maps = maps.shape[0]
    index = np.arange(n_maps).reshape(-1, 1, 1)
    counts = np.zeros(n_maps * n_classes * n_classes, dtype=np.int64)
    for first, second in ((maps[:, :, :-1], maps[:, :, 1:]), (maps[:, :-1, :], maps[:, 1:, :])):
        valid = (first >= 0) & (second >= 0)
        chip = np.broadcast_to(index, first.shape)[valid]
        a, b = first[valid], second[valid]
        for i, j in ((a, b), (b, a)):
            counts += np.bincount((chip * n_classes + i) * n_classes + j, minlength=counts.size)
    return counts.reshape(n_maps, n_classes, n_classes)


def class_counts(maps: np.ndarray, n_classes: int) -> np.ndarray:
    """Valid cells of each class in each map, (N, K) int64."""
    maps = check_maps(maps, n_classes, "class_counts")
    flat = maps.reshape(maps.shape[0], -1)
    chip = np.broadcast_to(np.arange(flat.shape[0])[:, None], flat.shape)
    valid = flat >= 0
    counts = np.bincount(chip[valid] * n_classes + flat[valid], minlength=flat.shape[0] * n_classes)
    return counts.reshape(flat.shape[0], n_classes)


def landscape_metrics(maps: np.ndarray, n_classes: int, connectivity: int = 8) -> dict[str, np.ndarray]:
    """Per-map landscape metrics (see the module docstring): a dict of (N,) float64 arrays.

    A map with no valid cell gets NaN everywhere.
    """
    maps = check_maps(maps, n_classes, "landscape_metrics")
    cells = class_counts(maps, n_classes)
    n_valid = cells.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        patches, single = (counts.astype(np.float64) for counts in patch_statistics(maps, n_classes, connectivity))
        adjacency = adjacency_counts(maps, n_classes).astype(np.float64)
        unlike_sides = (adjacency.sum(axis=(1, 2)) - np.trace(adjacency, axis1=1, axis2=2)) / 2
        fractions = cells / n_valid[:, None]
        shannon = -np.where(fractions > 0, fractions * np.log(np.where(fractions > 0, fractions, 1.0)), 0.0).sum(1)
        shares = adjacency / adjacency.sum(axis=(1, 2), keepdims=True)
        entropy = np.where(shares > 0, shares * np.log(np.where(shares > 0, shares, 1.0)), 0.0).sum(axis=(1, 2))
        n_present = (cells > 0).sum(axis=1)
        contagion = np.where(n_present >= 2, (1 + entropy / (2 * np.log(np.maximum(n_present, 2)))) * 100, np.nan)
        no_pairs = adjacency.sum(axis=(1, 2)) == 0
        contagion = np.where(no_pairs, np.nan, contagion)
        metrics = {
            "patch_density": patches / n_valid * 100,
            "edge_density": unlike_sides / n_valid,
            "mean_patch_area": n_valid / patches,
            "shannon_diversity": shannon,
            "contagion": contagion,
            "single_pixel_share": single / patches,
        }
    empty = n_valid == 0
    return {name: np.where(empty, np.nan, values) for name, values in metrics.items()}


def mean_landscape_metrics(maps: np.ndarray, n_classes: int, connectivity: int = 8) -> dict[str, float]:
    """Landscape metrics averaged over maps (maps where a metric is undefined are left out of its mean)."""
    per_map = landscape_metrics(maps, n_classes, connectivity)
    means = {}
    for name, values in per_map.items():
        finite = values[np.isfinite(values)]
        means[name] = float(finite.mean()) if finite.size else math.nan
    return means


def class_fractions(maps: np.ndarray, n_classes: int) -> np.ndarray:
    """Pooled share of each class over the valid cells of all maps, (K,) float64 summing to 1."""
    totals = class_counts(maps, n_classes).sum(axis=0).astype(np.float64)
    if totals.sum() == 0:
        raise UserError("class_fractions: every cell is nodata")
    return totals / totals.sum()


def l1_distance(p: np.ndarray, q: np.ndarray) -> float:
    """sum |p - q| of two distributions, in [0, 2]."""
    return float(np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum())


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits, in [0, 1]: mean KL of p and q to their average m = (p + q) / 2."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    m = (p + q) / 2

    def kl_to_m(x: np.ndarray) -> float:
        present = x > 0
        return float((x[present] * np.log2(x[present] / m[present])).sum())

    return max(0.5 * kl_to_m(p) + 0.5 * kl_to_m(q), 0.0)


def shuffled_baseline(maps: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each map with its valid pixels randomly permuted in place: same histogram, no spatial structure.

    Nodata cells stay where they are.
    """
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise UserError(f"shuffled_baseline: expected (N, H, W) maps, got shape {maps.shape}")
    rng = np.random.default_rng(seed)
    shuffled = maps.copy()
    for chip in shuffled.reshape(maps.shape[0], -1):
        valid = np.flatnonzero(chip >= 0)
        chip[valid] = chip[rng.permutation(valid)]
    return shuffled


def relative_difference(value: float, reference: float) -> float:
    """(value - reference) / |reference|; NaN when the reference is 0 or either is undefined."""
    if not (math.isfinite(value) and math.isfinite(reference)) or reference == 0:
        return math.nan
    return (value - reference) / abs(reference)


def compare_to_reference(
    samples: np.ndarray, reference: np.ndarray, n_classes: int, connectivity: int = 8
) -> dict[str, dict[str, float]]:
    """Realism of ``samples`` against ``reference`` maps (test chips).

    Returns ``{metric: {"value", "reference", "relative_difference"}}`` for every metric of :data:`ALL_METRICS`, plus
    ``class_l1`` and ``class_js`` (distances between pooled class fractions, whose reference value is 0).
    """
    sample_means = mean_landscape_metrics(samples, n_classes, connectivity)
    reference_means = mean_landscape_metrics(reference, n_classes, connectivity)
    table = {
        name: {
            "value": sample_means[name],
            "reference": reference_means[name],
            "relative_difference": relative_difference(sample_means[name], reference_means[name]),
        }
        for name in ALL_METRICS
    }
    p, q = class_fractions(samples, n_classes), class_fractions(reference, n_classes)
    for name, distance in (("class_l1", l1_distance(p, q)), ("class_js", jensen_shannon(p, q))):
        table[name] = {"value": distance, "reference": 0.0, "relative_difference": math.nan}
    return table


def noise_floor(reference: np.ndarray, n_classes: int, connectivity: int = 8) -> dict[str, dict[str, float]]:
    """:func:`compare_to_reference` of the even-numbered reference maps against the odd-numbered ones."""
    reference = check_maps(reference, n_classes, "noise floor")
    if len(reference) < 2:
        raise UserError(f"the noise floor needs at least 2 reference maps, got {len(reference)}")
    return compare_to_reference(reference[0::2], reference[1::2], n_classes, connectivity)


def first_occurrences(data: np.ndarray) -> np.ndarray:
    """Sorted indices of the chips of (N, ...) ``data`` that are not an exact byte copy of an earlier chip."""
    flat = np.ascontiguousarray(np.asarray(data).reshape(len(data), -1))
    if len(flat) == 0:
        return np.empty(0, dtype=np.int64)
    rows = flat.view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1]))).ravel()
    _, first = np.unique(rows, return_index=True)
    return np.sort(first).astype(np.int64)


def realism_report(
    sample_sets: Mapping[str, np.ndarray],
    reference: np.ndarray,
    n_classes: int,
    connectivity: int = 8,
    seed: int = 0,
    distinct: bool = True,
) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`compare_to_reference` for every named set of samples, the shuffled-pixel baseline (key
    ``"shuffled_baseline"``) and, with two or more reference maps, the noise floor (key ``"noise_floor"``).

    With ``distinct`` (for a reference of fair test chips, which hold no exact duplicate) each sample set drops
    its exact duplicates too. Real land cover repeats some chips very often (a uniform barren, ice or forest
    chip); de-duplicated test chips keep one of each, so a generator that draws them as often as the real map
    holds them would otherwise read as far too homogeneous (on IGBP 16x16 chips: mean patch area +84 % against
    +28 % once both sets are treated alike).
    """
    report = {
        name: compare_to_reference(
            np.asarray(maps)[first_occurrences(maps)] if distinct else maps, reference, n_classes, connectivity
        )
        for name, maps in sample_sets.items()
    }
    report["shuffled_baseline"] = compare_to_reference(
        shuffled_baseline(reference, seed), reference, n_classes, connectivity
    )
    if len(reference) >= 2:
        report["noise_floor"] = noise_floor(reference, n_classes, connectivity)
    return report


def max_relative_gap(candidate: Mapping[str, float], baseline: Mapping[str, float]) -> float:
    """Largest |candidate - baseline| / |baseline| over :data:`LANDSCAPE_METRICS` (NaN if any is undefined)."""
    gaps = [abs(relative_difference(candidate[name], baseline[name])) for name in LANDSCAPE_METRICS]
    return max(gaps) if all(math.isfinite(gap) for gap in gaps) else math.nan


def format_report(report: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """A plain-text table: one row per metric, the reference and each set's value (relative difference)."""
    names = list(report)
    metrics = list(next(iter(report.values())))
    header = f"{'metric':<18} {'reference':>10} " + " ".join(f"{name:>26}" for name in names)
    lines = [header, "-" * len(header)]
    for metric in metrics:
        reference = next(iter(report.values()))[metric]["reference"]
        cells = []
        for name in names:
            row = report[name][metric]
            change = row["relative_difference"]
            cells.append(
                f"{row['value']:>10.4g} ({change:+7.1%})" if math.isfinite(change) else f"{row['value']:>10.4g}"
            )
        lines.append(f"{metric:<18} {reference:>10.4g} " + " ".join(f"{cell:>26}" for cell in cells))
    return "\n".join(lines)
