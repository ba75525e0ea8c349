"""core/raster: opening GDAL rasters, lon/lat of pixels, alignment onto a reference grid, GeoTIFF writing.

Every raster here is tiny and carries a real CRS and transform (NLCD's Albers EPSG:5070, lon/lat EPSG:4326).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from landformer.core.errors import UserError
from landformer.core.raster import (
    AlignedCovariate,
    RasterGrid,
    align_raster,
    aligned_vrt,
    chip_centre_lonlat,
    geotiff_writer,
    lonlat_bounds,
    lonlat_to_pixel,
    open_raster,
    pixel_centre_lonlat,
    pixel_to_lonlat,
    raster_info,
    read_window,
    write_geotiff,
)

ALBERS = "EPSG:5070"
PIXEL = 30.0
ORIGIN = (-1_000_000.0, 2_000_000.0)


def albers_grid(height: int, width: int) -> RasterGrid:
    return RasterGrid(CRS.from_string(ALBERS), from_origin(*ORIGIN, PIXEL, PIXEL), width, height)


def write_dem_over(path: Path, grid: RasterGrid, shape: tuple[int, int], margin: float = 0.01, hole: bool = False):
    """A smooth float32 DEM in lon/lat covering ``grid`` (plus ``margin`` degrees), value a function of lon/lat."""
    west, south, east, north = lonlat_bounds(grid)
    west, south, east, north = west - margin, south - margin, east + margin, north + margin
    height, width = shape
    res_x, res_y = (east - west) / width, (north - south) / height
    lat = north - (np.arange(height) + 0.5)[:, None] * res_y
    lon = west + (np.arange(width) + 0.5)[None, :] * res_x
    dem = (1000 + 500 * np.sin(lat * 40) + 300 * np.cos(lon * 30)).astype(np.float32)
    if hole:
        dem[height // 2 : height // 2 + 3, width // 2 : width // 2 + 3] = -9999
    transform = rasterio.transform.Affine(res_x, 0, west, 0, -res_y, north)
    return write_geotiff(path, dem, transform, "EPSG:4326", nodata=-9999.0)


def gdal_bilinear(source_path: Path, grid: RasterGrid) -> np.ndarray:
    """GDAL's own bilinear warp onto ``grid`` with an exact (not approximated) transformer: the reference."""
    with (
        rasterio.open(source_path) as src,
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
        return vrt.read(1)


@pytest.fixture
def class_tif(tmp_path: Path) -> Path:
    values = np.arange(40 * 50, dtype=np.int32).reshape(40, 50) % 251
    return write_geotiff(
        tmp_path / "classes.tif", values.astype(np.uint8), from_origin(*ORIGIN, PIXEL, PIXEL), ALBERS, 0
    )


# --- opening -------------------------------------------------------------------------------------------------


def test_open_geotiff_keeps_crs_transform_and_values(class_tif: Path) -> None:
    with open_raster(class_tif) as dataset:
        assert dataset.crs == CRS.from_string(ALBERS)
        assert dataset.transform == from_origin(*ORIGIN, PIXEL, PIXEL)
        assert dataset.read(1)[3, 7] == (3 * 50 + 7) % 251


def test_open_erdas_img(tmp_path: Path) -> None:
    values = np.arange(30 * 20, dtype=np.uint8).reshape(30, 20)
    path = tmp_path / "nlcd.img"
    profile = {"driver": "HFA", "height": 30, "width": 20, "count": 1, "dtype": "uint8", "crs": ALBERS}
    with rasterio.open(path, "w", transform=from_origin(*ORIGIN, PIXEL, PIXEL), **profile) as dst:
        dst.write(values, 1)
    with open_raster(path) as dataset:
        assert dataset.driver == "HFA"
        assert dataset.crs.to_epsg() == 5070
        np.testing.assert_array_equal(dataset.read(1), values)


def test_open_vrt(tmp_path: Path, class_tif: Path) -> None:
    with rasterio.open(class_tif) as src:
        expected = src.read(1)[10:20, 5:25]
        srs = src.crs.to_wkt().replace('"', "&quot;")
    gt = ", ".join(str(v) for v in (ORIGIN[0] + 5 * PIXEL, PIXEL, 0.0, ORIGIN[1] - 10 * PIXEL, 0.0, -PIXEL))
    vrt = tmp_path / "subset.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="20" rasterYSize="10"><SRS>{srs}</SRS><GeoTransform>{gt}</GeoTransform>'
        '<VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{class_tif}</SourceFilename><SourceBand>1</SourceBand>'
        '<SrcRect xOff="5" yOff="10" xSize="20" ySize="10"/><DstRect xOff="0" yOff="0" xSize="20" ySize="10"/>'
        "</SimpleSource></VRTRasterBand></VRTDataset>"
    )
    with open_raster(vrt) as dataset:
        assert dataset.driver == "VRT"
        np.testing.assert_array_equal(dataset.read(1), expected)


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"not found.*nope\.tif"):
        open_raster(tmp_path / "nope.tif")


