"""Satellite-embedding tiles and their labels: reading, checking, splitting.

An embedding tile holds 64 values per pixel (AlphaEarth-style, each pixel a unit-length vector). Three file
kinds are read, chosen by suffix:

- ``.tif`` / ``.tiff`` with int8 pixels: AlphaEarth's quantized COGs. -128 marks a masked pixel (in all channels);
  other values map to ``sign(q) * (|q| / 127.5) ** 2`` (:func:`dequantize_int8`).
- ``.tif`` / ``.tiff`` with float pixels: the values themselves; the file's nodata value (or NaN) marks masked pixels.
- ``.npy``: a (64, H, W) or (H, W, 64) array, float or int8 (int8 is dequantized as above). Read without pickle.

Labels are a CSV or XLSX table with one row per tile: an id column (the tile's file name without suffix), a target
column, and optionally a group column (region) that keeps neighbouring tiles on the same side of the train/test
split, plus lon/lat columns for maps. A dataset folder written by ``landformer embeddings make-dataset`` describes
itself in ``dataset.json``; any other folder of tiles plus a label table loads the same way.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from tqdm import tqdm

from landformer.core.errors import UserError
from landformer.core.io import read_json, read_npz, require_file, write_npz
from landformer.core.viz import save_png, upscale

EMBEDDING_DIM = 64
INT8_NODATA = -128
INT8_SCALE = 127.5
TILE_SUFFIXES = (".tif", ".tiff", ".npy")
LABEL_SUFFIXES = (".csv", ".xlsx", ".xlsm")
SPLITS = ("train", "val", "test")
BUFFER = "buffer"  # the split of tiles left out because they overlap a tile of a more strictly held-out split
DATASET_JSON = "dataset.json"
UNIT_NORM_TOLERANCE = 0.25  # a tile whose median pixel length is further than this from 1 is not an embedding


# ------------------------------------------------------------------------------------------- quantization


def dequantize_int8(quantized: np.ndarray, nodata: int = INT8_NODATA) -> np.ndarray:
    """AlphaEarth's int8 -> float mapping ``sign(q) * (|q| / 127.5) ** 2``; ``nodata`` pixels become NaN."""
    q = np.asarray(quantized).astype(np.float32)
    values = np.sign(q) * (np.abs(q) / INT8_SCALE) ** 2
    return np.where(np.asarray(quantized) == nodata, np.float32(np.nan), values).astype(np.float32)


def quantize_int8(values: np.ndarray) -> np.ndarray:
    """Inverse of :func:`dequantize_int8` (to the nearest code, within -127..127); NaN pixels become -128.

    The square-root spacing puts more codes near 0, where most components of a 64-d unit vector lie.
    """
    values = np.asarray(values, dtype=np.float32)
    missing = ~np.isfinite(values)
    clean = np.clip(np.where(missing, 0.0, values), -1.0, 1.0)
    codes = np.clip(np.rint(np.sign(clean) * np.sqrt(np.abs(clean)) * INT8_SCALE), -127, 127).astype(np.int8)
    return np.where(missing, np.int8(INT8_NODATA), codes)


# ------------------------------------------------------------------------------------------------- tiles


def read_tile(path: str | os.PathLike[str], channels: int = EMBEDDING_DIM) -> np.ndarray:
    """One tile as float32 (channels, H, W), north up, with NaN on masked (nodata) pixels.

    A tile with another channel count, an unsupported dtype or an unknown suffix is a UserError naming the file.
    """
    path = require_file(path, "embedding tile")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        values = _read_npy_tile(path, channels)
    elif suffix in (".tif", ".tiff"):
        values = _read_tiff_tile(path)
    else:
        raise UserError(f"embedding tile {path}: unknown suffix {path.suffix!r} (use {', '.join(TILE_SUFFIXES)})")
    if values.shape[0] != channels:
        raise UserError(f"embedding tile {path} has {values.shape[0]} channels, expected {channels}")
    if values.dtype.kind == "f" and np.isinf(values).any():
        # rasterio (GDAL) takes about 0.4 s to import, and only GeoTIFF tiles or broken arrays need it.
        from landformer.core.raster import refuse_infinite

        refuse_infinite(values, f"embedding tile {path}")
    return values


