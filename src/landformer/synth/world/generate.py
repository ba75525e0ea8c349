"""A procedural world: elevation, NLCD land cover, a Human Modification series and imagery on one grid.

It is the embedded default data of landformer: every pipeline can train and be shown on it without a download,
and because all layers come from one generative story they relate to each other the way real layers do.

Recipe (all lengths are in metres, so a bigger world holds more valleys rather than bigger ones):

1. **Terrain.** Spectral synthesis of Gaussian random fields (power spectrum ~ f^-beta, band-limited): a smooth
   regional surface on a regional tilt, ridged noise (1 - |n|, anisotropic, giving a Valley-and-Ridge grain)
   weighted towards the uplands, rolling hills and fine detail.
2. **Drainage.** The priority-flood drainage tree is the minimum spanning tree of the 8-connected grid graph
   whose edge weights are the higher endpoint's elevation, rooted at a virtual outlet joined to every border
   pixel (Prim's algorithm from the outlet *is* priority flood). Walking the tree from the outlet gives the
   depression-filled surface and walking it back the upstream catchment area of every pixel.
3. **Valleys and lakes.** Pits are filled, and the steady-state stream-power slope k / sqrt(area) integrated up
   the tree is added, so flats drain and trunk streams are gentle while headwaters are steep. Then, for streams
   of increasing catchment area, the terrain is pulled down towards the stream over a half-width growing with
   sqrt(area): V-shaped ravines upstream, flat flood plains downstream. The deepest part of the few largest pits
   becomes a lake with a flat surface. Height above the nearest drainage (HAND) is kept.
4. **Water and wetlands.** Open water (11) on rivers (width ~ sqrt(area); the trunk stream always shows) and
   lakes; woody (90) and emergent (95) wetlands on low, flat ground beside water, in patches of a noise field.
5. **Natural cover.** Forest everywhere else, its type set by elevation, topographic position and noise at two
   scales: evergreen (42) on the high ridges, mixed (43) in patches of its own, deciduous (41) elsewhere; shrub
   (52) and grassland (71) as regrowth patches. A 3 x 3 majority filter removes speckle, keeping ragged edges.
6. **Farms.** Parcels are Voronoi cells of a jittered, slightly rotated grid (quadrilaterals of 250-650 m, like
   surveyed fields). A parcel is farmed when its mean suitability (gentle slope, low above drainage) is high:
   crops (82) on the flattest, pasture/hay (81) elsewhere; steep or wet pixels inside stay natural, so field
   edges are straight on the flats and ragged at the foot of the slopes.
7. **Towns and roads.** Town sites are drawn on flat, dry valley floors near rivers, 3 km apart. Roads are
   least-cost paths (Dijkstra over a slope/water/wetland cost, so they follow valleys): main roads along the
   minimum spanning tree of towns and two border gateways, then hamlets on a jittered 2 km grid and straight
   country roads through continuous farmland join the network, then scattered farmsteads get their lanes.
8. **Urban growth 1990..2020.** Towns start in 1990 as noisy cores shaped by travel effort from the centre
   (they stretch along valleys, not up slopes or over water) and grow every 5 years with a probability that
   rises with nearby development, road frontage and closeness to a town and falls with slope (nothing above
   15 degrees, never on water or wetlands), in blobs drawn from spatially correlated noise; never undone.
   Land cover is written for every HM year too (``landcover_<year>.tif``): the same farms, forests, wetlands,
   quarries and water with that year's developed land, so consecutive epochs are land-change pairs (farms and
   forest turning into developed land, open space intensifying); the last epoch is ``landcover.tif``.
9. **Human Modification.** A fuzzy sum (1 - prod(1 - h)) of development intensity, agriculture, and the reach
   of roads and built land, zero on water; a running maximum over the years makes it non-decreasing per pixel.
   Developed classes 21..24 are thresholds of the same intensity score (density, closeness to a big town's
   centre, age), so land cover 2020 agrees with HM 2020 and cores are more intense than fringes.
10. **Imagery.** Class colours with per-parcel tones, canopy and roof texture, shaded by the relief and blurred
    a little like a sensor's point spread.

Same seed, same bytes: every stage draws from its own child of ``numpy.random.SeedSequence(seed)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order, dijkstra, minimum_spanning_tree

HM_YEARS = list(range(1990, 2021, 5))
# Peak memory of generate_layers per pixel of the world (measured with tracemalloc at 256..1024 px: 475..515).
PEAK_BYTES_PER_PIXEL = 520
MIN_ELEVATION = 60.0  # metres
STREAM_CLASSES_KM2 = (0.1, 1.0, 5.0, 25.0)  # catchment areas from which a stream carves a valley

WATER, BARREN = 11, 31
OPEN_SPACE, LOW_INTENSITY, MEDIUM_INTENSITY, HIGH_INTENSITY = 21, 22, 23, 24
DECIDUOUS, EVERGREEN, MIXED, SHRUB, GRASSLAND = 41, 42, 43, 52, 71
PASTURE, CROPS, WOODY_WETLAND, EMERGENT_WETLAND = 81, 82, 90, 95
DEVELOPED = (OPEN_SPACE, LOW_INTENSITY, MEDIUM_INTENSITY, HIGH_INTENSITY)
# Development intensity score thresholds for NLCD classes 22, 23 and 24 (21 below the first).
INTENSITY_THRESHOLDS = (0.2, 0.34, 0.5)
STAGES = ("terrain", "water", "cover", "fields", "towns", "growth", "imagery")


# --------------------------------------------------------------------------------------------------- noise


def spectral_noise(
    rng: np.random.Generator,
    size: int,
    pixel_size: float,
    beta: float,
    min_wavelength: float,
    max_wavelength: float = np.inf,
    anisotropy: float = 1.0,
    angle: float = 0.0,
) -> np.ndarray:
    """A (size, size) zero-mean, unit-variance Gaussian field with power ~ f^-beta between two wavelengths (m).

    ``anisotropy`` > 1 stretches features along ``angle`` (radians from east), as in folded mountain belts.
    The field is drawn on a grid half again as large and cropped, so the FFT's wrap-around does not show.
    """
    n = size + size // 2
    fy = np.fft.fftfreq(n, d=pixel_size)[:, None]
    fx = np.fft.rfftfreq(n, d=pixel_size)[None, :]
    along = fx * np.cos(angle) + fy * np.sin(angle)
    across = -fx * np.sin(angle) + fy * np.cos(angle)
    freq = np.hypot(along * anisotropy, across / anisotropy)
    band = (freq > 0) & (freq >= 1.0 / max_wavelength) & (freq <= 1.0 / min_wavelength)
    amplitude = np.zeros_like(freq)
    amplitude[band] = freq[band] ** (-beta / 2.0)
    spectrum = (rng.standard_normal(freq.shape) + 1j * rng.standard_normal(freq.shape)) * amplitude
    field = np.fft.irfft2(spectrum, s=(n, n))[:size, :size]
    return (field - field.mean()) / (field.std() + 1e-12)


def uniform_noise(rng: np.random.Generator, size: int, pixel_size: float, min_wavelength: float) -> np.ndarray:
    """Spatially correlated noise with uniform marginals in [0, 1): thresholds on it give area fractions."""
    field = spectral_noise(rng, size, pixel_size, beta=2.0, min_wavelength=min_wavelength)
    return _rank_uniform(field)


def _rank_uniform(field: np.ndarray) -> np.ndarray:
    ranks = np.empty(field.size, dtype=np.float64)
    ranks[np.argsort(field, axis=None, kind="stable")] = np.arange(field.size)
    return (ranks / field.size).reshape(field.shape)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def majority_filter(classes: np.ndarray, size: int) -> np.ndarray:
    """Each pixel takes the most frequent class in its ``size`` x ``size`` window (ties: lowest code)."""
    best = np.full(classes.shape, -1.0, dtype=np.float32)
    out = classes.copy()
    for code in np.unique(classes):
        share = ndimage.uniform_filter((classes == code).astype(np.float32), size=size, mode="nearest")
        better = share > best + 1e-6
        best[better] = share[better]
        out[better] = code
    return out


def slope_degrees(elevation: np.ndarray, pixel_size: float) -> np.ndarray:
    dz_dy, dz_dx = np.gradient(elevation, pixel_size)
    return np.degrees(np.arctan(np.hypot(dz_dx, dz_dy)))


# ------------------------------------------------------------------------------------------------- terrain


def make_terrain(rng: np.random.Generator, size: int, pixel_size: float) -> np.ndarray:
    """Elevation in metres before valleys are carved: regional swell + ridged uplands + hills + detail."""
    grain = rng.uniform(0.0, np.pi)
    regional = spectral_noise(rng, size, pixel_size, beta=4.0, min_wavelength=6000.0)
    ridge_field = spectral_noise(
        rng, size, pixel_size, beta=3.5, min_wavelength=1500.0, max_wavelength=15000.0, anisotropy=2.5, angle=grain
    )
    ridged = (1.0 - np.abs(ridge_field) / 2.5).clip(0.0, 1.0) ** 2.5
    hills = spectral_noise(rng, size, pixel_size, beta=3.5, min_wavelength=400.0, max_wavelength=6000.0)
    detail = spectral_noise(rng, size, pixel_size, beta=2.5, min_wavelength=90.0, max_wavelength=1000.0)
    upland = _smoothstep((regional + 1.0) / 2.0)
    # A regional tilt drains the world towards one side, as a real map window sits on a larger slope.
    downhill = rng.uniform(0.0, 2.0 * np.pi)
    rows, cols = np.mgrid[0:size, 0:size] * pixel_size
    tilt = 0.012 * (cols * np.cos(downhill) - rows * np.sin(downhill))
    return 400.0 + tilt - tilt.mean() + 90.0 * regional + 300.0 * ridged * upland + 40.0 * hills + 4.0 * detail


@dataclass
class Drainage:
    order: np.ndarray  # (H*W,) pixel indices from the outlets upstream (breadth-first over the drainage tree)
    receiver: np.ndarray  # (H*W,) index of the downstream pixel, -1 where water leaves the world
    area: np.ndarray  # (H, W) upstream catchment area in m^2, the pixel itself included
    filled: np.ndarray  # (H, W) depression-filled elevation (the spill level of every pit)


def _grid_edges(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both endpoints and the length (in pixels) of every 8-neighbour edge, each edge listed once."""
    index = np.arange(height * width).reshape(height, width)
    pairs = [
        (index[:, :-1], index[:, 1:], 1.0),
        (index[:-1, :], index[1:, :], 1.0),
        (index[:-1, :-1], index[1:, 1:], np.sqrt(2.0)),
        (index[:-1, 1:], index[1:, :-1], np.sqrt(2.0)),
    ]
    first = np.concatenate([a.ravel() for a, _, _ in pairs])
    second = np.concatenate([b.ravel() for _, b, _ in pairs])
    length = np.concatenate([np.full(a.size, step) for a, _, step in pairs])
    return first, second, length


