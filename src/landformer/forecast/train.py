"""Training from a recipe: :func:`train` goes from a :class:`~landformer.forecast.config.ForecastConfig` to a run
folder with checkpoints, the exported model (``model.safetensors`` + ``model.json``), the normalizers, pictures of
validation forecasts while it trains and a panel of a held-out block's forecasts at the end.
"""

from __future__ import annotations

import functools
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
from landformer.core.task import ImagesEvery
from landformer.core.train import fit, last_checkpoint, prepare_run, seed_everything
from landformer.forecast import export
from landformer.forecast.config import ForecastConfig, ForecastModelConfig
from landformer.forecast.data import (
    ForecastData,
    SeriesRasters,
    WindowDataset,
    iter_block_windows,
    load_forecast_data,
    resolve_series,
    train_starts,
)
from landformer.forecast.plots import save_forecast_panel
from landformer.forecast.task import build_task


def _loaders(data: ForecastData, config: ForecastConfig) -> tuple[DataLoader, DataLoader]:
    k, h = config.data.n_input_steps, config.data.n_horizons
    starts = train_starts(data.n_steps, k, config.data.min_input_steps)
    held_out = data.n_steps - 2  # the last target any training or validation window may use
    common = (k, h, held_out, data.normalizer, data.covariate_normalizer)
    train_windows = WindowDataset(data.train, starts, *common, augment=config.data.augment)
    val_windows = WindowDataset(data.val, starts, *common, augment=False)
    workers = config.data.num_workers
    loader = {"batch_size": config.data.batch_size, "num_workers": workers, "persistent_workers": workers > 0}
    train_loader = DataLoader(
        train_windows, shuffle=True, drop_last=len(train_windows) > config.data.batch_size, **loader
    )
    return train_loader, DataLoader(val_windows, shuffle=False, **loader)


def export_metadata(data: ForecastData, model_config: ForecastModelConfig, checkpoint: Path, step: int) -> dict:
    return {
        "model_config": export.model_config_dict(model_config),
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


def draw_test_panel(forecaster: export.ExportedForecaster, data: ForecastData, path: Path) -> Path:
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


def train(
    recipe: ForecastConfig, run_dir: str | os.PathLike[str], resume: bool | str | os.PathLike[str] = False
) -> dict[str, Any]:
    """Train on the recipe's data (a synthetic world when none is given), export the best checkpoint as
    ``model.safetensors`` + ``model.json``, save the normalizers as ``normalizer.json`` and draw
    ``forecast_panel.png``. Returns a summary, also written to ``train_summary.json``."""
    start_time = time.perf_counter()
    run_dir = Path(run_dir)
    recipe.data.validate()
    if resume is False and last_checkpoint(run_dir) is not None:
        # Checked here as well as in fit(), before config.yaml and run.json of that run are overwritten.
        raise UserError(
            f"{run_dir} already holds a training run (checkpoints/last.ckpt): resume it (--resume) or choose "
            "another run folder"
        )
    prepare_run(run_dir, recipe, "forecast")
    spec, covariates = resolve_series(recipe.data, run_dir, recipe.train.seed)
    data = load_forecast_data(recipe.data, spec, covariates)
    normalizers = {
        "series": data.normalizer.to_dict(),
        "covariates": data.covariate_normalizer.to_dict() if data.covariate_normalizer else None,
        "scale": data.scale,
        "channel_names": data.channel_names,
        "covariate_names": data.covariate_names,
    }
    write_json(run_dir / "normalizer.json", normalizers)
    train_loader, val_loader = _loaders(data, recipe)
    if recipe.task.threads:
        torch.set_num_threads(recipe.task.threads)
    seed_everything(recipe.train.seed)
    task = build_task(recipe, data)
    pictures = ImagesEvery(validation_drawer(val_loader.dataset, run_dir / "images"), recipe.train.val_every_steps)
    result = fit(task, (train_loader, val_loader), recipe.train, run_dir, resume=resume, callbacks=[pictures])
    checkpoint = result.load_best_into(task)
    meta = export_metadata(data, task.model.config, checkpoint, result.global_step)
    weights, meta_path = export.save(run_dir, task.model.state_dict(), meta)
    forecaster = export.ExportedForecaster(task.model.cpu(), meta, str(weights))
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
