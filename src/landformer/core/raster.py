"""Rasters: open anything GDAL reads, windowed reads, pixel lon/lat, alignment, GeoTIFF writing.

All reads are windowed so memory does not grow with the raster's size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.transform import Affine

from landformer.core.errors import UserError
from landformer.core.io import atomic_path, require_file


def open_raster(path: str | os.PathLike[str], assume_crs: str | None = None) -> rasterio.DatasetReader:
    """Open a raster for reading; a missing file, a non-raster or a raster without CRS is a UserError.

    ``assume_crs`` (e.g. ``"EPSG:5070"``) is used for rasters that carry no CRS; without it they are refused.
    """
    path = require_file(path, "raster")
    try:
        dataset = rasterio.open(path)
    except RasterioIOError as err:
        raise UserError(f"{path} is not a raster GDAL can open: {str(err).splitlines()[0]}") from None
    if dataset.crs is None:
        if assume_crs is None:
            dataset.close()
            raise UserError(f"{path} has no CRS; pass --assume-crs (e.g. EPSG:4326) if you know it")
        dataset.close()
        dataset = rasterio.open(path, crs=CRS.from_user_input(assume_crs))  # type: ignore[call-overload]
    return dataset


def write_geotiff(
    path: str | os.PathLike[str],
    array: np.ndarray,
    transform: Affine,
    crs: CRS | str,
    nodata: float | None = None,
    band_names: list[str] | None = None,
    tags: dict[str, Any] | None = None,
) -> Path:
    """Write a (bands, H, W) or (H, W) array as a tiled, compressed GeoTIFF, atomically."""
    data = array[None] if array.ndim == 2 else array
    if data.ndim != 3:
        raise ValueError(f"expected a (bands, H, W) or (H, W) array, got shape {array.shape}")
    bands, height, width = data.shape
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": bands,
        "dtype": data.dtype,
        "crs": CRS.from_user_input(crs),
        "transform": transform,
        "nodata": nodata,
        "compress": "deflate",
        "tiled": height >= 256 and width >= 256,
    }
    if profile["tiled"]:
        profile.update(blockxsize=256, blockysize=256)
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        if band_names:
            for band, name in enumerate(band_names, start=1):
                dst.set_band_description(band, name)
        if tags:
            dst.update_tags(**{key: str(value) for key, value in tags.items()})
    return Path(path)
