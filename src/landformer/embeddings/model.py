"""The embeddings pipeline's networks, plain PyTorch (no Lightning, no files): the masked autoencoder of stage 1
and the Gaussian regressor of stages 2 and 3, around any patch encoder that :func:`build_encoder` picks from its
config (the ViT of :mod:`~landformer.embeddings.encoders` or a Qwen-VL tower of :mod:`~landformer.embeddings.qwen`).

The MAE (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners") follows the paper's steps:
:meth:`MaskedAutoencoder.patchify` the tile, :meth:`~MaskedAutoencoder.random_masking` (75 % of the patches, or of
the 2x2 blocks of a Qwen tower), :meth:`~MaskedAutoencoder.forward_encoder` on the visible patches only,
:meth:`~MaskedAutoencoder.forward_decoder` (a light transformer, 4 layers of 512 by default, that sees encoded
tokens plus a shared mask token at every hidden position) and :meth:`~MaskedAutoencoder.forward_loss`: the mean
squared error between predicted and true patches, each true patch normalized to zero mean and unit variance
(``norm_pix_loss``), over the masked patches only.

The :class:`Regressor` pools the encoder's patch tokens into a :class:`GaussianHead` that predicts a mean and a
log-variance of the standardized target; stage 3 needs that spread to draw preference pairs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from landformer.core.errors import UserError
from landformer.core.nn import Transformer
from landformer.embeddings.encoders import PatchEncoder, ViTEncoder
from landformer.embeddings.qwen import QwenVisionEncoder

LOG_VAR_RANGE = (-9.0, 4.0)  # standardized units: sd between 0.011 and 7.4


class MaskedAutoencoder(nn.Module):
    """MAE around any :class:`PatchEncoder`; the decoder predicts every patch's ``patch_dim`` values."""

    def __init__(
        self,
        encoder: PatchEncoder,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 4,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.decoder_embed = nn.Linear(encoder.width, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder = Transformer(decoder_dim, decoder_depth, decoder_heads, causal=False)
        self.decoder_pred = nn.Linear(decoder_dim, encoder.patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)

    def patchify(self, frames: Tensor) -> Tensor:
        return self.encoder.patchify(frames)

    def random_masking(
        self, batch: int, n_patches: int, device: torch.device, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Keep a random ``1 - mask_ratio`` of the masking groups of every sample.

        Returns the kept patch indices (B, L_keep), in increasing order, and the mask (B, L): 1 where a patch is
        hidden. Exactly ``n_groups - int(n_groups * (1 - mask_ratio))`` groups are hidden in every sample.
        """
        group = self.encoder.group_size
        n_groups = n_patches // group
        n_keep = max(1, int(n_groups * (1 - self.mask_ratio)))
        noise = torch.rand(batch, n_groups, device=device, generator=generator)
        keep_groups = torch.argsort(noise, dim=1)[:, :n_keep].sort(dim=1).values
        keep = (keep_groups[..., None] * group + torch.arange(group, device=device)).reshape(batch, -1)
        mask = torch.ones(batch, n_patches, device=device)
        mask.scatter_(1, keep, 0.0)
        return keep, mask

    def forward_encoder(self, patches: Tensor, positions: Tensor, keep: Tensor) -> Tensor:
        """Encode only the kept patches (B, L_keep, width)."""
        visible = patches.gather(1, keep[..., None].expand(-1, -1, patches.shape[-1]))
        visible_positions = positions.gather(1, keep[..., None].expand(-1, -1, positions.shape[-1]))
        return self.encoder.encode(visible, visible_positions)

    def forward_decoder(self, tokens: Tensor, keep: Tensor, positions: Tensor) -> Tensor:
        """Put the encoded tokens back at their places among mask tokens and predict every patch (B, L, patch_dim)."""
        batch, n_patches = positions.shape[:2]
        embedded = self.decoder_embed(tokens)
        full = self.mask_token.to(embedded.dtype).expand(batch, n_patches, -1).clone()
        full = full.scatter(1, keep[..., None].expand(-1, -1, embedded.shape[-1]), embedded)
        return self.decoder_pred(self.decoder(full, pos=positions.float()))

    def forward_loss(self, patches: Tensor, prediction: Tensor, mask: Tensor) -> Tensor:
        """Mean over hidden patches of the per-patch mean squared error (targets normalized per patch)."""
        target = patches
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = (prediction.float() - target.float()).pow(2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, frames: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Loss, prediction (B, L, patch_dim) and mask (B, L) for frames (B, F, C, H, W)."""
        patches = self.patchify(frames)
        batch, n_patches = patches.shape[:2]
        positions = self.encoder.patch_positions(frames.shape[-2], frames.shape[-1]).to(frames.device)
        positions = positions.unsqueeze(0).expand(batch, -1, -1)
        keep, mask = self.random_masking(batch, n_patches, frames.device, generator)
        tokens = self.forward_encoder(patches, positions, keep)
        prediction = self.forward_decoder(tokens, keep, positions)
        return self.forward_loss(patches, prediction, mask), prediction, mask


def mean_embedding(frames: Tensor) -> Tensor:
    """(B, F, C, H, W) -> (B, C): the mean of the first frame's pixel vectors over the pixels observed in every
    frame, the input of the ridge and kNN probes
    (:meth:`~landformer.embeddings.tiles.EmbeddingDataset.mean_embeddings`). Masked pixels arrive as zero vectors,
    and an observed embedding pixel is a unit vector, never zero."""
    observed = (frames.abs().amax(dim=2) > 0).all(dim=1).flatten(1).to(frames.dtype)  # (B, H*W)
    pixels = frames[:, 0].flatten(2)  # (B, C, H*W)
    return torch.einsum("bcp,bp->bc", pixels, observed) / observed.sum(dim=1, keepdim=True).clamp_min(1.0)


class LinearProbe(nn.Module):
    """A linear model of the standardized target on the tile's mean raw embedding, with the embedding standardized
    by fixed (buffered, exported) statistics: the ridge probe as a layer, so fine-tuning can start from it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(channels))
        self.register_buffer("feature_scale", torch.ones(channels))
        self.linear = nn.Linear(channels, 1)

    def forward(self, embedding: Tensor) -> Tensor:
        return self.linear((embedding - self.feature_mean) / self.feature_scale)[..., 0]

    @torch.no_grad()
    def set_from_ridge(self, ridge: Any, target_mean: float, target_scale: float) -> None:
        """Copy a fitted ridge probe (:func:`~landformer.embeddings.evaluate.fit_ridge_probe`, in target units)
        into this layer, converted to the standardized targets the heads predict."""
        scaler, model = ridge[0], ridge[-1]
        self.feature_mean.copy_(torch.as_tensor(scaler.mean_))
        self.feature_scale.copy_(torch.as_tensor(scaler.scale_))
        self.linear.weight.copy_(torch.as_tensor(model.coef_ / target_scale)[None])
        self.linear.bias.fill_((float(model.intercept_) - target_mean) / target_scale)


class GaussianHead(nn.Module):
    """Pooled features -> (mean, log-variance) of the standardized target.

    With ``probe_width`` the last ``probe_width`` feature columns are the tile's mean raw embedding, and a
    :class:`LinearProbe` on them is added to the mean (the deep part sees only the encoder features).
    """

    def __init__(self, width: int, hidden: int = 128, dropout: float = 0.1, probe_width: int = 0) -> None:
        super().__init__()
        self.width = width
        self.net = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 2),
        )
        self.probe = LinearProbe(probe_width) if probe_width else None

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(features[..., : self.width])
        mean = out[..., 0]
        if self.probe is not None:
            mean = mean + self.probe(features[..., self.width :])
        return mean, out[..., 1].clamp(*LOG_VAR_RANGE)


class Regressor(nn.Module):
    """Encoder + pooling of its patch tokens (:func:`~landformer.embeddings.encoders.pool_tokens`) + Gaussian head;
    with ``probe``, plus a linear probe on the tile's mean raw embedding (:class:`LinearProbe`)."""

    def __init__(
        self,
        encoder: PatchEncoder,
        head_hidden: int = 128,
        head_dropout: float = 0.1,
        pooling: str = "mean",
        probe: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.probe = probe
        probe_width = encoder.in_channels if probe else 0
        self.head = GaussianHead(encoder.pooled_width(pooling), head_hidden, head_dropout, probe_width)

    def features(self, frames: Tensor) -> Tensor:
        """The head's input: pooled encoder features, followed by the mean raw embedding when ``probe`` is set."""
        pooled = self.encoder.features(frames, self.pooling)
        if not self.probe:
            return pooled
        return torch.cat([pooled, mean_embedding(frames).to(pooled.dtype)], dim=-1)

    @torch.no_grad()
    def start_from_probe(self, ridge: Any, target_mean: float, target_scale: float) -> None:
        """Make the model's mean prediction exactly the ridge probe's (LP-FT, Kumar et al. 2022): the probe layer
        takes the ridge fit and the deep head's mean output starts at zero, so fine-tuning begins at the probe
        and the encoder's first gradients come from the probe's residuals, not from a random head."""
        if self.head.probe is None:
            raise ValueError("start_from_probe needs a Regressor built with probe=True")
        self.head.probe.set_from_ridge(ridge, target_mean, target_scale)
        last = self.head.net[-1]
        last.weight[0].zero_()
        last.bias[0].zero_()

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.features(frames))

    def log_prob(self, frames: Tensor, values: Tensor) -> Tensor:
        """Gaussian log-density of ``values`` (B,) or (B, K) under the prediction for each tile."""
        mean, log_var = self(frames)
        if values.ndim == 2:
            mean, log_var = mean[:, None], log_var[:, None]
        return gaussian_log_prob(values, mean, log_var)


def gaussian_log_prob(values: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    return -0.5 * ((values - mean) ** 2 * torch.exp(-log_var) + log_var + math.log(2 * math.pi))


def add_lora(encoder: nn.Module, rank: int, alpha: int, dropout: float, targets: list[str]) -> None:
    """Inject LoRA adapters into the encoder's matching linear layers and freeze everything else in it except
    the patch embedding (which is new for 64 channels and has to learn)."""
    # peft imports transformers (seconds); only LoRA runs need it, and it is an optional extra.
    from peft import LoraConfig, inject_adapter_in_model

    present = {name.rsplit(".", 1)[-1] for name, module in encoder.named_modules() if isinstance(module, nn.Linear)}
    chosen = [target for target in targets if target in present]
    if not chosen:
        raise UserError(f"sft.lora_targets {targets} match no linear layer of the encoder (it has: {sorted(present)})")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=chosen)
    inject_adapter_in_model(config, encoder)
    for name, param in encoder.named_parameters():
        param.requires_grad = "lora_" in name or "patch_embed" in name


def build_regressor(spec: Mapping[str, Any]) -> Regressor:
    """The Gaussian regressor that a task's hyperparameters or an exported model's JSON describe: ``encoder``,
    ``frames``, ``head_hidden``, ``head_dropout``, ``pooling`` (older exports: mean), ``probe`` (older exports:
    none) and optional ``lora``."""
    model = Regressor(
        build_encoder(spec["encoder"], spec["frames"]),
        spec["head_hidden"],
        spec["head_dropout"],
        spec.get("pooling", "mean"),
        bool(spec.get("probe", False)),
    )
    lora = spec.get("lora")
    if lora:
        add_lora(model.encoder, lora["rank"], lora["alpha"], lora["dropout"], lora["targets"])
    return model


def build_encoder(config: Any, frames: int) -> PatchEncoder:
    """The encoder an :class:`~landformer.embeddings.config.EncoderConfig`-like mapping describes.

    ``config`` is a plain dict (the form hyperparameters are saved in) or the dataclass; ``frames`` is how many
    years the data offers per tile (the encoder uses 2 only when ``temporal_pair`` is set).
    """
    values = config if isinstance(config, dict) else vars(config)
    use_frames = 2 if values.get("temporal_pair", True) and frames >= 2 else 1
    kind = values.get("kind", "vit")
    if kind == "vit":
        return ViTEncoder(
            in_channels=values["in_channels"],
            patch_size=values["patch_size"],
            dim=values["dim"],
            depth=values["depth"],
            heads=values["heads"],
            frames=use_frames,
            dropout=values.get("dropout", 0.0),
            mlp_ratio=values.get("mlp_ratio", 4.0),
            absolute_positions=values.get("absolute_positions", True),
        )
    return QwenVisionEncoder.from_config(values, use_frames)


def exported_encoder_config(values: dict[str, Any], encoder: PatchEncoder) -> dict[str, Any]:
    """The encoder config to save with trained weights: for a Qwen tower it carries the tower's architecture, so
    reloading builds the same network without the original checkpoint folder."""
    values = dict(values)
    plain_config = getattr(encoder, "plain_config", None)
    if plain_config is not None:
        values["tower_config"] = plain_config()
        values["pretrained"] = None
    return values


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