def test_not_a_raster_is_a_user_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.tif"
    text.write_text("these are not pixels\n")
    with pytest.raises(UserError, match=r"notes\.tif is not a raster"):
        open_raster(text)


def test_raster_without_crs_needs_assume_crs(tmp_path: Path) -> None:
    path = tmp_path / "nocrs.tif"
    values = np.arange(12, dtype=np.uint8).reshape(3, 4)
    profile = {"driver": "GTiff", "height": 3, "width": 4, "count": 1, "dtype": "uint8"}
    with rasterio.open(path, "w", transform=from_origin(*ORIGIN, PIXEL, PIXEL), **profile) as dst:
        dst.write(values, 1)
    with pytest.raises(UserError, match="has no CRS; pass --assume-crs"):
        open_raster(path)
    with open_raster(path, assume_crs=ALBERS) as dataset:
        assert dataset.crs.to_epsg() == 5070
        assert dataset.transform == from_origin(*ORIGIN, PIXEL, PIXEL)
        np.testing.assert_array_equal(dataset.read(1), values)
    with pytest.raises(UserError, match="'EPSG:nonsense' is not a coordinate reference system"):
        open_raster(path, assume_crs="EPSG:nonsense")


def test_raster_without_any_georeferencing_is_refused(tmp_path: Path, recwarn) -> None:
    path = tmp_path / "plain.tif"
    with rasterio.open(path, "w", driver="GTiff", height=3, width=4, count=1, dtype="uint8") as dst:
        dst.write(np.zeros((3, 4), np.uint8), 1)
    recwarn.clear()
    with pytest.raises(UserError, match="has neither a CRS nor a geotransform"):
        open_raster(path, assume_crs=ALBERS)
    assert not [w for w in recwarn if "georeferenced" in str(w.message).lower()]


# --- lon/lat ---------------------------------------------------------------------------------------------------


def test_albers_origin_is_minus_96_23() -> None:
    # EPSG:5070 puts (x, y) = (0, 0) at lon -96, lat 23: a grid whose pixel (10, 20) is centred there.
    transform = from_origin(-20.5 * PIXEL, 10.5 * PIXEL, PIXEL, PIXEL)
    lon, lat = pixel_to_lonlat(transform, ALBERS, 10.5, 20.5)
    assert lon[0] == pytest.approx(-96.0, abs=1e-9)
    assert lat[0] == pytest.approx(23.0, abs=1e-9)


def test_pixel_lonlat_matches_gdal_and_inverts(class_tif: Path) -> None:
    with open_raster(class_tif) as dataset:
        rows, cols = np.array([0, 5, 39]), np.array([0, 17, 49])
        lon, lat = pixel_centre_lonlat(dataset, rows, cols)
        xs, ys = rasterio.transform.xy(dataset.transform, rows, cols)  # pixel centres
        expected_lon, expected_lat = rasterio.warp.transform(dataset.crs, "EPSG:4326", xs, ys)
        np.testing.assert_allclose(lon, expected_lon, atol=1e-12)
        np.testing.assert_allclose(lat, expected_lat, atol=1e-12)
        back_rows, back_cols = lonlat_to_pixel(dataset.transform, dataset.crs, lon, lat)
        np.testing.assert_allclose(back_rows, rows + 0.5, atol=1e-6)
        np.testing.assert_allclose(back_cols, cols + 0.5, atol=1e-6)
        grid = RasterGrid.of(dataset)
        chip_lon, chip_lat = chip_centre_lonlat(grid, np.array([4]), np.array([6]), 8)
        corner_lon, corner_lat = pixel_to_lonlat(grid.transform, grid.crs, 8.0, 10.0)  # shared corner of 4 pixels
        assert (chip_lon[0], chip_lat[0]) == (corner_lon[0], corner_lat[0])