def _read_npy_tile(path: Path, channels: int) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"embedding tile {path} is not a readable .npy array: {err}") from None
    if array.ndim != 3:
        raise UserError(f"embedding tile {path} has shape {array.shape}; expected (channels, H, W) or (H, W, channels)")
    if array.shape[0] != channels and array.shape[-1] == channels:
        array = np.moveaxis(array, -1, 0)
    if array.dtype == np.int8:
        return dequantize_int8(array)
    if array.dtype.kind != "f":
        raise UserError(f"embedding tile {path} holds {array.dtype} values; expected int8 codes or floats")
    return np.ascontiguousarray(array, dtype=np.float32)


def _read_tiff_tile(path: Path) -> np.ndarray:
    # rasterio (GDAL) takes about 0.4 s to import, and only GeoTIFF tiles need it.
    from landformer.core.raster import open_any_raster

    # Tiles need no georeferencing (only their pixels are used); reads are checked (corrupt blocks, +-inf).
    with open_any_raster(path) as dataset:
        raw = dataset.read()
        nodata = dataset.nodata
        south_up = dataset.transform.e > 0
    if south_up:  # "bottom-up" COGs (positive y resolution) are flipped so row 0 is north, as everywhere else
        raw = raw[:, ::-1]
    if raw.dtype == np.int8:
        return dequantize_int8(raw, INT8_NODATA if nodata is None else int(nodata))
    if raw.dtype.kind != "f":
        raise UserError(f"embedding tile {path} holds {raw.dtype} pixels; expected int8 (AlphaEarth COG) or float")
    values = raw.astype(np.float32)
    if nodata is not None and np.isfinite(nodata):
        values[raw == nodata] = np.nan
    return values


def nodata_mask(tile: np.ndarray) -> np.ndarray:
    """(H, W) True where a pixel is masked: any channel NaN (AlphaEarth masks all channels together)."""
    return ~np.isfinite(tile).all(axis=0)


