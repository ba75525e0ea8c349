"""Land-cover model quality on held-out chips, each number beside its baseline.

Trains the tiny preset (``configs/landcover_tiny.yaml`` on its default data) unless ``--model`` names a trained
run, then measures on held-out chips (``--chips``: any chip file whose test split is held out, e.g. real IGBP
chips; default: the run's own, see below):

- bits per pixel of the model, averaged over random orders and in raster order, against the strong baselines of
  ``landcover info`` on the same fair test chips (no exact duplicates, no two chips sharing a pixel): the
  causal-context model (class counts given the W, N, NW, NE neighbours, fitted on the chip file's train split,
  add-1/2, raster order), the class entropy, and gzip, bz2, lzma, PNG and WebP-lossless both pooled (all chips
  in one stream or mosaic) and per chip (headers included); targets: the model at most 0.75x the context
  model, and below lzma, PNG and the class entropy;
- inpainting accuracy and log-loss on hidden pixels at mask ratios 0.1 ... 0.9 (random masks), the model's most
  likely class per pixel against the majority class of the known pixels and the nearest known pixel;
  target: the model above both baselines at every ratio;
- training throughput (valid pixel tokens per second of forward + backward + optimiser step).

For a run on a synthetic world, held-out chips are cut from the world again with stride = chip size (no two chips
share a pixel) and the same spatial-block split as the training chips, so they come only from the held-out blocks
and none overlaps a training chip; that file's train split (the training blocks, cut without overlap) fits the
context model. Otherwise (real IGBP chips) the run's own chip file serves: its test split is its held-out blocks.
Writes ``benchmarks/results/bench_landcover_quality.json`` with a ``"summary"`` list of rows.
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

import psutil
import torch

from landformer.core.chips import load_chips, write_chips
from landformer.core.config import load_config
from landformer.core.io import read_json, write_json
from landformer.landcover.apps.inpainting import inpaint_eval
from landformer.landcover.apps.scoring import information_content
from landformer.landcover.baselines import fair_test_split
from landformer.landcover.config import LandCoverRecipe
from landformer.landcover.export import load
from landformer.landcover.train import chips_from_world, train

ROOT = Path(__file__).resolve().parents[1]
# LANDFORMER_BENCH_RESULTS: where `run_all.py --quick` sends smoke results, away from the committed ones.
RESULTS = Path(os.environ.get("LANDFORMER_BENCH_RESULTS") or ROOT / "benchmarks" / "results")
RATIOS = (0.1, 0.3, 0.5, 0.7, 0.9)
INPAINT_TEMPERATURES = (1.0, 0.7, 0.5, 0.3)  # tried for sampled fills on the validation chips
CONTEXT_TARGET = 0.75  # the model's bits over the causal-context model's, at most
TARGETS = {
    "context": f"<= {CONTEXT_TARGET:g}x baseline",
    "lzma": "< baseline",
    "png": "< baseline",
    "class_entropy": "< baseline",
}


def train_tiny(run_dir: Path, quick: bool, threads: int) -> dict[str, Any]:
    """Train the tiny recipe in ``run_dir`` on its default data (shorter, and any synthetic world smaller, with
    ``quick``)."""
    overrides = [f"task.threads={threads}", "train.progress_bar=false"]
    if quick:
        overrides += ["data.world_size=256", "train.max_steps=20", "train.val_every_steps=10", "images.every_steps=20"]
    recipe = load_config(LandCoverRecipe, ROOT / "configs" / "landcover_tiny.yaml", overrides)
    return train(recipe, run_dir)


def heldout_chips(run_dir: Path, out: Path, training: dict[str, Any]) -> Path:
    """The held-out chip file of a run: for a run on a synthetic world, non-overlapping chips of that world with
    the run's split; otherwise the chip file it trained on, whose test split holds its held-out spatial blocks."""
    recipe = load_config(LandCoverRecipe, run_dir / "config.yaml")
    world = Path(recipe.data.world or run_dir / "world")
    if (world / "world.json").is_file():
        size = recipe.data.chip_size
        return chips_from_world(world, out, size, size, recipe.data.test_fraction, False, recipe.train.seed)
    if not training.get("chips"):
        raise SystemExit(f"run {run_dir} records no chip file and has no synthetic world: give --chips")
    return Path(training["chips"])


