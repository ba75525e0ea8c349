"""Stage 2: MaskGIT (Chang et al. 2022), a bidirectional transformer over token grids, and its decoding.

Plain PyTorch, no I/O, no Lightning (the training task lives in ``terrain/tasks.py``).

Training (paper section 3.2): draw r ~ U(0, 1), mask ``ceil(cos(pi/2 * r) * N)`` of the N tokens of a grid,
replace them by the [MASK] token and predict them; the cross-entropy counts masked positions only. Half of
the masks (``outpaint_mask_prob``) are instead drawn inside the shapes that outpainting asks the model to
fill (a tile between known neighbours, a strip along one side: see :func:`outpaint_region`), so the model
has seen every question :mod:`landformer.terrain.outpaint` puts to it.

Decoding (section 3.3): start from a grid whose unknown tokens are [MASK]; at step t of T, sample every masked
token, score each sample by its log-probability plus Gumbel noise scaled by ``choice_temperature * (1 - t/T)``
(randomness annealed to none), keep the most confident ones and re-mask the ``cos(pi/2 * (t+1)/T)`` share of
the originally unknown tokens that scored lowest. Known tokens are never changed. A grid of N tokens thus
takes T forward passes instead of the N of one-token-at-a-time decoding (:func:`decode_one_by_one`).

Positions enter only through 2-D rotary embeddings (relative positions), so a window anywhere in a larger
map is treated exactly like a training window. Optional conditioning: one categorical class per token
(climate zone, land cover, geology, ...) is embedded and added to the token embedding; the extra class
``n_condition_classes`` means "no condition" (used for condition dropout and for unconditional sampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landformer.core.nn import Transformer

OUTPAINT_SHAPES = ("tile_a", "tile_b", "tile_c", "tile_d", "strip")


@dataclass
class MaskGITModelConfig:
    vocab_size: int  # codes of the tokenizer; the [MASK] token is index vocab_size
    grid: int = 8  # side of the training window in tokens
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    dropout: float = 0.1
    rope_base: float = 100.0
    n_condition_classes: int = 0  # 0: unconditional

    @property
    def mask_id(self) -> int:
        return self.vocab_size


class MaskGIT(nn.Module):
    """Token (+ condition) embeddings -> bidirectional :class:`~landformer.core.nn.Transformer` -> code logits."""

    def __init__(self, config: MaskGITModelConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embed = nn.Embedding(config.vocab_size + 1, config.dim)
        self.condition_embed = (
            nn.Embedding(config.n_condition_classes + 1, config.dim) if config.n_condition_classes else None
        )
        self.transformer = Transformer(
            config.dim,
            config.n_layers,
            config.n_heads,
            causal=False,
            dropout=config.dropout,
            rope_base=config.rope_base,
        )
        self.head = nn.Linear(config.dim, config.vocab_size, bias=True)
        for embedding in (self.token_embed, self.condition_embed):
            if embedding is not None:
                nn.init.normal_(embedding.weight, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @staticmethod
    def positions(batch: int, height: int, width: int, device: torch.device) -> Tensor:
        """(B, H*W, 2) float (row, col) of every token of an H x W grid, row-major."""
        rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        pos = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1).float().to(device)
        return pos.unsqueeze(0).expand(batch, -1, -1)

    def forward(self, tokens: Tensor, condition: Tensor | None = None) -> Tensor:
        """(B, H, W) tokens (``mask_id`` where unknown), optional (B, H, W) classes -> (B, H, W, vocab) logits."""
        batch, height, width = tokens.shape
        x = self.token_embed(tokens.reshape(batch, -1))
        if self.condition_embed is not None:
            if condition is None:
                condition = torch.full_like(tokens, self.config.n_condition_classes)
            x = x + self.condition_embed(condition.reshape(batch, -1))
        x = self.transformer(x, pos=self.positions(batch, height, width, tokens.device))
        return self.head(x).view(batch, height, width, -1)


# ------------------------------------------------------------------------------------------------ masking


def cosine_mask_ratio(progress: Tensor | float) -> Tensor:
    """gamma(r) = cos(pi/2 * r): 1 (all masked) at r = 0, 0 at r = 1."""
    return torch.cos(math.pi / 2 * torch.as_tensor(progress, dtype=torch.float64))


def mask_within(region: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mask ``ceil(gamma(r) * |region|)`` (at least one) random positions of each sample's region, r ~ U(0, 1).

    ``region`` is (B, H, W) bool; positions outside it are never masked. With a full region this is MaskGIT's
    training mask.
    """
    batch = region.shape[0]
    flat = region.reshape(batch, -1)
    sizes = flat.sum(dim=1)
    r = torch.rand(batch, generator=generator, dtype=torch.float64)
    counts = torch.ceil(cosine_mask_ratio(r) * sizes).clamp(min=1).to(torch.int64)
    counts = torch.minimum(counts, sizes)
    scores = torch.rand(flat.shape, generator=generator)
    scores[~flat] = 2.0  # outside the region: ranked last, never chosen
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return (ranks < counts.unsqueeze(1)).view_as(region)


