"""The CUDA paths (fused attention bias, bf16 autocast, the KV cache on the GPU, bf16-mixed training) against the
plain forward. Skipped on machines without a CUDA GPU, which includes CI; run them where one is lent with
``pytest tests/test_cuda.py``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_landcover_model import SIZE, N, build, random_labels
from torch.nn.attention.bias import CausalBias

from landformer.core.nn import causal_after_cache
from landformer.core.train import resolve_precision
from landformer.landcover import decoding
from landformer.landcover.model import LandCoverRandAR, random_orders

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def model() -> LandCoverRandAR:
    """The CPU tests' tiny model with sharpened weights (logits vary by O(1)), on the GPU."""
    return build().cuda()


def labels_and_orders(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    orders = random_orders(batch, N, torch.Generator().manual_seed(seed + 1))
    return random_labels(batch, seed, nodata=0.1).cuda(), orders.cuda()


@pytest.mark.parametrize(("length", "start"), [(1, 0), (3, 0), (2, 5), (4, 1)])
def test_fused_bias_is_chosen_on_cuda_and_equals_the_boolean_mask(length: int, start: int) -> None:
    device = torch.device("cuda")
    q = torch.randn(2, 3, length, 8, device=device)
    k, v = torch.randn(2, 3, start + length, 8, device=device), torch.randn(2, 3, start + length, 8, device=device)
    chosen = causal_after_cache(length, start, device)
    assert isinstance(chosen, CausalBias)  # CUDA takes the lower-right bias its fused kernels apply unmaterialised
    boolean = causal_after_cache(length, start, device, fused_bias=False)
    torch.testing.assert_close(
        F.scaled_dot_product_attention(q, k, v, attn_mask=chosen),
        F.scaled_dot_product_attention(q, k, v, attn_mask=boolean),
        atol=1e-4,
        rtol=1e-4,
    )


def test_cached_decoding_on_cuda_equals_the_full_forward(model: LandCoverRandAR) -> None:
    labels, order = labels_and_orders(3, 7)
    with torch.no_grad():
        full_logits, _ = model(labels, order)
        targets = labels.reshape(3, -1).gather(1, order)
        state = model.start_decoding(3, SIZE, SIZE)
        model.decode_commit(state, order[:, :10], targets[:, :10])
        classes, cached = None, []
        for t in range(10, N):
            cached.append(model.decode_step(state, classes, order[:, t : t + 1]))
            classes = targets[:, t : t + 1]
    # TF32 matmuls may be on: a looser bound than the CPU test's 1e-5, still far below the O(1) logit spread.
    torch.testing.assert_close(torch.cat(cached, dim=1), full_logits[:, 10:], atol=2e-3, rtol=2e-3)


def test_bf16_autocast_on_cuda_matches_float32(model: LandCoverRandAR) -> None:
    labels, order = labels_and_orders(2, 3)
    with torch.no_grad():
        logits, loss = model(labels, order)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fast_logits, fast_loss = model(labels, order)
    torch.testing.assert_close(fast_logits.float(), logits, atol=0.15, rtol=0.05)
    assert float(fast_loss) == pytest.approx(float(loss), rel=0.01)


def test_sampling_on_cuda_keeps_the_decoding_identities(model: LandCoverRandAR) -> None:
    """Cached sampling equals re-encoding every step, and one cell per parallel step equals sequential."""
    cached = decoding.sample(model, 2, generator=torch.Generator(device="cuda").manual_seed(4), temperature=0.8)
    naive = decoding.sample_naive(model, 2, generator=torch.Generator(device="cuda").manual_seed(4), temperature=0.8)
    assert cached.device.type == "cuda"
    assert torch.equal(cached, naive)
    sequential = decoding.sample(model, 2, steps=None, generator=torch.Generator(device="cuda").manual_seed(5))
    parallel = decoding.sample(model, 2, steps=N, generator=torch.Generator(device="cuda").manual_seed(5))
    assert torch.equal(sequential, parallel)


def test_auto_precision_is_bf16_mixed_on_this_gpu() -> None:
    expected = "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    assert resolve_precision("auto", "auto") == expected
    assert resolve_precision("auto", "cpu") == "32-true"
