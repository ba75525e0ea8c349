"""``landcover panorama``: outpaint a map wider (and taller) than the chips window by window, each new window
conditioned on the part it shares with what is already drawn."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from landformer.core.errors import UserError
from landformer.core.io import write_npz
from landformer.core.legend import Legend
from landformer.core.viz import save_png, write_gif
from landformer.landcover import decoding, plots
from landformer.landcover.apps.common import (
    check_region,
    generator_for,
    progress_bar,
    window_starts,
)
from landformer.landcover.model import LandCoverRandAR


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
    check_region(model, height, width, "the panorama")
    if n < 1:
        raise UserError(f"panorama: n must be >= 1, got {n}")
    overlap = size // 2 if overlap is None else overlap
    windows = [(r, c) for r in window_starts(height, size, overlap) for c in window_starts(width, size, overlap)]
    generator = generator_for(model, seed)
    canvas = torch.full((n, height, width), -1, dtype=torch.long)
    frames: list[np.ndarray] = [canvas.numpy().astype(np.int16)]
    drawn_windows: list[tuple[int, int]] = []
    began = time.perf_counter()
    bar = progress_bar(len(windows), "panorama windows", progress)
    for row, col in windows:
        known = canvas[:, row : row + size, col : col + size].clone()
        bar.update(1)
        if bool((known >= 0).all()):
            continue
        window_frames: list[Tensor] = []
        drawn = decoding.sample(
            model,
            known=known,
            steps=steps,
            temperature=temperature,
            top_k=top_k,
            generator=generator,
            on_step=window_frames.append,
        ).cpu()
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
    out = Path(out_dir)

    def picture(maps: np.ndarray) -> np.ndarray:
        return plots.class_grid(maps, legend, side=768, ncols=1)

    hold = [result.frames[-1]] * max(1, int(fps))  # linger on the finished map before looping
    return {
        "png": save_png(out / "panorama.png", picture(result.maps)),
        "gif": write_gif(out / "panorama_reveal.gif", [picture(f) for f in [*result.frames, *hold]], fps=fps),
        "npz": write_npz(out / "panorama.npz", {"maps": result.maps, "windows": np.array(result.windows)}),
    }
