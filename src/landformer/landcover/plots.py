"""Every picture of the land-cover pipeline: grids of class maps, panels beside real chips, and the charts of
the commands (inpainting accuracy, bits per pixel, class shares per Gibbs sweep, embeddings, probabilities).

Functions take arrays and a legend and return an image or write a PNG, so the commands and the training
callback draw the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.patches import Patch

from landformer.core.legend import Legend
from landformer.core.viz import (
    DPI,
    class_rgb,
    image_grid,
    new_figure,
    save_figure,
    save_panel,
    save_png,
    save_titled_rows,
    upscale,
)


@dataclass
class EmbeddingPoints:
    """Vectors to project, with a colour and (optionally) a text label per point."""

    vectors: np.ndarray  # (n, dim) float32
    colours: np.ndarray  # (n, 3) uint8
    labels: list[str] | None
    title: str
    colour_note: str
    key: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (name, rgb) swatches for a legend


def class_grid(maps: np.ndarray, legend: Legend, side: int = 64, ncols: int | None = None) -> np.ndarray:
    """(B, H, W) class maps -> one RGB image of them on a grid (near-square unless ``ncols`` is given), each map
    upscaled by a whole factor so that its longer side is about ``side`` pixels (a 16-pixel chip: 64)."""
    scale = max(1, side // max(maps.shape[1:]))
    return image_grid([upscale(class_rgb(m, legend), scale) for m in maps], ncols=ncols)


def _figure(width_in: float, height_in: float, ncols: int = 1) -> tuple[Any, Any]:
    figure = new_figure(int(width_in * DPI), int(height_in * DPI), layout="constrained")
    return figure, figure.subplots(1, ncols)


def samples_beside_real(
    path: str | os.PathLike[str], samples: np.ndarray, real: np.ndarray, legend: Legend, title: str = "samples"
) -> Path:
    """Generated chips and real chips as two grids in the same colours, with one legend listing only the classes
    that occur in either."""

    n = min(len(samples), len(real))
    grids = [class_grid(samples[:n], legend), class_grid(real[:n], legend)]
    present = np.union1d(np.unique(samples[:n]), np.unique(real[:n]))
    # Wide enough panels that three columns of long class names fit under them.
    side = max(384, *(grid.shape[1] for grid in grids))
    return save_panel(path, grids, [title, "real held-out chips"], legend=legend, panel_px=side, present=present)


def save_inpaint_panel(
    path: Path, truth: np.ndarray, hidden: np.ndarray, result: np.ndarray, legend: Legend, max_rows: int = 16
) -> Path:
    """Three titled rows of up to ``max_rows`` chips: the real chips, the model's input (hidden pixels grey) and the
    filled chips, with a legend of the classes they hold."""

    count = min(len(truth), max_rows)
    scale = max(1, 64 // truth.shape[-1])

    def strip(maps: np.ndarray, grey: np.ndarray | None = None) -> np.ndarray:
        tiles = []
        for i in range(count):
            rgb = class_rgb(maps[i], legend)
            if grey is not None:
                rgb[grey[i]] = 128
            tiles.append(upscale(rgb, scale))
        return image_grid(tiles, nrows=1, pad=4)

    hidden_share = float(hidden[:count].mean())
    rows = [
        ("real chips (held out)", strip(truth)),
        (f"input: {hidden_share:.0%} of the pixels hidden (grey)", strip(truth, hidden)),
        ("filled by the model: known pixels kept, hidden ones generated", strip(result)),
    ]
    present = np.concatenate([truth[:count].ravel(), result[:count].ravel()])
    return save_titled_rows(path, rows, legend, present)


def plot_inpaint_eval(rows: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy and log-loss against mask ratio for the model and both baselines."""
    figure, (left, right) = _figure(9, 3.6, ncols=2)
    ratios = [row["ratio"] for row in rows]
    lines = [
        ("model", "model (most likely)", "-o"),
        ("majority", "majority of known", "--s"),
        ("nearest", "nearest known pixel", ":^"),
    ]
    for key, label, style in lines:
        left.plot(ratios, [row[f"{key}_accuracy"] for row in rows], style, label=label)
        right.plot(ratios, [row[f"{key}_log_loss"] for row in rows], style, label=label)
    left.plot(ratios, [row["model_sample_accuracy"] for row in rows], "-.x", label="model (one sample)")
    left.set(xlabel="mask ratio (hidden share)", ylabel="accuracy on hidden pixels", ylim=(0, 1))
    right.set(xlabel="mask ratio (hidden share)", ylabel="log-loss (nats / hidden pixel)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.grid(alpha=0.3)
    return save_figure(figure, path)


BAR_LABELS = {
    "model_random_order": "model, random orders",
    "model_raster_order": "model, raster order",
    "context": "context model (W, N, NW, NE)",
    "class_entropy": "class entropy (i.i.d.)",
}


def _bar_label(name: str) -> str:
    if name in BAR_LABELS:
        return BAR_LABELS[name]
    codec, per_chip, _ = name.partition("_per_chip")
    return f"{codec}, {'per chip' if per_chip else 'pooled'}"


def _bar_colour(name: str) -> str:
    if name.startswith("model"):
        return "tab:green"
    if name == "context":
        return "tab:orange"
    if name == "class_entropy":
        return "tab:purple"
    return "dimgray" if name.endswith("_per_chip") else "darkgray"


def plot_information(bits: dict[str, float], path: Path, title: str, ratio_to_context: float | None) -> Path:
    """Horizontal bars of bits per pixel, smallest at the top: model green, context model orange, class entropy
    purple, compressors grey (dark: per chip, light: pooled)."""
    names = sorted(bits, key=lambda name: bits[name], reverse=True)
    figure, axis = _figure(7, 0.32 * len(names) + 1.4)
    colours = [_bar_colour(name) for name in names]
    axis.barh([_bar_label(name) for name in names], [bits[name] for name in names], color=colours)
    for y, name in enumerate(names):
        axis.text(bits[name], y, f" {bits[name]:.3f}", va="center", fontsize=8)
    if ratio_to_context is not None:
        title += f"; model (random orders) / context model = {ratio_to_context:.2f}"
    axis.set(xlabel="bits per pixel (lower = more predictable)", title=title)
    axis.title.set_fontsize(9)
    axis.set_xlim(0, max(bits.values()) * 1.2)
    return save_figure(figure, path)


def plot_class_fractions(path: str | os.PathLike[str], fractions: np.ndarray, legend: Legend) -> Path:
    """Line per class (legend colour) of its share against the sweep number; absent classes are left out."""
    figure = new_figure(720, 400)
    axes = figure.add_subplot(1, 1, 1)
    palette = legend.palette() / 255.0
    sweeps = np.arange(fractions.shape[0])
    for k in np.flatnonzero(fractions.max(axis=0) > 0):
        axes.plot(sweeps, fractions[:, k], color=palette[k], label=legend.names[k], linewidth=1.8)
    axes.set_xlabel("sweep")
    axes.set_ylabel("share of valid cells")
    axes.set_ylim(0, max(0.05, float(fractions.max()) * 1.05))
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    figure.subplots_adjust(left=0.1, right=0.7, bottom=0.13, top=0.95)
    return save_figure(figure, path)


def plot_embedding(
    path: str | os.PathLike[str], coords: np.ndarray, points: EmbeddingPoints, method: str, note: str
) -> Path:
    """Scatter of the 2-D coordinates in each point's colour, named points labelled."""
    key_px = 220 if points.key else 0
    figure = new_figure(640 + key_px, 600)
    axes = figure.add_subplot(1, 1, 1)
    axes.scatter(coords[:, 0], coords[:, 1], c=points.colours / 255.0, s=60 if points.labels else 18, edgecolors="0.3")
    for (x, y), label in zip(coords, points.labels or [], strict=False):
        axes.annotate(label, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    axes.margins(0.08 if points.labels is None else 0.2)  # room for the labels of points at the edge
    if points.key:
        handles = [Patch(facecolor=rgb / 255.0, edgecolor="0.3", label=name) for name, rgb in points.key]
        axes.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    subtitle = f"{method.upper()}, colour: {points.colour_note}" + (f"\n{note}" if note else "")
    axes.set_title(f"{points.title} ({len(coords)} points)\n{subtitle}", fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])
    figure.subplots_adjust(left=0.04, right=1 - (24 + key_px) / (640 + key_px), bottom=0.04, top=0.86)
    return save_figure(figure, path)


def probability_rgb(probability: np.ndarray, colormap: str = "magma") -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 through a matplotlib colormap; NaN is white."""
    finite = np.isfinite(probability)
    rgba = matplotlib.colormaps[colormap](np.where(finite, np.clip(probability, 0, 1), 0))
    rgb = np.round(rgba[..., :3] * 255).astype(np.uint8)
    rgb[~finite] = 255
    return rgb


def region_shaded(labels: np.ndarray, region: np.ndarray, legend: Legend) -> np.ndarray:

    rgb = class_rgb(labels, legend).astype(np.float64)
    rgb[region] = 0.45 * rgb[region] + 0.55 * 128
    return np.round(rgb).astype(np.uint8)


def development_panel(
    path: Path,
    labels: np.ndarray,
    reimagine: np.ndarray,
    samples: np.ndarray,
    probability: np.ndarray,
    n_samples: int,
    legend: Legend,
) -> Path:
    """The input with the re-imagined region greyed, the first two samples, and P(developed) over all samples."""
    images = [region_shaded(labels, reimagine, legend)]
    titles = ["input (grey: re-imagined)"]
    for i, sample in enumerate(samples[:2]):
        images.append(sample.astype(np.int64))
        titles.append(f"sample {i + 1}")
    images.append(probability_rgb(probability))
    titles.append(f"P(developed), {n_samples} samples")
    return save_panel(path, images, titles, legend=legend)


def probability_map(path: Path, probability: np.ndarray) -> Path:
    """A probability map alone, magma (0 black .. 1 light), four pixels per cell."""
    return save_png(path, upscale(probability_rgb(probability), 4))


def rows_of_maps(path: Path, rows: dict[str, np.ndarray], columns: int, legend: Legend) -> Path:
    """One row of ``columns`` maps per entry of ``rows`` (name -> (n, H, W) maps), each titled "name i"."""
    images, titles = [], []
    for name, maps in rows.items():
        for i in range(columns):
            images.append(np.asarray(maps[i], dtype=np.int64))
            titles.append(f"{name} {i + 1}")
    return save_panel(path, images, titles, ncols=columns, legend=legend, panel_px=128)


OUTCOME_COLOURS = {  # the usual colours of a Figure-of-Merit map
    "persistence": (235, 235, 235),
    "hit": (30, 150, 60),
    "wrong hit": (240, 180, 20),
    "miss": (210, 40, 40),
    "false alarm": (40, 90, 200),
}


def outcome_rgb(t1: np.ndarray, observed: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(H, W, 3): each pixel's outcome (persistence agreed, hit, wrong hit, miss, false alarm); nodata white."""
    observed_change, predicted_change = observed != t1, predicted != t1
    outcome = np.select(
        [
            observed_change & predicted_change & (predicted == observed),
            observed_change & predicted_change,
            observed_change,
            predicted_change,
        ],
        [1, 2, 3, 4],
        0,
    )
    rgb = np.array(list(OUTCOME_COLOURS.values()), dtype=np.uint8)[outcome]
    rgb[(t1 < 0) | (observed < 0)] = 255
    return rgb


def change_panel(
    path: Path,
    blocks_t1: list[np.ndarray],
    blocks_t2: list[np.ndarray],
    predictions: dict[str, list[np.ndarray]],
    p_change: list[np.ndarray],
    legend: Legend,
) -> Path:
    """t1, real t2, the model's t2, Markov-CA's t2, the model's change probability and its outcome map on the test
    block with the most observed change (``predictions`` holds the "model" and "markov_ca" maps per block)."""
    changed = [int(((a != b) & (a >= 0)).sum()) for a, b in zip(blocks_t1, blocks_t2, strict=True)]
    index = int(np.argmax(changed))
    # Change is rare: stretched to the block's largest probability, the map shows where, not only that it is low.
    top = max(float(p_change[index].max()), 1e-6)
    images = [
        blocks_t1[index],
        blocks_t2[index],
        predictions["model"][index],
        predictions["markov_ca"][index],
        probability_rgb(p_change[index] / top),
        outcome_rgb(blocks_t1[index], blocks_t2[index], predictions["model"][index]),
    ]
    titles = [
        "t1",
        "real t2",
        "model t2 (most likely)",
        "Markov-CA t2",
        f"model P(change), black 0 .. light {top:.2f}",
        "model: hit green, miss red,\nfalse alarm blue, wrong hit yellow",
    ]
    return save_panel(path, images, titles, nrows=2, legend=legend)
