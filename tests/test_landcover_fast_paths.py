"""Fast paths of the land-cover model, each checked against the plain computation it replaces.

bf16 rotary and RMSNorm against float64 formulas, cached attention under bf16 autocast, the lower-right causal
bias that CUDA uses against the boolean mask, grouped Gibbs against re-running the model on each update's
explicit order, and the reference benchmark's smoke run against its own FLOP model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_landcover_model import SIZE, K, N, build, random_labels
from torch.utils.flop_counter import FlopCounterMode

from landformer.core.nn import Attention, KVCache, RMSNorm, RoPE2D, apply_rotary, causal_after_cache
from landformer.landcover import decoding
from landformer.landcover.model import LandCoverRandAR, random_orders

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_landcover_reference.py"


@pytest.fixture(scope="module")
def model() -> LandCoverRandAR:
    return build()


def test_bf16_rotary_equals_the_float64_rotation() -> None:
    """Rotating in bf16 (no float32 copies) stays within bf16 rounding of the exact rotation of the same input."""
    torch.manual_seed(0)
    rope = RoPE2D(16)
    x = torch.randn(2, 7, 3, 16).bfloat16()
    pos = torch.rand(2, 7, 2) * 31
    angles = torch.cat([pos[..., :1] * rope.inv_freq, pos[..., 1:] * rope.inv_freq], dim=-1).double().unsqueeze(-2)
    x1, x2 = x[..., :8].double(), x[..., 8:].double()
    exact = torch.cat([x1 * angles.cos() - x2 * angles.sin(), x1 * angles.sin() + x2 * angles.cos()], dim=-1)
    rotated = apply_rotary(x, *rope(pos))
    assert rotated.dtype == torch.bfloat16
    torch.testing.assert_close(rotated.double(), exact, atol=0.03, rtol=0.02)
    torch.testing.assert_close(apply_rotary(x.float(), *rope(pos)).double(), exact, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_equals_the_float64_formula(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    norm = RMSNorm(24)
    with torch.no_grad():
        norm.weight.normal_()
    x = (torch.randn(3, 5, 24) * 4).to(dtype)
    x64 = x.double()
    exact = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.double()
    out = norm(x)
    assert out.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 0.02
    torch.testing.assert_close(out.double(), exact, atol=tolerance, rtol=tolerance)


def test_cached_attention_under_bf16_autocast_matches_float32() -> None:
    """Under bf16 autocast the cache holds bf16 keys (half the bytes a decoding step reads), and cached attention
    in two chunks matches float32 attention over the whole sequence within bf16 rounding."""
    torch.manual_seed(0)
    attention = Attention(32, 4, causal=True)
    rope = RoPE2D(8)
    x, pos = torch.randn(2, 6, 32), torch.rand(2, 6, 2) * 8
    expected = attention(x, rope=rope(pos))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache = KVCache(2, 4, 8, max_len=6)
        first = attention(x[:, :4], rope=rope(pos[:, :4]), cache=cache)
        second = attention(x[:, 4:], rope=rope(pos[:, 4:]), cache=cache)
    assert cache.k is not None and cache.k.dtype == torch.bfloat16
    torch.testing.assert_close(torch.cat([first, second], dim=1).float(), expected, atol=0.02, rtol=0.02)


@pytest.mark.parametrize(("length", "start"), [(1, 0), (3, 0), (2, 5), (4, 1)])
def test_lower_right_causal_bias_equals_the_boolean_mask(length: int, start: int) -> None:
    """The bias CUDA's fused kernels take, run here on CPU, gives the same attention as the boolean mask."""
    torch.manual_seed(0)
    q = torch.randn(2, 3, length, 8)
    k, v = torch.randn(2, 3, start + length, 8), torch.randn(2, 3, start + length, 8)
    boolean = causal_after_cache(length, start, q.device, fused_bias=False)
    assert boolean.dtype == torch.bool and bool(boolean[-1].all()) and int(boolean[0].sum()) == start + 1
    bias = causal_after_cache(length, start, q.device, fused_bias=True)
    torch.testing.assert_close(
        F.scaled_dot_product_attention(q, k, v, attn_mask=bias),
        F.scaled_dot_product_attention(q, k, v, attn_mask=boolean),
    )


