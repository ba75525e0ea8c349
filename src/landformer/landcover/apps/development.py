"""What a trained land-cover model is for, beyond single samples: Gibbs chains, embedding maps, probability of
development, panoramas wider than a chip, and the realism of its samples.

Every function takes a :class:`~landformer.landcover.model.LandCoverRandAR` (and its legend where classes need
names or colours) and plain arrays, so it runs the same on a model loaded with
:func:`landformer.landcover.export.load_model` and on a freshly built one in a test. Randomness comes from one
``torch.Generator`` seeded by ``seed``; the same seed gives the same maps.

- :func:`gibbs_chains`: many chains, each cell (or block of cells) redrawn from p(x_block | rest) per sweep.
- :func:`embedding_points` / :func:`project_2d` / :func:`embed_plot`: UMAP (or PCA for a handful of points) of
  the learned class embeddings, the position instructions, or mean hidden states of chips.
- :func:`development_probability`: inpaint a region many times; the share of samples in which a pixel is one of
  the legend's "developed" classes. Regions larger than a chip are covered by overlapping windows decoded in
  turn, each seeing what earlier windows drew, so every sample is one coherent map.
- :func:`panorama`: outpaint a map wider (and taller) than the chips window by window, each new window
  conditioned on the part it shares with what is already drawn.
- :func:`generate_samples` / :func:`sample_realism`: samples with sequential or parallel decoding and their
  landscape metrics against test chips (:mod:`landformer.landcover.evaluate`), beside samples of the
  causal-context model, shuffled pixels and the noise floor of two halves of the test chips.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from landformer.core.errors import UserError
from landformer.core.io import write_json, write_npz
from landformer.core.legend import Legend
from landformer.landcover import decoding, evaluate
from landformer.landcover.baselines import CausalContextModel
from landformer.landcover.model import LandCoverRandAR, random_orders

EmbedWhat = Literal["classes", "positions", "chips"]
NODATA_PROBABILITY = -1.0  # dev_prob.tif's nodata value: outside [0, 1], and finite so no tool trips on NaN
MIN_UMAP_POINTS = 32  # below this UMAP's neighbour graph says little; PCA shows so few points faithfully


def make_generator(model: LandCoverRandAR, seed: int) -> torch.Generator:
    """A generator on the model's device (decoding draws there), seeded."""
    return torch.Generator(device=model.device).manual_seed(seed)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=None if enabled else True, leave=False)


