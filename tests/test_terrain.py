"""Terrain pipeline: DEM tiling, exports and tokenizer identity, endless-field determinism, world writing,
expansion, bad input, CLI, and a tiny end-to-end training run of both stages."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine

from landformer.cli import main
from landformer.core.errors import UserError
from landformer.core.raster import write_geotiff
from landformer.terrain.config import MaskGITModelConfig, TerrainDataConfig, TokenizerModelConfig
from landformer.terrain.data import DemSource, condition_tokens, read_chip_tiles, read_dem_tiles
from landformer.terrain.evaluate import reconstruct
from landformer.terrain.export import LoadedTokenizer, load, save
from landformer.terrain.model import MaskGIT, VQTokenizer
from landformer.terrain.outpaint import (
    CANDIDATE_STREAM,
    TerrainField,
    carve_spill_paths,
    cut_outward,
    drain_edge,
    draining_continuation,
    edge_ponding,
    expand_array,
    expand_map,
    write_world,
)
from landformer.terrain.sample import sample
from landformer.terrain.scales import EXPAND_SCALES

CRS = "EPSG:32617"
PIXEL = 30.0
SUMMARY = {"tile_size": 16, "pixel_size_m": PIXEL, "median_offset_m": 500.0, "median_scale_m": 40.0}
SAMPLING = {"steps": 4, "temperature": 1.0, "choice_temperature": 4.5, "bf16": False}


def hills(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random relief in metres around 800 m."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    z = 800.0 + 60 * np.sin(rows / 7.0 + rng.uniform(0, 6)) * np.cos(cols / 5.0 + rng.uniform(0, 6))
    return (z + rng.normal(0, 2.0, size=z.shape)).astype(np.float32)


def write_dem(path: Path, elevation: np.ndarray, nodata: float | None = float("nan")) -> Path:
    return write_geotiff(path, elevation, Affine(PIXEL, 0, 500_000, 0, -PIXEL, 4_000_000), CRS, nodata=nodata)


def make_tokenizer(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = VQTokenizer(TokenizerModelConfig(channels=8, codebook_size=32))
    return save(folder, model, SUMMARY)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Untrained but complete exports: a tokenizer (16 px tiles, 4 x 4 tokens) and a MaskGIT trained on it."""
    root = tmp_path_factory.mktemp("terrain_models")
    tokenizer = make_tokenizer(root / "tokenizer")
    other = make_tokenizer(root / "other_tokenizer", seed=1)
    torch.manual_seed(0)
    maskgit = MaskGIT(MaskGITModelConfig(vocab_size=32, grid=4, dim=32, n_layers=2, n_heads=2, dropout=0.0))
    weights = save(root / "maskgit", maskgit, LoadedTokenizer.load(tokenizer), 2, SAMPLING, SUMMARY, None)
    return {"tokenizer": tokenizer, "other": other, "maskgit": weights, "root": root}


# ------------------------------------------------------------------------------------------------ data


def test_dem_tiles_are_exact_reads_split_by_blocks(tmp_path: Path) -> None:
    rows, cols = np.mgrid[0:96, 0:96]
    elevation = (1000.0 * rows + cols).astype(np.float32)  # the value names its pixel
    elevation[:20, :20] = np.nan
    dem = write_dem(tmp_path / "dem.tif", elevation)
    config = TerrainDataConfig(tile_size=16, stride=8, block_size=32, val_fraction=0.25, min_relief=0.0)
    train, val, _, _, report = read_dem_tiles(DemSource("dem", dem), config, None, seed=0)
    assert len(train) and len(val)
    assert report["dropped_nodata"] > 0 and report["n_train"] == len(train) and report["pixel_size_m"] == PIXEL
    covered = {"train": np.zeros((96, 96), bool), "val": np.zeros((96, 96), bool)}
    for name, tiles in (("train", train), ("val", val)):
        for tile in tiles:
            top, left = int(tile[0, 0] // 1000), int(tile[0, 0] % 1000)
            assert np.array_equal(tile, elevation[top : top + 16, left : left + 16])
            assert top % 32 % 8 == 0 and left % 32 % 8 == 0 and top // 32 == (top + 15) // 32
            covered[name][top : top + 16, left : left + 16] = True
    assert not (covered["train"] & covered["val"]).any()  # no held-out pixel is ever trained on


def test_dem_full_of_nodata_is_refused_in_one_line(tmp_path: Path) -> None:
    dem = write_dem(tmp_path / "empty.tif", np.full((64, 64), -9999, dtype=np.float32), nodata=-9999)
    config = TerrainDataConfig(tile_size=16, block_size=32)
    with pytest.raises(UserError, match=r"none of \d+ tiles of 16 px is usable \(every one has nodata\)") as info:
        read_dem_tiles(DemSource("empty", dem), config, None, seed=0)
    assert "\n" not in str(info.value) and "empty.tif" in str(info.value)


def test_chip_files_give_their_elevation_channel(tmp_path: Path) -> None:
    from landformer.core.chips import write_chips

    rng = np.random.default_rng(0)
    train = rng.normal(size=(6, 2, 16, 16)).astype(np.float32)
    train[:, 1] = train[:, 1] * 50 + 300
    test = train[:2].copy()
    coords = np.zeros((6, 2))
    metadata = {"channel_names": ["landcover", "elevation"], "pixel_size": [30.0, 30.0], "chip_size": 16}
    path = write_chips(tmp_path / "chips.npz", train, test, coords, coords[:2], metadata)
    tiles, val, report = read_chip_tiles(path, TerrainDataConfig(tile_size=16))
    assert np.array_equal(tiles, train[:, 1]) and np.array_equal(val, test[:, 1])
    assert report["n_train"] == 6 and report["pixel_size_m"] == 30.0
    with pytest.raises(UserError, match="tile_size is 32"):
        read_chip_tiles(path, TerrainDataConfig(tile_size=32))


def test_condition_tokens_take_the_majority_and_skip_nodata() -> None:
    pixels = np.full((1, 8, 8), -1, dtype=np.int16)
    pixels[0, :4, :4] = [[0, 0, 1, 1]] * 4  # tie 8 : 8 -> the lower class
    pixels[0, :4, 4:] = 2
    pixels[0, 4:, :4] = [[-1, -1, -1, 1]] * 4  # nodata does not vote
    tokens = condition_tokens(pixels, 4, n_classes=3)
    assert tokens.tolist() == [[[0, 2], [1, 3]]]  # 3 = "no condition"


# ------------------------------------------------------------------------------------------------ exports


def test_generator_refuses_another_tokenizer(models: dict[str, Path]) -> None:
    generator = load(models["maskgit"])
    assert generator.tokenizer.identity == LoadedTokenizer.load(models["tokenizer"]).identity
    with pytest.raises(UserError, match=r"was trained on tokenizer [0-9a-f]{16}, but .* is tokenizer") as info:
        load(models["maskgit"], tokenizer=models["other"])
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="is not a landformer terrain tokenizer"):
        LoadedTokenizer.load(models["maskgit"])


