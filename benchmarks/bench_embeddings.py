"""Embeddings pipeline: held-out quality of MAE -> SFT -> DPO and of the PCA 3-channel route against the ridge
and kNN probes, over several seeds, plus speed.

Quality (the issue's acceptance test): the tiny CPU recipe (``configs/embeddings_tiny.yaml``) runs
pretrain -> sft -> dpo on the default city dataset (tiles around 3000 real cities, target log population, whole
10-degree regions held out, tiles that overlap across a region border left out). Route B fits PCA 64 -> 3 on the
training pixels and fine-tunes a 3-channel encoder (same recipe, ``encoder.in_channels=3``) on the converted tiles.
Every seed draws its own held-out regions (``data.split_seed``) and its own initialisation (``train_*.seed``); ridge
and kNN on the mean-pooled raw 64-d embeddings are fitted on the same training split. Each model's test R2 is
reported as mean +- std over the seeds, and so is the paired difference SFT - best probe (both on the same split,
so the regions' difficulty cancels). Target: SFT's mean above both probes' means by more than the seeds' std.

Speed: tile loading from the packed ``tiles.npz`` against reading the same tiles as int8 GeoTIFFs one by one, and
training throughput (tiles/s) of the tiny ViT MAE and of a tiny random Qwen2-VL / Qwen2.5-VL tower MAE.

``--quick`` runs everything on a 128-pixel synthetic world with a few steps (a smoke test; its R2 means nothing).
``--world`` runs the same comparison on a synthetic world's HM-growth dataset too (a more predictable target).
Writes ``benchmarks/results/bench_embeddings.json``.
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

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
# LANDFORMER_BENCH_RESULTS: where `run_all.py --quick` sends smoke results, away from the committed ones.
RESULTS = Path(os.environ.get("LANDFORMER_BENCH_RESULTS") or HERE / "results")
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))


STAGES = ("pretrain", "sft", "dpo")
MODELS = ("ridge", "knn", "sft", "dpo", "sft_pca3")


def recipe(dataset: Path, quick: bool, seed: int, extra: list[str] | None = None):
    from landformer.core.config import load_config
    from landformer.embeddings.config import EmbeddingsConfig

    overrides = [f"data.dataset={dataset}", f"data.split_seed={seed}"]
    overrides += [f"train_{stage}.seed={seed}" for stage in STAGES]
    if quick:
        overrides += [f"train_{stage}.max_steps=6" for stage in STAGES]
        overrides += [f"train_{stage}.val_every_steps=3" for stage in STAGES]
        overrides += ["data.batch_size=16", "encoder.dim=32", "encoder.depth=1", "encoder.heads=2"]
        overrides += ["mae.decoder_dim=32", "mae.decoder_depth=1", "mae.decoder_heads=2", "data.crop_centred=false"]
    overrides += [f"train_{stage}.progress_bar=false" for stage in STAGES]
    return load_config(EmbeddingsConfig, ROOT / "configs" / "embeddings_tiny.yaml", overrides + (extra or []))


def build_dataset(work: Path, quick: bool) -> Path:
    from landformer.embeddings.make_dataset import CityDatasetConfig, make_city_dataset

    if quick:
        return build_world_dataset(work, 128, 8)
    make_city_dataset(work / "data", CityDatasetConfig(), progress=False)
    return work / "data"


def build_world_dataset(work: Path, size: int, tile_size: int) -> Path:
    from landformer.embeddings.make_dataset import WorldDatasetConfig, make_world_dataset
    from landformer.synth.world import make_world

    world = make_world(work / f"world{size}", size=size, seed=0)
    folder = work / f"world{size}_data"
    make_world_dataset(folder, world.folder, WorldDatasetConfig(tile_size=tile_size), progress=False)
    return folder


def one_seed(dataset: Path, work: Path, quick: bool, seed: int) -> dict:
    """Every model's metrics on one seed's split: probes, MAE -> SFT, DPO, and SFT on the PCA 3-channel copy."""
    from landformer.embeddings.data import load_data, tile_source
    from landformer.embeddings.pca import convert_dataset, fit_pca
    from landformer.embeddings.train import finetune, prefer, pretrain

    run = work / f"seed{seed}"
    start = time.perf_counter()
    pre = pretrain(recipe(dataset, quick, seed), run / "pretrain")
    sft = finetune(recipe(dataset, quick, seed), run / "sft", init=run / "pretrain")
    dpo = prefer(recipe(dataset, quick, seed), run / "dpo", sft=run / "sft")
    config = recipe(dataset, quick, seed)
    data = load_data(config.data, progress=False)
    converted = convert_dataset(data, fit_pca(data, seed=seed), tile_source(config.data).labels, run / "pca3")
    pca3 = finetune(recipe(converted.parent, quick, seed, ["encoder.in_channels=3"]), run / "sft_pca3")
    metrics = {"ridge": sft["metrics"]["ridge"], "knn": sft["metrics"]["knn"], "sft": sft["metrics"]["sft"],
               "dpo": dpo["metrics"]["dpo"], "sft_pca3": pca3["metrics"]["sft"],
               "ridge_pca3": pca3["metrics"]["ridge"], "knn_pca3": pca3["metrics"]["knn"]}  # fmt: skip
    shutil.rmtree(run, ignore_errors=True)
    return {
        "seed": seed,
        "split": {name: int((data.split == name).sum()) for name in ("train", "val", "test", "buffer")},
        "metrics": metrics,
        "baseline_settings": sft["baseline_settings"],
        "mae_val_loss": pre["val_loss"],
        "steps": {"pretrain": pre["global_step"], "sft": sft["global_step"], "dpo": dpo["global_step"],
                  "sft_pca3": pca3["global_step"]},
        "seconds": {"pretrain": pre["fit_seconds"], "sft": sft["fit_seconds"], "dpo": dpo["fit_seconds"],
                    "sft_pca3": pca3["fit_seconds"], "total": round(time.perf_counter() - start, 1)},
    }  # fmt: skip


def mean_std(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "values": [float(v) for v in array]}  # fmt: skip


def aggregate(runs: list[dict]) -> dict:
    """Per model: test R2 / MAE / RMSE as mean +- std over the seeds; paired differences against the probes."""
    test = [{name: m.get("test", m["val"]) for name, m in run["metrics"].items()} for run in runs]
    models = {
        name: {metric: mean_std([t[name][metric] for t in test]) for metric in ("r2", "mae", "rmse")}
        for name in test[0]
    }
    best_probe = [max(t["ridge"]["r2"], t["knn"]["r2"]) for t in test]
    paired = {
        f"{model}_minus_best_probe": mean_std([t[model]["r2"] - best for t, best in zip(test, best_probe, strict=True)])
        for model in ("sft", "dpo", "sft_pca3")
    }
    paired["dpo_minus_sft"] = mean_std([t["dpo"]["r2"] - t["sft"]["r2"] for t in test])
    sft, probes = models["sft"]["r2"], [models["ridge"]["r2"], models["knn"]["r2"]]
    noise = max(sft["std"], *(p["std"] for p in probes))
    margin = sft["mean"] - max(p["mean"] for p in probes)
    return {
        "models": models,
        "paired": paired,
        "sft_margin_over_best_probe_mean": margin,
        "largest_seed_std": noise,
        "bar_met": bool(margin > noise),
        "paired_bar_met": bool(paired["sft_minus_best_probe"]["mean"] > paired["sft_minus_best_probe"]["std"]),
    }


def quality(dataset: Path, work: Path, quick: bool, seeds: list[int]) -> dict:
    runs = []
    for seed in seeds:
        runs.append(one_seed(dataset, work, quick, seed))
        print(json.dumps({"seed": seed, **{k: round(v.get("test", v["val"])["r2"], 4)
                          for k, v in runs[-1]["metrics"].items()}}), flush=True)  # fmt: skip
    return {"seeds": seeds, "runs": runs, **aggregate(runs)}


def print_table(title: str, result: dict) -> None:
    print(title)
    print(f"{'model':<11} {'R2 test (mean +- std)':>22} {'MAE':>7} {'RMSE':>7}")
    for name, values in result["models"].items():
        r2 = values["r2"]
        print(f"{name:<11} {r2['mean']:>13.4f} +- {r2['std']:.4f} {values['mae']['mean']:>7.4f} "
              f"{values['rmse']['mean']:>7.4f}")  # fmt: skip
    for name, values in result["paired"].items():
        print(f"paired {name}: {values['mean']:+.4f} +- {values['std']:.4f}")
    print(f"SFT mean - best probe mean = {result['sft_margin_over_best_probe_mean']:+.4f}; "
          f"largest seed std {result['largest_seed_std']:.4f}; bar met: {result['bar_met']}")  # fmt: skip


def loading(dataset: Path) -> dict:
    """Seconds to load the labelled tiles from the bundle and from the tile files."""
    from landformer.embeddings.tiles import TileSource, load_dataset, resolve_source

    source = resolve_source(dataset)
    meta = json.loads((dataset / "dataset.json").read_text())
    folder = dataset / meta["tile_folders"][0]
    next_folder = dataset / meta["tile_folders"][1] if len(meta["tile_folders"]) > 1 else None
    files = TileSource(folder, source.labels, next_tiles=next_folder)
    timings = {}
    for name, chosen in (("bundle", source), ("files", files)):
        start = time.perf_counter()
        data = load_dataset(chosen, progress=False)
        timings[name] = time.perf_counter() - start
    return {"bundle_s": timings["bundle"], "files_s": timings["files"], "tiles": len(data), "suffix": folder.name}


def throughput(kind: str, quick: bool) -> float:
    """Training tiles per second of a tiny MAE on random 16-pixel unit-vector tiles (1 thread)."""
    import torch

    from landformer.embeddings.model import MaskedAutoencoder, build_encoder

    torch.manual_seed(0)
    values = {"kind": kind, "in_channels": 64, "patch_size": 4 if kind == "vit" else 2, "dim": 64, "depth": 2,
              "heads": 2, "window_size": 8, "fullatt_blocks": [1]}  # fmt: skip
    mae = MaskedAutoencoder(build_encoder(values, frames=1), 0.75, 64, 1, 2)
    optimizer = torch.optim.AdamW(mae.parameters(), lr=1e-3)
    frames = torch.randn(32, 1, 64, 16, 16)
    frames = frames / frames.norm(dim=2, keepdim=True)
    steps = 3 if quick else 15
    for step in range(steps + 2):
        if step == 2:
            start = time.perf_counter()
        loss, _, _ = mae(frames)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * len(frames) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small synthetic world and a few steps (smoke run)")
    parser.add_argument("--dataset", type=Path, default=None, help="use this dataset folder instead of building one")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split and initialisation seeds")
    parser.add_argument("--world", action="store_true", help="also run the comparison on a synthetic HM-growth world")
    parser.add_argument("--world-size", type=int, default=512, help="side of that world in pixels (16 px tiles)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_embeddings_"))
    try:
        start = time.perf_counter()
        dataset = args.dataset or build_dataset(work, args.quick)
        build_s = time.perf_counter() - start
        load = loading(dataset)
        result = quality(dataset, work, args.quick, args.seeds)
        world = None
        if args.world:
            world_data = build_world_dataset(work, 128 if args.quick else args.world_size, 8 if args.quick else 16)
            world = quality(world_data, work, args.quick, args.seeds)
        speeds = {kind: throughput(kind, args.quick) for kind in ("vit", "qwen2_vl", "qwen2_5_vl")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(f"held-out test R2 over seeds {args.seeds} ({'quick world' if args.quick else 'cities'})", result)
    if world is not None:
        print_table("synthetic world, target HM growth 1995 -> 2020", world)
    print(f"loading {load['tiles']} tiles: bundle {load['bundle_s']:.2f} s, files {load['files_s']:.2f} s")
    print("MAE training throughput (tiles/s): " + ", ".join(f"{k} {v:.0f}" for k, v in speeds.items()))
    models, paired = result["models"], result["paired"]
    best_probe_mean = max(models["ridge"]["r2"]["mean"], models["knn"]["r2"]["mean"])

    def row(metric: str, name: str, target: str = "", baseline: float | None = None) -> dict:
        r2 = models[name]["r2"]
        return {"metric": metric, "value": r2["mean"], "std": r2["std"], "unit": "R2 (mean over seeds)",
                "baseline": baseline, "ratio": None, "target": target}  # fmt: skip

    summary = [
        row("SFT R2 on held-out regions", "sft", "> ridge and > kNN means by more than the seeds' std",
            best_probe_mean),
        row("ridge probe R2 (held-out)", "ridge"),
        row("kNN probe R2 (held-out)", "knn"),
        row("DPO R2 on held-out regions", "dpo", "reported (no target)", models["sft"]["r2"]["mean"]),
        row("PCA 3-channel SFT R2 on held-out regions", "sft_pca3", "reported (no target)", best_probe_mean),
        {"metric": "SFT - best probe, paired by seed", "value": paired["sft_minus_best_probe"]["mean"],
         "std": paired["sft_minus_best_probe"]["std"], "unit": "R2", "baseline": 0.0, "ratio": None,
         "target": "> its std"},
        {"metric": "tile loading from tiles.npz", "value": load["tiles"] / load["bundle_s"], "unit": "tiles/s",
         "baseline": load["tiles"] / load["files_s"], "ratio": load["files_s"] / load["bundle_s"],
         "target": "faster than reading the tile files"},
        {"metric": "MAE training, tiny ViT", "value": speeds["vit"], "unit": "tiles/s", "baseline": None,
         "ratio": None, "target": ""},
        {"metric": "MAE training, tiny Qwen2-VL tower", "value": speeds["qwen2_vl"], "unit": "tiles/s",
         "baseline": speeds["vit"], "ratio": speeds["qwen2_vl"] / speeds["vit"], "target": ""},
        {"metric": "MAE training, tiny Qwen2.5-VL tower", "value": speeds["qwen2_5_vl"], "unit": "tiles/s",
         "baseline": speeds["vit"], "ratio": speeds["qwen2_5_vl"] / speeds["vit"], "target": ""},
    ]  # fmt: skip
    payload = {
        "benchmark": "bench_embeddings",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": psutil.cpu_count(),
            "load_average": list(psutil.getloadavg()),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": 1,
        },
        "params": {
            "quick": args.quick,
            "seeds": args.seeds,
            "dataset": str(args.dataset) if args.dataset else "built (default recipe)",
            "world": args.world,
            "world_size": args.world_size if args.world else None,
        },
        "dataset_build_seconds": round(build_s, 1),
        "quality": result,
        "world_quality": world,
        "loading": load,
        "throughput_tiles_per_s": speeds,
        "summary": summary,
        "targets_met": result["bar_met"],
    }
    from landformer.core.io import write_json

    print(f"wrote {write_json(RESULTS / 'bench_embeddings.json', payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