def _map_scale(height: int, width: int, side: int = 128) -> int:
    return max(1, side // max(height, width))


# ------------------------------------------------------------------------------------------------ Gibbs chains


@dataclass
class GibbsRun:
    """States of B chains after every sweep; frame 0 is the starting state."""

    frames: np.ndarray  # (sweeps + 1, B, H, W) int16, -1 nodata
    class_fractions: np.ndarray  # (sweeps + 1, K): share of each class over the valid cells of all chains
    seconds: float  # wall time of the sweeps


def noise_start(labels: np.ndarray, n_classes: int, seed: int = 0) -> np.ndarray:
    """Uniformly random classes at the valid cells of ``labels`` (B, H, W); nodata stays -1."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, n_classes, size=labels.shape)
    return np.where(labels >= 0, noise, -1).astype(np.int64)


def gibbs_chains(
    model: LandCoverRandAR,
    start: np.ndarray | Tensor,
    sweeps: int,
    block_size: int | None = None,
    temperature: float = 1.0,
    covariates: Tensor | None = None,
    lonlat: Tensor | None = None,
    guidance: float = 0.0,
    fixed: np.ndarray | Tensor | None = None,
    seed: int = 0,
    progress: bool = False,
) -> GibbsRun:
    """Run one Gibbs chain per map in ``start`` (B, H, W) for ``sweeps`` sweeps (:func:`decoding.gibbs`; the
    default ``block_size=None`` is its grouped single-site mode).

    Nodata cells (-1) and cells where ``fixed`` (B, H, W) is True never change; they are context for the rest.
    """
    start = torch.as_tensor(np.asarray(start), dtype=torch.long)
    fixed_tensor = torch.as_tensor(np.asarray(fixed), dtype=torch.bool) if fixed is not None else None
    generator = make_generator(model, seed)
    n_classes = model.config.n_classes
    frames = [start.numpy().astype(np.int16)]
    began = time.perf_counter()
    bar = _progress(sweeps, "gibbs sweeps", progress)
    chains = decoding.gibbs(
        model, start, sweeps, block_size, temperature, covariates, lonlat, guidance, fixed_tensor, generator
    )
    for state in chains:
        frames.append(state.cpu().numpy().astype(np.int16))
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - began
    stacked = np.stack(frames)
    fractions = np.stack([evaluate.class_counts(frame, n_classes).sum(axis=0) for frame in stacked]).astype(np.float64)
    fractions /= np.maximum(fractions.sum(axis=1, keepdims=True), 1)
    return GibbsRun(stacked, fractions, seconds)


def chains_grid(states: np.ndarray, legend: Legend, scale: int | None = None) -> np.ndarray:
    """(B, H, W) class maps -> one RGB picture of all of them on a near-square grid."""
    from landformer.core.viz import class_rgb, image_grid, upscale

    scale = scale or _map_scale(*states.shape[1:])
    return image_grid([upscale(class_rgb(state, legend), scale) for state in states])


def write_gibbs(run: GibbsRun, legend: Legend, out_dir: str | os.PathLike[str], fps: float = 4.0) -> dict[str, Path]:
    """``gibbs_frames.npz`` (frames, class_fractions), ``gibbs.gif`` (all chains, one frame per sweep),
    ``class_fractions.json`` and ``class_fractions.png`` (share of each class per sweep)."""
    from landformer.core.viz import write_gif

    out = Path(out_dir)
    paths = {
        "frames": write_npz(out / "gibbs_frames.npz", {"frames": run.frames, "class_fractions": run.class_fractions}),
        "gif": write_gif(out / "gibbs.gif", [chains_grid(frame, legend) for frame in run.frames], fps=fps),
    }
    record = {
        "sweeps": run.frames.shape[0] - 1,
        "chains": run.frames.shape[1],
        "seconds": run.seconds,
        "classes": legend.names,
        "class_fractions": [[float(v) for v in row] for row in run.class_fractions],
    }
    paths["fractions"] = write_json(out / "class_fractions.json", record)
    paths["fractions_png"] = plot_class_fractions(out / "class_fractions.png", run.class_fractions, legend)
    return paths


def plot_class_fractions(path: str | os.PathLike[str], fractions: np.ndarray, legend: Legend) -> Path:
    """Line per class (legend colour) of its share against the sweep number; absent classes are left out."""
    from landformer.core.viz import new_figure, save_figure

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


# ------------------------------------------------------------------------------------------------ embeddings


@dataclass
class EmbeddingPoints:
    """Vectors to project, with a colour and (optionally) a text label per point."""

    vectors: np.ndarray  # (n, dim) float32
    colours: np.ndarray  # (n, 3) uint8
    labels: list[str] | None
    title: str
    colour_note: str
    key: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (name, rgb) swatches for a legend


def _hidden_at_instructions(model: LandCoverRandAR) -> tuple[list[Tensor], Callable[[], None]]:
    """Capture what the output head reads: the final hidden states at the position-instruction slots."""
    captured: list[Tensor] = []
    handle = model.head.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0].detach()))
    return captured, handle.remove


def chip_representations(
    model: LandCoverRandAR,
    labels: Tensor,
    covariates: Tensor | None = None,
    lonlat: Tensor | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> Tensor:
    """(B, dim) per chip: the mean over cells of the hidden state that predicts each cell, in one random order.

    This is the state the model has built about the chip; chips the model finds alike land close together.
    """
    generator = torch.Generator().manual_seed(seed)
    batch, height, width = labels.shape
    pieces = []
    captured, remove = _hidden_at_instructions(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for begin in range(0, batch, batch_size):
                chunk = slice(begin, begin + batch_size)
                size = labels[chunk].shape[0]
                order = random_orders(size, height * width, generator).to(model.device)
                model(
                    labels[chunk].to(model.device),
                    order,
                    covariates[chunk] if covariates is not None else None,
                    lonlat[chunk] if lonlat is not None else None,
                )
                pieces.append(captured.pop().float().mean(dim=1).cpu())
    finally:
        remove()
        model.train(was_training)
    return torch.cat(pieces)


def embedding_points(
    model: LandCoverRandAR,
    legend: Legend,
    what: EmbedWhat,
    labels: Tensor | None = None,
    covariates: Tensor | None = None,
    lonlat: Tensor | None = None,
    seed: int = 0,
) -> EmbeddingPoints:
    """The vectors behind an embedding plot.

    ``classes``: the K learned class embeddings, in legend colours and named. ``positions``: the position
    instruction for every cell of a chip (one learned vector rotated by the cell's 2-D RoPE), coloured by row
    (red) and column (blue). ``chips``: :func:`chip_representations` of ``labels``, coloured by each chip's
    most common class.
    """
    palette = legend.palette()
    size = model.config.chip_size
    with torch.no_grad():
        if what == "classes":
            vectors = model.class_embedding.weight[: model.config.n_classes].float().cpu().numpy()
            return EmbeddingPoints(vectors, palette.copy(), list(legend.names), "class embeddings", "legend colours")
        if what == "positions":
            rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
            cells = (rows * size + cols).reshape(1, -1).to(model.device)
            vectors = model.embed_instructions(model.cell_positions(cells, size))[0].float().cpu().numpy()
            shade = np.stack(
                [rows.reshape(-1) / max(size - 1, 1), np.full(size * size, 0.35), cols.reshape(-1) / max(size - 1, 1)],
                axis=1,
            )
            colours = np.round(np.asarray(shade, dtype=np.float64) * 255).astype(np.uint8)
            return EmbeddingPoints(vectors, colours, None, "position instructions", "red: row, blue: column")
    if what == "chips":
        if labels is None:
            raise UserError("embed-plot --what chips needs chips (--chips chips.npz)")
        vectors = chip_representations(model, labels, covariates, lonlat, seed).numpy()
        counts = evaluate.class_counts(labels.cpu().numpy(), model.config.n_classes)
        dominant = counts.argmax(axis=1)
        key = [(legend.names[k], palette[k]) for k in np.unique(dominant)]
        return EmbeddingPoints(vectors, palette[dominant], None, "chip representations", "most common class", key)
    raise UserError(f"embed-plot: --what must be classes, positions or chips, got {what!r}")


def project_2d(
    vectors: np.ndarray, method: Literal["auto", "umap", "pca"] = "auto", seed: int = 0
) -> tuple[np.ndarray, str, str]:
    """(n, d) -> (n, 2) coordinates, the method used and a note (why PCA stood in for UMAP, if it did)."""
    n = vectors.shape[0]
    if n < 2:
        raise UserError(f"embed-plot: need at least 2 points to project, got {n}")
    note = ""
    if method == "auto":
        method = "umap" if n >= MIN_UMAP_POINTS else "pca"
        if method == "pca":
            note = f"{n} points are too few for UMAP (< {MIN_UMAP_POINTS}); PCA instead"
    if method == "umap":
        from landformer.core.extras import require

        reducer = require("umap").UMAP(
            n_components=2, n_neighbors=min(15, n - 1), random_state=seed, init="random", n_jobs=1
        )
        return np.asarray(reducer.fit_transform(vectors), dtype=np.float64), "umap", note
    if method != "pca":
        raise UserError(f"embed-plot: method must be auto, umap or pca, got {method!r}")
    from sklearn.decomposition import PCA

    coords = PCA(n_components=2, random_state=seed).fit_transform(vectors.astype(np.float64))
    return np.asarray(coords, dtype=np.float64), "pca", note


def plot_embedding(
    path: str | os.PathLike[str], coords: np.ndarray, points: EmbeddingPoints, method: str, note: str
) -> Path:
    """Scatter of the 2-D coordinates in each point's colour, named points labelled."""
    from landformer.core.viz import new_figure, save_figure

    key_px = 220 if points.key else 0
    figure = new_figure(640 + key_px, 600)
    axes = figure.add_subplot(1, 1, 1)
    axes.scatter(coords[:, 0], coords[:, 1], c=points.colours / 255.0, s=60 if points.labels else 18, edgecolors="0.3")
    for (x, y), label in zip(coords, points.labels or [], strict=False):
        axes.annotate(label, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    axes.margins(0.08 if points.labels is None else 0.2)  # room for the labels of points at the edge
    if points.key:
        from matplotlib.patches import Patch

        handles = [Patch(facecolor=rgb / 255.0, edgecolor="0.3", label=name) for name, rgb in points.key]
        axes.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    subtitle = f"{method.upper()}, colour: {points.colour_note}" + (f"\n{note}" if note else "")
    axes.set_title(f"{points.title} ({len(coords)} points)\n{subtitle}", fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])
    figure.subplots_adjust(left=0.04, right=1 - (24 + key_px) / (640 + key_px), bottom=0.04, top=0.86)
    return save_figure(figure, path)


@dataclass
class EmbedPlot:
    coords: np.ndarray
    method: str
    note: str
    paths: dict[str, Path] = field(default_factory=dict)


def embed_plot(
    model: LandCoverRandAR,
    legend: Legend,
    what: EmbedWhat,
    out_dir: str | os.PathLike[str],
    labels: Tensor | None = None,
    covariates: Tensor | None = None,
    lonlat: Tensor | None = None,
    method: Literal["auto", "umap", "pca"] = "auto",
    seed: int = 0,
) -> EmbedPlot:
    """Project the chosen embeddings to 2-D and write ``embed_<what>.png`` and ``embed_<what>.npz`` (coords)."""
    points = embedding_points(model, legend, what, labels, covariates, lonlat, seed)
    coords, used, note = project_2d(points.vectors, method, seed)
    out = Path(out_dir)
    paths = {
        "png": plot_embedding(out / f"embed_{what}.png", coords, points, used, note),
        "npz": write_npz(out / f"embed_{what}.npz", {"coords": coords, "vectors": points.vectors}),
    }
    return EmbedPlot(coords, used, note, paths)


# ------------------------------------------------------------------------------------------------ windows


def window_starts(length: int, size: int, overlap: int) -> list[int]:
    """Starts of windows of ``size`` covering ``0..length`` with at least ``overlap`` shared cells; the last
    window ends exactly at ``length``."""
    if size > length:
        raise UserError(f"a window of {size} cells does not fit in {length}")
    if not 0 <= overlap < size:
        raise UserError(f"overlap must be in 0..{size - 1}, got {overlap}")
    starts = list(range(0, length - size + 1, size - overlap))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def _sample_window(
    model: LandCoverRandAR,
    known: Tensor,
    steps: int | None,
    temperature: float,
    top_k: int | None,
    covariates: Tensor | None,
    lonlat: Tensor | None,
    generator: torch.Generator,
    on_step: Callable[[Tensor], None] | None = None,
    nodata: Tensor | None = None,
) -> Tensor:
    return decoding.sample(
        model,
        known=known,
        nodata=nodata,
        steps=steps,
        temperature=temperature,
        top_k=top_k,
        covariates=covariates,
        lonlat=lonlat,
        generator=generator,
        on_step=on_step,
    ).cpu()


def _check_region(model: LandCoverRandAR, height: int, width: int, what: str) -> int:
    size = model.config.chip_size
    if height < size or width < size:
        raise UserError(f"{what} is {height}x{width}; it must be at least the model's {size}x{size} chip")
    return size


# ------------------------------------------------------------------------------------------------ development


@dataclass
class DevelopmentProbability:
    probability: np.ndarray  # (H, W) float32 in [0, 1]; NaN at nodata cells that were not re-imagined
    nodata: np.ndarray  # (H, W) bool: the nodata cells outside the re-imagined region, kept as nodata
    samples: np.ndarray  # (n_kept, H, W) int16: the first few samples, for pictures
    n_samples: int
    windows: list[tuple[int, int]]  # top-left corners of the windows that were decoded, in order
    seconds: float


def development_probability(
    model: LandCoverRandAR,
    legend: Legend,
    labels: np.ndarray,
    reimagine: np.ndarray,
    n_samples: int = 32,
    steps: int | None = None,
    temperature: float = 1.0,
    covariates: Tensor | None = None,
    lonlat: Tensor | None = None,
    batch_size: int = 32,
    overlap: int | None = None,
    keep_samples: int = 4,
    seed: int = 0,
    progress: bool = False,
    keep_nodata: bool = True,
) -> DevelopmentProbability:
    """Share of ``n_samples`` inpainted maps in which each pixel is a "developed" class of the legend.

    ``labels`` (H, W) is the region (-1 nodata), ``reimagine`` (H, W) True where the model redraws the map;
    everything else is kept and conditions the draw, so its probability is exactly 0 or 1. A region larger
    than the model's chip is covered by chip-sized windows that overlap by ``overlap`` cells (default half a
    chip), decoded in raster order: each window redraws only the cells no earlier window drew and sees the
    others as known, so a sample is one consistent map. With ``keep_nodata``, nodata cells outside ``reimagine``
    stay nodata: the model is told they are nodata (as training chips show it), samples keep -1 there and their
    probability is NaN. Without it they are drawn (gap filling) and get a probability like the region; nodata
    cells inside ``reimagine`` are always redrawn. ``covariates``
    (C, H, W) and ``lonlat`` (2,) condition a conditional model, the same for every sample.
    """
    labels = np.asarray(labels)
    reimagine = np.asarray(reimagine, dtype=bool)
    if labels.ndim != 2 or reimagine.shape != labels.shape:
        raise UserError(f"dev-prob: labels {labels.shape} and mask {reimagine.shape} should be one (H, W) shape")
    if not reimagine.any():
        raise UserError("dev-prob: the region to re-imagine is empty")
    if n_samples < 1 or batch_size < 1:
        raise UserError(f"dev-prob: need n_samples >= 1 and batch_size >= 1, got {n_samples} and {batch_size}")
    height, width = labels.shape
    size = _check_region(model, height, width, "the dev-prob region")
    overlap = size // 2 if overlap is None else overlap
    windows = [(r, c) for r in window_starts(height, size, overlap) for c in window_starts(width, size, overlap)]
    developed = np.zeros(model.config.n_classes + 1, dtype=bool)  # the extra slot is nodata (-1)
    developed[legend.group_indices("developed")] = True
    generator = make_generator(model, seed)
    start = torch.as_tensor(np.where(reimagine, -1, labels), dtype=torch.long)
    nodata = (labels < 0) & ~reimagine & keep_nodata
    nodata_tensor = torch.as_tensor(nodata)
    hits = np.zeros((height, width), dtype=np.int64)
    kept: list[np.ndarray] = []
    decoded: list[tuple[int, int]] = []
    began = time.perf_counter()
    batches = range(0, n_samples, batch_size)
    bar = _progress(len(batches) * len(windows), "dev-prob windows", progress)
    for begin in batches:
        batch = min(batch_size, n_samples - begin)
        canvas = start.expand(batch, height, width).clone()
        for row, col in windows:
            known = canvas[:, row : row + size, col : col + size]
            window_nodata = nodata_tensor[row : row + size, col : col + size].expand(batch, size, size)
            bar.update(1)
            if bool(((known >= 0) | window_nodata).all()):
                continue
            window_covariates = None
            if covariates is not None:
                window_covariates = covariates[:, row : row + size, col : col + size].expand(batch, -1, -1, -1)
            window_lonlat = lonlat.reshape(1, 2).expand(batch, 2) if lonlat is not None else None
            drawn = _sample_window(
                model, known, steps, temperature, None, window_covariates, window_lonlat, generator, None, window_nodata
            )
            canvas[:, row : row + size, col : col + size] = drawn
            if begin == 0:
                decoded.append((row, col))
        maps = canvas.numpy()
        hits += developed[maps].sum(axis=0)
        kept.extend(maps[: max(keep_samples - len(kept), 0)].astype(np.int16))
    bar.close()
    probability = (hits / n_samples).astype(np.float32)
    probability[nodata] = np.nan
    return DevelopmentProbability(probability, nodata, np.stack(kept), n_samples, decoded, time.perf_counter() - began)


def probability_rgb(probability: np.ndarray, colormap: str = "magma") -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 through a matplotlib colormap; NaN is white."""
    import matplotlib

    finite = np.isfinite(probability)
    rgba = matplotlib.colormaps[colormap](np.where(finite, np.clip(probability, 0, 1), 0))
    rgb = np.round(rgba[..., :3] * 255).astype(np.uint8)
    rgb[~finite] = 255
    return rgb


def _with_region_shaded(labels: np.ndarray, region: np.ndarray, legend: Legend) -> np.ndarray:
    from landformer.core.viz import class_rgb

    rgb = class_rgb(labels, legend).astype(np.float64)
    rgb[region] = 0.45 * rgb[region] + 0.55 * 128
    return np.round(rgb).astype(np.uint8)


def write_development_probability(
    result: DevelopmentProbability,
    legend: Legend,
    labels: np.ndarray,
    reimagine: np.ndarray,
    out_dir: str | os.PathLike[str],
    transform: Any | None = None,
    crs: Any | None = None,
) -> dict[str, Path]:
    """``dev_prob.png`` (input with the re-imagined region greyed, samples, probability), ``dev_prob_map.png``
    (the probability alone, magma, 0 black .. 1 light), ``dev_prob.npz`` and, when a ``transform`` and ``crs``
    are given, ``dev_prob.tif`` (float32) on the input window's grid, whose nodata cells hold
    :data:`NODATA_PROBABILITY`, declared as the file's nodata value."""
    from landformer.core.raster import write_geotiff
    from landformer.core.viz import save_panel, save_png, upscale

    out = Path(out_dir)
    images = [_with_region_shaded(labels, reimagine, legend)]
    titles = ["input (grey: re-imagined)"]
    for i, sample in enumerate(result.samples[:2]):
        images.append(sample.astype(np.int64))
        titles.append(f"sample {i + 1}")
    images.append(probability_rgb(result.probability))
    titles.append(f"P(developed), {result.n_samples} samples")
    paths = {
        "panel": save_panel(out / "dev_prob.png", images, titles, legend=legend),
        "map": save_png(out / "dev_prob_map.png", upscale(probability_rgb(result.probability), 4)),
        "npz": write_npz(
            out / "dev_prob.npz",
            {
                "probability": result.probability,
                "nodata": result.nodata,
                "reimagine": reimagine,
                "labels": labels,
                "samples": result.samples,
            },
        ),
    }
    if transform is not None and crs is not None:
        paths["geotiff"] = write_geotiff(
            out / "dev_prob.tif",
            np.where(result.nodata, NODATA_PROBABILITY, result.probability).astype(np.float32),
            transform,
            crs,
            nodata=NODATA_PROBABILITY,
            band_names=["p_developed"],
            tags={
                "samples": result.n_samples,
                "developed_classes": ",".join(legend.names[i] for i in legend.group_indices("developed")),
            },
        )
    return paths


# ------------------------------------------------------------------------------------------------ panorama


@dataclass
class Panorama:
    maps: np.ndarray  # (n, H, W) int16
    frames: list[np.ndarray]  # canvases (n, H, W) while it grows, -1 where nothing is drawn yet
    windows: list[tuple[int, int]]  # top-left corners in the order they were drawn
    seconds: float


def panorama(
    model: LandCoverRandAR,
    width: int,
    height: int | None = None,
    n: int = 1,
    steps: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    overlap: int | None = None,
    frames_per_window: int = 6,
    seed: int = 0,
    progress: bool = False,
) -> Panorama:
    """``n`` maps of ``height`` x ``width`` cells (height defaults to the chip size) by sliding-window outpainting.

    Chip-sized windows in raster order overlap their neighbours by ``overlap`` cells (default half a chip);
    each window keeps the cells already drawn (known, teacher-forced) and draws the rest, so the part it shares
    with earlier windows is kept exactly and the new part continues it. ``frames`` holds up to
    ``frames_per_window`` canvases per window, taken during its decoding, for the reveal animation.
    """
    size = model.config.chip_size
    height = size if height is None else height
    _check_region(model, height, width, "the panorama")
    if n < 1:
        raise UserError(f"panorama: n must be >= 1, got {n}")
    overlap = size // 2 if overlap is None else overlap
    windows = [(r, c) for r in window_starts(height, size, overlap) for c in window_starts(width, size, overlap)]
    generator = make_generator(model, seed)
    canvas = torch.full((n, height, width), -1, dtype=torch.long)
    frames: list[np.ndarray] = [canvas.numpy().astype(np.int16)]
    drawn_windows: list[tuple[int, int]] = []
    began = time.perf_counter()
    bar = _progress(len(windows), "panorama windows", progress)
    for row, col in windows:
        known = canvas[:, row : row + size, col : col + size].clone()
        bar.update(1)
        if bool((known >= 0).all()):
            continue
        window_frames: list[Tensor] = []
        drawn = _sample_window(
            model, known, steps, temperature, top_k, None, None, generator, on_step=window_frames.append
        )
        picks = np.unique(np.linspace(0, len(window_frames) - 1, min(frames_per_window, len(window_frames))).round())
        for pick in picks.astype(int)[:-1]:
            partial = canvas.clone()
            partial[:, row : row + size, col : col + size] = window_frames[pick].cpu()
            frames.append(partial.numpy().astype(np.int16))
        canvas[:, row : row + size, col : col + size] = drawn
        frames.append(canvas.numpy().astype(np.int16))
        drawn_windows.append((row, col))
    bar.close()
    return Panorama(canvas.numpy().astype(np.int16), frames, drawn_windows, time.perf_counter() - began)


def write_panorama(
    result: Panorama, legend: Legend, out_dir: str | os.PathLike[str], fps: float = 12.0
) -> dict[str, Path]:
    """``panorama.png`` (the maps stacked), ``panorama_reveal.gif`` (windows being added) and ``panorama.npz``."""
    from landformer.core.viz import class_rgb, image_grid, save_png, upscale, write_gif

    out = Path(out_dir)
    height, width = result.maps.shape[1:]
    scale = max(1, 768 // max(height, width))

    def picture(maps: np.ndarray) -> np.ndarray:
        return image_grid([upscale(class_rgb(m, legend), scale) for m in maps], ncols=1)

    hold = [result.frames[-1]] * max(1, int(fps))  # linger on the finished map before looping
    return {
        "png": save_png(out / "panorama.png", picture(result.maps)),
        "gif": write_gif(out / "panorama_reveal.gif", [picture(f) for f in [*result.frames, *hold]], fps=fps),
        "npz": write_npz(out / "panorama.npz", {"maps": result.maps, "windows": np.array(result.windows)}),
    }


# ------------------------------------------------------------------------------------------------ realism


def generate_samples(
    model: LandCoverRandAR,
    n: int,
    steps: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    covariates: Tensor | None = None,
    lonlat: Tensor | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """``n`` samples (n, H, W) int64 in batches, and the seconds spent decoding them.

    Sample i is conditioned on ``covariates[i]`` / ``lonlat[i]`` when those are given.
    """
    if n < 1 or batch_size < 1:
        raise UserError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    generator = make_generator(model, seed)
    pieces = []
    began = time.perf_counter()
    for begin in range(0, n, batch_size):
        chunk = slice(begin, min(begin + batch_size, n))
        batch = decoding.sample(
            model,
            n=chunk.stop - chunk.start,
            steps=steps,
            temperature=temperature,
            top_k=top_k,
            covariates=covariates[chunk] if covariates is not None else None,
            lonlat=lonlat[chunk] if lonlat is not None else None,
            generator=generator,
        )
        pieces.append(batch.cpu())
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    return torch.cat(pieces).numpy().astype(np.int64), seconds


def spread_indices(total: int, n: int) -> np.ndarray:
    """``n`` indices spread evenly over ``range(total)``: test chips are stored block by block, so the first
    ones all come from one corner of the map and would be a biased reference."""
    if not 1 <= n <= total:
        raise UserError(f"cannot pick {n} of {total} chips")
    return np.round(np.linspace(0, total - 1, n)).astype(np.int64)


def steps_name(steps: int | None) -> str:
    return "sequential" if steps is None else f"parallel_{steps}"


@dataclass
class RealismResult:
    samples: dict[str, np.ndarray]  # decoding setting name -> (n, H, W)
    seconds: dict[str, float]
    report: dict[str, dict[str, dict[str, float]]]  # see evaluate.realism_report
    reference: np.ndarray
    baselines: dict[str, np.ndarray] = field(default_factory=dict)  # "context_model" -> (n, H, W) samples
    notes: list[str] = field(default_factory=list)  # what a reader should know: chips dropped, baselines missing

    def summary(self) -> dict[str, Any]:
        n = next(iter(self.samples.values())).shape[0]
        sequential = {name: row["value"] for name, row in self.report.get("sequential", {}).items()}
        settings = {}
        for name, seconds in self.seconds.items():
            metrics = {metric: row["value"] for metric, row in self.report[name].items()}
            settings[name] = {
                "seconds": seconds,
                "samples_per_s": n / seconds if seconds > 0 else math.inf,
                "metrics": metrics,
                "max_gap_to_sequential": evaluate.max_relative_gap(metrics, sequential) if sequential else None,
            }
        return {
            "n": n,
            "notes": self.notes,
            "settings": settings,
            "gaps_to_test": {name: gaps_to_reference(table) for name, table in self.report.items()},
            "report": self.report,
            "table": evaluate.format_report(self.report),
        }


def gaps_to_reference(table: dict[str, dict[str, float]]) -> dict[str, float]:
    """The relative difference of each landscape metric, the single-pixel share as a ratio (the speckle target is
    one) and the class-histogram L1 distance, from one entry of :func:`evaluate.realism_report`."""
    gaps = {metric: table[metric]["relative_difference"] for metric in evaluate.LANDSCAPE_METRICS}
    single = table["single_pixel_share"]
    gaps["single_pixel_ratio"] = single["value"] / single["reference"] if single["reference"] > 0 else math.nan
    gaps["class_l1"] = table["class_l1"]["value"]
    return gaps


def sample_realism(
    model: LandCoverRandAR,
    reference: np.ndarray,
    n: int,
    steps_list: Sequence[int | None] = (None, 16),
    temperature: float = 1.0,
    covariates: Tensor | None = None,
    lonlat: Tensor | None = None,
    batch_size: int = 64,
    seed: int = 0,
    context: CausalContextModel | None = None,
) -> RealismResult:
    """Draw ``n`` samples per decoding setting and compare each set with the ``reference`` test chips (n, H, W)
    (:func:`evaluate.realism_report`, which adds the shuffled-pixel baseline and the noise floor). With a fitted
    ``context`` model, ``n`` maps drawn from it in raster order are compared too (key ``"context_model"``): the
    4-neighbour Markov-chain baseline. Conditional models draw sample i with the covariates / lon-lat of reference
    chip i. Every setting starts from the same seed."""
    reference = np.asarray(reference)[:n]
    if reference.shape[0] < n:
        raise UserError(f"realism: asked for {n} samples but only {reference.shape[0]} test chips to compare with")
    samples, seconds = {}, {}
    for steps in steps_list:
        name = steps_name(steps)
        samples[name], seconds[name] = generate_samples(
            model, n, steps, temperature, None, covariates, lonlat, batch_size, seed
        )
    extra = {}
    if context is not None:
        extra["context_model"] = context.sample(n, *reference.shape[1:], np.random.default_rng(seed))
    report = evaluate.realism_report({**samples, **extra}, reference, model.config.n_classes, seed=seed)
    notes = [
        f"{name}: {len(evaluate.first_occurrences(maps))} of {len(maps)} samples distinct; duplicates are dropped "
        "before comparing, as they are from the test chips"
        for name, maps in {**samples, **extra}.items()
    ]
    return RealismResult(samples, seconds, report, reference, extra, notes)


def write_realism(
    result: RealismResult, legend: Legend, out_dir: str | os.PathLike[str], columns: int = 6
) -> dict[str, Path]:
    """``realism.json`` (summary, per-setting speed and metrics, gaps to the test chips, text table) and
    ``realism_panel.png``: a row of test chips, a row per decoding setting, a row of context-model samples (when
    there are any) and a row of the shuffled baseline."""
    from landformer.core.viz import save_panel

    out = Path(out_dir)
    columns = min(columns, result.reference.shape[0])
    rows = {
        "test": result.reference,
        **result.samples,
        **{name.replace("_", " "): maps for name, maps in result.baselines.items()},
        "shuffled": evaluate.shuffled_baseline(result.reference),
    }
    images, titles = [], []
    for name, maps in rows.items():
        for i in range(columns):
            images.append(np.asarray(maps[i], dtype=np.int64))
            titles.append(f"{name} {i + 1}")
    return {
        "json": write_json(out / "realism.json", result.summary()),
        "panel": save_panel(out / "realism_panel.png", images, titles, ncols=columns, legend=legend, panel_px=128),
    }