def test_lonlat_of_a_lonlat_raster_is_its_own_coordinates() -> None:
    transform = from_origin(10.0, 50.0, 0.25, 0.25)
    lon, lat = pixel_to_lonlat(transform, "EPSG:4326", np.array([0.5, 2.5]), np.array([0.5, 4.5]))
    np.testing.assert_allclose(lon, [10.125, 11.125])
    np.testing.assert_allclose(lat, [49.875, 49.375])


def test_lonlat_bounds_hold_every_pixel_centre() -> None:
    grid = albers_grid(400, 500)  # 12 x 15 km: edges curve in lon/lat
    west, south, east, north = lonlat_bounds(grid)
    rows, cols = np.meshgrid(np.arange(400) + 0.5, np.arange(500) + 0.5, indexing="ij")
    lon, lat = pixel_to_lonlat(grid.transform, grid.crs, rows.ravel(), cols.ravel())
    assert west <= lon.min() and lon.max() <= east and south <= lat.min() and lat.max() <= north


# --- windowed reads ----------------------------------------------------------------------------------------------


def test_read_window_equals_a_slice_and_refuses_to_leave_the_raster(class_tif: Path) -> None:
    with open_raster(class_tif) as dataset:
        full = dataset.read(1)
        np.testing.assert_array_equal(read_window(dataset, 7, 11, 9, 13, bands=1), full[7:16, 11:24])
        assert read_window(dataset, 0, 0, 2, 2).shape == (1, 2, 2)
        with pytest.raises(ValueError, match="leaves the 40x50 raster"):
            read_window(dataset, 35, 0, 10, 10)


# --- writing ------------------------------------------------------------------------------------------------------


