"""Masked forecast metrics that stream over batches, and the two baselines every forecast is judged against.

Everything here expects physical units (apply the normalizer's ``inverse`` first) and the layout of
``model.py``: inputs (B, K, C, Y, X), forecasts and targets (B, H, C, Y, X). Sums are kept per horizon and
channel in float64, so a whole raster can be evaluated chunk by chunk and the result does not depend on how it
was cut.

A pixel is scored at horizon h when its ground truth exists there and at least one of its K inputs was observed
(with nothing observed there is nothing to forecast from and no baseline). The model and both baselines are
always scored on exactly the same pixels, so their errors and skill scores compare like with like.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from landformer.forecast.model import last_observed

ArrayLike = np.ndarray | torch.Tensor


def _float64(x: ArrayLike) -> torch.Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def _bool(x: ArrayLike) -> torch.Tensor:
    return torch.as_tensor(x).detach().to("cpu").bool()


def default_input_times(n_input_steps: int) -> list[float]:
    """Input steps at -(K-1), ..., -1, 0 cadences: the last observation is time 0."""
    return [float(step - n_input_steps + 1) for step in range(n_input_steps)]


def default_horizon_times(n_horizons: int) -> list[float]:
    """Horizon h lies h cadences after the last observation."""
    return [float(h + 1) for h in range(n_horizons)]


def persistence_forecast(
    series: ArrayLike, series_mask: ArrayLike, n_horizons: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeat each pixel's most recent observed value: (B, H, C, Y, X) float64 and (B, C, Y, X) "observed"."""
    value, observed = last_observed(_float64(series), _bool(series_mask))
    return value.unsqueeze(1).expand(-1, n_horizons, *value.shape[1:]), observed