def outpaint_region(shape: str, grid: int, tile: int) -> Tensor:
    """(grid, grid) bool: the tokens a window of :mod:`landformer.terrain.outpaint` leaves unknown.

    ``tile_a``..``tile_d`` are the windows of the four phases of the endless-terrain scheme (a tile of side
    ``tile`` in the middle of the window, with the neighbours of earlier phases known), ``strip`` is the last
    ``tile`` columns of a window that extends a map to the right.
    """
    margin = (grid - tile) // 2
    unknown = torch.zeros(grid, grid, dtype=torch.bool)
    inner = slice(margin, margin + tile)
    if shape == "tile_a":  # nothing known yet
        unknown[:] = True
    elif shape == "tile_b":  # left and right neighbours known
        unknown[:, inner] = True
        unknown[:margin, :] = True
        unknown[margin + tile :, :] = True
    elif shape == "tile_c":  # above, below and the four diagonal neighbours known
        unknown[inner, :] = True
    elif shape == "tile_d":  # the whole ring known
        unknown[inner, inner] = True
    elif shape == "strip":
        unknown[:, grid - tile :] = True
    else:
        raise ValueError(f"unknown outpainting shape {shape!r} (choose from {', '.join(OUTPAINT_SHAPES)})")
    return unknown


def training_mask(
    batch: int, grid: int, tile: int, outpaint_prob: float, generator: torch.Generator | None = None
) -> Tensor:
    """(B, grid, grid) bool training masks: MaskGIT's random masks, and with probability ``outpaint_prob``
    random masks inside a randomly oriented outpainting region."""
    regions = torch.ones(batch, grid, grid, dtype=torch.bool)
    use_shape = torch.rand(batch, generator=generator) < outpaint_prob
    shapes = torch.randint(len(OUTPAINT_SHAPES), (batch,), generator=generator)
    turns = torch.randint(4, (batch,), generator=generator)
    for index in use_shape.nonzero().flatten().tolist():
        region = outpaint_region(OUTPAINT_SHAPES[int(shapes[index])], grid, tile)
        regions[index] = torch.rot90(region, int(turns[index]))
    return mask_within(regions, generator)


