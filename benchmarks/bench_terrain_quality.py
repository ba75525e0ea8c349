"""Terrain realism and seams: MaskGIT samples against held-out DEM tiles, next to two baselines.

Realism (``terrain/metrics.py``; tiles standardised one by one, 0 = identical distributions): distances of
elevation and slope histograms (1-Wasserstein), of radially averaged power spectra (mean |log10 ratio|) and of
curvature (1-Wasserstein of Laplacians) between held-out tiles and

- MaskGIT samples (the model),
- fractal noise: Gaussian fields with the power-law spectrum fitted to the held-out tiles (the classic baseline),
- the tokenizer's reconstructions of the held-out tiles (the upper bound the generator can reach),
- the other half of the held-out tiles (the noise floor of the distances themselves).

Seams: a world written by the endless field (tiles of 16 px), and squares of it grown on all four sides by
``expand``: mean |dz| across tile borders (expansion seams) against the interior (other token borders);
target within 10% (ratio 0.9 .. 1.1).

Tile grid: the world's power at the frequencies of a 16 px (one tile) and 32 px (the four decoding phases)
lattice over the power right beside them (``lattice_contrast``); about 1 without a visible grid, next to the
same number for a fractal-noise map of the world's size.

Uses the generator named by ``--maskgit`` (default: the packaged ``real`` model; a run folder compares with its own
validation tiles, the packaged model with the held-out east part of Jacksboro, at its pixel size); with ``--train``
the tiny recipes are trained first (``--quick``: a few dozen steps, a smoke run).
Writes ``benchmarks/results/bench_terrain_quality.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from landformer.core.io import write_json
from landformer.terrain.data import load_val_tiles, normalize_tiles
from landformer.terrain.export import load
from landformer.terrain.metrics import (
    fractal_noise,
    lattice_contrast,
    realism_distances,
    seam_profile,
    seam_statistics,
    spectral_exponent,
)
from landformer.terrain.outpaint import ConstantCondition, TerrainField, decode_block, expand_array
from landformer.terrain.sample import sample_tiles

# LANDFORMER_BENCH_RESULTS: where `run_all.py --quick` sends smoke results, away from the committed ones.
RESULTS = Path(os.environ.get("LANDFORMER_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
REPO = Path(__file__).resolve().parent.parent


def train_models(folder: Path, quick: bool) -> tuple[Path, Path]:
    """Train both tiny recipes into ``folder`` (quick: 40 steps each)."""
    from landformer.core.config import load_config
    from landformer.terrain.config import MaskGITConfig, TokenizerConfig
    from landformer.terrain.train import train

    steps = ["train.max_steps=40", "task.disc_start=20", "train.val_every_steps=20"] if quick else []
    common = ["train.progress_bar=false"]
    config = load_config(TokenizerConfig, REPO / "configs/terrain_tokenizer_tiny.yaml", [*steps, *common])
    train(config, folder / "tokenizer")
    steps = [step for step in steps if not step.startswith("task.")]
    overrides = [*steps, *common, f"tokenizer={folder / 'tokenizer'}"]
    train(load_config(MaskGITConfig, REPO / "configs/terrain_maskgit_tiny.yaml", overrides), folder / "maskgit")
    return folder / "tokenizer", folder / "maskgit"


def held_out_tiles(generator: object, model: str | Path, scratch: Path) -> np.ndarray:
    """The run's validation tiles, or (for a packaged model, which ships none) Jacksboro east's tiles."""
    if (Path(model) / "val_tiles.npz").is_file():
        return load_val_tiles(model)[0]
    from landformer.synth.packaged import jacksboro_dem
    from landformer.terrain.evaluate import dem_tiles, read_dem

    east, _ = read_dem(jacksboro_dem(scratch / "east.tif", "east"))
    tile = generator.grid * generator.downsample
    return dem_tiles(east, tile, tile // 4)


def sample_standardised(generator: object, count: int, seed: int, batch: int = 64) -> np.ndarray:
    tiles = []
    for start in range(0, count, batch):
        tiles.append(sample_tiles(generator, min(batch, count - start), seed + start))  # told the scale class
    return np.concatenate(tiles)


def expansion_seams(generator: object, world: np.ndarray, crop: int, seed: int) -> dict[str, float]:
    """Cut the world into ``crop``-pixel squares, grow each by a quarter of its side on all four sides, and
    compare the mean |dz| across the four seams with the mean at the other token borders within 16 px.

    One seam is a few hundred pixels long, and relief varies enough along a map that its mean alone is noisy;
    pooling every seam of every square gives a stable ratio.
    """
    f = generator.downsample
    grow = crop // 4
    seam, nearby = [], []
    for index, (top, left) in enumerate(
        (top, left)
        for top in range(0, world.shape[0] - crop + 1, crop)
        for left in range(0, world.shape[1] - crop + 1, crop)
    ):
        square = world[top : top + crop, left : left + crop].astype(np.float32)
        sides = {"right": grow, "left": grow, "up": grow, "down": grow}
        grown = expand_array(generator, square, sides, seed=seed + index)
        rows, columns = grown[grow:-grow], grown[:, grow:-grow].T
        for picture, column in ((rows, grow), (rows, grow + crop), (columns, grow), (columns, grow + crop)):
            profile = seam_profile(picture, column, width=16, period=f)
            seam.append(profile["seam_mean_abs_step"])
            nearby.append(profile["nearby_mean_abs_step"])
    return {
        "seams": len(seam),
        "seam_mean_abs_step": float(np.mean(seam)),
        "nearby_mean_abs_step": float(np.mean(nearby)),
        "ratio": float(np.mean(seam) / np.mean(nearby)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (and few training steps with --train)")
    parser.add_argument("--train", action="store_true", help="train the tiny recipes first (in a temporary folder)")
    parser.add_argument("--maskgit", default="real", help="generator run folder or packaged model name")
    parser.add_argument("--samples", type=int, default=512, help="samples (and at most this many held-out tiles)")
    parser.add_argument("--world-size", type=int, default=512, help="side of the world used for the seam statistics")
    parser.add_argument("--crop", type=int, default=128, help="side of the world squares grown for the seam test")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of samples, noise and world")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_terrain_quality.json", help="JSON output")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.samples, args.world_size, args.crop = 64, 128, 64
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        maskgit_path = train_models(Path(scratch), args.quick)[1] if args.train else args.maskgit
        generator = load(maskgit_path)
        held_out = held_out_tiles(generator, maskgit_path, Path(scratch))
        rng = np.random.default_rng(args.seed)
        held_out = held_out[rng.permutation(len(held_out))[: args.samples]]
        half = len(held_out) // 2
        normalized, _, _ = normalize_tiles(held_out, "held-out tiles")
        reconstructions = generator.tokenizer.decode(generator.tokenizer.encode(normalized))
        samples = sample_standardised(generator, args.samples, args.seed)
        beta = spectral_exponent(held_out)
        noise = fractal_noise(args.samples, held_out.shape[-1], beta, args.seed)
        realism = {
            "samples": realism_distances(samples, held_out),
            "fractal_noise": realism_distances(noise, held_out),
            "reconstructions": realism_distances(reconstructions, held_out),
            "held_out_halves": realism_distances(held_out[:half], held_out[half:]),
        }

        f, tile = generator.downsample, generator.tile
        scale = generator.scale_class()
        field = TerrainField(generator, args.seed, condition=None if scale is None else ConstantCondition(scale))
        world_tokens = args.world_size // f
        world = decode_block(generator, field, 0, 0, world_tokens, world_tokens)
        seams = seam_statistics(world, period=tile * f, token=f)
        noise_world = fractal_noise(1, world.shape[0], beta, args.seed)[0]
        lattice = {
            f"{period}px": {
                "world": lattice_contrast(world, period),
                "fractal_noise": lattice_contrast(noise_world, period),
            }
            for period in (tile * f, 2 * tile * f)
        }
        expand_seam = expansion_seams(generator, world, args.crop, args.seed)

    names = {
        "elevation_w1": "elevation histogram W1",
        "slope_w1": "slope histogram W1",
        "spectrum_log10": "radial power spectrum |log10 ratio|",
        "curvature_w1": "curvature (Laplacian) W1",
    }
    summary = []
    for key, label in names.items():
        value, fractal = realism["samples"][key], realism["fractal_noise"][key]
        summary.append(
            {
                "metric": f"samples vs held-out: {label}",
                "value": value,
                "unit": "",
                "baseline": fractal,
                "ratio": value / fractal if fractal else None,
                "target": "below the fractal-noise baseline (ratio < 1)",
            }
        )
    for key, label in names.items():
        summary.append(
            {
                "metric": f"reconstructions vs held-out (upper bound): {label}",
                "value": realism["reconstructions"][key],
                "unit": "",
                "baseline": realism["held_out_halves"][key],
                "ratio": None,
                "target": "baseline: held-out half vs half (noise floor)",
            }
        )
    summary += [
        {
            "metric": "world tile borders: mean |dz| vs interior",
            "value": seams["border_mean_abs_step"],
            "unit": "normalised",
            "baseline": seams["interior_mean_abs_step"],
            "ratio": seams["ratio_all"],
            "target": "ratio within 0.9 .. 1.1",
        },
        {
            "metric": "world tile borders: mean |dz| vs other token borders",
            "value": seams["border_mean_abs_step"],
            "unit": "normalised",
            "baseline": seams["token_border_mean_abs_step"],
            "ratio": seams["ratio_token_borders"],
            "target": "ratio within 0.9 .. 1.1",
        },
        {
            "metric": f"expansion seams ({expand_seam['seams']}): mean |dz| vs token borders within 16 px",
            "value": expand_seam["seam_mean_abs_step"],
            "unit": "normalised",
            "baseline": expand_seam["nearby_mean_abs_step"],
            "ratio": expand_seam["ratio"],
            "target": "ratio within 0.9 .. 1.1",
        },
    ]
    summary += [
        {
            "metric": f"world tile grid: power at the {period} lattice vs beside it",
            "value": values["world"],
            "unit": "",
            "baseline": values["fractal_noise"],
            "ratio": None,
            "target": "about 1, as for fractal noise (no visible grid)",
        }
        for period, values in lattice.items()
    ]
    result = {
        "benchmark": "bench_terrain_quality",
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, {platform.system()}",
        "torch_threads": args.threads,
        "load_average_1m": {"start": load_before, "end": os.getloadavg()[0]},
        "torch": torch.__version__,
        "quick": args.quick,
        "models": {"maskgit": str(maskgit_path), "tokenizer_identity": generator.tokenizer.identity},
        "n_samples": len(samples),
        "n_held_out": len(held_out),
        "fractal_beta": beta,
        "realism": realism,
        "world_seams": seams,
        "world_lattice": lattice,
        "expand_seam": expand_seam,
        "summary": summary,
        "wall_seconds": time.perf_counter() - t0,
    }
    write_json(args.out, result)
    print(f"{'metric':<70} {'value':>9} {'baseline':>9} {'ratio':>7}")
    for row in summary:
        baseline = "" if row["baseline"] is None else f"{row['baseline']:.4f}"
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
        print(f"{row['metric']:<70} {row['value']:>9.4f} {baseline:>9} {ratio:>7}")
    print(f"load average (1 min) {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
