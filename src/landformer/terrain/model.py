"""The terrain networks, in plain PyTorch (no I/O, no Lightning): the two stages and their config dataclasses.

Training tasks live in ``terrain/task.py``; saving and loading in ``terrain/export.py``.

**Stage 1, the VQ tokenizer** (with its losses and a PatchGAN discriminator). The encoder maps a normalised
elevation tile (see ``terrain/data.py``) of S x S pixels to an S/f x S/f grid of latent vectors, the quantizer
snaps each to one of a finite set of codes (the token), and the decoder maps the codes back to elevation. Two
quantizers keep the whole codebook in use:

* ``vq``: codes are l2-normalised vectors in a low-dimensional space (Yu et al. 2022, "Vector-quantized image
  modeling with improved VQGAN"): looking up by cosine similarity in 8 dimensions leaves few codes unused;
* ``fsq``: finite scalar quantization (Mentzer et al. 2023): each of a few latent dimensions is bounded and
  rounded to ``L_i`` levels, so the "codebook" is the implicit grid of prod(L_i) points, with no code to die.

Every layer is local (convolutions, per-pixel channel norms; no GroupNorm, which would mix statistics over
the whole input), so decoding a large token grid window by window with a margin of
:meth:`VQTokenizer.decoder_margin` tokens gives the same pixels as decoding it whole.

**Stage 2, MaskGIT** (Chang et al. 2022), a bidirectional transformer over token grids, and its decoding.

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
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landformer.core.nn import Transformer
from landformer.terrain.config import MaskGITModelConfig, TokenizerModelConfig

# ================================================================================================ stage 1: tokenizer


class ChannelNorm(nn.Module):
    """Layer norm over the channels of each pixel separately (local, unlike GroupNorm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    """Pre-norm residual block of two 3x3 convolutions (a 1x1 skip when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = ChannelNorm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = ChannelNorm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """(B, 1, S, S) elevation -> (B, latent_dim, S/f, S/f) latents."""

    def __init__(self, config: TokenizerModelConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(1, config.channels, 3, padding=1)
        layers: list[nn.Module] = []
        width = config.channels
        for level in range(config.n_down):
            for _ in range(config.res_blocks):
                layers.append(ResBlock(width, config.level_channels(level)))
                width = config.level_channels(level)
            layers.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.down = nn.Sequential(*layers)
        self.mid = ResBlock(width, config.level_channels(config.n_down))
        width = config.level_channels(config.n_down)
        self.norm_out = ChannelNorm(width)
        self.conv_out = nn.Conv2d(width, config.latent_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, latent_dim, h, w) codes -> (B, 1, h*f, w*f) elevation."""

    def __init__(self, config: TokenizerModelConfig) -> None:
        super().__init__()
        width = config.level_channels(config.n_down)
        self.conv_in = nn.Conv2d(config.latent_dim, width, 3, padding=1)
        self.mid = ResBlock(width, width)
        layers: list[nn.Module] = []
        for level in reversed(range(config.n_down)):
            for _ in range(config.res_blocks):
                layers.append(ResBlock(width, config.level_channels(level)))
                width = config.level_channels(level)
            layers.extend([nn.Upsample(scale_factor=2, mode=config.upsample), nn.Conv2d(width, width, 3, padding=1)])
        self.up = nn.Sequential(*layers)
        self.out_block = ResBlock(width, width)
        self.norm_out = ChannelNorm(width)
        self.conv_out = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.out_block(self.up(self.mid(self.conv_in(z))))
        return self.conv_out(F.silu(self.norm_out(h)))


class L2Quantizer(nn.Module):
    """Nearest code by cosine similarity among ``codebook_size`` l2-normalised ``code_dim``-vectors.

    Codebook loss pulls codes to the encoder outputs, the commitment loss (weight ``commitment``) pulls the
    encoder to its codes; gradients pass the rounding straight through.
    """

    def __init__(self, codebook_size: int, code_dim: int, commitment: float) -> None:
        super().__init__()
        self.codebook = nn.Embedding(codebook_size, code_dim)
        nn.init.normal_(self.codebook.weight)
        self.commitment = commitment

    def codes(self) -> Tensor:
        return F.normalize(self.codebook.weight, dim=1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(quantised latents with straight-through gradients, indices (B, h, w), quantisation loss)."""
        z = F.normalize(z, dim=1)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        codes = self.codes()
        indices = (flat @ codes.T).argmax(dim=1)
        quantized = codes[indices].view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        loss = F.mse_loss(quantized, z.detach()) + self.commitment * F.mse_loss(z, quantized.detach())
        quantized = z + (quantized - z).detach()
        return quantized, indices.view(z.shape[0], z.shape[2], z.shape[3]), loss

    def lookup(self, indices: Tensor) -> Tensor:
        """(B, h, w) indices -> (B, code_dim, h, w) codes."""
        return self.codes()[indices].permute(0, 3, 1, 2)


class FSQuantizer(nn.Module):
    """Finite scalar quantization: dimension i is squashed into ``levels[i]`` values and rounded.

    ``tanh`` bounds each dimension to an interval holding exactly L integers (shifted by a half for even L),
    rounding picks one, and the code is that integer divided by ``L // 2`` so all dimensions share a range.
    The token is the mixed-radix number of the integers.
    """

    basis: Tensor
    levels_tensor: Tensor

    def __init__(self, levels: list[int]) -> None:
        super().__init__()
        levels_tensor = torch.tensor(levels, dtype=torch.int64)
        basis = torch.cumprod(torch.tensor([1, *levels[:-1]], dtype=torch.int64), dim=0)
        self.register_buffer("levels_tensor", levels_tensor, persistent=False)
        self.register_buffer("basis", basis, persistent=False)

    def _bound(self, z: Tensor) -> Tensor:
        levels = self.levels_tensor.to(z.dtype).view(1, -1, 1, 1)
        half = (levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self.levels_tensor.view(1, -1, 1, 1) % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        bounded = self._bound(z)
        rounded = bounded + (bounded.round() - bounded).detach()
        half_width = (self.levels_tensor // 2).view(1, -1, 1, 1)
        digits = (rounded.detach().round().long() + half_width).clamp(min=0)
        indices = (digits * self.basis.view(1, -1, 1, 1)).sum(dim=1)
        return rounded / half_width.to(z.dtype), indices, z.new_zeros(())

    def lookup(self, indices: Tensor) -> Tensor:
        digits = (indices.unsqueeze(1) // self.basis.view(1, -1, 1, 1)) % self.levels_tensor.view(1, -1, 1, 1)
        half_width = (self.levels_tensor // 2).view(1, -1, 1, 1)
        return ((digits - half_width).float() / half_width.float()).to(torch.get_default_dtype())


class VQTokenizer(nn.Module):
    """Encoder, quantizer and decoder; ``forward`` reconstructs, ``encode``/``decode_indices`` cross the tokens."""

    def __init__(self, config: TokenizerModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer: L2Quantizer | FSQuantizer = (
            L2Quantizer(config.codebook_size, config.code_dim, config.commitment)
            if config.quantizer == "vq"
            else FSQuantizer(list(config.fsq_levels))
        )
        self.decoder = Decoder(config)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def downsample(self) -> int:
        return self.config.downsample

    @property
    def last_layer(self) -> Tensor:
        """The decoder's output weights, where taming's adaptive GAN weight compares gradient norms."""
        return self.decoder.conv_out.weight

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, 1, S, S) normalised elevation -> (codes, indices (B, S/f, S/f), quantisation loss)."""
        if x.shape[-1] % self.downsample or x.shape[-2] % self.downsample:
            raise ValueError(
                f"input side {tuple(x.shape[-2:])} is not a multiple of the downsampling {self.downsample}"
            )
        return self.quantizer(self.encoder(x))

    def decode(self, codes: Tensor) -> Tensor:
        return self.decoder(codes)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """(B, h, w) token indices -> (B, 1, h*f, w*f) normalised elevation."""
        return self.decoder(self.quantizer.lookup(indices).to(self.last_layer.dtype))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction, indices, quantisation loss)."""
        codes, indices, loss = self.encode(x)
        return self.decode(codes), indices, loss

    def decoder_margin(self) -> int:
        """Tokens of context on each side that decoding a window needs to match decoding the whole grid.

        Every 3x3 convolution widens the receptive field by one pixel of its resolution, i.e. 2**-k tokens at
        the k-th upsampling; nearest upsampling adds at most one token's worth in total, bilinear up to one more.
        """
        config = self.config
        radius = 1.0 + 2.0  # conv_in and the two convolutions of the middle block, at token resolution
        for step, _level in enumerate(reversed(range(config.n_down))):
            resolution = 2.0**-step
            radius += 2 * config.res_blocks * resolution  # residual blocks before this upsampling
            radius += 2.0 ** -(step + 1)  # the convolution after it
        radius += 3 * 2.0**-config.n_down  # output block and conv_out at full resolution
        return math.ceil(radius) + (2 if config.upsample == "bilinear" else 1)

    def encoder_margin(self) -> int:
        """Tokens of context on each side that encoding a window needs to give the tokens of the whole map.

        As for :meth:`decoder_margin`: one pixel of its resolution per 3x3 convolution (conv_in, the residual
        blocks and the strided convolution of each level, the middle block), plus one token for the strides.
        """
        config = self.config
        radius = 2.0**-config.n_down  # conv_in at full resolution
        for level in range(config.n_down):
            resolution = 2.0 ** (level - config.n_down)
            radius += (2 * config.res_blocks + 1) * resolution  # residual blocks and the strided convolution
        radius += 2.0  # the middle block at token resolution
        return math.ceil(radius) + 1


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): one real/fake logit per overlapping patch of the elevation tile."""

    def __init__(self, channels: int = 32, n_layers: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for index in range(1, n_layers):
            out = channels * min(2**index, 8)
            layers += [nn.Conv2d(width, out, 4, stride=2, padding=1), nn.GroupNorm(8, out), nn.LeakyReLU(0.2)]
            width = out
        out = channels * min(2**n_layers, 8)
        layers += [nn.Conv2d(width, out, 4, stride=1, padding=1), nn.GroupNorm(8, out), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(out, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# ------------------------------------------------------------------------------------------------ losses


def gradient_loss(reconstruction: Tensor, target: Tensor) -> Tensor:
    """L1 between the slopes (finite differences along rows and columns) of two elevation batches."""
    dy = (reconstruction.diff(dim=-2) - target.diff(dim=-2)).abs().mean()
    dx = (reconstruction.diff(dim=-1) - target.diff(dim=-1)).abs().mean()
    return (dx + dy) / 2


def log_power_spectrum(x: Tensor, eps: float = 1e-3) -> Tensor:
    """log(|FFT|^2 + eps) of the last two dimensions (orthonormal FFT, so white noise has flat power 1)."""
    spectrum = torch.fft.rfft2(x.float(), norm="ortho")
    return torch.log(spectrum.real.square() + spectrum.imag.square() + eps)


def spectral_loss(reconstruction: Tensor, target: Tensor, scales: tuple[int, ...] = (1, 2, 4)) -> Tensor:
    """L1 between log power spectra at several scales (average-pooled by 1, 2, 4): keeps the roughness of
    terrain at every wavelength, which L1 alone smooths away."""
    total = reconstruction.new_zeros((), dtype=torch.float32)
    used = 0
    for scale in scales:
        if reconstruction.shape[-1] // scale < 4:
            continue
        rec = F.avg_pool2d(reconstruction, scale) if scale > 1 else reconstruction
        tgt = F.avg_pool2d(target, scale) if scale > 1 else target
        total = total + (log_power_spectrum(rec) - log_power_spectrum(tgt)).abs().mean()
        used += 1
    return total / max(used, 1)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Hinge loss of the discriminator: 1.0 when it outputs 0 everywhere (chance), 0 when it separates by 1."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """Taming's balance of the adversarial term: ||d rec / d W|| / ||d g / d W|| at the decoder's last layer W,
    so the GAN gradient reaching the decoder has the size of the reconstruction gradient."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def gan_scale(d_loss: float, high: float, low: float) -> float:
    """How much of the adversarial weight to apply given the discriminator's recent hinge loss.

    A discriminator near chance (loss ``high`` or more) has nothing useful to teach the decoder, so its weight
    is 0; it grows linearly to 1 as the loss falls to ``low``. The generator thus backs off whenever it is
    winning, and the discriminator gets time to catch up: neither side collapses.
    """
    if high <= low:
        return 1.0
    return float(min(max((high - d_loss) / (high - low), 0.0), 1.0))


class PerceptualLoss(nn.Module):
    """Distance between VGG16 features of two elevation batches (each replicated to three channels).

    Only used when the user supplies local torchvision VGG16 weights (nothing is downloaded); the feature maps
    of the first three stages are compared after unit-normalising each pixel's feature vector (as LPIPS does).
    """

    STAGE_ENDS = (4, 9, 16)  # indices after relu1_2, relu2_2, relu3_3 in torchvision's vgg16().features

    def __init__(self, features_state: Mapping[str, Tensor]) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers  # optional and slow to import: only for this loss

        # Only the convolutional stages (torchvision's VGG16 "D" layout); the classifier is never built.
        self.features = make_layers(cfgs["D"], batch_norm=False)[: self.STAGE_ENDS[-1]]
        wanted = {key: value for key, value in features_state.items() if int(key.split(".")[0]) < self.STAGE_ENDS[-1]}
        self.features.load_state_dict(wanted)
        self.features.requires_grad_(False).eval()

    def forward(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        x, y = reconstruction.repeat(1, 3, 1, 1), target.repeat(1, 3, 1, 1)
        total = x.new_zeros(())
        for index, layer in enumerate(self.features):
            x, y = layer(x), layer(y)
            if index + 1 in self.STAGE_ENDS:
                total = total + (F.normalize(x, dim=1) - F.normalize(y, dim=1)).square().sum(dim=1).mean()
        return total / len(self.STAGE_ENDS)


# ================================================================================================ stage 2: MaskGIT

OUTPAINT_SHAPES = ("tile_a", "tile_b", "tile_c", "tile_d", "strip")


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
