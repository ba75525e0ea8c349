"""Forecast metrics against hand computations, the baselines, and the normalizers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from landformer.core.errors import UserError
from landformer.core.normalize import MinMax, ZScore, fit_normalizer, normalizer_from_dict
from landformer.forecast.metrics import (
    ForecastMetrics,
    linear_trend_forecast,
    persistence_forecast,
    skill_score,
)

NAN = float("nan")


def hand_example() -> dict[str, np.ndarray]:
    """One sample, K = 3, H = 2, one channel, a 1 x 4 strip of pixels a, b, c, d.

    a: inputs 1, 2, 3 (all observed)      -> persistence 3, trend 4, 5
    b: inputs 2, -, 4 (middle missing)    -> persistence 4, trend through (-2, 2), (0, 4): 5, 6
    c: inputs -, -, 7 (one observation)   -> persistence 7, trend flat 7, 7
    d: nothing observed                   -> never scored, whatever its target and forecast
    Horizon 2 of pixel a has no ground truth (NaN under the mask).
    """
    series = np.array([[1, 2, NAN, 5], [2, NAN, NAN, 5], [3, 4, 7, 5]], dtype=np.float64)
    series_mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], dtype=bool)
    target = np.array([[4, 5, 9, 1], [NAN, 3, 7, 1]], dtype=np.float64)
    target_mask = np.array([[1, 1, 1, 1], [0, 1, 1, 1]], dtype=bool)
    pred = np.array([[3.5, 5, 8, 100], [999, 6, 7, 100]], dtype=np.float64)
    lower = np.array([[3, 5.5, 8, 0], [0, 2, 7.5, 0]], dtype=np.float64)
    upper = np.array([[4, 6, 10, 0], [0, 4, 8, 0]], dtype=np.float64)

    def layout(x: np.ndarray) -> np.ndarray:  # (T, X) -> (B=1, T, C=1, Y=1, X)
        return x[None, :, None, None, :]

    return {
        "series": layout(series),
        "series_mask": layout(series_mask),
        "target": layout(target),
        "target_mask": layout(target_mask),
        "pred": layout(pred),
        "lower": layout(lower),
        "upper": layout(upper),
    }


def test_baselines_match_hand_values() -> None:
    data = hand_example()
    persistence, observed = persistence_forecast(data["series"], data["series_mask"], n_horizons=2)
    trend, trend_observed = linear_trend_forecast(data["series"], data["series_mask"], n_horizons=2)
    assert observed[0, 0, 0].tolist() == [True, True, True, False]
    assert torch.equal(observed, trend_observed)
    assert persistence[0, :, 0, 0, :3].tolist() == [[3, 4, 7], [3, 4, 7]]
    assert torch.allclose(trend[0, :, 0, 0, :3], torch.tensor([[4.0, 5, 7], [5, 6, 7]], dtype=torch.float64))


def test_linear_trend_with_calendar_years_and_a_gap_is_exact_on_a_line() -> None:
    years = [1990.0, 2000.0, 2010.0, 2015.0]
    future = [2020.0, 2030.0]
    slope = torch.tensor([0.01, -0.002, 0.0]).view(1, 1, 1, 1, 3)
    values = 0.3 + slope * (torch.tensor(years).view(1, -1, 1, 1, 1) - 1990.0)
    mask = torch.ones_like(values, dtype=torch.bool)
    mask[:, 1] = False  # the 2000 layer is missing everywhere
    forecast, _ = linear_trend_forecast(values, mask, 2, input_times=years, horizon_times=future)
    expected = 0.3 + slope.double() * (torch.tensor(future, dtype=torch.float64).view(1, -1, 1, 1, 1) - 1990.0)
    assert torch.allclose(forecast, expected, atol=1e-12)


def test_metrics_equal_hand_computation() -> None:
    data = hand_example()
    metrics = ForecastMetrics(n_horizons=2)
    metrics.update(
        data["pred"],
        data["target"],
        data["target_mask"],
        data["series"],
        data["series_mask"],
        data["lower"],
        data["upper"],
    )
    result = {key: value[:, 0] for key, value in metrics.compute().items()}
    # Horizon 1 scores a, b, c: model errors 0.5, 0, 1; persistence 1, 1, 2; trend 0, 0, 2.
    # Horizon 2 scores b, c: model errors 3, 0; persistence 1, 0; trend 3, 0. Only b changed at horizon 2.
    expected = {
        "n_valid": [3, 2],
        "n_changed": [3, 1],
        "mae": [1.5 / 3, 1.5],
        "rmse": [math.sqrt(1.25 / 3), math.sqrt(4.5)],
        "mae_changed": [1.5 / 3, 3.0],
        "persistence_mae": [4 / 3, 0.5],
        "persistence_rmse": [math.sqrt(2.0), math.sqrt(0.5)],
        "persistence_mae_changed": [4 / 3, 1.0],
        "trend_mae": [2 / 3, 1.5],
        "trend_rmse": [math.sqrt(4 / 3), math.sqrt(4.5)],
        "trend_mae_changed": [2 / 3, 3.0],
        "skill_persistence": [1 - (1.25 / 3) / 2.0, 1 - 4.5 / 0.5],
        "skill_trend": [1 - (1.25 / 3) / (4 / 3), 0.0],
        "coverage": [2 / 3, 1 / 2],
    }
    assert sorted(result) == sorted(expected)
    for key, values in expected.items():
        np.testing.assert_allclose(result[key], values, rtol=1e-12, err_msg=key)


def test_metrics_stream_over_chunks_like_one_batch() -> None:
    data = hand_example()
    keys = ("pred", "target", "target_mask", "series", "series_mask", "lower", "upper")
    whole = ForecastMetrics(n_horizons=2)
    whole.update(*(data[key] for key in keys))
    chunked = ForecastMetrics(n_horizons=2)
    for columns in (slice(0, 1), slice(1, 3), slice(3, 4)):
        chunked.update(*(data[key][..., columns] for key in keys))
    for key, value in whole.compute().items():
        np.testing.assert_allclose(chunked.compute()[key], value, rtol=1e-12, err_msg=key)


def test_undefined_metrics_are_nan_and_null_in_report() -> None:
    data = hand_example()
    metrics = ForecastMetrics(n_horizons=2, change_threshold=10.0)  # no pixel changes by more than 10
    metrics.update(data["pred"], data["target"], data["target_mask"], data["series"], data["series_mask"])
    assert np.isnan(metrics.compute()["mae_changed"]).all()
    rows = metrics.report(channel_names=["hm"], horizon_labels=["+5 y", "+10 y"])
    assert [(row["horizon"], row["label"], row["channel"]) for row in rows] == [(1, "+5 y", "hm"), (2, "+10 y", "hm")]
    assert rows[0]["mae_changed"] is None and rows[0]["n_changed"] == 0 and rows[1]["n_valid"] == 2
    assert "coverage" not in rows[0]
    json.dumps(rows, allow_nan=False)


def test_persistence_has_zero_skill_against_itself() -> None:
    generator = torch.Generator().manual_seed(0)
    series = torch.rand(3, 3, 2, 5, 6, generator=generator)
    series_mask = torch.rand(series.shape, generator=generator) > 0.3
    target = torch.rand(3, 4, 2, 5, 6, generator=generator)
    target_mask = torch.rand(target.shape, generator=generator) > 0.2
    persistence, _ = persistence_forecast(series, series_mask, n_horizons=4)
    metrics = ForecastMetrics(n_horizons=4, n_channels=2)
    metrics.update(persistence, target, target_mask, series, series_mask)
    result = metrics.compute()
    assert (result["n_valid"] > 0).all()
    np.testing.assert_array_equal(result["skill_persistence"], 0.0)
    np.testing.assert_array_equal(result["mae"], result["persistence_mae"])


def test_skill_score_is_nan_when_the_baseline_is_perfect() -> None:
    np.testing.assert_array_equal(skill_score(np.array([1.0, 0.5, 0.0]), np.array([2.0, 0.0, 0.0])), [0.5, NAN, NAN])


def test_update_rejects_inconsistent_shapes_and_leaves_sums_alone() -> None:
    data = hand_example()
    metrics = ForecastMetrics(n_horizons=2)
    with pytest.raises(ValueError, match="target"):
        metrics.update(data["pred"], data["target"][:, :1], data["target_mask"], data["series"], data["series_mask"])
    with pytest.raises(ValueError, match="both interval bounds"):
        metrics.update(
            data["pred"], data["target"], data["target_mask"], data["series"], data["series_mask"], data["lower"]
        )
    assert metrics.n_valid.sum() == 0 and metrics.has_interval is None


# --- normalizers -------------------------------------------------------------------------------------------------


def chips_with_nodata() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    values = np.stack([rng.normal(5.0, 2.0, (6, 4, 4)), rng.uniform(100.0, 900.0, (6, 4, 4))], axis=1)
    mask = rng.random(values.shape) > 0.25
    values[~mask] = -9999.0  # nodata that must not leak into the statistics
    values[0, 0, 0, 0] = np.nan
    mask[0, 0, 0, 0] = True  # NaN is treated as missing even when the mask says valid
    return values, mask


def test_zscore_and_minmax_fit_on_valid_pixels_only() -> None:
    values, mask = chips_with_nodata()
    zscore, minmax = ZScore.fit(values, mask, channel_axis=1), MinMax.fit(values, mask, channel_axis=1)
    for channel in range(2):
        valid = values[:, channel][mask[:, channel] & np.isfinite(values[:, channel])]
        assert zscore.mean[channel] == pytest.approx(valid.mean(), rel=1e-12)
        assert zscore.std[channel] == pytest.approx(valid.std(), rel=1e-12)
        assert minmax.low[channel] == valid.min()
        assert minmax.high[channel] == pytest.approx(valid.max(), rel=1e-12)
    transformed = zscore.transform(values, channel_axis=1)
    valid0 = mask[:, 0] & np.isfinite(values[:, 0])
    assert transformed[:, 0][valid0].mean() == pytest.approx(0.0, abs=1e-12)
    assert transformed[:, 0][valid0].std() == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("kind", ["zscore", "minmax"])
def test_normalizer_json_round_trip_is_exact(kind: str) -> None:
    values, mask = chips_with_nodata()
    normalizer = fit_normalizer(kind, values, mask, channel_axis=1)  # type: ignore[arg-type]
    restored = normalizer_from_dict(json.loads(json.dumps(normalizer.to_dict())))
    assert restored == normalizer and type(restored) is type(normalizer)
    series = torch.randn(2, 3, 2, 4, 4, dtype=torch.float64)  # (N, T, C, H, W): channels on axis -3
    assert torch.equal(restored.transform(series), normalizer.transform(series))
    torch.testing.assert_close(normalizer.inverse(normalizer.transform(series)), series, rtol=1e-12, atol=1e-12)
    as_float32 = normalizer.transform(series.float())
    assert as_float32.dtype == torch.float32
    round_trip = normalizer.inverse(normalizer.transform(values, channel_axis=1), channel_axis=1)
    np.testing.assert_allclose(round_trip[mask], values[mask], rtol=1e-12)


def test_constant_channel_gets_unit_scale_and_empty_channel_is_an_error() -> None:
    constant = np.full((4, 1, 3, 3), 7.0)
    normalizer = ZScore.fit(constant)
    assert normalizer.std == (1.0,)
    np.testing.assert_array_equal(normalizer.transform(constant), 0.0)
    with pytest.raises(UserError, match="channel 0 has no valid"):
        ZScore.fit(constant, np.zeros(constant.shape, dtype=bool))


def test_bad_saved_normalizers_are_user_errors() -> None:
    with pytest.raises(UserError, match=r"norm\.json: unknown normalizer kind 'robust'"):
        normalizer_from_dict({"kind": "robust"}, source="norm.json")
    with pytest.raises(UserError, match="'std' should be positive"):
        normalizer_from_dict({"kind": "zscore", "mean": [0.0], "std": [0.0]})
    with pytest.raises(UserError, match="different lengths"):
        normalizer_from_dict({"kind": "minmax", "low": [0.0, 1.0], "span": [1.0]})
    with pytest.raises(ValueError, match="1 channel"):
        ZScore(offset=(0.0,), scale=(1.0,)).transform(np.zeros((2, 3, 4, 4)))
