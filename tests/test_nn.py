"""Shared transformer parts: numbers checked against direct computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from landformer.core.nn import (
    Attention,
    KVCache,
    RMSNorm,
    RoPE2D,
    SwiGLU,
    Transformer,
    apply_rotary,
    swiglu_hidden,
)


def test_rmsnorm_matches_hand_computation() -> None:
    norm = RMSNorm(4, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
    x = torch.tensor([[3.0, -4.0, 0.0, 0.0]])
    rms = math.sqrt((9 + 16) / 4)
    expected = torch.tensor([[3 / rms * 1.0, -4 / rms * 2.0, 0.0, 0.0]])
    torch.testing.assert_close(norm(x), expected)


def test_swiglu_matches_formula() -> None:
    torch.manual_seed(0)
    mlp = SwiGLU(8, 16)
    x = torch.randn(2, 3, 8)
    expected = (F.silu(x @ mlp.w1.weight.T) * (x @ mlp.w3.weight.T)) @ mlp.w2.weight.T
    torch.testing.assert_close(mlp(x), expected)
    assert swiglu_hidden(256) == 688 and swiglu_hidden(256) % 16 == 0


def test_rope_preserves_norms() -> None:
    torch.manual_seed(0)
    rope = RoPE2D(16)
    x = torch.randn(2, 5, 3, 16)
    pos = torch.randint(0, 32, (2, 5, 2)).float()
    rotated = rope.rotate(x, pos)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    assert not torch.allclose(rotated, x)


def test_rope_dot_product_depends_only_on_relative_position() -> None:
    torch.manual_seed(0)
    rope = RoPE2D(16, base=100.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(q_pos: tuple[float, float], k_pos: tuple[float, float]) -> float:
        rq = rope.rotate(q, torch.tensor([[q_pos]]))
        rk = rope.rotate(k, torch.tensor([[k_pos]]))
        return float((rq * rk).sum())

    base = score((3.0, 5.0), (1.0, 7.0))
    assert score((13.0, -2.0), (11.0, 0.0)) == pytest.approx(base, abs=1e-5)
    assert score((0.5, 0.5), (-1.5, 2.5)) == pytest.approx(base, abs=1e-5)
    # A different offset changes the score: rows and columns are told apart.
    assert abs(score((3.0, 5.0), (7.0, 1.0)) - base) > 1e-3


def test_rope_rows_and_columns_use_separate_halves() -> None:
    rope = RoPE2D(8)
    x = torch.randn(1, 1, 1, 8)
    row_only = rope.rotate(x, torch.tensor([[[2.0, 0.0]]]))
    # Pairs (i, i + 4): i in {0, 1} rotate with the row, i in {2, 3} with the column and stay put here.
    torch.testing.assert_close(row_only[..., [2, 3, 6, 7]], x[..., [2, 3, 6, 7]])
    cos, sin = rope(torch.zeros(1, 1, 2))
    torch.testing.assert_close(apply_rotary(x, cos, sin), x)


def test_kv_cache_append_and_truncate() -> None:
    cache = KVCache(batch_size=2, n_heads=1, head_dim=4, max_len=5)
    k1 = torch.randn(2, 1, 3, 4)
    keys, _ = cache.append(k1, k1)
    assert keys.shape == (2, 1, 3, 4) and cache.length == 3
    cache.truncate(2)
    k2 = torch.randn(2, 1, 2, 4)
    keys, _ = cache.append(k2, k2)
    torch.testing.assert_close(keys, torch.cat([k1[:, :, :2], k2], dim=2))
    with pytest.raises(ValueError, match="overflow"):
        cache.append(k2, k2)


@pytest.mark.parametrize("chunks", [[1] * 7, [3, 1, 2, 1], [7]])
def test_cached_attention_equals_uncached(chunks: list[int]) -> None:
    torch.manual_seed(0)
    attn = Attention(16, 2, causal=True).eval()
    rope = RoPE2D(8)
    x = torch.randn(3, 7, 16)
    pos = torch.randint(0, 8, (3, 7, 2)).float()
    full = attn(x, rope=rope(pos))
    cache = KVCache(3, 2, 8, max_len=7)
    outputs, start = [], 0
    for size in chunks:
        sl = slice(start, start + size)
        outputs.append(attn(x[:, sl], rope=rope(pos[:, sl]), cache=cache))
        start += size
    torch.testing.assert_close(torch.cat(outputs, dim=1), full, atol=1e-5, rtol=1e-5)


def test_bidirectional_attention_sees_the_future() -> None:
    torch.manual_seed(0)
    causal, bidir = Attention(8, 2, causal=True).eval(), Attention(8, 2, causal=False).eval()
    bidir.load_state_dict(causal.state_dict())
    x = torch.randn(1, 4, 8)
    changed = x.clone()
    changed[:, -1] += 1.0
    torch.testing.assert_close(causal(x)[:, :3], causal(changed)[:, :3])
    assert not torch.allclose(bidir(x)[:, 0], bidir(changed)[:, 0])


def test_transformer_cached_decoding_equals_full_forward() -> None:
    torch.manual_seed(0)
    model = Transformer(dim=32, n_layers=2, n_heads=4).eval()
    x = torch.randn(2, 6, 32)
    pos = torch.randint(0, 8, (2, 6, 2)).float()
    full = model(x, pos)
    caches = model.make_caches(2, max_len=6)
    steps = [model(x[:, t : t + 1], pos[:, t : t + 1], caches=caches) for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert all(cache.length == 6 for cache in caches)
