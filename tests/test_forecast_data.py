"""Forecast data: series checks, grids, nodata, scale, windows and hold-outs, chips, normalizer, dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rasterio.transform import Affine

from landformer.core.errors import UserError
from landformer.core.raster import write_geotiff
from landformer.forecast.config import ForecastDataConfig
from landformer.forecast.data import (
    ForecastSplit,
    SeriesRasters,
    SeriesSpec,
    WindowDataset,
    cut_windows,
    detect_scale,
    eval_starts,
    load_forecast_data,
    series_valid_range,
    train_starts,
)

CRS = "EPSG:5070"
ORIGIN = (1_469_985.0, 1_849_995.0)


def grid_transform(pixel: float = 30.0, shift: tuple[float, float] = (0.0, 0.0)) -> Affine:
    return Affine(pixel, 0.0, ORIGIN[0] + shift[0], 0.0, -pixel, ORIGIN[1] + shift[1])


def growing_series(n_steps: int = 7, size: int = 64, seed: int = 0) -> np.ndarray:
    """(T, size, size) values in [0, 1] that grow over time at a per-pixel rate, like HM."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.0, 0.5, (size, size))
    rate = rng.uniform(0.0, 0.05, (size, size))
    steps = np.arange(n_steps).reshape(-1, 1, 1)
    return np.clip(base + rate * steps, 0.0, 1.0).astype(np.float32)


def write_series(
    folder: Path,
    values: np.ndarray,
    years: list[int] | None = None,
    nodata: float | None = float("nan"),
    transform: Affine | None = None,
    elevation: bool = True,
) -> tuple[list[Path], list[int], list[Path]]:
    """hm_<year>.tif per step on the NLCD Albers grid, plus an elevation covariate."""
    years = years or [1990 + 5 * step for step in range(len(values))]
    transform = transform or grid_transform()
    paths = [
        write_geotiff(folder / f"hm_{year}.tif", values[step], transform, CRS, nodata=nodata, band_names=[f"hm_{year}"])
        for step, year in enumerate(years)
    ]
    covariates = []
    if elevation:
        size = values.shape[-1]
        rows, cols = np.mgrid[0:size, 0:size]
        dem = (200.0 + 3.0 * rows + 2.0 * cols).astype(np.float32)
        covariates.append(write_geotiff(folder / "dem.tif", dem, transform, CRS, nodata=float("nan")))
    return paths, years, covariates


def small_data_config(**changes: object) -> ForecastDataConfig:
    values: dict[str, object] = {"chip_size": 16, "chip_stride": 8, "block_size": 16, "batch_size": 8}
    return ForecastDataConfig(**(values | changes))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- the series


def test_series_must_be_in_order_and_evenly_spaced(tmp_path: Path) -> None:
    paths = [tmp_path / f"hm_{year}.tif" for year in (1990, 1995, 2000)]
    assert SeriesSpec.from_lists(paths, [1990, 1995, 2000]).cadence == 5
    with pytest.raises(UserError, match=r"out of order: 1995 \(hm_2000.tif\) follows 1995"):
        SeriesSpec.from_lists(paths, [1990, 1995, 1995])
    with pytest.raises(UserError, match=r"out of order: 1990 \(hm_1995.tif\) follows 2000"):
        SeriesSpec.from_lists(paths, [2000, 1990, 1995])
    with pytest.raises(UserError, match=r"not evenly spaced \(gaps \[5, 10\]\)"):
        SeriesSpec.from_lists(paths, [1990, 2000, 2005])
    with pytest.raises(UserError, match="3 rasters but 2 years"):
        SeriesSpec.from_lists(paths, [1990, 1995])


def test_pattern_finds_files_in_year_order(tmp_path: Path) -> None:
    write_series(tmp_path, growing_series(4, 8), years=[2010, 2000, 2005, 1995], elevation=False)
    (tmp_path / "hm_notes.tif").write_text("not a year")
    spec = SeriesSpec.from_pattern(str(tmp_path / "hm_{year}.tif"))
    assert spec.years == (1995, 2000, 2005, 2010)
    assert [path.name for path in spec.paths] == ["hm_1995.tif", "hm_2000.tif", "hm_2005.tif", "hm_2010.tif"]
    with pytest.raises(UserError, match="no file matches"):
        SeriesSpec.from_pattern(str(tmp_path / "lc_{year}.tif"))
    with pytest.raises(UserError, match=r"should contain \{year\}"):
        SeriesSpec.from_pattern(str(tmp_path / "hm.tif"))


