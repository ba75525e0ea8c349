"""The inference-ready model: ``model.safetensors`` + ``model.json``, loaded without pickle.

Training writes both into the run folder from its best checkpoint. The safetensors file carries the weights and,
in its metadata, the same JSON as ``model.json`` (model config, normalizers, K, H, channel names, years and
cadence, value scale, and the data the model was trained on), so either the run folder or the ``.safetensors``
file alone is enough for ``forecast evaluate`` and ``forecast predict``. :class:`ExportedForecaster` turns
series-unit arrays with NaN for missing values into forecasts in the same units.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landformer.core.errors import UserError
from landformer.core.export import load_bundle, save_bundle
from landformer.core.normalize import AffineNormalizer, normalizer_from_dict
from landformer.forecast.data import normalize_inputs
from landformer.forecast.model import ConvLSTMForecaster, ForecastModelConfig, median_index

EXPORT_FORMAT = "landformer-forecast"
EXPORT_VERSION = 1
MODEL_FILE = "model.safetensors"
META_FILE = "model.json"


@dataclass
class Forecast:
    """Forecasts in series units: ``point`` (N, H, C, Y, X), interval bounds likewise (None without quantile
    heads), all NaN where no input step was observed (``observed``, (N, C, Y, X)), as there is nothing to
    forecast from."""

    point: np.ndarray
    lower: np.ndarray | None
    upper: np.ndarray | None
    observed: np.ndarray


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the device computes it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or
    AMX, where oneDNN's bf16 convolutions are several times faster than float32), else fp32."""
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r} should be one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return "fp32"


class ExportedForecaster:
    """A trained ConvLSTM with its normalizers and the facts needed to feed it the right data.

    ``precision`` is the inference arithmetic of the convolutions (the LSTM cell state and the residual
    roll-out stay float32): fp32 reproduces training's numbers; bf16 changes forecasts by about a thousandth of
    the series' range (see ``tests/test_forecast_model.py``) and is several times faster on hardware with native
    bf16. ``compile_gates`` fuses the LSTM gate arithmetic into one compiled kernel per tile shape, worth its
    compile time (tens of seconds) only on large rasters.
    """

    def __init__(
        self,
        model: ConvLSTMForecaster,
        meta: dict[str, Any],
        source: str,
        precision: str = "fp32",
        compile_gates: bool = False,
    ) -> None:
        self.model = model.eval()
        self.meta = meta
        self.source = source
        self.precision = resolve_precision(precision, self.device)
        if self.precision == "bf16":
            # oneDNN's bf16 convolutions want channels-last tensors; in NCHW each call reorders its input.
            self.model.use_channels_last()
        if compile_gates:
            self.model.compile_gates()
        self.normalizer = normalizer_from_dict(meta["normalizer"], f"{source}: normalizer")
        covariate_normalizer = meta.get("covariate_normalizer")
        self.covariate_normalizer: AffineNormalizer | None = (
            normalizer_from_dict(covariate_normalizer, f"{source}: covariate normalizer")
            if covariate_normalizer
            else None
        )

    @property
    def config(self) -> ForecastModelConfig:
        return self.model.config

    @property
    def n_input_steps(self) -> int:
        return self.config.n_input_steps

    @property
    def n_horizons(self) -> int:
        return self.config.n_horizons

    @property
    def quantiles(self) -> tuple[float, ...]:
        return self.config.quantiles

    @property
    def channel_names(self) -> list[str]:
        return list(self.meta["channel_names"])

    @property
    def covariate_names(self) -> list[str]:
        return list(self.meta["covariate_names"])

    @property
    def cadence(self) -> int | None:
        return self.meta.get("cadence")

    @property
    def valid_range(self) -> tuple[float, float] | None:
        """(low, high) of the series in series units (0..1 for HM), or None when unbounded."""
        bounds = self.meta.get("valid_range")
        return None if bounds is None else (float(bounds[0]), float(bounds[1]))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> ExportedForecaster:
        self.model.to(device)
        return self

    def check_channels(self, n_series_bands: int, covariate_names: Sequence[str], series_source: str) -> None:
        """Refuse data whose channels differ from the training data's, in one line."""
        if n_series_bands != self.config.n_series_channels:
            raise UserError(
                f"model {self.source} forecasts {self.config.n_series_channels} series channel(s) "
                f"({', '.join(self.channel_names)}), but {series_source} has {n_series_bands} band(s)"
            )
        if len(covariate_names) != self.config.n_covariate_channels:
            expected = ", ".join(self.covariate_names) or "none"
            got = ", ".join(covariate_names) or "none"
            raise UserError(
                f"model {self.source} was trained with {self.config.n_covariate_channels} covariate channel(s) "
                f"({expected}) but {len(covariate_names)} were given ({got}); pass the same --covariate rasters"
            )

    def run_network(
        self, series: torch.Tensor, series_mask: torch.Tensor, covariates: torch.Tensor | None
    ) -> torch.Tensor:
        """The network alone on normalized tensors (see ``model.py`` for the layout), in this forecaster's
        precision, without autograd: float32 (B, H, C, Y, X), or (B, H, C, Q, Y, X) with quantile heads."""
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        with torch.inference_mode(), autocast:
            return self.model(series, series_mask, covariates, n_horizons=self.n_horizons).float()

    def forecast(self, inputs: np.ndarray, covariates: np.ndarray | None) -> Forecast:
        """Forecast H steps from inputs (N, K, C, Y, X) and covariates (N, V, Y, X), both in series units with
        NaN for missing values."""
        normalized = normalize_inputs(inputs, covariates, self.normalizer, self.covariate_normalizer)
        device = self.device

        def tensor(array: np.ndarray | None) -> torch.Tensor | None:
            return None if array is None else torch.from_numpy(np.ascontiguousarray(array)).to(device)

        pred = self.run_network(
            tensor(normalized["series"]), tensor(normalized["series_mask"]), tensor(normalized["covariates"])
        )
        pred = pred.cpu().numpy()
        observed = normalized["series_mask"].any(axis=1)  # (N, C, Y, X)
        missing = ~observed[:, None]
        if not self.quantiles:
            point = self._clip(self.normalizer.inverse(pred, channel_axis=2))
            point[np.broadcast_to(missing, point.shape)] = np.nan
            return Forecast(point, None, None, observed)
        heads = self._clip(self.normalizer.inverse(pred, channel_axis=2))  # (N, H, C, Q, Y, X)
        heads[np.broadcast_to(missing[:, :, :, None], heads.shape)] = np.nan
        return Forecast(heads[:, :, :, median_index(self.quantiles)], heads[:, :, :, 0], heads[:, :, :, -1], observed)

    def _clip(self, values: np.ndarray) -> np.ndarray:
        """Forecasts (and interval bounds) inside the series' valid range: the residual roll-out can step past
        it (HM up to about 1.05), and a value no observation can take is never a better forecast."""
        bounds = self.valid_range
        return values if bounds is None else np.clip(values, bounds[0], bounds[1], out=values)


