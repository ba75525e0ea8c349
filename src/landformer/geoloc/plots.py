"""The map people look at first: true places and predictions over the Natural Earth continents."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from landformer.core.raster import open_raster
from landformer.core.viz import new_figure, save_figure
from landformer.synth.packaged import natural_earth_countries

MAP_WIDTH_PX = 1400


def map_extent(latitudes: Sequence[np.ndarray], longitudes: Sequence[np.ndarray]) -> tuple[float, float, float, float]:
    """(west, south, east, north) around every point with a 10 % margin (at least 0.02 degree), inside the globe."""
    lat = np.concatenate([np.asarray(v, np.float64).ravel() for v in latitudes])
    lon = np.concatenate([np.asarray(v, np.float64).ravel() for v in longitudes])
    margin_lon = max(0.1 * (lon.max() - lon.min()), 0.02)
    margin_lat = max(0.1 * (lat.max() - lat.min()), 0.02)
    return (
        max(-180.0, lon.min() - margin_lon),
        max(-90.0, lat.min() - margin_lat),
        min(180.0, lon.max() + margin_lon),
        min(90.0, lat.max() + margin_lat),
    )


def continents_background(extent: tuple[float, float, float, float], width_px: int) -> np.ndarray:
    """(H, W) Natural Earth continent codes (0 = sea) over ``extent`` at about ``width_px`` columns."""
    resolution = (extent[2] - extent[0]) / width_px
    with tempfile.TemporaryDirectory() as tmp:
        path = natural_earth_countries(Path(tmp) / "continents.tif", extent, resolution, "continent", allow_large=True)
        with open_raster(path) as dataset:
            return dataset.read(1)


def save_prediction_map(
    path: str | os.PathLike[str],
    true_latitude: np.ndarray,
    true_longitude: np.ndarray,
    predicted_latitude: np.ndarray,
    predicted_longitude: np.ndarray,
    regions: Sequence[str],
    title: str,
) -> Path:
    """True places (dots) and predictions (crosses) coloured by region, joined by thin lines, over the
    continents (grey) and the sea (pale blue). Lines are not drawn for pairs on both sides of the antimeridian."""
    # matplotlib is imported here: it takes about a second, which `geoloc evaluate --no-map` need not pay.
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D

    extent = map_extent([true_latitude, predicted_latitude], [true_longitude, predicted_longitude])
    west, south, east, north = extent
    aspect = (north - south) / (east - west)
    width_px = MAP_WIDTH_PX
    height_px = int(np.clip(width_px * aspect, 300, 1400)) + 80
    background = continents_background(extent, 900)
    figure = new_figure(width_px, height_px)
    axes = figure.add_axes((0.06, 0.09, 0.82, 0.84))
    # Sea (code 0) pale blue, every continent grey; explicit limits so an all-land window is not drawn as sea.
    land_codes = int(max(background.max(), 1))
    colours = ListedColormap(["#dcebf5"] + ["#d4d4d4"] * land_codes)
    axes.imshow(
        background,
        extent=(west, east, south, north),
        cmap=colours,
        vmin=0,
        vmax=land_codes,
        interpolation="nearest",
        aspect="auto",
    )
    names = sorted(set(regions))
    region_array = np.asarray(regions, dtype=object)
    handles = []
    for index, name in enumerate(names):
        colour = f"C{index % 10}"
        members = region_array == name
        t_lat, t_lon = np.asarray(true_latitude)[members], np.asarray(true_longitude)[members]
        p_lat, p_lon = np.asarray(predicted_latitude)[members], np.asarray(predicted_longitude)[members]
        for a_lat, a_lon, b_lat, b_lon in zip(t_lat, t_lon, p_lat, p_lon, strict=True):
            if abs(a_lon - b_lon) <= 180:
                axes.plot([a_lon, b_lon], [a_lat, b_lat], color=colour, linewidth=0.5, alpha=0.5)
        handles.append(axes.scatter(t_lon, t_lat, s=14, color=colour, edgecolors="black", linewidths=0.3, label=name))
        axes.scatter(p_lon, p_lat, s=18, color=colour, marker="x", linewidths=1.0, zorder=4)
    handles.append(Line2D([], [], color="black", marker="o", linestyle="", markerfacecolor="none", label="true place"))
    handles.append(Line2D([], [], color="black", marker="x", linestyle="", label="prediction"))
    axes.set_xlim(west, east)
    axes.set_ylim(south, north)
    axes.set_xlabel("longitude")
    axes.set_ylabel("latitude")
    axes.set_title(title, fontsize=11)
    figure.legend(handles=handles, loc="center right", fontsize=9, frameon=False)
    return save_figure(figure, path)
