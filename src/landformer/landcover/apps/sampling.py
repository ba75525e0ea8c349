"""Using a trained land-cover model: sample, animate, inpaint, inpaint-eval, perplexity and info.

Each function takes a run folder (or a :class:`~landformer.landcover.export.LoadedModel`), writes its outputs
into ``out`` and returns a summary dict with the paths and key numbers; ``landcover/cli.py`` is a thin shell
over them.

Conditioning. A model trained with covariates (elevation) or lon/lat reads them in its prefix. Sampling from
scratch then takes them, in this order of preference, from ``reference`` (a raster whose bands are the
covariates; samples are placed on random windows of it and also written as GeoTIFFs), from the test chips of
``chips`` (default: the chip file the model was trained on, when it still exists), or nowhere when
``unconditional=True`` (the learned null conditioning, the same as classifier-free guidance's unconditional
branch). Guidance needs real conditioning. Inpainting, perplexity and info always use the chips' own
covariates.

Scores. Log-likelihoods are natural logs per valid pixel (nats); bits = nats / ln 2. Inpainting accuracy is
measured on the hidden pixels only, for the model's per-pixel most likely class given the known pixels (one
forward pass that asks for every hidden cell after the known ones), for one sampled completion, and for two
baselines: the majority class of the known pixels and the class of the nearest known pixel. ``info`` sets the
model's bits beside the strong baselines of :mod:`landformer.landcover.baselines` (causal-context model,
per-chip and pooled compressors) on fair test chips: no exact duplicates, no two chips sharing a pixel.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from landformer.core.chips import ChipSet, load_chips
from landformer.core.errors import UserError
from landformer.core.io import write_json, write_npz
from landformer.core.legend import Legend
from landformer.core.viz import DPI, new_figure, save_figure
from landformer.landcover import baselines, decoding
from landformer.landcover.data import ChipTensors, class_entropy_bits, lonlat_inputs
from landformer.landcover.export import LoadedModel, check_chips_match, load_model
from landformer.landcover.task import class_grid

ModelLike = LoadedModel | str | os.PathLike[str]
MaskKind = Literal["box", "random"]
LN2 = math.log(2)
PROBABILITY_FLOOR = 1e-6  # baselines' probabilities never reach 0, so their log-loss stays finite


# ------------------------------------------------------------------------------------------------ helpers


def _loaded(model: ModelLike, device: str = "cpu") -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model, device)


def _generator(loaded: LoadedModel, seed: int) -> torch.Generator:
    device = loaded.model.device
    return torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(seed)


def _training_chips_path(loaded: LoadedModel) -> Path | None:
    """The chip file the model was trained on: the recorded one while it exists, else, for a model trained on
    IGBP chips built on the spot (the packaged ``igbp`` model), the same chips cut again into the data cache."""
    extra = loaded.metadata.get("extra", {})
    recorded = extra.get("chips")
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    settings = extra.get("igbp_chips")
    if not settings:
        return None
    from landformer.synth.packaged import cache_dir, igbp_chips

    key = "_".join(str(value) for value in settings.values()).replace(" ", "")
    cached = cache_dir() / f"igbp_chips_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"
    if not cached.is_file():
        print(f"cutting the IGBP chips model {loaded.path.name} was trained on into {cached}")
        igbp_chips(cached, **settings)
    return cached


def open_chips(loaded: LoadedModel, chips: str | os.PathLike[str] | None) -> tuple[ChipSet, Path]:
    """The chip file to work on (default: the one the model was trained on), checked against the model."""
    path = Path(chips) if chips is not None else _training_chips_path(loaded)
    if path is None:
        raise UserError(f"give a chip file (--chips): the model {loaded.path} records none that still exists")
    chip_set = load_chips(path)
    check_chips_match(loaded, chip_set, str(path))
    return chip_set, path


def select_chips(loaded: LoadedModel, chip_set: ChipSet, n: int | None, split: str = "test") -> ChipTensors:
    """``n`` chips (all when None) spread evenly through a split, as model inputs; an empty split is a UserError."""
    data = chip_set.test_data if split == "test" else chip_set.train_data
    if len(data) == 0:
        raise UserError(f"chip file {chip_set.source}: the {split} split is empty")
    if n is not None and n < 1:
        raise UserError(f"the number of chips should be at least 1, got {n}")
    return ChipTensors.from_chips(chip_set, split, loaded, loaded.config.use_lonlat, limit=n)


def _to(tensor: Tensor | None, loaded: LoadedModel) -> Tensor | None:
    return tensor.to(loaded.model.device) if tensor is not None else None


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _figure(width_in: float, height_in: float, ncols: int = 1) -> tuple[Any, Any]:
    figure = new_figure(int(width_in * DPI), int(height_in * DPI), layout="constrained")
    return figure, figure.subplots(1, ncols)


# ------------------------------------------------------------------------------------------ conditioning


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
    from rasterio.windows import Window

    from landformer.core.raster import chip_centre_lonlat, open_raster

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
    from landformer.landcover.data import model_inputs

    if reference is not None:
        reference = Path(reference)
        windows, raw, lonlat = _reference_windows(loaded, reference, n, seed)
        if not loaded.is_conditional or unconditional:
            return Conditioning(source="none", windows=windows, reference=reference)
        covariates = None
        if raw is not None:
            placeholder = np.zeros((n, 1, *raw.shape[2:]), dtype=np.float32)
            _, covariates = model_inputs(np.concatenate([placeholder, raw], axis=1), loaded)
        lonlat_tensor = lonlat_inputs(lonlat) if loaded.config.use_lonlat else None
        return Conditioning(covariates, lonlat_tensor, f"reference {reference}", windows, reference)
    if not loaded.is_conditional or unconditional:
        return Conditioning()
    if chips is None and _training_chips_path(loaded) is None:
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


# ------------------------------------------------------------------------------------------------ sample


def _write_geotiffs(
    maps: np.ndarray, legend: Legend, conditioning: Conditioning, chip_size: int, out: Path
) -> list[Path]:
    """One GeoTIFF of raw legend codes per sample, on its window of the reference raster."""
    from rasterio.windows import Window

    from landformer.core.raster import open_raster, write_geotiff

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
    loaded = _loaded(model, device)
    out = Path(out)
    if n < 1:
        raise UserError(f"the number of samples should be at least 1, got {n}")
    conditioning = sampling_conditioning(loaded, n, chips, reference, unconditional, seed)
    if guidance != 0.0 and conditioning.covariates is None and conditioning.lonlat is None:
        raise UserError("guidance needs conditioning: the model is unconditioned or --unconditional was given")
    generator = _generator(loaded, seed)
    maps = []
    for part in tqdm(_batches(n, batch_size), desc="sampling", unit="batch", disable=None):
        covariates = conditioning.covariates[part] if conditioning.covariates is not None else None
        lonlat = conditioning.lonlat[part] if conditioning.lonlat is not None else None
        maps.append(
            decoding.sample(
                loaded.model,
                part.stop - part.start,
                order=order,  # type: ignore[arg-type]
                steps=steps,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                covariates=_to(covariates, loaded),
                lonlat=_to(lonlat, loaded),
                guidance=guidance,
                generator=generator,
            ).cpu()
        )
    samples = torch.cat(maps).numpy().astype(np.int16)
    out.mkdir(parents=True, exist_ok=True)
    from landformer.core.viz import save_png

    png = save_png(out / "samples.png", class_grid(samples, loaded.legend))
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


def samples_beside_real(
    path: str | os.PathLike[str], samples: np.ndarray, real: np.ndarray, legend: Legend, title: str = "samples"
) -> Path:
    """Generated chips and real chips as two grids in the same colours, with one legend listing only the classes
    that occur in either."""
    from landformer.core.viz import save_panel

    n = min(len(samples), len(real))
    grids = [class_grid(samples[:n], legend), class_grid(real[:n], legend)]
    present = np.union1d(np.unique(samples[:n]), np.unique(real[:n]))
    # Wide enough panels that three columns of long class names fit under them.
    side = max(384, *(grid.shape[1] for grid in grids))
    return save_panel(path, grids, [title, "real held-out chips"], legend=legend, panel_px=side, present=present)


def animate(
    model: ModelLike,
    out: str | os.PathLike[str],
    nrows: int = 3,
    ncols: int = 3,
    temperature: float = 1.0,
    fps: float = 30.0,
    chips: str | os.PathLike[str] | None = None,
    unconditional: bool = False,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """``animation.gif``: an ``nrows`` x ``ncols`` grid of maps generated one pixel per frame in random order
    (undecided pixels white), ending on the finished maps for one second; ``final.png`` is the last frame."""
    from landformer.core.viz import save_png, write_gif

    loaded = _loaded(model, device)
    out = Path(out)
    if nrows < 1 or ncols < 1:
        raise UserError(f"nrows and ncols should be at least 1, got {nrows} x {ncols}")
    if not (fps > 0 and math.isfinite(fps)):
        raise UserError(f"fps should be a positive number, got {fps}")
    n = nrows * ncols
    conditioning = sampling_conditioning(loaded, n, chips, None, unconditional, seed)
    frames: list[np.ndarray] = []
    n_cells = loaded.chip_size**2
    progress = tqdm(total=n_cells, desc="animating", unit="pixel", disable=None)

    def add_frame(canvas: Tensor) -> None:
        frames.append(class_grid(canvas.cpu().numpy(), loaded.legend))
        progress.update(1)

    decoding.sample(
        loaded.model,
        n,
        order="random",
        temperature=temperature,
        covariates=_to(conditioning.covariates, loaded),
        lonlat=_to(conditioning.lonlat, loaded),
        generator=_generator(loaded, seed),
        on_step=add_frame,
    )
    progress.close()
    blank = class_grid(np.full((n, loaded.chip_size, loaded.chip_size), -1), loaded.legend)
    frames = [blank, *frames] + [frames[-1]] * max(1, round(fps))
    out.mkdir(parents=True, exist_ok=True)
    gif = write_gif(out / "animation.gif", frames, fps=fps)
    png = save_png(out / "final.png", frames[-1])
    return {"gif": str(gif), "png": str(png), "frames": len(frames), "conditioning": conditioning.source}


# ----------------------------------------------------------------------------------------------- inpaint


def box_mask(n: int, size: int, ratio: float) -> Tensor:
    """(n, size, size) True inside a centred square covering about ``ratio`` of the chip (at least one pixel,
    and at least one known pixel left around it)."""
    _check_ratio(ratio)
    side = min(size - 1, max(1, round(math.sqrt(ratio) * size))) if size > 1 else 1
    top = (size - side) // 2
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    mask[:, top : top + side, top : top + side] = True
    return mask


def random_mask(n: int, size: int, ratio: float, generator: torch.Generator) -> Tensor:
    """(n, size, size) with exactly ``round(ratio * size**2)`` True pixels per chip (at least 1), drawn at random."""
    _check_ratio(ratio)
    n_cells = size * size
    hidden = min(n_cells, max(1, round(ratio * n_cells)))
    ranks = torch.rand(n, n_cells, generator=generator).argsort(dim=1).argsort(dim=1)
    return (ranks < hidden).reshape(n, size, size)


def _check_ratio(ratio: float) -> None:
    if not 0 < ratio <= 1:
        raise UserError(f"mask ratio should lie in (0, 1], got {ratio}")


def mask_from_raster(path: str | os.PathLike[str], n: int, size: int) -> Tensor:
    """A mask raster (any GDAL format, georeferenced or not; nonzero = unknown) of one chip's shape, used for
    every chip; a raster of another shape is a UserError naming it."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    from landformer.core.io import require_file

    path = require_file(path, "mask raster")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                values = dataset.read(1)
    except RasterioIOError as err:
        raise UserError(f"mask {path} is not a raster GDAL can read: {err}") from None
    if values.shape != (size, size):
        raise UserError(f"mask {path} is {values.shape[0]}x{values.shape[1]} pixels; the chips are {size}x{size}")
    mask = torch.from_numpy(np.asarray(values != 0)).expand(n, size, size).clone()
    if not bool(mask.any()):
        raise UserError(f"mask {path} marks no pixel as unknown (nonzero = unknown)")
    return mask


