"""``landcover perplexity`` and ``info``: how well the model predicts held-out chips.

Log-likelihoods are natural logs per valid pixel (nats); bits = nats / ln 2. ``info`` sets the model's bits
beside the strong baselines of :mod:`landformer.landcover.baselines` (causal-context model, per-chip and pooled
compressors) on fair test chips: no exact duplicates, no two chips sharing a pixel.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from landformer.core.errors import UserError
from landformer.core.io import write_json
from landformer.landcover import baselines, decoding, plots
from landformer.landcover.apps.common import (
    ModelLike,
    batch_slices,
    generator_for,
    loaded_model,
    open_chips,
    select_chips,
    to_model_device,
)
from landformer.landcover.data import ChipTensors, class_entropy_bits
from landformer.landcover.export import LoadedModel

LN2 = math.log(2)


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
    generator = generator_for(loaded.model, seed)
    valid = int((tensors.labels >= 0).sum())
    if valid == 0:
        raise UserError("the chips hold no valid pixels to score")
    kinds = ["random"] * orders + ["raster"]
    totals = []
    progress = tqdm(total=len(kinds) * len(batch_slices(len(tensors), batch_size)), desc="scoring", disable=None)
    for kind in kinds:
        total = 0.0
        for part in batch_slices(len(tensors), batch_size):
            log_p = decoding.log_likelihood(
                loaded.model,
                tensors.labels[part].to(loaded.model.device),
                kind,  # type: ignore[arg-type]
                to_model_device(tensors.covariates[part] if tensors.covariates is not None else None, loaded),
                to_model_device(tensors.lonlat[part] if tensors.lonlat is not None else None, loaded),
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


def heldout_perplexity(
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
    loaded = loaded_model(model, device)
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
    loaded = loaded_model(model, device)
    chip_set, path = open_chips(loaded, chips)
    fair, heldout = baselines.fair_test_split(chip_set)
    tensors = select_chips(loaded, fair, n)
    scores = negative_log_likelihood(loaded, tensors, orders, batch_size, seed)
    labels = tensors.labels.numpy()
    n_classes = loaded.legend.n_classes
    notes = [heldout.describe()]
    baseline_bits: dict[str, float] = {}
    context = baselines.strongest_context_bits(chip_set, labels, n_classes)
    if context is None:
        notes.append(f"chip file {path}: the train split is empty, so there is no causal-context model to compare")
    else:
        baseline_bits["context"], context_fit = context
        notes.append(f"causal-context model fitted on {context_fit} (the stronger of its two fits)")
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
    summary["png"] = str(plots.plot_information(bits, out / "info.png", title, summary["ratio_to_context"]))
    summary["json"] = str(write_json(out / "info.json", summary))
    return summary
