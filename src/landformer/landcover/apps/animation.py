"""``landcover animate``: a GIF of maps generated pixel by pixel in random order."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor
from tqdm import tqdm

from landformer.core.errors import UserError
from landformer.core.viz import save_png, write_gif
from landformer.landcover import decoding, plots
from landformer.landcover.apps.common import (
    ModelLike,
    generator_for,
    loaded_model,
    to_model_device,
)
from landformer.landcover.apps.sampling import sampling_conditioning


def animate(
    model: ModelLike,
    out: str | os.PathLike[str],
    nrows: int = 3,
    ncols: int = 3,
    temperature: float = 1.0,
    fps: float = 30.0,
    chips: str | os.PathLike[str] | None = None,
    unconditional: bool = False,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """``animation.gif``: an ``nrows`` x ``ncols`` grid of maps generated one pixel per frame in random order
    (undecided pixels white), ending on the finished maps for one second; ``final.png`` is the last frame."""
    loaded = loaded_model(model, device)
    out = Path(out)
    if nrows < 1 or ncols < 1:
        raise UserError(f"nrows and ncols should be at least 1, got {nrows} x {ncols}")
    if not (fps > 0 and math.isfinite(fps)):
        raise UserError(f"fps should be a positive number, got {fps}")
    n = nrows * ncols
    conditioning = sampling_conditioning(loaded, n, chips, None, unconditional, seed)
    frames: list[np.ndarray] = []
    n_cells = loaded.chip_size**2
    progress = tqdm(total=n_cells, desc="animating", unit="pixel", disable=None)

    def add_frame(canvas: Tensor) -> None:
        frames.append(plots.class_grid(canvas.cpu().numpy(), loaded.legend))
        progress.update(1)

    decoding.sample(
        loaded.model,
        n,
        order="random",
        temperature=temperature,
        covariates=to_model_device(conditioning.covariates, loaded),
        lonlat=to_model_device(conditioning.lonlat, loaded),
        generator=generator_for(loaded.model, seed),
        on_step=add_frame,
    )
    progress.close()
    blank = plots.class_grid(np.full((n, loaded.chip_size, loaded.chip_size), -1), loaded.legend)
    frames = [blank, *frames] + [frames[-1]] * max(1, round(fps))
    out.mkdir(parents=True, exist_ok=True)
    gif = write_gif(out / "animation.gif", frames, fps=fps)
    png = save_png(out / "final.png", frames[-1])
    return {"gif": str(gif), "png": str(png), "frames": len(frames), "conditioning": conditioning.source}