def test_tokenizer_identity_changes_with_any_weight(models: dict[str, Path], tmp_path: Path) -> None:
    from landformer.core.io import load_safetensors, save_safetensors

    tensors, meta = load_safetensors(models["tokenizer"])
    tensors["decoder.conv_out.bias"] = tensors["decoder.conv_out.bias"] + 1e-3
    save_safetensors(tmp_path / "tokenizer.safetensors", tensors, meta)
    with pytest.raises(UserError, match="weights changed since export"):
        LoadedTokenizer.load(tmp_path)


# ------------------------------------------------------------------------------------------------ endless


def test_field_tiles_do_not_depend_on_request_order(models: dict[str, Path]) -> None:
    generator = load(models["maskgit"])
    wanted = [(0, 0), (3, -2), (1, 1), (-1, 4), (2, 2), (5, 5)]
    first = TerrainField(generator, seed=7, group=2, cache_groups=64)
    forward = {tile: first.tile(*tile) for tile in wanted}
    # A fresh field with a tiny cache (groups are recomputed when evicted), asked in the opposite order.
    second = TerrainField(generator, seed=7, group=2, cache_groups=2)
    backward = {tile: second.tile(*tile) for tile in reversed(wanted)}
    for tile in wanted:
        assert np.array_equal(forward[tile], backward[tile]), tile
    assert second.groups_computed > first.groups_computed
    other_seed = TerrainField(generator, seed=8, group=2)
    assert any(not np.array_equal(other_seed.tile(*tile), forward[tile]) for tile in wanted)
    # tokens() assembles the same tiles, wherever the window starts.
    block = first.tokens(-3, -5, 9, 11)
    assert np.array_equal(block[1:3, 1:3], forward[(-1, -2)] if (-1, -2) in forward else first.tile(-1, -2))
    assert np.array_equal(block[3:5, 5:7], forward[(0, 0)])


def test_world_is_the_same_whatever_the_block_size(models: dict[str, Path], tmp_path: Path) -> None:
    generator = load(models["maskgit"])
    small = write_world(generator, tmp_path / "a.tif", 42, seed=3, block=16, crs="EPSG:32633", origin=(1000.0, 9000.0))
    whole = write_world(generator, tmp_path / "b.tif", 42, seed=3, block=48, crs="EPSG:32633", origin=(1000.0, 9000.0))
    with rasterio.open(small["geotiff"]) as a, rasterio.open(whole["geotiff"]) as b:
        assert a.shape == (42, 42) and a.crs.to_epsg() == 32633
        assert a.transform == Affine(PIXEL, 0, 1000.0, 0, -PIXEL, 9000.0)
        first, second = a.read(1), b.read(1)
    assert np.isfinite(first).all()
    # The same tokens decoded in differently sized blocks: equal up to float32 rounding, which depends on which
    # convolution kernels the CPU's instruction set gets (bit-equal on one development machine, 1 ulp on another).
    assert np.abs(first - second).max() <= 4 * np.spacing(np.abs(first).max())
    assert Path(small["preview"]).is_file()
    # Heights follow the training statistics by default: mean offset, relief scaled from normalised units.
    assert abs(float(first.mean()) - SUMMARY["median_offset_m"]) < 3 * SUMMARY["median_scale_m"]
    for block in (0, 6):
        with pytest.raises(UserError, match=f"block {block} must be a positive multiple of the tokenizer's"):
            write_world(generator, tmp_path / "c.tif", 42, seed=3, block=block)
    assert not (tmp_path / "c.tif").exists()


def test_expansion_keeps_the_map_and_is_deterministic(models: dict[str, Path]) -> None:
    generator = load(models["maskgit"])
    original = hills(40, 36)
    grown = expand_array(generator, original, {"right": 10, "up": 6, "left": 4}, seed=1)
    assert grown.shape == (46, 50)
    assert np.array_equal(grown[6:, 4:40], original)
    assert np.isfinite(grown).all()
    assert np.array_equal(grown, expand_array(generator, original, {"right": 10, "up": 6, "left": 4}, seed=1))
    other = expand_array(generator, original, {"right": 10, "up": 6, "left": 4}, seed=2)
    assert not np.array_equal(other, grown) and np.array_equal(other[6:, 4:40], original)
    # The seam continues the original's heights: the first new column is close to the last original one.
    step = np.abs(grown[6:, 40] - original[:, -1]).mean()
    assert step < 4 * np.abs(np.diff(original, axis=1)).mean() + 1.0