@pytest.mark.parametrize(("purpose", "needed"), [("predict", 3), ("evaluate", 4), ("train", 5)])
def test_too_short_series_is_refused_with_what_it_needs(purpose: str, needed: int) -> None:
    def spec(n: int) -> SeriesSpec:
        return SeriesSpec.from_lists([f"hm_{1990 + 5 * i}.tif" for i in range(n)], [1990 + 5 * i for i in range(n)])

    spec(needed).require_steps(3, purpose)  # type: ignore[arg-type]
    with pytest.raises(UserError, match=f"fewer than the {needed} needed to {purpose} with K = 3"):
        spec(needed - 1).require_steps(3, purpose)  # type: ignore[arg-type]


def test_scale_detection() -> None:
    assert detect_scale(1.0, "x") == 1.0
    assert detect_scale(0.3, "x") == 1.0
    assert detect_scale(9876.0, "x") == 10000.0
    assert detect_scale(25000.0, "x") == 1.0  # not HM-like: keep the values as they are
    with pytest.raises(UserError, match="no valid pixel"):
        detect_scale(float("nan"), "x")


# --------------------------------------------------------------------------------------- grids and nodata


def test_series_on_another_grid_is_aligned_or_refused(tmp_path: Path) -> None:
    values = growing_series(3, 32)
    paths, years, _ = write_series(tmp_path, values, elevation=False)

    def plane(pixel: float, size: int) -> np.ndarray:
        """A linear function of map position sampled at pixel centres: bilinear resampling keeps it exact."""
        centres = (np.arange(size) + 0.5) * pixel
        return (1e-4 * centres[None, :] + 2e-4 * centres[:, None]).astype(np.float32)

    # The last raster at 60 m instead of 30 m: aligned (bilinear) onto the first raster's 30 m grid.
    write_geotiff(paths[-1], plane(60.0, 16), grid_transform(60.0), CRS, nodata=float("nan"))
    spec = SeriesSpec.from_lists(paths, years)
    with SeriesRasters(spec, align_series=True) as rasters:
        read = rasters.read_series(0, 0, 32, 32)
        assert read.shape == (3, 1, 32, 32)
        np.testing.assert_array_equal(read[0, 0], values[0])
        np.testing.assert_allclose(read[2, 0, 1:-1, 1:-1], plane(30.0, 32)[1:-1, 1:-1], atol=1e-5)
    with pytest.raises(UserError, match="lies on another grid"):
        SeriesRasters(spec)
    far = grid_transform(30.0, shift=(1e6, 0.0))
    write_geotiff(paths[-1], values[-1], far, CRS, nodata=float("nan"))
    with pytest.raises(UserError, match="does not overlap"):
        SeriesRasters(spec, align_series=True)


def test_band_count_and_non_overlapping_covariate_are_refused(tmp_path: Path) -> None:
    values = growing_series(3, 16)
    paths, years, covariates = write_series(tmp_path, values)
    spec = SeriesSpec.from_lists(paths, years)
    far_dem = write_geotiff(tmp_path / "far_dem.tif", values[0], grid_transform(shift=(0.0, 5e5)), CRS)
    with pytest.raises(UserError, match=r"far_dem.tif does not overlap"):
        SeriesRasters(spec, [far_dem])
    write_geotiff(paths[1], np.stack([values[1], values[1]]), grid_transform(), CRS)
    with pytest.raises(UserError, match="has 2 band"):
        SeriesRasters(spec, covariates)


def test_nodata_values_read_as_missing_and_padding_outside(tmp_path: Path) -> None:
    values = growing_series(3, 16)
    raw = np.round(values * 10000).astype(np.int16)
    raw[0, 3, 4] = -1
    paths, years, _ = write_series(tmp_path, raw, nodata=-1, elevation=False)
    with SeriesRasters(SeriesSpec.from_lists(paths, years)) as rasters:
        read = rasters.read_series(-2, -3, 8, 8)  # two rows above and three columns left of the raster
        assert np.isnan(read[:, :, :2]).all() and np.isnan(read[:, :, :, :3]).all()
        inside = read[:, 0, 2:, 3:]
        expected = raw[:, :6, :5].astype(np.float32)
        expected[expected == -1] = np.nan
        np.testing.assert_array_equal(inside, expected)
        assert np.isnan(read[0, 0, 2 + 3, 3 + 4])
        assert rasters.sample_max() == raw[-1].max()