def test_geotiff_written_window_by_window_is_tiled_compressed_and_georeferenced(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    full = rng.integers(0, 200, (2, 300, 520)).astype(np.int16)
    transform = from_origin(*ORIGIN, PIXEL, PIXEL)
    path = tmp_path / "out.tif"
    with geotiff_writer(path, 520, 300, 2, np.int16, transform, ALBERS, nodata=-1, band_names=["a", "b"]) as dst:
        assert not path.exists()  # only the temporary file exists while writing
        for row in range(0, 300, 128):
            for col in range(0, 520, 200):
                window = Window(col, row, min(200, 520 - col), min(128, 300 - row))
                dst.write(full[:, row : row + window.height, col : col + window.width], window=window)
    with rasterio.open(path) as dataset:
        np.testing.assert_array_equal(dataset.read(), full)
        assert dataset.block_shapes[0] == (256, 256)
        assert dataset.compression.name.lower() == "deflate"
        assert dataset.crs.to_epsg() == 5070 and dataset.transform == transform and dataset.nodata == -1
        assert dataset.descriptions == ("a", "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "broken.tif"
    with (
        pytest.raises(RuntimeError, match="stop"),
        geotiff_writer(path, 300, 300, 1, np.uint8, from_origin(*ORIGIN, PIXEL, PIXEL), ALBERS) as dst,
    ):
        dst.write(np.ones((1, 10, 10), np.uint8), window=Window(0, 0, 10, 10))
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_write_geotiff_round_trip_keeps_float_nodata(tmp_path: Path) -> None:
    data = np.linspace(0, 1, 35, dtype=np.float32).reshape(5, 7)
    path = write_geotiff(tmp_path / "f.tif", data, from_origin(10, 50, 0.5, 0.5), "EPSG:4326", nodata=-9999.0)
    with rasterio.open(path) as dataset:
        np.testing.assert_array_equal(dataset.read(1), data)
        assert dataset.nodata == -9999.0


# --- alignment ---------------------------------------------------------------------------------------------------


def test_aligned_covariate_matches_gdal_bilinear(tmp_path: Path) -> None:
    grid = albers_grid(96, 80)
    dem_path = write_dem_over(tmp_path / "dem.tif", grid, (40, 50))  # coarser, other CRS
    expected = gdal_bilinear(dem_path, grid)
    rows, cols = np.array([0, 10, 64, 80, 37]), np.array([0, 48, 3, 64, 21])
    with rasterio.open(dem_path) as dem:
        covariate = AlignedCovariate(dem, grid)
        assert covariate.vrt is None  # coarser source: the fast path
        chips = covariate.read_chips(rows, cols, 16, covariate.chip_lattice(rows, cols, 16))
    assert chips.shape == (5, 1, 16, 16) and chips.dtype == np.float32
    for chip, row, col in zip(chips, rows, cols, strict=True):
        np.testing.assert_allclose(chip[0], expected[row : row + 16, col : col + 16], rtol=0, atol=1e-3)


def test_aligned_covariate_nodata_and_partial_cover_match_gdal(tmp_path: Path) -> None:
    grid = albers_grid(64, 64)
    west, _, east, north = lonlat_bounds(grid)
    # The DEM covers only the eastern part of the grid and has a 3 x 3 hole of nodata.
    dem = (100 + np.arange(30)[:, None] * 3.0 + np.arange(20)[None, :] * 2.0).astype(np.float32)
    dem[10:13, 5:8] = -9999
    res = (east - west) / 20
    transform = from_origin(west + 0.3 * (east - west), north + 0.01, res, res)
    dem_path = write_geotiff(tmp_path / "dem.tif", dem, transform, "EPSG:4326", nodata=-9999.0)
    expected = gdal_bilinear(dem_path, grid)
    assert np.isnan(expected).any() and not np.isnan(expected).all()
    rows, cols = np.repeat(np.arange(0, 64, 16), 4), np.tile(np.arange(0, 64, 16), 4)
    with rasterio.open(dem_path) as src:
        covariate = AlignedCovariate(src, grid)
        chips = covariate.read_chips(rows, cols, 16, covariate.chip_lattice(rows, cols, 16))
    for chip, row, col in zip(chips, rows, cols, strict=True):
        reference = expected[row : row + 16, col : col + 16]
        np.testing.assert_array_equal(np.isnan(chip[0]), np.isnan(reference))
        np.testing.assert_allclose(chip[0], reference, rtol=0, atol=1e-3)


def test_finer_covariate_goes_through_gdal_warper(tmp_path: Path) -> None:
    grid = albers_grid(24, 24)
    dem_path = write_dem_over(tmp_path / "fine.tif", grid, (200, 200))  # several source pixels per class pixel
    rows, cols = np.array([0, 8]), np.array([4, 8])
    with rasterio.open(dem_path) as src:
        covariate = AlignedCovariate(src, grid)
        assert covariate.vrt is not None and covariate.source_pixels_per_pixel() > 1
        chips = covariate.read_chips(rows, cols, 16, covariate.chip_lattice(rows, cols, 16))
        with aligned_vrt(src, grid) as vrt:
            expected = vrt.read(1)
    # GDAL widens the kernel per request, so a windowed read differs from a whole read by a hair (~0.02%).
    for chip, row, col in zip(chips, rows, cols, strict=True):
        np.testing.assert_allclose(chip[0], expected[row : row + 16, col : col + 16], rtol=1e-3)


def test_covariate_that_does_not_overlap_is_a_user_error(tmp_path: Path) -> None:
    grid = albers_grid(16, 16)
    far_away = write_geotiff(tmp_path / "far.tif", np.ones((4, 4), np.float32), from_origin(100, 10, 1, 1), "EPSG:4326")
    with rasterio.open(far_away) as src, pytest.raises(UserError, match=r"far\.tif does not overlap"):
        AlignedCovariate(src, grid)


def test_align_raster_bilinear_and_categorical(tmp_path: Path, class_tif: Path) -> None:
    with rasterio.open(class_tif) as reference:
        grid = RasterGrid.of(reference)
    dem_path = write_dem_over(tmp_path / "dem.tif", grid, (20, 30))
    out = align_raster(dem_path, class_tif, tmp_path / "dem_aligned.tif", tile=16)
    with rasterio.open(out) as aligned, rasterio.open(dem_path) as src, aligned_vrt(src, grid) as vrt:
        assert (aligned.crs, aligned.transform, aligned.shape) == (grid.crs, grid.transform, (40, 50))
        np.testing.assert_array_equal(aligned.read(1), vrt.read(1))
        assert not np.isnan(aligned.read(1)).any()

    codes = np.array([11, 21, 41, 82], dtype=np.uint8)[np.arange(20 * 30).reshape(20, 30) % 4]
    west, south, east, north = lonlat_bounds(grid)
    transform = from_origin(west - 0.01, north + 0.01, (east - west + 0.02) / 30, (north - south + 0.02) / 20)
    classes_ll = write_geotiff(tmp_path / "classes_ll.tif", codes, transform, "EPSG:4326", nodata=0)
    out = align_raster(classes_ll, class_tif, tmp_path / "classes_aligned.tif", categorical=True)
    with rasterio.open(out) as aligned:
        values = aligned.read(1)
        assert aligned.dtypes[0] == "uint8"
        assert set(np.unique(values)) <= {11, 21, 41, 82}  # nearest neighbour invents no codes
        assert len(np.unique(values)) == 4


def test_raster_info(class_tif: Path) -> None:
    info = raster_info(class_tif)
    assert (info["width"], info["height"], info["bands"], info["dtype"], info["nodata"]) == (50, 40, 1, "uint8", 0)
    assert info["crs"] == "EPSG:5070" and info["pixel_size"] == [30.0, 30.0]
    assert info["bounds"] == [ORIGIN[0], ORIGIN[1] - 40 * PIXEL, ORIGIN[0] + 50 * PIXEL, ORIGIN[1]]
    west, south, east, north = info["lonlat_bounds"]
    assert -108.0 < west < east < -107.7 and 40.3 < south < north < 40.5


def test_lattice_refines_until_interpolation_is_within_tolerance(tmp_path: Path, monkeypatch) -> None:
    grid = albers_grid(64, 64)
    dem_path = write_dem_over(tmp_path / "dem.tif", grid, (30, 30))
    rows, cols = np.array([0, 32]), np.array([32, 0])
    with rasterio.open(dem_path) as src:
        covariate = AlignedCovariate(src, grid)
        assert covariate.chip_lattice(rows, cols, 32).shape == (2, 2, 3, 3)  # Albers is nearly affine at 1 km
        monkeypatch.setattr(AlignedCovariate, "tolerance", 1e-9)
        lattice = covariate.chip_lattice(rows, cols, 32)
        assert lattice.shape[-1] > 3
        exact_rows, exact_cols = covariate.source_positions(np.array([32.5]), np.array([0.5]))
        assert lattice[1, :, 0, 0] == pytest.approx([exact_rows[0], exact_cols[0]])
        chips = covariate.read_chips(rows, cols, 32, lattice)
    expected = gdal_bilinear(dem_path, grid)
    np.testing.assert_allclose(chips[0, 0], expected[0:32, 32:64], rtol=0, atol=1e-3)


def test_covariate_on_the_same_grid_shifted_by_whole_pixels_is_read_exactly(tmp_path: Path) -> None:
    grid = albers_grid(40, 40)
    values = np.arange(30 * 30, dtype=np.float32).reshape(30, 30)
    values[0, 0] = -9999
    # Source pixel (0, 0) sits on reference pixel (5, 12); the source ends before the reference does.
    transform = from_origin(ORIGIN[0] + 12 * PIXEL, ORIGIN[1] - 5 * PIXEL, PIXEL, PIXEL)
    path = write_geotiff(tmp_path / "shifted.tif", values, transform, ALBERS, nodata=-9999.0)
    expected = np.full((40, 40), np.nan, dtype=np.float32)
    expected[5:35, 12:40] = values[:, :28]
    expected[5, 12] = np.nan
    rows, cols = np.array([0, 4, 24]), np.array([0, 10, 24])
    with rasterio.open(path) as src:
        covariate = AlignedCovariate(src, grid)
        assert covariate.pixel_offset == (-5, -12) and covariate.chip_lattice(rows, cols, 16) is None
        chips = covariate.read_chips(rows, cols, 16, None)
    for chip, row, col in zip(chips, rows, cols, strict=True):
        np.testing.assert_array_equal(chip[0], expected[row : row + 16, col : col + 16])
