"""Geolocation data as people have it: label CSVs and folders of PNG/JPEG photos or multi-band GeoTIFF chips.

A label CSV has the columns ``filename, latitude, longitude, Region_ID`` (others are ignored); filenames are
relative to an image folder. Images become float tensors (bands, H, W): PNG/JPEG through Pillow (grey, RGB,
RGBA, 16-bit), GeoTIFFs through rasterio with their nodata as NaN. Each band is standardised with a mean and
standard deviation measured on the training images (core's z-score, saved as JSON), NaN then becomes 0 (the band
mean), and images are resized to one shape. Every problem a user can cause names the file and the value.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm import tqdm

from landformer.core.errors import UserError
from landformer.core.io import require_file
from landformer.core.normalize import ZScore, normalizer_from_dict
from landformer.core.raster import open_any_raster

REQUIRED_COLUMNS = ("filename", "latitude", "longitude", "Region_ID")
RASTER_SUFFIXES = (".tif", ".tiff")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_SUFFIXES = RASTER_SUFFIXES + PICTURE_SUFFIXES


# ------------------------------------------------------------------------------------------------ labels


@dataclass
class LabelTable:
    """The rows of one label CSV; ``latitude``/``longitude``/``regions`` are None for an unlabelled list."""

    source: Path
    filenames: list[str]
    latitude: np.ndarray | None = None
    longitude: np.ndarray | None = None
    regions: list[str] | None = None

    def __len__(self) -> int:
        return len(self.filenames)

    @property
    def labelled(self) -> bool:
        return self.latitude is not None

    def subset(self, mask_or_indices: np.ndarray) -> LabelTable:
        """The rows selected by a boolean mask or an index array, in order."""
        indices = np.arange(len(self))[np.asarray(mask_or_indices)]
        return LabelTable(
            self.source,
            [self.filenames[i] for i in indices],
            None if self.latitude is None else self.latitude[indices],
            None if self.longitude is None else self.longitude[indices],
            None if self.regions is None else [self.regions[i] for i in indices],
        )


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{path} line {line}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"{path} line {line}: {column} {text!r} is not a finite number")
    return value


def read_labels(path: str | os.PathLike[str], labelled: bool = True, out_of_range: bool = False) -> LabelTable:
    """Read and check a label CSV. ``labelled=False`` needs only ``filename`` (for ``geoloc predict``), reads
    ``Region_ID`` when it is there, and the coordinates only when all four columns are present.

    Refused with the line and value: missing columns, empty filenames or regions, non-numbers, a filename listed
    twice, a file with no rows, and latitudes outside [-90, 90] or longitudes outside [-180, 180] unless
    ``out_of_range`` keeps them (training labels: label cleaning drops and reports them, see
    :func:`landformer.geoloc.clean.clean_labels`).
    """
    path = require_file(path, "label CSV")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{path} is not a readable CSV file: {err}") from None
    required = REQUIRED_COLUMNS if labelled else ("filename",)
    missing = [column for column in required if column not in header]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(header) or 'no header'}; "
            f"needs {', '.join(REQUIRED_COLUMNS)})"
        )
    if not rows:
        raise UserError(f"{path} has a header but no rows")
    with_labels = all(column in header for column in REQUIRED_COLUMNS)
    filenames: list[str] = []
    latitude: list[float] = []
    longitude: list[float] = []
    regions: list[str] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        filename = (row.get("filename") or "").strip()
        if not filename:
            raise UserError(f"{path} line {line}: empty filename")
        if filename in seen:
            raise UserError(f"{path} line {line}: filename {filename!r} is already listed on line {seen[filename]}")
        seen[filename] = line
        filenames.append(filename)
        region = (row.get("Region_ID") or "").strip()
        if "Region_ID" in header and not region:
            raise UserError(f"{path} line {line}: empty Region_ID for {filename}")
        regions.append(region)
        if not with_labels:
            continue
        lat = _number((row.get("latitude") or "").strip(), path, line, "latitude")
        lon = _number((row.get("longitude") or "").strip(), path, line, "longitude")
        if not out_of_range and not -90.0 <= lat <= 90.0:
            raise UserError(f"{path} line {line}: latitude {lat} of {filename} is outside [-90, 90]")
        if not out_of_range and not -180.0 <= lon <= 180.0:
            raise UserError(f"{path} line {line}: longitude {lon} of {filename} is outside [-180, 180]")
        latitude.append(lat)
        longitude.append(lon)
    if not with_labels:
        return LabelTable(path, filenames, regions=regions if "Region_ID" in header else None)
    return LabelTable(path, filenames, np.array(latitude), np.array(longitude), regions)


def read_filename_list(path: str | os.PathLike[str]) -> set[str]:
    """Filenames from a text file (one a line; blank lines and ``#`` comments skipped) or from the ``filename``
    column of a CSV whose first line names it."""
    path = require_file(path, "exclusion list")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"exclusion list {path} is not UTF-8 text: {err}") from None
    lines = text.splitlines()
    if lines and "filename" in [cell.strip() for cell in lines[0].split(",")]:
        return {row["filename"].strip() for row in csv.DictReader(lines) if (row.get("filename") or "").strip()}
    return {line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")}


def list_images(folder: str | os.PathLike[str]) -> list[str]:
    """Names of the PNG/JPEG/GeoTIFF files directly inside ``folder``, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"image folder not found: {folder}")
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not names:
        raise UserError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return names


