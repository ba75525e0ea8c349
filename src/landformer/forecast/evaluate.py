"""``forecast evaluate``: how well a trained model forecasts the held-out blocks, against two baselines.

Every window with a target inside the series is forecast on every test block of the run's spatial split (see
``forecast/data.py``), and scored in series units per horizon: MAE, RMSE, MAE on pixels that changed, skill
against persistence and against a per-pixel linear trend (1 - MSE_model / MSE_baseline), and, with quantile
heads, the share of valid pixels inside the outermost interval (95 % for the default heads). Missing ground
truth is left out of every number. ``final_step`` repeats the scores on the targets in the series' last step
alone, a year no training or validation window ever saw.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from landformer.core.errors import UserError
from landformer.core.io import write_json
from landformer.forecast import export
from landformer.forecast.config import ForecastDataConfig
from landformer.forecast.data import (
    ForecastSplit,
    SeriesRasters,
    SeriesSpec,
    iter_block_windows,
    resolve_scale,
    resolve_series,
)
from landformer.forecast.export import ExportedForecaster
from landformer.forecast.metrics import ForecastMetrics
from landformer.forecast.plots import save_error_plot

log = logging.getLogger(__name__)


def _recorded_data(forecaster: ExportedForecaster) -> tuple[SeriesSpec, list[Path], dict[str, Any]]:
    data = forecaster.meta.get("data")
    if not isinstance(data, dict) or "series" not in data:
        raise UserError(f"{forecaster.source} records no training data; pass the series to evaluate on")
    spec = SeriesSpec.from_lists(data["series"], data["years"])
    return spec, [Path(path) for path in data["covariates"]], data


def evaluate_forecaster(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    data: ForecastDataConfig | None = None,
    change_threshold: float = 0.0,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Score ``model`` (a run folder or its model.safetensors) on held-out blocks; write ``metrics.json`` and
    ``error_vs_horizon.png`` into ``out`` and return the metrics. ``precision`` is the network's arithmetic
    (fp32 by default: the numbers training saw; bf16 scores what a bf16 ``forecast predict`` writes).

    By default the data and the split are those recorded at training time. ``data`` evaluates on other rasters
    instead (a series, a pattern or a world, with its own split settings).
    """
    start_time = time.perf_counter()
    out = Path(out)
    forecaster = export.load(model, precision=precision)
    if data is None:
        spec, covariates, recorded = _recorded_data(forecaster)
        settings = {key: recorded[key] for key in ("chip_size", "block_size", "test_fraction", "val_fraction")}
        settings |= {"seed": recorded["split_seed"]}
        align, assume_crs, scale_setting = recorded["align_series"], recorded["assume_crs"], recorded["scale"]
    else:
        spec, covariates = resolve_series(data, None, data.split_seed)
        settings = {
            "chip_size": data.chip_size,
            "block_size": data.block_size,
            "test_fraction": data.test_fraction,
            "val_fraction": data.val_fraction,
            "seed": data.split_seed,
        }
        align, assume_crs, scale_setting = data.align_series, data.assume_crs, data.scale
    k, h = forecaster.n_input_steps, forecaster.n_horizons
    spec.require_steps(k, "evaluate")
    _check_cadence(forecaster, spec)
    n_channels = forecaster.config.n_series_channels
    with SeriesRasters(spec, covariates, align, assume_crs) as rasters:
        forecaster.check_channels(rasters.n_channels, rasters.covariate_names, str(spec.paths[0]))
        grid = rasters.grid
        scale = resolve_scale(scale_setting, rasters)
        split = ForecastSplit.make(grid.height, grid.width, source=str(spec.paths[0]), **settings)
        if data is None and split.to_dict()["test_blocks"] != recorded["split"]["test_blocks"]:
            raise UserError(
                f"{spec.paths[0]}: the held-out blocks differ from those recorded at training time "
                "(the rasters changed?); evaluating would mix training and test places"
            )
        blocks = split.blocks("test", grid.height, grid.width)
        everything = ForecastMetrics(h, n_channels, change_threshold=change_threshold)
        last_step = ForecastMetrics(h, n_channels, change_threshold=change_threshold)
        windows = iter_block_windows(rasters, blocks, scale, k, h, forecaster.valid_range)
        for _, starts, inputs, targets, block_covariates in tqdm(
            windows, total=len(blocks), desc="evaluate blocks", unit="block", disable=None, dynamic_ncols=True
        ):
            forecast = forecaster.forecast(inputs, block_covariates)
            target_mask = np.isfinite(targets)
            input_mask = np.isfinite(inputs)
            bounds = {"lower": forecast.lower, "upper": forecast.upper}
            everything.update(forecast.point, targets, target_mask, inputs, input_mask, **bounds)
            # Horizon i of the window starting at s forecasts step s + K + i; keep only the series' last step.
            in_last_step = np.zeros_like(target_mask)
            for index, start in enumerate(starts):
                horizon = spec.n_steps - 1 - start - k
                if 0 <= horizon < h:
                    in_last_step[index, horizon] = target_mask[index, horizon]
            last_step.update(forecast.point, targets, in_last_step, inputs, input_mask, **bounds)
    cadence = spec.cadence or forecaster.cadence or 1
    labels = [f"+{(i + 1) * cadence} years" for i in range(h)]
    channels = forecaster.channel_names
    rows, final_rows = everything.report(channels, labels), last_step.report(channels, labels)
    interval = [forecaster.quantiles[0], forecaster.quantiles[-1]] if forecaster.quantiles else None
    result: dict[str, Any] = {
        "model": forecaster.source,
        "series": [str(path) for path in spec.paths],
        "years": list(spec.years),
        "covariates": [str(path) for path in covariates],
        "scale": scale,
        "units": "series value / scale" if scale != 1 else "series value",
        "n_input_steps": k,
        "n_horizons": h,
        "interval": interval,
        "change_threshold": change_threshold,
        "precision": forecaster.precision,
        "valid_range": forecaster.valid_range,
        "split": split.to_dict(),
        "per_horizon": rows,
        "final_step": {"year": spec.years[-1], "per_horizon": final_rows},
        "summary": _summary(rows, interval),
        "seconds": round(time.perf_counter() - start_time, 2),
    }
    metrics_path = write_json(out / "metrics.json", result)
    errors = {
        metric: {name: [row[f"{prefix}{metric}"] for row in rows] for name, prefix in _FORECASTERS}
        for metric in ("mae", "rmse")
    }
    plot = save_error_plot(
        out / "error_vs_horizon.png",
        [(i + 1) * cadence for i in range(h)],
        errors,
        title=f"held-out blocks of {spec.paths[0].parent.name or '.'} ({len(blocks)} blocks)",
        units=result["units"],
    )
    result["files"] = {"metrics": str(metrics_path), "plot": str(plot)}
    return result


