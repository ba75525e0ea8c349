"""geoloc on the default real data: routed median error per region against the region-median baseline.

Builds the cities data set (``landformer geoloc make-dataset``: 8-band chips around real cities, Region_ID =
continent, spatial-block splits), trains the tiny CPU recipe (``configs/geoloc_tiny.yaml``: router + one
regressor per continent), and evaluates on the held-out test split. The baseline answers every image with its
region's median training coordinate. Target: routed median error below half the baseline's in every region.

Writes ``benchmarks/results/bench_geoloc.json``. ``--quick`` is a smoke run (fewer cities and steps; its numbers
say nothing about the target).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# LANDFORMER_BENCH_RESULTS: where `run_all.py --quick` sends smoke results, away from the committed ones.
RESULTS = Path(os.environ.get("LANDFORMER_BENCH_RESULTS") or HERE / "results")
TARGET_RATIO = 0.5


def machine() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }


def run(workdir: Path, quick: bool, seed: int) -> dict[str, object]:
    import torch

    from landformer.core.config import load_config
    from landformer.geoloc.config import DatasetConfig, GeolocConfig
    from landformer.geoloc.evaluate import evaluate_run, format_evaluation
    from landformer.geoloc.make_dataset import make_dataset
    from landformer.geoloc.train import train

    per_region = 60 if quick else DatasetConfig.per_region
    start = time.perf_counter()
    folder = make_dataset(
        DatasetConfig(out=workdir / "data", sources=["cities"], per_region=per_region, seed=seed), progress=False
    )["cities"]
    dataset_seconds = time.perf_counter() - start

    overrides = [
        f"out={workdir / 'run'}",
        f"data.train_csv={folder / 'train.csv'}",
        f"data.val_csv={folder / 'val.csv'}",
        f"data.images={folder / 'images'}",
        "train.progress_bar=false",
        "train.loggers=[csv]",
        f"train.seed={seed}",
    ]
    if quick:
        overrides += ["train.max_steps=40", "router.max_steps=60", "train.val_every_steps=20", "regions.min_samples=10"]
    config = load_config(GeolocConfig, ROOT / "configs" / "geoloc_tiny.yaml", overrides)
    start = time.perf_counter()
    manifest = train(config)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    results = evaluate_run(workdir / "run", folder / "test.csv", map_png=False)
    evaluate_seconds = time.perf_counter() - start
    print(format_evaluation(results), flush=True)

    summary = []
    for region, entry in results["regions"].items():
        routed, baseline = entry["routed"]["median_km"], entry["baseline"]["median_km"]
        summary.append(
            {
                "metric": f"{region}: routed median error",
                "value": routed,
                "unit": "km",
                "baseline": baseline,
                "ratio": routed / baseline,
                "target": f"< {TARGET_RATIO}x the region-median baseline",
            }
        )
    overall = results["all"]
    summary.append(
        {
            "metric": "all regions: routed median error",
            "value": overall["routed"]["median_km"],
            "unit": "km",
            "baseline": overall["baseline"]["median_km"],
            "ratio": overall["routed"]["median_km"] / overall["baseline"]["median_km"],
            "target": f"< {TARGET_RATIO}x the region-median baseline",
        }
    )
    summary.append(
        {
            "metric": "all regions: oracle median error (true region)",
            "value": overall["oracle"]["median_km"],
            "unit": "km",
            "baseline": overall["baseline"]["median_km"],
            "ratio": overall["oracle"]["median_km"] / overall["baseline"]["median_km"],
            "target": "",
        }
    )
    summary.append(
        {
            "metric": "router accuracy (held-out cities)",
            "value": overall["router_accuracy"],
            "unit": "",
            "baseline": None,
            "ratio": None,
            "target": "",
        }
    )
    met = all(row["ratio"] < TARGET_RATIO for row in summary[: len(results["regions"])])
    return {
        "benchmark": "bench_geoloc",
        "machine": machine(),
        "params": {
            "quick": quick,
            "seed": seed,
            "per_region": per_region,
            "backbone": config.model.backbone,
            "region_steps": config.train.max_steps,
            "router_steps": config.router.max_steps,
            "torch_threads": torch.get_num_threads(),
        },
        "seconds": {"dataset": dataset_seconds, "train": train_seconds, "evaluate": evaluate_seconds},
        "training": {region: manifest["regions"][region] for region in manifest["regions"]},
        "skipped_regions": manifest["skipped_regions"],
        "evaluation": results,
        "target_met": met,
        "summary": summary,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 60 cities per continent, 40-60 steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data draw, split and training")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 by default because on a shared 2-core machine two threads waiting on each other "
        "made training about 10x slower",
    )
    parser.add_argument("--workdir", help="keep the data and run here instead of a temporary folder")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_geoloc_"))
    try:
        report = run(workdir, args.quick, args.seed)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    from landformer.core.io import write_json

    write_json(RESULTS / "bench_geoloc.json", report)
    print(json.dumps(report["summary"], indent=2))
    print(f"target met: {report['target_met']}; written {RESULTS / 'bench_geoloc.json'}")
    return 0 if report["target_met"] or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
