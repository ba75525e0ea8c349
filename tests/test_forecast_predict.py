"""Whole-raster prediction: blending weights, exact tiling, block-by-block writes, GeoTIFF outputs, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window
from test_forecast_data import CRS, grid_transform, growing_series, write_series

from landformer.core.errors import UserError
from landformer.core.normalize import ZScore
from landformer.core.raster import write_geotiff
from landformer.forecast.config import QUANTILES_95
from landformer.forecast.data import SeriesRasters, SeriesSpec
from landformer.forecast.export import load, model_config_dict, save
from landformer.forecast.model import ConvLSTMForecaster, ForecastModelConfig
from landformer.forecast.predict import blend_weights, predict_series, tiled_forecast


def export_random_model(
    folder: Path,
    kernel_size: int = 1,
    quantiles: tuple[float, ...] = QUANTILES_95,
    n_covariates: int = 1,
    valid_range: list[float] | None = None,
    head_bias: float | None = None,
    weight_scale: float = 1.0,
) -> Path:
    """An untrained, seeded model exported like a trained one (its weights are random, its plumbing real).
    ``head_bias`` sets every head output's bias: a large one makes each horizon step far up. ``weight_scale``
    multiplies every weight: a large one lets an input change forecasts measurably up to the receptive field's
    edge."""
    torch.manual_seed(0)
    config = ForecastModelConfig(
        n_covariate_channels=n_covariates, hidden_channels=(4,), kernel_size=kernel_size, quantiles=quantiles
    )
    model = ConvLSTMForecaster(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(weight_scale)
        if head_bias is not None:
            model.head.bias.fill_(head_bias)
    meta = {
        "model_config": model_config_dict(config),
        "normalizer": ZScore((0.3,), (0.2,)).to_dict(),
        "covariate_normalizer": ZScore((300.0,), (50.0,)).to_dict() if n_covariates else None,
        "channel_names": ["hm"],
        "covariate_names": ["dem"][:n_covariates],
        "years": [1990, 1995, 2000, 2005, 2010],
        "cadence": 5,
        "scale": 1.0,
        "valid_range": valid_range,
    }
    weights, _ = save(folder, model.state_dict(), meta)
    return weights


def test_blend_weights_cross_fade_to_one() -> None:
    weights = blend_weights(16, 8)
    assert weights.shape == (24,)
    np.testing.assert_allclose(weights[16:] + weights[:8], 1.0, rtol=1e-6)  # neighbours share 8 px
    assert (weights[8:16] == 1).all() and (weights > 0).all()
    assert np.all(np.diff(weights[:8]) > 0)
    assert (blend_weights(16, 0) == 1).all()


class ArrayRaster:
    """read/write callbacks over in-memory arrays; records every write window."""

    def __init__(self, inputs: np.ndarray, covariates: np.ndarray, n_bands: int) -> None:
        self.inputs, self.covariates = inputs, covariates
        self.height, self.width = inputs.shape[-2:]
        self.out = np.full((n_bands, self.height, self.width), np.nan, dtype=np.float32)
        self.written = np.zeros((self.height, self.width), dtype=np.int64)
        self.windows: list[Window] = []

    def read(self, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        def padded(array: np.ndarray) -> np.ndarray:
            out = np.full((*array.shape[:-2], height, width), np.nan, dtype=np.float32)
            top, left = max(row, 0), max(col, 0)
            bottom, right = min(row + height, self.height), min(col + width, self.width)
            out[..., top - row : bottom - row, left - col : right - col] = array[..., top:bottom, left:right]
            return out

        return padded(self.inputs), padded(self.covariates)

    def write(self, window: Window, values: np.ndarray) -> None:
        rows, cols = (
            slice(window.row_off, window.row_off + window.height),
            slice(window.col_off, window.col_off + window.width),
        )
        self.out[:, rows, cols] = values
        self.written[rows, cols] += 1
        self.windows.append(window)


def pixelwise(inputs: np.ndarray, covariates: np.ndarray) -> np.ndarray:
    """A 'model' without spatial context: two bands per pixel from its own inputs only."""
    last = inputs[:, -1, 0]
    return np.stack([last**2 + covariates[:, 0], 2 * inputs[:, 0, 0] - last], axis=1)


@pytest.mark.parametrize(
    ("tile", "overlap", "panel_width", "context"),
    [(16, 8, 1000, None), (16, 0, 1000, None), (16, 8, 16, None), (16, 8, 16, 0), (32, 4, 64, 3), (24, 16, 48, 0)],
)
def test_tiling_reproduces_a_pixelwise_model_exactly(
    tile: int, overlap: int, panel_width: int, context: int | None
) -> None:
    rng = np.random.default_rng(0)
    inputs = rng.uniform(0, 1, (3, 1, 70, 53)).astype(np.float32)
    covariates = rng.uniform(0, 1, (1, 70, 53)).astype(np.float32)
    raster = ArrayRaster(inputs, covariates, n_bands=2)
    counts = tiled_forecast(
        pixelwise,
        raster.read,
        raster.write,
        70,
        53,
        2,
        tile=tile,
        overlap=overlap,
        batch_size=3,
        panel_width=panel_width,
        context=context,
    )
    assert (raster.written == 1).all()  # every pixel written exactly once
    np.testing.assert_allclose(raster.out, pixelwise(inputs[None], covariates[None])[0], rtol=1e-5, atol=1e-6)
    for window in raster.windows:  # writes start on the tile grid: whole GeoTIFF blocks when tile is a multiple
        assert window.row_off % tile == 0 and window.col_off % tile == 0
    n_rows, n_cols = -(-70 // tile), -(-53 // tile)
    n_panels = -(-n_cols // (panel_width // tile))
    side = tile + overlap
    # Each panel edge inside the raster forecasts one strip per tile row: the overlap's half plus the context.
    strip = side if context is None else context + overlap // 2
    assert counts["tiles"] == n_rows * n_cols
    assert counts["strips"] == (n_rows * 2 * (n_panels - 1) if overlap else 0)
    assert counts["tile_pixels"] == counts["tiles"] * side**2 + counts["strips"] * side * strip


def test_overlapping_tiles_are_cross_faded_linearly() -> None:
    """Each tile forecasts one constant (its left edge): across the shared strip the result ramps linearly."""
    columns = np.broadcast_to(np.arange(64, dtype=np.float32), (1, 1, 16, 64)).copy()
    raster = ArrayRaster(columns, np.zeros((0, 16, 64), np.float32), n_bands=1)

    def tile_constant(inputs: np.ndarray, covariates: np.ndarray) -> np.ndarray:
        left = np.nanmin(inputs[:, 0, 0], axis=(1, 2))  # the first column inside the raster
        return np.broadcast_to(left[:, None, None, None], (len(inputs), 1, *inputs.shape[-2:])).copy()

    tiled_forecast(tile_constant, raster.read, raster.write, 16, 64, 1, tile=32, overlap=8, batch_size=2)
    row = raster.out[0, 0]
    # Tile 0 reads columns -4..35 (constant 0 inside the raster), tile 1 reads 28..67 (constant 28).
    np.testing.assert_array_equal(row[:28], 0.0)
    np.testing.assert_array_equal(row[36:], 28.0)
    ramp = row[28:36]
    np.testing.assert_allclose(ramp, 28.0 * (np.arange(8) + 0.5) / 8, rtol=1e-6)


def test_predict_writes_one_geotiff_per_horizon_equal_to_the_untiled_forecast(tmp_path: Path) -> None:
    model = export_random_model(tmp_path / "model")
    values = growing_series(5, 80)[:, :, :72]
    values[:, 5:9, 5:9] = np.nan  # no input at all there: nodata out
    values[:3, 20, 20] = np.nan  # two inputs missing: still forecast from the third
    paths, years, covariates = write_series(tmp_path, values)
    spec = SeriesSpec.from_lists(paths, years)
    result = predict_series(
        model,
        spec,
        covariates,
        tmp_path / "out",
        tile=32,
        overlap=8,
        batch_size=4,
        panel_width=64,
        progress=False,
        precision="fp32",
    )
    assert [Path(p).name for p in result["files"]] == [f"forecast_{y}.tif" for y in (2015, 2020, 2025, 2030)]
    assert [Path(p).name for p in result["inputs"]] == ["hm_2000.tif", "hm_2005.tif", "hm_2010.tif"]
    forecaster = load(model)
    with SeriesRasters(SeriesSpec(spec.paths[-3:], spec.years[-3:]), covariates) as rasters:
        whole = forecaster.forecast(
            rasters.read_series(0, 0, 80, 72)[None], rasters.read_covariates(0, 0, 80, 72)[None]
        )
    for horizon, path in enumerate(result["files"]):
        with rasterio.open(path) as dataset:
            assert dataset.crs.to_string() == CRS and dataset.transform == grid_transform()
            assert (dataset.height, dataset.width, dataset.count) == (80, 72, 3)
            assert dataset.descriptions == ("hm", "hm_q0.025", "hm_q0.975")
            assert np.isnan(dataset.nodata)
            data = dataset.read()
        expected = np.stack([whole.point[0, horizon, 0], whole.lower[0, horizon, 0], whole.upper[0, horizon, 0]])
        np.testing.assert_allclose(data, expected, rtol=1e-5, atol=1e-6)
        assert np.isnan(data[:, 5:9, 5:9]).all() and np.isfinite(data[:, 20, 20]).all()
        assert np.isfinite(data).sum() == 3 * (80 * 72 - 16)
        assert (data[1] < data[0]).all(where=np.isfinite(data[0])) and (data[0] < data[2]).all(
            where=np.isfinite(data[0])
        )


def test_predict_keeps_integer_nodata_and_writes_in_the_input_scale(tmp_path: Path) -> None:
    model = export_random_model(tmp_path / "model", quantiles=())
    values = growing_series(3, 40)
    raw = np.round(values * 10000).astype(np.uint16)
    raw[:, 0, :4] = 65535
    paths, years, covariates = write_series(tmp_path, raw, nodata=65535)
    spec = SeriesSpec.from_lists(paths, years)
    result = predict_series(
        model, spec, covariates, tmp_path / "out", tile=16, overlap=4, progress=False, precision="fp32"
    )
    assert result["scale"] == 10000.0 and result["nodata"] == 65535
    forecaster = load(model)
    with SeriesRasters(spec, covariates) as rasters:
        series = np.where(raw == 65535, np.nan, raw / np.float32(10000)).astype(np.float32)
        expected = forecaster.forecast(series[None, :, None], rasters.read_covariates(0, 0, 40, 40)[None]).point
    with rasterio.open(result["files"][0]) as dataset:
        assert dataset.nodata == 65535 and dataset.count == 1
        data = dataset.read(1)
    assert (data[0, :4] == 65535).all() and (data[data != 65535] < 20000).all()
    np.testing.assert_allclose(data[1:], expected[0, 0, 0, 1:] * 10000, rtol=1e-5, atol=1e-3)


def test_channels_and_cadence_that_differ_from_training_are_refused(tmp_path: Path) -> None:
    model = export_random_model(tmp_path / "model")
    values = growing_series(3, 16)
    paths, years, covariates = write_series(tmp_path, values)
    spec = SeriesSpec.from_lists(paths, years)
    with pytest.raises(UserError, match=r"trained with 1 covariate channel\(s\) \(dem\) but 0 were given"):
        predict_series(model, spec, [], tmp_path / "out", progress=False)
    two = write_geotiff(tmp_path / "dem2.tif", np.stack([values[0], values[0]]), grid_transform(), CRS)
    with pytest.raises(UserError, match=r"but 2 were given \(dem2_1, dem2_2\)"):
        predict_series(model, spec, [two], tmp_path / "out", progress=False)
    for index, path in enumerate(paths):
        write_geotiff(path, np.stack([values[index]] * 2), grid_transform(), CRS)
    with pytest.raises(UserError, match=r"forecasts 1 series channel\(s\) \(hm\), but .*hm_1990.tif has 2 band"):
        predict_series(model, spec, covariates, tmp_path / "out", progress=False)
    decadal = SeriesSpec.from_lists(paths, [1990, 2000, 2010])
    with pytest.raises(UserError, match=r"steps 5 years at a time, but the series hm_1990\.tif\.\. is 10 years apart"):
        predict_series(model, decadal, covariates, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_exported_model_loads_without_pickle_and_bad_files_are_user_errors(tmp_path: Path) -> None:
    weights = export_random_model(tmp_path / "model", kernel_size=3)
    run_folder = load(tmp_path / "model")
    single_file = load(weights)
    x = torch.rand(1, 3, 1, 8, 8)
    mask = torch.ones_like(x, dtype=torch.bool)
    cov = torch.rand(1, 1, 8, 8)
    assert torch.equal(run_folder.model(x, mask, cov), single_file.model(x, mask, cov))
    assert run_folder.channel_names == ["hm"] and run_folder.cadence == 5 and run_folder.quantiles == QUANTILES_95
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load(garbage)
    with pytest.raises(UserError, match=r"holds no model\.safetensors"):
        load(tmp_path)


def test_forecasts_and_interval_bounds_are_clipped_to_the_valid_range(tmp_path: Path) -> None:
    """HM near 1 and a head that steps up 0.2 per horizon: unclipped forecasts pass 1, clipped ones are exactly
    np.clip of them (point and both bounds, NaN where nothing was observed kept)."""
    inputs = np.full((1, 3, 1, 12, 12), 0.95, dtype=np.float32)
    inputs[0, :, 0, :, :6] = 0.02  # half the tile near 0, so the lower bound also meets the floor
    inputs[0, :, 0, 0, 0] = np.nan
    covariates = np.full((1, 1, 12, 12), 300.0, dtype=np.float32)
    free = load(export_random_model(tmp_path / "free", head_bias=1.0)).forecast(inputs, covariates)
    clipped_model = export_random_model(tmp_path / "clipped", valid_range=[0.0, 1.0], head_bias=1.0)
    forecaster = load(clipped_model)
    assert forecaster.valid_range == (0.0, 1.0)
    clipped = forecaster.forecast(inputs, covariates)
    assert np.nanmax(free.upper) > 1.0 and np.nanmax(free.point) > 1.0 and np.nanmin(free.lower) < 0.0
    for name in ("point", "lower", "upper"):
        unclipped, values = getattr(free, name), getattr(clipped, name)
        np.testing.assert_array_equal(values, np.clip(unclipped, 0.0, 1.0))
        assert np.isnan(values[0, :, 0, 0, 0]).all() and np.isfinite(values[0, :, 0, 1:]).all()


def test_receptive_radius_bounds_how_far_an_input_changes_the_forecast() -> None:
    """One layer, 3x3 kernels, K = 3 and H = 4: seven convolutions in a chain, so the oldest input reaches the
    last horizon exactly 7 pixels away and no further. Weights are scaled up 5x so the change stays above float32
    rounding that far out."""
    torch.manual_seed(0)
    config = ForecastModelConfig(n_covariate_channels=0, hidden_channels=(4,), kernel_size=3, quantiles=())
    model = ConvLSTMForecaster(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(5.0)
    radius = model.receptive_radius(n_input_steps=3, n_horizons=4)
    assert radius == 7
    series = torch.zeros(1, 3, 1, 1, 40)
    mask = torch.ones_like(series, dtype=torch.bool)
    with torch.no_grad():
        base = model(series, mask, n_horizons=4)[0, -1, 0, 0]
        series[0, 0, 0, 0, 20] = 1.0  # oldest step, column 20
        changed = (model(series, mask, n_horizons=4)[0, -1, 0, 0] != base).numpy()
    assert changed[20 - radius] and changed[20 + radius]
    assert not changed[: 20 - radius].any() and not changed[20 + radius + 1 :].any()


def test_narrow_panel_edge_strips_give_the_single_panel_forecast(tmp_path: Path) -> None:
    """A 3x3-kernel model on a raster 10 tiles wide: 64 px panels (5 of them, 8 edges) forecast what one panel
    over the whole raster does, while each edge costs a 7 + 4 px strip instead of a whole 40 px tile. Weights
    scaled 5x make a strip even 1 px narrower than that differ by more than the tolerance."""
    model = export_random_model(tmp_path / "model", kernel_size=3, weight_scale=5.0)
    values = growing_series(3, 300)[:, :40, :]
    values[:, 10:14, 60:70] = np.nan  # across a panel edge (64): nodata out
    paths, years, covariates = write_series(tmp_path, values)
    spec = SeriesSpec.from_lists(paths, years)

    def run(panel_width: int, out: str) -> dict:
        return predict_series(
            model,
            spec,
            covariates,
            tmp_path / out,
            tile=32,
            overlap=8,
            batch_size=4,
            panel_width=panel_width,
            progress=False,
            precision="fp32",
            compile_gates=False,
        )

    panels, single = run(64, "panels"), run(320, "single")
    for narrow, wide in zip(panels["files"], single["files"], strict=True):
        with rasterio.open(narrow) as a, rasterio.open(wide) as b:
            assert a.crs == b.crs and a.transform == b.transform and a.descriptions == b.descriptions
            got, want = a.read(), b.read()
        assert np.isnan(got[:, 10:14, 60:70]).all() and np.array_equal(np.isnan(got), np.isnan(want))
        # Float noise of convolutions over different widths stays near 2e-6; 1 px less context gives 2e-3.
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert single["strips"] == 0 and single["tile_pixels"] == 20 * 40 * 40
    assert panels["tiles"] == 20 and panels["strips"] == 2 * 8
    assert panels["tile_pixels"] == 20 * 40 * 40 + 16 * 40 * (7 + 4)  # whole edge tiles: + 16 * 40 * 40
