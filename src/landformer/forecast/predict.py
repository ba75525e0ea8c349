"""``forecast predict``: forecast a whole raster of any size, tile by tile, into one GeoTIFF per horizon.

**Tiling.** Output blocks of ``tile`` x ``tile`` pixels (a multiple of the GeoTIFF block, so every write fills
whole compressed blocks) are forecast from input tiles ``overlap / 2`` pixels wider on each side, so
neighbouring tiles share ``overlap`` pixels. There the two forecasts are cross-faded with linear weights that
sum to one, which hides the seams a convolutional model leaves where it sees the zero padding of a tile edge.
Each pixel's value is the weighted mean of the tiles covering it, so a model without spatial context (1x1
kernels) gives exactly the untiled result.

**Memory.** Tiles are processed row by row inside vertical panels of at most ``panel_width`` pixels; a panel
keeps a weighted sum for two tile rows and writes a row of blocks as soon as no later tile touches it. Memory
therefore depends on the tile, the panel width and the number of output bands, never on the raster's size. A
panel's edge blends with the tile column beside it; there predict forecasts only a narrow strip of that column
(the overlap plus the network's receptive field), which gives those pixels the very values the whole tile would.

**Speed.** Where the hardware has native bf16 (``precision="auto"``), the convolutions run in bf16 on
channels-last tensors, and on large rasters the LSTM gate arithmetic is compiled into one kernel (see
``export.py``); the cell state, the roll-out and the outputs stay float32.

Inputs are the series' last K steps, on one grid (``align_series`` resamples rasters on another grid); pixels
where none of them is observed come out as nodata, and inputs outside the model's valid range (0..1 for HM) are
refused. Forecasts and interval bounds are clipped to that range. Values are
written in the input rasters' own units (times ``scale``), with their CRS, transform and nodata value.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window
from tqdm import tqdm

from landformer.core.config import check_values
from landformer.core.errors import UserError
from landformer.core.raster import geotiff_writer
from landformer.forecast import export
from landformer.forecast.data import SeriesRasters, SeriesSpec, check_valid_range, resolve_scale
from landformer.forecast.export import ExportedForecaster, Forecast

log = logging.getLogger(__name__)
GDAL_CACHE_BYTES = 128 * 2**20
# Compiling the gate kernel takes 10-40 s and makes the network up to about twice as fast: it pays from a few
# million pixels on; below this size predict stays eager (and tests and the demo stay quick).
COMPILE_MIN_PIXELS = 4096 * 4096

ForecastFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
ReadFn = Callable[[int, int, int, int], tuple[np.ndarray, np.ndarray]]
WriteFn = Callable[[Window, np.ndarray], None]


def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """(tile + overlap,) weights of one tile along one axis: a linear ramp over each ``overlap`` edge strip,
    1 inside. In the strip two neighbours share, their weights sum to exactly 1."""
    side = tile + overlap
    if overlap == 0:
        return np.ones(side, dtype=np.float32)
    centres = np.arange(side) + 0.5
    return np.minimum(1.0, np.minimum(centres / overlap, (side - centres) / overlap)).astype(np.float32)


def check_tiling(tile: int, overlap: int, batch_size: int, panel_width: int) -> None:
    checks = [
        (tile >= 16, f"tile = {tile} should be at least 16 pixels"),
        (overlap >= 0 and overlap % 2 == 0, f"overlap = {overlap} should be an even number of pixels, 0 or more"),
        (overlap <= tile, f"overlap = {overlap} should not exceed the tile ({tile})"),
        (batch_size >= 1, f"batch_size = {batch_size} should be at least 1"),
        (panel_width >= tile, f"panel_width = {panel_width} should be at least one tile ({tile})"),
    ]
    check_values("forecast predict", checks)


def tiled_forecast(
    forecast: ForecastFn,
    read: ReadFn,
    write: WriteFn,
    height: int,
    width: int,
    n_bands: int,
    tile: int = 512,
    overlap: int = 32,
    batch_size: int = 1,
    panel_width: int = 4096,
    progress: bool = True,
    context: int | None = None,
) -> dict[str, int]:
    """Forecast a ``height`` x ``width`` raster tile by tile and hand finished blocks to ``write``.

    ``read(row, col, height, width)`` returns the window's model inputs (K, C, h, w) and covariates (V, h, w)
    with NaN outside the raster; ``forecast(inputs (N, K, C, s, w), covariates (N, V, s, w))`` returns
    (N, n_bands, s, w); ``write(window, values (n_bands, h, w))`` receives every block exactly once, in raster
    order within each panel. ``context`` is how many pixels away an input can change the forecast (its
    receptive-field radius; None: unknown). Returns how many tiles, panel-edge strips and pixels were forecast.

    A panel's edge blends with the tile just outside it, of which only the ``overlap / 2`` columns inside the
    panel count. Those columns see at most ``context`` pixels further out and the tile's own edge on the panel
    side, so a strip of ``context + overlap / 2`` columns ending where the tile ends gives them exactly the
    tile's values, at a fraction of a tile's cost. With ``context`` unknown, or as wide as the tile, the whole
    tile is forecast instead.
    """
    check_tiling(tile, overlap, batch_size, panel_width)
    if height <= tile and width <= tile:
        tile, overlap = max(height, width), 0  # one tile holds the raster: no padding, nothing to blend
    half, side = overlap // 2, tile + overlap
    ramp = blend_weights(tile, overlap)
    weights = np.outer(ramp, ramp)
    n_block_rows, n_block_cols = math.ceil(height / tile), math.ceil(width / tile)
    panel_blocks = max(1, panel_width // tile)
    panels = [(p, min(p + panel_blocks, n_block_cols)) for p in range(0, n_block_cols, panel_blocks)]
    # Width of a strip standing in for the neighbour tile at a panel edge: the tile's columns from ``margin``
    # before the panel edge to its own far edge.
    margin = tile + half if context is None else min(context, tile + half)
    strip = margin + half
    n_strips = sum((p0 > 0) + (p1 < n_block_cols) for p0, p1 in panels) if overlap else 0
    bar = tqdm(
        total=(n_block_cols + n_strips) * n_block_rows,
        desc="forecast tiles",
        unit="tile",
        disable=None if progress else True,
        dynamic_ncols=True,
    )
    # The accumulator holds block rows i-1 and i plus the overlap reaching into row i+1, while tile row i is added.
    acc_rows = 2 * tile + half
    counts = {"tiles": 0, "strips": 0, "tile_pixels": 0}
    with bar:
        for p0, p1 in panels:
            col0, col1 = p0 * tile, min(p1 * tile, width)
            # (left edge, weights' columns) of every tile and edge strip.
            tiles = [(j * tile - half, slice(0, side)) for j in range(p0, p1)]
            strips = []
            if overlap and p0 > 0:
                strips.append((col0 - margin, slice(side - strip, side)))
            if overlap and p1 < n_block_cols:
                strips.append((p1 * tile - half, slice(0, strip)))
            read_col = min(left for left, _ in tiles + strips)
            read_end = max(left + cols.stop - cols.start for left, cols in tiles + strips)
            acc = np.zeros((n_bands + 1, acc_rows, col1 - col0), dtype=np.float32)
            for i in range(n_block_rows):
                inputs, covariates = read(i * tile - half, read_col, side, read_end - read_col)
                for group, kind in ((tiles, "tiles"), (strips, "strips")):
                    for first in range(0, len(group), batch_size):
                        batch = group[first : first + batch_size]
                        offsets = [(left - read_col, left - read_col + cols.stop - cols.start) for left, cols in batch]
                        predictions = forecast(
                            np.stack([inputs[..., a:b] for a, b in offsets]),
                            np.stack([covariates[..., a:b] for a, b in offsets]),
                        )
                        for (left, cols), prediction in zip(batch, predictions, strict=True):
                            _accumulate(acc, prediction, weights[:, cols], left, col0, col1, tile - half)
                        counts[kind] += len(batch)
                        counts["tile_pixels"] += predictions.shape[0] * predictions.shape[-2] * predictions.shape[-1]
                        bar.update(len(batch))
                if i >= 1:
                    _emit(acc, write, (i - 1) * tile, tile, height, col0, col1)
                acc[:, : acc_rows - tile] = acc[:, tile:]
                acc[:, acc_rows - tile :] = 0.0
            _emit(acc, write, (n_block_rows - 1) * tile, tile, height, col0, col1)
    return counts


def _accumulate(
    acc: np.ndarray, prediction: np.ndarray, weights: np.ndarray, tile_col: int, col0: int, col1: int, acc_row: int
) -> None:
    """Add one weighted tile or strip (bands, s, w) whose left edge is global column ``tile_col`` to the panel's
    sums; ``weights`` (s, w) are the blending weights of the tile columns it forecasts."""
    left, right = max(tile_col, col0), min(tile_col + weights.shape[1], col1)
    if left >= right:
        return
    rows = slice(acc_row, acc_row + weights.shape[0])
    tile_cols, acc_cols = slice(left - tile_col, right - tile_col), slice(left - col0, right - col0)
    acc[:-1, rows, acc_cols] += prediction[:, :, tile_cols] * weights[:, tile_cols]
    acc[-1, rows, acc_cols] += weights[:, tile_cols]


def _emit(acc: np.ndarray, write: WriteFn, row: int, tile: int, height: int, col0: int, col1: int) -> None:
    """Write the finished block row at the top of the accumulator (weighted sums / weights)."""
    rows = min(tile, height - row)
    if rows <= 0:
        return
    with np.errstate(invalid="ignore", divide="ignore"):
        values = acc[:-1, :rows] / acc[-1:, :rows]
    write(Window(col0, row, col1 - col0, rows), values)


def forecast_bands(forecaster: ExportedForecaster) -> tuple[list[str], Callable[[Forecast], np.ndarray]]:
    """Band names of one horizon's GeoTIFF and a function stacking a Forecast into (N, H * bands, Y, X)."""
    names = []
    for channel in forecaster.channel_names:
        names.append(channel)
        if forecaster.quantiles:
            names += [f"{channel}_q{forecaster.quantiles[0]:g}", f"{channel}_q{forecaster.quantiles[-1]:g}"]

    def stack(forecast: Forecast) -> np.ndarray:
        parts = [forecast.point] if forecast.lower is None else [forecast.point, forecast.lower, forecast.upper]
        per_channel = np.stack(parts, axis=3)  # (N, H, C, parts, Y, X)
        return per_channel.reshape(per_channel.shape[0], -1, *per_channel.shape[-2:])

    return names, stack


