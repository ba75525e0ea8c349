"""A world on disk: :func:`make_world` writes the generated layers as aligned GeoTIFFs on one EPSG:5070 grid plus
``world.json``, and :func:`load_world` reads that description back as a :class:`World` of file paths.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rasterio.transform import Affine

from landformer.core.errors import UserError
from landformer.core.io import read_json, require_memory, write_json
from landformer.core.legend import load_legend
from landformer.core.raster import write_geotiff
from landformer.synth.world.generate import HM_YEARS, PEAK_BYTES_PER_PIXEL, generate_layers

CRS = "EPSG:5070"  # NLCD's CONUS Albers Equal Area
# Upper-left corner on the NLCD 30 m grid (NLCD's origin is x=-2493045, y=3310005), in Virginia's Valley and Ridge.
ORIGIN_X, ORIGIN_Y = 1_469_985.0, 1_849_995.0
MIN_SIZE = 32


@dataclass
class World:
    """Where a written world lives; every raster shares one grid (``crs``, ``pixel_size``, ``size`` x ``size``)."""

    folder: Path
    elevation: Path  # float32 metres, nodata NaN
    landcover: Path  # uint8 NLCD codes (legend "nlcd"), nodata 0
    hm: list[Path]  # hm_1990.tif ... hm_2020.tif, float32 in [0, 1]
    hm_years: list[int]  # [1990, 1995, ..., 2020]
    imagery: Path  # 3-band uint8 RGB consistent with land cover and relief
    size: int
    seed: int
    crs: str
    pixel_size: float
    # landcover_1990.tif ... landcover_2020.tif (one per HM year); empty for worlds written before epochs existed
    landcover_series: list[Path] = field(default_factory=list)

    def landcover_of(self, year: int) -> Path:
        """The land-cover epoch of ``year``; a year without one, or a world without epochs, is a UserError."""
        if not self.landcover_series:
            raise UserError(
                f"world in {self.folder} has no land-cover epochs (written by an older version); regenerate it with "
                "`landformer synth world`"
            )
        if year not in self.hm_years:
            raise UserError(
                f"world in {self.folder} has land cover for the years {', '.join(map(str, self.hm_years))}, not {year}"
            )
        return self.landcover_series[self.hm_years.index(year)]


def world_transform(pixel_size: float) -> Affine:
    """Affine transform of the world grid: north-up, upper-left corner at (ORIGIN_X, ORIGIN_Y) in EPSG:5070."""
    return Affine(pixel_size, 0.0, ORIGIN_X, 0.0, -pixel_size, ORIGIN_Y)


def make_world(out: Path, size: int = 256, seed: int = 0, pixel_size: float = 30.0) -> World:
    """Generate the world and write it to ``out`` as aligned GeoTIFFs plus ``world.json``.

    Same (size, seed, pixel_size), same bytes. Layers: ``elevation.tif`` (float32 m, nodata NaN),
    ``landcover.tif`` (uint8 NLCD codes, nodata 0), ``hm_<year>.tif`` (float32 in [0, 1]) for 1990..2020 every
    5 years, ``imagery.tif`` (3-band uint8 RGB).
    """
    if not isinstance(size, numbers.Integral) or size < MIN_SIZE:
        raise UserError(f"world size must be an integer of at least {MIN_SIZE} pixels, got {size!r}")
    if not (isinstance(pixel_size, numbers.Real) and np.isfinite(pixel_size) and pixel_size > 0):
        raise UserError(f"world pixel size must be a positive number of metres, got {pixel_size!r}")
    size = int(size)
    require_memory(size * size * PEAK_BYTES_PER_PIXEL, f"a world of {size} x {size} pixels")
    out = Path(out)
    layers = generate_layers(size, seed, pixel_size)
    transform = world_transform(pixel_size)
    tags = {"generator": "landformer.synth.world", "seed": seed, "size": size}
    elevation = write_geotiff(
        out / "elevation.tif",
        layers.elevation,
        transform,
        CRS,
        nodata=float("nan"),
        band_names=["elevation_m"],
        tags=tags,
        units=["m"],
    )
    landcover = write_geotiff(
        out / "landcover.tif",
        layers.landcover,
        transform,
        CRS,
        nodata=0,
        band_names=["nlcd"],
        tags=tags | {"legend": "nlcd"},
        legend=load_legend("nlcd"),
    )
    hm = [
        write_geotiff(
            out / f"hm_{year}.tif", grid, transform, CRS, nodata=float("nan"), band_names=[f"hm_{year}"], tags=tags
        )
        for year, grid in zip(HM_YEARS, layers.hm, strict=True)
    ]
    imagery = write_geotiff(
        out / "imagery.tif", layers.imagery, transform, CRS, band_names=["red", "green", "blue"], tags=tags
    )
    series = [
        write_geotiff(
            out / f"landcover_{year}.tif",
            grid,
            transform,
            CRS,
            nodata=0,
            band_names=[f"nlcd_{year}"],
            tags=tags | {"legend": "nlcd", "year": year},
            legend=load_legend("nlcd"),
        )
        for year, grid in zip(HM_YEARS, layers.landcover_series, strict=True)
    ]
    codes, counts = np.unique(layers.landcover, return_counts=True)
    write_json(
        out / "world.json",
        {
            "generator": "landformer.synth.world",
            "size": size,
            "seed": seed,
            "crs": CRS,
            "pixel_size": pixel_size,
            "transform": list(transform)[:6],
            "legend": "nlcd",
            "elevation": elevation.name,
            "landcover": landcover.name,
            "hm": [path.name for path in hm],
            "hm_years": HM_YEARS,
            "imagery": imagery.name,
            "landcover_series": [path.name for path in series],
            "class_fractions": {
                str(code): round(count / layers.landcover.size, 5) for code, count in zip(codes, counts, strict=True)
            },
        },
    )
    return World(out, elevation, landcover, hm, list(HM_YEARS), imagery, size, seed, CRS, float(pixel_size), series)


WORLD_KEYS = ("size", "seed", "crs", "pixel_size", "elevation", "landcover", "hm", "hm_years", "imagery")


def load_world(folder: Path) -> World:
    """The world written by :func:`make_world` in ``folder``; a missing or incomplete world is a UserError."""
    folder = Path(folder)
    meta = read_json(folder / "world.json", "world description")
    if not isinstance(meta, dict):
        raise UserError(f"{folder / 'world.json'} is not a world description (expected a JSON object)")
    missing = [key for key in WORLD_KEYS if key not in meta]
    if missing:
        raise UserError(
            f"{folder / 'world.json'} lacks {', '.join(missing)}; regenerate it with `landformer synth world`"
        )
    if len(meta["hm"]) != len(meta["hm_years"]):
        raise UserError(f"{folder / 'world.json'}: {len(meta['hm'])} HM files for {len(meta['hm_years'])} years")
    series = list(meta.get("landcover_series", []))
    if series and len(series) != len(meta["hm_years"]):
        raise UserError(f"{folder / 'world.json'}: {len(series)} land-cover epochs for {len(meta['hm_years'])} years")
    files = [meta["elevation"], meta["landcover"], *meta["hm"], meta["imagery"], *series]
    absent = [name for name in files if not (folder / name).is_file()]
    if absent:
        raise UserError(f"world in {folder} is incomplete: missing {', '.join(absent)}")
    return World(
        folder=folder,
        elevation=folder / meta["elevation"],
        landcover=folder / meta["landcover"],
        hm=[folder / name for name in meta["hm"]],
        hm_years=[int(year) for year in meta["hm_years"]],
        imagery=folder / meta["imagery"],
        size=int(meta["size"]),
        seed=int(meta["seed"]),
        crs=str(meta["crs"]),
        pixel_size=float(meta["pixel_size"]),
        landcover_series=[folder / name for name in series],
    )
