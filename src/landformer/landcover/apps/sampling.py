"""``landcover sample``: maps generated from scratch, and :func:`generate_samples`, the one batched and seeded
way to draw many maps that every command uses.

Conditioning. A model trained with covariates (elevation) or lon/lat reads them in its prefix. Sampling from
scratch then takes them, in this order of preference, from ``reference`` (a raster whose bands are the
covariates; samples are placed on random windows of it and also written as GeoTIFFs), from the test chips of
``chips`` (default: the chip file the model was trained on, when it still exists), or nowhere when
``unconditional=True`` (the learned null conditioning, the same as classifier-free guidance's unconditional
branch). Guidance needs real conditioning.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window
from torch import Tensor
from tqdm import tqdm

from landformer.core.errors import UserError
from landformer.core.io import write_json, write_npz
from landformer.core.legend import Legend
from landformer.core.raster import chip_centre_lonlat, open_raster, write_geotiff
from landformer.core.viz import save_png
from landformer.landcover import decoding, plots
from landformer.landcover.apps.common import (
    ModelLike,
    batch_slices,
    generator_for,
    loaded_model,
    open_chips,
    select_chips,
    training_chips_path,
)
from landformer.landcover.data import lonlat_inputs, model_inputs
from landformer.landcover.export import LoadedModel
from landformer.landcover.model import LandCoverRandAR


@dataclass
class Conditioning:
    """What a conditioned model reads when sampling from scratch, and where the samples lie on the ground."""

    covariates: Tensor | None = None
    lonlat: Tensor | None = None
    source: str = "none"
    windows: list[tuple[int, int]] | None = None  # (row, col) of each sample on the reference raster
    reference: Path | None = None


def _reference_windows(
    loaded: LoadedModel, reference: Path, n: int, seed: int
) -> tuple[list[tuple[int, int]], np.ndarray | None, np.ndarray]:
    """``n`` random chip windows of ``reference``; when the model reads covariates, the reference's bands are
    those covariates and windows holding nodata are skipped. Returns windows, (n, c, H, W) covariates or None,
    and (n, 2) lon/lat of the window centres."""
    size = loaded.chip_size
    n_covariates = loaded.config.covariate_channels
    rng = np.random.default_rng(seed)
    with open_raster(reference) as dataset:
        if dataset.height < size or dataset.width < size:
            raise UserError(f"reference raster {reference} ({dataset.height}x{dataset.width}) is smaller than a chip")
        if n_covariates and dataset.count != n_covariates:
            raise UserError(
                f"reference raster {reference} has {dataset.count} band(s); the model reads {n_covariates} covariate "
                f"channel(s) {loaded.covariate_names}, which the reference's bands must provide"
            )
        windows: list[tuple[int, int]] = []
        chips: list[np.ndarray] = []
        for _ in range(50 * n):
            if len(windows) == n:
                break
            row = int(rng.integers(0, dataset.height - size + 1))
            col = int(rng.integers(0, dataset.width - size + 1))
            if n_covariates:
                block = dataset.read(window=Window(col, row, size, size), masked=True).astype(np.float32)
                if np.ma.is_masked(block) or not np.isfinite(block.filled(np.nan)).all():
                    continue
                chips.append(block.filled(np.nan))
            windows.append((row, col))
        if len(windows) < n:
            raise UserError(f"reference raster {reference}: found only {len(windows)} chip windows without nodata")
        rows = np.array([w[0] for w in windows])
        cols = np.array([w[1] for w in windows])
        lon, lat = chip_centre_lonlat(dataset, rows, cols, size)
    covariates = np.stack(chips) if n_covariates else None
    return windows, covariates, np.stack([lon, lat], axis=1)


def sampling_conditioning(
    loaded: LoadedModel,
    n: int,
    chips: str | os.PathLike[str] | None = None,
    reference: str | os.PathLike[str] | None = None,
    unconditional: bool = False,
    seed: int = 0,
) -> Conditioning:
    """Conditioning for ``n`` samples from scratch; see the module docstring for the order of preference."""

    if reference is not None:
        reference = Path(reference)
        windows, raw, lonlat = _reference_windows(loaded, reference, n, seed)
        if not loaded.is_conditional or unconditional:
            return Conditioning(source="none", windows=windows, reference=reference)
        covariates = None
        if raw is not None:
            placeholder = np.zeros((n, 1, *raw.shape[2:]), dtype=np.float32)
            _, covariates = model_inputs(np.concatenate([placeholder, raw], axis=1), loaded.covariate_stats)
        lonlat_tensor = lonlat_inputs(lonlat) if loaded.config.use_lonlat else None
        return Conditioning(covariates, lonlat_tensor, f"reference {reference}", windows, reference)
    if not loaded.is_conditional or unconditional:
        return Conditioning()
    if chips is None and training_chips_path(loaded) is None:
        raise UserError(
            f"the model {loaded.path} is conditioned on {loaded.covariate_names or 'lon/lat'}: give --chips (their "
            "test chips provide it), --reference (a raster of the covariates) or --unconditional"
        )
    chip_set, path = open_chips(loaded, chips)
    tensors = select_chips(loaded, chip_set, None)
    index = torch.arange(n) % len(tensors)
    covariates = tensors.covariates[index] if tensors.covariates is not None else None
    lonlat = tensors.lonlat[index] if tensors.lonlat is not None else None
    return Conditioning(covariates, lonlat, f"test chips of {path}")


def generate_samples(
    model: LandCoverRandAR,
    n: int,
    steps: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    covariates: Tensor | None = None,
    lonlat: Tensor | None = None,
    batch_size: int = 64,
    seed: int = 0,
    top_p: float | None = None,
    guidance: float = 0.0,
    order: str | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, float]:
    """``n`` maps (n, H, W) int64 drawn from scratch in batches with :func:`decoding.sample`, and the seconds
    spent decoding them. Batches draw in turn from one generator seeded with ``seed``, so a seed and a batch size
    give the same maps every time.

    Sample i is conditioned on ``covariates[i]`` / ``lonlat[i]`` when those are given. ``steps=None`` decodes one
    cell per step with the KV cache; an integer decodes in that many steps on a cosine schedule (parallel
    decoding).
    """
    if n < 1 or batch_size < 1:
        raise UserError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    generator = generator_for(model, seed)
    device = model.device
    pieces = []
    began = time.perf_counter()
    for part in tqdm(batch_slices(n, batch_size), desc="sampling", unit="batch", disable=None if progress else True):
        pieces.append(
            decoding.sample(
                model,
                part.stop - part.start,
                order=order,  # type: ignore[arg-type]
                steps=steps,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                covariates=covariates[part].to(device) if covariates is not None else None,
                lonlat=lonlat[part].to(device) if lonlat is not None else None,
                guidance=guidance,
                generator=generator,
            ).cpu()
        )
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    return torch.cat(pieces).numpy().astype(np.int64), seconds


def _write_geotiffs(
    maps: np.ndarray, legend: Legend, conditioning: Conditioning, chip_size: int, out: Path
) -> list[Path]:
    """One GeoTIFF of raw legend codes per sample, on its window of the reference raster."""
    assert conditioning.reference is not None and conditioning.windows is not None
    nodata = legend.nodata_codes[0] if legend.nodata_codes else None
    paths = []
    with open_raster(conditioning.reference) as dataset:
        for i, (row, col) in enumerate(conditioning.windows):
            transform = dataset.window_transform(Window(col, row, chip_size, chip_size))
            codes = legend.decode(maps[i], nodata_code=nodata)
            paths.append(
                write_geotiff(
                    out / f"sample_{i:03d}.tif",
                    codes,
                    transform,
                    dataset.crs,
                    nodata=nodata,
                    band_names=[legend.name],
                    tags={"legend": legend.name, "generator": "landformer landcover sample"},
                    legend=legend,
                )
            )
    return paths


def sample_maps(
    model: ModelLike,
    out: str | os.PathLike[str],
    n: int = 16,
    steps: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance: float = 0.0,
    chips: str | os.PathLike[str] | None = None,
    reference: str | os.PathLike[str] | None = None,
    unconditional: bool = False,
    order: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, Any]:
    """Generate ``n`` maps from scratch: ``samples.png`` (grid), ``samples.npz`` (class indices and raw codes)
    and, with ``reference``, ``sample_XXX.tif``. ``steps=None`` decodes one cell per step with the KV cache;
    an integer decodes in that many steps on a cosine schedule (parallel decoding)."""
    loaded = loaded_model(model, device)
    out = Path(out)
    if n < 1:
        raise UserError(f"the number of samples should be at least 1, got {n}")
    conditioning = sampling_conditioning(loaded, n, chips, reference, unconditional, seed)
    if guidance != 0.0 and conditioning.covariates is None and conditioning.lonlat is None:
        raise UserError("guidance needs conditioning: the model is unconditioned or --unconditional was given")
    maps, _ = generate_samples(
        loaded.model,
        n,
        steps,
        temperature,
        top_k,
        conditioning.covariates,
        conditioning.lonlat,
        batch_size,
        seed,
        top_p=top_p,
        guidance=guidance,
        order=order,
        progress=True,
    )
    samples = maps.astype(np.int16)
    out.mkdir(parents=True, exist_ok=True)
    png = save_png(out / "samples.png", plots.class_grid(samples, loaded.legend))
    arrays = {"classes": samples, "codes": loaded.legend.decode(samples)}
    if conditioning.windows is not None:
        arrays["windows"] = np.array(conditioning.windows, dtype=np.int64)
    npz = write_npz(out / "samples.npz", arrays)
    geotiffs = []
    if conditioning.reference is not None:
        geotiffs = _write_geotiffs(samples, loaded.legend, conditioning, loaded.chip_size, out)
    summary = {
        "png": str(png),
        "npz": str(npz),
        "geotiffs": [str(p) for p in geotiffs],
        "n": n,
        "steps": steps,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "guidance": guidance,
        "conditioning": conditioning.source,
        "seed": seed,
    }
    write_json(out / "sample.json", summary)
    return summary
