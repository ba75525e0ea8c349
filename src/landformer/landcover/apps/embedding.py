"""``landcover embed-plot``: UMAP (or PCA for a handful of points) of the learned class embeddings, the
position instructions, or mean hidden states of chips."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from landformer.core.errors import UserError
from landformer.core.io import write_npz
from landformer.core.legend import Legend
from landformer.landcover import evaluate, plots
from landformer.landcover.model import LandCoverRandAR, random_orders
from landformer.landcover.plots import EmbeddingPoints

EmbedWhat = Literal["classes", "positions", "chips"]


MIN_UMAP_POINTS = 32  # below this UMAP's neighbour graph says little; PCA shows so few points faithfully


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
        "png": plots.plot_embedding(out / f"embed_{what}.png", coords, points, used, note),
        "npz": write_npz(out / f"embed_{what}.npz", {"coords": coords, "vectors": points.vectors}),
    }
    return EmbedPlot(coords, used, note, paths)