# ------------------------------------------------------------------------------------ windows, hold-outs


def test_windows_for_hm_every_five_years() -> None:
    """1990..2020 (7 steps), K = 3, H = 4: the table of forecast/data.py."""
    assert eval_starts(7, 3) == [0, 1, 2, 3]
    assert train_starts(7, 3) == [0, 1, 2]
    assert train_starts(7, 3, min_input_steps=2) == [-1, 0, 1, 2]
    steps = np.arange(7, dtype=np.float32).reshape(7, 1, 1, 1)  # value = step index
    inputs, targets = cut_windows(steps, [-1, 0, 3], 3, 4, last_target_step=5)
    assert np.isnan(inputs[0, 0]).all()  # start -1: the step before the series is missing, not zero
    np.testing.assert_array_equal(inputs[0, 1:, 0, 0, 0], [0, 1])
    np.testing.assert_array_equal(inputs[1:, :, 0, 0, 0], [[0, 1, 2], [3, 4, 5]])
    # Start -1 forecasts steps 2..5; start 0 forecasts 3..5 and the held-out step 6 is missing; start 3 has none.
    np.testing.assert_array_equal(targets[0, :, 0, 0, 0], [2, 3, 4, 5])
    np.testing.assert_array_equal(targets[1, :3, 0, 0, 0], [3, 4, 5])
    assert np.isnan(targets[1, 3]).all() and np.isnan(targets[2]).all()
    _, evaluation = cut_windows(steps, eval_starts(7, 3), 3, 4, last_target_step=6)
    assert [int(np.isfinite(evaluation[i, :, 0, 0, 0]).sum()) for i in range(4)] == [4, 3, 2, 1]
    assert evaluation[3, 0, 0, 0, 0] == 6  # the last step is an evaluation target


@pytest.mark.parametrize(("n_steps", "k", "min_inputs"), [(7, 3, 2), (7, 3, 3), (5, 2, 1), (10, 4, 2)])
def test_training_windows_never_touch_the_last_step(n_steps: int, k: int, min_inputs: int) -> None:
    steps = np.arange(n_steps, dtype=np.float32).reshape(n_steps, 1, 1, 1)
    inputs, targets = cut_windows(steps, train_starts(n_steps, k, min_inputs), k, 3, last_target_step=n_steps - 2)
    seen = np.concatenate([inputs[np.isfinite(inputs)], targets[np.isfinite(targets)]])
    assert seen.max() == n_steps - 2
    assert (np.isfinite(inputs).sum(axis=1) >= min_inputs).all()  # every window keeps min_inputs observed steps
    assert np.isfinite(targets[:, 0]).all()  # and has a first target


def test_split_blocks_are_disjoint_and_reproducible() -> None:
    split = ForecastSplit.make(70, 64, 16, 16, test_fraction=0.25, val_fraction=0.125, seed=3, source="x")
    assert split.test.shape == (5, 4)
    assert not (split.train & split.test).any() and not (split.val & split.test).any()
    assert not (split.train & split.val).any()
    # The bottom block row is 6 px high: it cannot hold a 16 px chip, so it is in no split.
    assert not (split.train | split.val | split.test)[4].any()
    assert (split.train | split.val | split.test)[:4].all()
    assert split.test.sum() == 4 and split.val.sum() == 2
    again = ForecastSplit.make(70, 64, 16, 16, test_fraction=0.25, val_fraction=0.125, seed=3, source="x")
    assert np.array_equal(again.test, split.test) and np.array_equal(again.val, split.val)
    with pytest.raises(UserError, match="need 3"):
        ForecastSplit.make(32, 16, 16, 16, test_fraction=0.25, val_fraction=0.125, seed=0, source="x")


