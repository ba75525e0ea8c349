"""The packaged real-data loaders: georeferencing checked against known places and against the packages' own
lookups."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import rasterio

from landformer.cli import main
from landformer.core.errors import UserError
from landformer.core.legend import load_legend
from landformer.synth import packaged


def value_at(path: Path, lon: float, lat: float) -> float:
    from rasterio.windows import Window

    with rasterio.open(path) as dataset:
        row, col = dataset.index(lon, lat)
        return dataset.read(1, window=Window(col, row, 1, 1))[0, 0].item()


def check_wgs84(path: Path) -> rasterio.DatasetReader:
    dataset = rasterio.open(path)
    assert dataset.crs.to_epsg() == 4326
    assert dataset.nodata is not None
    assert dataset.transform.a > 0 and dataset.transform.e < 0  # north-up
    return dataset


def test_jacksboro_is_north_up_where_the_airport_is(tmp_path: Path) -> None:
    path = packaged.jacksboro_dem(tmp_path / "jacksboro.tif")
    with check_wgs84(path) as dataset:
        assert dataset.shape == (344, 403)
        left, bottom, right, top = dataset.bounds
        assert (left, bottom, right, top) == pytest.approx((-84.41375, 36.44625, -84.0779167, 36.7329167), abs=1e-6)
        elevation = dataset.read(1)
        assert elevation.dtype == np.float32 and np.isnan(dataset.nodata)
    # McCreary County Airport (36.6954 N, 84.3915 W) lies at 418 m; a south-up reading puts it on a ~900 m ridge.
    assert abs(value_at(path, -84.3915, 36.695389) - 418.0) < 60.0


def test_topobathy_is_sea_in_the_west_and_land_in_the_east(tmp_path: Path) -> None:
    path = packaged.topobathy_dem(tmp_path / "topobathy.tif")
    with check_wgs84(path) as dataset:
        assert dataset.shape == (91, 120)
        assert dataset.bounds.left == pytest.approx(-126.0, abs=0.01)
        assert dataset.bounds.right == pytest.approx(-122.0, abs=0.01)
        assert dataset.bounds.bottom == pytest.approx(48.0, abs=0.02)
        assert dataset.bounds.top == pytest.approx(50.0, abs=0.02)
        topo = dataset.read(1)
    assert topo.min() == pytest.approx(-1437.0)
    # The Pacific off Vancouver Island at 49 N is below sea level, the Fraser valley east of it above.
    assert value_at(path, -125.9, 49.0) < 0.0
    assert value_at(path, -122.1, 49.0) > 0.0
    # The deepest sea lies in the south-west corner of the source (its first row is the southern one).
    row, col = np.unravel_index(np.argmin(topo), topo.shape)
    assert row > topo.shape[0] / 2 and col < topo.shape[1] / 4


def test_pvlib_altitude_matches_pvlib_lookup(tmp_path: Path) -> None:
    from pvlib.location import lookup_altitude

    path = packaged.pvlib_altitude(tmp_path / "altitude.tif")
    with check_wgs84(path) as dataset:
        assert dataset.shape == (2160, 4320)
    for lat, lon in [(39.74, -104.99), (27.7, 85.3), (-16.5, -68.15), (48.85, 2.35), (-26.2, 28.05)]:
        assert value_at(path, lon, lat) == lookup_altitude(lat, lon)
    assert np.isnan(value_at(path, -40.0, 30.0))  # mid-Atlantic: no data

    window = packaged.pvlib_altitude(tmp_path / "europe.tif", bbox=(-10, 40, 10, 55))
    with rasterio.open(window) as part, rasterio.open(path) as whole:
        assert part.shape == (180, 240)
        assert part.bounds == pytest.approx((-10.0, 40.0, 10.0, 55.0))
        row, col = whole.index(-10 + 1e-6, 55 - 1e-6)
        np.testing.assert_array_equal(part.read(1), whole.read(1)[row : row + 180, col : col + 240])


def test_koppen_geiger_phoenix_is_arid(tmp_path: Path) -> None:
    path = packaged.koppen_geiger(tmp_path / "kg.tif", bbox=(-113.0, 33.0, -111.0, 34.0))
    with check_wgs84(path) as dataset:
        assert dataset.shape == (120, 240)
        assert dataset.bounds == pytest.approx((-113.0, 33.0, -111.0, 34.0))
    assert value_at(path, -112.07, 33.45) == 2  # Phoenix: arid
    legend = load_legend(tmp_path / "kg.legend.json")
    assert legend.codes == [1, 2, 3, 4, 5] and legend.names[1] == "Arid"
    tropical = packaged.koppen_geiger(tmp_path / "sg.tif", bbox=(103.0, 1.0, 104.5, 2.0))
    assert value_at(tropical, 103.85, 1.29) == 1  # Singapore: tropical


def test_large_boxes_are_refused_unless_asked(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="allow_large"):
        packaged.koppen_geiger(tmp_path / "kg.tif", bbox=(-120, 20, -80, 50))
    with pytest.raises(UserError, match="allow_large"):
        packaged.land_mask(tmp_path / "mask.tif", bbox=(-10, 0, 10, 40))
    assert not (tmp_path / "kg.tif").exists()
    assert packaged.check_bbox((-120, 20, -80, 50), allow_large=True) == (-120.0, 20.0, -80.0, 50.0)


@pytest.mark.parametrize(
    "bbox",
    [None, (1, 2, 3), (10, 0, 5, 5), (0, 10, 5, 5), (-190, 0, 0, 5), (0, 0, 5, 95), ("a", 0, 1, 1), (0, 0, np.nan, 1)],
)
def test_bad_boxes_are_user_errors(bbox: object) -> None:
    with pytest.raises(UserError, match="bbox"):
        packaged.check_bbox(bbox)  # type: ignore[arg-type]


def test_land_mask_knows_land_from_sea(tmp_path: Path) -> None:
    path = packaged.land_mask(tmp_path / "mask.tif", bbox=(-25.0, 40.0, 5.0, 55.0))
    with check_wgs84(path) as dataset:
        assert dataset.shape == (1800, 3600)  # 30 arc-seconds, snapped exactly to the box
        assert dataset.bounds == pytest.approx((-25.0, 40.0, 5.0, 55.0))
        mask = dataset.read(1)
    assert set(np.unique(mask)) == {0, 1}
    assert value_at(path, 2.35, 48.85) == 1  # Paris
    assert value_at(path, -0.13, 51.51) == 1  # London
    assert value_at(path, -3.7, 40.42) == 1  # Madrid
    assert value_at(path, -20.0, 45.0) == 0  # the Atlantic
    assert value_at(path, -4.0, 45.5) == 0  # the Bay of Biscay
    assert 0.2 < mask.mean() < 0.6  # this box is mostly ocean


def test_countries_by_continent_and_iso(tmp_path: Path) -> None:
    path = packaged.natural_earth_countries(tmp_path / "continents.tif", bbox=(-10, 35, 30, 60), resolution=0.1)
    with check_wgs84(path) as dataset:
        assert dataset.shape == (250, 400)
        assert dataset.bounds == pytest.approx((-10.0, 35.0, 30.0, 60.0))
    continents = load_legend(tmp_path / "continents.legend.json")
    code_of = dict(zip(continents.names, continents.codes, strict=True))
    assert value_at(path, 2.35, 48.85) == code_of["Europe"]  # Paris
    assert value_at(path, 3.0, 36.7) == code_of["Africa"]  # Algiers
    assert value_at(path, -8.0, 45.0) == 0  # the sea

    iso = packaged.natural_earth_countries(tmp_path / "iso.tif", bbox=(-10, 35, 30, 60), attribute="iso_a3")
    names = dict(
        zip(
            load_legend(tmp_path / "iso.legend.json").codes,
            load_legend(iso.with_name("iso.legend.json")).names,
            strict=True,
        )
    )
    assert names[value_at(iso, 13.4, 52.5)] == "DEU"  # Berlin
    assert names[value_at(iso, 12.5, 41.9)] == "ITA"  # Rome

    whole = packaged.natural_earth_countries(tmp_path / "world.tif", resolution=1.0)
    with rasterio.open(whole) as dataset:
        assert dataset.shape == (180, 360)
        # Codes come from the whole file, so a box and the globe agree.
        assert load_legend(tmp_path / "world.legend.json").codes == continents.codes
    with pytest.raises(UserError, match="attribute"):
        packaged.natural_earth_countries(tmp_path / "x.tif", attribute="pop_est")
    with pytest.raises(UserError, match="resolution"):
        packaged.natural_earth_countries(tmp_path / "x.tif", resolution=0.0)


def test_wkb_polygons_reads_polygons_and_multipolygons() -> None:
    square = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (0.0, 0.0)]
    hole = [(0.2, 0.2), (0.4, 0.2), (0.4, 0.4), (0.2, 0.2)]

    def polygon(rings: list[list[tuple[float, float]]], order: str = "<") -> bytes:
        body = struct.pack(order + "I", len(rings))
        for ring in rings:
            body += struct.pack(order + "I", len(ring)) + b"".join(struct.pack(order + "dd", *p) for p in ring)
        return bytes([1 if order == "<" else 0]) + struct.pack(order + "I", 3) + body

    single = packaged.wkb_polygons(polygon([square, hole], ">"))
    assert single == [{"type": "Polygon", "coordinates": [square, hole]}]
    multi = b"\x01" + struct.pack("<II", 6, 2) + polygon([square]) + polygon([hole])
    assert [p["coordinates"] for p in packaged.wkb_polygons(multi)] == [[square], [hole]]
    with pytest.raises(ValueError, match="geometry type 1"):
        packaged.wkb_polygons(b"\x01" + struct.pack("<Idd", 1, 0.0, 0.0))


def test_cli_packaged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kg.tif"
    assert main(["synth", "packaged", "koppen", "--out", str(out), "--bbox", "-113", "33", "-111", "34"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out), str(tmp_path / "kg.legend.json")]
    assert main(["synth", "packaged", "koppen", "--out", str(tmp_path / "none.tif")]) == 2
    assert "bbox is required" in capsys.readouterr().err
    assert main(["synth", "packaged", "jacksboro", "--out", str(tmp_path / "j.tif")]) == 0
    assert (tmp_path / "j.tif").exists()


# --- IGBP land cover (MODIS MCD12C1 2019) ---------------------------------------------------------------------


@pytest.fixture
def igbp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LANDFORMER_CACHE", str(cache))
    return cache


def test_igbp_legend_has_water_as_a_class_and_fill_as_nodata() -> None:
    legend = load_legend("igbp")
    assert legend.codes == list(range(17)) and legend.nodata_codes == (255,)
    assert legend.names[0] == "Water Bodies" and legend.names[13] == "Urban and Built-up Lands"
    assert legend.classes[0].color == "#1c0dff" and legend.classes[16].color == "#f9ffa4"
    assert legend.group_indices("developed") == [13]
    np.testing.assert_array_equal(legend.encode(np.array([0, 16, 255])), [0, 16, -1])


def test_igbp_places_grid_crs_and_legend(tmp_path: Path, igbp_cache: Path) -> None:
    path = packaged.igbp_landcover(tmp_path / "europe.tif", bbox=(-10.0, 40.0, 10.0, 55.0))
    with check_wgs84(path) as dataset:
        assert dataset.shape == (300, 400)  # 0.05 degree
        assert dataset.bounds == pytest.approx((-10.0, 40.0, 10.0, 55.0))
        assert dataset.nodata == 255 and dataset.dtypes[0] == "uint8"
        assert "Clarke 1866" in dataset.tags()["crs_note"]
    assert value_at(path, 2.35, 48.86) == 13  # Paris: urban and built-up
    assert value_at(path, -0.12, 51.5) == 13  # London
    assert value_at(path, -5.0, 45.0) == 0  # the Bay of Biscay: water bodies
    assert load_legend(tmp_path / "europe.legend.json") == load_legend("igbp")
    world = packaged.igbp_landcover(tmp_path / "world.tif", bbox=(-180, -90, 180, 90), allow_large=True)
    for lon, lat, code in [(10.0, 24.0, 16), (-62.0, -4.0, 2), (-40.0, 75.0, 15), (-30.0, 30.0, 0), (-93.5, 42.0, 12)]:
        assert value_at(world, lon, lat) == code  # Sahara barren, Amazon forest, Greenland ice, Atlantic, Iowa crops
    with pytest.raises(UserError, match="allow_large"):
        packaged.igbp_landcover(tmp_path / "big.tif", bbox=(-120, 20, -80, 50))


def test_igbp_tiled_copy_is_cached_once(igbp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = packaged.igbp_tiled()
    assert first.parent == igbp_cache and [p.name for p in igbp_cache.iterdir()] == [first.name]
    with rasterio.open(first) as cached, rasterio.open(packaged.package_file(*packaged.IGBP_SOURCE)) as source:
        assert cached.block_shapes == [(256, 256)] and source.block_shapes == [(1, 7200)]
        assert cached.crs.to_epsg() == 4326 and cached.transform == source.transform
        np.testing.assert_array_equal(cached.read(1), source.read(1))
    stamp = first.stat().st_mtime_ns

    def no_write(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached copy should be reused, not written again")

    monkeypatch.setattr("landformer.core.raster.write_geotiff", no_write)
    assert packaged.igbp_tiled() == first and first.stat().st_mtime_ns == stamp


def test_igbp_cache_that_cannot_be_written_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LANDFORMER_CACHE", str(blocker / "cache"))
    with pytest.raises(UserError, match="LANDFORMER_CACHE"):
        packaged.igbp_tiled()


def test_cli_packaged_igbp(tmp_path: Path, igbp_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "alps.tif"
    assert main(["synth", "packaged", "igbp", "--out", str(out), "--bbox", "6", "45", "11", "48"]) == 0
    assert capsys.readouterr().out.split() == [str(out), str(tmp_path / "alps.legend.json")]
    with rasterio.open(out) as dataset:
        assert dataset.shape == (60, 100)
    assert main(["synth", "packaged", "igbp", "--out", str(tmp_path / "none.tif")]) == 2
    assert "bbox is required" in capsys.readouterr().err


def test_igbp_chips_are_land_dominated_and_split_by_blocks(tmp_path: Path, igbp_cache: Path) -> None:
    from landformer.core.chips import load_chips

    folder = tmp_path / "chips"
    out = packaged.igbp_chips(folder / "c.npz", chip_size=8, stride=8, seed=1, bbox=(-10, 35, 20, 60), max_water=0.25)
    chips = load_chips(out)
    assert chips.legend == load_legend("igbp") and chips.metadata["crs"] == "EPSG:4326"
    everything = np.concatenate([chips.train_data, chips.test_data])[:, 0]
    assert (everything == 0).mean(axis=(1, 2)).max() <= 0.25
    counts = chips.metadata["counts"]
    # A 600 x 500 px box: every 8 px grid position lies inside one 64 px block, so every one is read.
    assert counts["windows_read"] == (600 // 8) * (500 // 8)
    assert counts["train"] + counts["test"] + counts["dropped_class_fraction"] == counts["windows_read"]
    assert chips.metadata["split"]["block_size"] == 64 and chips.metadata["split"]["seed"] == 1
    names = ["c.json", "c.npz", "c_igbp.legend.json", "c_igbp.tif", "c_igbp.tif.aux.xml"]  # aux.xml: class names
    assert sorted(p.name for p in folder.iterdir()) == names
    with pytest.raises(UserError, match="chip size must be at least 1"):
        packaged.igbp_chips(tmp_path / "bad" / "c.npz", chip_size=0)
    assert not (tmp_path / "bad").exists()
