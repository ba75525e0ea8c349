"""Realism metrics against hand computations on tiny maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from landformer.core.errors import UserError
from landformer.landcover import evaluate

TWO_HALVES = np.array([[0, 0, 1, 1]] * 4)  # two 8-cell patches side by side
CHECKERBOARD = np.indices((4, 4)).sum(axis=0) % 2


def test_two_halves_by_hand() -> None:
    metrics = evaluate.landscape_metrics(TWO_HALVES, n_classes=2)
    assert metrics["patch_density"][0] == pytest.approx(2 / 16 * 100)
    assert metrics["edge_density"][0] == pytest.approx(4 / 16)  # one unlike side per row
    assert metrics["mean_patch_area"][0] == pytest.approx(8.0)
    assert metrics["shannon_diversity"][0] == pytest.approx(math.log(2))
    # Like pairs per class: 4 horizontal + 6 vertical = 10, counted twice -> 20; unlike 4, twice -> 4 each way.
    shares = np.array([20, 20, 4, 4]) / 48
    expected = (1 + (shares * np.log(shares)).sum() / (2 * math.log(2))) * 100
    assert metrics["contagion"][0] == pytest.approx(expected)
    np.testing.assert_array_equal(evaluate.adjacency_counts(TWO_HALVES, 2)[0], [[20, 4], [4, 20]])


def test_checkerboard_connectivity_and_contagion() -> None:
    assert evaluate.patch_counts(CHECKERBOARD[None], 2, connectivity=8)[0] == 2  # diagonals join
    assert evaluate.patch_counts(CHECKERBOARD[None], 2, connectivity=4)[0] == 16
    metrics = evaluate.landscape_metrics(CHECKERBOARD, 2)
    assert metrics["edge_density"][0] == pytest.approx(24 / 16)  # every one of the 24 sides is an edge
    # Only unlike pairs, half each way: 1 + ln(1/2) / (2 ln 2) = 1/2.
    assert metrics["contagion"][0] == pytest.approx(50.0)


def test_diagonal_touch_counts() -> None:
    grid = np.zeros((3, 3), dtype=np.int64)
    grid[0, 0] = grid[1, 1] = 1
    assert evaluate.patch_counts(grid[None], 2, connectivity=8)[0] == 2
    assert evaluate.patch_counts(grid[None], 2, connectivity=4)[0] == 3


def test_single_class_map() -> None:
    metrics = evaluate.landscape_metrics(np.full((4, 4), 3), n_classes=5)
    assert metrics["patch_density"][0] == pytest.approx(100 / 16)
    assert metrics["edge_density"][0] == 0
    assert metrics["shannon_diversity"][0] == 0
    assert math.isnan(metrics["contagion"][0])  # undefined with one class, left out of the mean
    means = evaluate.mean_landscape_metrics(np.stack([np.full((4, 4), 1), TWO_HALVES]), n_classes=2)
    assert means["contagion"] == pytest.approx(evaluate.landscape_metrics(TWO_HALVES, 2)["contagion"][0])


def test_nodata_is_not_a_class_nor_an_edge() -> None:
    grid = np.array([[0, -1, 0], [0, -1, 0], [0, -1, 1]])
    metrics = evaluate.landscape_metrics(grid, n_classes=2)
    assert evaluate.patch_counts(grid[None], 2)[0] == 3  # the nodata column splits class 0
    assert metrics["patch_density"][0] == pytest.approx(3 / 6 * 100)
    assert metrics["edge_density"][0] == pytest.approx(1 / 6)  # only the (1,2)-(2,2) side
    assert metrics["mean_patch_area"][0] == pytest.approx(2.0)
    all_nodata = evaluate.landscape_metrics(np.full((2, 2), -1), n_classes=2)
    assert all(math.isnan(values[0]) for values in all_nodata.values())


def test_single_pixel_share_by_hand() -> None:
    grid = np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2], [0, 0, 0, 2]])
    # 8 neighbours: the two 1s touch diagonally -> patches {0}, {1, 1}, {2, 2}: none of one cell.
    assert evaluate.landscape_metrics(grid, 3)["single_pixel_share"][0] == 0
    # 4 neighbours: the 1s are two one-cell patches of four.
    assert evaluate.landscape_metrics(grid, 3, connectivity=4)["single_pixel_share"][0] == pytest.approx(2 / 4)
    np.testing.assert_array_equal(evaluate.patch_statistics(np.stack([grid, CHECKERBOARD]), 3, 4)[1], [2, 16])
    island = np.zeros((3, 3), dtype=np.int64)
    island[1, 1] = 1  # a ring of 0 around one cell of 1: two patches, one of them a single cell
    assert evaluate.landscape_metrics(island, 2)["single_pixel_share"][0] == pytest.approx(1 / 2)
    assert evaluate.landscape_metrics(TWO_HALVES, 2)["single_pixel_share"][0] == 0


def test_noise_floor_compares_alternate_halves() -> None:
    reference = np.stack([TWO_HALVES, CHECKERBOARD, TWO_HALVES.T, CHECKERBOARD, TWO_HALVES])
    floor = evaluate.noise_floor(reference, 2)
    assert floor == evaluate.compare_to_reference(reference[[0, 2, 4]], reference[[1, 3]], 2)
    report = evaluate.realism_report({"samples": reference}, reference, 2)
    assert report["noise_floor"] == floor
    assert "noise_floor" not in evaluate.realism_report({"samples": reference[:1]}, reference[:1], 2)
    same = evaluate.noise_floor(np.stack([TWO_HALVES] * 4), 2)
    assert all(same[name]["relative_difference"] == 0 for name in evaluate.LANDSCAPE_METRICS)
    with pytest.raises(UserError, match="at least 2"):
        evaluate.noise_floor(TWO_HALVES[None], 2)


def test_maps_do_not_join_across_the_batch() -> None:
    top = np.ones((4, 4), dtype=np.int64)
    top[3] = 0  # class 0 on the last row of the first map ...
    bottom = np.ones((4, 4), dtype=np.int64)
    bottom[0] = 0  # ... and on the first row of the second
    counts = evaluate.patch_counts(np.stack([top, bottom]), 2)
    np.testing.assert_array_equal(counts, [2, 2])


def _flood_fill_patches(grid: np.ndarray, connectivity: int) -> int:
    """Independent reference: breadth-first search over cells."""
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    seen = np.zeros(grid.shape, dtype=bool)
    patches = 0
    for start in zip(*np.nonzero(grid >= 0), strict=True):
        if seen[start]:
            continue
        patches += 1
        seen[start] = True
        queue = [start]
        while queue:
            r, c = queue.pop()
            for dr, dc in steps:
                rr, cc = r + dr, c + dc
                inside = 0 <= rr < grid.shape[0] and 0 <= cc < grid.shape[1]
                if inside and not seen[rr, cc] and grid[rr, cc] == grid[r, c]:
                    seen[rr, cc] = True
                    queue.append((rr, cc))
    return patches


@settings(max_examples=40, deadline=None)
@given(
    grids=arrays(
        np.int64, st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6)), elements=st.integers(-1, 2)
    ),
    connectivity=st.sampled_from([4, 8]),
)
def test_patch_counts_match_flood_fill(grids: np.ndarray, connectivity: int) -> None:
    counts = evaluate.patch_counts(grids, 3, connectivity)
    assert counts.tolist() == [_flood_fill_patches(grid, connectivity) for grid in grids]
    edges = evaluate.landscape_metrics(grids, 3)["edge_density"]
    for grid, density in zip(grids, edges, strict=True):
        valid = grid >= 0
        sides = ((grid[:, 1:] != grid[:, :-1]) & valid[:, 1:] & valid[:, :-1]).sum()
        sides += ((grid[1:] != grid[:-1]) & valid[1:] & valid[:-1]).sum()
        if valid.any():
            assert density == pytest.approx(sides / valid.sum())


def test_histogram_distances_by_hand() -> None:
    assert evaluate.jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    assert evaluate.jensen_shannon([0.3, 0.7], [0.3, 0.7]) == pytest.approx(0.0)
    # m = (0.75, 0.25): KL(p||m) = 0.5 log2(2/3) + 0.5 log2(2); KL(q||m) = log2(4/3).
    expected = 0.5 * (0.5 * math.log2(2 / 3) + 0.5) + 0.5 * math.log2(4 / 3)
    assert evaluate.jensen_shannon([0.5, 0.5], [1.0, 0.0]) == pytest.approx(expected)
    assert evaluate.l1_distance([0.5, 0.5], [1.0, 0.0]) == pytest.approx(1.0)
    fractions = evaluate.class_fractions(np.array([[[0, 1], [1, -1]], [[2, 2], [2, 2]]]), n_classes=4)
    np.testing.assert_allclose(fractions, [1 / 7, 2 / 7, 4 / 7, 0])


def test_shuffled_baseline_keeps_histograms_and_nodata() -> None:
    rng = np.random.default_rng(1)
    maps = rng.integers(0, 4, size=(5, 8, 8))
    maps[:, 0, :3] = -1
    shuffled = evaluate.shuffled_baseline(maps, seed=3)
    np.testing.assert_array_equal(evaluate.class_counts(shuffled, 4), evaluate.class_counts(maps, 4))
    np.testing.assert_array_equal(shuffled < 0, maps < 0)
    assert not np.array_equal(shuffled, maps)
    np.testing.assert_array_equal(shuffled, evaluate.shuffled_baseline(maps, seed=3))


def test_report_relative_differences_and_baseline() -> None:
    reference = np.stack([TWO_HALVES, TWO_HALVES.T])
    samples = np.stack([CHECKERBOARD, TWO_HALVES])
    report = evaluate.realism_report({"samples": samples}, reference, n_classes=2, seed=0)
    sample_means = evaluate.mean_landscape_metrics(samples, 2)
    reference_means = evaluate.mean_landscape_metrics(reference, 2)
    for name in evaluate.LANDSCAPE_METRICS:
        row = report["samples"][name]
        assert row["value"] == pytest.approx(sample_means[name])
        assert row["relative_difference"] == pytest.approx(
            (sample_means[name] - reference_means[name]) / abs(reference_means[name])
        )
    # Two patches in every map (the checkerboard's diagonals join under the 8-neighbour rule).
    assert report["samples"]["patch_density"]["relative_difference"] == pytest.approx(0.0)
    assert report["samples"]["edge_density"]["relative_difference"] == pytest.approx((0.875 - 0.25) / 0.25)
    assert report["shuffled_baseline"]["class_l1"]["value"] == 0
    assert report["shuffled_baseline"]["class_js"]["value"] == 0
    assert "patch_density" in evaluate.format_report(report)


def test_max_relative_gap() -> None:
    base = dict.fromkeys(evaluate.LANDSCAPE_METRICS, 10.0)
    candidate = {**base, "edge_density": 11.5}
    assert evaluate.max_relative_gap(candidate, base) == pytest.approx(0.15)


def test_bad_maps_are_user_errors() -> None:
    with pytest.raises(UserError, match=r"classes 0\.\.1"):
        evaluate.landscape_metrics(np.array([[0, 2]]), n_classes=2)
    with pytest.raises(UserError, match="integer class maps"):
        evaluate.landscape_metrics(np.zeros((2, 2), dtype=np.float32), n_classes=2)
    with pytest.raises(UserError, match="connectivity"):
        evaluate.patch_counts(np.zeros((1, 2, 2), dtype=np.int64), 2, connectivity=6)


def test_realism_report_treats_duplicate_samples_like_the_deduplicated_reference() -> None:
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 3, size=(6, 4, 4))
    uniform = np.zeros((1, 4, 4), dtype=np.int64)
    samples = np.concatenate([reference[:3], uniform, uniform, uniform])  # the uniform chip drawn three times
    report = evaluate.realism_report({"s": samples}, reference, 3)
    once = evaluate.realism_report({"s": samples[:4]}, reference, 3)
    assert report["s"] == once["s"]
    kept_all = evaluate.realism_report({"s": samples}, reference, 3, distinct=False)
    assert kept_all["s"]["mean_patch_area"]["value"] > report["s"]["mean_patch_area"]["value"]