def test_edge_ponding_counts_the_pond_a_strip_dams() -> None:
    # A valley floor falling towards the edge at 1 m per column, 20 rows wide, between higher ground.
    band = np.tile(np.linspace(30.0, 10.0, 21)[None, :], (20, 1))
    band[[0, -1], :] = 100.0
    draining = np.tile(np.linspace(9.0, 0.0, 10)[None, :], (20, 1))
    draining[[0, -1], :] = 100.0
    assert edge_ponding(band, draining, depth=4) == 0.0  # the valley runs on downhill: nothing ponds
    dammed = draining.copy()
    dammed[:, 1] = 14.5  # a ridge one column into the strip, higher than the band's last 4 columns
    # Ponded: the 18 valley rows of the band's last 4 columns (13, 12, 11, 10 m) and of the strip's first column
    # (9 m) all lie below the 14.5 m spill; the ridge column and the strip beyond it do not. 8 columns x 20 rows.
    assert edge_ponding(band, dammed, depth=4) == pytest.approx(18 * 5 / (20 * 8))


def test_carve_spill_paths_lowers_only_editable_cells_on_the_spill_path() -> None:
    # A pit (1 m) behind a 5 m sill, then the outlet at 0 m; walls of 9 m everywhere else.
    heights = np.array([[9.0, 9, 9, 9], [9, 1, 5, 0], [9, 9, 9, 9]])
    outlets = np.zeros(heights.shape, dtype=bool)
    outlets[1, 3] = True
    everywhere = np.ones(heights.shape, dtype=bool)
    sill = np.zeros(heights.shape, dtype=bool)
    sill[1, 2] = True
    carved = carve_spill_paths(heights, sill, outlets, everywhere)
    expected = heights.copy()
    expected[1, 2] = 1.0  # the sill cut down to the pit; nothing else moves
    assert np.array_equal(carved, expected)
    # The sill may not be lowered, or the pit may not be drained: the pond stays (heights unchanged).
    assert np.array_equal(carve_spill_paths(heights, ~everywhere, outlets, everywhere), heights)
    assert np.array_equal(carve_spill_paths(heights, sill, outlets, ~everywhere), heights)


def test_cut_outward_follows_the_lowest_cell_ahead_with_a_floor_that_never_rises() -> None:
    heights = np.array([[5.0, 6, 7, 9], [1, 4, 9, 9], [5, 5, 3, 2]])
    depressions = np.zeros(heights.shape, dtype=np.int64)
    depressions[1, 0] = 1  # one depression on the map's last column (edge = 1)
    cut = heights.copy()
    cut_outward(cut, depressions, edge=1)
    expected = heights.copy()
    expected[1, 1] = expected[2, 2] = expected[2, 3] = 1.0  # rows 1 -> 1 -> 2 -> 2, each the lowest ahead
    assert np.array_equal(cut, expected)
    untouched = heights.copy()
    cut_outward(untouched, np.zeros(heights.shape, dtype=np.int64), edge=1)
    assert np.array_equal(untouched, heights)


def test_drain_edge_cuts_the_dam_a_strip_puts_across_a_valley() -> None:
    # The valley of test_edge_ponding_counts_the_pond_a_strip_dams, dammed by a 14.5 m ridge in the strip.
    band = np.tile(np.linspace(30.0, 10.0, 21)[None, :], (20, 1))
    band[[0, -1], :] = 100.0
    draining = np.tile(np.linspace(9.0, 0.0, 10)[None, :], (20, 1))
    draining[[0, -1], :] = 100.0
    dammed = draining.copy()
    dammed[1:-1, 1] = 14.5  # between the walls: the strip's own border is its outlet, so it must stay high
    assert edge_ponding(band, dammed, depth=4) == pytest.approx(18 * 5 / (20 * 8))
    drained = drain_edge(band, dammed)
    assert drained.shape == dammed.shape
    assert edge_ponding(band, drained, depth=4) == 0.0  # the valley drains across the edge again
    assert (drained <= dammed).all()  # only lowered
    # Beyond the ridge the valley floor already drained and stays; the walls beside the cut may be lowered into
    # its sides, never below the cut floor.
    assert np.array_equal(drained[1:-1, 2:], dammed[1:-1, 2:])
    assert drained[[0, -1], :].min() >= drained[1:-1, 1].min()
    assert (drained[1:-1, 1] < 14.5).any()  # the cut goes through the ridge
    # A strip that dams nothing comes back unchanged; so does one whose only depression is its own, away from
    # the edge (a pit in the middle of the strip).
    assert np.array_equal(drain_edge(band, draining), draining)
    own_pit = draining.copy()
    own_pit[10, 6] = -5.0
    assert np.array_equal(drain_edge(band, own_pit), own_pit)


def test_expansion_candidates_keep_the_least_ponding_strip(models: dict[str, Path]) -> None:
    generator = load(models["maskgit"])
    original = hills(40, 36)
    plain = expand_array(generator, original, {"right": 12}, seed=4)
    assert np.array_equal(plain, expand_array(generator, original, {"right": 12}, seed=4, candidates=1))
    picked = expand_array(generator, original, {"right": 12}, seed=4, candidates=4)
    assert np.array_equal(picked[:, :36], original)
    band = original.astype(np.float64)
    drawn = [
        draining_continuation(generator, original, 12, 4, CANDIDATE_STREAM * k, EXPAND_SCALES, None) for k in range(4)
    ]
    assert np.array_equal(drawn[0], plain[:, 36:])  # candidate 0 is the single draw
    least = min(edge_ponding(band, strip) for strip in drawn)
    assert edge_ponding(band, picked[:, 36:]) == least
    assert any(np.array_equal(picked[:, 36:], strip) for strip in drawn)
    # drain=False keeps the strip as drawn; the default is that strip passed through drain_edge.
    undrained = expand_array(generator, original, {"right": 12}, seed=4, drain=False)
    first = draining_continuation(generator, original, 12, 4, 0, EXPAND_SCALES, None, drain=False)
    assert np.array_equal(undrained[:, 36:], first)
    assert np.array_equal(plain[:, 36:], drain_edge(original, first))
    with pytest.raises(UserError, match="candidates = 0"):
        expand_map(generator, "unused.tif", "unused_out.tif", {"right": 4}, candidates=0)
    with pytest.raises(UserError, match="candidates = 0"):
        expand_array(generator, original, {"right": 4}, seed=4, candidates=0)


