"""Elevation tiles for the terrain models: sources, spatially split tiling, per-tile normalisation, datasets.

``core/chips.py`` cuts chips around a categorical main raster, so DEM-only tiles are cut here, with the same
spatial-block split (:class:`~landformer.core.chips.BlockSplit`): every raster is divided into square blocks,
a ``val_fraction`` of them is held out, and a tile is kept only if it lies inside one block, so no validation
tile shares a pixel with a training tile. Each block is read once through a windowed read, so memory stays
bounded whatever the DEM's size. Tiles with nodata, or flatter than ``min_relief`` metres (sea, lakes), are
dropped and counted.

Each tile is normalised on its own: ``(z - offset) / scale`` with the tile's mean and standard deviation. The
models learn the *shape* of terrain; the offset and scale are kept so absolute heights come back.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window
from torch.utils.data import Dataset

from landformer.core.chips import BlockSplit, load_chips
from landformer.core.errors import UserError
from landformer.core.io import read_npz, write_npz
from landformer.core.legend import NODATA_INDEX, Legend, load_legend
from landformer.core.raster import RasterGrid, aligned_vrt, open_raster
from landformer.terrain.config import TerrainDataConfig

log = logging.getLogger(__name__)

METRES_PER_DEGREE = 111_320.0
# pvlib's altitude grid stores heights in steps of 28 m: a tile with less relief than four steps is a staircase
# of terraces, not terrain, and teaches the models flat plateaus with cliffs between them.
PVLIB_MIN_RELIEF_M = 4 * 28.0
VAL_TILES_FILE = "val_tiles.npz"  # a run's held-out tiles (save_val_tiles)


@dataclass
class DemSource:
    """One DEM (and, when conditioning, the categorical raster read onto its grid)."""

    name: str
    path: Path
    condition: Path | None = None
    min_relief: float = 0.0  # this source's own floor on a tile's standard deviation (m), above the recipe's
    packaged: bool = False  # a DEM that ships in a package (rather than one the user gave)


@dataclass
class TileSet:
    """Elevation tiles in metres, split into training and validation tiles (see the module docstring)."""

    train: np.ndarray  # (N, S, S) float32 metres
    val: np.ndarray  # (M, S, S) float32 metres
    train_conditions: np.ndarray | None  # (N, S, S) int16 class indices (NODATA_INDEX = none), when conditioning
    val_conditions: np.ndarray | None
    train_pixel_sizes: np.ndarray  # (N,) pixel size in metres of each tile's source (for hillshades)
    val_pixel_sizes: np.ndarray  # (M,)
    legend: Legend | None = None  # legend of the condition maps
    sources: list[dict[str, Any]] = field(default_factory=list)  # what each source gave and dropped

    @property
    def tile_size(self) -> int:
        return int(self.train.shape[-1])

    @property
    def pixel_size_m(self) -> float:
        """Median pixel size over the training tiles: the default pixel size of generated maps."""
        return float(np.median(self.train_pixel_sizes))

    def summary(self) -> dict[str, Any]:
        """Plain numbers for run records and model exports (elevation statistics of the training tiles)."""
        offsets, scales = tile_statistics(self.train)
        return {
            "tile_size": self.tile_size,
            "n_train": len(self.train),
            "n_val": len(self.val),
            "pixel_size_m": self.pixel_size_m,
            "median_offset_m": float(np.median(offsets)),
            "median_scale_m": float(np.median(scales)),
            "scale_quantiles_m": [float(q) for q in np.quantile(scales, [0.1, 0.5, 0.9])],
            "sources": self.sources,
            "reference": reference_source(self.sources),
        }


def scale_class(pixel_size_m: np.ndarray | float, edges: list[float]) -> np.ndarray:
    """Pixel-size class of each pixel size (metres) for the class edges of ``scale_classes``, as int16."""
    return np.digitize(np.asarray(pixel_size_m, dtype=np.float64), np.asarray(edges, dtype=np.float64)).astype(np.int16)


def reference_source(sources: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The DEM whose grid generated maps take by default: the first DEM the user gave, else the packaged DEM with
    the finest pixels (Jacksboro's 3 arc-seconds); None when no source was a georeferenced DEM."""
    dems = [source for source in sources if source.get("grid", {}).get("crs")]
    if not dems:
        return None
    users = [source for source in dems if not source.get("packaged")]
    chosen = users[0] if users else min(dems, key=lambda source: source["pixel_size_m"])
    keys = ("name", "pixel_size_m", "median_offset_m", "median_scale_m")
    return {**{key: chosen[key] for key in keys}, **chosen["grid"]}


