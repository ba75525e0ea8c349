"""Pictures people would rather look at than read: class maps, hillshades, panels, GIFs.

Arrays are (H, W, 3) uint8 RGB throughout. Figures are drawn with matplotlib's object API on an Agg canvas
(no pyplot, no global state, no display needed). Maps are placed with ``figimage``, pixel for pixel and without
resampling, so a saved class map shows exactly the legend's colours. Every file is written through
:func:`landformer.core.io.atomic_path`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from landformer.core.errors import UserError
from landformer.core.io import atomic_path
from landformer.core.legend import NODATA_INDEX, Legend

NODATA_RGB = (255, 255, 255)
DPI = 100
MAP_SIDE = 512  # default on-screen size (pixels) of the longer side of a map, reached by integer upscaling


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


def _as_rgb(image: np.ndarray, what: str) -> np.ndarray:
    """(H, W) grey or (H, W, 3|4) colour uint8 -> (H, W, 3) uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise UserError(f"{what}: expected uint8 pixels, got {image.dtype} (scale to 0..255 first)")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image[:, :, :3]
    raise UserError(f"{what}: expected an (H, W) or (H, W, 3) image, got shape {image.shape}")


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Repeat every pixel ``scale`` times in both directions (crisp class boundaries, no new colours)."""
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def auto_scale(height: int, width: int, side: int = MAP_SIDE) -> int:
    """Largest integer factor that keeps the longer side within ``side`` pixels (at least 1)."""
    return max(1, side // max(height, width, 1))


def save_png(path: str | os.PathLike[str], rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) or (H, W) uint8 array as a PNG, exactly (PNG is lossless)."""
    import imageio.v3 as iio

    pixels = _as_rgb(rgb, str(path))
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, pixels, extension=".png")
    return Path(path)


def image_grid(
    images: Sequence[np.ndarray],
    nrows: int | None = None,
    ncols: int | None = None,
    pad: int = 2,
    pad_value: int = 255,
) -> np.ndarray:
    """Tile images row by row into one (H, W, 3) uint8 array, with ``pad`` pixels of ``pad_value`` around and
    between cells. Cells take the largest image's size; smaller images sit centred. Missing counts are filled in
    (a near-square grid when both are None); spare cells stay blank."""
    if not images:
        raise UserError("image_grid: no images given")
    tiles = [_as_rgb(image, f"image_grid: image {i}") for i, image in enumerate(images)]
    if nrows is None and ncols is None:
        ncols = math.ceil(math.sqrt(len(tiles)))
    if ncols is None:
        ncols = math.ceil(len(tiles) / nrows)  # type: ignore[operator]
    if nrows is None:
        nrows = math.ceil(len(tiles) / ncols)
    if nrows * ncols < len(tiles):
        raise UserError(f"image_grid: {len(tiles)} images do not fit in {nrows} x {ncols} cells")
    cell_h = max(tile.shape[0] for tile in tiles)
    cell_w = max(tile.shape[1] for tile in tiles)
    grid = np.full((nrows * (cell_h + pad) + pad, ncols * (cell_w + pad) + pad, 3), pad_value, dtype=np.uint8)
    for index, tile in enumerate(tiles):
        row, col = divmod(index, ncols)
        top = pad + row * (cell_h + pad) + (cell_h - tile.shape[0]) // 2
        left = pad + col * (cell_w + pad) + (cell_w - tile.shape[1]) // 2
        grid[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    return grid


def write_gif(path: str | os.PathLike[str], frames: Sequence[np.ndarray], fps: float = 10.0, loop: int = 0) -> Path:
    """Write frames (all the same size) as an animated GIF; ``loop=0`` repeats for ever.

    GIF stores at most 256 colours per frame: maps with few colours come back exactly, photographs are
    quantised. Pillow merges consecutive identical frames into one longer frame (the timing is unchanged).
    """
    import imageio.v3 as iio

    if len(frames) == 0:
        raise UserError(f"{path}: no frames to write")
    stack = [_as_rgb(frame, f"{path}: frame {i}") for i, frame in enumerate(frames)]
    shapes = {frame.shape for frame in stack}
    if len(shapes) > 1:
        raise UserError(f"{path}: frames differ in size: {sorted(shapes)}")
    if not (fps > 0 and math.isfinite(fps)):
        raise UserError(f"{path}: fps should be a positive number, got {fps}")
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, np.stack(stack), extension=".gif", duration=1000.0 / fps, loop=loop)
    return Path(path)


