"""GIS-ready GeoTIFFs: class rasters carry the legend's colour table and category names, bands their names and
units, and outputs over 512 px are Cloud-Optimized GeoTIFFs with overviews (GDAL's COG checks, through
:func:`~landformer.core.raster.cog_problems`). Category names are read back through GDAL's own C API, as QGIS
reads them."""

from __future__ import annotations

import ctypes
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window

from landformer.core.legend import Legend, load_legend
from landformer.core.raster import (
    COG_MIN_SIDE,
    class_dtype,
    cog_problems,
    geotiff_writer,
    iter_windows,
    pam_path,
    raster_info,
    write_geotiff,
)

ALBERS = "EPSG:5070"
GRID = from_origin(-1_000_000.0, 2_000_000.0, 30.0, 30.0)


def gdal_category_names(path: Path) -> list[str]:
    """Band 1's category names as GDAL reports them (GDALGetRasterCategoryNames of rasterio's own libgdal)."""
    libraries = list(Path(rasterio.__file__).parent.parent.glob("rasterio.libs/libgdal*"))
    gdal = ctypes.CDLL(str(libraries[0])) if libraries else ctypes.CDLL(None)
    gdal.GDALOpen.restype = ctypes.c_void_p
    gdal.GDALOpen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    gdal.GDALGetGeoTransform.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_double)]
    gdal.GDALGetRasterBand.restype = ctypes.c_void_p
    gdal.GDALGetRasterBand.argtypes = [ctypes.c_void_p, ctypes.c_int]
    gdal.GDALGetRasterCategoryNames.restype = ctypes.POINTER(ctypes.c_char_p)
    gdal.GDALGetRasterCategoryNames.argtypes = [ctypes.c_void_p]
    gdal.CSLCount.argtypes = [ctypes.c_void_p]
    gdal.GDALClose.argtypes = [ctypes.c_void_p]
    dataset = gdal.GDALOpen(str(path).encode(), 0)
    assert dataset, f"GDAL cannot open {path}"
    try:
        # GDAL's GeoTIFF driver reads the .aux.xml sidecar with the georeferencing, as a GIS asks for it first.
        gdal.GDALGetGeoTransform(dataset, (ctypes.c_double * 6)())
        names = gdal.GDALGetRasterCategoryNames(gdal.GDALGetRasterBand(dataset, 1))
        count = gdal.CSLCount(ctypes.cast(names, ctypes.c_void_p)) if names else 0
        return [names[i].decode() for i in range(count)]
    finally:
        gdal.GDALClose(dataset)


def nlcd_map(height: int, width: int, seed: int = 0) -> np.ndarray:
    legend = load_legend("nlcd")
    codes = np.array([0, *legend.codes], dtype=np.uint8)  # 0: nodata
    return np.random.default_rng(seed).choice(codes, (height, width))


# ------------------------------------------------------------------------------------------------ class rasters


def test_a_class_raster_carries_the_legend_colours_and_names(tmp_path: Path) -> None:
    legend = load_legend("nlcd")
    path = write_geotiff(tmp_path / "nlcd.tif", nlcd_map(64, 48), GRID, ALBERS, nodata=0, legend=legend)
    with rasterio.open(path) as dataset:
        assert dataset.colorinterp == (ColorInterp.palette,)
        table = dataset.colormap(1)
    for code, (red, green, blue) in zip(legend.codes, legend.palette().tolist(), strict=True):
        assert table[code] == (red, green, blue, 255)
    assert table[0][3] == 0, "nodata is transparent"
    names = gdal_category_names(path)
    assert len(names) == max(legend.codes) + 1
    assert {code: names[code] for code in legend.codes} == dict(zip(legend.codes, legend.names, strict=True))
    assert all(names[code] == "" for code in range(len(names)) if code not in legend.codes)