def save(
    folder: str | os.PathLike[str], state_dict: dict[str, torch.Tensor], meta: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``model.safetensors`` (weights + metadata) and ``model.json`` into ``folder``."""
    weights = save_bundle(Path(folder) / MODEL_FILE, state_dict, EXPORT_FORMAT, EXPORT_VERSION, **meta)
    return weights, weights.with_name(META_FILE)


def model_config_dict(config: ForecastModelConfig) -> dict[str, Any]:
    plain = dataclasses.asdict(config)
    return {key: list(value) if isinstance(value, tuple) else value for key, value in plain.items()}


def load(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    compile_gates: bool = False,
) -> ExportedForecaster:
    """Load an exported model from a run folder or its ``model.safetensors``; anything off is a UserError.
    ``precision`` and ``compile_gates``: see :class:`ExportedForecaster`."""
    path = Path(path)
    weights = path / MODEL_FILE if path.is_dir() else path
    if path.is_dir() and not weights.is_file():
        raise UserError(f"{path} holds no {MODEL_FILE}; train a model into it with `landformer forecast train`")
    tensors, meta, _ = load_bundle(weights, EXPORT_FORMAT, "landformer forecast model", max_version=EXPORT_VERSION)
    missing = [key for key in ("model_config", "normalizer", "channel_names", "covariate_names") if key not in meta]
    if missing:
        raise UserError(f"{weights}: its metadata lacks {', '.join(missing)}")
    settings = dict(meta["model_config"])
    for key in ("hidden_channels", "quantiles"):
        settings[key] = tuple(settings.get(key, ()))
    try:
        config = ForecastModelConfig(**settings)
    except TypeError as err:
        raise UserError(f"{weights}: unreadable model config: {err}") from None
    model = ConvLSTMForecaster(config)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise UserError(f"{weights}: weights do not fit the model config: {str(err).splitlines()[1].strip()}") from None
    return ExportedForecaster(model.to(device), meta, str(weights), precision, compile_gates)
