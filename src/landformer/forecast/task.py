"""Training: the Lightning task (masked loss, scheduled sampling) and :func:`train_forecaster`, which goes from a
recipe to a run folder with checkpoints, the exported model and a picture of its forecasts.

**Loss.** Missing ground truth (past the series end, the held-out last step, nodata) is masked out of every
term. Without quantile heads the loss is the masked MSE. With them, ``point_loss="pinball"`` trains every head
with the pinball loss (the middle head is then the median), while the default ``"mse"`` trains the middle head
with the MSE and only the outer heads with the pinball loss: the middle head then estimates the conditional
*mean*, which is what MSE-based skill scores reward, and matters for a series like HM, where most pixels do
not change in a given step (a median forecast is mostly persistence) but some jump. The outer heads stay the
2.5 % and 97.5 % quantiles either way, so the 95 % interval keeps its meaning.

**Scheduled sampling.** During training each roll-out step is fed the ground truth instead of the model's own
previous forecast with a probability that starts at ``teacher_forcing`` and decays linearly to 0 at
``max_steps`` (Bengio et al. 2015); validation and inference always feed the model its own forecasts.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from landformer.core.errors import UserError
from landformer.core.io import write_json
from landformer.core.task import BaseTask, ImagesEvery
from landformer.core.train import fit, last_checkpoint, prepare_run, seed_everything
from landformer.forecast.config import ForecastConfig
from landformer.forecast.data import (
    ForecastData,
    SeriesRasters,
    WindowDataset,
    iter_block_windows,
    load_forecast_data,
    resolve_series,
    train_starts,
)
from landformer.forecast.export import ExportedForecaster, export_forecaster, model_config_dict
from landformer.forecast.model import ConvLSTMForecaster, ForecastModelConfig, masked_loss, median_index
from landformer.forecast.plots import save_forecast_panel

log = logging.getLogger(__name__)


class ForecastTask(BaseTask):
    """ConvLSTM forecaster trained on masked windows; see the module docstring for the loss."""

    def __init__(
        self,
        n_series_channels: int = 1,
        n_covariate_channels: int = 1,
        n_input_steps: int = 3,
        n_horizons: int = 4,
        hidden_channels: tuple[int, ...] = (16, 16),
        kernel_size: int = 3,
        quantiles: tuple[float, ...] = (),
        teacher_forcing: float = 0.5,
        point_loss: str = "mse",
        lr: float = 3e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 20,
        max_steps: int = 200,
        min_lr_ratio: float = 0.1,
    ) -> None:
        if point_loss not in ("mse", "pinball"):
            raise ValueError(f"point_loss should be 'mse' or 'pinball', got {point_loss!r}")
        super().__init__(
            lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio
        )

    def model_config(self) -> ForecastModelConfig:
        hp = self.hparams
        return ForecastModelConfig(
            n_series_channels=hp.n_series_channels,
            n_covariate_channels=hp.n_covariate_channels,
            n_input_steps=hp.n_input_steps,
            n_horizons=hp.n_horizons,
            hidden_channels=tuple(hp.hidden_channels),
            kernel_size=hp.kernel_size,
            quantiles=tuple(hp.quantiles),
        )

    def configure_models(self) -> None:
        self.model = ConvLSTMForecaster(self.model_config())

    def teacher_forcing_now(self) -> float:
        """The scheduled-sampling probability at the current step (0 outside training)."""
        if not self.training:
            return 0.0
        progress = min(1.0, self.global_step / max(1, self.hparams.max_steps))
        return float(self.hparams.teacher_forcing) * (1.0 - progress)

    def forecast_loss(self, pred: Tensor, target: Tensor, target_mask: Tensor) -> Tensor:
        quantiles = tuple(self.hparams.quantiles)
        if not quantiles:
            return masked_loss(pred, target, target_mask)
        if self.hparams.point_loss == "pinball":
            return masked_loss(pred, target, target_mask, quantiles)
        middle = median_index(quantiles)
        outer = [index for index in range(len(quantiles)) if index != middle]
        point_loss = masked_loss(pred.select(-3, middle), target, target_mask)
        outer_heads = pred.index_select(-3, torch.tensor(outer, device=pred.device))
        return point_loss + masked_loss(outer_heads, target, target_mask, [quantiles[i] for i in outer])

    def compute_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        covariates = batch["covariates"] if self.hparams.n_covariate_channels else None
        pred = self.model(
            batch["series"],
            batch["series_mask"],
            covariates,
            batch["target"],
            batch["target_mask"],
            teacher_forcing=self.teacher_forcing_now(),
            n_horizons=self.hparams.n_horizons,
        )
        point = self.model.point_forecast(pred).detach()
        return {
            "loss": self.forecast_loss(pred, batch["target"], batch["target_mask"]),
            "mse": masked_loss(point, batch["target"], batch["target_mask"]),
        }


def _loaders(data: ForecastData, config: ForecastConfig) -> tuple[DataLoader, DataLoader]:
    k, h = config.data.n_input_steps, config.data.n_horizons
    starts = train_starts(data.n_steps, k, config.data.min_input_steps)
    held_out = data.n_steps - 2  # the last target any training or validation window may use
    common = (k, h, held_out, data.normalizer, data.covariate_normalizer)
    train = WindowDataset(data.train, starts, *common, augment=config.data.augment)
    val = WindowDataset(data.val, starts, *common, augment=False)
    workers = config.data.num_workers
    loader = {"batch_size": config.data.batch_size, "num_workers": workers, "persistent_workers": workers > 0}
    return DataLoader(train, shuffle=True, drop_last=len(train) > config.data.batch_size, **loader), DataLoader(
        val, shuffle=False, **loader
    )


def build_task(config: ForecastConfig, data: ForecastData) -> ForecastTask:
    return ForecastTask(
        n_series_channels=len(data.channel_names),
        n_covariate_channels=len(data.covariate_names),
        n_input_steps=config.data.n_input_steps,
        n_horizons=config.data.n_horizons,
        hidden_channels=tuple(config.model.hidden_channels),
        kernel_size=config.model.kernel_size,
        quantiles=tuple(config.model.quantiles),
        teacher_forcing=config.task.teacher_forcing,
        point_loss=config.task.point_loss,
        lr=config.task.lr,
        weight_decay=config.task.weight_decay,
        warmup_steps=config.task.warmup_steps,
        max_steps=config.train.max_steps,
        min_lr_ratio=config.task.min_lr_ratio,
    )


def export_metadata(data: ForecastData, model_config: ForecastModelConfig, checkpoint: Path, step: int) -> dict:
    return {
        "model_config": model_config_dict(model_config),
        "normalizer": data.normalizer.to_dict(),
        "covariate_normalizer": data.covariate_normalizer.to_dict() if data.covariate_normalizer else None,
        "n_input_steps": model_config.n_input_steps,
        "n_horizons": model_config.n_horizons,
        "channel_names": data.channel_names,
        "covariate_names": data.covariate_names,
        "years": list(data.spec.years),
        "cadence": data.spec.cadence,
        "scale": data.scale,
        "units": "series value / scale",
        "valid_range": None if data.valid_range is None else list(data.valid_range),
        "data": data.describe(),
        "checkpoint": str(checkpoint),
        "global_step": step,
    }


def panel_window(n_steps: int, n_input_steps: int, n_horizons: int) -> int:
    """Start of the window drawn at the end of training: its last horizon falls one step past the series end
    when the series allows, so the picture shows the held-out last step and a forecast with no ground truth."""
    return min(max(n_steps - n_input_steps - n_horizons + 1, 0), n_steps - n_input_steps - 1)


def draw_test_panel(forecaster: ExportedForecaster, data: ForecastData, path: Path) -> Path:
    """The panel of the held-out test block with the most change in the chosen window."""
    k, h = forecaster.n_input_steps, forecaster.n_horizons
    start = panel_window(data.n_steps, k, h)
    blocks = data.split.blocks("test", data.grid.height, data.grid.width)
    with SeriesRasters(data.spec, data.covariate_paths, data.config.align_series, data.config.assume_crs) as rasters:
        best: tuple[float, Any] | None = None
        for _, starts, inputs, targets, covariates in iter_block_windows(rasters, blocks, data.scale, k, h):
            index = starts.index(start)
            change = float(np.nansum(np.abs(targets[index] - inputs[index, -1:])))
            if best is None or change > best[0]:
                best = (change, (inputs[index : index + 1], targets[index], covariates[index : index + 1]))
    assert best is not None
    inputs, targets, covariates = best[1]
    forecast = forecaster.forecast(inputs, covariates)
    years = data.spec.years
    cadence = data.spec.cadence or 1
    labels = [f"{years[start + k - 1] + (i + 1) * cadence}" for i in range(h)]
    return save_forecast_panel(
        path,
        target=targets[:, 0],
        prediction=forecast.point[0, :, 0],
        row_labels=labels,
        title=f"held-out block, inputs {years[start]}..{years[start + k - 1]} ({data.channel_names[0]})",
    )


DRAWN_WINDOWS_SEARCHED = 64  # validation windows looked through for the one with the most change to draw


def validation_drawer(windows: WindowDataset, folder: Path) -> Callable[[Any], dict[str, Path]]:
    """For TensorBoard and W&B while training: the forecast of a validation window with ground truth at every
    horizon, the one with the most change among those (target, prediction and difference per horizon, in
    normalised units), also kept as ``images/forecast_val_<step>.png``. Test blocks stay unseen until training is
    over. The window is chosen at the first drawing, so a run whose loggers show no pictures reads none."""

    def ground_truth_then_change(i: int) -> tuple[int, float]:
        window = windows[i]
        known = window["target_mask"]
        return int(known.sum()), float(((window["target"] - window["series"][-1:]).abs() * known).sum())

    @functools.cache
    def chosen_window() -> dict[str, Tensor]:
        return windows[max(range(min(len(windows), DRAWN_WINDOWS_SEARCHED)), key=ground_truth_then_change)]

    def draw(task: Any) -> dict[str, Path]:
        item = chosen_window()
        device = next(task.model.parameters()).device
        batch = {name: value[None].to(device) for name, value in item.items()}
        covariates = batch["covariates"] if task.hparams.n_covariate_channels else None
        pred = task.model(batch["series"], batch["series_mask"], covariates, n_horizons=task.hparams.n_horizons)
        point = task.model.point_forecast(pred)[0, :, 0].float().cpu().numpy()
        target = np.where(item["target_mask"][:, 0].numpy(), item["target"][:, 0].numpy(), np.nan)
        labels = [f"horizon {h + 1}" for h in range(len(point))]
        step = task.global_step
        path = save_forecast_panel(
            folder / f"forecast_val_{step:07d}.png",
            target,
            point,
            labels,
            f"validation window, step {step}",
            units="normalised units",
        )
        return {"forecast/validation": path}

    return draw


def train_forecaster(
    config: ForecastConfig, run_dir: str | os.PathLike[str], resume: bool | str | os.PathLike[str] = False
) -> dict[str, Any]:
    """Train on the recipe's data (a synthetic world when none is given), export the best checkpoint as
    ``model.safetensors`` + ``model.json``, save the normalizers as ``normalizer.json`` and draw
    ``forecast_panel.png``. Returns a summary, also written to ``train_summary.json``."""
    start_time = time.perf_counter()
    run_dir = Path(run_dir)
    config.data.validate()
    if resume is False and last_checkpoint(run_dir) is not None:
        # Checked here as well as in fit(), before config.yaml and run.json of that run are overwritten.
        raise UserError(
            f"{run_dir} already holds a training run (checkpoints/last.ckpt): resume it (--resume) or choose "
            "another run folder"
        )
    prepare_run(run_dir, config, "forecast")
    spec, covariates = resolve_series(config.data, run_dir, config.train.seed)
    data = load_forecast_data(config.data, spec, covariates)
    normalizers = {
        "series": data.normalizer.to_dict(),
        "covariates": data.covariate_normalizer.to_dict() if data.covariate_normalizer else None,
        "scale": data.scale,
        "channel_names": data.channel_names,
        "covariate_names": data.covariate_names,
    }
    write_json(run_dir / "normalizer.json", normalizers)
    train_loader, val_loader = _loaders(data, config)
    if config.task.threads:
        torch.set_num_threads(config.task.threads)
    seed_everything(config.train.seed)
    task = build_task(config, data)
    pictures = ImagesEvery(validation_drawer(val_loader.dataset, run_dir / "images"), config.train.val_every_steps)
    result = fit(task, (train_loader, val_loader), config.train, run_dir, resume=resume, callbacks=[pictures])
    checkpoint = result.load_best_into(task)
    meta = export_metadata(data, task.model.config, checkpoint, result.global_step)
    weights, meta_path = export_forecaster(run_dir, task.model.state_dict(), meta)
    forecaster = ExportedForecaster(task.model.cpu(), meta, str(weights))
    panel = draw_test_panel(forecaster, data, run_dir / "forecast_panel.png")
    summary = {
        "run_dir": str(run_dir),
        "model": str(weights),
        "model_json": str(meta_path),
        "normalizer": str(run_dir / "normalizer.json"),
        "panel": str(panel),
        "checkpoint": str(checkpoint),
        "global_step": result.global_step,
        "metrics": result.metrics,
        "n_train_windows": len(train_loader.dataset),
        "n_val_windows": len(val_loader.dataset),
        "fit_seconds": round(result.seconds, 2),
        "seconds": round(time.perf_counter() - start_time, 2),
    }
    write_json(run_dir / "train_summary.json", summary)
    return summary