def test_each_window_is_standardised_like_a_training_tile(models: dict[str, Path]) -> None:
    """On a long slope (6,300 m from top to bottom, 160 m within any tile), new columns stay at the height of their
    own rows: each window is normalised by the square beside it, not by one mean and spread for the whole band."""
    from landformer.terrain.outpaint import extend_right

    generator = load(models["maskgit"])
    rows = np.arange(640, dtype=np.float64)[:, None]
    ramp = np.repeat(rows * 10.0, 20, axis=1) + hills(640, 20, seed=1) - 800.0
    new = extend_right(generator, ramp.astype(np.float32), 24, seed=0, stream=0)
    assert new.shape == (640, 24) and np.isfinite(new).all()
    tile_spread = float(np.std(np.arange(16) * 10.0))
    assert np.abs(new - ramp[:, -1:]).mean() < 5 * tile_spread


def test_expand_map_moves_the_origin_for_left_and_up(models: dict[str, Path], tmp_path: Path) -> None:
    generator = load(models["maskgit"])
    dem = write_dem(tmp_path / "dem.tif", hills(32, 32))
    summary = expand_map(generator, dem, tmp_path / "big.tif", {"left": 8, "up": 4}, seed=0)
    with rasterio.open(summary["geotiff"]) as grown:
        assert grown.shape == (36, 40)
        assert grown.transform.c == 500_000 - 8 * PIXEL and grown.transform.f == 4_000_000 + 4 * PIXEL
        assert np.array_equal(grown.read(1)[4:, 8:], hills(32, 32))
    with pytest.raises(UserError, match="nothing to expand"):
        expand_map(generator, dem, tmp_path / "same.tif", {}, seed=0)
    with pytest.raises(UserError, match="block = 0 should be at least 1 pixel"):
        expand_map(generator, dem, tmp_path / "block.tif", {"right": 8}, seed=0, block=0)
    assert not (tmp_path / "block.tif").exists()
    empty = write_dem(tmp_path / "empty.tif", np.full((32, 32), np.nan, dtype=np.float32))
    with pytest.raises(UserError, match="full of nodata"):
        expand_map(generator, empty, tmp_path / "x.tif", {"right": 8}, seed=0)
    flat = write_dem(tmp_path / "flat.tif", np.full((32, 32), 120.0, dtype=np.float32))
    with pytest.raises(UserError, match="is flat"):
        expand_map(generator, flat, tmp_path / "y.tif", {"right": 8}, seed=0)


def test_expand_map_copies_the_original_through_windows_and_keeps_grid_and_nodata(
    models: dict[str, Path], tmp_path: Path
) -> None:
    generator = load(models["maskgit"])
    original = hills(48, 44, seed=4)
    original[20, 10] = -9999.0  # a nodata pixel far from the edges stays nodata, with its value
    dem = write_dem(tmp_path / "dem.tif", original, nodata=-9999.0)
    amounts = {"right": 12, "down": 8, "left": 4, "up": 6}
    # Blocks of 16 px: the output is assembled from many windows of the original and of the new strips.
    summary = expand_map(generator, dem, tmp_path / "grown.tif", amounts, seed=5, block=16)
    with rasterio.open(summary["geotiff"]) as grown:
        assert grown.shape == (48 + 8 + 6, 44 + 12 + 4) and summary["shape"] == [62, 60]
        assert grown.crs.to_epsg() == 32617 and grown.nodata == -9999.0
        assert grown.transform == Affine(PIXEL, 0, 500_000 - 4 * PIXEL, 0, -PIXEL, 4_000_000 + 6 * PIXEL)
        values = grown.read(1)
    assert np.array_equal(values[6:54, 4:48], original)
    with_nan = original.copy()
    with_nan[20, 10] = np.nan
    expected = expand_array(generator, with_nan, amounts, seed=5)
    new = np.ones(values.shape, dtype=bool)
    new[6:54, 4:48] = False
    assert np.isfinite(values[new]).all()
    assert np.array_equal(values[new], expected[new])


@pytest.mark.parametrize("scales", [1, 2])
def test_expansion_reads_only_bands_along_the_edges(models: dict[str, Path], scales: int) -> None:
    """Memory stays constant in the map's size: growing asks the original only for bands along its edges, deeper
    by the scale factor for each coarser scale continued."""
    from landformer.terrain.outpaint import GrowingMap, band_depth
    from landformer.terrain.scales import SCALE_FACTOR

    generator = load(models["maskgit"])
    depth = band_depth(generator, scales)
    assert depth == band_depth(generator) * SCALE_FACTOR ** (scales - 1)
    height, width = depth + 40, depth + 32
    original = hills(height, width, seed=2)
    asked: list[tuple[int, int, int, int]] = []

    def read_original(row: int, col: int, rows: int, cols: int) -> np.ndarray:
        asked.append((row, col, rows, cols))
        return original[row : row + rows, col : col + cols]

    grown = GrowingMap(read_original, height, width, top=0, left=0)
    grown.grow(generator, {"right": 8, "down": 8}, seed=1, scales=scales)
    assert len(asked) == 2
    assert asked[0] == (0, width - depth, height, depth)  # the right band
    assert asked[1] == (height - depth, 0, depth, width)  # the bottom band (the new right strip comes from memory)
    expanded = expand_array(generator, original, {"right": 8, "down": 8}, 1, scales=scales)
    assert np.array_equal(grown.read(0, 0, height + 8, width + 8), expanded)
    assert np.array_equal(expanded[:height, :width], original)


# ------------------------------------------------------------------------------------------------ commands


def test_reconstruct_refuses_empty_and_flat_dems(models: dict[str, Path], tmp_path: Path) -> None:
    empty = write_dem(tmp_path / "empty.tif", np.full((40, 40), np.nan, dtype=np.float32))
    with pytest.raises(UserError, match="is full of nodata"):
        reconstruct(models["tokenizer"], tmp_path / "r", dem=empty)
    flat = write_dem(tmp_path / "flat.tif", np.full((40, 40), 640.0, dtype=np.float32))
    with pytest.raises(UserError, match=r"is flat \(every complete tile holds a single height, e.g. 640 m\)"):
        reconstruct(models["tokenizer"], tmp_path / "r", dem=flat)
    dem = write_dem(tmp_path / "dem.tif", hills(40, 40))
    summary = reconstruct(models["tokenizer"], tmp_path / "r", dem=dem, count=3)
    assert summary["tiles"] == 3 and Path(summary["panel"]).is_file()


