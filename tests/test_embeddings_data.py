"""Embedding tiles and labels: AlphaEarth int8 decoding, readers, label tables, splits, bad input, datasets."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import Affine

from landformer.core.errors import UserError
from landformer.embeddings.config import DataConfig
from landformer.embeddings.data import load_data
from landformer.embeddings.make_dataset import (
    Window,
    WorldDatasetConfig,
    embed_features,
    make_world_dataset,
    random_projection,
    stream_windows,
)
from landformer.embeddings.tiles import (
    INT8_NODATA,
    TileSource,
    buffer_overlaps,
    dequantize_int8,
    load_dataset,
    quantize_int8,
    read_labels,
    read_tile,
    split_by_group,
    write_bundle,
)

SIZE = 8


def unit_tiles(count: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """(count, 64, size, size) random unit vectors per pixel."""
    values = np.random.default_rng(seed).normal(size=(count, 64, size, size))
    return (values / np.linalg.norm(values, axis=1, keepdims=True)).astype(np.float32)


def write_int8_tif(path: Path, codes: np.ndarray, south_up: bool = False) -> Path:
    height, width = codes.shape[1:]
    transform = Affine(0.01, 0, 10.0, 0, 0.01, 45.0) if south_up else Affine(0.01, 0, 10.0, 0, -0.01, 45.08)
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": codes.shape[0],
        "dtype": "int8",
        "crs": "EPSG:4326",
        "transform": transform,
        "nodata": INT8_NODATA,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(codes)
    return path


def write_dataset(folder: Path, tiles: np.ndarray, groups: list[str], suffix: str = ".npy") -> TileSource:
    (folder / "tiles").mkdir(parents=True)
    ids = [f"t{i:03d}" for i in range(len(tiles))]
    for tile_id, tile in zip(ids, tiles, strict=True):
        if suffix == ".npy":
            np.save(folder / "tiles" / f"{tile_id}.npy", quantize_int8(tile))
        else:
            write_int8_tif(folder / "tiles" / f"{tile_id}.tif", quantize_int8(tile))
    targets = np.arange(len(tiles), dtype=float) * 0.5
    pd.DataFrame({"id": ids, "target": targets, "group": groups}).to_csv(folder / "labels.csv", index=False)
    return TileSource(tiles=folder / "tiles", labels=folder / "labels.csv")


# ------------------------------------------------------------------------------------------ quantization


def test_dequantize_follows_alphaearth_mapping_and_round_trips_every_code() -> None:
    codes = np.arange(-127, 128, dtype=np.int8)
    values = dequantize_int8(codes)
    expected = np.sign(codes.astype(float)) * (np.abs(codes.astype(float)) / 127.5) ** 2
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    np.testing.assert_array_equal(quantize_int8(values), codes)
    assert np.isnan(dequantize_int8(np.array([INT8_NODATA], dtype=np.int8)))[0]
    assert quantize_int8(np.array([np.nan], dtype=np.float32))[0] == INT8_NODATA


def test_quantization_keeps_unit_vectors_nearly_unit() -> None:
    tiles = unit_tiles(4)
    lengths = np.linalg.norm(dequantize_int8(quantize_int8(tiles)), axis=1)
    assert np.abs(lengths - 1).max() < 0.02


# ------------------------------------------------------------------------------------------------ tiles


def test_int8_tif_nodata_pixel_reads_as_nan_in_every_channel(tmp_path: Path) -> None:
    codes = quantize_int8(unit_tiles(1)[0])
    codes[:, 2, 3] = INT8_NODATA
    tile = read_tile(write_int8_tif(tmp_path / "a.tif", codes))
    assert tile.shape == (64, SIZE, SIZE) and tile.dtype == np.float32
    assert np.isnan(tile[:, 2, 3]).all()
    assert np.isfinite(np.delete(tile.reshape(64, -1), 2 * SIZE + 3, axis=1)).all()
    np.testing.assert_array_equal(tile[:, 0, 0], dequantize_int8(codes[:, 0, 0]))


def test_south_up_tif_is_flipped_north_up(tmp_path: Path) -> None:
    codes = quantize_int8(unit_tiles(1)[0])
    north_up = read_tile(write_int8_tif(tmp_path / "n.tif", codes))
    south_up = read_tile(write_int8_tif(tmp_path / "s.tif", codes[:, ::-1].copy(), south_up=True))
    np.testing.assert_array_equal(north_up, south_up)


def test_float_tif_nodata_value_becomes_nan(tmp_path: Path) -> None:
    tile = unit_tiles(1)[0]
    tile[:, 0, 0] = -9999.0
    profile = {
        "driver": "GTiff",
        "height": SIZE,
        "width": SIZE,
        "count": 64,
        "dtype": "float32",
        "crs": "EPSG:4326",
        "transform": Affine(0.01, 0, 0, 0, -0.01, 0),
        "nodata": -9999.0,
    }
    with rasterio.open(tmp_path / "f.tif", "w", **profile) as dst:
        dst.write(tile)
    read = read_tile(tmp_path / "f.tif")
    assert np.isnan(read[:, 0, 0]).all()
    np.testing.assert_array_equal(read[:, 1:, :], tile[:, 1:, :])


def test_npy_channel_last_is_accepted(tmp_path: Path) -> None:
    tile = unit_tiles(1)[0]
    np.save(tmp_path / "c.npy", np.moveaxis(tile, 0, -1))
    np.testing.assert_array_equal(read_tile(tmp_path / "c.npy"), tile)


def test_wrong_channel_count_is_a_clear_error(tmp_path: Path) -> None:
    np.save(tmp_path / "rgb.npy", np.zeros((3, SIZE, SIZE), dtype=np.float32))
    with pytest.raises(UserError, match=r"rgb\.npy has 3 channels, expected 64"):
        read_tile(tmp_path / "rgb.npy")


def test_integer_npy_other_than_int8_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "u.npy", np.zeros((64, SIZE, SIZE), dtype=np.uint16))
    with pytest.raises(UserError, match="uint16"):
        read_tile(tmp_path / "u.npy")


# ----------------------------------------------------------------------------------------------- labels


def test_xlsx_with_other_columns_names_the_columns(tmp_path: Path) -> None:
    pd.DataFrame({"city": ["a", "b"], "pop_2020": [1, 2]}).to_excel(tmp_path / "l.xlsx", index=False)
    with pytest.raises(UserError, match=r"l\.xlsx has no column 'id' \(columns: city, pop_2020\)"):
        read_labels(tmp_path / "l.xlsx")
    table = read_labels(tmp_path / "l.xlsx", id_column="city", target_column="pop_2020")
    assert table["city"].tolist() == ["a", "b"] and table["pop_2020"].tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"id": ["a", "a"], "target": [1, 2]}), "id 'a' appears more than once"),
        (pd.DataFrame({"id": ["a", "b"], "target": [1, "many"]}), "'target' of id 'b' is 'many', not a number"),
        (pd.DataFrame({"id": ["a", "b"], "target": [1, None]}), "'target' of id 'b'"),
    ],
)
def test_bad_label_rows_are_named(tmp_path: Path, frame: pd.DataFrame, message: str) -> None:
    frame.to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(UserError, match=message):
        read_labels(tmp_path / "l.csv")


def test_ids_are_read_as_text_so_leading_zeros_survive(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("id,target\n007,1.5\n")
    assert read_labels(tmp_path / "l.csv")["id"].tolist() == ["007"]


# ---------------------------------------------------------------------------------------------- splits


def test_split_keeps_groups_whole_and_is_reproducible() -> None:
    groups = [f"g{i % 12}" for i in range(240)]
    split = split_by_group(groups, 0.2, 0.15, seed=3)
    for group in set(groups):
        assert len(set(split[np.array(groups) == group])) == 1
    assert 0.2 <= (split == "test").mean() <= 0.2 + 1 / 12 + 1e-9
    assert (split == "val").any() and (split == "train").any()
    np.testing.assert_array_equal(split, split_by_group(groups, 0.2, 0.15, seed=3))
    assert not np.array_equal(split, split_by_group(groups, 0.2, 0.15, seed=4))


def test_buffer_leaves_out_tiles_that_overlap_a_more_strictly_held_out_split() -> None:
    # Tiles of side 0.5 degrees. A train city 0.3 degrees west of a test city shares pixels with it (a region
    # border between them); one 0.5 degrees away only touches its edge; a val city overlaps the test city too.
    lonlat = np.array([[10.0, 5.0], [9.7, 5.1], [10.5, 5.0], [10.0, 4.6], [20.0, 5.0], [20.2, 5.2], [30.0, 0.0]])
    split = np.array(["test", "train", "train", "val", "val", "train", "train"])
    buffered = buffer_overlaps(split, lonlat, tile_degrees=0.5)
    np.testing.assert_array_equal(buffered, ["test", "buffer", "train", "buffer", "val", "buffer", "train"])
    # Every pair of kept tiles in different splits is at least a tile side apart on one axis.
    kept = np.flatnonzero(buffered != "buffer")
    for i, j in itertools.combinations(kept, 2):
        if buffered[i] != buffered[j]:
            assert np.abs(lonlat[i] - lonlat[j]).max() >= 0.5
    unknown = lonlat.copy()
    unknown[1] = np.nan  # a tile without coordinates stays where it is
    assert buffer_overlaps(split, unknown, 0.5)[1] == "train"


def test_dataset_with_tile_extent_buffers_cities_across_region_borders(tmp_path: Path) -> None:
    groups = [f"g{i}" for i in range(6)]
    source = write_dataset(tmp_path, unit_tiles(6), groups)
    table = pd.read_csv(source.labels)
    table["lon"] = [0.0, 0.1, 5.0, 10.0, 15.0, 20.0]  # tiles 0 and 1 overlap whatever their splits
    table["lat"] = 0.0
    table["split"] = ["test", "train", "val", "train", "train", "test"]
    table.to_csv(source.labels, index=False)
    plain = load_dataset(source, progress=False)
    assert plain.info["buffered"] == 0 and plain.split[1] == "train"
    source.tile_degrees = 0.2
    buffered = load_dataset(source, progress=False)
    assert buffered.info["buffered"] == 1 and buffered.split[1] == "buffer"
    np.testing.assert_array_equal(buffered.indices("train"), [3, 4])
    recipe = DataConfig(tiles=source.tiles, labels=source.labels, tile_degrees=0.2)  # the same from a recipe
    np.testing.assert_array_equal(load_data(recipe, progress=False).split, buffered.split)


def test_split_needs_three_groups() -> None:
    with pytest.raises(UserError, match="at least 3 groups"):
        split_by_group(["a", "a", "b"], 0.2, 0.2, 0)


# --------------------------------------------------------------------------------------------- datasets


def test_dataset_from_int8_tifs_zero_fills_nodata_and_means_skip_it(tmp_path: Path) -> None:
    tiles = unit_tiles(6)
    tiles[0, :, 0, :2] = np.nan  # two masked pixels in tile 0
    source = write_dataset(tmp_path, tiles, [f"g{i}" for i in range(6)], suffix=".tif")
    data = load_dataset(source, progress=False)
    assert data.tiles.shape == (6, 1, 64, SIZE, SIZE)
    assert not data.valid[0, 0, :2].any() and data.valid[0].sum() == SIZE * SIZE - 2
    assert (data.tiles[0, 0, :, 0, :2] == 0).all()
    decoded = dequantize_int8(quantize_int8(tiles[0]))
    observed = decoded.reshape(64, -1)[:, data.valid[0].ravel()]
    np.testing.assert_allclose(data.mean_embeddings()[0], observed.mean(axis=1), rtol=1e-5)
    np.testing.assert_array_equal(data.targets, np.arange(6) * 0.5)


def test_labels_missing_for_tiles_is_an_error(tmp_path: Path) -> None:
    source = write_dataset(tmp_path, unit_tiles(4), ["a", "b", "c", "d"])
    np.save(source.tiles / "stray.npy", quantize_int8(unit_tiles(1)[0]))
    with pytest.raises(UserError, match=r"1 tile\(s\) in .*tiles have no row in .*labels\.csv \(first: stray\)"):
        load_dataset(source, progress=False)


def test_tiles_missing_for_labels_is_an_error(tmp_path: Path) -> None:
    source = write_dataset(tmp_path, unit_tiles(4), ["a", "b", "c", "d"])
    (source.tiles / "t002.npy").unlink()
    with pytest.raises(UserError, match=r"1 id\(s\) of .*labels\.csv have no tile .* \(first: t002\)"):
        load_dataset(source, progress=False)


def test_mostly_nodata_tile_is_refused(tmp_path: Path) -> None:
    tiles = unit_tiles(4)
    tiles[1, :, :6] = np.nan  # 75 % of tile t001
    source = write_dataset(tmp_path, tiles, ["a", "b", "c", "d"])
    with pytest.raises(UserError, match=r"'t001' .* has 75% nodata pixels"):
        load_dataset(source, progress=False, max_nodata=0.5)
    assert load_dataset(source, progress=False, max_nodata=0.8).valid[1].mean() == 0.25


def test_tiles_that_are_not_unit_vectors_are_refused(tmp_path: Path) -> None:
    source = write_dataset(tmp_path, unit_tiles(4), ["a", "b", "c", "d"])
    np.save(source.tiles / "t000.npy", unit_tiles(1)[0] * 0.1)
    with pytest.raises(UserError, match=r"median pixel length is 0\.1"):
        load_dataset(source, progress=False)
    assert load_dataset(source, progress=False, check_unit_length_of_tiles=False).tiles.shape[0] == 4


def test_tiles_of_different_sizes_are_refused(tmp_path: Path) -> None:
    source = write_dataset(tmp_path, unit_tiles(4), ["a", "b", "c", "d"])
    np.save(source.tiles / "t003.npy", quantize_int8(unit_tiles(1, size=4)[0]))
    with pytest.raises(UserError, match=r"t003\.npy is 4x4, the first tile is 8x8"):
        load_dataset(source, progress=False)


def test_bundle_loads_the_same_tiles_as_the_files(tmp_path: Path) -> None:
    tiles = unit_tiles(5)
    source = write_dataset(tmp_path, tiles, ["a", "b", "c", "d", "e"])
    ids = [f"t{i:03d}" for i in range(5)]
    write_bundle(tmp_path / "tiles.npz", ids[::-1], quantize_int8(tiles[::-1, None]))
    from_files = load_dataset(source, progress=False)
    from_bundle = load_dataset(TileSource(tmp_path / "tiles.npz", source.labels), progress=False)
    np.testing.assert_array_equal(from_files.tiles, from_bundle.tiles)
    np.testing.assert_array_equal(from_files.split, from_bundle.split)


# ---------------------------------------------------------------------------------------- default data


def test_stream_windows_equals_direct_slicing() -> None:
    grid = np.random.default_rng(0).integers(0, 255, size=(50, 40), dtype=np.uint8)
    windows = [Window(-3, 5, 8), Window(10, 0, 12), Window(44, 30, 10), Window(20, 20, 5)]
    reads: list[tuple[int, int]] = []

    def read_rows(start: int, stop: int) -> np.ndarray:
        reads.append((start, stop))
        return grid[start:stop]

    crops = stream_windows(read_rows, 50, windows, fill=7, dtype=np.uint8, block=6)
    padded = np.pad(grid, ((10, 10), (0, 0)), constant_values=7)
    for crop, window in zip(crops, windows, strict=True):
        expected = padded[window.row0 + 10 : window.row0 + 10 + window.size, window.col0 : window.col0 + window.size]
        np.testing.assert_array_equal(crop, expected)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(reads))  # one forward pass


def test_random_projection_is_fixed_and_embeddings_are_unit_length() -> None:
    weights, offset = random_projection(6, seed=1)
    again, _ = random_projection(6, seed=1)
    np.testing.assert_array_equal(weights, again)
    features = np.random.default_rng(0).random((6, 5, 5)).astype(np.float32)
    embedded = embed_features(features, weights, offset, 0.0, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=0), 1.0, rtol=1e-5)
    direct = np.einsum("cf,f->c", weights, features[:, 2, 3]) + offset
    np.testing.assert_allclose(embedded[:, 2, 3], direct / np.linalg.norm(direct), rtol=1e-5)


def test_world_dataset_targets_are_hm_growth_and_frames_are_two_years(tmp_path: Path) -> None:
    from landformer.core.raster import open_raster
    from landformer.embeddings.tiles import resolve_source
    from landformer.synth.world import make_world

    world = make_world(tmp_path / "world", size=64, seed=1)
    make_world_dataset(tmp_path / "data", world.folder, WorldDatasetConfig(tile_size=16, group_tiles=1), progress=False)
    data = load_dataset(resolve_source(tmp_path / "data"), progress=False)
    assert data.tiles.shape == (16, 2, 64, 16, 16)
    with open_raster(world.hm[world.hm_years.index(2020)]) as a, open_raster(world.hm[world.hm_years.index(1995)]) as b:
        growth = np.nan_to_num(a.read(1) - b.read(1))
    row = data.ids.index("r001c002")
    assert data.targets[row] == pytest.approx(growth[16:32, 32:48].mean(), rel=1e-6)
    assert not np.array_equal(data.tiles[:, 0], data.tiles[:, 1])  # 1990 and 1995 differ where HM changed


def test_dataset_plot_shows_a_tile_as_rgb(tmp_path: Path) -> None:
    import imageio.v3 as iio

    source = write_dataset(tmp_path, unit_tiles(3), ["a", "b", "c"])
    data = load_dataset(source, progress=False)
    picture = iio.imread(data.plot(1, tmp_path / "tile.png"))
    assert picture.shape == (256, 256, 3) and picture.std() > 0


@pytest.mark.slow
def test_city_dataset_tiles_are_centred_on_their_cities(tmp_path: Path) -> None:
    from landformer.embeddings.make_dataset import CityDatasetConfig, make_city_dataset
    from landformer.embeddings.tiles import resolve_source

    make_city_dataset(tmp_path / "cities", CityDatasetConfig(n_cities=30, tile_size=8, seed=3), progress=False)
    labels = pd.read_csv(tmp_path / "cities" / "labels.csv", dtype={"id": str})
    assert len(labels) == 30 and (labels["population"] >= 15_000).all()
    np.testing.assert_allclose(labels["target"], np.log(labels["population"]))
    for row in labels.itertuples():
        with rasterio.open(tmp_path / "cities" / "tiles" / f"{row.id}.tif") as tile:
            assert tile.count == 64 and tile.dtypes[0] == "int8" and tile.nodata == INT8_NODATA
            west, south, east, north = tile.bounds
            assert west < row.lon < east and south < row.lat < north
            assert abs((west + east) / 2 - row.lon) <= tile.res[0] and abs((south + north) / 2 - row.lat) <= tile.res[1]
        assert row.group == f"{int(np.floor(row.lon / 10))}_{int(np.floor(row.lat / 10))}"
    data = load_dataset(resolve_source(tmp_path / "cities"), progress=False)
    files = load_dataset(TileSource(tmp_path / "cities" / "tiles", tmp_path / "cities" / "labels.csv"), progress=False)
    np.testing.assert_array_equal(data.tiles, files.tiles)  # the bundle holds exactly the tile files' codes
