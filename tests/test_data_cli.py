"""``landformer data chips|info|align`` through ``landformer.cli.main``: outputs on success, one line + exit 2 on
bad input, nothing left behind."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from landformer.cli import main
from landformer.core.chips import ChipConfig, load_chips
from landformer.core.config import config_flags
from landformer.core.raster import RasterGrid, lonlat_bounds, write_geotiff

ALBERS = "EPSG:5070"
TRANSFORM = from_origin(-1_000_000.0, 2_000_000.0, 30.0, 30.0)
NLCD_CODES = np.array([11, 21, 41, 42, 52, 71, 81, 82], dtype=np.uint8)


@pytest.fixture
def nlcd(tmp_path: Path) -> Path:
    codes = NLCD_CODES[np.random.default_rng(0).integers(0, len(NLCD_CODES), (64, 64))]
    return write_geotiff(tmp_path / "nlcd.tif", codes, TRANSFORM, ALBERS, nodata=0)


@pytest.fixture
def dem(tmp_path: Path, nlcd: Path) -> Path:
    with rasterio.open(nlcd) as dataset:
        west, south, east, north = lonlat_bounds(RasterGrid.of(dataset))
    values = np.linspace(200, 900, 20 * 30, dtype=np.float32).reshape(20, 30)
    transform = from_origin(west - 0.01, north + 0.01, (east - west + 0.02) / 30, (north - south + 0.02) / 20)
    return write_geotiff(tmp_path / "dem.tif", values, transform, "EPSG:4326", nodata=-9999.0)


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("landformer: error: ") and "Traceback" not in err
    return err


def test_chips_writes_the_file_and_reports_counts(tmp_path: Path, nlcd: Path, dem: Path, capsys) -> None:
    out = tmp_path / "chips.npz"
    argv = ["data", "chips", str(nlcd), "--out", str(out), "--covariate", str(dem), "--chip-size", "8"]
    code = main([*argv, "--count", "40", "--block-size", "16", "--test-fraction", "0.25", "--seed", "3"])
    assert code == 0
    chips = load_chips(out)
    printed = capsys.readouterr().out
    assert f"wrote {out} and {out.with_suffix('.json')}" in printed
    n_train, n_test = len(chips.train_data), len(chips.test_data)
    assert n_train + n_test == 40
    assert f"{n_train} train / {n_test} test chips of 2x8x8 float32" in printed
    assert chips.channel_names == ["landcover", "dem"]
    assert chips.metadata["split"] == {
        "block_size": 16,
        "test_fraction": 0.25,
        "seed": 3,
        "n_blocks": 16,
        "n_test_blocks": 4,
    }


def test_chips_from_a_config_file_with_flags_on_top(tmp_path: Path, nlcd: Path, capsys) -> None:
    config = tmp_path / "chips.yaml"
    config.write_text(f"class_raster: {nlcd}\nchip_size: 8\ncount: 12\ntest_fraction: 0.0\nlegend: nlcd\n")
    out = tmp_path / "from_yaml.npz"
    assert main(["data", "chips", "--config", str(config), "--out", str(out)]) == 0
    assert len(load_chips(out).train_data) == 12
    # A grid stride on the command line replaces the file's count.
    assert main(["data", "chips", "--config", str(config), "--out", str(out), "--stride", "16"]) == 0
    chips = load_chips(out)
    assert len(chips.train_data) == 16 and chips.metadata["sampling"]["mode"] == "grid"
    capsys.readouterr()
    config.write_text("chip_size: 8\n")
    assert main(["data", "chips", "--config", str(config), "--out", str(out)]) == 2
    assert "give the class raster" in one_line_error(capsys)
    config.write_text(f"class_raster: {nlcd}\nchip_sise: 8\n")
    assert main(["data", "chips", "--config", str(config), "--out", str(out)]) == 2
    assert "unknown key 'chip_sise' (did you mean 'chip_size'?)" in one_line_error(capsys)


def test_help_defaults_match_chip_config() -> None:
    defaults = {field.name: field.default for field in dataclasses.fields(ChipConfig)}
    named = {flag.key: re.search(r"\(default: ([^)]*)\)", flag.help) for flag in config_flags(ChipConfig)}
    shown = {name: match.group(1) for name, match in named.items() if match and name != "block_size"}
    assert shown == {name: str(defaults[name]) for name in shown}
    assert set(shown) == {"legend", "chip_size", "max_nodata", "test_fraction", "seed", "unknown"}


def _text_file(path: Path) -> Path:
    path.write_text("not a raster")
    return path


def _no_crs(path: Path) -> Path:
    profile = {"driver": "GTiff", "height": 16, "width": 16, "count": 1, "dtype": "uint8", "transform": TRANSFORM}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((16, 16), 11, np.uint8), 1)
    return path


def _with_unknown_codes(path: Path) -> Path:
    codes = np.full((64, 64), 41, dtype=np.uint8)
    codes[5, 5], codes[40, 60] = 13, 99
    return write_geotiff(path, codes, TRANSFORM, ALBERS, nodata=0)


def _far_dem(dem: Path) -> Path:
    return write_geotiff(dem.with_name("far.tif"), np.ones((4, 4), np.float32), from_origin(100, 10, 1, 1), "EPSG:4326")


BAD_INPUTS = {
    "missing file": (lambda tmp, nlcd, dem: (tmp / "missing.tif", []), "raster not found: "),
    "not a raster": (lambda tmp, nlcd, dem: (_text_file(tmp / "notes.tif"), []), "is not a raster GDAL can open"),
    "no CRS": (lambda tmp, nlcd, dem: (_no_crs(tmp / "nocrs.tif"), []), "has no CRS; pass --assume-crs"),
    "unknown codes": (
        lambda tmp, nlcd, dem: (_with_unknown_codes(tmp / "odd.tif"), []),
        "class code(s) 13, 99 are not in legend",
    ),
    "chip too big": (
        lambda tmp, nlcd, dem: (nlcd, ["--chip-size", "128", "--block-size", "128"]),
        "chip size 128 is larger than raster",
    ),
    "covariate elsewhere": (
        lambda tmp, nlcd, dem: (nlcd, ["--covariate", str(_far_dem(dem))]),
        "does not overlap class raster",
    ),
    "unknown legend": (lambda tmp, nlcd, dem: (nlcd, ["--legend", "nonsense"]), "neither a built-in legend"),
    "bad fraction": (lambda tmp, nlcd, dem: (nlcd, ["--test-fraction", "2"]), "test fraction must lie in [0, 1]"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, nlcd: Path, dem: Path, capsys, case: str) -> None:
    make_argv, message = BAD_INPUTS[case]
    raster, extra = make_argv(tmp_path, nlcd, dem)
    out = tmp_path / "out" / "chips.npz"
    argv = ["data", "chips", str(raster), "--out", str(out), "--chip-size", "8", "--stride", "8", "--block-size", "16"]
    assert main([*argv, *extra]) == 2
    assert message in one_line_error(capsys)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_assume_crs_and_unknown_nodata_flags(tmp_path: Path, capsys) -> None:
    raster = _no_crs(tmp_path / "nocrs.tif")
    out = tmp_path / "c.npz"
    argv = ["data", "chips", str(raster), "--out", str(out), "--chip-size", "8", "--stride", "8"]
    assert main([*argv, "--assume-crs", ALBERS, "--test-fraction", "0"]) == 0
    assert load_chips(out).metadata["crs"] == "EPSG:5070"
    odd = _with_unknown_codes(tmp_path / "odd.tif")
    argv = ["data", "chips", str(odd), "--out", str(out), "--chip-size", "8", "--stride", "8", "--test-fraction", "0"]
    assert main([*argv, "--unknown", "nodata", "--max-nodata", "0.5"]) == 0
    chips = load_chips(out)
    assert (chips.train_data == -1).sum() == 2 and len(chips.train_data) == 64


def test_count_and_stride_together_are_refused(tmp_path: Path, nlcd: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "chips", str(nlcd), "--out", str(tmp_path / "c.npz"), "--count", "5", "--stride", "8"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_info_on_a_raster_and_a_chip_file(tmp_path: Path, nlcd: Path, capsys) -> None:
    assert main(["data", "info", str(nlcd)]) == 0
    printed = capsys.readouterr().out
    assert "64 x 64 pixels, 1 band(s), uint8" in printed
    assert "crs:      EPSG:5070" in printed and "nodata:   0.0" in printed
    assert "-1e+06, 1.99808e+06, -998080, 2e+06" in printed  # left, bottom, right, top
    assert "lon/lat:  -107." in printed

    out = tmp_path / "c.npz"
    assert (
        main(["data", "chips", str(nlcd), "--out", str(out), "--chip-size", "8", "--stride", "8", "--block-size", "16"])
        == 0
    )
    capsys.readouterr()
    assert main(["data", "info", str(out)]) == 0
    printed = capsys.readouterr().out
    chips = load_chips(out)
    assert f"train:    {chips.train_data.shape} int16" in printed
    assert "legend:   nlcd, 20 classes" in printed and "channels: landcover" in printed

    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    assert main(["data", "info", str(broken)]) == 2
    assert "is corrupt" in one_line_error(capsys)


def test_align_writes_the_dem_on_the_class_grid(tmp_path: Path, nlcd: Path, dem: Path, capsys) -> None:
    out = tmp_path / "dem_on_nlcd.tif"
    assert main(["data", "align", str(dem), "--like", str(nlcd), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with rasterio.open(out) as aligned, rasterio.open(nlcd) as reference:
        assert (aligned.crs, aligned.transform, aligned.shape) == (reference.crs, reference.transform, reference.shape)
        values = aligned.read(1)
    assert values.dtype == np.float32 and not np.isnan(values).any()
    assert 200 <= values.min() < values.max() <= 900  # bilinear stays within the source's range


def histogram_rows(printed: str) -> dict[str, list[str]]:
    """Class histogram lines as ``{name: [train share, test share]}``."""
    rows = {}
    for line in printed.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[-1].endswith("%") and parts[-2].endswith("%"):
            rows[" ".join(parts[:-2])] = parts[-2:]
    return rows


def test_chips_class_filter_counts_and_histogram(tmp_path: Path, capsys) -> None:
    codes = np.full((16, 16), 41, dtype=np.uint8)
    codes[:8, :8] = 11  # chip A: all water, dropped by 11=0.5
    codes[:8, 8:12] = 11  # chip B: half water, kept (0.5 is not above 0.5)
    codes[8:10, :8] = 21  # chip C: forest with 16 px developed
    codes[8:, 8:] = 82  # chip D: crops with 8 px nodata
    codes[15, 8:] = 0
    raster = write_geotiff(tmp_path / "four.tif", codes, TRANSFORM, ALBERS, nodata=0)
    out = tmp_path / "four.npz"
    argv = ["data", "chips", str(raster), "--out", str(out), "--chip-size", "8", "--stride", "8"]
    assert main([*argv, "--test-fraction", "0", "--max-nodata", "0.2", "--max-class-fraction", "11=0.5"]) == 0
    printed = capsys.readouterr().out
    assert "3 train / 0 test chips of 1x8x8 int16 (channels: landcover; 0 dropped for nodata, 1 for" in printed
    rows = histogram_rows(printed)
    # 192 pixels: water 32, forest 32 + 48, developed 16, crops 56, nodata 8.
    assert rows == {
        "11 Open Water": ["16.67%", "0.00%"],
        "21 Developed, Open Space": ["8.33%", "0.00%"],
        "41 Deciduous Forest": ["41.67%", "0.00%"],
        "82 Cultivated Crops": ["29.17%", "0.00%"],
        "nodata": ["4.17%", "0.00%"],
    }
    assert "(16 of the 20 classes of legend 'nlcd' are in neither split)" in printed
    assert load_chips(out).metadata["sampling"]["max_class_fraction"] == {"11": 0.5}

    for bad in ("11", "water=0.5", "11=half"):
        assert main([*argv, "--max-class-fraction", bad]) == 2
        assert f"--max-class-fraction '{bad}' should be CODE=FRACTION" in one_line_error(capsys)
    assert main([*argv, "--max-class-fraction", "11=2"]) == 2
    assert "max class fraction of code 11 must lie in [0, 1], got 2.0" in one_line_error(capsys)


def test_chips_reports_duplicates_and_warns_about_classes_missing_from_a_split(tmp_path: Path, capsys, caplog) -> None:
    patches = np.array([41, 42, 82], dtype=np.uint8)[np.random.default_rng(1).integers(0, 3, (16, 16))]
    codes = np.kron(patches, np.ones((2, 2), dtype=np.uint8))
    codes[:16, :16] = 11  # a lake filling one of four 16 px blocks: train or test lacks it
    raster = write_geotiff(tmp_path / "lake.tif", codes, TRANSFORM, ALBERS, nodata=0)
    out = tmp_path / "lake.npz"
    argv = ["data", "chips", str(raster), "--out", str(out), "--chip-size", "4", "--count", "50"]
    with caplog.at_level(logging.WARNING):
        assert main([*argv, "--block-size", "16", "--test-fraction", "0.25"]) == 0
    chips = load_chips(out)
    counts = chips.metadata["counts"]
    # Every chip inside the lake is the same all-water chip: one is kept, the others are dropped and replaced.
    assert len(chips.train_data) + len(chips.test_data) == 50
    lake = [(chip[0] == 0).all() for chip in np.concatenate([chips.train_data, chips.test_data])]
    assert sum(lake) == 1 and counts["dropped_duplicates"] > 0
    assert counts["windows_read"] == 50 + counts["dropped_duplicates"]
    assert f"0 dropped for nodata, {counts['dropped_duplicates']} duplicates)" in capsys.readouterr().out
    lake_split = "train" if (chips.train_data[:, 0] == 0).any() else "test"
    other = "test" if lake_split == "train" else "train"
    assert caplog.messages == [
        f"{out}: train and test chips hold different classes; missing from {other}: Open Water (11)"
    ]


def test_info_prints_the_class_histogram_of_a_hand_made_chip_file(tmp_path: Path, capsys) -> None:
    from landformer.core.chips import write_chips

    legend = {"name": "toy", "nodata": [0], "classes": [{"code": c, "name": f"c{c}"} for c in (1, 2, 3, 4)]}
    train = np.array([[[[0, 0], [1, -1]]], [[[0, 0], [0, 2]]]], dtype=np.int16)
    test = np.array([[[[1, 1], [1, 3]]]], dtype=np.int16)
    coords = np.array([[10.0, 50.0], [11.0, 50.0]])
    out = write_chips(tmp_path / "hand.npz", train, test, coords, coords[:1], {"legend": legend})
    assert main(["data", "info", str(out)]) == 0
    assert histogram_rows(capsys.readouterr().out) == {
        "1 c1": ["62.50%", "0.00%"],
        "2 c2": ["12.50%", "75.00%"],
        "3 c3": ["12.50%", "0.00%"],
        "4 c4": ["0.00%", "25.00%"],
        "nodata": ["12.50%", "0.00%"],
    }