def linear_trend_forecast(
    series: ArrayLike,
    series_mask: ArrayLike,
    n_horizons: int,
    input_times: Sequence[float] | None = None,
    horizon_times: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, fit a least-squares line through the observed inputs and extend it to each horizon.

    Times are in any unit (years, steps) as long as both lists share it; the defaults put the K inputs at the
    series cadence ending at 0 and horizon h at h cadences later, so for an evenly spaced series the cadence
    cancels. Irregular series (HM: 1990, 2000, 2010, 2015, ...) pass their real years. Missing inputs are left out
    of the fit; where only one input was observed the line is undetermined and the forecast is that value
    (persistence). Returns (B, H, C, Y, X) float64 and the (B, C, Y, X) "any input observed" mask.
    """
    values, mask = _float64(series), _bool(series_mask)
    n_input_steps = values.shape[1]
    input_times = default_input_times(n_input_steps) if input_times is None else list(input_times)
    horizon_times = default_horizon_times(n_horizons) if horizon_times is None else list(horizon_times)
    if len(input_times) != n_input_steps or len(horizon_times) != n_horizons:
        raise ValueError(
            f"{len(input_times)} input times for {n_input_steps} steps, {len(horizon_times)} for {n_horizons} horizons"
        )
    times = torch.tensor(input_times, dtype=torch.float64).view(1, -1, 1, 1, 1)
    weight = mask.to(torch.float64)
    values = torch.where(mask, values, torch.zeros_like(values))
    count = weight.sum(1)
    # Centre the times on each pixel's own mean observed time: the normal equations then stay well conditioned
    # even with times given as calendar years.
    mean_time = (weight * times).sum(1) / count.clamp(min=1.0)
    mean_value = (weight * values).sum(1) / count.clamp(min=1.0)
    centred = (times - mean_time.unsqueeze(1)) * weight
    spread = (centred**2).sum(1)
    covariance = (centred * (values - mean_value.unsqueeze(1))).sum(1)
    slope = torch.where(spread > 0, covariance / torch.where(spread > 0, spread, 1.0), 0.0)
    future = torch.tensor(horizon_times, dtype=torch.float64).view(1, -1, 1, 1, 1)
    forecast = mean_value.unsqueeze(1) + slope.unsqueeze(1) * (future - mean_time.unsqueeze(1))
    return forecast, count > 0


def skill_score(mse_model: np.ndarray, mse_baseline: np.ndarray) -> np.ndarray:
    """1 - MSE_model / MSE_baseline: 1 is perfect, 0 is no better than the baseline, negative is worse.

    Undefined (NaN) where the baseline is already perfect (MSE 0) or nothing was scored.
    """
    mse_model, mse_baseline = np.asarray(mse_model, np.float64), np.asarray(mse_baseline, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mse_baseline > 0, 1.0 - mse_model / mse_baseline, np.nan)


class ForecastMetrics:
    """Streaming per-horizon, per-channel errors of a forecast and of the persistence and linear-trend baselines.

    Call :meth:`update` once per batch or raster chunk, then :meth:`compute` (arrays of shape (H, C)) or
    :meth:`report` (JSON-ready rows). A pixel "changed" at horizon h when its true value differs from its last
    observed input by more than ``change_threshold`` (physical units), which is where a forecast earns its keep.
    Pass the interval bounds (e.g. the 2.5 % and 97.5 % heads) to every update to get their coverage.
    """

    FORECASTERS = ("model", "persistence", "trend")

    def __init__(
        self,
        n_horizons: int,
        n_channels: int = 1,
        input_times: Sequence[float] | None = None,
        horizon_times: Sequence[float] | None = None,
        change_threshold: float = 0.0,
    ) -> None:
        self.n_horizons = n_horizons
        self.n_channels = n_channels
        self.input_times = None if input_times is None else list(input_times)
        self.horizon_times = None if horizon_times is None else list(horizon_times)
        self.change_threshold = change_threshold
        shape = (n_horizons, n_channels)
        self.n_valid = torch.zeros(shape, dtype=torch.float64)
        self.n_changed = torch.zeros(shape, dtype=torch.float64)
        self.abs_error = {name: torch.zeros(shape, dtype=torch.float64) for name in self.FORECASTERS}
        self.squared_error = {name: torch.zeros(shape, dtype=torch.float64) for name in self.FORECASTERS}
        self.abs_error_changed = {name: torch.zeros(shape, dtype=torch.float64) for name in self.FORECASTERS}
        self.n_inside_interval = torch.zeros(shape, dtype=torch.float64)
        self.has_interval: bool | None = None

    def update(
        self,
        pred: ArrayLike,
        target: ArrayLike,
        target_mask: ArrayLike,
        series: ArrayLike,
        series_mask: ArrayLike,
        lower: ArrayLike | None = None,
        upper: ArrayLike | None = None,
    ) -> None:
        """Add one batch: point forecast, truth and its mask (B, H, C, Y, X), inputs (B, K, C, Y, X), bounds."""
        # Check everything before touching the sums, so a bad batch leaves the accumulator as it was.
        pred, target, target_mask = _float64(pred), _float64(target), _bool(target_mask)
        expected = (pred.shape[0], self.n_horizons, self.n_channels, *pred.shape[-2:])
        named = [("pred", pred), ("target", target), ("target_mask", target_mask)]
        if (lower is None) != (upper is None):
            raise ValueError("give both interval bounds or neither")
        has_interval = lower is not None and upper is not None
        if has_interval:
            lower, upper = _float64(lower), _float64(upper)
            named += [("lower", lower), ("upper", upper)]
        for name, tensor in named:
            if tuple(tensor.shape) != expected:
                raise ValueError(
                    f"{name} should be (B, {self.n_horizons}, {self.n_channels}, Y, X), got {tuple(tensor.shape)}"
                )
        if self.has_interval is not None and has_interval != self.has_interval:
            raise ValueError("interval bounds were given to some updates but not to others")
        persistence, observed = persistence_forecast(series, series_mask, self.n_horizons)
        trend, _ = linear_trend_forecast(series, series_mask, self.n_horizons, self.input_times, self.horizon_times)
        if tuple(observed.shape) != (expected[0], *expected[2:]):
            raise ValueError(f"series should be (B, K, {self.n_channels}, Y, X) like pred, got {tuple(observed.shape)}")
        self.has_interval = has_interval

        valid = target_mask & observed.unsqueeze(1)
        target = torch.where(valid, target, torch.zeros_like(target))
        changed = valid & ((target - persistence).abs() > self.change_threshold)
        weight, changed_weight = valid.to(torch.float64), changed.to(torch.float64)

        def per_horizon_channel(x: torch.Tensor) -> torch.Tensor:
            return x.sum(dim=(0, 3, 4))

        self.n_valid += per_horizon_channel(weight)
        self.n_changed += per_horizon_channel(changed_weight)
        for name, forecast in (("model", pred), ("persistence", persistence), ("trend", trend)):
            abs_error = torch.where(valid, (forecast - target).abs(), 0.0)
            self.abs_error[name] += per_horizon_channel(abs_error)
            self.squared_error[name] += per_horizon_channel(abs_error**2)
            self.abs_error_changed[name] += per_horizon_channel(abs_error * changed_weight)
        if has_interval:
            inside = (lower <= target) & (target <= upper)
            self.n_inside_interval += per_horizon_channel((inside & valid).to(torch.float64))

    def compute(self) -> dict[str, np.ndarray]:
        """Metrics as (H, C) float64 arrays; NaN where nothing was scored (e.g. no pixel changed)."""

        def ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> np.ndarray:
            numerator, denominator = numerator.numpy(), denominator.numpy()
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(denominator > 0, numerator / denominator, np.nan)

        result: dict[str, np.ndarray] = {
            "n_valid": self.n_valid.numpy().copy(),
            "n_changed": self.n_changed.numpy().copy(),
        }
        mse = {}
        for name in self.FORECASTERS:
            prefix = "" if name == "model" else f"{name}_"
            mse[name] = ratio(self.squared_error[name], self.n_valid)
            result[f"{prefix}mae"] = ratio(self.abs_error[name], self.n_valid)
            result[f"{prefix}rmse"] = np.sqrt(mse[name])
            result[f"{prefix}mae_changed"] = ratio(self.abs_error_changed[name], self.n_changed)
        result["skill_persistence"] = skill_score(mse["model"], mse["persistence"])
        result["skill_trend"] = skill_score(mse["model"], mse["trend"])
        if self.has_interval:
            result["coverage"] = ratio(self.n_inside_interval, self.n_valid)
        return result

    def report(
        self, channel_names: Sequence[str] | None = None, horizon_labels: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """One JSON-ready row per (horizon, channel); undefined values become None (JSON null), never NaN."""
        channel_names = list(channel_names) if channel_names else [f"channel_{c}" for c in range(self.n_channels)]
        horizon_labels = list(horizon_labels) if horizon_labels else [str(h + 1) for h in range(self.n_horizons)]
        if len(channel_names) != self.n_channels or len(horizon_labels) != self.n_horizons:
            raise ValueError(f"need {self.n_channels} channel names and {self.n_horizons} horizon labels")
        metrics = self.compute()
        rows = []
        for h in range(self.n_horizons):
            for c in range(self.n_channels):
                row: dict[str, Any] = {"horizon": h + 1, "label": horizon_labels[h], "channel": channel_names[c]}
                for key, values in metrics.items():
                    value = float(values[h, c])
                    row[key] = int(value) if key.startswith("n_") else (value if math.isfinite(value) else None)
                rows.append(row)
        return rows
