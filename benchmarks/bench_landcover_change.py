"""Land change P(t2 | t1) on held-out blocks, the way the field measures it, beside persistence and Markov-CA.

Trains the tiny change recipe (``configs/landcover_change_tiny.yaml``: a 512 px synthetic world, its land-cover
epochs 2000 -> 2010, 64 px blocks of which 20% are test and 10% validation) unless ``--model`` names a trained
run, and an unconditional land-cover model of the same size and steps on the same t2 chips (t1 not given), then
``landcover change-evaluate`` on the test blocks:

- Figure of Merit, hits / wrong hits / misses / false alarms and quantity / allocation disagreement of the
  model's most likely map, of one draw of the model, of persistence and of Markov-CA (transition matrix counted
  on the train blocks; neighbourhood radius chosen on the validation blocks); target: the model's FoM above
  Markov-CA's. The model's p(t2 | t1) comes from both methods (each pixel's marginal in one pass; the shares of
  ``--samples`` draws), and its map's quantities from its own expectation or from the Markov matrix; the
  headline is the combination with the best FoM on the validation blocks, the others are reported beside it;
- bits per pixel of t2 on non-overlapping held-out chips: the model given t1, the same network with its null
  conditioning, the unconditional model, and the Markov matrix pixel by pixel; target: given t1, at most
  0.75x the unconditional model's.

Writes ``benchmarks/results/bench_landcover_change.json`` (``"summary"`` rows), and the evaluation's picture
``docs/images/landcover_change.png`` unless ``--quick``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from landformer.core.config import load_config
from landformer.core.io import read_json, write_json
from landformer.landcover.change_cli import format_change_table
from landformer.landcover.change_model import PAIR_CHIPS, ChangeRecipe, evaluate_change, train_change
from landformer.landcover.config import LandCoverRecipe
from landformer.landcover.train import train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("LANDFORMER_BENCH_RESULTS") or ROOT / "benchmarks" / "results")
PICTURE = ROOT / "docs" / "images" / "landcover_change.png"
BITS_TARGET = 0.75  # bits of t2 given t1 over the unconditional model's, at most
METHODS = ("marginal", "samples")
QUICK = ["data.world_size=256", "train.max_steps=20", "train.val_every_steps=10", "images.every_steps=20"]


def train_pair_models(run_dir: Path, quick: bool, threads: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The change model in ``run_dir/change`` and the unconditional model on its t2 chips in ``run_dir/plain``."""
    overrides = [f"task.threads={threads}", "train.progress_bar=false", *(QUICK if quick else [])]
    recipe = load_config(ChangeRecipe, ROOT / "configs" / "landcover_change_tiny.yaml", overrides)
    change_summary = train_change(recipe, run_dir / "change")
    plain = load_config(LandCoverRecipe, ROOT / "configs" / "landcover_tiny.yaml", overrides)
    plain.data.chips, plain.data.covariates = run_dir / "change" / PAIR_CHIPS, False
    plain.model = recipe.model
    plain.task, plain.train = recipe.task, recipe.train
    return change_summary, train(plain, run_dir / "plain")


def validation_fom(evaluation: dict[str, Any]) -> float:
    """The validation-block FoM of the quantity source an evaluation chose (-1 without validation blocks)."""
    foms = evaluation["model_quantity_fom_on_validation"]
    return foms.get(evaluation["model_quantity"], -1.0) if foms else -1.0