def route_drainage(elevation: np.ndarray, pixel_size: float) -> Drainage:
    """Priority-flood drainage as a minimum spanning tree rooted at an outlet beside every border pixel."""
    height, width = elevation.shape
    n = height * width
    z = elevation.ravel() - elevation.min() + 1.0  # strictly positive: csgraph drops zero-weight edges
    first, second, _ = _grid_edges(height, width)
    # Higher endpoint first; the lower endpoint breaks ties so a pixel drains to its lowest neighbour.
    weight = np.maximum(z[first], z[second]) + 1e-4 * np.minimum(z[first], z[second])
    border = np.zeros((height, width), dtype=bool)
    border[[0, -1], :] = True
    border[:, [0, -1]] = True
    border_index = np.flatnonzero(border)
    rows = np.concatenate([first, border_index])
    cols = np.concatenate([second, np.full(border_index.size, n)])
    weights = np.concatenate([weight, z[border_index] + 1e-4])
    graph = coo_matrix((weights, (rows, cols)), shape=(n + 1, n + 1)).tocsr()
    tree = minimum_spanning_tree(graph)
    order, predecessor = breadth_first_order(tree, n, directed=False, return_predecessors=True)
    order = order[1:]  # drop the virtual outlet
    receiver = np.where(predecessor[:n] == n, -1, predecessor[:n])

    # Downstream before upstream: the spill level is the highest point on the way to the outlet.
    order_list = order.tolist()
    receiver_list = receiver.tolist()
    filled = z.tolist()
    for pixel in order_list:
        down = receiver_list[pixel]
        if down >= 0 and filled[down] > filled[pixel]:
            filled[pixel] = filled[down]
    area = [1.0] * n
    for pixel in reversed(order_list):
        down = receiver_list[pixel]
        if down >= 0:
            area[down] += area[pixel]
    return Drainage(
        order=order,
        receiver=receiver,
        area=np.asarray(area).reshape(height, width) * pixel_size**2,
        filled=np.asarray(filled).reshape(height, width) + elevation.min() - 1.0,
    )


