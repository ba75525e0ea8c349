"""Shared transformer parts: RMSNorm, SwiGLU, 2-D rotary embedding, SDPA attention with a KV cache, blocks.

Plain PyTorch, no pipeline knowledge. The land-cover RandAR model, terrain's MaskGIT and the embeddings ViT
all build on :class:`Transformer`; each brings its own token embeddings and output head.

Positions are 2-D (row, col) per token, given as a float tensor of shape (B, T, 2). They are per token and per
sample because a random-order model sees a different permutation of the cells in every sample of a batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (no mean subtraction, no bias), computed in float32 for bf16 stability.

    The residual stream is float32 also under bf16 autocast, so the usual input goes through torch's fused
    kernel without a copy; only a lower-precision input is copied to float32 first.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


class SwiGLU(nn.Module):
    """Gated feed-forward layer ``w2(silu(w1 x) * w3 x)`` (Shazeer 2020), the Llama MLP."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def swiglu_hidden(dim: int, ratio: float = 8 / 3, multiple_of: int = 16) -> int:
    """Hidden width of a SwiGLU with about the parameters of a ``4 * dim`` GELU MLP, rounded for fast matmuls."""
    return multiple_of * math.ceil(ratio * dim / multiple_of)


class RoPE2D(nn.Module):
    """Two-dimensional rotary position embedding.

    The last dimension ``dim`` is split into ``dim / 2`` rotation pairs (i, i + dim/2). The first half of the
    pairs rotates with the row, the second half with the column, each with ``dim / 4`` frequencies
    ``base ** (-j / (dim / 4))``. A dot product between a vector rotated at (r1, c1) and one rotated at (r2, c2)
    then depends only on (r1 - r2, c1 - c2). Positions may be fractional (e.g. the centre of a patch).
    """

    inv_freq: Tensor

    def __init__(self, dim: int, base: float = 100.0) -> None:
        super().__init__()
        if dim % 4 != 0:
            raise ValueError(f"RoPE2D needs a dimension divisible by 4, got {dim}")
        quarter = dim // 4
        inv_freq = base ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Rotation tables of shape (B, T, 1, dim) for positions (B, T, 2); share them across layers.

        Cosines of the dim/2 angles, twice, and their sines with the first copy negated: with them,
        :func:`apply_rotary` is two whole-width products instead of four half-width ones.
        """
        angles = torch.cat([pos[..., 0:1] * self.inv_freq, pos[..., 1:2] * self.inv_freq], dim=-1)
        angles = angles.unsqueeze(-2)
        cos, sin = angles.cos(), angles.sin()
        return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)

    def rotate(self, x: Tensor, pos: Tensor) -> Tensor:
        """Rotate ``x`` of shape (B, T, H, dim) by the positions (B, T, 2) of its tokens."""
        cos, sin = self(pos)
        return apply_rotary(x, cos, sin)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the pairs (i, i + D/2) of ``x`` (B, T, ..., D) by the tables of :meth:`RoPE2D.forward`
    (B, T, 1, ..., D): ``(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)``.

    Computed in ``x``'s dtype: a rotation keeps norms, so bf16 loses nothing here that bf16 storage of ``x`` has
    not already lost, and float32 copies of q and k in every layer would cost more than the rotation.
    """
    half = x.shape[-1] // 2
    swapped = torch.cat([x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + swapped * sin.to(x.dtype)


def causal_after_cache(length: int, start: int, device: torch.device, fused_bias: bool | None = None) -> Tensor:
    """Attention mask for ``length`` queries that follow ``start`` cached keys: query i sees keys 0 .. start + i.

    On CUDA (``fused_bias`` None picks by device) this is torch's lower-right causal bias, which the fused
    memory-efficient kernel applies without a materialised mask; elsewhere a boolean (T, start + T) mask, which
    the CPU flash kernel takes as it is. Both give the same attention.
    """
    if fused_bias if fused_bias is not None else device.type == "cuda":
        from torch.nn.attention.bias import causal_lower_right

        return causal_lower_right(length, start + length)
    query_index = torch.arange(length, device=device).unsqueeze(1) + start
    return torch.arange(start + length, device=device) <= query_index


class KVCache:
    """Keys and values of one attention layer, preallocated to ``max_len`` tokens for a whole batch.

    Storage is allocated on the first :meth:`append` so it takes the dtype and device of the keys (bf16 under
    autocast). :meth:`truncate` drops the newest tokens, which lets a decoder run throw-away query tokens
    through the network and keep only the tokens it commits.
    """

    def __init__(self, batch_size: int, n_heads: int, head_dim: int, max_len: int) -> None:
        self.shape = (batch_size, n_heads, max_len, head_dim)
        self.max_len = max_len
        self.length = 0
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v of shape (B, H, T, Dh) after the cached tokens; return all cached keys and values."""
        if self.k is None or self.v is None:
            self.k = torch.zeros(self.shape, dtype=k.dtype, device=k.device)
            self.v = torch.zeros(self.shape, dtype=v.dtype, device=v.device)
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens > max_len {self.max_len}")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def truncate(self, length: int) -> None:
        """Forget every token from index ``length`` on (they are overwritten by the next append)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        self.length = length


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    ``causal`` decides the default mask; an explicit boolean ``attn_mask`` (True = may attend, broadcastable to
    (B, H, T_query, T_key)) replaces it entirely. With a cache, queries sit after the cached tokens, so the
    default causal mask is offset accordingly.
    """

    def __init__(self, dim: int, n_heads: int, causal: bool, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % n_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.causal = causal
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.n_heads, self.head_dim)
        if rope is not None:
            # q and k rotate in one pass: the angles broadcast over the (q, k) axis.
            cos, sin = rope
            q, k = apply_rotary(qkv[:, :, :2], cos.unsqueeze(2), sin.unsqueeze(2)).unbind(dim=2)
            v = qkv[:, :, 2]
        else:
            q, k, v = qkv.unbind(dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        start = 0
        if cache is not None:
            start = cache.length
            k, v = cache.append(k, v)
        is_causal = False
        if attn_mask is None and self.causal and length > 1:
            if start == 0:
                is_causal = True
            else:
                attn_mask = causal_after_cache(length, start, x.device)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )
        y = y.transpose(1, 2).reshape(batch, length, dim)
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    """Pre-norm transformer block: attention then SwiGLU, each added back to the residual stream."""

    def __init__(self, dim: int, n_heads: int, mlp_hidden: int, causal: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(dim)
        self.attn = Attention(dim, n_heads, causal=causal, dropout=dropout)
        self.mlp_norm = RMSNorm(dim)
        self.mlp = SwiGLU(dim, mlp_hidden, dropout=dropout)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        x = x + self.attn(self.attn_norm(x), rope=rope, cache=cache, attn_mask=attn_mask)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """A stack of :class:`Block` with a final RMSNorm; 2-D RoPE on queries and keys when ``rope_base`` is set.

    Takes and returns embeddings (B, T, dim): token embeddings and output heads belong to the model using it.
    Linear weights start at N(0, 0.02), and the projections back into the residual stream at
    N(0, 0.02 / sqrt(2 * n_layers)) so the residual variance does not grow with depth (GPT-2).
    """

    def __init__(
        self,
        dim: int,
        n_layers: int,
        n_heads: int,
        mlp_hidden: int | None = None,
        causal: bool = True,
        dropout: float = 0.0,
        rope_base: float | None = 100.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        hidden = mlp_hidden or swiglu_hidden(dim)
        self.causal = causal
        self.blocks = nn.ModuleList(Block(dim, n_heads, hidden, causal, dropout) for _ in range(n_layers))
        self.norm = RMSNorm(dim)
        self.rope = RoPE2D(self.head_dim, rope_base) if rope_base is not None else None
        for name, param in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("w2.weight"):
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * n_layers))
            elif param.dim() == 2:
                nn.init.normal_(param, std=0.02)

    def make_caches(self, batch_size: int, max_len: int) -> list[KVCache]:
        """One empty :class:`KVCache` per layer, each holding up to ``max_len`` tokens."""
        return [KVCache(batch_size, self.n_heads, self.head_dim, max_len) for _ in self.blocks]

    def forward(
        self,
        x: Tensor,
        pos: Tensor | None = None,
        caches: list[KVCache] | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Run (B, T, dim) embeddings at positions (B, T, 2) through every block; append to ``caches`` if given."""
        rope = self.rope(pos) if self.rope is not None and pos is not None else None
        length = x.shape[1]
        if attn_mask is None and caches is not None and caches[0].length > 0 and length > 1 and self.causal:
            # One mask for every layer rather than one per layer: decoding steps are short, so this shows.
            attn_mask = causal_after_cache(length, caches[0].length, x.device)
        for index, block in enumerate(self.blocks):
            x = block(x, rope=rope, cache=caches[index] if caches is not None else None, attn_mask=attn_mask)
        return self.norm(x)