def predict_series(
    model: str | os.PathLike[str],
    spec: SeriesSpec,
    covariates: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    tile: int = 512,
    overlap: int = 32,
    batch_size: int = 1,
    panel_width: int = 4096,
    scale: float | None = None,
    align_series: bool = False,
    assume_crs: str | None = None,
    device: str = "cpu",
    prefix: str = "forecast",
    progress: bool = True,
    precision: str = "auto",
    compile_gates: bool | None = None,
) -> dict[str, Any]:
    """Forecast the ``H`` steps after the series' last raster from its last ``K`` rasters; write
    ``out/{prefix}_{year}.tif`` per horizon (point forecast, then the interval bounds when the model has
    quantile heads, per channel) and return a summary. ``precision``: see
    :class:`~landformer.forecast.export.ExportedForecaster`; ``compile_gates`` compiles the LSTM gate arithmetic
    (None: on rasters of ``COMPILE_MIN_PIXELS`` or more)."""
    start_time = time.perf_counter()
    check_tiling(tile, overlap, batch_size, panel_width)
    forecaster = export.load(model, device, precision)
    k, h = forecaster.n_input_steps, forecaster.n_horizons
    spec.require_steps(k, "predict")
    cadence = spec.cadence or forecaster.cadence or 1
    if forecaster.cadence is not None and spec.cadence is not None and forecaster.cadence != spec.cadence:
        raise UserError(
            f"model {forecaster.source} steps {forecaster.cadence} years at a time, but the series "
            f"{spec.paths[0].name}.. is {spec.cadence} years apart"
        )
    inputs_spec = SeriesSpec(spec.paths[-k:], spec.years[-k:])
    years = [spec.years[-1] + (step + 1) * cadence for step in range(h)]
    out = Path(out)
    with SeriesRasters(inputs_spec, [Path(p) for p in covariates], align_series, assume_crs) as rasters:
        forecaster.check_channels(rasters.n_channels, rasters.covariate_names, str(inputs_spec.paths[0]))
        scale = resolve_scale(scale, rasters)
        grid = rasters.grid
        if compile_gates is None:
            compile_gates = grid.height * grid.width >= COMPILE_MIN_PIXELS
        if compile_gates:
            forecaster.model.compile_gates()
        band_names, stack = forecast_bands(forecaster)
        per_file = len(band_names)
        nodata = rasters.nodata if rasters.nodata is not None else float("nan")

        def read(row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
            values = rasters.read_series(row, col, height, width) / np.float32(scale)
            check_valid_range(values, forecaster.valid_range, inputs_spec.paths, scale, row, col)
            return values, rasters.read_covariates(row, col, height, width)

        model_seconds = 0.0

        def forecast(inputs: np.ndarray, tile_covariates: np.ndarray) -> np.ndarray:
            nonlocal model_seconds
            started = time.perf_counter()
            result = forecaster.forecast(inputs, tile_covariates)
            model_seconds += time.perf_counter() - started
            return stack(result)

        paths = [out / f"{prefix}_{year}.tif" for year in years]
        # Whole blocks are written once each; a small GDAL cache keeps memory independent of the raster's size.
        with contextlib.ExitStack() as writers:
            writers.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES))
            outputs = [
                writers.enter_context(
                    geotiff_writer(
                        path,
                        grid.width,
                        grid.height,
                        per_file,
                        np.float32,
                        grid.transform,
                        grid.crs,
                        nodata=nodata,
                        band_names=band_names,
                        tags={
                            "model": forecaster.source,
                            "horizon": step + 1,
                            "year": year,
                            "inputs": " ".join(str(p) for p in inputs_spec.paths),
                            "scale": scale,
                        },
                    )
                )
                for step, (path, year) in enumerate(zip(paths, years, strict=True))
            ]

            def write(window: Window, values: np.ndarray) -> None:
                values = values * np.float32(scale)
                if not np.isnan(nodata):
                    values[np.isnan(values)] = nodata
                for step, dataset in enumerate(outputs):
                    dataset.write(values[step * per_file : (step + 1) * per_file], window=window)

            counts = tiled_forecast(
                forecast,
                read,
                write,
                grid.height,
                grid.width,
                per_file * h,
                tile=tile,
                overlap=overlap,
                batch_size=batch_size,
                panel_width=panel_width,
                progress=progress,
                context=forecaster.model.receptive_radius(k, h),
            )
    seconds = time.perf_counter() - start_time
    return {
        "files": [str(path) for path in paths],
        "years": years,
        "inputs": [str(path) for path in inputs_spec.paths],
        "band_names": band_names,
        "scale": scale,
        "nodata": None if np.isnan(nodata) else nodata,
        "height": grid.height,
        "width": grid.width,
        "seconds": round(seconds, 3),
        "model_seconds": round(model_seconds, 3),  # inside the network (with its normalization), of `seconds`
        "precision": forecaster.precision,
        "compiled": forecaster.model.gates_compiled,
        "pixels_per_second": grid.height * grid.width / seconds if seconds > 0 else None,
        **counts,
    }
