"""Pictures of forecasts, always in series units: a target / prediction / difference panel per horizon, and
errors against horizon for the model and its two baselines.

Drawn with matplotlib's object API on an Agg canvas (no pyplot state) and written atomically. Matplotlib is
imported with this module: every importer (training, evaluation, the demo) has already paid for torch, which
takes ten times as long.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.patches import Patch

from landformer.core.errors import UserError
from landformer.core.viz import DPI, new_figure, save_figure

MISSING_COLOUR = (1.0, 0.0, 1.0)  # magenta: in neither viridis nor the red-blue difference map


def _figure(width_in: float, height_in: float) -> Any:
    return new_figure(int(width_in * DPI), int(height_in * DPI))


def save_forecast_panel(
    path: str | os.PathLike[str],
    target: np.ndarray,
    prediction: np.ndarray,
    row_labels: Sequence[str],
    title: str = "",
    units: str = "series units",
) -> Path:
    """One row per horizon, columns target, prediction and prediction - target, for (H, Y, X) arrays with NaN
    where there is no ground truth (target) or nothing to forecast from (prediction).

    Missing values are drawn in magenta in every column (a difference needs both), and each row is labelled
    with its count of pixels that have ground truth, so an empty row is not mistaken for a perfect one.
    Target and prediction share one colour scale; the difference is centred on zero.
    """
    target, prediction = np.asarray(target, np.float64), np.asarray(prediction, np.float64)
    if target.ndim != 3 or target.shape != prediction.shape or len(row_labels) != target.shape[0]:
        raise UserError(
            f"{path}: target {target.shape} and prediction {prediction.shape} should be the same (H, Y, X), "
            f"with {len(row_labels)} row labels for H"
        )
    difference = prediction - target
    values = np.concatenate([target[np.isfinite(target)], prediction[np.isfinite(prediction)]])
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    high = high if high > low else low + 1e-6
    finite_difference = np.abs(difference[np.isfinite(difference)])
    spread = float(finite_difference.max()) if finite_difference.size and finite_difference.max() > 0 else 1e-6
    level_map = matplotlib.colormaps["viridis"].with_extremes(bad=MISSING_COLOUR)
    difference_map = matplotlib.colormaps["RdBu_r"].with_extremes(bad=MISSING_COLOUR)
    level_norm, difference_norm = Normalize(low, high), TwoSlopeNorm(0.0, -spread, spread)

    n_rows = target.shape[0]
    figure = _figure(9.0, 2.4 * n_rows + 1.2)
    grid = figure.add_gridspec(n_rows + 1, 3, height_ratios=[*([1.0] * n_rows), 0.08], hspace=0.25, wspace=0.05)
    columns = [
        ("target", target, level_map, level_norm),
        ("prediction", prediction, level_map, level_norm),
        ("prediction - target", difference, difference_map, difference_norm),
    ]
    images = []
    for row in range(n_rows):
        n_valid = int(np.isfinite(target[row]).sum())
        for col, (name, array, cmap, norm) in enumerate(columns):
            axes = figure.add_subplot(grid[row, col])
            image = axes.imshow(np.ma.masked_invalid(array[row]), cmap=cmap, norm=norm, interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 0:
                axes.set_title(name, fontsize=10)
            if col == 0:
                axes.set_ylabel(f"{row_labels[row]}\n{n_valid} valid px", fontsize=9)
            if row == 0:
                images.append(image)
    for col, image in enumerate(images):
        bar = figure.add_subplot(grid[n_rows, col])
        figure.colorbar(image, cax=bar, orientation="horizontal", label=units if col < 2 else f"difference ({units})")
    figure.legend(
        handles=[Patch(facecolor=MISSING_COLOUR, edgecolor="0.3", label="no ground truth / no input")],
        loc="upper right",
        fontsize=8,
        frameon=False,
    )
    if title:
        figure.suptitle(title, fontsize=11, x=0.02, ha="left")
    return save_figure(figure, path)


def save_error_plot(
    path: str | os.PathLike[str],
    horizons: Sequence[float],
    errors: dict[str, dict[str, Sequence[float | None]]],
    xlabel: str = "years ahead",
    units: str = "series units",
    title: str = "",
) -> Path:
    """MAE and RMSE against horizon, one line per forecaster: ``errors[metric][forecaster]`` per horizon (None
    where undefined)."""
    figure = _figure(9.0, 3.6)
    for index, (metric, series) in enumerate(errors.items()):
        axes = figure.add_subplot(1, len(errors), index + 1)
        for name, values in series.items():
            plotted = [np.nan if value is None else value for value in values]
            style = {"linewidth": 2.0} if name == "model" else {"linestyle": "--"}
            axes.plot(horizons, plotted, marker="o", label=name, **style)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(f"{metric} ({units})")
        axes.set_xticks(list(horizons))
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return save_figure(figure, path)


def save_forecast_map(
    path: str | os.PathLike[str], values: np.ndarray, title: str = "", units: str = "series units"
) -> Path:
    """One (Y, X) forecast map with a colour bar; NaN (nodata) in magenta."""
    values = np.asarray(values, np.float64)
    figure = _figure(5.5, 5.0)
    axes = figure.add_subplot(1, 1, 1)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=MISSING_COLOUR)
    image = axes.imshow(np.ma.masked_invalid(values), cmap=cmap, interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])
    figure.colorbar(image, ax=axes, label=units, shrink=0.8)
    if title:
        axes.set_title(title, fontsize=10)
    return save_figure(figure, path)
