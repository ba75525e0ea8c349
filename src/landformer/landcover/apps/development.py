"""``landcover dev-prob``: inpaint a region many times; the share of samples in which a pixel is one of the
legend's "developed" classes. Regions larger than a chip are covered by overlapping windows decoded in turn, each
seeing what earlier windows drew, so every sample is one coherent map."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from affine import Affine
from torch import Tensor

from landformer.core.errors import UserError
from landformer.core.io import write_npz
from landformer.core.legend import Legend
from landformer.core.raster import open_raster, pixel_to_lonlat, read_window, write_geotiff
from landformer.landcover import decoding, plots
from landformer.landcover.apps.common import (
    check_region,
    generator_for,
    progress_bar,
    window_starts,
)
from landformer.landcover.export import LoadedModel
from landformer.landcover.model import LandCoverRandAR

NODATA_PROBABILITY = -1.0  # dev_prob.tif's nodata value: outside [0, 1], and finite so no tool trips on NaN


@dataclass
class DevelopmentProbability:
    probability: np.ndarray  # (H, W) float32 in [0, 1]; NaN at nodata cells that were not re-imagined
    nodata: np.ndarray  # (H, W) bool: the nodata cells outside the re-imagined region, kept as nodata
    samples: np.ndarray  # (n_kept, H, W) int16: the first few samples, for pictures
    n_samples: int
    windows: list[tuple[int, int]]  # top-left corners of the windows that were decoded, in order
    seconds: float


def development_probability(
    model: LandCoverRandAR,
    legend: Legend,
    labels: np.ndarray,
    reimagine: np.ndarray,
    n_samples: int = 32,
    steps: int | None = None,
    temperature: float = 1.0,
    covariates: Tensor | None = None,
    lonlat: Tensor | None = None,
    batch_size: int = 32,
    overlap: int | None = None,
    keep_samples: int = 4,
    seed: int = 0,
    progress: bool = False,
    keep_nodata: bool = True,
) -> DevelopmentProbability:
    """Share of ``n_samples`` inpainted maps in which each pixel is a "developed" class of the legend.

    ``labels`` (H, W) is the region (-1 nodata), ``reimagine`` (H, W) True where the model redraws the map;
    everything else is kept and conditions the draw, so its probability is exactly 0 or 1. A region larger
    than the model's chip is covered by chip-sized windows that overlap by ``overlap`` cells (default half a
    chip), decoded in raster order: each window redraws only the cells no earlier window drew and sees the
    others as known, so a sample is one consistent map. With ``keep_nodata``, nodata cells outside ``reimagine``
    stay nodata: the model is told they are nodata (as training chips show it), samples keep -1 there and their
    probability is NaN. Without it they are drawn (gap filling) and get a probability like the region; nodata
    cells inside ``reimagine`` are always redrawn. ``covariates``
    (C, H, W) and ``lonlat`` (2,) condition a conditional model, the same for every sample.
    """
    labels = np.asarray(labels)
    reimagine = np.asarray(reimagine, dtype=bool)
    if labels.ndim != 2 or reimagine.shape != labels.shape:
        raise UserError(f"dev-prob: labels {labels.shape} and mask {reimagine.shape} should be one (H, W) shape")
    if not reimagine.any():
        raise UserError("dev-prob: the region to re-imagine is empty")
    if n_samples < 1 or batch_size < 1:
        raise UserError(f"dev-prob: need n_samples >= 1 and batch_size >= 1, got {n_samples} and {batch_size}")
    height, width = labels.shape
    size = check_region(model, height, width, "the dev-prob region")
    overlap = size // 2 if overlap is None else overlap
    windows = [(r, c) for r in window_starts(height, size, overlap) for c in window_starts(width, size, overlap)]
    developed = np.zeros(model.config.n_classes + 1, dtype=bool)  # the extra slot is nodata (-1)
    developed[legend.group_indices("developed")] = True
    generator = generator_for(model, seed)
    start = torch.as_tensor(np.where(reimagine, -1, labels), dtype=torch.long)
    nodata = (labels < 0) & ~reimagine & keep_nodata
    nodata_tensor = torch.as_tensor(nodata)
    hits = np.zeros((height, width), dtype=np.int64)
    kept: list[np.ndarray] = []
    decoded: list[tuple[int, int]] = []
    began = time.perf_counter()
    batches = range(0, n_samples, batch_size)
    bar = progress_bar(len(batches) * len(windows), "dev-prob windows", progress)
    for begin in batches:
        batch = min(batch_size, n_samples - begin)
        canvas = start.expand(batch, height, width).clone()
        for row, col in windows:
            known = canvas[:, row : row + size, col : col + size]
            window_nodata = nodata_tensor[row : row + size, col : col + size].expand(batch, size, size)
            bar.update(1)
            if bool(((known >= 0) | window_nodata).all()):
                continue
            window_covariates = None
            if covariates is not None:
                window_covariates = covariates[:, row : row + size, col : col + size].expand(batch, -1, -1, -1)
            window_lonlat = lonlat.reshape(1, 2).expand(batch, 2) if lonlat is not None else None
            drawn = decoding.sample(
                model,
                known=known,
                nodata=window_nodata,
                steps=steps,
                temperature=temperature,
                covariates=window_covariates,
                lonlat=window_lonlat,
                generator=generator,
            ).cpu()
            canvas[:, row : row + size, col : col + size] = drawn
            if begin == 0:
                decoded.append((row, col))
        maps = canvas.numpy()
        hits += developed[maps].sum(axis=0)
        kept.extend(maps[: max(keep_samples - len(kept), 0)].astype(np.int16))
    bar.close()
    probability = (hits / n_samples).astype(np.float32)
    probability[nodata] = np.nan
    return DevelopmentProbability(probability, nodata, np.stack(kept), n_samples, decoded, time.perf_counter() - began)


def write_development_probability(
    result: DevelopmentProbability,
    legend: Legend,
    labels: np.ndarray,
    reimagine: np.ndarray,
    out_dir: str | os.PathLike[str],
    transform: Any | None = None,
    crs: Any | None = None,
) -> dict[str, Path]:
    """``dev_prob.png`` (input with the re-imagined region greyed, samples, probability), ``dev_prob_map.png``
    (the probability alone, magma, 0 black .. 1 light), ``dev_prob.npz`` and, when a ``transform`` and ``crs``
    are given, ``dev_prob.tif`` (float32) on the input window's grid, whose nodata cells hold
    :data:`NODATA_PROBABILITY`, declared as the file's nodata value."""
    out = Path(out_dir)
    paths = {
        "panel": plots.development_panel(
            out / "dev_prob.png", labels, reimagine, result.samples, result.probability, result.n_samples, legend
        ),
        "map": plots.probability_map(out / "dev_prob_map.png", result.probability),
        "npz": write_npz(
            out / "dev_prob.npz",
            {
                "probability": result.probability,
                "nodata": result.nodata,
                "reimagine": reimagine,
                "labels": labels,
                "samples": result.samples,
            },
        ),
    }
    if transform is not None and crs is not None:
        paths["geotiff"] = write_geotiff(
            out / "dev_prob.tif",
            np.where(result.nodata, NODATA_PROBABILITY, result.probability).astype(np.float32),
            transform,
            crs,
            nodata=NODATA_PROBABILITY,
            band_names=["p_developed"],
            tags={
                "samples": result.n_samples,
                "developed_classes": ",".join(legend.names[i] for i in legend.group_indices("developed")),
            },
        )
    return paths