# ------------------------------------------------------------------------------------------------ images


def _image_path(folder: Path, filename: str) -> Path:
    path = folder / filename
    if not path.is_file():
        raise UserError(f"image {path} not found (listed as {filename!r})")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"image {path} has an unsupported type; use {', '.join(IMAGE_SUFFIXES)}")
    return path


def probe_image(path: Path) -> tuple[int, int, int]:
    """(bands, height, width) from the file's header, without decoding the pixels."""
    if path.suffix.lower() in RASTER_SUFFIXES:
        with open_any_raster(path) as dataset:
            return dataset.count, dataset.height, dataset.width
    try:
        with Image.open(path) as image:
            bands = 3 if image.mode == "P" else len(image.getbands())
            return bands, image.height, image.width
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"image {path} does not open: {err}") from None


def read_image(path: Path) -> np.ndarray:
    """(bands, H, W) float32; GeoTIFF nodata and masked pixels become NaN, palette PNGs become RGB."""
    if path.suffix.lower() in RASTER_SUFFIXES:
        with open_any_raster(path) as dataset:  # checked reads: a corrupt block or +-inf is one line
            data = dataset.read(masked=True)
        return np.ma.filled(data.astype(np.float32), np.nan)
    try:
        with Image.open(path) as image:
            if image.mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            pixels = np.asarray(image)
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"image {path} does not open: {err}") from None
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


def check_images(
    folder: str | os.PathLike[str],
    filenames: Sequence[str],
    bands: int | None = None,
    what: str = "images",
    progress: bool = False,
) -> tuple[int, int, int]:
    """Open every image's header: it must exist, open, and have ``bands`` bands (default: the first image's).

    Returns (bands, height, width) of the first image. Doing this up front means a broken file stops the run
    before hours of training rather than in the middle of it.
    """
    folder = Path(folder)
    first: tuple[int, int, int] | None = None
    first_name = ""
    for filename in tqdm(filenames, desc=f"checking {what}", disable=None if progress else True, leave=False):
        shape = probe_image(_image_path(folder, filename))
        if first is None:
            first, first_name = shape, filename
            if bands is not None and shape[0] != bands:
                raise UserError(
                    f"image {folder / filename} has {shape[0]} bands but the model was trained on {bands}: "
                    "all images must have the same bands"
                )
        elif shape[0] != first[0]:
            raise UserError(
                f"image {folder / filename} has {shape[0]} bands but {first_name} has {first[0]}: "
                "all images must have the same bands"
            )
    if first is None:
        raise UserError(f"no {what} to check in {folder}")
    return first


@dataclass(frozen=True)
class BandNormalizer(ZScore):
    """Per-band standardisation measured on training images: core's z-score ``(x - mean) / std``, plus what a
    geoloc run needs of it: the band names, a fit that streams over images never held in memory together, and
    NaN (nodata) -> 0, the band mean."""

    band_names: tuple[str, ...] = ()

    @classmethod
    def from_images(cls, images: Iterable[np.ndarray], band_names: Sequence[str] = ()) -> BandNormalizer:
        """Mean and standard deviation of every band over all finite pixels (float64 sums, one pass)."""
        count = total = squares = None
        for image in images:
            finite = np.isfinite(image)
            values = np.where(finite, image, 0.0).astype(np.float64)
            if count is None:
                count, total, squares = np.zeros(len(image)), np.zeros(len(image)), np.zeros(len(image))
            count += finite.sum(axis=(1, 2))
            total += values.sum(axis=(1, 2))
            squares += (values**2).sum(axis=(1, 2))
        if count is None:
            raise ValueError("no images to measure")
        mean = total / np.maximum(count, 1)
        std = np.sqrt(np.maximum(squares / np.maximum(count, 1) - mean**2, 0.0))
        # Float noise on a constant band is no spread: the band is only centred.
        std = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1.0), std, 1.0)
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std), tuple(band_names))

    def apply(self, image: np.ndarray) -> np.ndarray:
        """A (bands, H, W) float32 image standardised, with NaN and infinities at 0."""
        return np.nan_to_num(self.transform(image), nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "band_names": list(self.band_names)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "normalization") -> BandNormalizer:
        """The normaliser :meth:`to_dict` wrote; runs trained before it was core's z-score lack the ``kind``."""
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected lists 'mean' and 'std' of numbers")
        normalizer = normalizer_from_dict({"kind": ZScore.kind, **data}, source)
        if not isinstance(normalizer, ZScore):
            raise UserError(f"{source}: band statistics are a {normalizer.kind} normaliser, expected {ZScore.kind}")
        return cls(normalizer.offset, normalizer.scale, tuple(str(name) for name in data.get("band_names", [])))


