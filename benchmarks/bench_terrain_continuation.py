"""Terrain continuation of a real DEM the model never saw: `terrain evaluate`'s measures, next to baselines.

The held-out DEM is the east part of the Jacksboro DEM (163 x 344 px at about 84 m; the packaged model and the
default recipes train on its west part only). It is grown by ``--amount`` px on every side and measured against
itself (``terrain/evaluate.py``, ``terrain/metrics.py``): seam across the original edge, tile/token grid in the new
strips, relief at the DEM's scale, D8 valleys crossing the edge and ponding beside it, pits; plus codebook use and
sample realism against the DEM's tiles next to fractal noise. Beside the model:

- ``mirror``: the DEM reflected across each edge (numpy's ``reflect`` padding), the strongest trivial continuation:
  real texture and no seam by construction, but every valley that reaches the edge turns back on itself;
- ``one scale``: the same model continuing the map at its own scale only (``--scales 1``), the ablation of the
  coarser scale that gives new strips their broad shape;
- ``no drain``: the same model with its strips kept as drawn (``--no-drain``), the ablation of the cut that drains
  valleys the strip closes at the edge;
- ``real``: real terrain's own continuation, what every measure reads when the strips are the truth: the DEM's
  inner part (``REAL_RING`` px in from every edge) continued by the DEM's own outer ring, beside the model growing
  that same inner part by as much (``model, inner``), so the two compare like for like.

For sample realism, besides fractal noise (whose spectrum is fitted to the held-out tiles themselves, so it knows
something the model cannot): real tiles of Jacksboro's west part against the east's, i.e. how close real terrain of
the same place that the model may learn from comes to the held-out part.

Writes ``benchmarks/results/bench_terrain_continuation.json`` and prints a table.
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
import rasterio
import torch
from rasterio.windows import Window

from landformer.core.io import write_json
from landformer.terrain.evaluate import TARGETS, continuation, evaluate, read_dem, within
from landformer.terrain.export import load
from landformer.terrain.metrics import expansion_strips
from landformer.terrain.scales import EXPAND_SCALES

REAL_RING = 32  # px of the held-out DEM that stand in for the true continuation of its inner part (163 px wide)

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "terrain_maskgit_real.yaml"  # the packaged model's
RESULTS = Path(os.environ.get("LANDFORMER_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def validation_realism(generator: Any, count: int, seed: int) -> dict[str, Any]:
    """Sample realism against the Jacksboro west tiles that the packaged model's recipe held out of training
    (its spatial validation blocks, cut again from the recipe: same sources, split and seed)."""
    from landformer.core.config import load_config
    from landformer.terrain.config import MaskGITConfig
    from landformer.terrain.data import prepare_tiles
    from landformer.terrain.evaluate import sample_realism

    recipe = load_config(MaskGITConfig, RECIPE, [])
    with tempfile.TemporaryDirectory() as scratch:
        tiles = prepare_tiles(recipe.data, Path(scratch), recipe.train.seed)
    west = tiles.val[np.isclose(tiles.val_pixel_sizes, generator.reference_pixel_size_m, rtol=1e-3)]
    realism, _, _ = sample_realism(generator, west, count, seed)
    return {"n_tiles": len(west), **realism}


def crop_dem(source: Path, target: Path, ring: int) -> None:
    """Write ``source`` without its outer ``ring`` px as ``target``, georeferenced where those pixels lie."""
    with rasterio.open(source) as dataset:
        window = Window(ring, ring, dataset.width - 2 * ring, dataset.height - 2 * ring)
        profile = {
            **dataset.profile,
            "width": window.width,
            "height": window.height,
            "transform": dataset.window_transform(window),
        }
        with rasterio.open(target, "w", **profile) as out:
            out.write(dataset.read(1, window=window), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="real", help="generator run folder or packaged name (default: real)")
    parser.add_argument("--amount", type=int, default=64, help="pixels grown on every side")
    parser.add_argument("--samples", type=int, default=256, help="samples compared with the DEM's tiles")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="a 32 px strip and 32 samples, no ablation (smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_terrain_continuation.json", help="JSON output")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.amount, args.samples = 32, 32
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    generator = load(args.model)
    with tempfile.TemporaryDirectory() as scratch:
        model = evaluate(args.model, Path(scratch) / "model", amount=args.amount, samples=args.samples, seed=args.seed)
        one_scale = undrained = None
        if not args.quick:
            undrained = evaluate(
                args.model, Path(scratch) / "undrained", amount=args.amount, samples=8, seed=args.seed, drain=False
            )["headline"]
        if not args.quick and EXPAND_SCALES > 1:
            one_scale = evaluate(
                args.model, Path(scratch) / "one", amount=args.amount, samples=8, seed=args.seed, scales=1
            )["headline"]
        original, pixel_size = read_dem(Path(model["dem"]))
        expanded, _ = read_dem(Path(model["expanded"]))
        inner_dem = Path(scratch) / "inner.tif"
        crop_dem(Path(model["dem"]), inner_dem, REAL_RING)
        model_inner = evaluate(
            args.model, Path(scratch) / "inner", dem=inner_dem, amount=REAL_RING, samples=8, seed=args.seed
        )["headline"]
    from landformer.synth.packaged import jacksboro_dem
    from landformer.terrain.evaluate import dem_tiles
    from landformer.terrain.metrics import realism_distances

    with tempfile.TemporaryDirectory() as scratch:
        west, _ = read_dem(jacksboro_dem(Path(scratch) / "west.tif", "west"))
    tile = generator.grid * generator.downsample
    east_tiles = dem_tiles(original, tile, tile // 4)
    real_west = realism_distances(dem_tiles(west, tile, tile // 4), east_tiles)
    # The model told where it is, as the noise is told the east's slope: tiles of the strips it grew around the DEM.
    boxes = expansion_strips(expanded.shape, args.amount, args.amount, *original.shape).values()
    strip_tiles = np.concatenate([dem_tiles(expanded[box], tile, tile // 4) for box in boxes])
    strips_realism = realism_distances(strip_tiles, east_tiles)
    strips_ratio = {name: value / model["realism"]["fractal_noise"][name] for name, value in strips_realism.items()}
    validation = validation_realism(generator, args.samples, args.seed) if args.model == "real" else None
    mirrored = np.pad(original, args.amount, mode="reflect")
    mirror = continuation(mirrored, args.amount, original.shape, pixel_size, generator)["headline"]
    mirror["codebook_usage"] = float("nan")
    inner_shape = (original.shape[0] - 2 * REAL_RING, original.shape[1] - 2 * REAL_RING)
    real = continuation(original, REAL_RING, inner_shape, pixel_size, generator)["headline"]
    real["codebook_usage"] = float("nan")

    rows = []
    for name, bounds in TARGETS.items():
        rows.append(
            {
                "measure": name,
                "model": model["headline"][name],
                "one_scale": one_scale[name] if one_scale else None,
                "no_drain": undrained[name] if undrained else None,
                "mirror": mirror[name],
                "real": real[name],
                "model_inner": model_inner[name],
                "target": bounds,
                "met": within(model["headline"][name], bounds),
            }
        )
    ratios = model["realism"]["ratio_to_fractal_noise"]
    summary = [
        {
            "metric": f"held-out Jacksboro grown {args.amount} px: {row['measure']}",
            "value": row["model"],
            "unit": "",
            "baseline": row["mirror"],
            "ratio": None,
            "target": (
                f"{row['target']} (baseline: mirror continuation; real terrain {row['real']:.3f} against the model's "
                f"{row['model_inner']:.3f} on the DEM's inner part grown {REAL_RING} px)"
            ),
        }
        for row in rows
    ]
    summary += [
        {
            "metric": f"samples vs held-out Jacksboro tiles: {name}",
            "value": model["realism"]["samples"][name],
            "unit": "",
            "baseline": model["realism"]["fractal_noise"][name],
            "ratio": ratio,
            "target": f"below fractal noise (ratio < 1); real Jacksboro west tiles: {real_west[name]:.4f}",
        }
        for name, ratio in ratios.items()
    ]
    summary += [
        {
            "metric": f"tiles of the grown strips (conditioned on the DEM's edge) vs held-out Jacksboro tiles: {name}",
            "value": strips_realism[name],
            "unit": "",
            "baseline": model["realism"]["fractal_noise"][name],
            "ratio": ratio,
            "target": "diagnostic, not the samples target: below fractal noise (ratio < 1)",
        }
        for name, ratio in strips_ratio.items()
    ]
    if validation is not None:
        summary += [
            {
                "metric": f"samples vs held-out validation blocks of Jacksboro west: {name}",
                "value": validation["samples"][name],
                "unit": "",
                "baseline": validation["fractal_noise"][name],
                "ratio": ratio,
                "target": "below fractal noise (ratio < 1)",
            }
            for name, ratio in validation["ratio_to_fractal_noise"].items()
        ]
    result = {
        "benchmark": "bench_terrain_continuation",
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, {platform.system()}",
        "torch": torch.__version__,
        "torch_threads": args.threads,
        "load_average_1m": {"start": load_before, "end": os.getloadavg()[0]},
        "quick": args.quick,
        "model": model["model"],
        "dem": "jacksboro east (held out)",
        "pixel_size_m": pixel_size,
        "amount_px": args.amount,
        "rows": rows,
        "realism_ratio_to_fractal_noise": ratios,
        "realism": model["realism"],
        "realism_real_west_tiles": real_west,
        "realism_strip_tiles": {"tiles": len(strip_tiles), "distances": strips_realism, "ratio": strips_ratio},
        "realism_validation_blocks": validation,
        "codebook": model["codebook"],
        "continuation": model["continuation"],
        "mirror": mirror,
        "one_scale": one_scale,
        "no_drain": undrained,
        "real_ring_px": REAL_RING,
        "real": real,
        "model_inner": model_inner,
        "summary": summary,
        "wall_seconds": time.perf_counter() - start,
    }
    write_json(args.out, result)
    columns = ("model", "no drain", "1 scale", "mirror", "real", "model,in")
    print(f"{'measure':<24} " + " ".join(f"{column:>8}" for column in columns) + "  target")
    for row in rows:
        low, high = row["target"]
        bound = f">= {low}" if high is None else f"<= {high}" if low is None else f"{low}..{high}"
        single = "" if row["one_scale"] is None else f"{row['one_scale']:.3f}"
        kept = "" if row["no_drain"] is None else f"{row['no_drain']:.3f}"
        mark = "met" if row["met"] else "MISSED"
        print(
            f"{row['measure']:<24} {row['model']:>8.3f} {kept:>8} {single:>8} {row['mirror']:>8.3f} "
            f"{row['real']:>8.3f} {row['model_inner']:>8.3f}  {bound} {mark}"
        )
    print(f"real: the DEM's own outer {REAL_RING} px continuing its inner part; model,in: the model growing that part")
    text = " / ".join(f"{value:.2f}" for value in ratios.values())
    print(f"samples vs fractal noise (elevation / slope / spectrum / curvature, < 1): {text}")
    realism = model["realism"]
    text = " / ".join(f"{value:.2f}" for value in strips_ratio.values())
    print(f"tiles of the grown strips ({len(strip_tiles)}) vs fractal noise: {text}")
    for label, values in (("samples", realism["samples"]), ("fractal noise", realism["fractal_noise"])):
        print(f"  {label + ' vs east:':<28} " + " / ".join(f"{value:.3f}" for value in values.values()))
    print(f"  {'real west tiles vs east:':<28} " + " / ".join(f"{value:.3f}" for value in real_west.values()))
    if validation is not None:
        text = " / ".join(f"{value:.2f}" for value in validation["ratio_to_fractal_noise"].values())
        print(f"samples vs the recipe's held-out Jacksboro west blocks ({validation['n_tiles']} tiles) / noise: {text}")
    print(f"load average (1 min) {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
