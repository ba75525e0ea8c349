"""``landcover gibbs``: many chains, each cell (or block of cells) redrawn from p(x_block | rest) per sweep."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from landformer.core.io import write_json, write_npz
from landformer.core.legend import Legend
from landformer.core.viz import write_gif
from landformer.landcover import decoding, evaluate, plots
from landformer.landcover.apps.common import (
    generator_for,
    progress_bar,
)
from landformer.landcover.model import LandCoverRandAR


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
    generator = generator_for(model, seed)
    n_classes = model.config.n_classes
    frames = [start.numpy().astype(np.int16)]
    began = time.perf_counter()
    bar = progress_bar(sweeps, "gibbs sweeps", progress)
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


def write_gibbs(run: GibbsRun, legend: Legend, out_dir: str | os.PathLike[str], fps: float = 4.0) -> dict[str, Path]:
    """``gibbs_frames.npz`` (frames, class_fractions), ``gibbs.gif`` (all chains, one frame per sweep),
    ``class_fractions.json`` and ``class_fractions.png`` (share of each class per sweep)."""
    out = Path(out_dir)
    paths = {
        "frames": write_npz(out / "gibbs_frames.npz", {"frames": run.frames, "class_fractions": run.class_fractions}),
        "gif": write_gif(
            out / "gibbs.gif", [plots.class_grid(frame, legend, side=128) for frame in run.frames], fps=fps
        ),
    }
    record = {
        "sweeps": run.frames.shape[0] - 1,
        "chains": run.frames.shape[1],
        "seconds": run.seconds,
        "classes": legend.names,
        "class_fractions": [[float(v) for v in row] for row in run.class_fractions],
    }
    paths["fractions"] = write_json(out / "class_fractions.json", record)
    paths["fractions_png"] = plots.plot_class_fractions(out / "class_fractions.png", run.class_fractions, legend)
    return paths
