"""The packaged land-change model on synthetic worlds it never trained on, beside Markov-CA and the Markov matrix.

The packaged model (``--model change``, ``configs/landcover_change_packaged.yaml``) trained on the 2000 -> 2010
land cover of 256 px worlds of seeds 11-18. This benchmark builds the demo's world (256 px, seed 0) and held-out
worlds of the same size (seeds 21-28 unless ``--seeds``) and runs ``landcover change-evaluate`` on each world's
land cover 2000 -> 2010. Each world is cut into its own 64 px blocks (20 % test, 10 % validation, with the
model's split seed); the Markov matrix is counted on its train blocks, Markov-CA's radius and the model's
quantity source are chosen on its validation blocks, and only its test blocks are scored. The method (the class
shares of 16 draws per chip window in 16 parallel steps) and the model itself were chosen on validation worlds
(``--validation``), never on a held-out world's blocks.

A 256 px world has 16 blocks, so 3 test blocks and a few hundred changed pixels: one world's Figure of Merit is
noisy. The summary gives each world's FoM and bits, their mean and standard deviation over the held-out worlds,
the FoM pooled over all their test pixels, and on how many worlds the model beats Markov-CA.

Writes ``benchmarks/results/bench_landcover_change_worlds.json`` (``"summary"`` rows). ``--validation`` scores
validation worlds instead (seeds 31-36, no demo world; ``..._validation.json``): candidate models (training
lengths) were compared there, never on the held-out worlds. ``--quick``: the demo world and one held-out world
at 128 px, for a smoke run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from landformer.core.io import write_json
from landformer.landcover.change_model import evaluate_change
from landformer.landcover.config import CHANGE_DRAWS
from landformer.synth.world import make_world

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("LANDFORMER_BENCH_RESULTS") or ROOT / "benchmarks" / "results")
DEMO_SEED = 0  # `landformer demo` builds its world with seed 0 at 256 px
HELD_OUT_SEEDS = (21, 22, 23, 24, 25, 26, 27, 28)  # never trained on (the packaged model's worlds are 11-18)
VALIDATION_SEEDS = (31, 32, 33, 34, 35, 36)  # chose the packaged recipe's training length; never scored as results
COUNTS = ("hits", "wrong_hits", "misses", "false_alarms")


def world_row(name: str, seed: int, evaluation: dict[str, Any]) -> dict[str, Any]:
    scores, bits = evaluation["scores"], evaluation["bits_per_pixel"]
    return {
        "world": name,
        "seed": seed,
        "test_blocks": evaluation["test_blocks"],
        "test_pixels": evaluation["test_pixels"],
        "observed_change": evaluation["observed_change"],
        "model_fom": scores["model"]["figure_of_merit"],
        "markov_ca_fom": scores["markov_ca"]["figure_of_merit"],
        "model_quantity": evaluation["model_quantity"],
        "markov_ca_radius": evaluation["markov_ca_radius"],
        "model_bits_given_t1": bits["model_given_t1"],
        "markov_bits": bits["markov_per_pixel"],
        "scores": scores,
    }


def pooled_fom(rows: list[dict[str, Any]], method: str) -> float:
    """hits / (hits + wrong hits + misses + false alarms) over the test pixels of all the worlds together."""
    counts = {key: sum(row["scores"][method][key] * row["test_pixels"] for row in rows) for key in COUNTS}
    return counts["hits"] / max(sum(counts.values()), 1e-12)


def spread(values: list[float]) -> dict[str, float]:
    array = np.array(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


def summary_rows(demo: dict[str, Any] | None, held_out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for row in ([demo] if demo else []) + held_out:
        rows.append(
            {
                "metric": f"Figure of Merit, {row['world']} (seed {row['seed']}) test blocks, model vs Markov-CA",
                "value": row["model_fom"],
                "unit": "FoM",
                "baseline": row["markov_ca_fom"],
                "ratio": row["model_fom"] / max(row["markov_ca_fom"], 1e-12),
                "target": "> baseline",
            }
        )
    fom = spread([row["model_fom"] for row in held_out])
    ca = spread([row["markov_ca_fom"] for row in held_out])
    pooled, pooled_ca = pooled_fom(held_out, "model"), pooled_fom(held_out, "markov_ca")
    bits, markov = (
        spread([row["model_bits_given_t1"] for row in held_out]),
        spread([r["markov_bits"] for r in held_out]),
    )
    rows += [
        {
            "metric": f"Figure of Merit, mean of {len(held_out)} held-out worlds (std {fom['std']:.3f}; Markov-CA std "
            f"{ca['std']:.3f}), model vs Markov-CA",
            "value": fom["mean"],
            "unit": "FoM",
            "baseline": ca["mean"],
            "ratio": fom["mean"] / max(ca["mean"], 1e-12),
            "target": "> baseline",
        },
        {
            "metric": f"Figure of Merit pooled over the test pixels of {len(held_out)} held-out worlds, model vs "
            "Markov-CA",
            "value": pooled,
            "unit": "FoM",
            "baseline": pooled_ca,
            "ratio": pooled / max(pooled_ca, 1e-12),
            "target": "> baseline",
        },
        {
            "metric": f"bits/pixel of 2010 given 2000, mean of {len(held_out)} held-out worlds, model vs Markov matrix",
            "value": bits["mean"],
            "unit": "bits/pixel",
            "baseline": markov["mean"],
            "ratio": bits["mean"] / markov["mean"],
            "target": "< baseline",
        },
    ]
    if demo:
        rows.append(
            {
                "metric": "bits/pixel of 2010 given 2000, demo world, model vs Markov matrix",
                "value": demo["model_bits_given_t1"],
                "unit": "bits/pixel",
                "baseline": demo["markov_bits"],
                "ratio": demo["model_bits_given_t1"] / demo["markov_bits"],
                "target": "< baseline",
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the demo world and one held-out world at 128 px")
    parser.add_argument("--model", default="change", help="change model to evaluate (default: the packaged one)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="held-out world seeds (default 21-28)")
    parser.add_argument(
        "--validation",
        action="store_true",
        help="the validation worlds (seeds 31-36) that choose between trained candidates, without the demo world",
    )
    parser.add_argument("--size", type=int, default=256, help="world side in pixels (the demo's: 256)")
    parser.add_argument("--method", choices=("samples", "marginal"), default="samples", help="p(t2 | t1) from")
    parser.add_argument(
        "--samples", type=int, default=CHANGE_DRAWS, help=f"draws of t2 per chip window (default: {CHANGE_DRAWS})"
    )
    parser.add_argument("--steps", type=int, default=16, help="parallel decoding steps of the draws")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: benchmarks/results/...)")
    args = parser.parse_args()
    name = "bench_landcover_change_worlds" + ("_validation" if args.validation else "")
    out = args.out or RESULTS / f"{name}.json"
    seeds = args.seeds or list(VALIDATION_SEEDS if args.validation else HELD_OUT_SEEDS)

    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    size, seeds = (128, seeds[:1]) if args.quick else (args.size, seeds)
    worlds = [] if args.validation else [("demo world", DEMO_SEED)]
    worlds += [("validation world" if args.validation else "held-out world", seed) for seed in seeds]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_landcover_change_worlds_") as scratch:
        for world_name, seed in worlds:
            world = make_world(Path(scratch) / f"world_{seed}", size=size, seed=seed)
            evaluation = evaluate_change(
                args.model,
                Path(scratch) / f"eval_{seed}",
                t1=world.landcover_of(2000),
                t2=world.landcover_of(2010),
                method=args.method,
                n_samples=args.samples,
                steps=args.steps,
                seed=0,
            ).summary
            rows.append(world_row(world_name, seed, evaluation))
            row = rows[-1]
            print(
                f"{world_name} seed {seed}: FoM model {row['model_fom']:.3f} ({row['model_quantity']}) vs Markov-CA "
                f"{row['markov_ca_fom']:.3f} (radius {row['markov_ca_radius']}); bits {row['model_bits_given_t1']:.3f} "
                f"vs Markov {row['markov_bits']:.3f}; {row['test_blocks']} test blocks, "
                f"{100 * row['observed_change']:.2f} % changed",
                flush=True,
            )
    demo, held_out = (None, rows) if args.validation else (rows[0], rows[1:])
    summary = summary_rows(demo, held_out)
    wins = sum(row["model_fom"] > row["markov_ca_fom"] for row in held_out)
    output = {
        "benchmark": name,
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, {platform.system()}",
        "torch": torch.__version__,
        "torch_threads": args.threads,
        "load_average_1m": {"start": load_before, "end": os.getloadavg()[0]},
        "quick": args.quick,
        "model": args.model,
        "world_size": size,
        "settings": f"method {args.method} ({args.samples} draws, {args.steps} steps), temperature 1 (chosen on the "
        "validation worlds); Markov matrix on each world's train blocks; Markov-CA radius and the model's quantity "
        "source chosen on each world's validation blocks; test blocks scored",
        "worlds": rows,
        "held_out": {
            "seeds": seeds,
            "model_fom": spread([row["model_fom"] for row in held_out]),
            "markov_ca_fom": spread([row["markov_ca_fom"] for row in held_out]),
            "fom_difference": spread([row["model_fom"] - row["markov_ca_fom"] for row in held_out]),
            "pooled_fom": {"model": pooled_fom(held_out, "model"), "markov_ca": pooled_fom(held_out, "markov_ca")},
            "model_beats_markov_ca": f"{wins} of {len(held_out)}",
            "model_bits_given_t1": spread([row["model_bits_given_t1"] for row in held_out]),
            "markov_bits": spread([row["markov_bits"] for row in held_out]),
        },
        "summary": summary,
        "wall_seconds": time.perf_counter() - began,
    }
    write_json(out, output)
    held = output["held_out"]
    model_fom, ca_fom, pooled = held["model_fom"], held["markov_ca_fom"], held["pooled_fom"]
    print(
        f"held-out worlds: FoM model {model_fom['mean']:.3f} +- {model_fom['std']:.3f} vs Markov-CA "
        f"{ca_fom['mean']:.3f} +- {ca_fom['std']:.3f}; pooled {pooled['model']:.3f} vs {pooled['markov_ca']:.3f}; "
        f"model ahead on {held['model_beats_markov_ca']}"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