def masked_token_loss(logits: Tensor, targets: Tensor, mask: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of (B, H, W, V) logits against (B, H, W) targets over the masked positions only."""
    return F.cross_entropy(logits[mask].float(), targets[mask], label_smoothing=label_smoothing)


# ------------------------------------------------------------------------------------------------ decoding


def steps_for(n_unknown: int, n_tokens: int, steps: int) -> int:
    """Decoding steps for a window with ``n_unknown`` of ``n_tokens`` unknown: ``steps`` for a fully masked
    window, proportionally fewer (at least 2) for fewer unknowns, so tokens per step stay about the same."""
    return max(2, min(n_unknown, math.ceil(steps * n_unknown / n_tokens))) if n_unknown > 1 else 1


def gumbel_noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    uniform = torch.rand(shape, generator=generator).clamp(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(uniform))


def sample_categorical(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One index per row of (M, V) probabilities by inverse-CDF sampling (one uniform number per row, several
    times cheaper on the CPU than ``torch.multinomial``'s exponential race)."""
    cdf = probs.cumsum(dim=-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(1).clamp_max(probs.shape[-1] - 1)


def _logits(model: MaskGIT, tokens: Tensor, condition: Tensor | None, bf16: bool) -> Tensor:
    with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=bf16):
        return model(tokens, condition)


@torch.inference_mode()
def decode(
    model: MaskGIT,
    tokens: Tensor,
    known: Tensor,
    steps: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    choice_temperature: float = 4.5,
    condition: Tensor | None = None,
    bf16: bool = False,
) -> Tensor:
    """Fill the unknown tokens of (B, H, W) ``tokens`` (``known`` says which are given) in ``steps`` passes.

    Random numbers come from ``generator`` (on the CPU), so the result is fixed by its seed. Every sample of
    the batch must have the same number of unknown tokens (true for the windows of one outpainting phase).
    ``bf16`` runs the network under bfloat16 autocast (about twice as fast on recent CPUs and on GPUs).
    """
    model.eval()
    device = tokens.device
    batch, height, width = tokens.shape
    n_tokens = height * width
    known_flat = known.reshape(batch, -1).to(device)
    unknown_counts = (~known_flat).sum(dim=1)
    if (unknown_counts != unknown_counts[0]).any():
        raise ValueError("decode() needs the same number of unknown tokens in every sample of a batch")
    n_unknown = int(unknown_counts[0])
    current = torch.where(known_flat, tokens.reshape(batch, -1), model.config.mask_id)
    still_masked = ~known_flat
    for step in range(steps):
        masked_cpu = still_masked.cpu()
        n_masked = int(masked_cpu[0].sum())
        if n_masked == 0:
            break
        logits = _logits(model, current.view(batch, height, width), condition, bf16).reshape(batch, n_tokens, -1)
        # Only masked positions are sampled and scored: known and already-kept tokens never change.
        probs = F.softmax(logits[still_masked].float().cpu() / max(temperature, 1e-6), dim=-1)
        sampled = sample_categorical(probs, generator)
        confidence = torch.log(probs.gather(-1, sampled.unsqueeze(-1)).squeeze(-1).clamp_min(1e-30))
        progress = (step + 1) / steps
        confidence = confidence + choice_temperature * (1.0 - progress) * gumbel_noise(confidence.shape, generator)
        current = current.clone()
        current[still_masked] = sampled.to(device)
        n_remask = math.floor(float(cosine_mask_ratio(progress)) * n_unknown)
        n_remask = max(0, min(n_remask, n_masked - 1))
        ranks = confidence.view(batch, n_masked).argsort(dim=1).argsort(dim=1)
        remask = torch.zeros(batch, n_tokens, dtype=torch.bool)
        remask[masked_cpu] = (ranks < n_remask).reshape(-1)
        remask = remask.to(device)
        current = torch.where(remask, model.config.mask_id, current)
        still_masked = remask
    return current.view(batch, height, width)


@torch.inference_mode()
def decode_one_by_one(
    model: MaskGIT,
    tokens: Tensor,
    known: Tensor,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    condition: Tensor | None = None,
    bf16: bool = False,
) -> Tensor:
    """The slow reference: fill unknown tokens one per forward pass, in raster order, with the same network."""
    model.eval()
    batch, height, width = tokens.shape
    current = torch.where(known, tokens, model.config.mask_id).reshape(batch, -1)
    unknown = (~known).reshape(batch, -1)
    for position in unknown.any(dim=0).nonzero().flatten().tolist():
        logits = _logits(model, current.view(batch, height, width), condition, bf16).reshape(batch, height * width, -1)
        probs = F.softmax(logits[:, position].float().cpu() / max(temperature, 1e-6), dim=-1)
        sampled = sample_categorical(probs, generator).to(tokens.device)
        current[:, position] = torch.where(unknown[:, position], sampled, current[:, position])
    return current.view(batch, height, width)