def central_half(height: int, width: int) -> tuple[int, int, int, int]:
    """The box (col, row, w, h) of a window's central half: what dev-prob re-imagines when no region is given."""
    return width // 4, height // 4, width - 2 * (width // 4), height - 2 * (height // 4)


def region_mask(region: list[int] | None, height: int, width: int) -> np.ndarray:
    """(H, W) True inside ``region`` (col, row, w, h; default: the central half), which must lie in the window."""
    col, row, w, h = region if region is not None else central_half(height, width)
    if w < 1 or h < 1 or col < 0 or row < 0 or col + w > width or row + h > height:
        raise UserError(f"--region {col} {row} {w} {h} does not lie inside the {width}x{height} window")
    mask = np.zeros((height, width), dtype=bool)
    mask[row : row + h, col : col + w] = True
    return mask


def read_raster_window(
    path: Path, window: list[int], loaded: LoadedModel
) -> tuple[np.ndarray, Affine, Any, Tensor | None]:
    """Class indices (H, W), the window's transform and CRS, and lon/lat of its centre."""
    col, row, width, height = window
    size = loaded.chip_size
    if width < size or height < size:
        raise UserError(f"--window {col} {row} {width} {height} is smaller than the model's {size}x{size} chip")
    with open_raster(path) as dataset:
        try:
            raw = read_window(dataset, row, col, height, width, bands=1)
        except ValueError as err:
            raise UserError(f"--window {col} {row} {width} {height}: {err}") from None
        transform = dataset.transform @ Affine.translation(col, row)
        crs = dataset.crs
    labels = loaded.legend.encode(raw, source=str(path)).astype(np.int64)
    lon, lat = pixel_to_lonlat(transform, crs, height / 2, width / 2)
    lonlat = torch.tensor([float(lon[0]), float(lat[0])], dtype=torch.float32) if loaded.config.use_lonlat else None
    return labels, transform, crs, lonlat