def test_codes_are_stored_in_the_smallest_type_with_a_colour_table(tmp_path: Path) -> None:
    wide = Legend.from_dict({"name": "wide", "classes": [{"code": 7, "name": "a"}, {"code": 300, "name": "b"}]})
    assert class_dtype(load_legend("corine")) == np.uint8
    assert class_dtype(wide) == np.uint16
    path = write_geotiff(tmp_path / "wide.tif", np.array([[7, 300], [0, 7]], np.int32), GRID, ALBERS, 0, legend=wide)
    with rasterio.open(path) as dataset:
        assert dataset.dtypes == ("uint16",)
        np.testing.assert_array_equal(dataset.read(1), [[7, 300], [0, 7]])
        assert dataset.colormap(1)[300] == (*wide.palette()[1].tolist(), 255)
    negative = Legend.from_dict({"name": "neg", "nodata": [-1], "classes": [{"code": 1, "name": "a"}]})
    with pytest.raises(ValueError, match=r"outside 0\.\.65535"):
        class_dtype(negative)


def test_band_names_and_units_are_written(tmp_path: Path) -> None:
    values = np.random.default_rng(0).random((2, 16, 16), dtype=np.float32)
    path = write_geotiff(
        tmp_path / "dem.tif", values, GRID, ALBERS, band_names=["elevation", "slope"], units=["m", "deg"]
    )
    with rasterio.open(path) as dataset:
        assert dataset.descriptions == ("elevation", "slope")
        assert dataset.units == ("m", "deg")


def test_a_new_file_replaces_an_earlier_sidecar(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "map.tif", nlcd_map(8, 8), GRID, ALBERS, 0, legend=load_legend("nlcd"))
    assert pam_path(path).is_file()
    write_geotiff(path, np.zeros((8, 8), np.float32), GRID, ALBERS)
    assert not pam_path(path).exists(), "category names of the earlier class map would label the new file"
    assert gdal_category_names(path) == []


def test_a_failed_class_raster_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "map.tif"
    with (
        pytest.raises(RuntimeError),
        geotiff_writer(path, 600, 600, 1, np.uint8, GRID, ALBERS, 0, legend=load_legend("nlcd")),
    ):
        raise RuntimeError("model failed half way")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ COGs


def test_a_large_class_raster_is_a_valid_cog_with_nearest_overviews(tmp_path: Path) -> None:
    legend = load_legend("nlcd")
    values = nlcd_map(700, 1100)
    path = write_geotiff(tmp_path / "big.tif", values, GRID, ALBERS, 0, band_names=["nlcd"], legend=legend)
    assert cog_problems(path) == []
    with rasterio.open(path) as dataset:
        assert dataset.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"  # GDAL's own mark of a COG it wrote
        assert dataset.overviews(1) == [2, 4, 8]  # halved until the smallest level fits one 256 px block
        assert dataset.block_shapes[0] == (256, 256)
        assert dataset.descriptions == ("nlcd",)
        assert dataset.colormap(1)[41] == (*legend.palette()[legend.codes.index(41)].tolist(), 255)
        np.testing.assert_array_equal(dataset.read(1), values)
        smallest = dataset.read(1, out_shape=(88, 138))
    assert set(np.unique(smallest)) <= {0, *legend.codes}, "overviews hold codes, never a mean of codes"
    assert gdal_category_names(path)[41] == "Deciduous Forest"
    info = raster_info(path)
    assert (info["cog_problems"], info["overviews"], info["band_names"]) == ([], [2, 4, 8], ["nlcd"])


def test_a_large_raster_written_window_by_window_is_a_valid_cog(tmp_path: Path) -> None:
    height, width = 520, 600
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    elevation = 100 + rows + 0.5 * cols
    elevation[:5, :5] = np.nan
    path = tmp_path / "dem.tif"
    with geotiff_writer(path, width, height, 1, np.float32, GRID, ALBERS, np.nan, ["elevation"], units=["m"]) as dst:
        for window in iter_windows(height, width, 200):
            dst.write(elevation[window.toslices()][None], window=window)
    assert cog_problems(path) == []
    with rasterio.open(path) as dataset:
        assert dataset.overviews(1) == [2, 4]
        assert dataset.units == ("m",)
        np.testing.assert_array_equal(dataset.read(1), elevation)
        coarse = dataset.read(1, out_shape=(130, 150))
    # Average overviews of a plane are the plane at the coarse pixel centres (up to float32 rounding).
    r, c = np.mgrid[0:130, 0:150]
    expected = 100 + (4 * r + 1.5) + 0.5 * (4 * c + 1.5)
    np.testing.assert_allclose(coarse[2:, 2:], expected[2:, 2:], rtol=1e-5)


