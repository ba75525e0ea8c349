"""Pictures people would rather look at than read: class maps, hillshades, panels, GIFs."""

from __future__ import annotations

import numpy as np

from landformer.core.legend import Legend

NODATA_RGB = (255, 255, 255)


def class_rgb(indices: np.ndarray, legend: Legend, nodata_rgb: tuple[int, int, int] = NODATA_RGB) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours of the legend; negative indices (nodata) get ``nodata_rgb``."""
    indices = np.asarray(indices)
    palette = np.vstack([legend.palette(), np.array(nodata_rgb, dtype=np.uint8)[None]])
    lookup = np.where((indices >= 0) & (indices < legend.n_classes), indices, legend.n_classes)
    return palette[lookup.astype(np.int64)]


def hillshade(
    elevation: np.ndarray,
    pixel_size: float = 1.0,
    azimuth: float = 315.0,
    altitude: float = 45.0,
    z_factor: float = 1.0,
) -> np.ndarray:
    """Lambertian hillshade in [0, 1] of a (H, W) elevation array; light from ``azimuth`` degrees clockwise
    from north at ``altitude`` degrees above the horizon (the GIS convention). NaNs shade as 0.5."""
    z = np.asarray(elevation, dtype=np.float64) * z_factor
    filled = np.where(np.isfinite(z), z, np.nanmean(z) if np.isfinite(z).any() else 0.0)
    dz_drow, dz_dx = np.gradient(filled, pixel_size)
    dz_dnorth = -dz_drow  # rows grow southwards
    # Cosine between the surface normal (-dz/dx, -dz/dnorth, 1) and the unit vector towards the sun.
    az, alt = np.deg2rad(azimuth), np.deg2rad(altitude)
    sun_east, sun_north, sun_up = np.sin(az) * np.cos(alt), np.cos(az) * np.cos(alt), np.sin(alt)
    shade = (-dz_dx * sun_east - dz_dnorth * sun_north + sun_up) / np.sqrt(1.0 + dz_dx**2 + dz_dnorth**2)
    shade = np.clip(shade, 0.0, 1.0)
    return np.where(np.isfinite(z), shade, 0.5)