def test_sample_writes_png_and_georeferenced_mosaic(models: dict[str, Path], tmp_path: Path) -> None:
    summary = sample(models["maskgit"], tmp_path, count=3, seed=4, pixel_size=10.0, crs="EPSG:32610", offset=1200)
    with rasterio.open(summary["geotiff"]) as samples:
        # 3 samples of 16 px on a 2 x 2 grid with 4 px nodata gutters: one map of all of them.
        assert samples.count == 1 and samples.shape == (36, 36) and samples.crs.to_epsg() == 32610
        assert samples.transform.a == 10.0 and samples.dtypes[0] == "float32"
        mosaic = samples.read(1)
    tiles = [mosaic[:16, :16], mosaic[:16, 20:], mosaic[20:, :16]]
    assert all(np.isfinite(tile).all() for tile in tiles)
    assert np.isnan(mosaic[16:20]).all() and np.isnan(mosaic[20:, 20:]).all()
    assert abs(float(np.mean(tiles)) - 1200) < 3 * SUMMARY["median_scale_m"]
    again = sample(models["maskgit"], tmp_path / "again", count=3, seed=4, pixel_size=10.0, offset=1200)
    with rasterio.open(again["geotiff"]) as repeat:
        assert np.array_equal(repeat.read(1), mosaic, equal_nan=True)


def test_samples_and_worlds_take_the_training_dems_grid_and_int16(models: dict[str, Path], tmp_path: Path) -> None:
    """A model trained on an int16 DEM samples int16 heights on that DEM's CRS, pixel size and corner."""
    from landformer.terrain.export import MapGrid

    reference = {
        "name": "user_dem",
        "pixel_size_m": 25.0,
        "median_offset_m": 2000.0,
        "median_scale_m": 50.0,
        "crs": rasterio.crs.CRS.from_epsg(32633).to_wkt(),
        "pixel_size_crs": [25.0, 25.0],
        "origin": [400_000.0, 5_100_000.0],
        "dtype": "int16",
    }
    tokenizer = LoadedTokenizer.load(models["tokenizer"])
    maskgit = MaskGIT(MaskGITModelConfig(vocab_size=32, grid=4, dim=32, n_layers=2, n_heads=2, dropout=0.0))
    summary_with_reference = {**SUMMARY, "reference": reference}
    weights = save(tmp_path / "m", maskgit, tokenizer, 2, SAMPLING, summary_with_reference, None)
    generator = load(weights)
    grid = generator.map_grid()
    assert grid.dtype == "int16" and grid.pixel == (25.0, 25.0) and grid.origin == (400_000.0, 5_100_000.0)
    assert generator.default_offset_scale() == (2000.0, 50.0)
    assert generator.map_grid(origin=(1.0, 2.0)).origin == (1.0, 2.0)
    with pytest.raises(UserError, match="in degrees"):
        generator.map_grid(crs="EPSG:4326")
    summary = sample(weights, tmp_path / "s", count=2, seed=0)
    with rasterio.open(summary["geotiff"]) as samples:
        assert samples.dtypes[0] == "int16" and samples.nodata == -32768 and samples.crs.to_epsg() == 32633
        assert (samples.transform.c, samples.transform.f, samples.transform.a) == (400_000.0, 5_100_000.0, 25.0)
        heights = samples.read(1)
    assert heights[:16, :16].min() > 1500 and (heights[:, 16:20] == -32768).all()
    world = write_world(generator, tmp_path / "w.tif", 16, block=16)
    with rasterio.open(world["geotiff"]) as written:
        assert written.dtypes[0] == "int16" and written.crs.to_epsg() == 32633
    # Trained on chip files only, a model records no reference DEM: the summary of all its tiles stands in.
    chips_only = save(tmp_path / "c", maskgit, tokenizer, 2, SAMPLING, {**SUMMARY, "reference": None}, None)
    fallback = load(chips_only)
    assert fallback.reference_pixel_size_m == PIXEL and fallback.default_offset_scale() == (500.0, 40.0)
    assert fallback.map_grid().crs == "EPSG:3857"
    values, nodata = MapGrid("EPSG:3857", (1.0, 1.0), (0.0, 0.0), "int16").cast(np.array([1.4, np.nan, 4e5]))
    assert values.tolist() == [1, -32768, 32767] and nodata == -32768


def test_expand_keeps_an_int16_dem_int16(models: dict[str, Path], tmp_path: Path) -> None:
    dem = write_dem(tmp_path / "int.tif", np.round(hills(40, 40)).astype(np.int16), nodata=-32768)
    grown = expand_map(load(models["maskgit"]), dem, tmp_path / "grown.tif", {"right": 8}, scales=1)
    with rasterio.open(dem) as original, rasterio.open(grown["geotiff"]) as larger:
        assert larger.dtypes[0] == "int16" and larger.nodata == -32768
        assert np.array_equal(larger.read(1)[:, :40], original.read(1))


