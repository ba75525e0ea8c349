"""Sampling terrain tiles from scratch: :func:`sample` is the entry point (``terrain sample``: a hillshade PNG and
a GeoTIFF on the training DEM's grid); :func:`sample_tiles` is the same draw as arrays in metres, for code that
draws its own pictures. Growing maps without end (``expand``, ``world``) is in ``terrain/outpaint.py``."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landformer.core.errors import UserError
from landformer.core.io import write_json
from landformer.core.legend import Legend
from landformer.core.raster import parse_crs, write_geotiff
from landformer.terrain.export import TerrainGenerator, load
from landformer.terrain.pictures import save_hillshade_grid


def sample_tiles(
    generator: TerrainGenerator,
    count: int,
    seed: int,
    offset: float | None = None,
    scale: float | None = None,
    condition_class: int | None = None,
) -> np.ndarray:
    """(count, S, S) elevation tiles in metres; heights follow the training tiles' medians unless given.

    ``condition_class`` (a class index of the model's legend) conditions every token on that one class.
    """
    for name, value in (("offset", offset), ("scale", scale)):
        if value is not None and not math.isfinite(value):
            raise UserError(f"--{name} {value}: heights need a finite number of metres")
    if scale is not None and scale <= 0:
        raise UserError(f"--scale {scale}: the relief (standard deviation, m) must be positive")
    condition = None
    if condition_class is None:
        condition_class = generator.scale_class()  # a scale-conditioned model draws its reference DEM's style
    if condition_class is not None:
        if not 0 <= condition_class < generator.n_condition_classes:
            raise UserError(
                f"condition class {condition_class} is not one of the model's {generator.n_condition_classes} classes"
            )
        condition = np.full((count, generator.grid, generator.grid), condition_class, dtype=np.int64)
    empty = np.zeros((count, generator.grid, generator.grid), dtype=np.int64)  # a window of nothing but [MASK]
    rng = torch.Generator().manual_seed(seed)
    tokens = generator.decode_windows(empty, np.zeros_like(empty, dtype=bool), rng, condition)
    default_offset, default_scale = generator.default_offset_scale()
    normalized = generator.tokenizer.decode(tokens)
    return generator.to_metres(
        normalized, default_offset if offset is None else offset, default_scale if scale is None else scale
    )


def sample_mosaic(tiles: np.ndarray, gutter: int) -> np.ndarray:
    """(N, S, S) tiles laid out on a square-ish grid, ``gutter`` px of NaN between them: one map of all samples."""
    count, size = len(tiles), tiles.shape[-1]
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    step = size + gutter
    mosaic = np.full((rows * step - gutter, columns * step - gutter), np.nan, dtype=np.float32)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        mosaic[row * step : row * step + size, column * step : column * step + size] = tile
    return mosaic


def sample(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    count: int = 16,
    seed: int = 0,
    pixel_size: float | None = None,
    crs: str | None = None,
    origin: tuple[float, float] | None = None,
    offset: float | None = None,
    scale: float | None = None,
    condition_code: int | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Sample tiles: ``samples.png`` (hillshade grid) and ``samples.tif`` (a mosaic of the samples with nodata
    gutters between them) in ``out``.

    The GeoTIFF is on the grid of the training DEM the model records as reference (its CRS, pixel size and data
    type: int16 stays int16) with its top-left corner at that DEM's, unless ``crs``, ``pixel_size`` (in CRS units)
    or ``origin`` say otherwise; heights follow that DEM's tiles unless ``offset``/``scale`` are given.
    """
    if count < 1:
        raise UserError(f"sample count must be at least 1, got {count}")
    if pixel_size is not None and not pixel_size > 0:
        raise UserError(f"pixel size must be positive, got {pixel_size}")
    generator = load(model, tokenizer)
    grid = generator.map_grid(pixel_size, crs, origin)
    condition_class = None
    if condition_code is not None:
        legend_data = generator.meta.get("condition_legend")
        if legend_data is None:
            raise UserError(f"{generator.source} was trained without condition maps; drop --condition-code")
        legend = Legend.from_dict(legend_data)
        condition_class = int(legend.encode(np.array([condition_code]), source="--condition-code")[0])
    tiles = sample_tiles(generator, count, seed, offset, scale, condition_class)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png = save_hillshade_grid(out / "samples.png", tiles, generator.reference_pixel_size_m)
    values, nodata = grid.cast(sample_mosaic(tiles, gutter=max(tiles.shape[-1] // 4, 1)))
    tif = write_geotiff(
        out / "samples.tif",
        values,
        grid.transform(),
        parse_crs(grid.crs, "--crs"),
        nodata=nodata,
        band_names=["elevation_m"],
        tags={"generator": "landformer.terrain", "seed": seed, "model": str(generator.source), "samples": count},
        units=["m"],
    )
    summary = {
        "png": str(png),
        "geotiff": str(tif),
        "count": count,
        "seed": seed,
        "pixel_size": list(grid.pixel),
        "origin": list(grid.origin),
        "dtype": grid.dtype,
        "crs": grid.crs if len(grid.crs) < 40 else "the training DEM's (WKT in the GeoTIFF)",
    }
    write_json(out / "samples.json", summary)
    return summary