def test_outputs_up_to_512_px_stay_plain_geotiffs(tmp_path: Path) -> None:
    path = write_geotiff(tmp_path / "small.tif", np.zeros((COG_MIN_SIDE, COG_MIN_SIDE), np.uint8), GRID, ALBERS)
    with rasterio.open(path) as dataset:
        assert dataset.overviews(1) == []
        assert "LAYOUT" not in dataset.tags(ns="IMAGE_STRUCTURE")
    assert raster_info(path)["cog_problems"] == []  # small enough to need neither tiles nor overviews


def test_cog_problems_names_what_a_plain_tiff_lacks(tmp_path: Path) -> None:
    path = tmp_path / "plain.tif"
    profile = {"driver": "GTiff", "width": 1100, "height": 700, "count": 1, "dtype": "uint8", "crs": ALBERS}
    with rasterio.open(path, "w", transform=GRID, **profile) as dst:
        dst.write(nlcd_map(700, 1100), 1)
    problems = cog_problems(path)
    assert "it is larger than 512 px but not tiled" in problems
    assert "it is larger than 512 px but has no internal overviews" in problems
    with rasterio.open(path, "r+") as dataset:
        dataset.build_overviews([2, 4])  # appended after the image: the order a COG forbids
    assert "the blocks of the full resolution come before those of overview 0" in cog_problems(path)


# ------------------------------------------------------------------------------------------------ call sites


def test_world_land_cover_is_coloured_and_its_elevation_in_metres(tmp_path: Path) -> None:
    from landformer.synth.world import make_world

    world = make_world(tmp_path / "world", size=48)
    legend = load_legend("nlcd")
    for path in (world.landcover, *world.landcover_series):
        with rasterio.open(path) as dataset:
            assert dataset.colormap(1)[11] == (*legend.palette()[0].tolist(), 255)
    assert ET.parse(pam_path(world.landcover)).getroot().find("PAMRasterBand/CategoryNames") is not None
    with rasterio.open(world.elevation) as dataset:
        assert dataset.units == ("m",)


def test_packaged_climate_classes_carry_the_legend_written_beside_them(tmp_path: Path) -> None:
    from landformer.synth.packaged import koppen_geiger, legend_path

    path = koppen_geiger(tmp_path / "kg.tif", (-10.0, 35.0, 20.0, 60.0))
    legend = load_legend(legend_path(path))
    with rasterio.open(path) as dataset:
        table = dataset.colormap(1)
    assert [table[code][:3] for code in legend.codes] == [tuple(rgb) for rgb in legend.palette().tolist()]
    assert [gdal_category_names(path)[code] for code in legend.codes] == legend.names


def test_landcover_samples_carry_the_legend_on_their_window(tmp_path: Path) -> None:
    """A landcover sample GeoTIFF sits on its window of the reference raster and carries the legend."""
    from landformer.landcover.apps.sampling import Conditioning, _write_geotiffs

    legend = load_legend("nlcd")
    reference = write_geotiff(tmp_path / "ref.tif", nlcd_map(40, 40), GRID, ALBERS, 0, legend=legend)
    conditioning = Conditioning(None, None, "test", reference=reference, windows=[(8, 16)])
    maps = np.random.default_rng(0).integers(0, legend.n_classes, (1, 16, 16))
    (path,) = _write_geotiffs(maps, legend, conditioning, 16, tmp_path / "out")
    with rasterio.open(path) as sample, rasterio.open(reference) as ref:
        assert sample.transform == ref.window_transform(Window(16, 8, 16, 16))
        np.testing.assert_array_equal(sample.read(1), legend.decode(maps[0]))
        assert sample.colormap(1)[82] == (*legend.palette()[legend.codes.index(82)].tolist(), 255)
    assert gdal_category_names(path)[82] == "Cultivated Crops"
