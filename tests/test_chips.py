"""core/chips: sampling, nodata filtering, legends, the spatial-block split and the chip-file contract.

Rasters are tiny GeoTIFF / ERDAS .img files in NLCD's Albers (EPSG:5070) written by the tests. Chip positions
are recovered from the stored lon/lat centres, so the checks also prove the coordinates are exact.
"""

from __future__ import annotations

import json
import logging
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from landformer.core.chips import (
    BlockSplit,
    ChipConfig,
    ChipSet,
    RandomWindows,
    as_class_indices,
    load_chips,
    make_chips,
    split_class_shares,
    warn_if_splits_differ,
    write_chips,
)
from landformer.core.config import load_config
from landformer.core.errors import UserError
from landformer.core.legend import NODATA_INDEX, load_legend
from landformer.core.raster import RasterGrid, lonlat_bounds, lonlat_to_pixel, write_geotiff

ALBERS = "EPSG:5070"
PIXEL = 30.0
ORIGIN = (-1_000_000.0, 2_000_000.0)
TRANSFORM = from_origin(*ORIGIN, PIXEL, PIXEL)
NLCD_CODES = np.array([11, 21, 22, 41, 42, 52, 71, 81, 82, 90], dtype=np.uint8)


def nlcd_like(height: int, width: int, seed: int = 0, nodata_fraction: float = 0.0) -> np.ndarray:
    """Patchy NLCD codes (4 px patches) with scattered nodata (0) pixels."""
    rng = np.random.default_rng(seed)
    patches = rng.integers(0, len(NLCD_CODES), (height // 4 + 1, width // 4 + 1))
    codes = NLCD_CODES[np.kron(patches, np.ones((4, 4), dtype=np.int64))[:height, :width]]
    codes[rng.random((height, width)) < nodata_fraction] = 0
    return codes


def write_classes(path: Path, codes: np.ndarray, nodata: float | None = 0, driver: str = "GTiff") -> Path:
    profile = {"driver": driver, "height": codes.shape[0], "width": codes.shape[1], "count": 1, "dtype": codes.dtype}
    with rasterio.open(path, "w", crs=ALBERS, transform=TRANSFORM, nodata=nodata, **profile) as dst:
        dst.write(codes, 1)
    return path


def write_dem_over(path: Path, grid: RasterGrid, shape: tuple[int, int]) -> Path:
    """A smooth float32 DEM in lon/lat that covers ``grid`` with a margin."""
    west, south, east, north = lonlat_bounds(grid)
    west, south, east, north = west - 0.01, south - 0.01, east + 0.01, north + 0.01
    res_x, res_y = (east - west) / shape[1], (north - south) / shape[0]
    lat = north - (np.arange(shape[0]) + 0.5)[:, None] * res_y
    lon = west + (np.arange(shape[1]) + 0.5)[None, :] * res_x
    dem = (1000 + 500 * np.sin(lat * 40) + 300 * np.cos(lon * 30)).astype(np.float32)
    return write_geotiff(path, dem, rasterio.Affine(res_x, 0, west, 0, -res_y, north), "EPSG:4326", nodata=-9999.0)


def chip_positions(coords: np.ndarray, chip_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left pixels of chips from their lon/lat centres; they must land on whole pixels."""
    rows, cols = lonlat_to_pixel(TRANSFORM, ALBERS, coords[:, 0], coords[:, 1])
    rows, cols = rows - chip_size / 2, cols - chip_size / 2
    np.testing.assert_allclose(rows, np.round(rows), atol=1e-6)
    np.testing.assert_allclose(cols, np.round(cols), atol=1e-6)
    return np.round(rows).astype(int), np.round(cols).astype(int)


def encoded_window(raster: Path, row: int, col: int, size: int, legend_name: str = "nlcd") -> np.ndarray:
    """What a chip should hold: a direct windowed read, mapped through the legend (raster nodata -> -1)."""
    with rasterio.open(raster) as dataset:
        raw = dataset.read(1, window=Window(col, row, size, size))
        nodata = dataset.nodata
    legend = load_legend(legend_name)
    indices = legend.encode(np.where(raw == nodata, legend.codes[0], raw) if nodata is not None else raw)
    if nodata is not None:
        indices[raw == nodata] = NODATA_INDEX
    return indices


@pytest.fixture(scope="module")
def patchy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """72 x 88 NLCD-like raster with 2% nodata, shared by the property tests."""
    folder = tmp_path_factory.mktemp("patchy")
    return write_classes(folder / "patchy.tif", nlcd_like(72, 88, seed=1, nodata_fraction=0.02))


# --- the contract -------------------------------------------------------------------------------------------------


def test_random_chips_shapes_metadata_and_sidecar(tmp_path: Path) -> None:
    raster = write_classes(tmp_path / "nlcd.tif", nlcd_like(96, 128))
    out = make_chips(ChipConfig(class_raster=raster, chip_size=8, count=50, block_size=32), tmp_path / "chips.npz")
    chips = load_chips(out)
    assert len(chips.train_data) + len(chips.test_data) == 50
    assert len(chips.train_data) > 0 and len(chips.test_data) > 0
    assert chips.train_data.shape[1:] == (1, 8, 8) and chips.train_data.dtype == np.int16
    assert chips.train_coords.shape == (len(chips.train_data), 2) and chips.train_coords.dtype == np.float64
    assert chips.train_data.min() >= 0 and chips.train_data.max() < 20
    meta = chips.metadata
    assert meta == json.loads(out.with_suffix(".json").read_text())
    with np.load(out, allow_pickle=False) as npz:
        assert npz["metadata"].dtype.kind == "U" and json.loads(str(npz["metadata"])) == meta
    assert meta["legend"] == load_legend("nlcd").to_dict()
    assert chips.legend.name == "nlcd" and chips.channel_names == ["landcover"]
    assert meta["crs"] == "EPSG:5070" and meta["pixel_size"] == [30.0, 30.0] and meta["chip_size"] == 8
    assert meta["nodata"]["class_index"] == NODATA_INDEX
    assert meta["sources"]["class_raster"] == str(raster)
    assert meta["split"]["block_size"] == 32 and meta["split"]["test_fraction"] == 0.2
    assert meta["counts"]["train"] == len(chips.train_data) and meta["counts"]["test"] == len(chips.test_data)
    assert meta["counts"]["windows_read"] == 50 and meta["counts"]["dropped_nodata"] == 0
    assert isinstance(meta["landformer_version"], str)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chips.json", "chips.npz", "nlcd.tif"]


@settings(max_examples=20, deadline=None)
@given(
    chip_size=st.sampled_from([4, 6, 8]),
    sampling=st.one_of(st.integers(1, 40).map(lambda n: ("count", n)), st.integers(0, 6).map(lambda s: ("stride", s))),
    blocks_per_side=st.integers(1, 3),
    test_fraction=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    max_nodata=st.sampled_from([0.0, 0.05, 1.0]),
    seed=st.integers(0, 10_000),
)
def test_chip_properties(
    patchy: Path,
    chip_size: int,
    sampling: tuple[str, int],
    blocks_per_side: int,
    test_fraction: float,
    max_nodata: float,
    seed: int,
) -> None:
    mode, value = sampling
    block_size = chip_size * blocks_per_side + 3  # blocks that are not a multiple of the chip size
    config = ChipConfig(
        class_raster=patchy,
        chip_size=chip_size,
        count=value if mode == "count" else None,
        stride=chip_size + value if mode == "stride" else None,
        max_nodata=max_nodata,
        test_fraction=test_fraction,
        block_size=block_size,
        seed=seed,
    )
    with tempfile.TemporaryDirectory() as folder:
        try:
            chips = load_chips(make_chips(config, Path(folder) / "chips.npz"))
        except UserError as err:  # a sparse grid can hold only chips with nodata: refused, and nothing written
            assert "none of" in str(err) and max_nodata < 1.0 and mode == "stride"
            assert list(Path(folder).iterdir()) == []
            assume(False)
    with rasterio.open(patchy) as dataset:
        grid = RasterGrid.of(dataset)
    west, south, east, north = lonlat_bounds(grid)
    placed = {}
    for split, data, coords in (
        ("train", chips.train_data, chips.train_coords),
        ("test", chips.test_data, chips.test_coords),
    ):
        # Centres lie inside the raster's bounds.
        assert np.all((coords[:, 0] > west) & (coords[:, 0] < east) & (coords[:, 1] > south) & (coords[:, 1] < north))
        rows, cols = chip_positions(coords, chip_size)
        assert np.all((rows >= 0) & (cols >= 0) & (rows + chip_size <= 72) & (cols + chip_size <= 88))
        for chip, row, col in zip(data, rows, cols, strict=True):
            np.testing.assert_array_equal(chip[0], encoded_window(patchy, row, col, chip_size))
            assert np.mean(chip[0] == NODATA_INDEX) <= max_nodata
        if mode == "stride":
            assert np.all(rows % config.stride == 0) and np.all(cols % config.stride == 0)
        placed[split] = (rows, cols)
    block_size_used = chips.metadata["split"]["block_size"]
    blocks = {}
    for split, (rows, cols) in placed.items():
        # Each chip lies inside one block ...
        assert np.all(rows // block_size_used == (rows + chip_size - 1) // block_size_used)
        assert np.all(cols // block_size_used == (cols + chip_size - 1) // block_size_used)
        blocks[split] = set(zip((rows // block_size_used).tolist(), (cols // block_size_used).tolist(), strict=True))
        assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == len(rows)  # no chip twice
    # ... and no block (hence no pixel) is shared by a train and a test chip.
    assert not blocks["train"] & blocks["test"]
    train_rows, train_cols = placed["train"]
    for row, col in zip(*placed["test"], strict=True):
        overlap = (np.abs(train_rows - row) < chip_size) & (np.abs(train_cols - col) < chip_size)
        assert not overlap.any()
    if test_fraction == 0.0:
        assert len(chips.test_data) == 0
    if test_fraction == 1.0:
        assert len(chips.train_data) == 0


def test_covariate_channel_is_the_dem_resampled_onto_the_class_grid(tmp_path: Path) -> None:
    raster = write_classes(tmp_path / "nlcd.tif", nlcd_like(64, 80))
    with rasterio.open(raster) as dataset:
        grid = RasterGrid.of(dataset)
    dem = write_dem_over(tmp_path / "dem.tif", grid, (30, 40))
    config = ChipConfig(class_raster=raster, covariates=[dem], chip_size=8, count=30, block_size=32)
    chips = load_chips(make_chips(config, tmp_path / "chips.npz"))
    assert chips.train_data.dtype == np.float32 and chips.train_data.shape[1:] == (2, 8, 8)
    assert chips.channel_names == ["landcover", "dem"]
    assert chips.metadata["sources"]["covariates"] == [str(dem)]
    with (
        rasterio.open(dem) as src,
        WarpedVRT(
            src,
            crs=grid.crs,
            transform=grid.transform,
            width=grid.width,
            height=grid.height,
            resampling=Resampling.bilinear,
            nodata=np.nan,
            dtype="float32",
            tolerance=1e-9,
        ) as vrt,
    ):
        expected_dem = vrt.read(1)
    for data, coords in ((chips.train_data, chips.train_coords), (chips.test_data, chips.test_coords)):
        for chip, row, col in zip(data, *chip_positions(coords, 8), strict=True):
            np.testing.assert_array_equal(chip[0], encoded_window(raster, row, col, 8).astype(np.float32))
            np.testing.assert_allclose(chip[1], expected_dem[row : row + 8, col : col + 8], rtol=0, atol=1e-3)


def test_covariate_on_the_same_grid_is_copied_exactly_and_bands_become_channels(tmp_path: Path) -> None:
    raster = write_classes(tmp_path / "nlcd.tif", nlcd_like(32, 40))
    bands = np.random.default_rng(2).normal(size=(2, 32, 40)).astype(np.float32)
    terrain = write_geotiff(tmp_path / "terrain.tif", bands, TRANSFORM, ALBERS, band_names=["slope", "aspect"])
    height = write_geotiff(tmp_path / "height.tif", bands[0] * 10, TRANSFORM, ALBERS)
    config = ChipConfig(class_raster=raster, covariates=[terrain, height], chip_size=8, count=12, test_fraction=0)
    chips = load_chips(make_chips(config, tmp_path / "chips.npz"))
    assert chips.channel_names == ["landcover", "slope", "aspect", "height"]
    for chip, row, col in zip(chips.train_data, *chip_positions(chips.train_coords, 8), strict=True):
        # Pixel centres fall exactly on source pixel centres: bilinear returns the pixels themselves.
        np.testing.assert_array_equal(chip[1:3], bands[:, row : row + 8, col : col + 8])
        np.testing.assert_array_equal(chip[3], bands[0, row : row + 8, col : col + 8] * 10)


def test_float_class_raster_with_nan_nodata(tmp_path: Path) -> None:
    codes = nlcd_like(32, 32).astype(np.float32)
    codes[:16, :16] = np.nan
    raster = write_classes(tmp_path / "float.tif", codes, nodata=np.nan)
    config = ChipConfig(class_raster=raster, chip_size=16, stride=16, test_fraction=0, max_nodata=1.0)
    chips = load_chips(make_chips(config, tmp_path / "f.npz"))
    assert (chips.train_data[0] == NODATA_INDEX).all()
    np.testing.assert_array_equal(chips.train_data[3, 0], load_legend("nlcd").encode(codes[16:, 16:]))


def test_nodata_chips_are_dropped_and_replaced(tmp_path: Path) -> None:
    codes = nlcd_like(64, 64)
    codes[:, :32] = 0  # the western half has no data
    raster = write_classes(tmp_path / "half.tif", codes)
    strict = load_chips(
        make_chips(ChipConfig(class_raster=raster, chip_size=8, count=30, test_fraction=0), tmp_path / "strict.npz")
    )
    assert len(strict.train_data) == 30 and (strict.train_data >= 0).all()
    assert strict.metadata["counts"]["windows_read"] > 30
    assert strict.metadata["counts"]["dropped_nodata"] == strict.metadata["counts"]["windows_read"] - 30
    assert np.all(chip_positions(strict.train_coords, 8)[1] >= 32)
    lenient = load_chips(
        make_chips(
            ChipConfig(class_raster=raster, chip_size=8, count=30, test_fraction=0, max_nodata=1.0),
            tmp_path / "lenient.npz",
        )
    )
    counts = lenient.metadata["counts"]
    assert len(lenient.train_data) == 30 and (lenient.train_data == NODATA_INDEX).any()
    # Nothing is dropped for nodata; chips wholly in the empty half are all alike, so only the first is kept.
    assert counts["dropped_nodata"] == 0 and counts["windows_read"] == 30 + counts["dropped_duplicates"]
    assert counts["dropped_duplicates"] > 0 and (lenient.train_data == NODATA_INDEX).all(axis=(1, 2, 3)).sum() == 1


def test_asking_for_more_chips_than_positions_returns_each_position_once(tmp_path: Path, caplog) -> None:
    raster = write_classes(tmp_path / "small.tif", nlcd_like(12, 12))
    with caplog.at_level(logging.WARNING):
        chips = load_chips(
            make_chips(ChipConfig(class_raster=raster, chip_size=8, count=1000, test_fraction=0), tmp_path / "c.npz")
        )
    assert len(chips.train_data) == 25  # 5 x 5 top-left positions
    assert len(np.unique(chips.train_coords, axis=0)) == 25
    assert "only 25 of 1000 requested chips" in caplog.text


def test_grid_chips_tile_the_raster_in_row_major_order(tmp_path: Path) -> None:
    codes = nlcd_like(48, 64, seed=3)
    raster = write_classes(tmp_path / "grid.tif", codes)
    chips = load_chips(
        make_chips(ChipConfig(class_raster=raster, chip_size=16, stride=16, test_fraction=0), tmp_path / "g.npz")
    )
    assert len(chips.train_data) == 12
    rows, cols = chip_positions(chips.train_coords, 16)
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == [
        (r, c) for r in (0, 16, 32) for c in range(0, 64, 16)
    ]
    mosaic = chips.train_data[:, 0].reshape(3, 4, 16, 16).transpose(0, 2, 1, 3).reshape(48, 64)
    np.testing.assert_array_equal(mosaic, load_legend("nlcd").encode(codes))


def test_block_split_holds_out_whole_blocks(tmp_path: Path) -> None:
    raster = write_classes(tmp_path / "blocks.tif", nlcd_like(64, 64, seed=4))
    config = ChipConfig(class_raster=raster, chip_size=8, stride=8, block_size=16, test_fraction=0.25, seed=7)
    chips = load_chips(make_chips(config, tmp_path / "b.npz"))
    split = chips.metadata["split"]
    assert split["n_blocks"] == 16 and split["n_test_blocks"] == 4
    assert len(chips.test_data) == 4 * 4 and len(chips.train_data) == 12 * 4  # 2 x 2 chips per block
    expected = BlockSplit.random(64, 64, 8, 16, 0.25, 7, source="test")
    rows, cols = chip_positions(chips.test_coords, 8)
    assert expected.is_test(rows, cols).all()
    rows, cols = chip_positions(chips.train_coords, 8)
    assert not expected.is_test(rows, cols).any()


def test_same_seed_same_file_other_seed_other_chips(tmp_path: Path, patchy: Path) -> None:
    def run(seed: int, name: str) -> ChipSet:
        config = ChipConfig(class_raster=patchy, chip_size=8, count=20, max_nodata=0.1, seed=seed)
        return load_chips(make_chips(config, tmp_path / name))

    first, again, other = run(3, "a.npz"), run(3, "b.npz"), run(4, "c.npz")
    for key in ("train_data", "test_data", "train_coords", "test_coords"):
        np.testing.assert_array_equal(getattr(first, key), getattr(again, key))
    assert not np.array_equal(first.train_coords, other.train_coords)


def test_random_windows_are_distinct_and_reproducible_on_huge_rasters() -> None:
    offsets = np.arange(3000, dtype=np.int64)  # 9 million positions: drawn by rejection, not a permutation
    first = RandomWindows(offsets, offsets, seed=5, expected=100)
    rows, cols = first.draw(5000)
    assert first._permutation is None
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == 5000
    again_rows, again_cols = RandomWindows(offsets, offsets, seed=5, expected=100).draw(5000)
    np.testing.assert_array_equal(rows, again_rows)
    np.testing.assert_array_equal(cols, again_cols)
    more_rows, more_cols = first.draw(5000)
    drawn = set(zip(rows.tolist(), cols.tolist(), strict=True))
    assert not drawn & set(zip(more_rows.tolist(), more_cols.tolist(), strict=True))


# --- filters: class fractions and duplicates ------------------------------------------------------------------------


def test_max_class_fraction_drops_chips_dominated_by_a_class(tmp_path: Path) -> None:
    # Sixteen 4x4 chips on a grid; chip k (row-major) holds k water (11) pixels and forest (41) elsewhere.
    codes = np.full((16, 16), 41, dtype=np.uint8)
    for k in range(16):
        rows, cols = np.unravel_index(np.arange(k), (4, 4))
        codes[4 * (k // 4) + rows, 4 * (k % 4) + cols] = 11
    raster = write_classes(tmp_path / "coast.tif", codes)
    config = ChipConfig(class_raster=raster, chip_size=4, stride=4, test_fraction=0, max_class_fraction={11: 0.25})
    chips = load_chips(make_chips(config, tmp_path / "land.npz"))
    water = (chips.train_data[:, 0] == 0).sum(axis=(1, 2))  # index 0 of the NLCD legend is code 11
    np.testing.assert_array_equal(water, np.arange(5))  # at most 4 of 16 pixels water: chips 0..4
    counts = chips.metadata["counts"]
    assert (counts["windows_read"], counts["dropped_class_fraction"], counts["dropped_nodata"]) == (16, 11, 0)
    assert counts["dropped_duplicates"] is None  # grid chips are every position: nothing is de-duplicated
    assert chips.metadata["sampling"]["max_class_fraction"] == {"11": 0.25}

    loaded = load_config(ChipConfig, None, [f"class_raster={raster}", "max_class_fraction={11: 0.5}"])
    assert loaded.max_class_fraction == {11: 0.5}
    with pytest.raises(UserError, match=r"code\(s\) \[13\], which are not classes of legend 'nlcd'"):
        make_chips(ChipConfig(class_raster=raster, max_class_fraction={13: 0.5}), tmp_path / "x.npz")
    with pytest.raises(UserError, match="max class fraction of code 11 must lie in"):
        make_chips(ChipConfig(class_raster=raster, max_class_fraction={11: 1.5}), tmp_path / "x.npz")
    with pytest.raises(UserError, match="'water' is not an integer class code"):
        ChipConfig(class_raster=raster, max_class_fraction={"water": 0.5})  # type: ignore[dict-item]
    with pytest.raises(UserError, match=r"none of 16 chip\(s\) passes --max-nodata 0 --max-class-fraction 41=0"):
        make_chips(
            ChipConfig(class_raster=raster, chip_size=4, stride=4, test_fraction=0, max_class_fraction={41: 0.0}),
            tmp_path / "x.npz",
        )
    assert not (tmp_path / "x.npz").exists()


def test_random_chips_keep_identical_chips_once(tmp_path: Path, caplog) -> None:
    # A uniform raster: all 13 x 13 = 169 positions of a 4 px chip hold the same chip.
    raster = write_classes(tmp_path / "uniform.tif", np.full((16, 16), 41, dtype=np.uint8))
    with caplog.at_level(logging.WARNING):
        config = ChipConfig(class_raster=raster, chip_size=4, count=10, test_fraction=0)
        chips = load_chips(make_chips(config, tmp_path / "u.npz"))
    assert len(chips.train_data) == 1
    assert chips.metadata["counts"]["windows_read"] == 169 and chips.metadata["counts"]["dropped_duplicates"] == 168
    assert "only 1 of 10 requested chips pass --max-nodata 0 and are distinct" in caplog.text

    # Patchy codes: the number dropped is the number of positions minus the distinct windows, counted by hand.
    codes = nlcd_like(20, 20, seed=5)
    raster = write_classes(tmp_path / "patchy.tif", codes)
    windows = np.lib.stride_tricks.sliding_window_view(codes, (4, 4)).reshape(-1, 16)
    distinct = len(np.unique(windows, axis=0))
    assert distinct < len(windows) == 289  # the raster has repeated windows to find
    config = ChipConfig(class_raster=raster, chip_size=4, count=1000, test_fraction=0)
    chips = load_chips(make_chips(config, tmp_path / "p.npz"))
    assert len(chips.train_data) == distinct
    assert len(np.unique(chips.train_data.reshape(len(chips.train_data), -1), axis=0)) == distinct
    assert chips.metadata["counts"]["dropped_duplicates"] == 289 - distinct

    # Identical classes with different covariate values are different chips.
    uniform = np.full((16, 16), 41, dtype=np.uint8)
    raster = write_classes(tmp_path / "flat.tif", uniform)
    slope = write_geotiff(tmp_path / "slope.tif", np.arange(256, dtype=np.float32).reshape(16, 16), TRANSFORM, ALBERS)
    config = ChipConfig(class_raster=raster, covariates=[slope], chip_size=4, count=20, test_fraction=0)
    chips = load_chips(make_chips(config, tmp_path / "s.npz"))
    assert len(chips.train_data) == 20 and chips.metadata["counts"]["dropped_duplicates"] == 0


def test_the_first_drawn_copy_is_kept_and_counts_stop_at_the_last_chip_kept(tmp_path: Path) -> None:
    codes = nlcd_like(40, 40, seed=6)
    codes[:, :20] = 41  # the western half is one uniform forest
    raster = write_classes(tmp_path / "half.tif", codes)
    config = ChipConfig(class_raster=raster, chip_size=4, count=30, test_fraction=0, seed=2)
    chips = load_chips(make_chips(config, tmp_path / "h.npz"))
    rows, cols = chip_positions(chips.train_coords, 4)
    sampler = RandomWindows(np.arange(37), np.arange(37), seed=2, expected=30)
    drawn_rows, drawn_cols = sampler.draw(37 * 37)
    seen, expected = set(), []
    for row, col in zip(drawn_rows.tolist(), drawn_cols.tolist(), strict=True):
        chip = codes[row : row + 4, col : col + 4].tobytes()
        if chip not in seen:
            seen.add(chip)
            expected.append((row, col))
        if len(expected) == 30:
            break
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == expected
    counts = chips.metadata["counts"]
    assert counts["windows_read"] == len(expected) + counts["dropped_duplicates"]
    assert counts["windows_read"] == int(np.flatnonzero((drawn_rows == row) & (drawn_cols == col))[0]) + 1


# --- class histogram and the classes of each split -----------------------------------------------------------------


TOY_LEGEND = {
    "name": "toy",
    "nodata": [0],
    "classes": [{"code": c, "name": n} for c, n in ((1, "water"), (2, "forest"), (3, "crops"), (4, "town"))],
}


def hand_made_chips(path: Path) -> Path:
    """Two 2x2 train chips and one test chip with known class shares (indices; -1 is nodata)."""
    train = np.array([[[[0, 0], [1, -1]]], [[[0, 0], [0, 2]]]], dtype=np.int16)
    test = np.array([[[[1, 1], [1, 3]]]], dtype=np.int16)
    coords = np.array([[10.0, 50.0], [11.0, 50.0]])
    metadata = {"legend": TOY_LEGEND, "channel_names": ["landcover"], "chip_size": 2}
    return write_chips(path, train, test, coords, coords[:1], metadata)


def test_class_shares_and_the_warning_about_classes_missing_from_a_split(tmp_path: Path, caplog) -> None:
    chips = load_chips(hand_made_chips(tmp_path / "hand.npz"))
    shares = split_class_shares(chips)
    np.testing.assert_allclose(shares["train"], [5 / 8, 1 / 8, 1 / 8, 0])  # the other 1/8 is nodata
    np.testing.assert_allclose(shares["test"], [0, 3 / 4, 0, 1 / 4])
    with caplog.at_level(logging.WARNING):
        warn_if_splits_differ(chips.legend, chips.train_data, chips.test_data, "hand.npz")
    assert caplog.messages == [
        "hand.npz: train and test chips hold different classes; missing from test: water (1), crops (3); "
        "missing from train: town (4)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        warn_if_splits_differ(chips.legend, chips.train_data, chips.train_data[::-1], "same.npz")
        warn_if_splits_differ(chips.legend, chips.train_data, chips.test_data[:0], "no test split")
    assert caplog.messages == []


def test_make_chips_warns_when_the_splits_hold_different_classes(tmp_path: Path, caplog) -> None:
    codes = np.full((32, 32), 41, dtype=np.uint8)
    codes[:16, :16] = 11  # one of the four 16 px blocks is water: it is in one split only
    raster = write_classes(tmp_path / "lake.tif", codes)
    config = ChipConfig(class_raster=raster, chip_size=8, stride=8, block_size=16, test_fraction=0.25, seed=0)
    with caplog.at_level(logging.WARNING):
        chips = load_chips(make_chips(config, tmp_path / "lake.npz"))
    shares = split_class_shares(chips)
    lake_in_test = shares["test"][0] > 0
    assert shares["train" if lake_in_test else "test"][0] == 0
    missing = "train" if lake_in_test else "test"
    assert f"missing from {missing}: Open Water (11)" in caplog.text and caplog.text.count("\n") == 1


# --- class values of chip files without a legend -------------------------------------------------------------------


def legacy_file(path: Path, train: np.ndarray, test: np.ndarray) -> ChipSet:
    coords = np.zeros((len(train), 2)), np.zeros((len(test), 2))
    np.savez(path, train_data=train, test_data=test, train_coords=coords[0], test_coords=coords[1])
    return load_chips(path)


def test_raw_corine_codes_are_never_shifted_silently(tmp_path: Path) -> None:
    corine = load_legend("corine")
    codes = (np.arange(6 * 64).reshape(6, 1, 8, 8) % 41 + 1).astype(np.uint8)  # raw codes 1..41 of 44 classes
    chips = legacy_file(tmp_path / "clc.npz", codes[:4], codes[4:])
    with pytest.raises(
        UserError, match=r"clc\.npz records no legend and its class values 1\.\.41 .*data\.class_values=raw"
    ):
        as_class_indices(chips, corine, None, setting="data.class_values")
    raw = as_class_indices(chips, corine, "raw")
    np.testing.assert_array_equal(raw.train_data, codes[:4].astype(np.int16) - 1)  # CORINE: index = code - 1
    np.testing.assert_array_equal(raw.test_data, codes[4:].astype(np.int16) - 1)
    as_is = as_class_indices(chips, corine, "indices")
    np.testing.assert_array_equal(as_is.train_data, codes[:4])
    # Nodata codes become -1, and a float file keeps its covariates.
    with_dem = np.stack([np.full((2, 4, 4), 48.0), np.ones((2, 4, 4))], axis=1).astype(np.float32)
    with_dem[0, 0, 0, 0] = 12.0
    with_dem[1, 0, 0, 0] = np.nan
    encoded = as_class_indices(legacy_file(tmp_path / "f.npz", with_dem, with_dem), corine, "raw")
    assert encoded.train_data.dtype == np.float32 and encoded.train_data[0, 0, 0, 0] == 11.0
    assert (encoded.train_data[0, 0].ravel()[1:] == -1).all() and encoded.train_data[1, 0, 0, 0] == -1
    np.testing.assert_array_equal(encoded.train_data[:, 1], with_dem[:, 1])


def test_class_values_read_the_only_way_they_fit(tmp_path: Path, caplog) -> None:
    nlcd = load_legend("nlcd")
    codes = np.array([11, 21, 41, 95, 0], dtype=np.uint8)[np.arange(2 * 16).reshape(2, 1, 4, 4) % 5]
    chips = legacy_file(tmp_path / "nlcd.npz", codes, codes)
    with caplog.at_level(logging.WARNING):
        read = as_class_indices(chips, nlcd, None, setting="data.class_values")
    np.testing.assert_array_equal(read.train_data, nlcd.encode(codes))
    assert caplog.messages == [
        f"chip file {tmp_path / 'nlcd.npz'}: class values 0..95 fit legend 'nlcd' only as raw codes: read so "
        "(set data.class_values=raw to say it)"
    ]
    caplog.clear()
    indices = (np.arange(32).reshape(2, 1, 4, 4) % 21 - 1).astype(np.int16)  # -1..19: indices, not codes
    with caplog.at_level(logging.WARNING):
        assert as_class_indices(legacy_file(tmp_path / "i.npz", indices, indices), nlcd, None) is not None
    assert "only as class indices" in caplog.text
    caplog.clear()
    # IGBP codes 0..16 are their own indices: both readings agree, nothing to ask or say.
    igbp = np.arange(32).reshape(2, 1, 4, 4) % 17
    with caplog.at_level(logging.WARNING):
        same = as_class_indices(legacy_file(tmp_path / "g.npz", igbp, igbp), load_legend("igbp"), None)
    np.testing.assert_array_equal(same.train_data, igbp)
    assert caplog.messages == []
    with pytest.raises(UserError, match=r"class values 0\.\.300 are neither codes of legend 'nlcd' nor"):
        as_class_indices(legacy_file(tmp_path / "bad.npz", codes, codes * 0 + [[[[300]]]]), nlcd, None)
    with pytest.raises(UserError, match=r"seven\.npz: data\.class_values=raw, but class values 7 are not codes of"):
        as_class_indices(legacy_file(tmp_path / "seven.npz", codes, codes * 0 + 7), nlcd, "raw", "data.class_values")
    with_legend = load_chips(hand_made_chips(tmp_path / "hand.npz"))
    assert as_class_indices(with_legend, nlcd, None) is with_legend
    with pytest.raises(UserError, match="records its legend, so it holds class indices; unset class_values"):
        as_class_indices(with_legend, nlcd, "raw")


# --- legends --------------------------------------------------------------------------------------------------------


def test_corine_and_custom_legends(tmp_path: Path) -> None:
    corine_codes = (np.arange(40 * 40).reshape(40, 40) % 44 + 1).astype(np.uint8)
    raster = write_classes(tmp_path / "clc.tif", corine_codes, nodata=None)
    config = ChipConfig(class_raster=raster, legend="corine", chip_size=8, stride=8, test_fraction=0)
    chips = load_chips(make_chips(config, tmp_path / "clc.npz"))
    assert chips.legend.name == "corine"
    np.testing.assert_array_equal(chips.train_data[0, 0], corine_codes[:8, :8].astype(np.int16) - 1)

    legend_path = tmp_path / "mine.json"
    legend_path.write_text(
        json.dumps({"name": "mine", "nodata": [255], "classes": [{"code": c, "name": f"c{c}"} for c in (1, 5, 9)]})
    )
    custom = np.array([[1, 5], [9, 255]], dtype=np.uint8).repeat(4, axis=0).repeat(4, axis=1)
    raster = write_classes(tmp_path / "custom.tif", custom, nodata=None)
    config = ChipConfig(
        class_raster=raster, legend=str(legend_path), chip_size=4, stride=4, test_fraction=0, max_nodata=1.0
    )
    chips = load_chips(make_chips(config, tmp_path / "custom.npz"))
    assert chips.legend.codes == [1, 5, 9]
    assert [int(chip[0, 0, 0]) for chip in chips.train_data] == [0, 1, 2, NODATA_INDEX]


def test_unknown_codes_are_listed_or_become_nodata(tmp_path: Path) -> None:
    codes = nlcd_like(32, 32)
    codes[3, 3], codes[20, 30] = 13, 200
    raster = write_classes(tmp_path / "odd.tif", codes)
    config = ChipConfig(class_raster=raster, chip_size=8, stride=8, test_fraction=0)
    with pytest.raises(UserError, match=r"class code\(s\) 13, 200 are not in legend 'nlcd'.*--unknown nodata"):
        make_chips(config, tmp_path / "odd.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.tif"]  # nothing half-written
    config.unknown, config.max_nodata = "nodata", 1.0
    chips = load_chips(make_chips(config, tmp_path / "odd.npz"))
    mosaic = chips.train_data[:, 0].reshape(4, 4, 8, 8).transpose(0, 2, 1, 3).reshape(32, 32)
    assert mosaic[3, 3] == NODATA_INDEX and mosaic[20, 30] == NODATA_INDEX
    assert (mosaic == NODATA_INDEX).sum() == 2


def test_erdas_img_class_raster(tmp_path: Path) -> None:
    codes = nlcd_like(40, 40, seed=9)
    raster = write_classes(tmp_path / "nlcd.img", codes, driver="HFA")
    chips = load_chips(
        make_chips(ChipConfig(class_raster=raster, chip_size=8, count=10, test_fraction=0), tmp_path / "img.npz")
    )
    for chip, row, col in zip(chips.train_data, *chip_positions(chips.train_coords, 8), strict=True):
        np.testing.assert_array_equal(chip[0], load_legend("nlcd").encode(codes[row : row + 8, col : col + 8]))


def test_chip_config_from_yaml(tmp_path: Path) -> None:
    yaml_path = tmp_path / "chips.yaml"
    yaml_path.write_text("class_raster: a.tif\ncovariates: [dem.tif]\nchip_size: 16\nstride: 8\nunknown: nodata\n")
    config = load_config(ChipConfig, yaml_path)
    assert config.class_raster == Path("a.tif") and config.covariates == [Path("dem.tif")]
    assert (config.chip_size, config.stride, config.count, config.unknown) == (16, 8, None, "nodata")
    assert config.resolved_block_size == 128
    yaml_path.write_text("class_raster: a.tif\nchip_sise: 16\n")
    with pytest.raises(UserError, match="unknown key 'chip_sise'"):
        load_config(ChipConfig, yaml_path)


# --- bad input ------------------------------------------------------------------------------------------------------


def test_missing_and_non_raster_inputs(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"raster not found: .*nope\.tif"):
        make_chips(ChipConfig(class_raster=tmp_path / "nope.tif"), tmp_path / "c.npz")
    text = tmp_path / "text.tif"
    text.write_text("hello")
    with pytest.raises(UserError, match=r"text\.tif is not a raster"):
        make_chips(ChipConfig(class_raster=text), tmp_path / "c.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.tif"]


def test_raster_without_crs_errors_or_uses_assume_crs(tmp_path: Path) -> None:
    codes = nlcd_like(32, 32)
    raster = tmp_path / "nocrs.tif"
    with rasterio.open(
        raster, "w", driver="GTiff", height=32, width=32, count=1, dtype="uint8", transform=TRANSFORM
    ) as d:
        d.write(codes, 1)
    config = ChipConfig(class_raster=raster, chip_size=8, count=5, test_fraction=0)
    with pytest.raises(UserError, match="has no CRS; pass --assume-crs"):
        make_chips(config, tmp_path / "c.npz")
    config.assume_crs = ALBERS
    chips = load_chips(make_chips(config, tmp_path / "c.npz"))
    assert chips.metadata["crs"] == "EPSG:5070"
    for chip, row, col in zip(chips.train_data, *chip_positions(chips.train_coords, 8), strict=True):
        np.testing.assert_array_equal(chip[0], load_legend("nlcd").encode(codes[row : row + 8, col : col + 8]))


def test_chip_larger_than_raster(tmp_path: Path) -> None:
    raster = write_classes(tmp_path / "tiny.tif", nlcd_like(20, 30))
    with pytest.raises(UserError, match=r"chip size 32 is larger than raster .*tiny\.tif \(20x30 px\)"):
        make_chips(ChipConfig(class_raster=raster, chip_size=32), tmp_path / "c.npz")


def test_covariate_that_does_not_overlap(tmp_path: Path) -> None:
    raster = write_classes(tmp_path / "nlcd.tif", nlcd_like(32, 32))
    far = write_geotiff(tmp_path / "far.tif", np.ones((5, 5), np.float32), from_origin(100, 10, 1, 1), "EPSG:4326")
    config = ChipConfig(class_raster=raster, covariates=[far], chip_size=8, count=4)
    with pytest.raises(UserError, match=r"far\.tif does not overlap class raster"):
        make_chips(config, tmp_path / "c.npz")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"count": 5, "stride": 8}, "either count"),
        ({"chip_size": 0}, "chip size must be at least 1"),
        ({"count": 0}, "count must be at least 1"),
        ({"max_nodata": 1.5}, r"max nodata fraction must lie in \[0, 1\]"),
        ({"test_fraction": -0.1}, r"test fraction must lie in \[0, 1\]"),
        ({"block_size": 4}, "block size 4 is smaller than the chip size 8"),
    ],
)
def test_impossible_settings(tmp_path: Path, changes: dict, message: str) -> None:
    config = ChipConfig(class_raster=tmp_path / "never_opened.tif", **{"chip_size": 8, **changes})
    with pytest.raises(UserError, match=message):
        make_chips(config, tmp_path / "c.npz")


def test_raster_too_small_for_a_split(tmp_path: Path) -> None:
    raster = write_classes(tmp_path / "one_block.tif", nlcd_like(40, 40))
    with pytest.raises(UserError, match="lower --block-size"):
        make_chips(ChipConfig(class_raster=raster, chip_size=8, count=5), tmp_path / "c.npz")  # block 64 > raster


def test_out_must_be_npz(tmp_path: Path) -> None:
    raster = write_classes(tmp_path / "nlcd.tif", nlcd_like(16, 16))
    with pytest.raises(UserError, match=r"should end in \.npz"):
        make_chips(ChipConfig(class_raster=raster, chip_size=8, count=2, test_fraction=0), tmp_path / "chips.zip")


def test_failure_keeps_the_previous_chip_file(tmp_path: Path) -> None:
    good = write_classes(tmp_path / "good.tif", nlcd_like(32, 32))
    out = make_chips(ChipConfig(class_raster=good, chip_size=8, count=4, test_fraction=0), tmp_path / "c.npz")
    before = out.read_bytes(), out.with_suffix(".json").read_bytes()
    bad_codes = nlcd_like(32, 32)
    bad_codes[:] = 99
    bad = write_classes(tmp_path / "bad.tif", bad_codes)
    with pytest.raises(UserError, match="99 are not in legend"):
        make_chips(ChipConfig(class_raster=bad, chip_size=8, count=4, test_fraction=0), out)
    assert (out.read_bytes(), out.with_suffix(".json").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tif", "c.json", "c.npz", "good.tif"]


# --- loading ---------------------------------------------------------------------------------------------------------


def four_arrays(n_train: int = 3, n_test: int = 2, size: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train_data": rng.integers(0, 5, (n_train, 1, size, size)).astype(np.int16),
        "test_data": rng.integers(0, 5, (n_test, 1, size, size)).astype(np.int16),
        "train_coords": np.column_stack([rng.uniform(-100, -90, n_train), rng.uniform(30, 40, n_train)]),
        "test_coords": np.column_stack([rng.uniform(-100, -90, n_test), rng.uniform(30, 40, n_test)]),
    }


def test_original_four_array_format_loads_with_empty_metadata(tmp_path: Path) -> None:
    path = tmp_path / "legacy.npz"
    arrays = four_arrays()
    np.savez(path, **arrays)
    chips = load_chips(path)
    assert chips.metadata == {}
    np.testing.assert_array_equal(chips.train_data, arrays["train_data"])
    assert chips.channel_names == ["landcover"]
    with pytest.raises(UserError, match="records no legend"):
        _ = chips.legend
    # (N, H, W) data count as one channel, and an empty test split of any shape is fine.
    arrays["train_data"] = arrays["train_data"][:, 0]
    arrays["test_data"], arrays["test_coords"] = np.zeros((0,), np.int16), np.zeros((0, 2))
    np.savez(path, **arrays)
    chips = load_chips(path)
    assert chips.train_data.shape == (3, 1, 4, 4) and chips.test_data.shape == (0, 1, 4, 4)


def test_write_chips_round_trip(tmp_path: Path) -> None:
    arrays = four_arrays()
    metadata = {"legend": load_legend("corine").to_dict(), "channel_names": ["landcover"], "chip_size": 4}
    out = write_chips(tmp_path / "w.npz", *arrays.values(), metadata=metadata)
    chips = load_chips(out)
    assert chips.metadata == metadata and chips.legend.name == "corine"
    np.testing.assert_array_equal(chips.test_coords, arrays["test_coords"])


def test_corrupt_and_truncated_npz(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(UserError, match=r"garbage\.npz is corrupt"):
        load_chips(garbage)
    good = write_chips(tmp_path / "good.npz", *four_arrays(50, 10, 16).values(), metadata={})
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match=r"truncated\.npz is corrupt"):
        load_chips(truncated)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("test_coords"), "lacks key"),
        (lambda a: a.update(train_data=np.zeros((3, 4, 4, 5), np.int16)), r"\(N, C, H, W\) with H == W"),
        (lambda a: a.update(test_data=np.zeros((2, 2, 4, 4), np.int16)), "differ"),
        (lambda a: a.update(train_coords=np.zeros((2, 2))), r"train_coords should be \(3, 2\)"),
        (lambda a: a.update(test_coords=np.full((2, 2), np.nan)), "non-finite"),
        (lambda a: a.update(train_coords=np.full((3, 2), 500.0)), "not lon/lat degrees"),
        (lambda a: a.update(train_data=np.full((3, 1, 4, 4), "x")), "expected numbers"),
        (lambda a: a.update(metadata=np.array("{not json")), "not valid JSON"),
        (lambda a: a.update(metadata=np.array(json.dumps({"channel_names": ["a", "b"]}))), "2 channel names"),
        (
            lambda a: a.update(
                metadata=np.array(json.dumps({"legend": load_legend("nlcd").to_dict()})),
                train_data=np.full((3, 1, 4, 4), 20, np.int16),
            ),
            "class indices 20..20, outside -1..19",
        ),
    ],
)
def test_broken_chip_files_are_user_errors(tmp_path: Path, change, message: str) -> None:
    arrays = four_arrays()
    change(arrays)
    path = tmp_path / "broken.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError, match=message):
        load_chips(path)


def test_npz_is_written_without_pickle_and_compressed(tmp_path: Path) -> None:
    arrays = four_arrays(200, 50, 16)
    out = write_chips(tmp_path / "z.npz", *arrays.values(), metadata={"note": "x"})
    with zipfile.ZipFile(out) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}
        assert sorted(archive.namelist()) == sorted(f"{k}.npy" for k in [*arrays, "metadata"])
    with np.load(out, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["train_data"], arrays["train_data"])
