"""``landcover evaluate``: samples with sequential or parallel decoding and their landscape metrics against test
chips (:mod:`landformer.landcover.evaluate`), beside samples of the causal-context model, shuffled pixels and the
noise floor of two halves of the test chips."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from landformer.core.errors import UserError
from landformer.core.io import write_json
from landformer.core.legend import Legend
from landformer.landcover import data, evaluate, plots
from landformer.landcover.apps.sampling import generate_samples
from landformer.landcover.baselines import CausalContextModel
from landformer.landcover.model import LandCoverRandAR


def spread_indices(total: int, n: int) -> np.ndarray:
    """``n`` indices spread evenly over ``range(total)`` (:func:`landformer.landcover.data.spread_indices`), and an
    error rather than fewer when there are not ``n``: the realism figures compare exactly ``n`` maps. Test chips
    are stored block by block, so the first ones all come from one corner of the map and would be a biased
    reference."""
    if not 1 <= n <= total:
        raise UserError(f"cannot pick {n} of {total} chips")
    return data.spread_indices(total, n)


def steps_name(steps: int | None) -> str:
    return "sequential" if steps is None else f"parallel_{steps}"


@dataclass
class RealismResult:
    samples: dict[str, np.ndarray]  # decoding setting name -> (n, H, W)
    seconds: dict[str, float]
    temperatures: dict[str, float]  # decoding setting name -> the temperature it drew at
    report: dict[str, dict[str, dict[str, float]]]  # see evaluate.realism_report
    reference: np.ndarray
    baselines: dict[str, np.ndarray] = field(default_factory=dict)  # "context_model" -> (n, H, W) samples
    notes: list[str] = field(default_factory=list)  # what a reader should know: chips dropped, baselines missing

    def summary(self) -> dict[str, Any]:
        n = next(iter(self.samples.values())).shape[0]
        sequential = {name: row["value"] for name, row in self.report.get("sequential", {}).items()}
        settings = {}
        for name, seconds in self.seconds.items():
            metrics = {metric: row["value"] for metric, row in self.report[name].items()}
            settings[name] = {
                "temperature": self.temperatures[name],
                "seconds": seconds,
                "samples_per_s": n / seconds if seconds > 0 else math.inf,
                "metrics": metrics,
                "max_gap_to_sequential": evaluate.max_relative_gap(metrics, sequential) if sequential else None,
            }
        return {
            "n": n,
            "notes": self.notes,
            "settings": settings,
            "gaps_to_test": {name: gaps_to_reference(table) for name, table in self.report.items()},
            "report": self.report,
            "table": evaluate.format_report(self.report),
        }


def gaps_to_reference(table: dict[str, dict[str, float]]) -> dict[str, float]:
    """The relative difference of each landscape metric, the single-pixel share as a ratio (the speckle target is
    one) and the class-histogram L1 distance, from one entry of :func:`evaluate.realism_report`."""
    gaps = {metric: table[metric]["relative_difference"] for metric in evaluate.LANDSCAPE_METRICS}
    single = table["single_pixel_share"]
    gaps["single_pixel_ratio"] = single["value"] / single["reference"] if single["reference"] > 0 else math.nan
    gaps["class_l1"] = table["class_l1"]["value"]
    return gaps


def sample_realism(
    model: LandCoverRandAR,
    reference: np.ndarray,
    n: int,
    steps_list: Sequence[int | None] = (None, 16),
    temperature: float = 1.0,
    covariates: Tensor | None = None,
    lonlat: Tensor | None = None,
    batch_size: int = 64,
    seed: int = 0,
    context: CausalContextModel | None = None,
    parallel_temperature: float | None = None,
) -> RealismResult:
    """Draw ``n`` samples per decoding setting and compare each set with the ``reference`` test chips (n, H, W)
    (:func:`evaluate.realism_report`, which adds the shuffled-pixel baseline and the noise floor). With a fitted
    ``context`` model, ``n`` maps drawn from it in raster order are compared too (key ``"context_model"``): the
    4-neighbour Markov-chain baseline. Conditional models draw sample i with the covariates / lon-lat of reference
    chip i. Every setting starts from the same seed. Sequential decoding draws at ``temperature``, parallel decoding
    at ``parallel_temperature`` (default: the same): parallel steps draw cells independently and fragment patches,
    so each mode's best temperature differs (the README gives those chosen for the packaged models)."""
    reference = np.asarray(reference)[:n]
    if reference.shape[0] < n:
        raise UserError(f"realism: asked for {n} samples but only {reference.shape[0]} test chips to compare with")
    samples, seconds, temperatures = {}, {}, {}
    for steps in steps_list:
        name = steps_name(steps)
        temperatures[name] = temperature if steps is None or parallel_temperature is None else parallel_temperature
        samples[name], seconds[name] = generate_samples(
            model, n, steps, temperatures[name], None, covariates, lonlat, batch_size, seed
        )
    extra = {}
    if context is not None:
        extra["context_model"] = context.sample(n, *reference.shape[1:], np.random.default_rng(seed))
    report = evaluate.realism_report({**samples, **extra}, reference, model.config.n_classes, seed=seed)
    notes = [
        f"{name}: {len(evaluate.first_occurrences(maps))} of {len(maps)} samples distinct; duplicates are dropped "
        "before comparing, as they are from the test chips"
        for name, maps in {**samples, **extra}.items()
    ]
    return RealismResult(samples, seconds, temperatures, report, reference, extra, notes)


def write_realism(
    result: RealismResult, legend: Legend, out_dir: str | os.PathLike[str], columns: int = 6
) -> dict[str, Path]:
    """``realism.json`` (summary, per-setting speed and metrics, gaps to the test chips, text table) and
    ``realism_panel.png``: a row of test chips, a row per decoding setting, a row of context-model samples (when
    there are any) and a row of the shuffled baseline."""
    out = Path(out_dir)
    rows = {
        "test": result.reference,
        **result.samples,
        **{name.replace("_", " "): maps for name, maps in result.baselines.items()},
        "shuffled": evaluate.shuffled_baseline(result.reference),
    }
    return {
        "json": write_json(out / "realism.json", result.summary()),
        "panel": plots.rows_of_maps(out / "realism_panel.png", rows, min(columns, result.reference.shape[0]), legend),
    }
