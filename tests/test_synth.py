"""The procedural world: aligned georeferenced layers, NLCD codes, determinism, HM behaviour, realism proxies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from scipy import ndimage

from landformer.cli import main
from landformer.core.errors import UserError
from landformer.core.legend import load_legend
from landformer.synth.world import DEVELOPED, World, load_world, make_world, render_world
from landformer.synth.world import generate as synth

SIZE = 128
FOREST = (41, 42, 43)
AGRICULTURE = (81, 82)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("world") / "w", size=SIZE, seed=0)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read()


@pytest.fixture(scope="module")
def layers(world: World) -> dict[str, np.ndarray]:
    return {
        "elevation": read(world.elevation)[0],
        "landcover": read(world.landcover)[0],
        "hm": np.stack([read(path)[0] for path in world.hm]),
        "imagery": read(world.imagery),
    }


def all_files(world: World) -> list[Path]:
    return [world.elevation, world.landcover, *world.hm, world.imagery]


def test_layers_are_aligned_and_georeferenced(world: World) -> None:
    assert world.hm_years == [1990, 1995, 2000, 2005, 2010, 2015, 2020]
    assert [path.name for path in world.hm] == [f"hm_{year}.tif" for year in world.hm_years]
    transforms = set()
    for path in all_files(world):
        with rasterio.open(path) as dataset:
            assert dataset.crs.to_epsg() == 5070
            assert dataset.shape == (SIZE, SIZE)
            transforms.add(tuple(dataset.transform)[:6])
    assert len(transforms) == 1
    x_size, _, left, _, y_size, top = transforms.pop()
    assert (x_size, y_size) == (30.0, -30.0)
    # On the NLCD 30 m grid (origin -2493045, 3310005) and inside CONUS Albers' extent.
    assert (left + 2493045) % 30 == 0 and (3310005 - top) % 30 == 0
    assert -2_400_000 < left < 2_300_000 and 250_000 < top < 3_200_000


def test_dtypes_and_nodata(world: World, layers: dict[str, np.ndarray]) -> None:
    with rasterio.open(world.elevation) as dataset:
        assert dataset.dtypes[0] == "float32" and np.isnan(dataset.nodata)
    with rasterio.open(world.landcover) as dataset:
        assert dataset.dtypes[0] == "uint8" and dataset.nodata == 0
    with rasterio.open(world.imagery) as dataset:
        assert dataset.count == 3 and dataset.dtypes == ("uint8", "uint8", "uint8")
    assert np.isfinite(layers["elevation"]).all()
    assert np.ptp(layers["elevation"]) > 50.0  # there is relief


def test_landcover_codes_are_nlcd(layers: dict[str, np.ndarray]) -> None:
    legend = load_legend("nlcd")
    landcover = layers["landcover"]
    assert np.isin(landcover, legend.codes).all()
    assert (legend.encode(landcover) >= 0).all()
    present = set(np.unique(landcover).tolist())
    # A small world still holds water, forest types, farms, every developed intensity and wetlands.
    assert {11, 41, 42, 43, 81, 82, 21, 22, 23, 24} <= present
    assert present & {90, 95}


def test_same_seed_same_bytes_other_seed_other_world(world: World, tmp_path: Path) -> None:
    again = make_world(tmp_path / "again", size=SIZE, seed=0)
    for first, second in zip(all_files(world), all_files(again), strict=True):
        assert first.read_bytes() == second.read_bytes(), first.name
    other = make_world(tmp_path / "other", size=SIZE, seed=1)
    assert (read(other.landcover) != read(world.landcover)).mean() > 0.3
    assert not np.allclose(read(other.elevation), read(world.elevation))


def test_hm_grows_stays_in_range_and_is_zero_on_water(layers: dict[str, np.ndarray]) -> None:
    hm, landcover = layers["hm"], layers["landcover"]
    assert hm.dtype == np.float32
    assert hm.min() >= 0.0 and hm.max() <= 1.0
    assert (np.diff(hm, axis=0) >= 0.0).all()  # monotone non-decreasing per pixel
    assert (hm[:, landcover == 11] == 0.0).all()
    assert hm[-1].mean() > hm[0].mean() + 0.01  # it does grow
    developed = np.isin(landcover, DEVELOPED)
    forest = np.isin(landcover, FOREST)
    assert hm[-1][developed].mean() > hm[-1][forest].mean() + 0.4
    assert hm[-1][np.isin(landcover, AGRICULTURE)].mean() > hm[-1][forest].mean()


def test_landcover_agrees_with_hm_2020(layers: dict[str, np.ndarray]) -> None:
    hm, landcover = layers["hm"][-1], layers["landcover"]
    developed = np.isin(landcover, DEVELOPED)
    assert developed[hm > 0.7].all()  # high HM means developed
    assert hm[developed].min() >= 0.62
    by_class = [hm[landcover == code].mean() for code in DEVELOPED]
    assert by_class == sorted(by_class)  # intensity 21 < 22 < 23 < 24, as in HM


def test_hm_is_low_on_steep_slopes(world: World, layers: dict[str, np.ndarray]) -> None:
    slope = synth.slope_degrees(layers["elevation"].astype(np.float64), world.pixel_size)
    hm = layers["hm"][-1]
    assert hm[slope > 25].mean() < 0.5 * hm[slope < 5].mean()
    assert not np.isin(layers["landcover"][slope > 20], DEVELOPED[1:]).any()  # only roads climb steep slopes


def mean_patch_size(classes: np.ndarray) -> float:
    sizes = []
    for code in np.unique(classes):
        labels, _ = ndimage.label(classes == code)
        sizes.extend(np.bincount(labels.ravel())[1:].tolist())
    return float(np.mean(sizes))


def test_landcover_has_patches_not_noise(layers: dict[str, np.ndarray]) -> None:
    landcover = layers["landcover"]
    shuffled = np.random.default_rng(0).permutation(landcover.ravel()).reshape(landcover.shape)
    assert mean_patch_size(landcover) > 5.0 * mean_patch_size(shuffled)
    forest = np.isin(landcover, FOREST)
    labels, _ = ndimage.label(forest)
    assert np.bincount(labels.ravel())[1:].max() > 0.1 * landcover.size  # forests form large connected tracts


def test_landscape_follows_the_terrain(world: World, layers: dict[str, np.ndarray]) -> None:
    elevation, landcover = layers["elevation"], layers["landcover"]
    slope = synth.slope_degrees(elevation.astype(np.float64), world.pixel_size)
    water = landcover == 11
    assert np.median(elevation[water]) < np.median(elevation)
    assert elevation[landcover == 42].mean() > elevation[landcover == 41].mean()  # evergreen on the ridges
    assert slope[np.isin(landcover, AGRICULTURE)].mean() < slope[np.isin(landcover, FOREST)].mean()
    labels, count = ndimage.label(water, structure=np.ones((3, 3)))
    edges = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    assert count > 0 and (edges > 0).any()  # rivers leave the world


def test_imagery_is_consistent_with_landcover(layers: dict[str, np.ndarray]) -> None:
    red, green, blue = layers["imagery"].astype(np.float64)
    landcover = layers["landcover"]
    water, forest = landcover == 11, np.isin(landcover, FOREST)
    developed, farms = np.isin(landcover, DEVELOPED), np.isin(landcover, AGRICULTURE)
    brightness = (red + green + blue) / 3.0
    assert blue[water].mean() > red[water].mean()
    assert green[forest].mean() > red[forest].mean() and green[forest].mean() > blue[forest].mean()
    assert brightness[water].mean() < brightness[forest].mean() < brightness[farms].mean()
    assert brightness[developed].mean() > brightness[forest].mean()


def test_drainage_tree_reaches_the_border_and_conserves_area() -> None:
    rng = np.random.default_rng(0)
    elevation = synth.spectral_noise(rng, 48, 30.0, beta=3.0, min_wavelength=100.0) * 50.0
    drainage = synth.route_drainage(elevation, 30.0)
    n = elevation.size
    outlets = drainage.receiver < 0
    # Every pixel drains out of the world: the areas at the outlets add up to the whole world.
    assert drainage.area.ravel()[outlets].sum() == pytest.approx(n * 900.0)
    border = np.zeros(elevation.shape, dtype=bool)
    border[[0, -1], :] = True
    border[:, [0, -1]] = True
    assert border.ravel()[outlets].all()
    assert (drainage.filled >= elevation - 1e-9).all()
    flowing = ~outlets
    filled = drainage.filled.ravel()
    assert (filled[flowing] >= filled[drainage.receiver[flowing]] - 1e-9).all()  # the fill never rises downstream
    assert sorted(drainage.order.tolist()) == list(range(n))


def test_spectral_noise_and_majority_filter() -> None:
    field = synth.spectral_noise(np.random.default_rng(3), 64, 30.0, beta=2.0, min_wavelength=60.0)
    again = synth.spectral_noise(np.random.default_rng(3), 64, 30.0, beta=2.0, min_wavelength=60.0)
    np.testing.assert_array_equal(field, again)
    assert abs(field.mean()) < 1e-9 and field.std() == pytest.approx(1.0)
    classes = np.full((9, 9), 41, dtype=np.uint8)
    classes[4, 4] = 11
    classes[:, 7:] = 82
    smoothed = synth.majority_filter(classes, size=3)
    assert smoothed[4, 4] == 41  # a lone pixel disappears
    assert (smoothed[:, 8] == 82).all() and (smoothed[:, 0] == 41).all()  # edges stay put


def test_load_world_round_trip_and_errors(world: World, tmp_path: Path) -> None:
    assert load_world(world.folder) == world
    with pytest.raises(UserError, match="world description not found"):
        load_world(tmp_path)
    copy = make_world(tmp_path / "broken", size=64, seed=5)
    copy.hm[3].unlink()
    with pytest.raises(UserError, match=r"hm_2005\.tif"):
        load_world(copy.folder)
    with pytest.raises(UserError, match="at least 32"):
        make_world(tmp_path / "tiny", size=16)
    assert not (tmp_path / "tiny").exists()


def test_render_world_makes_a_small_png(world: World, tmp_path: Path) -> None:
    from PIL import Image

    png = render_world(world, tmp_path / "world.png")
    with Image.open(png) as picture:
        assert picture.width > 1000 and picture.height > 700
        colours = {tuple(c) for c in np.asarray(picture.convert("RGB")).reshape(-1, 3)[::7].tolist()}
    # Legend colours survive the palette exactly (evergreen forest #1c5f2c, pasture #dcd939).
    assert (0x1C, 0x5F, 0x2C) in colours and (0xDC, 0xD9, 0x39) in colours
    assert png.stat().st_size < 1_000_000


def test_cli_world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["synth", "world", "--out", str(out), "--size", "64", "--seed", "2"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "landcover.tif") in printed and str(out / "world.png") in printed
    assert (out / "world.png").exists() and load_world(out).seed == 2
    assert main(["synth", "world", "--out", str(tmp_path / "bad"), "--size", "8"]) == 2
    assert "at least 32" in capsys.readouterr().err