def make_mask(kind: str, n: int, size: int, ratio: float, generator: torch.Generator) -> Tensor:
    """``box``, ``random`` or the path of a mask raster."""
    if kind == "box":
        return box_mask(n, size, ratio)
    if kind == "random":
        return random_mask(n, size, ratio, generator)
    if not Path(kind).is_file():
        raise UserError(f"mask {kind!r} is neither 'box', 'random' nor an existing mask raster")
    return mask_from_raster(kind, n, size)


def conditional_marginals(
    model: Any, known: Tensor, covariates: Tensor | None = None, lonlat: Tensor | None = None
) -> Tensor:
    """p(x_cell | known cells) for every cell, (B, H*W, K), from one pass: the known cells are teacher-forced,
    then every other cell is asked for at once (each query sees the known cells only, as if it came next in a
    training order). Rows of known cells hold their own prediction too but are usually ignored."""
    batch, height, width = known.shape
    n_cells = height * width
    device = model.device
    flat = known.reshape(batch, n_cells).to(device)
    is_known = flat >= 0
    n_known = is_known.sum(dim=1)
    most_known = int(n_known.max())
    # Known cells first (stable), then the rest; padding entries are marked invalid.
    order = (~is_known).to(torch.uint8).argsort(dim=1, stable=True)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        state = model.start_decoding(batch, height, width, covariates, lonlat, max_cells=max(most_known, 1))
        if most_known > 0:
            cells = order[:, :most_known]
            valid = torch.arange(most_known, device=device) < n_known.unsqueeze(1)
            padded = not bool(valid.all())
            model.decode_commit(state, cells, flat.gather(1, cells), valid if padded else None)
        logits = model.decode_step(state, None, torch.arange(n_cells, device=device).expand(batch, n_cells))
    model.train(was_training)
    return logits.float().softmax(dim=-1)