def test_cli_sample_and_bad_input(models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    assert main(["terrain", "sample", "--model", str(models["maskgit"]), "--count", "2", "--out", str(out)]) == 0
    assert (out / "samples.png").is_file() and (out / "samples.tif").is_file()
    world = tmp_path / "world.tif"
    assert main(["terrain", "world", "--model", str(models["maskgit"]), "--size", "24", "--out", str(world)]) == 0
    grown = tmp_path / "grown.tif"
    assert (
        main(
            [
                "terrain",
                "expand",
                "--model",
                str(models["maskgit"]),
                "--dem",
                str(world),
                "--down",
                "8",
                "--block",
                "16",
                "--no-drain",
                "--out",
                str(grown),
            ]
        )
        == 0
    )
    with rasterio.open(world) as small, rasterio.open(grown) as large:
        assert large.shape == (32, 24) and np.array_equal(large.read(1)[:24], small.read(1))
    assert json.loads(grown.with_suffix(".json").read_text())["drain"] is False
    code = main(["terrain", "sample", "--model", str(models["maskgit"]), "--tokenizer", str(models["other"])])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("landformer: error:") and "was trained on tokenizer" in error and "\n" not in error


# ------------------------------------------------------------------------------------------------ training


def test_both_stages_train_export_and_refuse_to_overwrite(tmp_path: Path) -> None:
    from landformer.core.config import load_config
    from landformer.terrain.config import MaskGITConfig, TokenizerConfig
    from landformer.terrain.train import train as train_stage

    dem = write_dem(tmp_path / "dem.tif", hills(96, 96))
    data = [f"data.dems=[{dem}]", "data.packaged=[]", "data.world_size=0", "data.tile_size=16", "data.stride=8"]
    data += ["data.block_size=32", "data.batch_size=8", "data.max_tiles_per_source=40"]
    train = ["train.max_steps=3", "train.val_every_steps=3", "train.log_every_steps=1", "train.progress_bar=false"]
    train += ["train.loggers=[csv]"]
    tokenizer_train = ["task.disc_start=1", "train.max_steps=4", "train.val_every_steps=1"]
    tokenizer_config = load_config(
        TokenizerConfig,
        None,
        [*data, *train, "model.channels=4", "model.codebook_size=16", "model.disc_channels=8", *tokenizer_train],
    )
    summary = train_stage(tokenizer_config, tmp_path / "tok")
    # max_steps counts tokenizer steps; the discriminator stepped too (its loss is logged) without counting.
    assert summary["global_step"] == 4
    with open(next((tmp_path / "tok" / "logs" / "csv").glob("version_*/metrics.csv"))) as handle:
        rows = list(csv.DictReader(handle))
    assert any(row.get("train/d_loss") for row in rows)
    usage = [float(row["val/codebook_usage"]) for row in rows if row.get("val/codebook_usage")]
    assert usage and 0 < usage[-1] <= 1
    assert 0 < summary["evaluation"]["codes_used"] <= 16
    tokenizer = LoadedTokenizer.load(tmp_path / "tok")
    assert tokenizer.identity == summary["identity"]
    # The export holds the weights of the validation step with the lowest val/loss, not the last step's.
    best = torch.load(tmp_path / "tok" / "checkpoints" / "best.ckpt", weights_only=True)
    val_losses = {int(row["step"]) + 1: float(row["val/loss"]) for row in rows if row.get("val/loss")}
    assert len(val_losses) == 4 and val_losses[best["global_step"]] == min(val_losses.values())
    assert summary["exported_from"] == f"best.ckpt (step {best['global_step']})"
    for name, value in tokenizer.model.state_dict().items():
        assert torch.equal(value, best["state_dict"][f"tokenizer.{name}"]), name
    with pytest.raises(UserError, match="already holds a training run"):
        train_stage(tokenizer_config, tmp_path / "tok")

    maskgit_config = load_config(
        MaskGITConfig,
        None,
        [*data, *train, f"tokenizer={tmp_path / 'tok'}", "model.dim=32", "model.n_layers=1", "model.n_heads=2"],
    )
    result = train_stage(maskgit_config, tmp_path / "mg")
    meta = json.loads((tmp_path / "mg" / "maskgit.json").read_text())
    assert meta["tokenizer_identity"] == tokenizer.identity and meta["tile"] == 2
    assert result["global_step"] == 3 and result["train_tokens_per_second"] > 0
    assert result["token_grids"]["train"] % 8 == 0  # all 8 flips and turns of every training tile
    assert Path(result["samples"]).is_file()


def test_conditioned_generator_trains_samples_and_reads_a_condition_raster(
    models: dict[str, Path], tmp_path: Path
) -> None:
    from landformer.core.config import load_config
    from landformer.core.legend import load_legend
    from landformer.core.raster import RasterGrid
    from landformer.terrain.config import MaskGITConfig
    from landformer.terrain.outpaint import RasterCondition
    from landformer.terrain.train import train as train_stage

    dem = write_dem(tmp_path / "dem.tif", hills(96, 96))
    codes = np.where(np.arange(96)[None, :] < 48, 41, 42).repeat(96, axis=0).astype(np.uint8)
    cover = write_geotiff(tmp_path / "cover.tif", codes, Affine(PIXEL, 0, 500_000, 0, -PIXEL, 4_000_000), CRS, nodata=0)
    overrides = [f"data.dems=[{dem}]", f"data.conditions=[{cover}]", "data.condition_legend=nlcd", "data.packaged=[]"]
    overrides += ["data.world_size=0", "data.tile_size=16", "data.stride=8", "data.block_size=32", "data.batch_size=8"]
    overrides += ["data.max_tiles_per_source=20", f"tokenizer={models['tokenizer'].parent}", "model.dim=32"]
    overrides += ["model.n_layers=1", "model.n_heads=2", "train.max_steps=2", "train.val_every_steps=2"]
    overrides += ["train.progress_bar=false", "train.loggers=[csv]", "sampling.bf16=false", "sampling.steps=4"]
    train_stage(load_config(MaskGITConfig, None, overrides), tmp_path / "mg")
    generator = load(tmp_path / "mg")
    legend = load_legend("nlcd")
    assert generator.n_condition_classes == legend.n_classes
    summary = sample(tmp_path / "mg", tmp_path / "samples", count=2, condition_code=41)
    assert Path(summary["geotiff"]).is_file()
    with pytest.raises(UserError):
        sample(tmp_path / "mg", tmp_path / "bad", count=1, condition_code=7)  # not an NLCD code
    grid = RasterGrid(rasterio.crs.CRS.from_string(CRS), Affine(PIXEL, 0, 500_000, 0, -PIXEL, 4_000_000), 96, 96)
    condition = RasterCondition(cover, generator, grid)
    tokens = condition.tokens(-2, 0, 4, 26)
    condition.close()
    deciduous, evergreen = legend.encode(np.array([41, 42]))
    assert (tokens[:2] == legend.n_classes).all()  # above the raster: no condition
    assert (tokens[2:, :12] == deciduous).all() and (tokens[2:, 12:24] == evergreen).all()
    assert (tokens[2:, 24:] == legend.n_classes).all()
    world = write_world(generator, tmp_path / "w.tif", 24, crs=CRS, origin=(500_000, 4_000_000), condition=cover)
    assert Path(world["geotiff"]).is_file()


# ------------------------------------------------------------------------------------------------ real DEMs


def test_jacksboro_west_and_east_parts_tile_the_whole_dem(tmp_path: Path) -> None:
    from landformer.synth.packaged import JACKSBORO_SPLIT_COLUMN, jacksboro_dem

    with rasterio.open(jacksboro_dem(tmp_path / "all.tif")) as whole:
        everything, transform = whole.read(1), whole.transform
    with rasterio.open(jacksboro_dem(tmp_path / "w.tif", "west")) as west:
        assert np.array_equal(west.read(1), everything[:, :JACKSBORO_SPLIT_COLUMN])
        assert west.transform == transform
    with rasterio.open(jacksboro_dem(tmp_path / "e.tif", "east")) as east:
        assert np.array_equal(east.read(1), everything[:, JACKSBORO_SPLIT_COLUMN:])
        assert east.transform == transform @ Affine.translation(JACKSBORO_SPLIT_COLUMN, 0)
    with pytest.raises(UserError, match="unknown part 'north'"):
        jacksboro_dem(tmp_path / "n.tif", "north")


def test_reference_grid_is_the_users_dem_else_the_finest_packaged_one() -> None:
    from landformer.terrain.data import reference_source

    def source(name: str, pixel: float, packaged: bool) -> dict:
        grid = {"crs": "WKT", "pixel_size_crs": [pixel, pixel], "origin": [0.0, 0.0], "dtype": "float32"}
        stats = {"median_offset_m": 1.0, "median_scale_m": 2.0}
        return {"name": name, "pixel_size_m": pixel, "packaged": packaged, "grid": grid, **stats}

    packaged = [source("pvlib_0", 9000.0, True), source("jacksboro_west", 83.0, True)]
    assert reference_source(packaged)["name"] == "jacksboro_west"
    assert reference_source([*packaged, source("mine", 900.0, False)])["name"] == "mine"
    assert reference_source([{"name": "chips", "pixel_size_m": 30.0}]) is None


def test_join_edge_runs_the_maps_last_step_on_and_fades_out() -> None:
    from landformer.terrain.outpaint import join_edge

    rows, cols = np.mgrid[0:24, 0:10]
    band = (3.0 * cols + rows).astype(np.float32)  # last column 27 + row, last step 3
    new = np.full((24, 20), 100.0, dtype=np.float32)  # a cliff of about 70 m right at the edge
    joined = join_edge(band, new, blend=8)
    np.testing.assert_allclose(joined[:, 0] - band[:, -1], 3.0, atol=1e-4)  # the real step, not the cliff
    assert np.array_equal(joined[:, 8:], new[:, 8:])  # untouched beyond the blend
    steps = np.diff(joined, axis=1)[4:-4, :8]  # rows whose running mean is the shift itself (it is linear)
    np.testing.assert_allclose(steps, np.repeat(steps[:, :1], 8, axis=1), atol=1e-3)  # spread evenly


def test_fade_in_keeps_row_noise_near_the_edge_and_the_broad_difference_long() -> None:
    """The row-to-row part of a difference fades within a token (it drew streaks when faded as far as the rest)."""
    from landformer.terrain.outpaint import SHORT_FADE_PX, fade_in

    broad = np.full(40, 6.0)
    noise = np.where(np.arange(40) % 2, 1.0, -1.0)
    faded = fade_in(np.zeros((40, 20)), broad + noise, reach=12)
    np.testing.assert_allclose(faded[:, 0], broad + noise)  # all of it at the first column
    # Beyond the short fade only the broad part is left: 6 (and +-1/9, the noise's share of a 9-row mean).
    expected = 6.0 * (1 - np.arange(SHORT_FADE_PX, 12) / 12)
    np.testing.assert_allclose(faded[8:-8, SHORT_FADE_PX:12], np.repeat(expected[None, :], 24, axis=0), atol=0.12)
    assert np.array_equal(faded[:, 12:], np.zeros((40, 8)))


def test_block_mean_and_upsample_are_a_pyramid_level() -> None:
    from landformer.terrain.outpaint import block_mean, upsample

    values = np.arange(64, dtype=np.float64).reshape(8, 8)
    np.testing.assert_allclose(block_mean(values, 4), [[13.5, 17.5], [45.5, 49.5]])
    ramp = np.add.outer(np.arange(16.0), 2 * np.arange(16.0))
    rebuilt = upsample(block_mean(ramp, 4), 4)
    assert rebuilt.shape == ramp.shape
    np.testing.assert_allclose(rebuilt[2:-2, 2:-2], ramp[2:-2, 2:-2])  # exact between the outer block centres


def test_multiscale_expansion_keeps_the_original_and_changes_the_broad_shape(models: dict[str, Path]) -> None:
    from landformer.terrain.outpaint import band_depth

    generator = load(models["maskgit"])
    side = band_depth(generator, 2) + 8
    original = hills(side, side, seed=5)
    one = expand_array(generator, original, {"right": 24}, seed=3, scales=1)
    two = expand_array(generator, original, {"right": 24}, seed=3, scales=2)
    assert np.array_equal(two[:, :side], original) and np.array_equal(one[:, :side], original)
    assert np.isfinite(two).all() and not np.allclose(one, two)


def test_evaluate_reports_every_measure_with_its_target(models: dict[str, Path], tmp_path: Path) -> None:
    from landformer.terrain.evaluate import TARGETS, evaluate, format_report

    dem = write_dem(tmp_path / "heldout.tif", hills(72, 64, seed=7))
    summary = evaluate(models["maskgit"], tmp_path / "ev", dem=dem, amount=16, samples=8, scales=1)
    assert set(summary["headline"]) == set(TARGETS)
    assert set(summary["passed"]) == set(TARGETS) | {"samples_beat_fractal_noise"}
    assert all(isinstance(flag, bool) for flag in summary["passed"].values())
    assert 0 < summary["codebook"]["heldout_dem"]["usage"] <= 1
    realism = summary["realism"]
    assert set(realism["ratio_to_fractal_noise"]) == {"elevation_w1", "slope_w1", "spectrum_log10", "curvature_w1"}
    name = "slope_w1"
    assert realism["ratio_to_fractal_noise"][name] == pytest.approx(
        realism["samples"][name] / realism["fractal_noise"][name]
    )
    with rasterio.open(summary["expanded"]) as grown, rasterio.open(dem) as original:
        assert grown.shape == (104, 96) and np.array_equal(grown.read(1)[16:88, 16:80], original.read(1))
    assert Path(summary["expanded_png"]).is_file() and Path(summary["samples_png"]).is_file()
    report = format_report(summary)
    assert "seam_ratio" in report and "target <= 1.15" in report
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text())["headline"] == pytest.approx(
        summary["headline"], nan_ok=True
    )
    with pytest.raises(UserError, match="too thin"):
        evaluate(models["maskgit"], tmp_path / "ev2", dem=dem, amount=4)