def new_figure(width_px: int, height_px: int, layout: str | None = None) -> Any:
    """A matplotlib Figure of this pixel size on the Agg canvas, without pyplot's global state.

    Pyplot keeps every figure alive until closed and is not thread-safe; an explicit canvas is neither.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``figure`` as a PNG atomically (temp file + rename), so a crash never leaves half an image."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def _legend_handles(legend: Legend, indices: np.ndarray) -> list[Any]:
    """Swatches for the classes that occur in ``indices`` (plus nodata if any), in legend order."""
    from matplotlib.patches import Patch

    present = np.unique(indices)
    palette = legend.palette() / 255.0
    handles = [
        Patch(facecolor=palette[i], edgecolor="0.3", linewidth=0.5, label=legend.names[i])
        for i in present
        if 0 <= i < legend.n_classes
    ]
    if (present < 0).any():
        handles.append(Patch(facecolor=np.array(NODATA_RGB) / 255.0, edgecolor="0.3", linewidth=0.5, label="nodata"))
    return handles


def _check_indices(indices: np.ndarray, legend: Legend, what: str) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.ndim != 2 or indices.dtype.kind not in "iu":
        raise UserError(
            f"{what}: expected an (H, W) integer array of class indices, got {indices.dtype} {indices.shape}"
        )
    unknown = np.unique(indices[(indices >= legend.n_classes) | ((indices < 0) & (indices != NODATA_INDEX))])
    if unknown.size:
        raise UserError(f"{what}: class indices {unknown.tolist()[:10]} are not in legend '{legend.name}'")
    return indices


LEGEND_ROW_PX = 19  # height of one legend entry at fontsize 9 (used to size panels)
TITLE_PX = 28
MARGIN_PX = 8


def save_class_png(
    path: str | os.PathLike[str],
    indices: np.ndarray,
    legend: Legend,
    title: str | None = None,
    show_legend: bool = True,
    scale: int | None = None,
) -> Path:
    """Save an (H, W) class-index map as a PNG in the legend's colours, with a legend of the classes present.

    The map is drawn unresampled, each class pixel as a ``scale`` x ``scale`` block (``scale`` defaults to the
    largest integer keeping the map within 512 pixels); its top-left corner is ``MARGIN_PX`` from the left edge
    and ``MARGIN_PX`` below the title band (``TITLE_PX`` high when there is a title). Without legend and title
    the PNG is exactly the upscaled map. Nodata pixels are white.
    """
    indices = _check_indices(indices, legend, str(path))
    scale = scale or auto_scale(*indices.shape)
    rgb = upscale(class_rgb(indices, legend), scale)
    if not show_legend and title is None:
        return save_png(path, rgb)
    map_h, map_w = rgb.shape[:2]
    title_h = TITLE_PX if title else 0
    figure = new_figure(map_w + 2 * MARGIN_PX, map_h + 2 * MARGIN_PX + title_h)
    handles = _legend_handles(legend, indices) if show_legend else []
    drawn_legend, legend_w, legend_h = None, 0, 0
    if handles:
        # Draw the legend once to measure it, then size the figure around map + legend.
        drawn_legend = figure.legend(handles=handles, loc="upper left", frameon=False, fontsize=9)
        box = drawn_legend.get_window_extent(figure.canvas.get_renderer())
        legend_w, legend_h = math.ceil(box.width) + MARGIN_PX, math.ceil(box.height)
    width = 2 * MARGIN_PX + map_w + legend_w
    height = title_h + 2 * MARGIN_PX + max(map_h, legend_h)
    figure.set_size_inches(width / DPI, height / DPI)
    figure.figimage(rgb, xo=MARGIN_PX, yo=height - title_h - MARGIN_PX - map_h, origin="upper")
    if title:
        figure.text(MARGIN_PX / width, 1 - 6 / height, title, ha="left", va="top", fontsize=11)
    if drawn_legend is not None:
        drawn_legend.set_bbox_to_anchor(((2 * MARGIN_PX + map_w) / width, 1 - (title_h + MARGIN_PX) / height))
    return save_figure(figure, path)


def elevation_range(elevation: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values, widened to a 1 m span for flat or empty tiles."""
    z = np.asarray(elevation, dtype=np.float64)
    finite = z[np.isfinite(z)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return lo, max(hi, lo + 1.0) if hi <= lo else hi


def elevation_rgb(
    elevation: np.ndarray,
    pixel_size: float,
    vmin: float | None = None,
    vmax: float | None = None,
    shade_strength: float = 0.6,
) -> np.ndarray:
    """(H, W) elevation in metres -> (H, W, 3) uint8: the ``terrain`` colormap over [vmin, vmax] (default: the
    data range), darkened by the hillshade: colour * (1 - s + s * shade). NaNs are grey."""
    import matplotlib

    z = np.asarray(elevation, dtype=np.float64)
    if z.ndim != 2:
        raise UserError(f"elevation: expected an (H, W) array, got shape {z.shape}")
    data_lo, data_hi = elevation_range(z)
    lo = data_lo if vmin is None else vmin
    hi = data_hi if vmax is None else vmax
    finite = np.isfinite(z)
    position = np.clip((np.where(finite, z, lo) - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    colour = matplotlib.colormaps["terrain"](position)[..., :3]
    shade = hillshade(z, pixel_size=pixel_size)
    blended = colour * (1.0 - shade_strength + shade_strength * shade[..., None])
    blended[~finite] = 0.5
    return np.round(blended * 255.0).astype(np.uint8)


COLORBAR_PX = 90


def save_elevation_png(
    path: str | os.PathLike[str],
    elevation: np.ndarray,
    pixel_size: float,
    title: str | None = None,
    scale: int | None = None,
) -> Path:
    """Save a DEM as a shaded-relief PNG (:func:`elevation_rgb`, upscaled like :func:`save_class_png`) with a
    colour bar in metres. ``pixel_size`` (metres) sets the slope of the hillshade."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    lo, hi = elevation_range(elevation)
    rgb = elevation_rgb(elevation, pixel_size, vmin=lo, vmax=hi)
    rgb = upscale(rgb, scale or auto_scale(*rgb.shape[:2]))
    title_h = TITLE_PX if title else 0
    map_h, map_w = rgb.shape[:2]
    width, height = MARGIN_PX + map_w + COLORBAR_PX, map_h + 2 * MARGIN_PX + title_h
    figure = new_figure(width, height)
    figure.figimage(rgb, xo=MARGIN_PX, yo=MARGIN_PX, origin="upper")
    if title:
        figure.text(MARGIN_PX / width, 1 - 6 / height, title, ha="left", va="top", fontsize=11)
    bar = figure.add_axes(((MARGIN_PX * 2 + map_w) / width, MARGIN_PX / height, 14 / width, map_h / height))
    figure.colorbar(ScalarMappable(Normalize(lo, hi), "terrain"), cax=bar, label="elevation (m)")
    return save_figure(figure, path)


def save_titled_rows(
    path: str | os.PathLike[str],
    rows: Sequence[tuple[str, np.ndarray]],
    legend: Legend | None = None,
    present: np.ndarray | None = None,
) -> Path:
    """Wide (H, W, 3) images stacked top to bottom, each under its title, drawn unresampled, with a legend of the
    class indices ``present`` underneath: comparisons whose rows are strips of chips (real | input | result)."""
    if not rows:
        raise UserError(f"{path}: no rows to draw")
    pictures = [_as_rgb(image, f"{path}: row {i}") for i, (_, image) in enumerate(rows)]
    handles = _legend_handles(legend, np.asarray(present)) if legend is not None and present is not None else []
    columns = 3
    legend_h = (LEGEND_ROW_PX * math.ceil(len(handles) / columns) + MARGIN_PX) if handles else 0
    width = 2 * MARGIN_PX + max(picture.shape[1] for picture in pictures)
    height = sum(TITLE_PX + picture.shape[0] + MARGIN_PX for picture in pictures) + MARGIN_PX + legend_h
    figure = new_figure(width, height)
    if handles:  # drawn once to measure it: long class names widen the figure rather than being cut off
        drawn = figure.legend(handles=handles, loc="lower left", ncols=columns, frameon=False, fontsize=9)
        width = max(width, math.ceil(drawn.get_window_extent(figure.canvas.get_renderer()).width) + 2 * MARGIN_PX)
        figure.set_size_inches(width / DPI, height / DPI)
    top = MARGIN_PX
    for (title, _), picture in zip(rows, pictures, strict=True):
        figure.text(MARGIN_PX / width, 1 - (top + 4) / height, title, ha="left", va="top", fontsize=10)
        top += TITLE_PX
        figure.figimage(picture, xo=MARGIN_PX, yo=height - top - picture.shape[0], origin="upper")
        top += picture.shape[0] + MARGIN_PX
    return save_figure(figure, path)


def save_panel(
    path: str | os.PathLike[str],
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    nrows: int | None = None,
    ncols: int | None = None,
    legend: Legend | None = None,
    panel_px: int = 256,
    present: np.ndarray | None = None,
) -> Path:
    """Several images side by side with a title each, for comparisons (input / target / prediction).

    Images are (H, W, 3) uint8 RGB, or (H, W) class indices when ``legend`` is given; the latter are drawn in
    the legend's colours and a shared legend lists the classes that occur in any of them, or the class indices
    ``present`` when given (for RGB images already drawn in the legend's colours, such as grids of chips).
    """
    from matplotlib.patches import Patch

    if len(titles) != len(images):
        raise UserError(f"{path}: {len(images)} images but {len(titles)} titles")
    if not images:
        raise UserError(f"{path}: no images to draw")
    ncols = ncols or (math.ceil(len(images) / nrows) if nrows else len(images))
    nrows = nrows or math.ceil(len(images) / ncols)
    if nrows * ncols < len(images):
        raise UserError(f"{path}: {len(images)} images do not fit in {nrows} x {ncols} panels")
    pictures, class_maps = [], []
    for i, image in enumerate(images):
        image = np.asarray(image)
        if legend is not None and image.ndim == 2 and image.dtype.kind in "iu":
            class_maps.append(_check_indices(image, legend, f"{path}: image {i}"))
            pictures.append(class_rgb(image, legend))
        else:
            pictures.append(_as_rgb(image, f"{path}: image {i}"))
    handles: list[Patch] = []
    if legend is not None and (class_maps or present is not None):
        shown = np.asarray(present) if present is not None else np.concatenate([m.ravel() for m in class_maps])
        handles = _legend_handles(legend, shown)
    legend_h = (LEGEND_ROW_PX * math.ceil(len(handles) / 3) + MARGIN_PX) if handles else 0
    figure = new_figure(ncols * (panel_px + 2 * MARGIN_PX), nrows * (panel_px + TITLE_PX + MARGIN_PX) + legend_h)
    bottom = legend_h / (figure.get_figheight() * DPI)
    grid = figure.add_gridspec(nrows, ncols, left=0.01, right=0.99, top=0.95, bottom=bottom + 0.01, hspace=0.15)
    for index, (picture, title) in enumerate(zip(pictures, titles, strict=True)):
        axes = figure.add_subplot(grid[divmod(index, ncols)])
        axes.imshow(picture, interpolation="nearest")
        axes.set_title(title, fontsize=10)
        axes.set_axis_off()
    if handles:
        figure.legend(handles=handles, loc="lower center", ncols=3, frameon=False, fontsize=9)
    return save_figure(figure, path)