def majority_baseline(known: np.ndarray, n_classes: int) -> np.ndarray:
    """(B, H, W) known maps (-1 unknown) -> (B, K) class frequencies of each chip's known pixels (add-half
    smoothing), used as the same distribution for every hidden pixel; its argmax is the majority class."""
    probs = np.empty((known.shape[0], n_classes))
    for i, chip in enumerate(known):
        counts = np.bincount(chip[chip >= 0].astype(np.int64), minlength=n_classes).astype(np.float64)
        probs[i] = (counts + 0.5) / (counts.sum() + 0.5 * n_classes)
    return probs


def nearest_known(known: np.ndarray) -> np.ndarray:
    """(B, H, W) -> the class of the nearest known pixel (Euclidean; ties broken by scan order) for every pixel."""
    from scipy.ndimage import distance_transform_edt

    filled = np.empty_like(known)
    for i, chip in enumerate(known):
        unknown = chip < 0
        if unknown.all():
            filled[i] = -1
            continue
        _, (rows, cols) = distance_transform_edt(unknown, return_indices=True)
        filled[i] = chip[rows, cols]
    return filled


def inpaint(
    model: ModelLike,
    chips: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    mask: str = "box",
    ratio: float = 0.5,
    n: int = 16,
    steps: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    keep_nodata: bool = True,
) -> dict[str, Any]:
    """Hide pixels of ``n`` test chips (``mask`` = box, random or a mask raster) and generate them given the rest.

    Writes ``inpaint.png`` (rows of truth | input with hidden pixels grey | result), ``inpaint.npz`` (truth,
    mask, result) and ``inpaint.json`` (accuracy on the hidden pixels). Known pixels come back unchanged.
    With ``keep_nodata`` the chips' nodata pixels that are not hidden are given to the model as nodata and come
    back as nodata (-1); without it they are filled like hidden pixels (gap filling).
    """
    loaded = _loaded(model, device)
    out = Path(out)
    chip_set, path = open_chips(loaded, chips)
    tensors = select_chips(loaded, chip_set, n)
    count, size = len(tensors), loaded.chip_size
    generator = torch.Generator().manual_seed(seed)
    hidden = make_mask(mask, count, size, ratio, generator)
    truth = tensors.labels
    known = truth.masked_fill(hidden, -1)
    result = decoding.sample(
        loaded.model,
        known=known.to(loaded.model.device),
        nodata=(truth < 0) & ~hidden if keep_nodata else None,
        steps=steps,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        covariates=_to(tensors.covariates, loaded),
        lonlat=_to(tensors.lonlat, loaded),
        generator=_generator(loaded, seed),
    ).cpu()
    scored = hidden & (truth >= 0)
    accuracy = float((result == truth)[scored].float().mean()) if bool(scored.any()) else math.nan
    out.mkdir(parents=True, exist_ok=True)
    png = save_inpaint_panel(out / "inpaint.png", truth.numpy(), hidden.numpy(), result.numpy(), loaded.legend)
    npz = write_npz(
        out / "inpaint.npz",
        {"truth": truth.numpy().astype(np.int16), "mask": hidden.numpy(), "result": result.numpy().astype(np.int16)},
    )
    summary = {
        "png": str(png),
        "npz": str(npz),
        "chips": str(path),
        "n": count,
        "mask": mask,
        "ratio": ratio if mask in ("box", "random") else float(hidden.float().mean()),
        "hidden_fraction": float(hidden.float().mean()),
        "accuracy_hidden": accuracy,
        "keep_nodata": keep_nodata,
        "seed": seed,
    }
    write_json(out / "inpaint.json", summary)
    return summary


