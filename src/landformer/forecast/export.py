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
from landformer.core.io import load_safetensors, save_safetensors, write_json
from landformer.forecast.data import normalize_inputs
from landformer.forecast.model import ConvLSTMForecaster, ForecastModelConfig, median_index
from landformer.forecast.normalize import AffineNormalizer, normalizer_from_dict

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


class ExportedForecaster:
    """A trained ConvLSTM with its normalizers and the facts needed to feed it the right data."""

    def __init__(self, model: ConvLSTMForecaster, meta: dict[str, Any], source: str) -> None:
        self.model = model.eval()
        self.meta = meta
        self.source = source
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

    def forecast(self, inputs: np.ndarray, covariates: np.ndarray | None) -> Forecast:
        """Forecast H steps from inputs (N, K, C, Y, X) and covariates (N, V, Y, X), both in series units with
        NaN for missing values."""
        normalized = normalize_inputs(inputs, covariates, self.normalizer, self.covariate_normalizer)
        device = self.device

        def tensor(array: np.ndarray | None) -> torch.Tensor | None:
            return None if array is None else torch.from_numpy(np.ascontiguousarray(array)).to(device)

        with torch.inference_mode():
            pred = self.model(
                tensor(normalized["series"]),
                tensor(normalized["series_mask"]),
                tensor(normalized["covariates"]),
                n_horizons=self.n_horizons,
            )
        pred = pred.float().cpu().numpy()
        observed = normalized["series_mask"].any(axis=1)  # (N, C, Y, X)
        missing = ~observed[:, None]
        if not self.quantiles:
            point = self.normalizer.inverse(pred, channel_axis=2)
            point[np.broadcast_to(missing, point.shape)] = np.nan
            return Forecast(point, None, None, observed)
        heads = self.normalizer.inverse(pred, channel_axis=2)  # (N, H, C, Q, Y, X)
        heads[np.broadcast_to(missing[:, :, :, None], heads.shape)] = np.nan
        return Forecast(heads[:, :, :, median_index(self.quantiles)], heads[:, :, :, 0], heads[:, :, :, -1], observed)


def export_forecaster(
    folder: str | os.PathLike[str], state_dict: dict[str, torch.Tensor], meta: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``model.safetensors`` (weights + metadata) and ``model.json`` into ``folder``."""
    folder = Path(folder)
    meta = {"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, **meta}
    weights = save_safetensors(folder / MODEL_FILE, state_dict, meta)
    return weights, write_json(folder / META_FILE, meta)


def model_config_dict(config: ForecastModelConfig) -> dict[str, Any]:
    plain = dataclasses.asdict(config)
    return {key: list(value) if isinstance(value, tuple) else value for key, value in plain.items()}


def load_forecaster(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> ExportedForecaster:
    """Load an exported model from a run folder or its ``model.safetensors``; anything off is a UserError."""
    path = Path(path)
    weights = path / MODEL_FILE if path.is_dir() else path
    if path.is_dir() and not weights.is_file():
        raise UserError(f"{path} holds no {MODEL_FILE}; train a model into it with `landformer forecast train`")
    tensors, meta = load_safetensors(weights, "forecast model")
    if meta.get("format") != EXPORT_FORMAT:
        raise UserError(f"{weights} is not a landformer forecast model (format {meta.get('format')!r})")
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
    return ExportedForecaster(model, meta, str(weights)).to(device)