def test_model_under_bf16_autocast_matches_float32(model: LandCoverRandAR) -> None:
    labels = random_labels(2, 3, nodata=0.1)
    order = random_orders(2, N, torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits, loss = model(labels, order)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast_logits, fast_loss = model(labels, order)
    torch.testing.assert_close(fast_logits.float(), logits, atol=0.15, rtol=0.05)
    assert float(fast_loss) == pytest.approx(float(loss), rel=0.01)


@pytest.mark.parametrize(("block_size", "group_size"), [(None, None), (1, 5), (2, 6), (3, 9)])
def test_grouped_gibbs_draws_from_the_conditional_with_the_block_last(
    model: LandCoverRandAR, block_size: int | None, group_size: int | None
) -> None:
    """Each update equals re-running the model on [outside the group, the group's other blocks, the block]."""
    start = random_labels(2, 22, nodata=0.1)
    seed = torch.Generator().manual_seed(11)
    (cached,) = decoding.gibbs(model, start, 1, block_size=block_size, generator=seed, group_size=group_size)
    block = block_size or 1
    group = group_size or decoding.default_group_size(N, block)
    assert group == (8 if block_size is None else group_size)
    generator = torch.Generator().manual_seed(11)
    state = start.reshape(2, N).clone()
    permutation = random_orders(2, N, generator)
    groups = permutation.split(group, dim=1)
    for g, cells in enumerate(groups):
        outside = torch.cat([*groups[:g], *groups[g + 1 :]], dim=1)
        blocks = cells.split(block, dim=1)
        for j, sites in enumerate(blocks):
            order = torch.cat([outside, *blocks[:j], *blocks[j + 1 :], sites], dim=1)
            for t in range(sites.shape[1]):
                logits, _ = model(state.reshape(2, SIZE, SIZE), order)
                position = N - sites.shape[1] + t
                drawn = decoding.sample_from_logits(logits[:, position : position + 1], generator=generator)
                site = sites[:, t : t + 1]
                state.scatter_(1, site, torch.where(state.gather(1, site) < 0, -1, drawn))
    assert torch.equal(cached, state.reshape(2, SIZE, SIZE))
    assert not torch.equal(cached, start)


def test_one_group_of_all_cells_is_the_full_sweep_schedule(model: LandCoverRandAR) -> None:
    start = random_labels(2, 5)
    one_group = list(decoding.gibbs(model, start, 2, 4, group_size=N, generator=torch.Generator().manual_seed(3)))
    default = list(decoding.gibbs(model, start, 2, 4, generator=torch.Generator().manual_seed(3)))
    assert all(torch.equal(a, b) for a, b in zip(one_group, default, strict=True))


def test_default_group_size_is_about_the_square_root() -> None:
    assert decoding.default_group_size(1024, 1) == 32
    assert decoding.default_group_size(64, 1) == 8
    assert decoding.default_group_size(1024, 4) == 32
    assert decoding.default_group_size(4, 16) == 16


def test_reference_benchmark_flop_model_matches_torch_counter(model: LandCoverRandAR) -> None:
    """The benchmark's FLOPs of a forward equal torch's count of its matmuls, with attention counted causally."""
    sys.path.insert(0, str(BENCHMARK.parent))
    try:
        import bench_landcover_reference as bench
    finally:
        sys.path.remove(str(BENCHMARK.parent))
    labels = random_labels(2, 1)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(labels)
    dim, layers, tokens = model.config.dim, model.config.n_layers, 2 * N
    # torch counts the matmuls (its counter does not see the CPU flash-attention kernel), the output head
    # included; attention is counted causally: each of the 2N tokens of a chip attends to itself and those before.
    matmuls = counter.get_flop_counts()["Global"][torch.ops.aten.mm]
    head = 2 * dim * K * 2 * N
    causal_attention = 4 * dim * layers * 2 * tokens * (tokens + 1) / 2
    assert bench.forward_flops(model, 2) == pytest.approx(matmuls - head + causal_attention)
    assert bench.chunk_flops(model, 1, 3, 5) == pytest.approx(
        2 * bench.block_parameters(model) * 3 + 4 * dim * layers * (6 + 7 + 8)
    )


def test_reference_benchmark_quick_run_writes_consistent_numbers(tmp_path: Path) -> None:
    out = tmp_path / "reference.json"
    subprocess.run([sys.executable, str(BENCHMARK), "--quick", "--out", str(out)], check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert result["quick"] and result["model"]["chip_size"] == 8
    limits = result["limit"]
    assert limits["fp32"] > 0 and limits["bf16"] > 0 and limits["read_gbps"] > 0
    for name, entry in result["decoding"].items():
        limit = limits["bf16" if name.endswith("bf16") else "fp32"]
        assert entry["fraction_of_limit"] == pytest.approx(entry["gflops"] / limit)
        assert entry["gflops"] == pytest.approx(entry["gflop_per_unit"] / entry["seconds_per_unit"])
        floor = max(entry["gflop_per_unit"] / limit, entry["gb_read_per_unit"] / limits["read_gbps"])
        assert entry["seconds_over_roofline"] == pytest.approx(entry["seconds_per_unit"] / floor)
        if "baseline_seconds_per_unit" in entry:
            assert entry["speedup"] == pytest.approx(entry["baseline_seconds_per_unit"] / entry["seconds_per_unit"])
    # One forward per chip scores it; a 32-step sample processes about one forward's tokens per chip.
    forward = result["model"]["forward_gflop_per_chip"]
    assert result["decoding"]["log_likelihood_fp32"]["gflop_per_unit"] == pytest.approx(forward)
    assert 0.9 * forward < result["decoding"]["sample_32_steps"]["gflop_per_unit"] < 1.6 * forward
    gibbs = result["decoding"]["gibbs_default_sweep"]
    assert gibbs["baseline_gflop_per_unit"] == pytest.approx(forward)
    assert gibbs["gflop_per_unit"] < forward
    assert set(result["memory"]) == {"fp32", "bf16"} and all(m["peak_rss_gib"] > 0 for m in result["memory"].values())
    assert {row["metric"].split(" (")[0] for row in result["summary"]} >= {"gibbs default sweep", "sample 32 steps"}


def test_commit_and_query_in_one_pass_equals_commit_then_step(model: LandCoverRandAR) -> None:
    """The one-pass form Gibbs uses gives the logits and the cache of decode_commit followed by decode_step."""
    order = random_orders(2, N, torch.Generator().manual_seed(2))
    classes = random_labels(2, 9).reshape(2, N).gather(1, order)
    states = [model.start_decoding(2, SIZE, SIZE) for _ in range(2)]
    with torch.no_grad():
        for state in states:
            model.decode_commit(state, order[:, :10], classes[:, :10])
        model.decode_commit(states[0], order[:, 10:30], classes[:, 10:30])
        separate = model.decode_step(states[0], None, order[:, 30:31])
        merged = model.decode_commit_and_query(states[1], order[:, 10:30], classes[:, 10:30], order[:, 30:31])
        torch.testing.assert_close(merged, separate, atol=1e-5, rtol=1e-5)
        assert states[0].length == states[1].length == 1 + 2 * 30 + 1
        # Both continue alike: the queried cell is pending in each.
        after = [model.decode_step(state, classes[:, 30:31], order[:, 31:32]) for state in states]
    torch.testing.assert_close(after[1], after[0], atol=1e-5, rtol=1e-5)
