"""Patch encoders for 64-channel embedding tiles: the interface and the built-in ViT here, the Qwen-VL towers in
:mod:`~landformer.embeddings.qwen`; :func:`~landformer.embeddings.model.build_encoder` picks one from its config.

Every encoder works on *patches*: :meth:`PatchEncoder.patchify` cuts frames (B, F, C, H, W) into a sequence
(B, L, patch_dim) in the encoder's own order, :meth:`PatchEncoder.patch_positions` gives each patch's (row, col)
in patch units, and :meth:`PatchEncoder.encode` maps any subset of patches (with their positions) to tokens. The
MAE drops patches before :meth:`encode`; regression encodes them all and mean-pools. ``group_size`` patches in a
row form one masking unit (1 for the ViT; the 2x2 merge block for Qwen, whose merger needs whole blocks).

Plain PyTorch, no I/O.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from landformer.core.nn import Transformer, swiglu_hidden


class PatchEncoder(nn.Module):
    """Interface of the encoders (a base class so the MAE and the regression head can rely on it)."""

    in_channels: int  # channels per pixel of the input tiles (64 for embeddings)
    patch_dim: int  # values per patch: the MAE's reconstruction target
    width: int  # channels of the output tokens
    group_size: int  # consecutive patches masked together
    patch_size: int
    frames: int  # frames (years) one patch holds

    def patchify(self, frames: Tensor) -> Tensor:
        raise NotImplementedError

    def patch_positions(self, height: int, width: int) -> Tensor:
        raise NotImplementedError

    def encode(self, patches: Tensor, positions: Tensor) -> Tensor:
        raise NotImplementedError

    def tokens(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """(B, F, C, H, W) -> tokens (B, L, width) of every patch and their (L, 2) patch positions."""
        patches = self.patchify(frames)
        positions = self.patch_positions(frames.shape[-2], frames.shape[-1]).to(frames.device)
        return self.encode(patches, positions.unsqueeze(0).expand(len(patches), -1, -1)), positions

    def features(self, frames: Tensor, pooling: str = "mean") -> Tensor:
        """(B, F, C, H, W) -> (B, pooled_width(pooling)): the pooled patch tokens (the regression input)."""
        return pool_tokens(*self.tokens(frames), pooling)

    def pooled_width(self, pooling: str) -> int:
        return self.width * POOLING_PARTS[pooling]

    def check_tile(self, height: int, width: int) -> None:
        """Raise ValueError if tiles of this size cannot be cut into whole patches (and groups)."""
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"tile {height}x{width} is not a whole number of {self.patch_size}-pixel patches")


POOLING_PARTS = {"mean": 1, "stats": 3}  # pooled width / token width


def pool_tokens(tokens: Tensor, positions: Tensor, pooling: str = "mean") -> Tensor:
    """Pool (B, L, D) patch tokens at (L, 2) positions into one vector per tile.

    ``mean``: the mean token. ``stats``: the mean token, the mean of the tokens of the tile's middle half (patches
    within a quarter of the side from the centre on both axes) and the per-channel standard deviation over the
    tokens. When the label belongs to the tile's centre (a city), the centre tokens say what surrounds that place,
    and the spread says how mixed the tile is: both are lost by a plain mean, which is all the probes see.
    """
    if pooling not in POOLING_PARTS:
        raise ValueError(f"pooling {pooling!r} is not one of {sorted(POOLING_PARTS)}")
    mean = tokens.mean(dim=1)
    if pooling == "mean":
        return mean
    extent = positions.amax(dim=0).float() + 1.0  # patches per side (rows, cols)
    offset = (positions.float() - (extent - 1.0) / 2.0).abs()
    centre = (offset <= extent / 4.0).all(dim=1)
    return torch.cat([mean, tokens[:, centre].mean(dim=1), tokens.std(dim=1, unbiased=False)], dim=-1)


def take_frames(frames: Tensor, count: int) -> Tensor:
    """The first ``count`` frames of (B, F, C, H, W); a single frame is repeated when ``count`` asks for more."""
    if frames.ndim != 5:
        raise ValueError(f"expected frames of shape (B, F, C, H, W), got {tuple(frames.shape)}")
    if frames.shape[1] >= count:
        return frames[:, :count]
    return frames[:, :1].expand(-1, count, -1, -1, -1)


def sincos_2d(positions: Tensor, dim: int, base: float = 10_000.0) -> Tensor:
    """Fixed 2-D sine-cosine embedding (B, L, dim) of (row, col) positions (B, L, 2), as the MAE encoder uses:
    the first half of the channels encodes the row, the second the column, ``dim / 4`` frequencies each."""
    quarter = dim // 4
    frequencies = base ** (-torch.arange(quarter, device=positions.device, dtype=torch.float32) / quarter)
    angles = positions.float()[..., None] * frequencies  # (B, L, 2, quarter)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


class ViTEncoder(PatchEncoder):
    """A plain ViT on 64-channel patches: linear patch embedding, non-causal :class:`Transformer` blocks with 2-D
    RoPE (so a subset of patches keeps its positions without a position table), no class token.

    RoPE only tells tokens where they are relative to each other; the fixed sine-cosine embedding of the absolute
    patch position (``absolute_positions``) also tells them where they are in the tile, which matters when the
    label belongs to the tile's centre (a city). With ``frames = 2`` a patch stacks both years' pixels, so the
    embedding sees change between them.
    """

    def __init__(
        self,
        in_channels: int = 64,
        patch_size: int = 4,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        frames: int = 1,
        dropout: float = 0.0,
        mlp_ratio: float = 4.0,
        absolute_positions: bool = True,
    ) -> None:
        super().__init__()
        if dim % 4:
            raise ValueError(f"ViT width {dim} should be divisible by 4")
        self.in_channels = in_channels
        self.absolute_positions = absolute_positions
        self.patch_size = patch_size
        self.frames = frames
        self.patch_dim = frames * in_channels * patch_size * patch_size
        self.width = dim
        self.group_size = 1
        self.input_scale = math.sqrt(in_channels)  # unit-length pixels -> components of about unit variance
        self.patch_embed = nn.Linear(self.patch_dim, dim)
        hidden = swiglu_hidden(dim, ratio=mlp_ratio * 2 / 3)
        self.transformer = Transformer(dim, depth, heads, mlp_hidden=hidden, causal=False, dropout=dropout)
        nn.init.xavier_uniform_(self.patch_embed.weight)  # as MAE: like a linear layer, not a conv
        nn.init.zeros_(self.patch_embed.bias)

    def patchify(self, frames: Tensor) -> Tensor:
        """(B, F, C, H, W) -> (B, L, F*C*P*P), patches in row-major order."""
        x = take_frames(frames, self.frames)
        batch, count, channels, height, width = x.shape
        self.check_tile(height, width)
        p = self.patch_size
        x = x.reshape(batch, count, channels, height // p, p, width // p, p)
        return x.permute(0, 3, 5, 1, 2, 4, 6).reshape(batch, (height // p) * (width // p), -1)

    def unpatchify(self, patches: Tensor, height: int, width: int) -> Tensor:
        """Inverse of :meth:`patchify` (for pictures of reconstructions)."""
        p = self.patch_size
        batch = patches.shape[0]
        x = patches.reshape(batch, height // p, width // p, self.frames, self.in_channels, p, p)
        return x.permute(0, 3, 4, 1, 5, 2, 6).reshape(batch, self.frames, self.in_channels, height, width)

    def patch_positions(self, height: int, width: int) -> Tensor:
        rows, cols = torch.meshgrid(
            torch.arange(height // self.patch_size), torch.arange(width // self.patch_size), indexing="ij"
        )
        return torch.stack([rows.flatten(), cols.flatten()], dim=-1)

    def encode(self, patches: Tensor, positions: Tensor) -> Tensor:
        tokens = self.patch_embed(patches * self.input_scale)
        if self.absolute_positions:
            tokens = tokens + sincos_2d(positions, self.width).to(tokens.dtype)
        return self.transformer(tokens, pos=positions.float())