def fluvial_relief(drainage: Drainage, pixel_size: float, erodibility: float, max_slope: float) -> np.ndarray:
    """Height gained walking up the drainage tree with the steady-state stream-power slope k / sqrt(area).

    Added to the filled surface it gives every flat a gradient towards its outlet and deepens valleys the
    way rivers do (gentle trunk streams, steep headwaters), without creating any new pit.
    """
    height, width = drainage.area.shape
    rows, cols = np.divmod(np.arange(height * width), width)
    down = np.maximum(drainage.receiver, 0)
    step = np.where(drainage.receiver >= 0, np.hypot(rows - rows[down], cols - cols[down]) * pixel_size, 0.0)
    rise = step * np.minimum(max_slope, erodibility / np.sqrt(drainage.area.ravel()))
    relief = np.zeros(height * width)
    rise_list, receiver_list, relief_list = rise.tolist(), drainage.receiver.tolist(), relief.tolist()
    for pixel in drainage.order.tolist():
        below = receiver_list[pixel]
        if below >= 0:
            relief_list[pixel] = relief_list[below] + rise_list[pixel]
    return np.asarray(relief_list).reshape(height, width)


def carve_valleys(
    elevation: np.ndarray, area: np.ndarray, pixel_size: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pull the terrain down towards streams; returns (carved elevation, HAND in m, distance to a stream in m).

    Streams of each size class carve a valley whose half-width grows with sqrt(catchment area); the carved
    surface is the lowest of the classes, so big rivers get broad flood plains and creeks narrow ravines.
    HAND (height above nearest drainage) is measured to the nearest stream of the smallest class.
    """
    area_km2 = area / 1e6
    channel = elevation - (1.0 + 1.5 * np.sqrt(area_km2))
    carved = elevation.copy()
    for threshold in STREAM_CLASSES_KM2:
        streams = area_km2 >= min(threshold, area_km2.max())
        distance, (rows, cols) = ndimage.distance_transform_edt(~streams, return_indices=True)
        distance = distance * pixel_size
        floor = channel[rows, cols]
        half_width = 60.0 + 70.0 * np.sqrt(area_km2[rows, cols])
        valley = floor + 0.003 * distance + (elevation - floor).clip(min=0.0) * _smoothstep(distance / half_width)
        carved = np.minimum(carved, valley)
    streams = area_km2 >= min(STREAM_CLASSES_KM2[0], area_km2.max())
    distance, (rows, cols) = ndimage.distance_transform_edt(~streams, return_indices=True)
    return carved, np.maximum(carved - channel[rows, cols], 0.0), distance * pixel_size


@dataclass
class Terrain:
    elevation: np.ndarray  # final DEM in metres
    slope: np.ndarray  # degrees
    area: np.ndarray  # upstream catchment area, m^2
    hand: np.ndarray  # height above the nearest drainage, m
    stream_distance: np.ndarray  # distance to the nearest small stream, m
    lake: np.ndarray  # bool: standing water in a pit


def choose_lakes(raw: np.ndarray, filled: np.ndarray, max_pixels: int) -> np.ndarray:
    """Keep the deepest part of the few largest pits as lakes; the other pits become alluvial flats."""
    depth = filled - raw
    pits, count = ndimage.label(depth > 2.0)
    lake = np.zeros(raw.shape, dtype=bool)
    if count == 0:
        return lake
    volume = ndimage.sum(depth, pits, index=np.arange(1, count + 1))
    n_lakes = max(1, round(raw.size / 150_000))
    for label in np.argsort(volume)[::-1][:n_lakes] + 1:
        inside = pits == label
        pit_depth = depth[inside]
        cutoff = max(0.4 * pit_depth.max(), np.sort(pit_depth)[::-1][min(max_pixels, pit_depth.size) - 1])
        candidate = inside & (depth >= cutoff)
        parts, n_parts = ndimage.label(candidate)
        if n_parts:
            sizes = np.bincount(parts.ravel())[1:]
            lake |= parts == (np.argmax(sizes) + 1)
    return lake


def build_terrain(rng: np.random.Generator, size: int, pixel_size: float) -> Terrain:
    """Noise terrain -> drainage -> filled surface with fluvial relief -> carved valleys and flat lakes."""
    raw = make_terrain(rng, size, pixel_size)
    drainage = route_drainage(raw, pixel_size)
    shaped = drainage.filled + fluvial_relief(drainage, pixel_size, erodibility=5.0, max_slope=0.05)
    carved, hand, stream_distance = carve_valleys(shaped, drainage.area, pixel_size)
    lake = choose_lakes(raw, drainage.filled, max_pixels=max(20, int(0.006 * size * size)))
    lakes, n_lakes = ndimage.label(lake)
    if n_lakes:
        surface = ndimage.minimum(carved, lakes, index=np.arange(1, n_lakes + 1))
        carved = np.where(lake, surface[np.maximum(lakes - 1, 0)], carved)
        hand = np.where(lake, 0.0, hand)
    carved = carved + max(0.0, MIN_ELEVATION - carved.min())  # a big world's tilt must not sink it below the sea
    return Terrain(
        elevation=carved,
        slope=slope_degrees(carved, pixel_size),
        area=drainage.area,
        hand=hand,
        stream_distance=stream_distance,
        lake=lake,
    )


# ------------------------------------------------------------------------------------------- water, cover


def make_water(terrain: Terrain, pixel_size: float) -> np.ndarray:
    """Rivers (width ~ sqrt(catchment)) on the bigger streams, plus lakes. The trunk stream always shows."""
    area_km2 = terrain.area / 1e6
    river = area_km2 >= min(8.0, 0.3 * area_km2.max())
    distance, (rows, cols) = ndimage.distance_transform_edt(~river, return_indices=True)
    width = 15.0 + 4.0 * np.sqrt(area_km2[rows, cols])
    return (distance * pixel_size <= width / 2.0) | terrain.lake


def make_wetlands(
    rng: np.random.Generator, terrain: Terrain, water: np.ndarray, size: int, pixel_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """Woody and emergent wetlands on low, flat ground beside water, in patches: (woody, emergent) masks."""
    water_distance = ndimage.distance_transform_edt(~water) * pixel_size if water.any() else np.full(water.shape, 1e9)
    patches = uniform_noise(rng, size, pixel_size, min_wavelength=150.0)
    lowland = (terrain.hand < 2.5) & (terrain.slope < 3.0) & ~water
    woody = lowland & (water_distance < 400.0) & (patches < 0.45)
    emergent = lowland & (terrain.hand < 1.0) & (water_distance < 150.0) & (patches > 0.75)
    return woody & ~emergent, emergent


def make_natural_cover(rng: np.random.Generator, terrain: Terrain, size: int, pixel_size: float) -> np.ndarray:
    """Forest types by elevation, topographic position and noise at two scales; shrub and grass regrowth.

    Evergreen takes the high ridges, mixed forest forms its own patches where a second noise field is high
    (not a halo around the evergreen), deciduous the rest; a small majority filter keeps ragged edges.
    """
    z = terrain.elevation
    relative = (z - z.min()) / (np.ptp(z) + 1e-9)
    position = z - ndimage.gaussian_filter(z, sigma=600.0 / pixel_size, mode="nearest")  # > 0 on ridges
    position = position / (position.std() + 1e-9)
    slow = spectral_noise(rng, size, pixel_size, beta=3.0, min_wavelength=300.0, max_wavelength=5000.0)
    fine = spectral_noise(rng, size, pixel_size, beta=2.0, min_wavelength=60.0, max_wavelength=600.0)
    score = 1.2 * relative + 0.5 * position + 0.6 * slow + 0.35 * fine
    mixing = spectral_noise(rng, size, pixel_size, beta=2.5, min_wavelength=90.0, max_wavelength=3000.0)
    cover = np.full(z.shape, DECIDUOUS, dtype=np.uint8)
    cover[(mixing > 0.6) & (score > np.quantile(score, 0.3))] = MIXED
    cover[score > np.quantile(score, 0.78)] = EVERGREEN
    regrowth = uniform_noise(rng, size, pixel_size, min_wavelength=120.0)
    cover[regrowth < 0.03] = SHRUB
    cover[regrowth > 0.988] = GRASSLAND
    return majority_filter(cover, size=3)


@dataclass
class Farms:
    code: np.ndarray  # (H, W) uint8: CROPS, PASTURE or 0
    parcels: np.ndarray  # (H, W) parcel labels 0..P-1
    lanes: np.ndarray  # (H, W) bool: straight country roads through the farmland


def field_parcels(rng: np.random.Generator, size: int, pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Parcels as Voronoi cells of a jittered, slightly rotated grid of points (quadrilaterals, like surveyed
    fields), and a map of straight country roads along every few grid lines.

    Returns (parcel labels 0..P-1, road line mask).
    """
    angle = rng.uniform(-0.5, 0.5)
    spacing_across, spacing_along = rng.uniform(250.0, 400.0), rng.uniform(350.0, 650.0)
    extent = size * pixel_size * 1.5
    across, along = np.meshgrid(
        np.arange(-extent, extent, spacing_across), np.arange(-extent, extent, spacing_along), indexing="ij"
    )
    across = across + rng.uniform(-0.35, 0.35, size=across.shape) * spacing_across
    along = along + rng.uniform(-0.35, 0.35, size=along.shape) * spacing_along
    centre = size * pixel_size / 2.0
    x = centre + across * np.cos(angle) - along * np.sin(angle)
    y = centre + across * np.sin(angle) + along * np.cos(angle)
    col, row = np.floor(x / pixel_size).astype(np.int64), np.floor(y / pixel_size).astype(np.int64)
    inside = (row >= -3) & (row < size + 3) & (col >= -3) & (col < size + 3)
    # Seeds just outside the edge still shape the border parcels: work on a padded grid.
    pad = 3
    seeds = np.zeros((size + 2 * pad, size + 2 * pad), dtype=np.int64)
    seeds[row[inside] + pad, col[inside] + pad] = np.arange(1, inside.sum() + 1)
    _, (near_row, near_col) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    cells = seeds[near_row, near_col][pad:-pad, pad:-pad]
    _, labels = np.unique(cells, return_inverse=True)

    rows, cols = np.mgrid[0:size, 0:size] * pixel_size - centre
    road_spacing = rng.uniform(1200.0, 2000.0)
    line = np.floor((cols * np.cos(angle) + rows * np.sin(angle)) / road_spacing)
    lines = np.zeros((size, size), dtype=bool)
    lines[:, 1:] |= line[:, 1:] != line[:, :-1]
    lines[1:, :] |= line[1:, :] != line[:-1, :]
    return labels.reshape(size, size), lines


def make_farms(rng: np.random.Generator, terrain: Terrain, size: int, pixel_size: float) -> Farms:
    """Crops and pasture on suitable parcels; straight country roads where the farmland is continuous."""
    parcels, lines = field_parcels(rng, size, pixel_size)
    n_parcels = int(parcels.max()) + 1
    index = np.arange(n_parcels)
    flat = 1.0 - _smoothstep((terrain.slope - 5.0) / 11.0)
    low = 1.0 - _smoothstep((terrain.hand - 25.0) / 60.0)
    suitability = ndimage.gaussian_filter(flat * low, sigma=45.0 / pixel_size)
    parcel_suitability = ndimage.mean(suitability, parcels, index=index)
    parcel_slope = ndimage.mean(terrain.slope, parcels, index=index)
    farmed = (parcel_suitability > 0.5) & (rng.random(n_parcels) < 0.85)
    crops = farmed & (parcel_slope < 5.0) & (rng.random(n_parcels) < 0.6)
    code = np.where(crops, CROPS, np.where(farmed, PASTURE, 0)).astype(np.uint8)[parcels]
    code[suitability < 0.3] = 0
    farmland = ndimage.gaussian_filter((code > 0).astype(float), sigma=300.0 / pixel_size) > 0.4
    return Farms(code=code, parcels=parcels, lanes=lines & farmland & (terrain.slope < 12.0))


# ------------------------------------------------------------------------------------------ towns, roads


def place_towns(
    rng: np.random.Generator, terrain: Terrain, water: np.ndarray, size: int, pixel_size: float
) -> np.ndarray:
    """(k, 2) row/col of town centres on flat, dry valley floors near rivers, kept apart from each other."""
    area_km2 = (size * pixel_size / 1000.0) ** 2
    count = 1 + int(area_km2 / 70.0)
    river_distance = ndimage.distance_transform_edt(~water) * pixel_size if water.any() else terrain.stream_distance
    flat = 1.0 - _smoothstep((terrain.slope - 2.0) / 8.0)
    dry = _smoothstep((terrain.hand - 1.0) / 3.0) * (1.0 - _smoothstep((terrain.hand - 20.0) / 40.0))
    near_river = np.exp(-river_distance / 1500.0)
    margin = np.zeros((size, size))
    inner = slice(size // 10, size - size // 10)
    margin[inner, inner] = 1.0
    weight = (flat * dry * near_river * margin * ~water) ** 2
    rows, cols = np.mgrid[0:size, 0:size]
    towns = []
    for _ in range(count):
        total = weight.sum()
        if total <= 0:
            break
        pick = rng.choice(weight.size, p=(weight / total).ravel())
        row, col = divmod(int(pick), size)
        towns.append((row, col))
        weight[np.hypot(rows - row, cols - col) * pixel_size < 3000.0] = 0.0
    return np.array(towns, dtype=np.int64).reshape(-1, 2)


def road_gateways(terrain: Terrain, water: np.ndarray, size: int) -> np.ndarray:
    """(2, 2) row/col of border pixels where the main roads leave the world: the two easiest, far apart."""
    border = np.zeros((size, size), dtype=bool)
    border[[0, -1], :] = True
    border[:, [0, -1]] = True
    ease = np.where(border & ~water, -terrain.slope - 0.05 * terrain.hand, -np.inf)
    first = np.unravel_index(np.argmax(ease), ease.shape)
    rows, cols = np.mgrid[0:size, 0:size]
    far = np.hypot(rows - first[0], cols - first[1]) > size * 0.6
    second = np.unravel_index(np.argmax(np.where(far, ease, -np.inf)), ease.shape)
    return np.array([first, second], dtype=np.int64)


def cost_graph(cost: np.ndarray, pixel_size: float):
    """Sparse 8-neighbour graph whose edge weights are the mean cost of both ends times the step in metres."""
    size = cost.shape[0]
    first, second, length = _grid_edges(size, size)
    flat_cost = cost.ravel()
    weight = 0.5 * (flat_cost[first] + flat_cost[second]) * length * pixel_size
    return coo_matrix(
        (np.concatenate([weight, weight]), (np.concatenate([first, second]), np.concatenate([second, first]))),
        shape=(size * size, size * size),
    ).tocsr()


def trace_path(predecessor: np.ndarray, pixel: int, network: np.ndarray) -> None:
    """Mark the path from ``pixel`` back along ``predecessor`` until it meets the network (in place)."""
    while pixel >= 0 and not network[pixel]:
        network[pixel] = True
        pixel = int(predecessor[pixel])


def connect_to_network(graph, network: np.ndarray, places: list[np.ndarray]) -> np.ndarray:
    """Join every place (a set of flat pixel indices) to the network by its cheapest path; returns the network."""
    if not places:
        return network
    distance, predecessor, _ = dijkstra(graph, indices=np.flatnonzero(network), min_only=True, return_predecessors=True)
    network = network.copy()
    for place in places:
        nearest = int(place[np.argmin(distance[place])])
        if np.isfinite(distance[nearest]):
            trace_path(predecessor, nearest, network)
    return network


def build_roads(
    rng: np.random.Generator,
    terrain: Terrain,
    water: np.ndarray,
    wetland: np.ndarray,
    towns: np.ndarray,
    farms: Farms,
    pixel_size: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Roads as least-cost paths over a slope/water/wetland cost, so they wind along valleys; returns (roads,
    farmsteads).

    Main roads follow the minimum spanning tree of towns and border gateways; then hamlets on a jittered
    ~2 km grid and the straight country roads of the farmland join the network, then scattered farmsteads.
    """
    size = water.shape[0]
    graph = cost_graph(1.0 + (terrain.slope / 6.0) ** 2 + 30.0 * water + 4.0 * wetland, pixel_size)
    nodes = np.vstack([towns, road_gateways(terrain, water, size)])
    flat_nodes = nodes[:, 0] * size + nodes[:, 1]
    gaps = np.hypot(*(nodes[:, None, :] - nodes[None, :, :]).transpose(2, 0, 1)) + 1e-3
    network = np.zeros(size * size, dtype=bool)
    network[flat_nodes] = True
    for start, end in np.transpose(minimum_spanning_tree(gaps).nonzero()):
        _, predecessor = dijkstra(graph, indices=int(flat_nodes[start]), return_predecessors=True)
        network[flat_nodes[end]] = False
        trace_path(predecessor, int(flat_nodes[end]), network)
        network[flat_nodes[end]] = True

    gentle = (terrain.slope < 10.0) & ~water & ~wetland
    spacing = int(2000.0 / pixel_size)
    grid_rows, grid_cols = np.mgrid[spacing // 2 : size : spacing, spacing // 2 : size : spacing]
    jitter = rng.integers(-spacing // 3, spacing // 3 + 1, size=(2, *grid_rows.shape))
    hamlet_rows = np.clip(grid_rows + jitter[0], 0, size - 1).ravel()
    hamlet_cols = np.clip(grid_cols + jitter[1], 0, size - 1).ravel()
    keep = gentle[hamlet_rows, hamlet_cols]
    places = [np.array([row * size + col]) for row, col in zip(hamlet_rows[keep], hamlet_cols[keep], strict=True)]
    lanes = farms.lanes & gentle
    lane_labels, n_lanes = ndimage.label(lanes, structure=np.ones((3, 3)))
    order = np.argsort(lane_labels.ravel(), kind="stable")
    starts = np.searchsorted(lane_labels.ravel()[order], np.arange(1, n_lanes + 2))
    places += [order[starts[i] : starts[i + 1]] for i in range(n_lanes)]
    network = connect_to_network(graph, network | lanes.ravel(), places)

    weight = (gentle * (0.2 + (farms.code > 0))).ravel().astype(float)
    count = min(int((size * pixel_size / 1000.0) ** 2 * 1.2), int((weight > 0).sum()))
    farmsteads = np.zeros(size * size, dtype=bool)
    if count > 0:
        picks = rng.choice(weight.size, size=count, replace=False, p=weight / weight.sum())
        farmsteads[picks] = True
        network = connect_to_network(graph, network, [np.array([pick]) for pick in picks])
    farmsteads = ndimage.binary_dilation(farmsteads.reshape(size, size)) & ~water
    return network.reshape(size, size) & ~water, farmsteads


# ---------------------------------------------------------------------------------- urban growth and HM


@dataclass
class Settlement:
    developed: list[np.ndarray]  # bool per HM year: developed land (roads included)
    intensity: list[np.ndarray]  # development intensity score in [0, 1] per HM year (0 where undeveloped)
    roads: np.ndarray  # bool


def grow_towns(
    rng: np.random.Generator,
    terrain: Terrain,
    water: np.ndarray,
    wetland: np.ndarray,
    towns: np.ndarray,
    roads: np.ndarray,
    farmsteads: np.ndarray,
    pixel_size: float,
) -> Settlement:
    """Noisy town cores in 1990 that grow every 5 years towards development, roads and gentle slopes."""
    size = water.shape[0]
    buildable = (1.0 - _smoothstep((terrain.slope - 5.0) / 10.0)) * ~water * ~wetland
    radius = 250.0 * rng.lognormal(0.0, 0.4, size=len(towns))
    if len(radius):
        radius[0] *= 2.0  # one market town is bigger than the villages around it
    # Towns spread by travel effort, not as the crow flies: along valley floors, hardly up slopes or over water.
    graph = cost_graph(1.0 + (terrain.slope / 4.0) ** 2 + 50.0 * water, pixel_size)
    core = np.zeros((size, size))  # 1 at a town centre, fading over its radius
    downtown = np.zeros((size, size))  # the same, but only big towns get intense centres
    reach = np.zeros((size, size))  # where a town's commuters settle
    for (row, col), r in zip(towns, radius, strict=True):
        travel = dijkstra(graph, indices=int(row * size + col), limit=40.0 * r).reshape(size, size)
        town_core = np.exp(-((travel / (1.6 * r)) ** 2))
        core = np.maximum(core, town_core)
        downtown = np.maximum(downtown, min(1.0, r / 400.0) * town_core)
        reach = np.maximum(reach, np.exp(-travel / (8.0 * r)))
    outline = uniform_noise(rng, size, pixel_size, min_wavelength=90.0)
    built = (core * buildable > 0.2 + 0.4 * outline) | (roads & ~water) | farmsteads
    road_distance = ndimage.distance_transform_edt(~roads) * pixel_size if roads.any() else np.full(core.shape, 1e9)
    frontage = np.exp(-road_distance / 60.0)  # houses line the roads
    road_access = np.exp(-road_distance / 300.0)
    age = np.zeros((size, size))
    texture = uniform_noise(rng, size, pixel_size, min_wavelength=60.0)
    developed, intensity = [], []
    for step, _year in enumerate(HM_YEARS):
        if step > 0:
            density = ndimage.gaussian_filter(built.astype(float), sigma=120.0 / pixel_size)
            pull = (1.4 * density + 0.6 * frontage + 0.25 * road_access) * (0.3 + 0.7 * reach) + 0.003
            chance = np.clip(0.25 * buildable * pull, 0.0, 1.0)
            blobs = uniform_noise(rng, size, pixel_size, min_wavelength=120.0)
            built = built | ((blobs < chance) & (buildable > 0.2))
            age = age + built
        density = ndimage.gaussian_filter(built.astype(float), sigma=60.0 / pixel_size)
        score = 0.32 * density**2 + 0.55 * downtown + 0.1 * age / (len(HM_YEARS) - 1) + 0.15 * (texture - 0.5)
        developed.append(built.copy())
        intensity.append(np.where(built, np.clip(score, 0.0, 1.0), 0.0))
    return Settlement(developed=developed, intensity=intensity, roads=roads & ~water)


def developed_classes(intensity: np.ndarray, developed: np.ndarray) -> np.ndarray:
    """NLCD 21..24 from the intensity score (0 where undeveloped): the same score drives HM."""
    classes = np.full(intensity.shape, OPEN_SPACE, dtype=np.uint8)
    for code, threshold in zip(DEVELOPED[1:], INTENSITY_THRESHOLDS, strict=True):
        classes[intensity >= threshold] = code
    return np.where(developed, classes, 0).astype(np.uint8)


def human_modification(
    rng: np.random.Generator,
    settlement: Settlement,
    farms: np.ndarray,
    water: np.ndarray,
    terrain: Terrain,
    size: int,
    pixel_size: float,
) -> list[np.ndarray]:
    """HM per year as a fuzzy sum of stressors, zero on water, non-decreasing through time."""
    roads_reach = np.zeros((size, size))
    if settlement.roads.any():
        roads_reach = 0.2 * np.exp(-ndimage.distance_transform_edt(~settlement.roads) * pixel_size / 150.0)
    farming = np.select([farms == CROPS, farms == PASTURE], [0.45, 0.3], 0.0)
    steep = _smoothstep((terrain.slope - 10.0) / 20.0)
    background = (0.02 + 0.04 * uniform_noise(rng, size, pixel_size, min_wavelength=500.0)) * (1.0 - 0.7 * steep)
    series, running = [], np.zeros((size, size))
    for built, intensity in zip(settlement.developed, settlement.intensity, strict=True):
        near_town = np.zeros((size, size))
        if built.any():
            near_town = 0.15 * np.exp(-ndimage.distance_transform_edt(~built) * pixel_size / 250.0)
        development = np.where(built, 0.62 + 0.38 * intensity, 0.0)
        untouched = (1 - development) * (1 - farming * ~built) * (1 - roads_reach) * (1 - near_town) * (1 - background)
        running = np.maximum(running, np.where(water, 0.0, 1.0 - untouched))
        series.append(running.astype(np.float32))
    return series


def place_quarries(
    rng: np.random.Generator, terrain: Terrain, towns: np.ndarray, taken: np.ndarray, pixel_size: float
) -> np.ndarray:
    """A small barren pit (quarry) on a moderate slope a short drive from each town."""
    size = taken.shape[0]
    rows, cols = np.mgrid[0:size, 0:size]
    barren = np.zeros((size, size), dtype=bool)
    for row, col in towns:
        distance = np.hypot(rows - row, cols - col) * pixel_size
        fits = (distance > 1000.0) & (distance < 3000.0) & (terrain.slope > 6.0) & (terrain.slope < 20.0) & ~taken
        if not fits.any():
            continue
        pick = rng.choice(np.flatnonzero(fits))
        centre_row, centre_col = divmod(int(pick), size)
        radius = rng.uniform(60.0, 150.0)
        stretch = rng.uniform(0.5, 1.0)
        ellipse = np.hypot((rows - centre_row) * stretch, cols - centre_col) * pixel_size < radius
        barren |= ellipse & ~taken
    return barren


# ------------------------------------------------------------------------------------------------ imagery

IMAGE_COLOURS = {
    WATER: (26, 44, 62),
    OPEN_SPACE: (160, 160, 140),
    LOW_INTENSITY: (150, 143, 135),
    MEDIUM_INTENSITY: (132, 128, 126),
    HIGH_INTENSITY: (115, 113, 116),
    BARREN: (188, 178, 162),
    DECIDUOUS: (72, 98, 52),
    EVERGREEN: (40, 66, 42),
    MIXED: (56, 82, 48),
    SHRUB: (118, 116, 78),
    GRASSLAND: (150, 148, 102),
    PASTURE: (128, 150, 78),
    CROPS: (150, 128, 92),
    WOODY_WETLAND: (66, 90, 62),
    EMERGENT_WETLAND: (104, 120, 84),
}
GREEN_CROP = (100, 140, 62)


def make_imagery(
    rng: np.random.Generator,
    landcover: np.ndarray,
    parcels: np.ndarray,
    elevation: np.ndarray,
    size: int,
    pixel_size: float,
) -> np.ndarray:
    """(3, H, W) uint8 true-colour image: class colours, per-field tones, canopy and roof texture, relief shade."""
    from landformer.core.viz import hillshade

    lookup = np.zeros((256, 3))
    for code, colour in IMAGE_COLOURS.items():
        lookup[code] = colour
    rgb = lookup[landcover]
    n_parcels = int(parcels.max()) + 1
    greenness = rng.random(n_parcels)[parcels][..., None]
    tone = (0.9 + 0.2 * rng.random(n_parcels))[parcels][..., None]
    crops = (landcover == CROPS)[..., None]
    rgb = np.where(crops, (1 - greenness) * rgb + greenness * np.array(GREEN_CROP), rgb)
    rgb = np.where(np.isin(landcover, (CROPS, PASTURE))[..., None], rgb * tone, rgb)
    canopy = spectral_noise(rng, size, pixel_size, beta=1.5, min_wavelength=60.0)[..., None]
    forest = np.isin(landcover, (DECIDUOUS, EVERGREEN, MIXED, WOODY_WETLAND))[..., None]
    roofs = rng.normal(0.0, 1.0, size=(size, size))[..., None]
    built = np.isin(landcover, DEVELOPED)[..., None]
    rgb = rgb + forest * 9.0 * canopy + built * 18.0 * roofs + 4.0 * rng.normal(0.0, 1.0, size=rgb.shape)
    shade = hillshade(elevation, pixel_size)[..., None]
    rgb = rgb * np.where(landcover[..., None] == WATER, 1.0, 0.55 + 0.6 * shade)
    rgb = ndimage.gaussian_filter(rgb, sigma=(0.6, 0.6, 0.0))
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8).transpose(2, 0, 1)


# --------------------------------------------------------------------------------------------- the world


@dataclass
class WorldLayers:
    elevation: np.ndarray  # float32 metres
    landcover: np.ndarray  # uint8 NLCD codes
    hm: list[np.ndarray]  # float32 per HM year
    imagery: np.ndarray  # (3, H, W) uint8
    landcover_series: list[np.ndarray]  # uint8 NLCD codes per HM year; the last is ``landcover``


def generate_layers(size: int, seed: int, pixel_size: float = 30.0) -> WorldLayers:
    """Every layer of the world in memory (see the module docstring for the recipe)."""
    from tqdm.auto import tqdm

    rngs = dict(
        zip(STAGES, (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(STAGES))), strict=True)
    )
    progress = tqdm(total=len(STAGES), desc="synth world", disable=None, leave=False)
    terrain = build_terrain(rngs["terrain"], size, pixel_size)
    progress.update()
    water = make_water(terrain, pixel_size)
    woody, emergent = make_wetlands(rngs["water"], terrain, water, size, pixel_size)
    wetland = woody | emergent
    progress.update()
    landcover = make_natural_cover(rngs["cover"], terrain, size, pixel_size)
    progress.update()
    farm_plan = make_farms(rngs["fields"], terrain, size, pixel_size)
    farms = np.where(water | wetland, 0, farm_plan.code)
    progress.update()
    towns = place_towns(rngs["towns"], terrain, water, size, pixel_size)
    roads, farmsteads = build_roads(rngs["towns"], terrain, water, wetland, towns, farm_plan, pixel_size)
    progress.update()
    settlement = grow_towns(rngs["growth"], terrain, water, wetland, towns, roads, farmsteads, pixel_size)
    hm = human_modification(rngs["growth"], settlement, farms, water, terrain, size, pixel_size)
    developed = developed_classes(settlement.intensity[-1], settlement.developed[-1])
    progress.update()
    landcover[farms > 0] = farms[farms > 0]
    landcover[woody] = WOODY_WETLAND
    landcover[emergent] = EMERGENT_WETLAND
    undeveloped = landcover.copy()
    landcover[developed > 0] = developed[developed > 0]
    quarries = place_quarries(rngs["towns"], terrain, towns, water | wetland | (developed > 0), pixel_size)
    landcover[quarries] = BARREN
    landcover[water] = WATER
    series = [
        landcover_epoch(undeveloped, developed_classes(intensity, built), quarries, water)
        for intensity, built in zip(settlement.intensity, settlement.developed, strict=True)
    ]
    imagery = make_imagery(rngs["imagery"], landcover, farm_plan.parcels, terrain.elevation, size, pixel_size)
    progress.update()
    progress.close()
    return WorldLayers(
        elevation=terrain.elevation.astype(np.float32),
        landcover=landcover,
        hm=hm,
        imagery=imagery,
        landcover_series=series,
    )


def landcover_epoch(
    undeveloped: np.ndarray, developed: np.ndarray, quarries: np.ndarray, water: np.ndarray
) -> np.ndarray:
    """Land cover of one HM year: natural cover and farms, that year's developed classes, quarries, water.

    Built land only grows and its intensity only rises, and quarries avoid the last year's built land, so the
    epochs differ only where land was developed or intensified, and the last one is the world's land cover.
    """
    epoch = undeveloped.copy()
    epoch[developed > 0] = developed[developed > 0]
    epoch[quarries] = BARREN
    epoch[water] = WATER
    return epoch
