"""Land-cover samples: parallel against KV-cached sequential decoding, in realism and in speed.

A trained model (``--model RUN``, or a tiny one trained here on the recipe's default data) draws ``--n`` samples
sequentially (one cell per step, temperature 1) and in parallel on the cosine schedule (8, 16, 32 steps) at a
few temperatures; a conditional model is conditioned like test chips spread over the test split. For every
setting we compute the landscape metrics of :mod:`landformer.landcover.evaluate` (patch density, edge density,
mean patch area, Shannon diversity, contagion, single-pixel patch share) and class-histogram distances against
those test chips, beside the shuffled-pixel baseline, samples of the causal-context model (class counts given the
W, N, NW, NE neighbours, fitted on the chip file's train split, drawn in raster order) and the noise floor of two
halves of the test chips. Test chips are the fair ones of ``landcover info``: exact duplicates and overlapping
chips dropped.

"Equal realism": every landscape metric of the parallel samples lies within ``--tolerance`` (10 %) of the
sequential samples' value. Both sets are finite, so a second sequential set drawn with another seed gives the
noise floor of that comparison at this ``--n``. Parallel decoding draws the cells of one step independently,
which fragments patches when steps are few; a slightly lower temperature counters that, so each step count is
tried at ``--temperatures``.

Speed (samples/s) is timed separately on ``--speed-n`` samples at each ``--batches`` size, the settings
interleaved and repeated (fastest kept) so that load from other processes hits them alike. The headline, per
batch size, is the speed ratio at the fewest steps that reach equal realism at some temperature; the target is
>= 3x.

Writes ``benchmarks/results/bench_landcover_realism.json`` (atomically) with a ``summary`` list of rows
``{"metric", "value", "unit", "baseline", "ratio", "target"}`` and prints tables.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from landformer.core.chips import load_chips
from landformer.core.io import write_json
from landformer.landcover import baselines, evaluate
from landformer.landcover.apps import sampling
from landformer.landcover.apps.realism import gaps_to_reference, spread_indices, steps_name
from landformer.landcover.data import default_chips_path, lonlat_inputs, model_inputs
from landformer.landcover.export import check_chips_match, load

# LANDFORMER_BENCH_RESULTS: where `run_all.py --quick` sends smoke results, away from the committed ones.
RESULTS = Path(os.environ.get("LANDFORMER_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
TARGET_SPEEDUP = 3.0


def train_demo_model(run_dir: Path, steps: int, quick: bool) -> Path:
    """A tiny model trained on a fresh synthetic world with the land-cover training recipe."""
    from landformer.landcover.config import LandCoverRecipe
    from landformer.landcover.train import train

    recipe = LandCoverRecipe()
    recipe.train.max_steps = steps
    recipe.train.progress_bar = False
    recipe.train.loggers = ["csv"]
    recipe.images.every_steps = 10 * steps  # only the final pictures
    if quick:
        recipe.data.world_size = 128
        recipe.data.chip_size = 8
        recipe.data.batch_size = 8
        recipe.images.n = 4
    train(recipe, run_dir)
    return run_dir


def setting_name(steps: int | None, temperature: float) -> str:
    name = steps_name(steps)
    return name if temperature == 1.0 else f"{name}_t{temperature:g}"


def time_settings(
    model: torch.nn.Module, n: int, steps_list: list[int | None], batch: int, repeats: int, seed: int
) -> dict[str, float]:
    """Fastest seconds for ``n`` samples per decoding setting; settings interleaved within every repeat."""
    best = {steps_name(steps): math.inf for steps in steps_list}
    for _ in range(repeats):
        for steps in steps_list:
            _, seconds = sampling.generate_samples(model, n, steps, batch_size=batch, seed=seed)
            best[steps_name(steps)] = min(best[steps_name(steps)], seconds)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="trained run folder or model file (default: train a tiny one)")
    parser.add_argument("--chips", type=Path, help="chip file of the test chips (default: RUN/chips.npz)")
    parser.add_argument("--train-steps", type=int, default=300, help="training steps when no --model is given")
    parser.add_argument("--n", type=int, default=512, help="samples per setting for realism (and test chips)")
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32], help="parallel decoding steps")
    parser.add_argument(
        "--temperatures", type=float, nargs="+", default=[1.0, 0.97, 0.94], help="parallel decoding temperatures"
    )
    parser.add_argument(
        "--sequential-temperature",
        type=float,
        default=1.0,
        help="temperature of the sequential samples (choose it on validation chips: give them as --chips)",
    )
    parser.add_argument("--speed-n", type=int, default=64, help="samples per timing run")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64], help="batch sizes timed")
    parser.add_argument("--repeats", type=int, default=3, help="timing runs per setting (fastest kept)")
    parser.add_argument("--tolerance", type=float, default=0.10, help="largest relative metric gap for 'equal'")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--quick", action="store_true", help="tiny model, 8x8 chips, few samples: a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_landcover_realism.json", help="JSON output")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.quick:
        args.n, args.steps, args.temperatures, args.speed_n, args.batches, args.repeats = 16, [4, 8], [1.0], 8, [8], 1
        args.train_steps = min(args.train_steps, 30)
    steps_list = sorted(args.steps)
    scratch = None
    trained_here = args.model is None
    if trained_here:
        scratch = tempfile.TemporaryDirectory(prefix="bench_landcover_realism_")
        print(f"training a tiny model for {args.train_steps} steps in {scratch.name} ...", flush=True)
        args.model = train_demo_model(Path(scratch.name) / "run", args.train_steps, args.quick)
    run_dir = args.model if args.model.is_dir() else args.model.parent
    chips_path = args.chips or default_chips_path(run_dir)
    loaded = load(args.model, device=args.device)
    chips = load_chips(chips_path)
    check_chips_match(loaded, chips, str(chips_path))
    fair, heldout = baselines.fair_test_split(chips)
    print(f"test chips: {heldout.describe()}")
    n = min(args.n, len(fair.test_data))
    picked = spread_indices(len(fair.test_data), n)
    labels, covariates = model_inputs(fair.test_data[picked], loaded.covariate_stats)
    lonlat = lonlat_inputs(fair.test_coords[picked]) if loaded.config.use_lonlat else None
    reference = labels.numpy()
    model, n_classes = loaded.model, loaded.legend.n_classes
    context = baselines.fit_context_model(chips, n_classes)
    context_sets = {}
    if context is not None:
        context_sets["context_model"] = context.sample(n, *reference.shape[1:], np.random.default_rng(args.seed))
    load_before = os.getloadavg()[0]

    # Realism: one set of n samples per setting, all from the same seed, in batches of the largest size.
    realism_batch = max(args.batches)
    sample_sets: dict[str, np.ndarray] = {}
    # "sequential" is the reference setting, drawn at --sequential-temperature; the parallel ones are named by theirs.
    sequential_t = args.sequential_temperature
    settings = [("sequential", None, sequential_t)]
    settings += [(setting_name(steps, t), steps, t) for steps in steps_list for t in args.temperatures]
    for name, steps, temperature in settings:
        print(f"realism: {name} (temperature {temperature:g}) ...", flush=True)
        sample_sets[name], _ = sampling.generate_samples(
            model, n, steps, temperature, None, covariates, lonlat, realism_batch, args.seed
        )
    reseeded, _ = sampling.generate_samples(
        model, n, None, sequential_t, None, covariates, lonlat, realism_batch, args.seed + 1
    )
    report = evaluate.realism_report(
        {**sample_sets, "sequential_reseeded": reseeded, **context_sets}, reference, n_classes, seed=args.seed
    )
    compared = {
        **sample_sets,
        "sequential_reseeded": reseeded,
        **context_sets,
        "shuffled_baseline": evaluate.shuffled_baseline(reference, args.seed),  # the report's baseline
    }
    values = {name: {metric: row["value"] for metric, row in table.items()} for name, table in report.items()}
    noise_floor = evaluate.max_relative_gap(values["sequential_reseeded"], values["sequential"])
    sequential_fractions = evaluate.class_fractions(sample_sets["sequential"], n_classes)
    realism = {
        name: {
            "max_metric_gap_to_sequential": evaluate.max_relative_gap(values[name], values["sequential"]),
            "metric_gaps_to_sequential": {
                metric: evaluate.relative_difference(values[name][metric], values["sequential"][metric])
                for metric in evaluate.LANDSCAPE_METRICS
            },
            "class_l1_to_sequential": evaluate.l1_distance(
                evaluate.class_fractions(maps, n_classes), sequential_fractions
            ),
            "max_metric_gap_to_test": max(
                abs(report[name][metric]["relative_difference"]) for metric in evaluate.LANDSCAPE_METRICS
            ),
        }
        for name, maps in compared.items()
    }

    # Equal realism: per step count, the temperatures whose every metric is within tolerance (1.0 first).
    passing: dict[int, float] = {}
    for steps in steps_list:
        for temperature in args.temperatures:
            if realism[setting_name(steps, temperature)]["max_metric_gap_to_sequential"] <= args.tolerance:
                passing.setdefault(steps, temperature)
    chosen = min(passing) if passing else None

    # Speed: temperature does not change the work, so each step count is timed once per batch size.
    sampling.generate_samples(model, min(4, n), 4, batch_size=4, seed=args.seed)  # warm-up
    speed: dict[str, dict[str, dict[str, float]]] = {}
    for batch in args.batches:
        print(f"speed: batch {batch} ...", flush=True)
        seconds = time_settings(model, args.speed_n, [None, *steps_list], batch, args.repeats, args.seed)
        sequential_rate = args.speed_n / seconds["sequential"]
        speed[f"batch_{batch}"] = {
            name: {"seconds": s, "samples_per_s": args.speed_n / s, "speedup": args.speed_n / s / sequential_rate}
            for name, s in seconds.items()
        }
    load_after = os.getloadavg()[0]

    summary = []
    for batch in args.batches:
        rows = speed[f"batch_{batch}"]
        for steps in steps_list:
            row = rows[steps_name(steps)]
            summary.append(
                {
                    "metric": f"parallel decoding, {steps} steps, batch {batch}: speed",
                    "value": row["samples_per_s"],
                    "unit": "samples/s",
                    "baseline": rows["sequential"]["samples_per_s"],
                    "ratio": row["speedup"],
                    "target": f">= {TARGET_SPEEDUP:g}x KV-cached sequential",
                }
            )
    for name, steps, temperature in settings[1:]:
        gap = realism[name]["max_metric_gap_to_sequential"]
        summary.append(
            {
                "metric": f"parallel decoding, {steps} steps, temperature {temperature:g}: largest metric gap",
                "value": gap,
                "unit": "relative to sequential",
                "baseline": noise_floor,
                "ratio": gap / noise_floor if noise_floor > 0 else None,
                "target": f"<= {args.tolerance:g} (baseline: sequential vs sequential with another seed)",
            }
        )
    headline = {}
    for batch in args.batches:
        ratio = speed[f"batch_{batch}"][steps_name(chosen)]["speedup"] if chosen is not None else math.nan
        headline[f"batch_{batch}"] = ratio
        where = f"{chosen} steps, temperature {passing[chosen]:g}" if chosen is not None else "no setting"
        summary.append(
            {
                "metric": f"speedup at equal realism, batch {batch} ({where})",
                "value": ratio,
                "unit": "x",
                "baseline": 1.0,
                "ratio": ratio,
                "target": f">= {TARGET_SPEEDUP:g}x",
            }
        )
    if chosen is not None:
        # The fairest single number: each decoder at the batch size where it is fastest.
        best_sequential = max(speed[f"batch_{b}"]["sequential"]["samples_per_s"] for b in args.batches)
        best_parallel = max(speed[f"batch_{b}"][steps_name(chosen)]["samples_per_s"] for b in args.batches)
        headline["best_batch_each"] = best_parallel / best_sequential
        summary.append(
            {
                "metric": f"speedup at equal realism, each at its fastest batch size ({chosen} steps)",
                "value": best_parallel / best_sequential,
                "unit": "x",
                "baseline": best_sequential,
                "ratio": best_parallel / best_sequential,
                "target": f">= {TARGET_SPEEDUP:g}x",
            }
        )
    shuffled_gap = realism["shuffled_baseline"]["max_metric_gap_to_test"]
    test_gaps = {name: gaps_to_reference(table) for name, table in report.items()}
    floor = test_gaps.get("noise_floor")
    floor_gap = max(abs(floor[metric]) for metric in evaluate.LANDSCAPE_METRICS) if floor else math.nan
    summary.append(
        {
            "metric": "sequential samples: largest landscape-metric gap to test chips",
            "value": realism["sequential"]["max_metric_gap_to_test"],
            "unit": "relative",
            "baseline": shuffled_gap,
            "ratio": realism["sequential"]["max_metric_gap_to_test"] / shuffled_gap if shuffled_gap > 0 else None,
            "target": "well below the shuffled-pixel baseline",
        }
    )
    summary.append(
        {
            "metric": "noise floor: largest landscape-metric gap between alternate halves of the test chips",
            "value": floor_gap,
            "unit": "relative",
            "baseline": None,
            "ratio": None,
            "target": "",
        }
    )
    for name in ("sequential", *context_sets):
        label = name.replace("_", "-")
        gap = realism[name]["max_metric_gap_to_test"]
        summary.append(
            {
                "metric": f"{label} samples: largest landscape-metric gap to test chips vs noise floor",
                "value": gap,
                "unit": "relative",
                "baseline": floor_gap,
                "ratio": gap / floor_gap if floor_gap > 0 else None,
                "target": "",
            }
        )
        single = test_gaps[name]["single_pixel_ratio"]
        summary.append(
            {
                "metric": f"{label} samples: single-pixel patch share over the test chips'",
                "value": single,
                "unit": "ratio",
                "baseline": floor["single_pixel_ratio"] if floor else None,
                "ratio": None,
                "target": "<= 1.5 (baseline: noise floor)",
            }
        )
    result = {
        "benchmark": "bench_landcover_realism",
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {platform.system()}",
        "device": args.device,
        "torch": torch.__version__,
        "torch_threads": args.threads,
        "load_average_1m": {"start": load_before, "end": load_after},
        "quick": args.quick,
        "model": {
            "path": "trained by this benchmark" if trained_here else str(args.model),
            "train_steps": args.train_steps if trained_here else loaded.metadata.get("extra", {}).get("global_step"),
            "val_loss_nats_per_pixel": loaded.metadata.get("extra", {}).get("val_loss"),
            "n_classes": n_classes,
            "chip_size": loaded.chip_size,
            "n_layers": loaded.config.n_layers,
            "dim": loaded.config.dim,
            "parameters": sum(p.numel() for p in model.parameters()),
            "conditional": loaded.is_conditional,
        },
        "settings": {
            "n": n,
            "speed_n": args.speed_n,
            "batches": args.batches,
            "repeats": args.repeats,
            "tolerance": args.tolerance,
            "temperatures": args.temperatures,
            "sequential_temperature": args.sequential_temperature,
        },
        "heldout": heldout.to_dict(),
        "context_model": "fitted on the train split" if context is not None else "none: the train split is empty",
        "noise_floor_sequential_reseeded": noise_floor,
        "noise_floor_halves": floor_gap,
        "gaps_to_test": test_gaps,
        "equal_realism": {"steps": chosen, "temperature": passing.get(chosen) if chosen else None},
        "speedup_at_equal_realism": headline,
        "target_met": {batch: bool(ratio >= TARGET_SPEEDUP) for batch, ratio in headline.items()},
        "realism_vs_sequential": realism,
        "speed": speed,
        "realism_report": report,
        "table": evaluate.format_report(report),
        "summary": summary,
        "wall_seconds": time.perf_counter() - t0,
    }
    write_json(args.out, result)
    if scratch is not None:
        scratch.cleanup()

    print(result["table"])
    print(f"\nnoise floor (sequential vs sequential, another seed): {noise_floor:.3f}")
    print(f"noise floor (alternate halves of the test chips vs each other): {floor_gap:.3f}")
    print(f"{'setting':<22} {'gap to seq':>11} {'class L1 to seq':>16} {'gap to test':>12}")
    for name, row in realism.items():
        print(
            f"{name:<22} {row['max_metric_gap_to_sequential']:>11.3f} {row['class_l1_to_sequential']:>16.3f} "
            f"{row['max_metric_gap_to_test']:>12.3f}"
        )
    for batch, rows in speed.items():
        print(
            f"\n{batch}: "
            + ", ".join(f"{name} {row['samples_per_s']:.1f}/s ({row['speedup']:.2f}x)" for name, row in rows.items())
        )
    for batch, ratio in headline.items():
        verdict = "holds" if ratio >= TARGET_SPEEDUP else "does NOT hold"
        print(f"speedup at equal realism, {batch}: {ratio:.2f}x at {chosen} steps; >= {TARGET_SPEEDUP:g}x {verdict}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