_FORECASTERS = (("model", ""), ("persistence", "persistence_"), ("trend", "trend_"))


def _check_cadence(forecaster: ExportedForecaster, spec: SeriesSpec) -> None:
    if forecaster.cadence is not None and spec.cadence is not None and forecaster.cadence != spec.cadence:
        raise UserError(
            f"model {forecaster.source} steps {forecaster.cadence} years at a time, but the series "
            f"{spec.paths[0].name}.. is {spec.cadence} years apart"
        )


def _summary(rows: list[dict[str, Any]], interval: list[float] | None) -> dict[str, Any]:
    """The headline: does the model beat both baselines at every horizon, and does its interval cover?"""
    skill_persistence = [row["skill_persistence"] for row in rows]
    skill_trend = [row["skill_trend"] for row in rows]
    summary: dict[str, Any] = {
        "skill_persistence": skill_persistence,
        "skill_trend": skill_trend,
        "beats_persistence_at_every_horizon": all(s is not None and s > 0 for s in skill_persistence),
        "beats_trend_at_every_horizon": all(s is not None and s > 0 for s in skill_trend),
    }
    if interval is not None:
        coverage = [row.get("coverage") for row in rows]
        summary["nominal_coverage"] = round(interval[1] - interval[0], 6)
        summary["coverage"] = coverage
    return summary


def format_table(result: dict[str, Any]) -> str:
    """The per-horizon numbers as an aligned text table for the terminal."""
    columns = ["label", "n_valid", "mae", "rmse", "mae_changed", "skill_persistence", "skill_trend"]
    if result.get("interval"):
        columns.append("coverage")
    lines = ["  ".join(f"{name:>17}" for name in columns)]
    for row in result["per_horizon"]:
        cells = []
        for name in columns:
            value = row.get(name)
            cells.append(f"{value:>17.5g}" if isinstance(value, float) else f"{value!s:>17}")
        lines.append("  ".join(cells))
    return "\n".join(lines)
