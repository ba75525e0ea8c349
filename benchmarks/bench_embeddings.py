"""Embeddings pipeline: held-out quality of MAE -> SFT -> DPO against the ridge and kNN probes, plus speed.

Quality (the issue's acceptance test): the tiny CPU recipe (``configs/embeddings_tiny.yaml``) runs
pretrain -> sft -> dpo on the default city dataset (tiles around 3000 real cities, target log population, whole
10-degree regions held out) and the test-split R2 of each stage is compared with ridge and kNN on mean-pooled raw
embeddings, fitted on the same training split. Targets: SFT above both probes; DPO reported as it comes.

Speed: tile loading from the packed ``tiles.npz`` against reading the same tiles as int8 GeoTIFFs one by one, and
training throughput (tiles/s) of the tiny ViT MAE and of a tiny random Qwen2-VL / Qwen2.5-VL tower MAE.

``--quick`` runs everything on a 128-pixel synthetic world with a few steps (a smoke test; its R2 means nothing).
Writes ``benchmarks/results/bench_embeddings.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))


def recipe(dataset: Path, quick: bool):
    from landformer.core.config import load_config
    from landformer.embeddings.config import EmbeddingsConfig

    overrides = [f"data.dataset={dataset}"]
    if quick:
        overrides += [f"train_{stage}.max_steps=6" for stage in ("pretrain", "sft", "dpo")]
        overrides += [f"train_{stage}.val_every_steps=3" for stage in ("pretrain", "sft", "dpo")]
        overrides += ["data.batch_size=16", "encoder.dim=32", "encoder.depth=1", "encoder.heads=2"]
        overrides += ["mae.decoder_dim=32", "mae.decoder_depth=1", "mae.decoder_heads=2", "data.crop_centred=false"]
    overrides += [f"train_{stage}.progress_bar=false" for stage in ("pretrain", "sft", "dpo")]
    return load_config(EmbeddingsConfig, ROOT / "configs" / "embeddings_tiny.yaml", overrides)


def build_dataset(work: Path, quick: bool) -> Path:
    from landformer.embeddings.make_dataset import (
        CityDatasetConfig,
        WorldDatasetConfig,
        make_city_dataset,
        make_world_dataset,
    )

    if quick:
        from landformer.synth.world import make_world

        world = make_world(work / "world", size=128, seed=0)
        make_world_dataset(work / "data", world.folder, WorldDatasetConfig(tile_size=8), progress=False)
    else:
        make_city_dataset(work / "data", CityDatasetConfig(), progress=False)
    return work / "data"


def quality(dataset: Path, work: Path, quick: bool) -> dict:
    from landformer.embeddings.mae import pretrain
    from landformer.embeddings.prefer import prefer
    from landformer.embeddings.regress import finetune

    start = time.perf_counter()
    pre = pretrain(recipe(dataset, quick), work / "pretrain")
    sft = finetune(recipe(dataset, quick), work / "sft", init=work / "pretrain")
    dpo = prefer(recipe(dataset, quick), work / "dpo", sft=work / "sft")
    metrics = dict(sft["metrics"])
    metrics["dpo"] = dpo["metrics"]["dpo"]
    return {
        "metrics": metrics,
        "sft_vs_dpo": dpo["sft_vs_dpo"],
        "baseline_settings": sft["baseline_settings"],
        "mae_val_loss": pre["val_loss"],
        "seconds": {"pretrain": pre["fit_seconds"], "sft": sft["fit_seconds"], "dpo": dpo["fit_seconds"],
                    "total": round(time.perf_counter() - start, 1)},
    }  # fmt: skip


def loading(dataset: Path) -> dict:
    """Seconds to load the labelled tiles from the bundle and from the tile files."""
    from landformer.embeddings.data import TileSource, load_dataset, resolve_source

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

    from landformer.embeddings.encoders import build_encoder
    from landformer.embeddings.mae import MaskedAutoencoder

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
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_embeddings_"))
    try:
        start = time.perf_counter()
        dataset = args.dataset or build_dataset(work, args.quick)
        build_s = time.perf_counter() - start
        load = loading(dataset)
        result = quality(dataset, work, args.quick)
        speeds = {kind: throughput(kind, args.quick) for kind in ("vit", "qwen2_vl", "qwen2_5_vl")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    test = {name: values.get("test", values["val"]) for name, values in result["metrics"].items()}
    best_probe = max(test["ridge"]["r2"], test["knn"]["r2"])
    print(f"{'model':<8} {'R2 test':>8} {'MAE':>8} {'RMSE':>8}")
    for name, values in test.items():
        print(f"{name:<8} {values['r2']:>8.4f} {values['mae']:>8.4f} {values['rmse']:>8.4f}")
    print(f"loading {load['tiles']} tiles: bundle {load['bundle_s']:.2f} s, files {load['files_s']:.2f} s")
    print("MAE training throughput (tiles/s): " + ", ".join(f"{k} {v:.0f}" for k, v in speeds.items()))
    summary = [
        {"metric": "SFT R2 on held-out regions", "value": test["sft"]["r2"], "unit": "R2",
         "baseline": best_probe, "ratio": None, "target": "> ridge and > kNN on mean-pooled embeddings"},
        {"metric": "ridge probe R2 (held-out)", "value": test["ridge"]["r2"], "unit": "R2", "baseline": None,
         "ratio": None, "target": ""},
        {"metric": "kNN probe R2 (held-out)", "value": test["knn"]["r2"], "unit": "R2", "baseline": None,
         "ratio": None, "target": ""},
        {"metric": "DPO R2 on held-out regions", "value": test["dpo"]["r2"], "unit": "R2",
         "baseline": test["sft"]["r2"], "ratio": None, "target": "reported (no target)"},
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
        "params": {"quick": args.quick, "dataset": str(args.dataset) if args.dataset else "built (default recipe)"},
        "dataset_build_seconds": round(build_s, 1),
        "quality": result,
        "loading": load,
        "throughput_tiles_per_s": speeds,
        "summary": summary,
        "targets_met": bool(test["sft"]["r2"] > best_probe),
    }
    from landformer.core.io import write_json

    print(f"wrote {write_json(RESULTS / 'bench_embeddings.json', payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