def validation_and_test(chips: Path, out: Path) -> tuple[Path, Path]:
    """The held-out chips (duplicates and overlaps dropped) halved: even-numbered chips are the validation set
    that picks settings, odd-numbered ones the test set that reports them. Both keep the train split."""
    chip_set = load_chips(chips)
    fair, _ = fair_test_split(chip_set)
    paths = []
    for name, start in (("validation", 0), ("test", 1)):
        paths.append(
            write_chips(
                out / f"{name}.npz",
                fair.train_data,
                fair.test_data[start::2],
                fair.train_coords,
                fair.test_coords[start::2],
                fair.metadata,
            )
        )
    return paths[0], paths[1]


def choose_inpaint_temperature(rows_by_temperature: dict[float, list[dict[str, Any]]]) -> float:
    """The highest temperature (the most varied fills) whose sampled fills are at least as accurate as the
    nearest known pixel at every mask ratio on the validation chips; else the one with the best worst margin."""
    margins = {
        temperature: min(row["model_sample_accuracy"] - row["nearest_accuracy"] for row in rows)
        for temperature, rows in rows_by_temperature.items()
    }
    passing = [temperature for temperature, margin in margins.items() if margin >= 0]
    return max(passing) if passing else max(margins, key=lambda temperature: margins[temperature])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="20 training steps (a 256 px world if synthetic), 16 chips: a smoke run"
    )
    parser.add_argument("--model", type=Path, default=None, help="trained run folder to evaluate (skips training)")
    parser.add_argument("--run-dir", type=Path, default=None, help="where to train (default: a temporary folder)")
    parser.add_argument(
        "--chips",
        type=Path,
        default=None,
        help="held-out chip file (default: cut from the world); its train split fits the context model",
    )
    parser.add_argument(
        "--validation-chips",
        type=Path,
        default=None,
        help="chip file of validation chips (`landformer landcover validation-chips`) to choose the fill temperature "
        "on; the whole held-out split then reports it (default: even-numbered held-out chips choose, odd report)",
    )
    parser.add_argument("--n", type=int, default=64, help="held-out chips for the inpainting sweep")
    parser.add_argument("--orders", type=int, default=8, help="random orders averaged for bits/pixel")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest for the tiny model on a shared CPU)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_landcover_quality.json", help="JSON output")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_landcover_quality_") as scratch:
        scratch_dir = Path(scratch)
        if args.model is None:
            run_dir = args.run_dir or scratch_dir / "run"
            training = train_tiny(run_dir, args.quick, args.threads)
        else:
            run_dir = args.model
            training = read_json(run_dir / "train_summary.json", "training summary")
        chips = args.chips or heldout_chips(run_dir, scratch_dir / "heldout.npz", training)
        n_heldout = len(load_chips(chips).test_data)
        loaded = load(run_dir)
        n_eval = min(16 if args.quick else args.n, n_heldout)
        info = information_content(loaded, chips, scratch_dir / "info", orders=2 if args.quick else args.orders)
        if args.validation_chips is not None:
            validation, test = args.validation_chips, chips
            chosen_on = f"validation chips {args.validation_chips}; reported on every fair held-out chip"
        else:
            validation, test = validation_and_test(chips, scratch_dir)
            chosen_on = "validation half of the held-out chips (even-numbered); reported on the odd-numbered half"
        validation_rows = {
            temperature: inpaint_eval(
                loaded, validation, scratch_dir / f"inpaint_val_{temperature}", RATIOS, n_eval, temperature=temperature
            )["rows"]
            for temperature in INPAINT_TEMPERATURES
        }
        inpaint_temperature = choose_inpaint_temperature(validation_rows)
        sweep = inpaint_eval(
            loaded, test, scratch_dir / "inpaint", ratios=RATIOS, n=n_eval, temperature=inpaint_temperature
        )

    bits = info["bits_per_pixel"]
    model_bits = bits["model_random_order"]
    compared = [name for name in bits if not name.startswith("model")]  # context first, then entropy, codecs
    summary = [
        {
            "metric": f"bits/pixel, model (mean of {len(info['random_nats_per_order'])} random orders) vs {name}",
            "value": model_bits,
            "unit": "bits/pixel",
            "baseline": bits[name],
            "ratio": model_bits / bits[name],
            "target": TARGETS.get(name, ""),
        }
        for name in compared
    ]
    summary.append(
        {
            "metric": "bits/pixel, model (raster order) vs class entropy",
            "value": bits["model_raster_order"],
            "unit": "bits/pixel",
            "baseline": bits["class_entropy"],
            "ratio": bits["model_raster_order"] / bits["class_entropy"],
            "target": "",
        }
    )
    for row in sweep["rows"]:
        for baseline in ("nearest", "majority"):
            summary.append(
                {
                    "metric": f"inpainting accuracy at mask ratio {row['ratio']} vs {baseline} known pixel(s)",
                    "value": row["model_accuracy"],
                    "unit": "accuracy",
                    "baseline": row[f"{baseline}_accuracy"],
                    "ratio": row["model_accuracy"] / row[f"{baseline}_accuracy"],
                    "target": "> baseline",
                }
            )
        summary.append(
            {
                "metric": f"sampled inpainting fill (temperature {inpaint_temperature}) at mask ratio {row['ratio']} "
                "vs nearest known pixel",
                "value": row["model_sample_accuracy"],
                "unit": "accuracy",
                "baseline": row["nearest_accuracy"],
                "ratio": row["model_sample_accuracy"] / row["nearest_accuracy"],
                "target": ">= baseline",
            }
        )
        best = min(row["majority_log_loss"], row["nearest_log_loss"])
        summary.append(
            {
                "metric": f"inpainting log-loss at mask ratio {row['ratio']} vs the better baseline",
                "value": row["model_log_loss"],
                "unit": "nats/pixel",
                "baseline": best,
                "ratio": row["model_log_loss"] / best,
                "target": "",
            }
        )
    tokens_per_s = training.get("train_tokens_per_s")
    summary.append(
        {
            "metric": "training throughput (tiny preset, fp32 CPU)",
            "value": tokens_per_s,
            "unit": "pixel tokens/s",
            "baseline": None,
            "ratio": None,
            "target": "",
        }
    )
    ratio_to_context = info["ratio_to_context"]
    targets = {
        "bits_at_most_0.75x_context": ratio_to_context <= CONTEXT_TARGET if ratio_to_context is not None else None,
        "bits_below_lzma": model_bits < bits["lzma"],
        "bits_below_png": model_bits < bits["png"],
        "bits_below_class_entropy": model_bits < bits["class_entropy"],
        "inpainting_beats_both_baselines_at_every_ratio": sweep["model_beats_baselines"],
        "sampled_fills_at_least_nearest_at_every_ratio": all(
            row["model_sample_accuracy"] >= row["nearest_accuracy"] for row in sweep["rows"]
        ),
    }
    result = {
        "benchmark": "bench_landcover_quality",
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, {platform.system()}",
        "torch": torch.__version__,
        "torch_threads": args.threads,
        "load_average_1m": {"start": load_before, "end": os.getloadavg()[0]},
        "quick": args.quick,
        "run_dir": str(run_dir),
        "training": {
            key: training.get(key)
            for key in ("global_step", "fit_seconds", "val_loss_nats", "train_tokens_per_s", "n_parameters")
        },
        "heldout": {"chips": n_heldout, "inpaint_chips": n_eval, "pixels": info["pixels"], **info["heldout"]},
        "bits_per_pixel": bits,
        "ratio_to_context": ratio_to_context,
        "baselines": info["baselines"],
        "notes": info["notes"],
        "random_nats_per_order": info["random_nats_per_order"],
        "inpainting": sweep["rows"],
        "inpainting_temperature": {
            "chosen": inpaint_temperature,
            "on": chosen_on,
            "validation_rows": {str(temperature): rows for temperature, rows in validation_rows.items()},
        },
        "targets_met": targets,
        "summary": summary,
        "wall_seconds": time.perf_counter() - t0,
    }
    write_json(args.out, result)

    print(f"{'metric':<75} {'value':>9} {'baseline':>9} {'ratio':>7}")
    for row in summary:
        baseline = "" if row["baseline"] is None else f"{row['baseline']:9.4f}"
        ratio = "" if row["ratio"] is None else f"{row['ratio']:6.3f}x"
        value = float("nan") if row["value"] is None else row["value"]
        print(f"{row['metric']:<75} {value:>9.4f} {baseline:>9} {ratio:>7}")
    for note in info["notes"]:
        print(f"note: {note}")
    print("targets met: " + ", ".join(f"{name}={met}" for name, met in targets.items()))
    print(f"load average (1 min) {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