def check_unit_length(tile: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Refuse tiles whose pixels are clearly not unit vectors (raw reflectances, a scaled export, wrong dtype)."""
    valid = ~nodata_mask(tile)
    if not valid.any():
        return
    lengths = np.sqrt((tile[:, valid] ** 2).sum(axis=0))
    median = float(np.median(lengths))
    if abs(median - 1.0) > UNIT_NORM_TOLERANCE:
        raise UserError(
            f"embedding tile {path}: median pixel length is {median:.3g}, not about 1; these are not unit-length "
            "embeddings (set data.check_unit_length=false to accept them anyway)"
        )


def find_tile(folder: Path, tile_id: str) -> Path | None:
    """The tile file named ``tile_id`` plus one of :data:`TILE_SUFFIXES` in ``folder``, if any."""
    for suffix in TILE_SUFFIXES:
        candidate = folder / f"{tile_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def list_tiles(folder: Path) -> dict[str, Path]:
    """Every tile in ``folder``, keyed by id (file name without suffix)."""
    if not folder.is_dir():
        raise UserError(f"tile folder not found: {folder}")
    return {path.stem: path for path in sorted(folder.iterdir()) if path.suffix.lower() in TILE_SUFFIXES}


# ------------------------------------------------------------------------------------------------ labels


def read_labels(
    path: str | os.PathLike[str],
    id_column: str = "id",
    target_column: str = "target",
    group_column: str | None = None,
) -> Any:
    """The label table as a pandas DataFrame with string ids (unique) and finite float targets.

    Other columns are kept (lon, lat, group, split, names). A missing id/target/group column, a duplicated id or a
    target that is not a number is a UserError naming the file and the offending value.
    """
    path = require_file(path, "label table")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            table = pd.read_csv(path, dtype={id_column: str})
        elif suffix in (".xlsx", ".xlsm"):
            table = pd.read_excel(path, dtype={id_column: str}, engine="openpyxl")
        else:
            raise UserError(f"label table {path}: unknown suffix {path.suffix!r} (use .csv or .xlsx)")
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise UserError(f"label table {path} cannot be read: {str(err).splitlines()[0]}") from None
    table.columns = [str(column).strip() for column in table.columns]
    needed = [id_column, target_column] + ([group_column] if group_column else [])
    for column in needed:
        if column not in table.columns:
            raise UserError(
                f"label table {path} has no column {column!r} (columns: {', '.join(table.columns)}); "
                "choose the columns with data.id_column / data.target_column / data.group_column"
            )
    if table.empty:
        raise UserError(f"label table {path} has no rows")
    ids = table[id_column]
    if ids.isna().any():
        raise UserError(f"label table {path}: row {int(ids.isna().to_numpy().argmax()) + 2} has no {id_column!r}")
    table[id_column] = ids.astype(str).str.strip()
    duplicated = table[id_column][table[id_column].duplicated()]
    if len(duplicated):
        raise UserError(f"label table {path}: id {duplicated.iloc[0]!r} appears more than once")
    targets = pd.to_numeric(table[target_column], errors="coerce")
    bad = ~np.isfinite(targets.to_numpy(dtype=np.float64))
    if bad.any():
        first = int(bad.argmax())
        value = table[target_column].iloc[first]
        raise UserError(
            f"label table {path}: {target_column!r} of id {table[id_column].iloc[first]!r} is {value!r}, not a number"
        )
    table[target_column] = targets.astype(np.float64)
    return table


# ----------------------------------------------------------------------------------------------- splits


def split_by_group(groups: Sequence[str], test_fraction: float, val_fraction: float, seed: int) -> np.ndarray:
    """'train' / 'val' / 'test' per sample; every group (region) falls wholly in one split.

    Groups are put in a seeded random order and taken for test until it holds ``test_fraction`` of the samples,
    then for validation, the rest for training. The order depends only on the group names and the seed, so
    adding tiles to one region does not move the others.
    """
    names = sorted(set(groups))
    if len(names) < 3:
        raise UserError(f"need at least 3 groups (regions) to hold out test and validation groups, got {len(names)}")
    keyed = sorted(names, key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).hexdigest())
    counts = {name: 0 for name in names}
    for name in groups:
        counts[name] += 1
    total = len(groups)
    assignment: dict[str, str] = {}
    taken_test = taken_val = 0
    for name in keyed:
        if taken_test < test_fraction * total and len(assignment) < len(names) - 2:
            assignment[name] = "test"
            taken_test += counts[name]
        elif taken_val < val_fraction * total and len(assignment) < len(names) - 1:
            assignment[name] = "val"
            taken_val += counts[name]
        else:
            assignment[name] = "train"
    return np.array([assignment[name] for name in groups])


def buffer_overlaps(split: np.ndarray, lonlat: np.ndarray, tile_degrees: float) -> np.ndarray:
    """``split`` with every tile that overlaps a tile of a more strictly held-out split moved to ``'buffer'``.

    Regions are whole 10-degree cells, but a city just west of a cell border and one just east of it have tiles
    that share pixels, so a test tile could be partly seen in training. Tiles are squares of ``tile_degrees`` around
    their (lon, lat) centres; two overlap when both centre offsets are below ``tile_degrees``. Test keeps all its
    tiles, a validation tile that overlaps a test tile is left out, and a training tile that overlaps a test or
    validation tile is left out; tiles without coordinates are kept as they are.
    """
    split = np.array(split, dtype="<U8")  # wide enough for "buffer"
    known = np.flatnonzero(np.isfinite(lonlat).all(axis=1))
    if tile_degrees <= 0 or len(known) < 2:
        return split
    strictness = {"test": 2, "val": 1, "train": 0}
    level = np.array([strictness.get(name, -1) for name in split])
    pairs = cKDTree(lonlat[known]).query_pairs(tile_degrees, p=np.inf, output_type="ndarray")
    first, second = known[pairs[:, 0]], known[pairs[:, 1]]
    closer = np.abs(lonlat[first] - lonlat[second]).max(axis=1) < tile_degrees  # touching edges do not overlap
    first, second = first[closer], second[closer]
    lower = np.where(level[first] < level[second], first, second)
    crossing = level[first] != level[second]
    split[np.unique(lower[crossing])] = BUFFER
    return split


# ---------------------------------------------------------------------------------------------- dataset


@dataclass
class TileSource:
    """Where a dataset's files are and which label columns to use (the ``data`` section of a recipe)."""

    tiles: Path  # folder of <id>.tif / .tiff / .npy tiles
    labels: Path  # CSV or XLSX
    next_tiles: Path | None = None  # optional folder with the following year's tile of each id (temporal pairs)
    id_column: str = "id"
    target_column: str = "target"
    group_column: str | None = "group"  # None: every tile is its own group
    lon_column: str | None = "lon"
    lat_column: str | None = "lat"
    channels: int = EMBEDDING_DIM  # 64 for embeddings; 3 for a PCA-converted copy (no unit-length check then)
    tile_degrees: float | None = None  # tile side in degrees: tiles overlapping across splits are left out


@dataclass
class EmbeddingDataset:
    """Tiles in memory with their targets and split; nodata pixels are zero vectors, flagged in ``valid``."""

    ids: list[str]
    tiles: np.ndarray  # (N, F, C, H, W) float32, C = 64; F = 2 when a following year is given, else 1
    valid: np.ndarray  # (N, H, W) bool: pixel observed in every frame
    targets: np.ndarray  # (N,) float64
    groups: list[str]
    split: np.ndarray  # (N,) 'train' / 'val' / 'test'
    lonlat: np.ndarray  # (N, 2), NaN where unknown
    target_name: str = "target"
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_frames(self) -> int:
        return int(self.tiles.shape[1])

    @property
    def tile_size(self) -> int:
        return int(self.tiles.shape[-1])

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def mean_embeddings(self, frame: int = 0) -> np.ndarray:
        """(N, 64) mean of each tile's observed pixel vectors: the input of the ridge and kNN probes."""
        weights = self.valid.reshape(len(self), -1).astype(np.float64)
        flat = self.tiles[:, frame].reshape(len(self), self.tiles.shape[2], -1).astype(np.float64)
        return np.einsum("ncp,np->nc", flat, weights) / np.maximum(weights.sum(axis=1, keepdims=True), 1.0)

    def plot(self, index: int, path: str | os.PathLike[str]) -> Path:
        """Save the first three principal directions of one tile as an RGB picture (a quick look at a sample)."""
        tile = self.tiles[index, 0].reshape(self.tiles.shape[2], -1)
        centred = tile - tile.mean(axis=1, keepdims=True)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        rgb = vt[:3].T.reshape(self.tile_size, self.tile_size, 3)
        low, high = np.percentile(rgb, 2, axis=(0, 1)), np.percentile(rgb, 98, axis=(0, 1))
        scaled = np.clip((rgb - low) / np.maximum(high - low, 1e-9), 0, 1)
        picture = (scaled * 255).astype(np.uint8)
        return save_png(path, upscale(picture, max(1, 256 // self.tile_size)))


def resolve_source(dataset: str | os.PathLike[str]) -> TileSource:
    """The :class:`TileSource` described by a dataset folder's ``dataset.json`` (written by make-dataset)."""
    folder = Path(dataset)
    if not folder.is_dir():
        raise UserError(f"dataset folder not found: {folder} (build one with `landformer embeddings make-dataset`)")
    meta = read_json(folder / DATASET_JSON, "dataset description")
    if not isinstance(meta, dict) or "tiles" not in meta or "labels" not in meta:
        raise UserError(f"{folder / DATASET_JSON} lacks 'tiles' or 'labels'; rebuild it with make-dataset")
    columns = meta.get("columns", {})
    return TileSource(
        tiles=folder / meta["tiles"],
        labels=folder / meta["labels"],
        next_tiles=folder / meta["next_tiles"] if meta.get("next_tiles") else None,
        id_column=columns.get("id", "id"),
        target_column=columns.get("target", "target"),
        group_column=columns.get("group", "group"),
        lon_column=columns.get("lon", "lon"),
        lat_column=columns.get("lat", "lat"),
        channels=int(meta.get("channels", EMBEDDING_DIM)),
        tile_degrees=_tile_degrees(meta),
    )


def _tile_degrees(meta: dict[str, Any]) -> float | None:
    """The tile side in degrees a dataset.json records (older city datasets: from their recipe), else None."""
    if meta.get("tile_degrees") is not None:
        return float(meta["tile_degrees"])
    recipe = meta.get("recipe") or {}
    if meta.get("kind") == "cities" and "tile_size" in recipe and "pixel_arcsec" in recipe:
        return recipe["tile_size"] * recipe["pixel_arcsec"] / 3600.0
    return None


def write_bundle(path: str | os.PathLike[str], ids: Sequence[str], codes: np.ndarray) -> Path:
    """Pack int8 tiles (N, F, 64, H, W), AlphaEarth-quantized with -128 nodata, into one ``.npz`` for fast loading."""
    if codes.dtype != np.int8 or codes.ndim != 5 or codes.shape[0] != len(ids):
        raise ValueError(f"a bundle holds int8 codes (N, F, C, H, W) for N ids, got {codes.dtype} {codes.shape}")
    return write_npz(path, {"ids": np.asarray(ids, dtype=str), "codes": codes})


def _read_bundle(path: Path, ids: list[str], labels: Path) -> np.ndarray:
    """The labelled tiles of a bundle as float (N, F, 64, H, W) with NaN nodata, in label order."""
    bundle = read_npz(path, required=("ids", "codes"), what="tile bundle")
    codes = bundle["codes"]
    if codes.dtype != np.int8 or codes.ndim != 5:
        raise UserError(f"tile bundle {path}: 'codes' should be int8 (N, F, C, H, W), got {codes.dtype} {codes.shape}")
    if codes.shape[2] != EMBEDDING_DIM:
        raise UserError(f"tile bundle {path} has {codes.shape[2]} channels, expected {EMBEDDING_DIM}")
    row_of = {str(tile_id): row for row, tile_id in enumerate(bundle["ids"])}
    _check_ids_match(set(row_of), ids, f"tile bundle {path}", labels)
    return dequantize_int8(codes[[row_of[tile_id] for tile_id in ids]])


def _check_ids_match(available: set[str], ids: list[str], where: str, labels: Path) -> None:
    unlabelled = sorted(available - set(ids))
    if unlabelled:
        raise UserError(
            f"{len(unlabelled)} tile(s) in {where} have no row in {labels} "
            f"(first: {', '.join(unlabelled[:3])}); add labels or move the tiles away"
        )
    missing = [tile_id for tile_id in ids if tile_id not in available]
    if missing:
        raise UserError(f"{len(missing)} id(s) of {labels} have no tile in {where} (first: {', '.join(missing[:3])})")


def _read_tile_files(source: TileSource, ids: list[str], progress: bool) -> np.ndarray:
    """Every labelled tile (and its following-year tile) as float (N, F, 64, H, W) with NaN nodata."""
    on_disk = list_tiles(source.tiles)
    _check_ids_match(set(on_disk), ids, str(source.tiles), source.labels)
    folders = [source.tiles] + ([source.next_tiles] if source.next_tiles is not None else [])
    stack: np.ndarray | None = None
    for index, tile_id in enumerate(tqdm(ids, desc="reading tiles", disable=None if progress else True, leave=False)):
        for frame, folder in enumerate(folders):
            path = on_disk[tile_id] if frame == 0 else find_tile(folder, tile_id)
            if path is None:
                raise UserError(f"no tile {tile_id!r} in the following-year folder {folder}")
            tile = read_tile(path, source.channels)
            if tile.shape[1] != tile.shape[2]:
                raise UserError(f"embedding tile {path} is {tile.shape[1]}x{tile.shape[2]}; tiles must be square")
            if stack is None:
                stack = np.empty((len(ids), len(folders), *tile.shape), dtype=np.float32)
            if tile.shape != stack.shape[2:]:
                raise UserError(
                    f"embedding tile {path} is {tile.shape[1]}x{tile.shape[2]}, the first tile is "
                    f"{stack.shape[3]}x{stack.shape[4]}; all tiles must have one size"
                )
            stack[index, frame] = tile
    assert stack is not None  # read_labels refuses an empty table
    return stack


def load_dataset(
    source: TileSource,
    test_fraction: float = 0.2,
    val_fraction: float = 0.15,
    split_seed: int = 0,
    max_nodata: float = 0.5,
    check_unit_length_of_tiles: bool = True,
    progress: bool = True,
) -> EmbeddingDataset:
    """Read every labelled tile into memory and split by group.

    ``source.tiles`` is a folder of tile files or a ``.npz`` bundle (:func:`write_bundle`). Errors (UserErrors
    naming the file): a tile without a label row or a label row without a tile, tiles of different sizes or
    channel counts, a tile with more than ``max_nodata`` of its pixels masked, pixels that are not unit vectors.
    A ``split`` column in the label table (train/val/test) is used as given. With ``source.tile_degrees`` (and
    lon/lat columns), tiles that overlap a tile of another split are left out (:func:`buffer_overlaps`).
    """
    table = read_labels(source.labels, source.id_column, source.target_column, source.group_column)
    ids = table[source.id_column].tolist()
    if source.tiles.suffix.lower() == ".npz":
        tiles = _read_bundle(require_file(source.tiles, "tile bundle"), ids, source.labels)
    else:
        tiles = _read_tile_files(source, ids, progress)
    masked = ~np.isfinite(tiles).all(axis=2)  # (N, F, H, W)
    for index, tile_id in enumerate(ids):
        fraction = float(masked[index].mean())
        if fraction > max_nodata:
            raise UserError(
                f"embedding tile {tile_id!r} of {source.tiles} has {fraction:.0%} nodata pixels (more than "
                f"data.max_nodata = {max_nodata:.0%}); drop it from the labels or raise the limit"
            )
        if check_unit_length_of_tiles and source.channels == EMBEDDING_DIM:
            for frame in range(tiles.shape[1]):
                check_unit_length(tiles[index, frame], f"{tile_id!r} of {source.tiles}")
    np.nan_to_num(tiles, copy=False, nan=0.0)
    groups = table[source.group_column].astype(str).tolist() if source.group_column is not None else list(ids)
    if "split" in table.columns:
        split = table["split"].astype(str).str.strip().str.lower().to_numpy()
        unknown = sorted(set(split) - set(SPLITS))
        if unknown:
            raise UserError(f"label table {source.labels}: split {unknown[0]!r} is not one of {', '.join(SPLITS)}")
    else:
        split = split_by_group(groups, test_fraction, val_fraction, split_seed)
    lonlat = np.full((len(ids), 2), np.nan)
    for axis, column in enumerate((source.lon_column, source.lat_column)):
        if column is not None and column in table.columns:
            lonlat[:, axis] = table[column].to_numpy(dtype=np.float64)
    if source.tile_degrees is not None:
        split = buffer_overlaps(split, lonlat, source.tile_degrees)
    for name in ("train", "val"):
        if not (split == name).any():
            raise UserError(f"the {name} split of {source.labels} is empty; use more groups or other fractions")
    return EmbeddingDataset(
        ids=ids,
        tiles=tiles,
        valid=~masked.any(axis=1),
        targets=table[source.target_column].to_numpy(dtype=np.float64),
        groups=groups,
        split=split,
        lonlat=lonlat,
        target_name=source.target_column,
        info={
            "tiles": str(source.tiles),
            "labels": str(source.labels),
            "tile_degrees": source.tile_degrees,
            "buffered": int((split == BUFFER).sum()),
            "columns": {
                "id": source.id_column,
                "target": source.target_column,
                "group": source.group_column,
                "lon": source.lon_column,
                "lat": source.lat_column,
            },
        },
    )