def test_training_data_stay_in_training_blocks_and_normalizer_skips_the_last_step(tmp_path: Path) -> None:
    values = growing_series(7, 64)
    values[-1] += 5.0  # a last step unlike the others: the normalizer must not see it
    values[2, 10:14, 10:14] = np.nan  # nodata is left out too
    paths, years, covariates = write_series(tmp_path, values)
    config = small_data_config(scale=1.0)
    data = load_forecast_data(config, SeriesSpec.from_lists(paths, years), covariates)
    train_blocks = data.split.train
    for row, col in data.train.positions:
        assert train_blocks[row // 16, col // 16] and train_blocks[(row + 15) // 16, (col + 15) // 16]
    for row, col in data.val.positions:
        assert data.split.val[row // 16, col // 16]
    held_in = data.train.values[:, :6]
    assert data.normalizer.mean[0] == pytest.approx(float(np.nanmean(held_in)), rel=1e-6)
    assert data.normalizer.mean[0] < 1.0
    assert data.covariate_normalizer is not None
    assert data.covariate_normalizer.mean[0] == pytest.approx(float(data.train.covariates.mean()), rel=1e-6)
    assert data.scale == 1.0 and data.channel_names == ["hm"] and data.covariate_names == ["dem"]


def test_values_scaled_to_ten_thousand_are_detected_or_taken_from_config(tmp_path: Path) -> None:
    values = growing_series(6, 48)
    paths, years, covariates = write_series(tmp_path, np.round(values * 10000).astype(np.uint16), nodata=65535)
    spec = SeriesSpec.from_lists(paths, years)
    detected = load_forecast_data(small_data_config(), spec, covariates)
    assert detected.scale == 10000.0
    assert np.nanmax(detected.train.values) <= 1.0
    given = load_forecast_data(small_data_config(scale=100.0), spec, covariates)
    assert given.scale == 100.0
    np.testing.assert_allclose(given.train.values, detected.train.values * 100.0, rtol=1e-6)


def test_window_dataset_masks_and_augments_consistently(tmp_path: Path) -> None:
    values = growing_series(7, 48)
    paths, years, covariates = write_series(tmp_path, values)
    data = load_forecast_data(small_data_config(), SeriesSpec.from_lists(paths, years), covariates)
    starts = train_starts(7, 3, 2)
    plain = WindowDataset(data.train, starts, 3, 4, 5, data.normalizer, data.covariate_normalizer)
    turned = WindowDataset(data.train, starts, 3, 4, 5, data.normalizer, data.covariate_normalizer, augment=True)
    assert len(plain) == len(data.train) * 4
    first = plain[0]  # chip 0, start -1: the first input is missing, all 4 targets are inside the hold-out
    assert first["series_mask"][0].sum() == 0 and first["series_mask"][1:].all()
    assert first["target_mask"].all()
    assert plain[1]["target_mask"][:3].all() and not plain[1]["target_mask"][3].any()  # start 0: 2020 masked
    raw = data.normalizer.transform(data.train.values[0, 0])
    np.testing.assert_allclose(first["series"][1].numpy(), raw, rtol=1e-6)
    torch.manual_seed(0)
    for item in range(len(plain)):
        a, b = plain[item], turned[item]
        # The same one of the 8 symmetries for every tensor: find it from the covariates, check the rest.
        matches = [
            (turns, flip)
            for turns in range(4)
            for flip in (False, True)
            if torch.equal(_symmetry(a["covariates"], turns, flip), b["covariates"])
        ]
        assert matches
        turns, flip = matches[0]
        for name in ("series", "series_mask", "target", "target_mask"):
            assert torch.equal(_symmetry(a[name], turns, flip), b[name])


def _symmetry(tensor: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    tensor = torch.rot90(tensor, turns, dims=(-2, -1))
    return tensor.flip(-1) if flip else tensor


def test_valid_range_is_0_to_1_for_hm_and_open_otherwise() -> None:
    hm = np.array([[0.0, 0.3, np.nan], [1.0, 0.5, 0.2]], dtype=np.float32)
    assert series_valid_range(None, hm) == (0.0, 1.0)
    assert series_valid_range(None, hm * 3) is None  # not HM-like: nothing is known about its range
    assert series_valid_range(None, hm - 0.5) is None
    assert series_valid_range([-1.0, 2.5], hm) == (-1.0, 2.5)  # the recipe's data.valid_range wins
