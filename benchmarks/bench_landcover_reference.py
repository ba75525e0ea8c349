"""Land-cover RandAR at the reference scale, against the machine's own matmul limit measured in the same run.

The configuration of the original land-cover GPT work: 16 layers, 16 heads, dim 256, 16 classes, 32x32 chips
(about 13M parameters), random weights (the cost of a step does not depend on the weights). Measured:

- the limit: the best fp32 and bf16 throughput of 2048x2048 matmuls, at the start and at the end of the run;
- training (AdamW step, fp32 and bf16 autocast), and the peak RSS of a batch-64 step made of micro-batches
  (gradient accumulation, in a child process so the peak is that step's own);
- 32-step parallel sampling, sequential sampling (batched, and at batch 1), log-likelihood of one order (fp32 and
  bf16 autocast), Gibbs in its default mode (full sweeps), and inpainting one chip with 50 % of it known
  (sequential and 32 steps).

For each: CPU time per unit (see :func:`clock`), the model FLOPs it executed per second as a fraction of the
limit, and a baseline written here that re-encodes every decided cell at every step (no KV cache kept between
steps); the Gibbs baseline spends one full forward per site update. Where a baseline would run for many minutes,
the steps it would take are timed at evenly spread points of its schedule and summed by interpolation
(``estimated``).
Model FLOPs are counted at the transformer's input: 2 x the block parameters per token plus causal attention,
4 x dim per (query, key) pair and layer; one 32x32 chip forward is about 86 GFLOP, a training step three forwards.

Writes ``benchmarks/results/bench_landcover_reference.json`` and prints a table. ``--quick`` shrinks the model and
chip so the whole script runs in seconds (a smoke test of the code, not a measurement).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import Tensor

from landformer.core.io import write_json
from landformer.landcover import decoding
from landformer.landcover.config import reference_config
from landformer.landcover.model import LandCoverConfig, LandCoverRandAR

RESULTS = Path(os.environ.get("LANDFORMER_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
N_CLASSES = 16
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Micro-batches that keep a training step under 8 GiB (about 0.7 GiB of activations per 32x32 chip in bf16, 1 GiB
# in fp32).
MICRO_BATCH = {"fp32": 4, "bf16": 8}


def quick_config() -> LandCoverConfig:
    """A model small enough that every measurement below takes well under a second."""
    return LandCoverConfig(n_classes=N_CLASSES, chip_size=8, n_layers=2, n_heads=4, dim=64)


def clock() -> float:
    """CPU seconds of this process. On a machine shared with other work they count the time this process ran,
    not the time it waited for a core, so the operations and the limit are timed alike under any load (with T
    threads, the threads' seconds add up, for the limit as for the rest)."""
    return time.process_time()


# ------------------------------------------------------------------------------------------------ the limit


def matmul_gflops(dtype: torch.dtype, size: int, repeats: int) -> float:
    """Best throughput of ``repeats`` (size x size) @ (size x size) matmuls, after one warm-up."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = clock()
        a @ b
        best = min(best, clock() - start)
    return 2 * size**3 / best / 1e9


def read_gbps(megabytes: int, repeats: int) -> float:
    """Best memory read bandwidth (GB/s) of ``repeats`` sums over a float32 array far larger than the caches."""
    array = torch.ones(megabytes * 2**20 // 4)
    array.sum()
    best = math.inf
    for _ in range(repeats):
        start = clock()
        array.sum()
        best = min(best, clock() - start)
    return megabytes * 2**20 / best / 1e9


def machine_limits(quick: bool) -> dict[str, float]:
    """fp32 and bf16 matmul GFLOP/s and read GB/s, each the best of three tries."""
    size, megabytes = (256, 16) if quick else (2048, 256)
    limits = {name: matmul_gflops(dtype, size, 3) for name, dtype in DTYPES.items()}
    return limits | {"read_gbps": read_gbps(megabytes, 3)}


# --------------------------------------------------------------------------------------------- FLOP counting


def block_parameters(model: LandCoverRandAR) -> int:
    """Weights every token multiplies through in the transformer blocks (norm gains left out)."""
    return sum(p.numel() for p in model.transformer.blocks.parameters() if p.dim() == 2)


def chunk_flops(model: LandCoverRandAR, batch: int, length: int, cached: int) -> float:
    """FLOPs of ``length`` tokens after ``cached`` cached ones: linear layers plus causal attention."""
    config = model.config
    linear = 2 * block_parameters(model) * batch * length
    attended_pairs = batch * (length * cached + length * (length + 1) / 2)
    return linear + 4 * config.dim * config.n_layers * attended_pairs


def forward_flops(model: LandCoverRandAR, chips: int) -> float:
    """FLOPs of one teacher-forced forward over ``chips`` whole chips (start token, 2N - 1 tokens)."""
    return chunk_flops(model, chips, 2 * model.config.chip_size**2, 0)


def chunk_bytes(model: LandCoverRandAR, batch: int, length: int, cached: int) -> float:
    """Bytes a pass must read at least: the float32 block weights once, and every key and value it attends to."""
    config = model.config
    keys_and_values = 2 * config.n_layers * batch * (cached + length) * config.dim
    return 4 * (block_parameters(model) + keys_and_values)


class FlopCounter:
    """Counts :func:`chunk_flops` and :func:`chunk_bytes` of every transformer pass of a model while active (a
    forward pre-hook)."""

    def __init__(self, model: LandCoverRandAR) -> None:
        self.model = model
        self.flops = 0.0
        self.bytes = 0.0

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        x = args[0]
        caches = kwargs.get("caches")
        cached = caches[0].length if caches else 0
        self.flops += chunk_flops(self.model, x.shape[0], x.shape[1], cached)
        self.bytes += chunk_bytes(self.model, x.shape[0], x.shape[1], cached)

    @contextmanager
    def counting(self) -> Iterator[FlopCounter]:
        self.flops = self.bytes = 0.0
        handle = self.model.transformer.register_forward_pre_hook(self._hook, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()


def timed(run: Callable[[], object], repeats: int, warm_up: bool = True) -> float:
    """Fastest wall time of ``repeats`` runs (after one warm-up run): the least disturbed by other processes."""
    if warm_up:
        run()
    best = math.inf
    for _ in range(repeats):
        start = clock()
        run()
        best = min(best, clock() - start)
    return best


def measured(
    model: LandCoverRandAR, run: Callable[[], object], repeats: int, units: float, limit: float, warm_up: bool = True
) -> dict:
    """Seconds per unit, executed model FLOPs per second and their fraction of ``limit`` (GFLOP/s).

    FLOPs are counted during the timed runs (one hook call per transformer pass costs microseconds); long runs
    go without a warm-up (``warm_up=False``), whose only effect is one-time allocation.
    """
    counter = FlopCounter(model)
    if warm_up:
        run()
    with counter.counting():
        seconds = timed(run, repeats, warm_up=False)
    flops = counter.flops / repeats
    gflops = flops / seconds / 1e9
    return {
        "seconds": seconds,
        "seconds_per_unit": seconds / units,
        "gflop_per_unit": flops / units / 1e9,
        "gb_read_per_unit": counter.bytes / repeats / units / 1e9,
        "gflops": gflops,
        "fraction_of_limit": gflops / limit,
    }


# ------------------------------------------------------------------------------------ the re-encoding baseline


def reencode_step_seconds(model: LandCoverRandAR, batch: int, n_decided: int, n_query: int) -> float:
    """Wall time of one step of a decoder that keeps no cache between steps: from an empty cache, commit the
    ``n_decided`` cells decided so far and ask for ``n_query`` cells. Its cost depends only on the counts."""
    n_cells = model.config.chip_size**2
    generator = torch.Generator().manual_seed(n_decided)
    order = torch.rand(batch, n_cells, generator=generator).argsort(dim=1)
    classes = torch.randint(0, model.config.n_classes, (batch, n_decided), generator=generator)
    size = model.config.chip_size
    start = clock()
    with torch.no_grad():
        state = model.start_decoding(batch, size, size, max_cells=n_cells, max_query=max(n_query, 1))
        if n_decided:
            model.decode_commit(state, order[:, :n_decided], classes)
        model.decode_step(state, None, order[:, n_decided : n_decided + n_query])
    return clock() - start


def reencode_seconds(model: LandCoverRandAR, batch: int, schedule: list[tuple[int, int]], points: int) -> dict:
    """Total time of a re-encoding decoder over ``schedule`` [(cells decided before, cells asked for), ...].

    Every step is timed when there are at most ``points`` of them; otherwise ``points`` steps spread evenly
    over the schedule are timed and the rest interpolated linearly in the step index (``estimated``).
    """
    model.eval()
    if len(schedule) <= points:
        return {"seconds": sum(reencode_step_seconds(model, batch, d, q) for d, q in schedule), "estimated": False}
    picks = sorted({round(i * (len(schedule) - 1) / (points - 1)) for i in range(points)})
    times = {i: reencode_step_seconds(model, batch, *schedule[i]) for i in picks}
    total = 0.0
    for left, right in itertools.pairwise(picks):
        # Steps left .. right - 1: linear between the two timed ends.
        for i in range(left, right):
            total += times[left] + (times[right] - times[left]) * (i - left) / (right - left)
    return {"seconds": total + times[picks[-1]], "estimated": True, "timed_steps": len(picks)}


def schedule_of(n_known: int, n_free: int, steps: int | None) -> list[tuple[int, int]]:
    counts = decoding.decoding_schedule(torch.tensor([n_free]), steps)[0].tolist()
    return [(n_known + counts[s], counts[s + 1] - counts[s]) for s in range(len(counts) - 1)]


def reencode_flops(model: LandCoverRandAR, batch: int, schedule: list[tuple[int, int]]) -> float:
    prefix = 1
    return sum(chunk_flops(model, batch, prefix + 2 * d + q, 0) for d, q in schedule)


# ------------------------------------------------------------------------------------------------ operations


def training_step(model: LandCoverRandAR, batch: int, bf16: bool) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    size = model.config.chip_size
    labels = torch.randint(0, model.config.n_classes, (batch, size, size), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bench_training(model: LandCoverRandAR, batch: int, repeats: int, limits: dict[str, float]) -> dict:
    model.train()
    results = {}
    for precision in ("fp32", "bf16"):
        step = training_step(model, batch, bf16=precision == "bf16")
        seconds = timed(step, repeats)
        flops = 3 * forward_flops(model, batch)
        results[precision] = {
            "batch": batch,
            "seconds_per_step": seconds,
            "pixel_tokens_per_s": batch * model.config.chip_size**2 / seconds,
            "gflops": flops / seconds / 1e9,
            "fraction_of_limit": flops / seconds / 1e9 / limits[precision],
        }
    model.eval()
    return results


def memory_child(config: LandCoverConfig, batch: int, micro_batch: int, bf16: bool, run_micro_batches: int) -> dict:
    """One AdamW step over ``batch`` chips as gradient-accumulated micro-batches; this process's peak RSS.

    Each micro-batch's mean loss is weighted by its share of the batch's valid cells, so the gradient is the one
    of the whole batch's mean loss (Lightning's ``accumulate_grad_batches`` gives the same when there is no
    nodata). A micro-batch's activations are freed by its backward, so every micro-batch reaches the same peak:
    ``run_micro_batches`` > 0 runs only that many of them before the optimiser step (minutes saved at 32x32).
    """
    torch.manual_seed(0)
    model = LandCoverRandAR(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    size = config.chip_size
    labels = torch.randint(0, config.n_classes, (batch, size, size), generator=torch.Generator().manual_seed(0))
    valid_total = int((labels >= 0).sum())
    start = clock()
    chunks = labels.split(micro_batch)
    if run_micro_batches > 0:
        chunks = chunks[:run_micro_batches]
    for chunk in chunks:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(chunk)
        (loss * int((chunk >= 0).sum()) / valid_total).backward()
    optimizer.step()
    # ru_maxrss is in KiB on Linux.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"peak_rss_gib": peak, "seconds": clock() - start, "micro_batches_run": len(chunks)}


def bench_memory(args: argparse.Namespace) -> dict:
    """Peak RSS of a training step in a fresh child process per precision."""
    results = {}
    for precision in ("fp32", "bf16"):
        micro_batch = args.micro_batch or MICRO_BATCH[precision]
        command = [sys.executable, __file__, "--memory-child", precision, "--threads", str(args.threads)]
        command += ["--memory-batch", str(args.memory_batch), "--micro-batch", str(micro_batch)]
        command += ["--memory-micro-batches", str(args.memory_micro_batches)] + (["--quick"] if args.quick else [])
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[precision] = {"batch": args.memory_batch, "micro_batch": micro_batch, **json.loads(output)}
    return results


def bench_decoding(model: LandCoverRandAR, args: argparse.Namespace, limits: dict[str, float]) -> dict:
    size = model.config.chip_size
    n_cells = size * size
    results: dict[str, dict] = {}
    fp32 = limits["fp32"]

    def sampler(batch: int, steps: int | None, known: Tensor | None = None) -> Callable[[], None]:
        def go() -> None:
            decoding.sample(
                model, batch, steps=steps, known=known, generator=torch.Generator().manual_seed(0), order="random"
            )

        return go

    def with_baseline(name: str, result: dict, batch: int, schedule: list[tuple[int, int]], units: float) -> None:
        baseline = reencode_seconds(model, batch, schedule, args.baseline_points)
        result["baseline_seconds_per_unit"] = baseline["seconds"] / units
        result["baseline_estimated"] = baseline["estimated"]
        result["baseline_gflop_per_unit"] = reencode_flops(model, batch, schedule) / units / 1e9
        result["speedup"] = result["baseline_seconds_per_unit"] / result["seconds_per_unit"]
        results[name] = result

    batch = args.batch
    result = measured(model, sampler(batch, 32), args.repeats, batch, fp32)
    with_baseline("sample_32_steps", result, batch, schedule_of(0, n_cells, 32), batch)

    result = measured(model, sampler(batch, None), 1, batch, fp32, warm_up=False)
    with_baseline("sample_sequential_batched", result, batch, schedule_of(0, n_cells, None), batch)
    result = measured(model, sampler(1, None), 1, 1, fp32, warm_up=False)
    with_baseline("sample_sequential_batch_1", result, 1, schedule_of(0, n_cells, None), 1)

    # One chip with a random half of its cells known.
    known = torch.randint(0, N_CLASSES, (1, size, size), generator=torch.Generator().manual_seed(1))
    hidden = torch.rand(1, n_cells, generator=torch.Generator().manual_seed(2)).argsort(dim=1) < n_cells // 2
    known = known.masked_fill(hidden.reshape(1, size, size), -1)
    n_known = n_cells - n_cells // 2
    result = measured(model, sampler(1, None, known), 1, 1, fp32, warm_up=False)
    with_baseline("inpaint_sequential_batch_1", result, 1, schedule_of(n_known, n_cells - n_known, None), 1)
    result = measured(model, sampler(1, 32, known), args.repeats, 1, fp32)
    with_baseline("inpaint_32_steps_batch_1", result, 1, schedule_of(n_known, n_cells - n_known, 32), 1)

    labels = torch.randint(0, N_CLASSES, (batch, size, size), generator=torch.Generator().manual_seed(4))
    for precision in ("fp32", "bf16"):

        def score(bf16: bool = precision == "bf16") -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                decoding.log_likelihood(model, labels, generator=torch.Generator().manual_seed(0))

        results[f"log_likelihood_{precision}"] = measured(model, score, args.repeats, batch, limits[precision])
    # The re-encoding scorer asks for one cell per step after all cells before it in the order.
    with_baseline("log_likelihood_fp32", results["log_likelihood_fp32"], batch, schedule_of(0, n_cells, None), batch)

    chains = args.chains
    start = torch.randint(0, N_CLASSES, (chains, size, size), generator=torch.Generator().manual_seed(5))

    def sweep() -> None:
        for _ in decoding.gibbs(model, start, sweeps=1, generator=torch.Generator().manual_seed(0)):
            pass

    result = measured(model, sweep, 1, chains * n_cells, fp32, warm_up=False)
    result["site_updates_per_s"] = 1 / result["seconds_per_unit"]
    result["chains"] = chains
    result["group_size"] = decoding.default_group_size(n_cells, 1)
    sites = torch.randint(0, n_cells, (chains, 1), generator=torch.Generator().manual_seed(6))
    naive = timed(lambda: decoding.conditional_probs(model, start, sites, rest_order="random"), args.repeats)
    result["baseline_seconds_per_unit"] = naive / chains
    result["baseline_estimated"] = False
    result["baseline_gflop_per_unit"] = forward_flops(model, 1) / 1e9
    result["speedup"] = naive / chains / result["seconds_per_unit"]
    results["gibbs_default_sweep"] = result
    return results


def met(ok: bool) -> str:
    return "met" if ok else "not met"


def summary_rows(results: dict) -> list[dict]:
    """Rows for ``run_all.py``'s table: each operation against its re-encoding baseline, with the issue's targets."""
    decoding_results = results["decoding"]
    share = {name: entry["fraction_of_limit"] for name, entry in decoding_results.items()}
    overhead = {name: entry["overhead_over_flop_time"] for name, entry in decoding_results.items()}
    targets = {
        "sample_32_steps": f">= 50 % of the limit: {met(share['sample_32_steps'] >= 0.5)}",
        "sample_sequential_batched": "",
        "sample_sequential_batch_1": (
            f"overhead <= 2x the FLOP time: {met(overhead['sample_sequential_batch_1'] <= 2)}"
        ),
        "inpaint_sequential_batch_1": (
            f"overhead <= 2x the FLOP time: {met(overhead['inpaint_sequential_batch_1'] <= 2)}"
        ),
        "inpaint_32_steps_batch_1": "",
        "log_likelihood_fp32": f">= 50 % of the limit: {met(share['log_likelihood_fp32'] >= 0.5)}",
        "gibbs_default_sweep": f">= 10x: {met(decoding_results['gibbs_default_sweep']['speedup'] >= 10)}",
    }
    rows = []
    for name, target in targets.items():
        entry = decoding_results[name]
        rows.append(
            {
                "metric": f"{name.replace('_', ' ')} ({entry['fraction_of_limit']:.0%} of the fp32 limit)",
                "value": entry["seconds_per_unit"],
                "unit": "s/site update" if name.startswith("gibbs") else "s/chip",
                "baseline": entry["baseline_seconds_per_unit"],
                "ratio": entry["speedup"],
                "target": target,
            }
        )
    training = results["training"]
    bf16_share = training["bf16"]["fraction_of_limit"]
    rows.append(
        {
            "metric": f"training step, bf16 autocast vs fp32 ({bf16_share:.0%} of the bf16 limit)",
            "value": training["bf16"]["pixel_tokens_per_s"],
            "unit": "pixel tokens/s",
            "baseline": training["fp32"]["pixel_tokens_per_s"],
            "ratio": training["bf16"]["pixel_tokens_per_s"] / training["fp32"]["pixel_tokens_per_s"],
            "target": f">= 45 % of the bf16 limit: {met(bf16_share >= 0.45)}",
        }
    )
    for precision, entry in results["memory"].items():
        rows.append(
            {
                "metric": f"peak RSS, batch {entry['batch']}, {precision}, micro-batches of {entry['micro_batch']}",
                "value": entry["peak_rss_gib"],
                "unit": "GiB",
                "baseline": None,
                "ratio": None,
                "target": f"< 8 GiB: {met(entry['peak_rss_gib'] < 8)}",
            }
        )
    return rows


def print_table(results: dict) -> None:
    limits = results["limit"]
    print(
        f"limit: fp32 {limits['fp32']:.0f} GFLOP/s, bf16 {limits['bf16']:.0f} GFLOP/s, "
        f"reads {limits['read_gbps']:.1f} GB/s (best of start and end)"
    )
    header = f"{'operation':<28} {'per unit':>9} {'GFLOP/s':>8} {'of limit':>8} {'/roofline':>9}"
    print(f"{header} {'re-encoding':>12} {'speedup':>8}")
    for name, entry in results["decoding"].items():
        baseline = entry.get("baseline_seconds_per_unit")
        mark = "~" if entry.get("baseline_estimated") else " "
        base = f"{mark}{baseline:11.4g}" if baseline else f"{'':>12}"
        speedup = f"{entry['speedup']:7.1f}x" if "speedup" in entry else f"{'':>8}"
        print(
            f"{name:<28} {entry['seconds_per_unit']:9.4g} {entry['gflops']:8.1f} {entry['fraction_of_limit']:8.0%} "
            f"{entry['seconds_over_roofline']:8.1f}x {base} {speedup}"
        )
    for precision, entry in results["training"].items():
        print(
            f"{'training ' + precision:<28} {entry['seconds_per_step'] / entry['batch']:9.4g} {entry['gflops']:8.1f} "
            f"{entry['fraction_of_limit']:8.0%}   ({entry['pixel_tokens_per_s']:.0f} pixel tokens/s)"
        )
    for precision, entry in results.get("memory", {}).items():
        print(
            f"batch {entry['batch']} step, {precision}, micro-batches of {entry['micro_batch']}: "
            f"peak RSS {entry['peak_rss_gib']:.2f} GiB ({entry['micro_batches_run']} run, {entry['seconds']:.0f} s)"
        )
    print(
        "units: CPU seconds per chip (Gibbs: per site update); /roofline: time over the longer of the FLOP time "
        "and the time to read the weights and attended keys once; ~ marks an estimated baseline"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small model and 8x8 chips: a smoke run in seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the limit is measured with them)")
    parser.add_argument("--batch", type=int, default=2, help="chips sampled / scored at once")
    parser.add_argument("--chains", type=int, default=1, help="Gibbs chains run at once (one full sweep each)")
    parser.add_argument("--train-batch", type=int, default=2, help="chips per timed training step")
    parser.add_argument("--memory-batch", type=int, default=64, help="chips per step of the peak-RSS measurement")
    parser.add_argument(
        "--micro-batch", type=int, help=f"micro-batch of the peak-RSS measurement (default {MICRO_BATCH} by precision)"
    )
    parser.add_argument(
        "--memory-micro-batches", type=int, default=1, help="micro-batches run of that step (0: all; each peaks alike)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS measurement (minutes)")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats after a warm-up (fastest kept)")
    parser.add_argument("--baseline-points", type=int, default=6, help="steps timed of a long re-encoding baseline")
    parser.add_argument("--memory-child", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_landcover_reference.json", help="JSON output")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = quick_config() if args.quick else reference_config(N_CLASSES)
    if args.memory_child:
        bf16 = args.memory_child == "bf16"
        print(json.dumps(memory_child(config, args.memory_batch, args.micro_batch, bf16, args.memory_micro_batches)))
        return 0
    if args.quick:
        args.memory_batch, args.micro_batch, args.memory_micro_batches = 4, 2, 0
    began = time.perf_counter()
    load_start = os.getloadavg()[0]
    start_limits = machine_limits(args.quick)
    torch.manual_seed(0)
    model = LandCoverRandAR(config).eval()
    # The limit of the run is the best each precision gave at its start or end (load changes in between).
    limits = dict(start_limits)
    decoding_results = bench_decoding(model, args, limits)
    training = bench_training(model, args.train_batch, args.repeats, limits)
    memory = {} if args.no_memory else bench_memory(args)
    end_limits = machine_limits(args.quick)
    limits = {name: max(start_limits[name], end_limits[name]) for name in start_limits}
    _refresh_fractions(decoding_results, training, limits)
    result: dict[str, Any] = {
        "benchmark": "bench_landcover_reference",
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, {platform.system()}",
        "torch": torch.__version__,
        "torch_threads": args.threads,
        "load_average_1m": {"start": load_start, "end": os.getloadavg()[0]},
        "quick": args.quick,
        "model": {
            **{key: getattr(config, key) for key in ("n_classes", "chip_size", "n_layers", "n_heads", "dim")},
            "parameters": sum(p.numel() for p in model.parameters()),
            "forward_gflop_per_chip": forward_flops(model, 1) / 1e9,
            "trained": False,
        },
        "settings": {key: getattr(args, key) for key in ("batch", "chains", "train_batch", "repeats")},
        "limit": limits,
        "limit_start": start_limits,
        "limit_end": end_limits,
        "decoding": decoding_results,
        "training": training,
        "memory": memory,
    }
    result["summary"] = summary_rows(result)
    result["wall_seconds"] = time.perf_counter() - began
    write_json(args.out, result)
    print_table(result)
    print(f"load average (1 min) {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end; wrote {args.out}")
    return 0


def _refresh_fractions(decoding_results: dict, training: dict, limits: dict[str, float]) -> None:
    """Fractions against the final limit (the best of start and end)."""
    for name, entry in decoding_results.items():
        precision = "bf16" if name.endswith("bf16") else "fp32"
        entry["fraction_of_limit"] = entry["gflops"] / limits[precision]
        # Time beyond what the executed FLOPs take at the limit, in units of that time (target <= 2 at batch 1),
        # and time over the roofline floor: the FLOP time or the time to read the bytes, whichever is longer.
        flop_seconds = entry["gflop_per_unit"] / limits[precision]
        entry["overhead_over_flop_time"] = (entry["seconds_per_unit"] - flop_seconds) / flop_seconds
        floor = max(flop_seconds, entry["gb_read_per_unit"] / limits["read_gbps"])
        entry["seconds_over_roofline"] = entry["seconds_per_unit"] / floor
    for precision, entry in training.items():
        entry["fraction_of_limit"] = entry["gflops"] / limits[precision]


if __name__ == "__main__":
    sys.exit(main())
