"""Continuation measures of an expanded DEM on hand-made rasters whose answer is known: seams of a set height,
planted lattices, scaled relief, a valley that runs on or is walled off, planted pits; and depression filling
checked against morphological reconstruction."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from landformer.terrain.metrics import (
    d8_drainage,
    edge_seam,
    expansion_strips,
    fill_depressions,
    flow_accumulation,
    fractal_noise,
    pits_per_km2,
    rectangle_lattice_contrast,
    relief_ratio,
    strip_lattice_contrast,
    valley_continuation,
)

# A 384 x 384 map whose middle 192 x 192 is the original: strips of 96 px on all four sides.
SIZE, R0, C0, H, W = 384, 96, 96, 192, 192


def new_pixels(shape: tuple[int, int], r0: int, c0: int, h: int, w: int) -> np.ndarray:
    mask = np.ones(shape, dtype=bool)
    mask[r0 : r0 + h, c0 : c0 + w] = False
    return mask


def test_expansion_strips_cover_every_new_pixel_once() -> None:
    for r0, c0, h, w in ((10, 5, 20, 30), (0, 0, 20, 30), (0, 7, 40, 30), (10, 0, 30, 50)):
        count = np.zeros((40, 50), dtype=int)
        for rows, cols in expansion_strips((40, 50), r0, c0, h, w).values():
            count[rows, cols] += 1
        assert np.array_equal(count, new_pixels((40, 50), r0, c0, h, w).astype(int))
    assert list(expansion_strips((40, 50), 0, 0, 40, 20)) == ["right"]


def test_edge_seam_reads_a_planted_step_exactly() -> None:
    rows, cols = np.mgrid[0:64, 0:64].astype(float)
    plane = rows + cols  # every step is 1, so the interior mean |dz| is 1 on both axes
    r0, c0, h, w = 20, 20, 30, 30
    assert edge_seam(plane, r0, c0, h, w)["ratio"] == pytest.approx(1.0)
    lowered = plane - 4.0 * new_pixels(plane.shape, r0, c0, h, w)
    seam = edge_seam(lowered, r0, c0, h, w, depth=8)
    # Top and left: the strip is 4 lower where the plane falls by 1 outward, a step of 5; bottom and right: the
    # plane rises by 1 outward, a step of 3. Further out the plane steps by 1 again.
    for side, step in (("top", 5.0), ("left", 5.0), ("bottom", 3.0), ("right", 3.0)):
        assert seam["sides"][side]["profile"] == pytest.approx([step] + [1.0] * 8)
        assert seam["sides"][side]["ratio"] == pytest.approx((step + 8) / 9)
    assert seam["ratio"] == pytest.approx(12 / 9)
    assert seam["profile"] == pytest.approx([4.0] + [1.0] * 8)


def test_edge_seam_profile_stops_at_a_thin_strip_and_needs_a_big_enough_original() -> None:
    rows, cols = np.mgrid[0:40, 0:44].astype(float)
    seam = edge_seam(rows * cols, 0, 0, 40, 40, depth=8)  # only a 4 px strip on the right
    assert list(seam["sides"]) == ["right"]
    assert len(seam["sides"]["right"]["profile"]) == 4
    with pytest.raises(ValueError, match="wider than 17 px"):
        edge_seam(rows, 5, 5, 16, 30, depth=8)
    with pytest.raises(ValueError, match="not inside"):
        edge_seam(rows, 5, 5, 40, 30)


def test_fractal_terrain_has_no_seam_no_lattice_and_the_same_relief() -> None:
    for seed in range(3):
        terrain = fractal_noise(1, SIZE, beta=2.5, seed=seed)[0]
        assert 0.85 < edge_seam(terrain, R0, C0, H, W)["ratio"] < 1.15
        lattice = strip_lattice_contrast(terrain, R0, C0, H, W, periods=(8, 16, 64))
        assert 0.8 < lattice["contrast"] < 1.2
        assert set(lattice["periods"]) == {"8", "16", "64"}
        assert set(lattice["periods"]["16"]["sides"]) == {"top", "bottom", "left", "right"}
        assert 0.7 < relief_ratio(terrain, R0, C0, H, W, window=32)["ratio"] < 1.3


def test_smooth_terrain_reads_no_grid_at_the_token_period() -> None:
    """Blocks cut from smooth terrain (spectral slope -4) leak the power of their slope breaks along the frequency
    axes, where half of a 4 px lattice's bins lie; measured on the heights this read 1.4-1.7 without any grid. The
    Laplacian removes the bias, and a planted 4 px pattern of 5 % of the relief still stands out."""
    for seed in range(3):
        terrain = fractal_noise(1, 256, beta=4.0, seed=seed)[0][:64]
        assert 0.85 < rectangle_lattice_contrast(terrain, 4)["shape"] < 1.15
    terrain = fractal_noise(1, 256, beta=3.0, seed=0)[0][:64]
    pattern = np.random.default_rng(0).standard_normal((4, 4))
    planted = terrain + 0.05 * terrain.std() * np.tile(pattern, (16, 64))
    assert rectangle_lattice_contrast(planted, 4)["shape"] > 2.0


def test_strip_lattice_contrast_finds_a_planted_period_16_pattern() -> None:
    terrain = fractal_noise(1, SIZE, beta=2.5, seed=0)[0]
    strips = new_pixels(terrain.shape, R0, C0, H, W)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    blobs = np.exp(-(((rows % 16) - 8) ** 2 + ((cols % 16) - 8) ** 2) / 8.0)  # the same blob in every 16 px tile
    with_blobs = strip_lattice_contrast(terrain + blobs * strips, R0, C0, H, W, periods=(16,))
    assert with_blobs["periods"]["16"]["contrast"] > 1.5
    assert all(side["shape"] > 1.3 for side in with_blobs["periods"]["16"]["sides"].values())
    step = np.abs(np.diff(terrain, axis=1)).mean()
    offsets = np.random.default_rng(1).standard_normal((SIZE // 16, SIZE // 16))[rows // 16, cols // 16]
    tiled = strip_lattice_contrast(terrain + 2 * step * offsets * strips, R0, C0, H, W, periods=(16,))
    # Random heights per tile put no power on the lattice of the heights but make every tile border a step.
    for side in tiled["periods"]["16"]["sides"].values():
        assert side["steps"] > 1.5
        assert side["shape"] < 1.2
    assert tiled["contrast"] > 2.0


def test_rectangle_lattice_contrast_on_thin_and_tiny_rectangles() -> None:
    terrain = fractal_noise(1, 256, beta=2.5, seed=4)[0]
    thin = rectangle_lattice_contrast(terrain[:64], 64)  # 64 x 256: room for 3 periods along the rows only
    assert thin is not None and 0.7 < thin["contrast"] < 1.3
    assert rectangle_lattice_contrast(terrain[:40, :40], 16) is None
    small = strip_lattice_contrast(terrain[:40, :40], 5, 5, 30, 30, periods=(16,))
    assert np.isnan(small["contrast"]) and small["periods"]["16"]["sides"] == {}


def test_relief_ratio_of_strips_scaled_by_half() -> None:
    tile = np.random.default_rng(0).standard_normal((32, 32))
    z = np.tile(tile, (8, 8))  # every 32 px square has the same standard deviation
    strips = new_pixels(z.shape, 64, 64, 128, 128)
    scaled = np.where(strips, 0.5 * z + 100.0, z)
    relief = relief_ratio(scaled, 64, 64, 128, 128, window=32)
    assert relief["ratio"] == pytest.approx(0.5)
    assert relief["original_relief"] == pytest.approx(tile.std())
    assert {side: entry["ratio"] for side, entry in relief["sides"].items()} == pytest.approx(
        {"top": 0.5, "bottom": 0.5, "left": 0.5, "right": 0.5}
    )
    thin = relief_ratio(z[:, :150], 64, 64, 128, 80, window=32)  # a 6 px right strip holds no square
    assert np.isnan(thin["sides"]["right"]["ratio"]) and thin["ratio"] == pytest.approx(1.0)


def test_fill_depressions_matches_morphological_reconstruction() -> None:
    rng = np.random.default_rng(0)
    for shape in ((60, 45), (1, 7), (3, 3)):
        z = np.round(rng.standard_normal(shape), 1)  # rounding makes ties and flats
        reconstructed = z.copy()
        reconstructed[1:-1, 1:-1] = np.inf
        while True:
            lowered = np.maximum(ndimage.grey_erosion(reconstructed, size=(3, 3), mode="nearest"), z)
            if np.array_equal(lowered, reconstructed):
                break
            reconstructed = lowered
        assert np.array_equal(fill_depressions(z), reconstructed)


def test_a_crater_fills_to_its_lowest_rim_cell() -> None:
    z = np.full((9, 9), 10.0)
    z[2:7, 2:7] = 1.0
    z[1, 4] = 6.0  # a gap in the ring, to the border cell (0, 4) at 7: the crater spills at 7
    z[0, 4] = 7.0
    filled = fill_depressions(z)
    assert np.all(filled[2:7, 2:7] == 7.0) and filled[1, 4] == 7.0
    assert np.array_equal(filled[z > 6], z[z > 6])


def test_d8_drainage_routes_every_cell_to_an_outlet() -> None:
    rows = np.mgrid[0:20, 0:15][0].astype(float)
    drainage = d8_drainage(rows)  # a plane rising to the bottom: every column drains straight up
    assert np.array_equal(drainage.accumulation, np.broadcast_to(20 - rows, (20, 15)))
    terrain = fractal_noise(1, 64, beta=2.0, seed=3)[0]
    drainage = d8_drainage(terrain)
    outlets = drainage.receivers < 0
    assert drainage.accumulation.ravel()[outlets].sum() == terrain.size
    assert np.all(drainage.fill_depth >= 0)
    flat = d8_drainage(np.zeros((9, 12)))  # a level plain drains to its nearest border, a step per ring
    rows, cols = np.mgrid[0:9, 0:12]
    ring = np.minimum(np.minimum(rows, 8 - rows), np.minimum(cols, 11 - cols))
    assert np.array_equal(path_lengths(flat.receivers), ring.ravel())
    with pytest.raises(ValueError, match="loop"):
        flow_accumulation(np.array([1, 0, -1]))
    with pytest.raises(ValueError, match="finite"):
        d8_drainage(np.array([[0.0, np.nan]]))


def path_lengths(receivers: np.ndarray) -> np.ndarray:
    """Number of D8 steps from each cell to where its water leaves the map."""
    lengths = np.zeros(receivers.size, dtype=int)
    for start in range(receivers.size):
        cell = start
        while receivers[cell] >= 0:
            cell = receivers[cell]
            lengths[start] += 1
    return lengths


def valley(wall: bool) -> np.ndarray:
    """A V-shaped valley falling 0.2 per row to the top of a 96 x 64 map; the original is rows 32:96, the new
    strip rows 0:32 continues it, or is walled off by a ridge across rows 28-30 higher than anything else."""
    rows, cols = np.mgrid[0:96, 0:64].astype(float)
    z = np.abs(cols - 32) + 0.2 * rows
    if wall:
        z[28:31] = 100.0 + np.array([0.0, 1.0, 0.0])[:, None] + 0.01 * cols[28:31]
    return z


def test_a_valley_that_runs_on_crosses_the_edge_and_ponds_nothing() -> None:
    continued = valley(wall=False)
    measure = valley_continuation(continued, 32, 0, 64, 64, channel_cells=100, depth=8, pixel_size_m=30.0)
    assert measure["crossing_ratio"] == pytest.approx(1.0)
    assert measure["edge_crossings_per_km"] == pytest.approx(1 / (64 * 0.03))
    assert measure["fill_excess"] == 0.0 and measure["fill_fraction_edge"] == 0.0
    assert list(measure["sides"]) == ["top"]


def test_a_walled_valley_stops_at_the_edge_and_ponds_behind_it() -> None:
    walled = valley(wall=True)
    measure = valley_continuation(walled, 32, 0, 64, 64, channel_cells=100, depth=8, pixel_size_m=30.0)
    assert measure["crossing_ratio"] < 0.2
    assert measure["fill_fraction_interior"] == 0.0  # the real DEM drains on its own
    assert measure["fill_excess"] > 0.15
    assert measure["fill_depth_edge"] > 1.0


def test_pits_per_km2_counts_planted_pits_on_a_tilted_plane() -> None:
    rows, cols = np.mgrid[0:50, 0:40].astype(float)
    plane = 0.5 * rows + 0.3 * cols + 100.0
    area_km2 = 48 * 38 * 0.03**2
    assert pits_per_km2(plane, 30.0) == 0.0
    pitted = plane.copy()
    for row, col in ((5, 5), (10, 30), (25, 20), (40, 8), (45, 35), (30, 33)):
        pitted[row, col] -= 2.0
    pitted[0, 10] -= 5.0  # border cells have no eight neighbours and do not count
    assert pits_per_km2(pitted, 30.0) == pytest.approx(6 / area_km2)
    flat = np.zeros((10, 10))
    flat[5, 5] = -1.0
    flat[5, 6] = -1.0  # two equal lowest cells: neither is strictly lower than all its neighbours
    assert pits_per_km2(flat, 30.0) == 0.0
