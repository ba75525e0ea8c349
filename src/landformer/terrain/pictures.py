"""Pictures of elevation tiles for the eye: shaded relief coloured by height, hillshades and error maps, upscaled
so that a 32 px tile reads on a screen. Training, reconstruction, sampling and evaluation all draw with these."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from landformer.core.viz import elevation_rgb, hillshade, image_grid, save_png, upscale


def elevation_picture(
    elevation: np.ndarray, pixel_size: float, scale: int = 4, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """A shaded-relief RGB picture of one DEM tile, upscaled for the eye; ``value_range`` fixes the colours
    (so a reconstruction is coloured like its input)."""
    vmin, vmax = value_range if value_range is not None else (None, None)
    return upscale(elevation_rgb(elevation, pixel_size, vmin=vmin, vmax=vmax), scale)


def hillshade_picture(elevation: np.ndarray, pixel_size: float, scale: int = 4) -> np.ndarray:
    return upscale(np.round(hillshade(elevation, pixel_size) * 255).astype(np.uint8), scale)


def error_picture(error: np.ndarray, limit: float, scale: int = 4) -> np.ndarray:
    """|error| in grey: black 0, white ``limit`` metres or more."""
    grey = np.clip(np.abs(error) / max(limit, 1e-9), 0.0, 1.0)
    return upscale(np.round(grey * 255).astype(np.uint8), scale)


def save_hillshade_grid(path: Path, tiles: np.ndarray, pixel_size: float, ncols: int | None = None) -> Path:
    """Several DEM tiles as one PNG of shaded-relief pictures."""
    pictures = [elevation_picture(tile, pixel_size) for tile in tiles]
    return save_png(path, image_grid(pictures, ncols=ncols))