def summary_rows(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    scores, bits = evaluation["scores"], evaluation["bits_per_pixel"]
    rows = [
        {
            "metric": f"Figure of Merit on held-out blocks, {name} vs Markov-CA",
            "value": scores[name]["figure_of_merit"],
            "unit": "FoM",
            "baseline": scores["markov_ca"]["figure_of_merit"],
            "ratio": scores[name]["figure_of_merit"] / max(scores["markov_ca"]["figure_of_merit"], 1e-12),
            "target": "> baseline" if name == "model" else "",
        }
        for name in ("model", "model_own_quantity", "model_markov_quantity", "model_one_draw", "persistence")
        if name in scores
    ]
    reference = bits.get("unconditional_model", bits["model_null_conditioning"])
    for name, value in bits.items():
        if name == "unconditional_model":
            continue
        rows.append(
            {
                "metric": f"bits/pixel of t2, {name} vs the unconditional model",
                "value": value,
                "unit": "bits/pixel",
                "baseline": reference,
                "ratio": value / reference,
                "target": f"<= {BITS_TARGET:g}x baseline" if name == "model_given_t1" else "",
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 training steps on a 256 px world: a smoke run")
    parser.add_argument("--model", type=Path, default=None, help="trained change run to evaluate (skips training)")
    parser.add_argument("--unconditional", type=Path, default=None, help="with --model: the unconditional run")
    parser.add_argument("--run-dir", type=Path, default=None, help="where to train (default: a temporary folder)")
    parser.add_argument("--samples", type=int, default=8, help="draws of t2 per chip window")
    parser.add_argument("--steps", type=int, default=16, help="parallel decoding steps of the draws")
    parser.add_argument("--orders", type=int, default=2, help="random orders averaged for bits/pixel")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_landcover_change.json", help="JSON output")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_landcover_change_") as scratch:
        if args.model is None:
            run_dir = args.run_dir or Path(scratch) / "run"
            training, plain = train_pair_models(run_dir, args.quick, args.threads)
            model, unconditional = run_dir / "change", run_dir / "plain"
        else:
            model, unconditional = args.model, args.unconditional
            training = read_json(model / "train_summary.json", "training summary")
            plain = read_json(unconditional / "train_summary.json", "training summary") if unconditional else {}
        evaluations = {
            method: evaluate_change(
                model,
                Path(scratch) / method,
                method=method,
                n_samples=2 if args.quick else args.samples,
                steps=8 if args.quick else args.steps,
                orders=args.orders,
                unconditional=unconditional,
            ).summary
            for method in METHODS
        }
        chosen = max(METHODS, key=lambda method: validation_fom(evaluations[method]))
        evaluation = evaluations[chosen]
        if not args.quick:
            PICTURE.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(evaluation["picture"], PICTURE)
            evaluation["picture"] = str(PICTURE.relative_to(ROOT))
    scores, bits = evaluation["scores"], evaluation["bits_per_pixel"]
    reference = bits.get("unconditional_model", bits["model_null_conditioning"])
    targets = {
        "fom_above_markov_ca": scores["model"]["figure_of_merit"] > scores["markov_ca"]["figure_of_merit"],
        f"bits_given_t1_at_most_{BITS_TARGET:g}x_unconditional": bits["model_given_t1"] <= BITS_TARGET * reference,
    }
    summary = summary_rows(evaluation)
    keys = ("global_step", "fit_seconds", "val_bits_per_pixel", "train_tokens_per_s", "n_parameters")
    output = {
        "benchmark": "bench_landcover_change",
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, {platform.system()}",
        "torch": torch.__version__,
        "torch_threads": args.threads,
        "load_average_1m": {"start": load_before, "end": os.getloadavg()[0]},
        "quick": args.quick,
        "training": {key: training.get(key) for key in keys},
        "unconditional_training": {key: plain.get(key) for key in keys},
        "method": {
            "chosen": chosen,
            "on": "validation blocks: FoM of each method's chosen quantity source",
            "validation_fom": {method: validation_fom(evaluations[method]) for method in METHODS},
        },
        "evaluation": {key: value for key, value in evaluation.items() if key != "json"},
        "other_methods": {
            method: {key: value for key, value in evaluations[method].items() if key not in ("json", "picture")}
            for method in METHODS
            if method != chosen
        },
        "targets_met": targets,
        "summary": summary,
        "wall_seconds": time.perf_counter() - began,
    }
    write_json(args.out, output)
    for method in METHODS:
        print(f"method {method}{' (chosen on validation blocks)' if method == chosen else ''}:")
        print(format_change_table(evaluations[method]))
    for name, met in targets.items():
        print(f"{name}: {'met' if met else 'missed'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
