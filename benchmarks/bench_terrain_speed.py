"""Terrain speed and memory: MaskGIT decoding against one-token-at-a-time decoding, training throughput, and a
large world written window by window.

- decoding (tokens/s): MaskGIT's iterative decoding (10 steps) of fully masked token grids against decoding the
  same grids one token per forward pass with the same network, at the tiny recipe's 8 x 8 window and at the
  16 x 16 window of the reference recipe; target: >= 20x (a grid of N tokens takes 10 passes instead of N, so
  the 8 x 8 window can reach at most 6.4x);
- training (tokens/s for MaskGIT, pixels/s for the tokenizer with its discriminator on) of the tiny recipes;
- world: ``landformer terrain world --size 4096`` (``--quick``: 512) in a child process; its peak resident
  memory (target: under 2 GB) and wall time;
- expand: ``landformer terrain expand --right 16 --down 16`` of a small (1024 px) and a large (8192 px; ``--quick``:
  256 and 1024) DEM GeoTIFF, each in a child process; its peak resident memory should not grow with the map
  (the DEM is read and the output written window by window; only the edge bands are held).

The trained tiny models are used when ``--maskgit`` points at a run folder; otherwise untrained models of the
same size (speed and memory do not depend on the weights) are exported to a temporary folder.
Writes ``benchmarks/results/bench_terrain_speed.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch

from landformer.core.io import write_json
from landformer.terrain.export import LoadedTokenizer, load, save
from landformer.terrain.model import (
    MaskGIT,
    MaskGITModelConfig,
    TokenizerModelConfig,
    VQTokenizer,
    decode,
    decode_one_by_one,
)
from landformer.terrain.task import MaskGITTask, TokenizerTask

# LANDFORMER_BENCH_RESULTS: where `run_all.py --quick` sends smoke results, away from the committed ones.
RESULTS = Path(os.environ.get("LANDFORMER_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
SAMPLING = {"steps": 10, "temperature": 1.0, "choice_temperature": 4.5, "bf16": True}
SUMMARY = {"tile_size": 32, "pixel_size_m": 30.0, "median_offset_m": 500.0, "median_scale_m": 50.0}


def timed(run: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of ``repeats`` runs after one warm-up run (the least disturbed by other processes)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def untrained_models(folder: Path) -> Path:
    """Tiny-recipe-sized tokenizer and MaskGIT exports with random weights."""
    torch.manual_seed(0)
    tokenizer = save(folder / "tokenizer", VQTokenizer(TokenizerModelConfig(channels=16)), SUMMARY)
    maskgit = MaskGIT(MaskGITModelConfig(vocab_size=512, grid=8))
    return save(folder / "maskgit", maskgit, LoadedTokenizer.load(tokenizer), 4, SAMPLING, SUMMARY, None)


def bench_decoding(model: MaskGIT, grid: int, batch: int, steps: int, repeats: int) -> dict[str, float]:
    tokens = torch.zeros(batch, grid, grid, dtype=torch.long)
    known = torch.zeros_like(tokens, dtype=torch.bool)
    n_tokens = batch * grid * grid
    rates = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        seconds = timed(lambda bf16=bf16: decode(model, tokens, known, steps, torch.Generator(), bf16=bf16), repeats)
        rates[f"maskgit_{name}_tokens_per_s"] = n_tokens / seconds
    one_by_one = timed(lambda: decode_one_by_one(model, tokens, known, torch.Generator()), max(1, repeats // 2))
    rates["one_by_one_fp32_tokens_per_s"] = n_tokens / one_by_one
    rates["speedup_fp32"] = rates["maskgit_fp32_tokens_per_s"] / rates["one_by_one_fp32_tokens_per_s"]
    return rates


def bench_training(batch: int, steps: int) -> dict[str, float]:
    """Optimiser steps of the tiny recipes' networks on random data (the cost does not depend on the data)."""
    torch.manual_seed(0)
    maskgit = MaskGITTask(vocab_size=512, grid=8, tile=4)
    optimizer = torch.optim.AdamW(maskgit.parameters(), lr=1e-4)
    tokens = torch.randint(0, 512, (batch, 8, 8))

    def maskgit_step() -> None:
        maskgit.compute_loss({"tokens": tokens})["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()

    maskgit_seconds = timed(lambda: [maskgit_step() for _ in range(steps)], 1) / steps
    tokenizer = TokenizerTask(channels=16, disc_channels=16, disc_start=0)
    tokenizer.d_loss_ema.fill_(0.5)  # discriminator in force: the adaptive weight is computed every step
    optimizers = [
        torch.optim.AdamW(tokenizer.model.parameters()),
        torch.optim.AdamW(tokenizer.discriminator.parameters()),
    ]
    batch_data = {"elevation": torch.randn(batch, 1, 32, 32), "scale": torch.ones(batch), "offset": torch.zeros(batch)}

    def tokenizer_step() -> None:
        from landformer.terrain.model import adaptive_weight, hinge_d_loss

        losses = tokenizer.compute_loss(batch_data)
        x, reconstruction, _ = tokenizer._last_outputs
        g_loss = -tokenizer.discriminator(reconstruction).mean()
        weight = adaptive_weight(losses["reconstruction"], g_loss, tokenizer.model.last_layer)
        (losses["loss"] + 0.1 * weight * g_loss).backward()
        optimizers[0].step()
        d_loss = hinge_d_loss(tokenizer.discriminator(x), tokenizer.discriminator(reconstruction.detach()))
        optimizers[1].zero_grad()
        d_loss.backward()
        optimizers[1].step()
        for optimizer in optimizers:
            optimizer.zero_grad()

    tokenizer_seconds = timed(lambda: [tokenizer_step() for _ in range(steps)], 1) / steps
    return {
        "maskgit_tokens_per_s": batch * 64 / maskgit_seconds,
        "maskgit_seconds_per_step": maskgit_seconds,
        "tokenizer_pixels_per_s": batch * 32 * 32 / tokenizer_seconds,
        "tokenizer_seconds_per_step": tokenizer_seconds,
        "batch": batch,
    }


# The child's own peak RSS (KiB) from Linux's VmHWM. getrusage's ru_maxrss is no use here: RUSAGE_CHILDREN gives
# the largest child so far, and a child's RUSAGE_SELF starts from the parent's RSS at fork (kept across exec).
PEAK_RSS_KIB = "[line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0]"


def child_peak_rss(script: str, *arguments: str) -> tuple[float, float]:
    """Run ``script`` (which prints its own peak RSS in KiB last) in a child process; (seconds, peak MB)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, *arguments], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return seconds, int(done.stdout.strip().splitlines()[-1]) / 1024


def bench_world(maskgit: Path, size: int, threads: int, out: Path) -> dict[str, float]:
    """Write a world in a child process that reports its own peak RSS."""
    script = (
        "import sys, torch; torch.set_num_threads(int(sys.argv[4]));"
        "from landformer.terrain.export import load;"
        "from landformer.terrain.outpaint import write_world;"
        "write_world(load(sys.argv[1]), sys.argv[2], int(sys.argv[3]), seed=0);"
        f"print({PEAK_RSS_KIB})"
    )
    seconds, peak_mb = child_peak_rss(script, str(maskgit), str(out), str(size), str(threads))
    return {"size": size, "seconds": seconds, "peak_rss_mb": peak_mb, "pixels_per_s": size * size / seconds}


def write_test_dem(path: Path, size: int, block: int = 1024) -> Path:
    """A ``size`` x ``size`` float32 DEM of smooth hills plus noise, written window by window (never whole)."""
    import numpy as np
    from rasterio.transform import Affine

    from landformer.core.raster import geotiff_writer, iter_windows

    rng = np.random.default_rng(0)
    transform = Affine(30.0, 0.0, 500_000.0, 0.0, -30.0, 4_000_000.0)
    with geotiff_writer(path, size, size, 1, "float32", transform, "EPSG:32617", -9999.0) as dst:
        for window in iter_windows(size, size, block):
            rows, cols = np.mgrid[
                window.row_off : window.row_off + window.height, window.col_off : window.col_off + window.width
            ]
            z = 800.0 + 60.0 * np.sin(rows / 23.0) * np.cos(cols / 17.0) + 20.0 * np.sin((rows + cols) / 7.0)
            dst.write((z + rng.normal(0.0, 2.0, z.shape)).astype(np.float32)[None], window=window)
    return path


def bench_expand(maskgit: Path, size: int, threads: int, scratch: Path) -> dict[str, float]:
    """Expand a ``size`` px DEM by 16 px right and down in a child process that reports its own peak RSS."""
    dem = write_test_dem(scratch / f"dem_{size}.tif", size)
    script = (
        "import sys, torch; torch.set_num_threads(int(sys.argv[4]));"
        "from landformer.terrain.export import load;"
        "from landformer.terrain.outpaint import expand_map;"
        "expand_map(load(sys.argv[1]), sys.argv[2], sys.argv[3], {'right': 16, 'down': 16}, seed=0);"
        f"print({PEAK_RSS_KIB})"
    )
    seconds, peak_mb = child_peak_rss(script, str(maskgit), str(dem), str(scratch / f"grown_{size}.tif"), str(threads))
    for name in (f"dem_{size}.tif", f"grown_{size}.tif"):
        (scratch / name).unlink()
    return {"size": size, "seconds": seconds, "peak_rss_mb": peak_mb}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--maskgit", type=Path, default=None, help="trained generator run folder (else untrained)")
    parser.add_argument("--world-size", type=int, default=4096, help="side of the world in pixels")
    parser.add_argument("--skip-world", action="store_true", help="leave out the large world")
    parser.add_argument(
        "--expand-sizes", type=int, nargs=2, default=[1024, 8192], metavar=("SMALL", "LARGE"), help="DEM sides (px)"
    )
    parser.add_argument("--skip-expand", action="store_true", help="leave out the expansion memory measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of MaskGIT decoding (fastest kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest here under load)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_terrain_speed.json", help="JSON output")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.world_size, args.repeats, args.expand_sizes = 512, 1, [256, 1024]
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        maskgit_path = args.maskgit if args.maskgit is not None else untrained_models(Path(scratch))
        generator = load(maskgit_path)
        model = generator.maskgit
        decoding = {
            "window_8": bench_decoding(model, 8, 1 if args.quick else 16, 10, args.repeats),
            "window_16": bench_decoding(model, 16, 1 if args.quick else 4, 10, args.repeats),
        }
        training = bench_training(8 if args.quick else 32, 2 if args.quick else 5)
        expand = None
        if not args.skip_expand:
            small, large = (bench_expand(maskgit_path, size, args.threads, Path(scratch)) for size in args.expand_sizes)
            expand = {"small": small, "large": large, "rss_ratio": large["peak_rss_mb"] / small["peak_rss_mb"]}
        world = None
        if not args.skip_world:
            world = bench_world(maskgit_path, args.world_size, args.threads, Path(scratch) / "world.tif")
    summary = [
        {
            "metric": f"MaskGIT decoding, {grid} x {grid} tokens, 10 steps (fp32)",
            "value": decoding[f"window_{grid}"]["maskgit_fp32_tokens_per_s"],
            "unit": "tokens/s",
            "baseline": decoding[f"window_{grid}"]["one_by_one_fp32_tokens_per_s"],
            "ratio": decoding[f"window_{grid}"]["speedup_fp32"],
            "target": ">= 20x one token per pass" if grid == 16 else f"at most {grid * grid / 10:.1f}x possible",
        }
        for grid in (16, 8)
    ]
    summary.append(
        {
            "metric": "MaskGIT decoding, 8 x 8 tokens, bf16 autocast vs fp32",
            "value": decoding["window_8"]["maskgit_bf16_tokens_per_s"],
            "unit": "tokens/s",
            "baseline": decoding["window_8"]["maskgit_fp32_tokens_per_s"],
            "ratio": decoding["window_8"]["maskgit_bf16_tokens_per_s"]
            / decoding["window_8"]["maskgit_fp32_tokens_per_s"],
            "target": "",
        }
    )
    summary += [
        {
            "metric": "MaskGIT training (tiny recipe)",
            "value": training["maskgit_tokens_per_s"],
            "unit": "tokens/s",
            "baseline": None,
            "ratio": None,
            "target": "",
        },
        {
            "metric": "tokenizer training with discriminator (tiny recipe)",
            "value": training["tokenizer_pixels_per_s"],
            "unit": "pixels/s",
            "baseline": None,
            "ratio": None,
            "target": "",
        },
    ]
    if expand is not None:
        small, large = expand["small"], expand["large"]
        summary.append(
            {
                "metric": f"expand {large['size']} px DEM by 16 px right+down, peak RSS vs {small['size']} px",
                "value": large["peak_rss_mb"],
                "unit": "MB",
                "baseline": small["peak_rss_mb"],
                "ratio": expand["rss_ratio"],
                "target": f"does not grow with the map ({(large['size'] / small['size']) ** 2:.0f}x the pixels)",
            }
        )
    if world is not None:
        summary += [
            {
                "metric": f"world {world['size']} x {world['size']} px, peak RSS",
                "value": world["peak_rss_mb"],
                "unit": "MB",
                "baseline": 2048.0,
                "ratio": world["peak_rss_mb"] / 2048.0,
                "target": "< 2 GB (ratio < 1)",
            },
            {
                "metric": f"world {world['size']} x {world['size']} px, wall time",
                "value": world["seconds"],
                "unit": "s",
                "baseline": None,
                "ratio": None,
                "target": "",
            },
        ]
    result = {
        "benchmark": "bench_terrain_speed",
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, {platform.system()}",
        "torch_threads": args.threads,
        "load_average_1m": {"start": load_before, "end": os.getloadavg()[0]},
        "torch": torch.__version__,
        "quick": args.quick,
        "trained_models": args.maskgit is not None,
        "maskgit_parameters": sum(p.numel() for p in model.parameters()),
        "decoding": decoding,
        "training": training,
        "expand": expand,
        "world": world,
        "summary": summary,
        "wall_seconds": time.perf_counter() - t0,
    }
    write_json(args.out, result)
    print(f"{'metric':<62} {'value':>10} {'unit':<9} {'baseline':>10} {'ratio':>8}")
    for row in summary:
        baseline = "" if row["baseline"] is None else f"{row['baseline']:.2f}"
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        print(f"{row['metric']:<62} {row['value']:>10.2f} {row['unit']:<9} {baseline:>10} {ratio:>8}")
    print(f"load average (1 min) {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
