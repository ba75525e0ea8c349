"""Land-cover RandAR decoding and training speed, each against its baseline measured in the same run.

An untrained tiny-preset model (16 classes, 16x16 chips, 4 layers, dim 64) is enough for speed: the cost of a
decoding step does not depend on the weights. Sample realism at equal speed needs a trained model and is
evaluated with the landcover pipeline's evaluation, not here.

- sampling (samples/s): KV-cached sequential (one cell per step), parallel decoding in 32, 16, 8 steps (cosine
  schedule; the query instructions of a step stay in the cache), parallel decoding in 16 steps that re-runs those
  instructions when it commits their classes (about 3 instead of 2 token passes per cell), and the naive
  baseline that re-encodes the whole decoded prefix at every step;
  targets: parallel >= 3x sequential, sequential >= 10x naive;
- Gibbs (site updates/s): blocked, batched chains through the KV cache against the naive chain that spends one
  full forward pass per site update (one chain, and also the same number of chains batched);
  target: >= 10x the naive single chain;
- training (pixel tokens/s) of the tiny preset in fp32 and under bf16 autocast.

Writes ``benchmarks/results/bench_landcover_decoding.json`` (atomically) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch

from landformer.core.io import write_json
from landformer.landcover import decoding
from landformer.landcover.config import tiny_config
from landformer.landcover.model import LandCoverConfig, LandCoverRandAR

# LANDFORMER_BENCH_RESULTS: where `run_all.py --quick` sends smoke results, away from the committed ones.
RESULTS = Path(os.environ.get("LANDFORMER_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
N_CLASSES = 16


def timed(run: Callable[[], object], repeats: int, warm_up: bool = True) -> float:
    """Fastest wall time of ``repeats`` runs (after one warm-up run): the least disturbed by other processes."""
    if warm_up:
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_sampling(model: LandCoverRandAR, batch: int, repeats: int, device: torch.device) -> dict[str, dict]:
    def run(**kwargs: object) -> Callable[[], None]:
        def go() -> None:
            generator = torch.Generator(device=device).manual_seed(0)
            decoding.sample(model, batch, generator=generator, **kwargs)
            sync(device)

        return go

    def naive() -> None:
        decoding.sample_naive(model, batch, generator=torch.Generator(device=device).manual_seed(0))
        sync(device)

    seconds = {
        "sequential_kv_cache": timed(run(steps=None), repeats),
        "parallel_32_steps": timed(run(steps=32), repeats),
        "parallel_16_steps": timed(run(steps=16), repeats),
        "parallel_16_steps_rerun_queries": timed(run(steps=16, reuse_queries=False), repeats),
        "parallel_8_steps": timed(run(steps=8), repeats),
        "naive_reencode": timed(naive, 1, warm_up=False),
    }
    return {name: {"seconds": s, "samples_per_s": batch / s} for name, s in seconds.items()}


def bench_gibbs(
    model: LandCoverRandAR, chains: int, block: int, size: int, repeats: int, device: torch.device
) -> dict[str, dict]:
    n_cells = size * size
    start = torch.randint(0, N_CLASSES, (chains, size, size), generator=torch.Generator().manual_seed(0))

    def blocked(block_size: int, n_chains: int) -> Callable[[], None]:
        def go() -> None:
            generator = torch.Generator(device=device).manual_seed(0)
            for _ in decoding.gibbs(model, start[:n_chains], 1, block_size=block_size, generator=generator):
                sync(device)

        return go

    def naive(n_chains: int) -> Callable[[], None]:
        def go() -> None:
            generator = torch.Generator(device=device).manual_seed(0)
            for _ in decoding.gibbs_naive(model, start[:n_chains], 1, generator=generator):
                sync(device)

        return go

    runs = {
        f"blocked_{block}_batched_{chains}": (timed(blocked(block, chains), repeats), chains),
        f"blocked_{2 * block}_batched_{chains}": (timed(blocked(2 * block, chains), repeats), chains),
        f"single_site_batched_{chains}": (timed(blocked(1, chains), 1, warm_up=False), chains),
        "naive_single_chain": (timed(naive(1), 1, warm_up=False), 1),
        f"naive_batched_{chains}": (timed(naive(chains), 1, warm_up=False), chains),
    }
    return {
        name: {"seconds_per_sweep": s, "chains": c, "site_updates_per_s": c * n_cells / s}
        for name, (s, c) in runs.items()
    }


def training_rate(config: LandCoverConfig, batch: int, steps: int, device: torch.device, bf16: bool) -> dict:
    """Seconds per AdamW step and pixel tokens per second, after one warm-up step."""
    torch.manual_seed(0)
    model = LandCoverRandAR(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    labels = torch.randint(0, config.n_classes, (batch, config.chip_size, config.chip_size), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    return {"seconds_per_step": seconds, "tokens_per_s": batch * config.chip_size**2 / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8x8 chips and small batches: a smoke run")
    parser.add_argument("--batch", type=int, default=16, help="samples decoded at once")
    parser.add_argument("--chains", type=int, default=16, help="Gibbs chains run at once")
    parser.add_argument("--block", type=int, default=16, help="Gibbs block size (cells redrawn jointly)")
    parser.add_argument("--train-batch", type=int, default=16, help="chips per training step")
    parser.add_argument("--train-steps", type=int, default=5, help="timed training steps per precision")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the fast decoders (fastest kept)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these small kernels here)"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_landcover_decoding.json", help="JSON output")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = tiny_config(N_CLASSES)
    if args.quick:
        config.chip_size = 8
        args.batch, args.chains, args.block, args.train_batch, args.train_steps, args.repeats = 4, 4, 8, 4, 2, 1
    torch.manual_seed(0)
    model = LandCoverRandAR(config).to(device).eval()

    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    sampling = bench_sampling(model, args.batch, args.repeats, device)
    gibbs = bench_gibbs(model, args.chains, args.block, config.chip_size, args.repeats, device)
    training = {
        precision: training_rate(config, args.train_batch, args.train_steps, device, bf16=precision == "bf16")
        for precision in ("fp32", "bf16")
    }

    sequential = sampling["sequential_kv_cache"]["samples_per_s"]
    naive_sampling = sampling["naive_reencode"]["samples_per_s"]
    blocked_name = f"blocked_{args.block}_batched_{args.chains}"
    blocked_rate = gibbs[blocked_name]["site_updates_per_s"]
    naive_chain = gibbs["naive_single_chain"]["site_updates_per_s"]
    naive_batched = gibbs[f"naive_batched_{args.chains}"]["site_updates_per_s"]
    summary = [
        {
            "metric": f"parallel decoding, {steps} steps",
            "value": sampling[f"parallel_{steps}_steps"]["samples_per_s"],
            "unit": "samples/s",
            "baseline": sequential,
            "ratio": sampling[f"parallel_{steps}_steps"]["samples_per_s"] / sequential,
            "target": ">= 3x KV-cached sequential (at equal realism: checked with a trained model)",
        }
        for steps in (32, 16, 8)
    ]
    summary.append(
        {
            "metric": "parallel decoding, 16 steps: query instructions kept in the cache vs re-run on commit",
            "value": sampling["parallel_16_steps"]["samples_per_s"],
            "unit": "samples/s",
            "baseline": sampling["parallel_16_steps_rerun_queries"]["samples_per_s"],
            "ratio": sampling["parallel_16_steps"]["samples_per_s"]
            / sampling["parallel_16_steps_rerun_queries"]["samples_per_s"],
            "target": "> 1 (2 instead of about 3 token passes per cell)",
        }
    )
    summary += [
        {
            "metric": "KV-cached sequential decoding",
            "value": sequential,
            "unit": "samples/s",
            "baseline": naive_sampling,
            "ratio": sequential / naive_sampling,
            "target": ">= 10x re-encoding the prefix",
        },
    ]
    summary += [
        {
            "metric": f"Gibbs, {name.replace('_', ' ')}",
            "value": gibbs[name]["site_updates_per_s"],
            "unit": "site updates/s",
            "baseline": naive_chain,
            "ratio": gibbs[name]["site_updates_per_s"] / naive_chain,
            "target": ">= 10x naive one-site-one-forward chain" if name == blocked_name else "",
        }
        for name in (
            blocked_name,
            f"blocked_{2 * args.block}_batched_{args.chains}",
            f"single_site_batched_{args.chains}",
        )
    ]
    summary += [
        {
            "metric": f"Gibbs, {blocked_name.replace('_', ' ')} vs naive with {args.chains} chains batched",
            "value": blocked_rate,
            "unit": "site updates/s",
            "baseline": naive_batched,
            "ratio": blocked_rate / naive_batched,
            "target": "",
        },
        {
            "metric": "training, bf16 autocast vs fp32",
            "value": training["bf16"]["tokens_per_s"],
            "unit": "pixel tokens/s",
            "baseline": training["fp32"]["tokens_per_s"],
            "ratio": training["bf16"]["tokens_per_s"] / training["fp32"]["tokens_per_s"],
            "target": "",
        },
    ]
    result = {
        "benchmark": "bench_landcover_decoding",
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, {platform.system()}",
        "device": str(device),
        "torch_threads": args.threads,
        "load_average_1m": {"start": load_before, "end": os.getloadavg()[0]},
        "torch": torch.__version__,
        "quick": args.quick,
        "model": {
            "preset": "tiny",
            "n_classes": N_CLASSES,
            "chip_size": config.chip_size,
            "n_layers": config.n_layers,
            "dim": config.dim,
            "parameters": sum(p.numel() for p in model.parameters()),
            "trained": False,
        },
        "settings": {
            "batch": args.batch,
            "chains": args.chains,
            "block": args.block,
            "train_batch": args.train_batch,
            "train_steps": args.train_steps,
            "repeats": args.repeats,
        },
        "sampling": sampling,
        "gibbs": gibbs,
        "training": training,
        "summary": summary,
        "wall_seconds": time.perf_counter() - t0,
    }
    write_json(args.out, result)

    print(f"{'metric':<60} {'value':>10} {'unit':<15} {'baseline':>10} {'ratio':>8}")
    for row in summary:
        value, baseline, ratio = row["value"], row["baseline"], row["ratio"]
        print(f"{row['metric']:<60} {value:>10.2f} {row['unit']:<15} {baseline:>10.2f} {ratio:>7.2f}x")
    print(f"load average (1 min) {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