def test_cli_takes_dems_with_a_plain_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere.tif"
    code = main(
        [
            "terrain",
            "train",
            "--stage",
            "tokenizer",
            "--dem",
            str(missing),
            "--no-packaged",
            "--out",
            str(tmp_path / "t"),
        ]
    )
    assert code == 2 and "nowhere.tif" in capsys.readouterr().err


def test_the_packaged_real_model_loads_by_name_fits_the_size_limit_and_never_saw_the_east() -> None:
    from landformer.terrain.export import pretrained_folder
    from landformer.terrain.sample import sample_tiles

    folder = pretrained_folder("real")
    assert sum(path.stat().st_size for path in folder.glob("*.safetensors")) <= 15 * 2**20
    generator = load("real")
    sources = [source["name"] for source in generator.meta["data"]["sources"]]
    assert "jacksboro_west" in sources and "jacksboro" not in sources  # the east part is held out
    assert generator.meta["data"]["reference"]["name"] == "jacksboro_west"
    assert generator.map_grid().crs == generator.meta["data"]["reference"]["crs"]
    tiles = sample_tiles(generator, 2, seed=0)
    assert tiles.shape == (2, 32, 32) and np.isfinite(tiles).all()


def test_cli_writes_the_held_out_jacksboro_part(tmp_path: Path) -> None:
    out = tmp_path / "east.tif"
    assert main(["synth", "packaged", "jacksboro-east", "--out", str(out)]) == 0
    with rasterio.open(out) as east:
        assert east.shape == (344, 163) and east.crs.to_epsg() == 4326