def save_inpaint_panel(
    path: Path, truth: np.ndarray, hidden: np.ndarray, result: np.ndarray, legend: Legend, max_rows: int = 16
) -> Path:
    """Three titled rows of up to ``max_rows`` chips: the real chips, the model's input (hidden pixels grey) and the
    filled chips, with a legend of the classes they hold."""
    from landformer.core.viz import class_rgb, image_grid, save_titled_rows, upscale

    count = min(len(truth), max_rows)
    scale = max(1, 64 // truth.shape[-1])

    def strip(maps: np.ndarray, grey: np.ndarray | None = None) -> np.ndarray:
        tiles = []
        for i in range(count):
            rgb = class_rgb(maps[i], legend)
            if grey is not None:
                rgb[grey[i]] = 128
            tiles.append(upscale(rgb, scale))
        return image_grid(tiles, nrows=1, pad=4)

    hidden_share = float(hidden[:count].mean())
    rows = [
        ("real chips (held out)", strip(truth)),
        (f"input: {hidden_share:.0%} of the pixels hidden (grey)", strip(truth, hidden)),
        ("filled by the model: known pixels kept, hidden ones generated", strip(result)),
    ]
    present = np.concatenate([truth[:count].ravel(), result[:count].ravel()])
    return save_titled_rows(path, rows, legend, present)


def inpaint_eval(
    model: ModelLike,
    chips: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    ratios: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9),
    n: int = 64,
    mask: MaskKind = "random",
    steps: int | None = None,
    temperature: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Accuracy and log-loss on the hidden pixels of ``n`` test chips at each mask ratio, for the model (its
    most likely class per pixel given the known ones, and one sampled completion at ``temperature``) and two
    baselines (majority class of the known pixels; nearest known pixel). Writes ``inpaint_eval.json`` and
    ``inpaint_eval.png``.

    Log-losses are nats per hidden pixel. The majority baseline's probabilities are the known pixels' class
    frequencies; the nearest-pixel baseline puts probability ``a`` on its class and spreads ``1 - a`` over the
    others, with ``a`` its own accuracy at that ratio (the best a constant confidence can do: generous to it).
    """
    loaded = _loaded(model, device)
    out = Path(out)
    if not ratios:
        raise UserError("give at least one mask ratio")
    for ratio in ratios:
        _check_ratio(ratio)
    chip_set, path = open_chips(loaded, chips)
    tensors = select_chips(loaded, chip_set, n)
    count, size, n_classes = len(tensors), loaded.chip_size, loaded.legend.n_classes
    rows = []
    for ratio in tqdm(ratios, desc="mask ratios", unit="ratio", disable=None):
        generator = torch.Generator().manual_seed(seed)
        hidden = box_mask(count, size, ratio) if mask == "box" else random_mask(count, size, ratio, generator)
        truth = tensors.labels
        known = truth.masked_fill(hidden, -1)
        scored = (hidden & (truth >= 0)).reshape(count, -1)
        probs, sampled = [], []
        sample_generator = _generator(loaded, seed)
        for part in _batches(count, batch_size):
            covariates = _to(tensors.covariates[part] if tensors.covariates is not None else None, loaded)
            lonlat = _to(tensors.lonlat[part] if tensors.lonlat is not None else None, loaded)
            part_known = known[part].to(loaded.model.device)
            probs.append(conditional_marginals(loaded.model, part_known, covariates, lonlat).cpu())
            sampled.append(
                decoding.sample(
                    loaded.model,
                    known=part_known,
                    steps=steps,
                    temperature=temperature,
                    covariates=covariates,
                    lonlat=lonlat,
                    generator=sample_generator,
                ).cpu()
            )
        model_probs = torch.cat(probs).numpy().astype(np.float64)
        model_sample = torch.cat(sampled).reshape(count, -1).numpy()
        flat_truth = truth.reshape(count, -1).numpy()
        mask_np = scored.numpy()
        target = flat_truth[mask_np]
        model_p = model_probs[mask_np, target]
        model_argmax = model_probs.argmax(axis=-1)[mask_np]
        majority = majority_baseline(known.numpy(), n_classes)
        majority_full = np.repeat(majority[:, None, :], size * size, axis=1)[mask_np]
        nearest = nearest_known(known.numpy()).reshape(count, -1)[mask_np]
        nearest_accuracy = float((nearest == target).mean())
        confidence = min(max(nearest_accuracy, PROBABILITY_FLOOR), 1 - PROBABILITY_FLOOR)
        nearest_p = np.where(nearest == target, confidence, (1 - confidence) / max(1, n_classes - 1))
        rows.append(
            {
                "ratio": ratio,
                "hidden_pixels": int(mask_np.sum()),
                "model_accuracy": float((model_argmax == target).mean()),
                "model_sample_accuracy": float((model_sample[mask_np] == target).mean()),
                "majority_accuracy": float((majority_full.argmax(axis=-1) == target).mean()),
                "nearest_accuracy": nearest_accuracy,
                "model_log_loss": float(-np.log(np.maximum(model_p, PROBABILITY_FLOOR)).mean()),
                "majority_log_loss": float(-np.log(majority_full[np.arange(len(target)), target]).mean()),
                "nearest_log_loss": float(-np.log(nearest_p).mean()),
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    png = plot_inpaint_eval(rows, out / "inpaint_eval.png")
    summary = {
        "chips": str(path),
        "n": count,
        "mask": mask,
        "steps": steps,
        "temperature": temperature,
        "seed": seed,
        "rows": rows,
        "model_beats_baselines": all(
            row["model_accuracy"] > max(row["majority_accuracy"], row["nearest_accuracy"]) for row in rows
        ),
        "png": str(png),
    }
    write_json(out / "inpaint_eval.json", summary)
    return summary


def plot_inpaint_eval(rows: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy and log-loss against mask ratio for the model and both baselines."""
    figure, (left, right) = _figure(9, 3.6, ncols=2)
    ratios = [row["ratio"] for row in rows]
    lines = [
        ("model", "model (most likely)", "-o"),
        ("majority", "majority of known", "--s"),
        ("nearest", "nearest known pixel", ":^"),
    ]
    for key, label, style in lines:
        left.plot(ratios, [row[f"{key}_accuracy"] for row in rows], style, label=label)
        right.plot(ratios, [row[f"{key}_log_loss"] for row in rows], style, label=label)
    left.plot(ratios, [row["model_sample_accuracy"] for row in rows], "-.x", label="model (one sample)")
    left.set(xlabel="mask ratio (hidden share)", ylabel="accuracy on hidden pixels", ylim=(0, 1))
    right.set(xlabel="mask ratio (hidden share)", ylabel="log-loss (nats / hidden pixel)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.grid(alpha=0.3)
    return save_figure(figure, path)


# ------------------------------------------------------------------------------------------------ scores


def negative_log_likelihood(
    loaded: LoadedModel,
    tensors: ChipTensors,
    orders: int = 8,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean NLL in nats per valid pixel over all chips, in each of ``orders`` random orders and in raster order."""
    if orders < 1:
        raise UserError(f"the number of random orders should be at least 1, got {orders}")
    generator = _generator(loaded, seed)
    valid = int((tensors.labels >= 0).sum())
    if valid == 0:
        raise UserError("the chips hold no valid pixels to score")
    kinds = ["random"] * orders + ["raster"]
    totals = []
    progress = tqdm(total=len(kinds) * len(_batches(len(tensors), batch_size)), desc="scoring", disable=None)
    for kind in kinds:
        total = 0.0
        for part in _batches(len(tensors), batch_size):
            log_p = decoding.log_likelihood(
                loaded.model,
                tensors.labels[part].to(loaded.model.device),
                kind,  # type: ignore[arg-type]
                _to(tensors.covariates[part] if tensors.covariates is not None else None, loaded),
                _to(tensors.lonlat[part] if tensors.lonlat is not None else None, loaded),
                generator,
            )
            total += float(-torch.nansum(log_p.double()))
            progress.update(1)
        totals.append(total / valid)
    progress.close()
    per_order = totals[:orders]
    random_nats = sum(per_order) / orders
    return {
        "pixels": valid,
        "chips": len(tensors),
        "orders": orders,
        "random_nats": random_nats,
        "random_bits": random_nats / LN2,
        "random_nats_per_order": per_order,
        "random_nats_std": float(np.std(per_order)),
        "random_perplexity": math.exp(random_nats),
        "raster_nats": totals[-1],
        "raster_bits": totals[-1] / LN2,
        "raster_perplexity": math.exp(totals[-1]),
    }


def perplexity(
    model: ModelLike,
    chips: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    orders: int = 8,
    n: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Held-out NLL of the test chips (all, or the first ``n``) averaged over ``orders`` random orders and in
    raster order, in nats and bits per pixel, plus perplexity; writes ``perplexity.json``."""
    loaded = _loaded(model, device)
    chip_set, path = open_chips(loaded, chips)
    tensors = select_chips(loaded, chip_set, n)
    scores = negative_log_likelihood(loaded, tensors, orders, batch_size, seed)
    summary = {"chips": str(path), "model": str(loaded.path), "seed": seed, **scores}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary["json"] = str(write_json(out / "perplexity.json", summary))
    return summary


def information_content(
    model: ModelLike,
    chips: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    orders: int = 8,
    n: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """How many bits a pixel of the held-out chips carries under the model and under strong simple baselines, all
    on the same fair test chips (exact duplicates and chips overlapping a kept chip dropped,
    :func:`~landformer.landcover.baselines.heldout_chips`). Writes ``info.json`` and ``info.png``.

    - model: bits/pixel averaged over ``orders`` random orders (``model_random_order``) and in raster order;
    - ``context``: the causal-context model (class counts given the W, N, NW, NE neighbours) fitted on the chip
      file's train split, add-1/2, raster order; left out, with a note, when the train split is empty;
    - ``class_entropy``: i.i.d. pixels with the test chips' own class frequencies;
    - ``gzip``, ``bz2``, ``lzma``, ``png``, ``webp``: all test chips in one stream or mosaic (headers paid once);
    - ``gzip_per_chip`` ... ``webp_per_chip``: each chip compressed alone, headers included.

    ``ratio_to_context`` is the model's random-order bits over the context model's: a model below 1 has
    learned more than four neighbours tell. The model's bits exclude its weights: this is the information content
    of a pixel under the model, not a file size; the compressors' figures include their headers.
    """
    loaded = _loaded(model, device)
    chip_set, path = open_chips(loaded, chips)
    fair, heldout = baselines.fair_test_split(chip_set)
    tensors = select_chips(loaded, fair, n)
    scores = negative_log_likelihood(loaded, tensors, orders, batch_size, seed)
    labels = tensors.labels.numpy()
    n_classes = loaded.legend.n_classes
    notes = [heldout.describe()]
    baseline_bits: dict[str, float] = {}
    context = baselines.fit_context_model(chip_set, n_classes)
    if context is None:
        notes.append(f"chip file {path}: the train split is empty, so there is no causal-context model to compare")
    else:
        baseline_bits["context"] = context.bits_per_pixel(labels)
    baseline_bits["class_entropy"] = class_entropy_bits(labels, n_classes)
    baseline_bits.update(baselines.compressed_bits(labels))
    bits = {"model_random_order": scores["random_bits"], "model_raster_order": scores["raster_bits"], **baseline_bits}
    summary = {
        "chips": str(path),
        "model": str(loaded.path),
        "n_chips": len(tensors),
        "pixels": scores["pixels"],
        "heldout": heldout.to_dict(),
        "bits_per_pixel": bits,
        "ratio_to_context": scores["random_bits"] / baseline_bits["context"] if context is not None else None,
        "model_below": {name: scores["random_bits"] < value for name, value in baseline_bits.items()},
        "baselines": {name: baselines.BASELINE_DESCRIPTIONS[name] for name in baseline_bits},
        "notes": notes,
        "random_nats_per_order": scores["random_nats_per_order"],
        "seed": seed,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{len(tensors)} held-out {loaded.chip_size}x{loaded.chip_size} chips"
    summary["png"] = str(plot_information(bits, out / "info.png", title, summary["ratio_to_context"]))
    summary["json"] = str(write_json(out / "info.json", summary))
    return summary


BAR_LABELS = {
    "model_random_order": "model, random orders",
    "model_raster_order": "model, raster order",
    "context": "context model (W, N, NW, NE)",
    "class_entropy": "class entropy (i.i.d.)",
}


def _bar_label(name: str) -> str:
    if name in BAR_LABELS:
        return BAR_LABELS[name]
    codec, per_chip, _ = name.partition("_per_chip")
    return f"{codec}, {'per chip' if per_chip else 'pooled'}"


def _bar_colour(name: str) -> str:
    if name.startswith("model"):
        return "tab:green"
    if name == "context":
        return "tab:orange"
    if name == "class_entropy":
        return "tab:purple"
    return "dimgray" if name.endswith("_per_chip") else "darkgray"


def plot_information(bits: dict[str, float], path: Path, title: str, ratio_to_context: float | None) -> Path:
    """Horizontal bars of bits per pixel, smallest at the top: model green, context model orange, class entropy
    purple, compressors grey (dark: per chip, light: pooled)."""
    names = sorted(bits, key=lambda name: bits[name], reverse=True)
    figure, axis = _figure(7, 0.32 * len(names) + 1.4)
    colours = [_bar_colour(name) for name in names]
    axis.barh([_bar_label(name) for name in names], [bits[name] for name in names], color=colours)
    for y, name in enumerate(names):
        axis.text(bits[name], y, f" {bits[name]:.3f}", va="center", fontsize=8)
    if ratio_to_context is not None:
        title += f"; model (random orders) / context model = {ratio_to_context:.2f}"
    axis.set(xlabel="bits per pixel (lower = more predictable)", title=title)
    axis.title.set_fontsize(9)
    axis.set_xlim(0, max(bits.values()) * 1.2)
    return save_figure(figure, path)