def tile_statistics(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile offset (mean) and scale (standard deviation) of (N, S, S) elevation tiles, in float64."""
    flat = tiles.reshape(len(tiles), -1).astype(np.float64)
    return flat.mean(axis=1), flat.std(axis=1)


def normalize_tiles(tiles: np.ndarray, source: str = "tile") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(normalised, offset, scale)`` of (N, S, S) tiles; nodata or a flat tile is a UserError naming it.

    A tile with zero variance has no shape to learn or encode, and dividing by its scale would blow up.
    """
    tiles = np.asarray(tiles, dtype=np.float32)
    if tiles.ndim == 2:
        tiles = tiles[None]
    bad = ~np.isfinite(tiles).all(axis=(1, 2))
    if bad.any():
        raise UserError(f"{source}: tile {int(np.flatnonzero(bad)[0])} holds nodata (NaN); fill or crop it first")
    offsets, scales = tile_statistics(tiles)
    flat = scales <= 1e-6 * np.maximum(1.0, np.abs(offsets))
    if flat.any():
        index = int(np.flatnonzero(flat)[0])
        raise UserError(
            f"{source}: tile {index} is flat (all {offsets[index]:.6g} m, zero variance); "
            "per-tile normalisation needs some relief"
        )
    normalized = (tiles - offsets[:, None, None]) / scales[:, None, None]
    return normalized.astype(np.float32), offsets, scales


def pixel_size_metres(dataset: Any) -> float:
    """Mean pixel side in metres; degrees are converted at the raster's central latitude."""
    size_x, size_y = abs(dataset.transform.a), abs(dataset.transform.e)
    if dataset.crs is not None and dataset.crs.is_geographic:
        centre_lat = (dataset.bounds.top + dataset.bounds.bottom) / 2
        return float((size_x * math.cos(math.radians(centre_lat)) + size_y) / 2 * METRES_PER_DEGREE)
    return float((size_x + size_y) / 2)


def _usable_blocks(height: int, width: int, tile: int, block: int) -> int:
    rows = sum(min(block, height - i * block) >= tile for i in range(-(-height // block)))
    cols = sum(min(block, width - j * block) >= tile for j in range(-(-width // block)))
    return rows * cols


def _split(height: int, width: int, config: TerrainDataConfig, source: str) -> BlockSplit:
    """The block split of one raster; small rasters get smaller blocks, and tiny ones go to training whole."""
    tile = config.tile_size
    block = config.block_size
    while block > tile and _usable_blocks(height, width, tile, block) < 4:
        block = max(tile, block // 2)
    if _usable_blocks(height, width, tile, block) < 2:
        log.info("%s: too small for a held-out block; all of its tiles train", source)
        return BlockSplit.random(height, width, tile, block, 0.0, config.split_seed, source)
    return BlockSplit.random(height, width, tile, block, config.val_fraction, config.split_seed, source)


def _grid_offsets(split: BlockSplit, length: int, tile: int, stride: int) -> np.ndarray:
    """Tile offsets along one axis: every ``stride`` from each block's start, wholly inside that block."""
    offsets = split.axis_offsets(length, tile)
    return offsets[(offsets % split.block_size) % stride == 0]


def read_dem_tiles(
    source: DemSource, config: TerrainDataConfig, legend: Legend | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """Tiles of one DEM: (train, val, train conditions, val conditions, report), read block by block.

    At most ``max_tiles_per_source`` training tiles (and a matching share of validation tiles) are kept. Tile
    positions are drawn at random in rounds of about twice what is still missing, until enough usable tiles
    (no nodata, relief above the floor) are found or the DEM has no more: a continent-sized DEM costs no more
    memory than a small one, and a mostly-ocean raster still gives its land tiles.
    """
    tile, stride = config.tile_size, config.stride
    min_relief = max(config.min_relief, source.min_relief, 1e-6)
    max_val = math.ceil(config.max_tiles_per_source * config.val_fraction / (1 - config.val_fraction))
    kept_tiles: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    kept_conditions: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    dropped_nodata = dropped_flat = drawn = 0
    with open_raster(source.path, config.assume_crs) as dem:
        if dem.height < tile or dem.width < tile:
            raise UserError(f"DEM {source.path} ({dem.height}x{dem.width} px) is smaller than one {tile} px tile")
        split = _split(dem.height, dem.width, config, str(source.path))
        rows = _grid_offsets(split, dem.height, tile, stride)
        cols = _grid_offsets(split, dem.width, tile, stride)
        grid_rows, grid_cols = (axis.ravel() for axis in np.meshgrid(rows, cols, indexing="ij"))
        is_val = split.is_test(grid_rows, grid_cols)
        rng = np.random.default_rng([seed, 7])
        condition_vrt = None
        if source.condition is not None:
            condition_raster = open_raster(source.condition, config.assume_crs)
            condition_vrt = aligned_vrt(condition_raster, RasterGrid.of(dem), categorical=True)
        try:
            for name, mask, limit in (("train", ~is_val, config.max_tiles_per_source), ("val", is_val, max_val)):
                candidates = rng.permutation(np.flatnonzero(mask))
                n_kept = position = 0
                while n_kept < limit and position < len(candidates):
                    chunk = candidates[position : position + max(2 * (limit - n_kept), 256)]
                    position += len(chunk)
                    tiles, conditions = _read_tiles(
                        dem, condition_vrt, legend, grid_rows[chunk], grid_cols[chunk], tile, split.block_size
                    )
                    finite = np.isfinite(tiles).all(axis=(1, 2))
                    _, scales = tile_statistics(np.where(np.isfinite(tiles), tiles, 0.0))
                    usable = np.flatnonzero(finite & (scales >= min_relief))[: limit - n_kept]
                    dropped_nodata += int((~finite).sum())
                    dropped_flat += int((finite & (scales < min_relief)).sum())
                    drawn += len(chunk)
                    kept_tiles[name].append(tiles[usable])
                    if conditions is not None:
                        kept_conditions[name].append(conditions[usable])
                    n_kept += len(usable)
        finally:
            if condition_vrt is not None:
                condition_vrt.close()
                condition_raster.close()
        pixel_size = pixel_size_metres(dem)
        grid = {
            "crs": dem.crs.to_wkt() if dem.crs is not None else None,
            "pixel_size_crs": [abs(dem.transform.a), abs(dem.transform.e)],
            "origin": [dem.transform.c, dem.transform.f],
            "dtype": str(dem.dtypes[0]),
        }

    def stacked(pieces: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(pieces) if pieces else np.empty((0, tile, tile), dtype)

    train, val = stacked(kept_tiles["train"], np.float32), stacked(kept_tiles["val"], np.float32)
    if len(train) + len(val) == 0:
        reason = "nodata" if dropped_flat == 0 else f"nodata or relief below {min_relief:g} m"
        raise UserError(f"DEM {source.path}: none of {drawn} tiles of {tile} px is usable (every one has {reason})")
    offsets, scales = tile_statistics(train if len(train) else val)
    report = {
        "name": source.name,
        "path": str(source.path),
        "pixel_size_m": pixel_size,
        "median_offset_m": float(np.median(offsets)),
        "median_scale_m": float(np.median(scales)),
        "n_train": len(train),
        "n_val": len(val),
        "dropped_nodata": dropped_nodata,
        "dropped_flat": dropped_flat,
        "packaged": source.packaged,
        "grid": grid,
    }
    if source.condition is None:
        return train, val, None, None, report
    conditions = stacked(kept_conditions["train"], np.int16), stacked(kept_conditions["val"], np.int16)
    return train, val, *conditions, report


def _read_tiles(
    dem: Any, condition: Any, legend: Legend | None, rows: np.ndarray, cols: np.ndarray, size: int, block: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Tiles at top-left pixels (rows, cols), grouped by split block: one windowed read per block."""
    tiles = np.empty((len(rows), size, size), dtype=np.float32)
    conditions = np.empty((len(rows), size, size), dtype=np.int16) if condition is not None else None
    keys = (rows // block) * (-(-dem.width // block)) + cols // block
    for key in np.unique(keys):
        members = np.flatnonzero(keys == key)
        top, left = int(rows[members].min()), int(cols[members].min())
        height = int(rows[members].max()) + size - top
        width = int(cols[members].max()) + size - left
        window = Window(left, top, width, height)
        data = dem.read(1, window=window).astype(np.float32)
        if dem.nodata is not None and not np.isnan(dem.nodata):
            data[data == np.float32(dem.nodata)] = np.nan
        for index in members:
            r, c = rows[index] - top, cols[index] - left
            tiles[index] = data[r : r + size, c : c + size]
        if conditions is not None and legend is not None:
            raw = condition.read(1, window=window)
            indices = legend.encode(raw, unknown="nodata", source=str(condition.name))
            if condition.nodata is not None:
                indices[raw == condition.nodata] = NODATA_INDEX
            for index in members:
                r, c = rows[index] - top, cols[index] - left
                conditions[index] = indices[r : r + size, c : c + size]
    return tiles, conditions


def _chip_channel(names: list[str], wanted: str | None, path: Path) -> int:
    if wanted is not None:
        if wanted not in names:
            raise UserError(f"chip file {path} has no channel {wanted!r} (has: {', '.join(names)})")
        return names.index(wanted)
    for index, name in enumerate(names):
        if any(key in name.lower() for key in ("elev", "dem", "height")):
            return index
    raise UserError(
        f"chip file {path} has no channel named like elevation or dem (has: {', '.join(names)}); set chip_channel"
    )


def read_chip_tiles(path: Path, config: TerrainDataConfig) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Elevation tiles from a chip file's elevation channel, keeping its own train/test split."""
    chips = load_chips(path)
    if chips.chip_size != config.tile_size:
        raise UserError(
            f"chip file {path} holds {chips.chip_size} px chips; the recipe's tile_size is {config.tile_size}"
        )
    channel = _chip_channel(chips.channel_names, config.chip_channel, path)
    pixel = chips.metadata.get("pixel_size", [1.0, 1.0])
    pixel_size = float(np.mean(pixel))
    if str(chips.metadata.get("crs", "")).upper() == "EPSG:4326" and len(chips.train_coords):
        pixel_size *= METRES_PER_DEGREE * math.cos(math.radians(float(np.median(chips.train_coords[:, 1]))))
    kept = []
    report: dict[str, Any] = {"name": Path(path).stem, "path": str(path), "pixel_size_m": pixel_size}
    for split_name, data in (("train", chips.train_data), ("val", chips.test_data)):
        tiles = data[:, channel].astype(np.float32)
        finite = np.isfinite(tiles).all(axis=(1, 2))
        _, scales = tile_statistics(np.where(np.isfinite(tiles), tiles, 0.0))
        keep = finite & (scales >= max(config.min_relief, 1e-6))
        kept.append(tiles[keep][: config.max_tiles_per_source])
        report[f"n_{split_name}"] = len(kept[-1])
        report[f"dropped_{split_name}"] = int((~keep).sum())
    if len(kept[0]) == 0:
        raise UserError(f"chip file {path}: no training chip has a complete, non-flat elevation channel")
    return kept[0], kept[1], report


def build_sources(config: TerrainDataConfig, data_dir: Path, seed: int) -> list[DemSource]:
    """The DEM rasters named by the recipe; packaged DEMs and the synthetic world are written into ``data_dir``."""
    from landformer.synth import packaged  # 0.2 s to import; only training reads packaged DEMs

    sources = [
        DemSource(Path(path).stem, Path(path), Path(config.conditions[i]) if config.conditions else None)
        for i, path in enumerate(config.dems)
    ]
    data_dir.mkdir(parents=True, exist_ok=True)
    if "jacksboro" in config.packaged:
        sources.append(DemSource("jacksboro", packaged.jacksboro_dem(data_dir / "jacksboro.tif"), packaged=True))
    elif "jacksboro_west" in config.packaged:
        path = packaged.jacksboro_dem(data_dir / "jacksboro_west.tif", "west")
        sources.append(DemSource("jacksboro_west", path, packaged=True))
    if "topobathy" in config.packaged:
        path = packaged.topobathy_dem(data_dir / "topobathy.tif")
        sources.append(DemSource("topobathy", path, packaged=True))
    if "pvlib" in config.packaged:
        for index, box in enumerate(config.pvlib_boxes):
            path = packaged.pvlib_altitude(data_dir / f"pvlib_{index}.tif", box)
            sources.append(DemSource(f"pvlib_{index}", path, min_relief=PVLIB_MIN_RELIEF_M, packaged=True))
    world_folder = config.world
    if world_folder is None and config.world_size:
        from landformer.synth.world import make_world  # about 1 s to import; only for synthetic worlds

        world_seed = seed if config.world_seed is None else config.world_seed
        world_folder = make_world(data_dir / "world", size=config.world_size, seed=world_seed).folder
    if world_folder is not None:
        from landformer.synth.world import load_world

        world = load_world(Path(world_folder))
        condition = None
        if config.condition_legend is not None:
            if config.condition_legend != "nlcd":
                raise UserError(
                    f"terrain data: the synthetic world's condition map is NLCD land cover, but condition_legend is "
                    f"{config.condition_legend!r}; set world_size: 0 or condition_legend: nlcd"
                )
            condition = world.landcover
        sources.append(DemSource("world", world.elevation, condition, packaged=True))
    return sources


def prepare_tiles(config: TerrainDataConfig, data_dir: Path, seed: int) -> TileSet:
    """Every source's tiles, concatenated; a recipe with no usable source is a UserError."""
    config.validate()
    legend = load_legend(config.condition_legend) if config.condition_legend is not None else None
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ("train", "val", "train_c", "val_c", "train_p", "val_p")}
    reports = []

    def add(train: np.ndarray, val: np.ndarray, report: dict[str, Any]) -> None:
        parts["train"].append(train)
        parts["val"].append(val)
        parts["train_p"].append(np.full(len(train), report["pixel_size_m"]))
        parts["val_p"].append(np.full(len(val), report["pixel_size_m"]))
        reports.append(report)

    for source in build_sources(config, data_dir, seed):
        train, val, train_c, val_c, report = read_dem_tiles(source, config, legend, seed)
        add(train, val, report)
        if legend is not None:
            parts["train_c"].append(train_c)
            parts["val_c"].append(val_c)
    for path in config.chips:
        add(*read_chip_tiles(Path(path), config))
    if not parts["train"]:
        raise UserError("terrain data: no elevation source (give dems, chips, packaged DEMs or a world)")
    train = np.concatenate(parts["train"])
    if len(train) == 0:
        raise UserError("terrain data: the sources gave no training tile")
    train_c = np.concatenate(parts["train_c"]) if legend is not None else None
    val_c = np.concatenate(parts["val_c"]) if legend is not None else None
    if config.scale_classes:  # every pixel of a tile carries its source's pixel-size class
        size = train.shape[-1]
        classes = {key: scale_class(np.concatenate(parts[key]), config.scale_classes) for key in ("train_p", "val_p")}
        train_c, val_c = (
            np.ascontiguousarray(np.broadcast_to(classes[key][:, None, None], (len(classes[key]), size, size)))
            for key in ("train_p", "val_p")
        )
    return TileSet(
        train,
        np.concatenate(parts["val"]),
        train_c,
        val_c,
        np.concatenate(parts["train_p"]),
        np.concatenate(parts["val_p"]),
        legend,
        reports,
    )


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th (0..7) of the 8 flips and quarter turns of the last two dimensions; k = 0 is the identity."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def condition_tokens(conditions: np.ndarray, downsample: int, n_classes: int) -> np.ndarray:
    """(N, S, S) class indices -> (N, S/f, S/f) int64: the most frequent class in each token's f x f pixels.

    Nodata pixels do not vote; a token with no class at all gets ``n_classes``, the model's "no condition".
    """
    n, size, _ = conditions.shape
    side = size // downsample
    cells = conditions.reshape(n, side, downsample, side, downsample)
    counts = np.stack([(cells == k).sum(axis=(2, 4)) for k in range(n_classes)], axis=-1)
    tokens = counts.argmax(axis=-1)
    tokens[counts.max(axis=-1) == 0] = n_classes
    return tokens.astype(np.int64)


class ElevationTiles(Dataset):
    """Normalised tiles for the tokenizer: ``{"elevation": (1, S, S), "offset", "scale"}``."""

    def __init__(self, tiles: np.ndarray, augment: bool, source: str = "tiles") -> None:
        normalized, offsets, scales = normalize_tiles(tiles, source)
        self.tiles = torch.from_numpy(normalized)
        self.offsets = torch.from_numpy(offsets.astype(np.float32))
        self.scales = torch.from_numpy(scales.astype(np.float32))
        self.augment = augment

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        tile = self.tiles[index][None]
        if self.augment:
            tile = dihedral(tile, int(torch.randint(8, ()).item()))
        return {"elevation": tile.contiguous(), "offset": self.offsets[index], "scale": self.scales[index]}


class TokenGrids(Dataset):
    """Token grids for the generator: ``{"tokens": (h, w)}`` plus ``"condition": (h, w)`` when conditioning."""

    def __init__(self, tokens: np.ndarray, conditions: np.ndarray | None) -> None:
        self.tokens = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))
        self.conditions = None if conditions is None else torch.from_numpy(np.ascontiguousarray(conditions))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"tokens": self.tokens[index]}
        if self.conditions is not None:
            item["condition"] = self.conditions[index]
        return item


# ------------------------------------------------------------------------------------------------ held-out tiles


def save_val_tiles(run_dir: Path, tiles: TileSet) -> Path:
    """Write the held-out tiles (and their pixel sizes and condition maps) of a run, for evaluation and benchmarks."""
    arrays = {"val": tiles.val, "val_pixel_sizes": tiles.val_pixel_sizes}
    if tiles.val_conditions is not None:
        arrays["val_conditions"] = tiles.val_conditions
    return write_npz(run_dir / VAL_TILES_FILE, arrays)


def load_val_tiles(run_dir: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """The held-out tiles (metres) a training run wrote and their pixel sizes (m), for evaluation and benchmarks."""
    arrays = read_npz(Path(run_dir) / VAL_TILES_FILE, required=("val", "val_pixel_sizes"), what="validation tiles")
    return arrays["val"], arrays["val_pixel_sizes"]