def band_names_of(path: Path) -> list[str]:
    """Band descriptions of a GeoTIFF (empty strings where unnamed); [] for pictures."""
    if path.suffix.lower() not in RASTER_SUFFIXES:
        return []
    with open_any_raster(path) as dataset:
        return [name or "" for name in dataset.descriptions]


def resize(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Resize a (bands, H, W) tensor to ``shape`` (bilinear with antialiasing); unchanged if it already fits."""
    if tuple(image.shape[-2:]) == tuple(shape):
        return image
    return F.interpolate(image[None], size=shape, mode="bilinear", align_corners=False, antialias=True)[0]


class ImageStore:
    """The images of one label table, normalised and resized; decoded once up front (``preload``) or on each
    access. Datasets index into a store, so every region's subset shares one copy in memory."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        filenames: Sequence[str],
        normalizer: BandNormalizer,
        shape: tuple[int, int],
        preload: bool = True,
        raw: Sequence[np.ndarray] | None = None,
        progress: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.filenames = list(filenames)
        self.normalizer = normalizer
        self.shape = (int(shape[0]), int(shape[1]))
        self.images: torch.Tensor | None = None
        if preload:
            tensor = torch.empty((len(self.filenames), normalizer.n_channels, *self.shape), dtype=torch.float32)
            for index in tqdm(
                range(len(self.filenames)), desc="loading images", disable=None if progress else True, leave=False
            ):
                tensor[index] = self._prepare(raw[index] if raw is not None else self._read(index), index)
            self.images = tensor

    def __len__(self) -> int:
        return len(self.filenames)

    def _read(self, index: int) -> np.ndarray:
        return read_image(_image_path(self.folder, self.filenames[index]))

    def _prepare(self, image: np.ndarray, index: int) -> torch.Tensor:
        if image.shape[0] != self.normalizer.n_channels:
            raise UserError(
                f"image {self.folder / self.filenames[index]} has {image.shape[0]} bands but the model expects "
                f"{self.normalizer.n_channels}: all images must have the same bands"
            )
        return resize(torch.from_numpy(self.normalizer.apply(image)), self.shape)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.images is not None:
            return self.images[index]
        return self._prepare(self._read(index), index)


def fit_band_normalizer(
    folder: str | os.PathLike[str], filenames: Sequence[str], keep: bool, progress: bool = False
) -> tuple[BandNormalizer, list[np.ndarray] | None]:
    """Band statistics of the training images (one pass), and the decoded images when ``keep`` is set, so a
    preloading store does not decode them a second time."""
    folder = Path(folder)
    kept: list[np.ndarray] | None = [] if keep else None

    def images() -> Iterable[np.ndarray]:
        for filename in tqdm(filenames, desc="band statistics", disable=None if progress else True, leave=False):
            image = read_image(_image_path(folder, filename))
            if kept is not None:
                kept.append(image)
            yield image

    names = band_names_of(folder / filenames[0])
    normalizer = BandNormalizer.from_images(images(), band_names=names if any(names) else ())
    return normalizer, kept


class GeolocDataset(Dataset):
    """Items ``{"image": (bands, H, W), "target": (2,) scaled local coordinates, "region": class index}`` for
    the rows ``indices`` of a store; ``targets``/``labels`` are optional (None leaves the key out)."""

    def __init__(
        self,
        store: ImageStore,
        indices: np.ndarray,
        targets: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> None:
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = None if targets is None else np.asarray(targets, dtype=np.float32)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        for name, values in (("targets", self.targets), ("labels", self.labels)):
            if values is not None and len(values) != len(self.indices):
                raise ValueError(f"{len(values)} {name} for {len(self.indices)} images")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, Any]:
        sample: dict[str, Any] = {"image": self.store[int(self.indices[item])]}
        if self.targets is not None:
            sample["target"] = torch.from_numpy(self.targets[item])
        if self.labels is not None:
            sample["region"] = torch.tensor(self.labels[item])
        return sample