def test_scale_classes_condition_tiles_samples_and_expansion(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scale-conditioned generator is told each map's pixel-size class: the map's own at the fine scale, four
    times coarser at the coarse one; samples take the reference DEM's class."""
    from landformer.terrain.data import prepare_tiles, scale_class
    from landformer.terrain.export import TerrainGenerator
    from landformer.terrain.sample import sample_tiles

    assert scale_class(np.array([84.0, 500.0, 2400.0, 9000.0]), [500.0, 5000.0]).tolist() == [0, 1, 1, 2]
    with pytest.raises(UserError, match="should rise"):
        TerrainDataConfig(scale_classes=[5000.0, 500.0]).validate()
    dem = write_dem(tmp_path / "dem.tif", hills(64, 64))
    config = TerrainDataConfig(
        dems=[dem], packaged=[], tile_size=16, stride=8, block_size=32, scale_classes=[20.0, 500.0]
    )
    tiles = prepare_tiles(config, tmp_path / "data", seed=0)
    assert tiles.train_conditions.shape == tiles.train.shape and (tiles.train_conditions == 1).all()  # 30 m

    tokenizer = LoadedTokenizer.load(models["tokenizer"])
    maskgit = MaskGIT(
        MaskGITModelConfig(vocab_size=32, grid=4, dim=32, n_layers=2, n_heads=2, dropout=0.0, n_condition_classes=3)
    )
    weights = save(tmp_path / "m", maskgit, tokenizer, 2, SAMPLING, SUMMARY, None, [500.0, 5000.0])
    generator = load(weights)
    assert generator.scale_class() == 0 and generator.scale_class(9000.0) == 2  # reference: SUMMARY's 30 m
    told: list[set[int]] = []
    original = TerrainGenerator.decode_windows

    def recording(
        self: TerrainGenerator,
        tokens: np.ndarray,
        known: np.ndarray,
        rng: torch.Generator,
        condition: np.ndarray | None = None,
        steps: int | None = None,
    ) -> np.ndarray:
        told.append(set(np.unique(condition).tolist()) if condition is not None else {-1})
        return original(self, tokens, known, rng, condition, steps)

    monkeypatch.setattr(TerrainGenerator, "decode_windows", recording)
    assert sample_tiles(generator, 2, seed=0).shape == (2, 16, 16) and told[-1] == {0}
    told.clear()
    side = 96
    expand_array(generator, hills(side, side), {"right": 8}, seed=0, scales=2, pixel_size_m=1000.0)
    assert told and all(classes == {1} for classes in told)  # 1000 m, and 4000 m at the coarse scale
    told.clear()
    expand_array(generator, hills(side, side), {"right": 8}, seed=0, scales=2, pixel_size_m=2000.0)
    assert {2} in told and {1} in told  # 2000 m at the map's scale, 8000 m at the coarse one
