"""core.viz: exact colours of class maps, shaded relief, grids, PNG/GIF round trips, panels."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import matplotlib
import numpy as np
import pytest

from landformer.core import viz
from landformer.core.errors import UserError
from landformer.core.legend import Legend, LegendClass, load_legend


@pytest.fixture
def legend() -> Legend:
    classes = (
        LegendClass(1, "water", "#3060c0"),
        LegendClass(2, "forest", "#207020"),
        LegendClass(3, "town", "#d02020"),
        LegendClass(4, "ice", "#e0f0ff"),
    )
    return Legend("test", classes, nodata_codes=(0,))


def class_map() -> np.ndarray:
    """Classes 0..2 only (3 = ice is absent), one nodata pixel."""
    indices = np.array([[0, 0, 1, 1, 2], [0, 1, 1, 2, 2], [2, 2, 0, 0, -1]], dtype=np.int16)
    return indices


def colours_in(image: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in pixel) for pixel in image[..., :3].reshape(-1, 3)}


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp" in p.name]


def test_class_rgb_uses_palette_and_white_nodata(legend: Legend) -> None:
    rgb = viz.class_rgb(class_map(), legend)
    assert rgb.shape == (3, 5, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (0x30, 0x60, 0xC0)
    assert tuple(rgb[0, 2]) == (0x20, 0x70, 0x20)
    assert tuple(rgb[2, 0]) == (0xD0, 0x20, 0x20)
    assert tuple(rgb[2, 4]) == viz.NODATA_RGB


def test_save_class_png_plain_is_exactly_the_upscaled_map(tmp_path: Path, legend: Legend) -> None:
    path = viz.save_class_png(tmp_path / "map.png", class_map(), legend, show_legend=False, scale=3)
    image = iio.imread(path)
    assert image.shape == (9, 15, 3)
    expected = np.repeat(np.repeat(viz.class_rgb(class_map(), legend), 3, axis=0), 3, axis=1)
    assert np.array_equal(image, expected)
    assert no_temporaries(tmp_path)


def test_save_class_png_with_legend_keeps_map_pixels_and_lists_present_classes(tmp_path: Path, legend: Legend) -> None:
    path = viz.save_class_png(tmp_path / "map.png", class_map(), legend, title="a map", scale=10)
    image = iio.imread(path)[..., :3]
    top, left = viz.TITLE_PX + viz.MARGIN_PX, viz.MARGIN_PX
    crop = image[top : top + 30, left : left + 50]
    expected = np.repeat(np.repeat(viz.class_rgb(class_map(), legend), 10, axis=0), 10, axis=1)
    assert np.array_equal(crop, expected)
    # Legend swatches sit to the right of the map: present classes appear there, absent "ice" nowhere.
    right = image[:, left + 50 :]
    palette = [tuple(int(v) for v in colour) for colour in legend.palette()]
    assert {palette[0], palette[1], palette[2]} <= colours_in(right)
    assert palette[3] not in colours_in(image)
    assert image.shape[1] > left + 50 + 40  # room for the labels


def test_save_class_png_auto_scale_and_errors(tmp_path: Path, legend: Legend) -> None:
    indices = np.zeros((64, 32), dtype=np.int64)
    image = iio.imread(viz.save_class_png(tmp_path / "auto.png", indices, legend, show_legend=False))
    assert image.shape[:2] == (512, 256)  # scale 8 keeps the longer side at 512
    with pytest.raises(UserError, match=r"class indices \[4, 7\] are not in legend 'test'"):
        viz.save_class_png(tmp_path / "bad.png", np.array([[0, 4], [7, 1]]), legend)
    with pytest.raises(UserError, match="integer array of class indices"):
        viz.save_class_png(tmp_path / "bad.png", np.zeros((2, 2)), legend)
    assert not (tmp_path / "bad.png").exists()


def test_hillshade_flat_and_sunlit_slopes() -> None:
    flat = viz.hillshade(np.full((5, 5), 100.0))
    assert np.allclose(flat, np.sin(np.deg2rad(45.0)))
    rows, cols = np.mgrid[0:6, 0:6].astype(float)
    rises_to_southeast = rows + cols  # faces north-west, towards the default sun at azimuth 315
    rises_to_northwest = -(rows + cols)
    assert viz.hillshade(rises_to_southeast).mean() > flat.mean() > viz.hillshade(rises_to_northwest).mean()
    # Lambert: z = row + col rises 1 m per pixel eastwards and southwards, so the unit normal in
    # (east, north, up) is (-1, 1, 1) / sqrt(3); the sun at azimuth 315, altitude 45 is (-1/2, 1/2, 1/sqrt(2)).
    azimuth, altitude = np.deg2rad(315.0), np.deg2rad(45.0)
    sun = np.array([np.sin(azimuth) * np.cos(altitude), np.cos(azimuth) * np.cos(altitude), np.sin(altitude)])
    assert viz.hillshade(rises_to_southeast)[3, 3] == pytest.approx(np.dot([-1, 1, 1], sun) / np.sqrt(3))


def test_elevation_rgb_colours_and_shading() -> None:
    z = np.full((4, 4), 250.0)
    z[0, 0] = np.nan
    rgb = viz.elevation_rgb(z, pixel_size=30.0, vmin=0.0, vmax=1000.0)
    # Flat ground: shade = sin(45 deg) everywhere, colour = terrain(0.25) darkened by 1 - 0.6 + 0.6 * shade.
    expected = np.array(matplotlib.colormaps["terrain"](0.25)[:3]) * (0.4 + 0.6 * np.sin(np.pi / 4))
    assert np.array_equal(rgb[2, 2], np.round(expected * 255).astype(np.uint8))
    assert tuple(rgb[0, 0]) == (128, 128, 128)  # NaN is grey
    ramp = viz.elevation_rgb(np.tile(np.linspace(0, 900, 10), (6, 1)), pixel_size=1e9)  # huge pixels: no relief
    lowest = np.round(np.array(matplotlib.colormaps["terrain"](0.0)[:3]) * (0.4 + 0.6 * np.sin(np.pi / 4)) * 255)
    assert np.array_equal(ramp[3, 0], lowest.astype(np.uint8))


def test_save_elevation_png_draws_shaded_relief_and_colourbar(tmp_path: Path) -> None:
    rows, cols = np.mgrid[0:20, 0:30]
    z = 100.0 + 20.0 * np.sin(cols / 4.0) + 5.0 * rows
    path = viz.save_elevation_png(tmp_path / "dem.png", z, pixel_size=30.0, title="DEM", scale=4)
    image = iio.imread(path)[..., :3]
    top, left = viz.TITLE_PX + viz.MARGIN_PX, viz.MARGIN_PX
    expected = np.repeat(np.repeat(viz.elevation_rgb(z, 30.0), 4, axis=0), 4, axis=1)
    assert np.array_equal(image[top : top + 80, left : left + 120], expected)
    assert image.shape[1] == viz.MARGIN_PX + 120 + viz.COLORBAR_PX
    assert viz.elevation_range(np.full((3, 3), 7.0)) == (7.0, 8.0)
    assert no_temporaries(tmp_path)


def test_image_grid_layout_and_padding() -> None:
    red = np.zeros((2, 3, 3), dtype=np.uint8)
    red[..., 0] = 255
    grey = np.full((2, 3), 50, dtype=np.uint8)
    small = np.zeros((1, 1, 3), dtype=np.uint8)
    grid = viz.image_grid([red, grey, small], nrows=2, ncols=2, pad=1, pad_value=200)
    assert grid.shape == (2 * (2 + 1) + 1, 2 * (3 + 1) + 1, 3)
    assert np.array_equal(grid[1:3, 1:4], red)
    assert np.array_equal(grid[1:3, 5:8], np.full((2, 3, 3), 50))
    assert tuple(grid[4, 2]) == (0, 0, 0)  # the 1x1 image centred in its 2x3 cell: row 4 + 0, column 1 + 1
    assert (grid[0] == 200).all() and (grid[:, 0] == 200).all() and (grid[:, 4] == 200).all()
    assert (grid[4:6, 5:8] == 200).all()  # the spare fourth cell stays blank
    assert viz.image_grid([red] * 5).shape == (2 * 4 + 2, 3 * 5 + 2, 3)  # near-square: 2 rows x 3 columns
    with pytest.raises(UserError, match="do not fit"):
        viz.image_grid([red] * 5, nrows=2, ncols=2)
    with pytest.raises(UserError, match="uint8"):
        viz.image_grid([red.astype(float)])


def test_save_png_round_trip(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    assert np.array_equal(iio.imread(viz.save_png(tmp_path / "x.png", rgb)), rgb)
    with pytest.raises(UserError, match=r"shape \(7, 9, 2\)"):
        viz.save_png(tmp_path / "y.png", rgb[..., :2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_write_gif_frames_and_timing(tmp_path: Path, legend: Legend) -> None:
    frames = [viz.class_rgb(np.roll(class_map(), shift, axis=1), legend) for shift in range(4)]
    path = viz.write_gif(tmp_path / "anim.gif", frames, fps=5, loop=0)
    back = iio.imread(path, index=None)
    assert back.shape[0] == 4
    assert np.array_equal(back[0][..., :3], frames[0])
    assert np.array_equal(back[3][..., :3], frames[3])
    meta = iio.immeta(path, index=0)
    assert meta["duration"] == 200 and meta["loop"] == 0
    with pytest.raises(UserError, match="frames differ in size"):
        viz.write_gif(tmp_path / "bad.gif", [frames[0], frames[0][:2]])
    with pytest.raises(UserError, match="no frames"):
        viz.write_gif(tmp_path / "bad.gif", [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anim.gif"]


def test_save_panel_colours_classes_and_mixes_rgb(tmp_path: Path, legend: Legend) -> None:
    indices = class_map()
    photo = np.zeros((3, 5, 3), dtype=np.uint8)
    photo[..., 1] = 77
    path = viz.save_panel(tmp_path / "panel.png", [indices, photo], ["truth", "photo"], legend=legend)
    image = iio.imread(path)[..., :3]
    palette = [tuple(int(v) for v in colour) for colour in legend.palette()]
    found = colours_in(image)
    assert {palette[0], palette[1], palette[2], (0, 77, 0)} <= found
    assert palette[3] not in found
    with pytest.raises(UserError, match="2 images but 1 titles"):
        viz.save_panel(tmp_path / "bad.png", [indices, photo], ["one"], legend=legend)
    with pytest.raises(UserError, match="uint8"):
        viz.save_panel(tmp_path / "bad.png", [indices], ["no legend, not an image"])
    assert not (tmp_path / "bad.png").exists()


def test_nlcd_map_png_has_only_nlcd_colours_in_map_area(tmp_path: Path) -> None:
    nlcd = load_legend("nlcd")
    indices = np.random.default_rng(1).integers(0, nlcd.n_classes, size=(16, 16)).astype(np.int16)
    image = iio.imread(viz.save_class_png(tmp_path / "nlcd.png", indices, nlcd, title="NLCD", scale=2))[..., :3]
    top, left = viz.TITLE_PX + viz.MARGIN_PX, viz.MARGIN_PX
    map_colours = colours_in(image[top : top + 32, left : left + 32])
    assert map_colours == {tuple(int(v) for v in nlcd.palette()[i]) for i in np.unique(indices)}


def test_save_titled_rows_draws_each_strip_unresampled_under_its_title(tmp_path: Path, legend: Legend) -> None:
    rng = np.random.default_rng(0)
    strips = [rng.integers(0, 255, (12, 40, 3), dtype=np.uint8), rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)]
    present = np.array([0, 2])
    path = viz.save_titled_rows(tmp_path / "rows.png", [("first", strips[0]), ("second", strips[1])], legend, present)
    image = iio.imread(path)[..., :3]
    top = viz.MARGIN_PX + viz.TITLE_PX
    left = viz.MARGIN_PX
    np.testing.assert_array_equal(image[top : top + 12, left : left + 40], strips[0])
    top += 12 + viz.MARGIN_PX + viz.TITLE_PX
    np.testing.assert_array_equal(image[top : top + 20, left : left + 30], strips[1])
    below = image[top + 20 :]
    palette = [tuple(int(v) for v in colour) for colour in legend.palette()]
    assert {palette[0], palette[2]} <= colours_in(below) and palette[1] not in colours_in(below)  # only those present
    with pytest.raises(UserError, match="no rows"):
        viz.save_titled_rows(tmp_path / "bad.png", [])
