"""``landcover inpaint`` and ``inpaint-eval``: hide pixels of test chips and generate them from the rest.

Inpainting, like every command here, uses the chips' own covariates. Accuracy is measured on the hidden pixels
only, for the model's per-pixel most likely class given the known pixels (one forward pass that asks for every
hidden cell after the known ones), for one sampled completion, and for two baselines: the majority class of the
known pixels and the class of the nearest known pixel.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from scipy.ndimage import distance_transform_edt
from torch import Tensor
from tqdm import tqdm

from landformer.core.errors import UserError
from landformer.core.io import require_file, write_json, write_npz
from landformer.landcover import decoding, plots
from landformer.landcover.apps.common import (
    ModelLike,
    batch_slices,
    generator_for,
    loaded_model,
    open_chips,
    select_chips,
    to_model_device,
)

MaskKind = Literal["box", "random"]


PROBABILITY_FLOOR = 1e-6  # baselines' probabilities never reach 0, so their log-loss stays finite


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
    loaded = loaded_model(model, device)
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
        covariates=to_model_device(tensors.covariates, loaded),
        lonlat=to_model_device(tensors.lonlat, loaded),
        generator=generator_for(loaded.model, seed),
    ).cpu()
    scored = hidden & (truth >= 0)
    accuracy = float((result == truth)[scored].float().mean()) if bool(scored.any()) else math.nan
    out.mkdir(parents=True, exist_ok=True)
    png = plots.save_inpaint_panel(out / "inpaint.png", truth.numpy(), hidden.numpy(), result.numpy(), loaded.legend)
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
    loaded = loaded_model(model, device)
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
        sample_generator = generator_for(loaded.model, seed)
        for part in batch_slices(count, batch_size):
            covariates = to_model_device(tensors.covariates[part] if tensors.covariates is not None else None, loaded)
            lonlat = to_model_device(tensors.lonlat[part] if tensors.lonlat is not None else None, loaded)
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
    png = plots.plot_inpaint_eval(rows, out / "inpaint_eval.png")
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
