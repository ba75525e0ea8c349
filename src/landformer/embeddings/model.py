"""Stage 1: masked-autoencoder pretraining on 64-channel embedding tiles (He et al. 2022, "Masked Autoencoders
Are Scalable Vision Learners").

The steps are the paper's: :meth:`MaskedAutoencoder.patchify` the tile, :meth:`~MaskedAutoencoder.random_masking`
(75 % of the patches, or of the 2x2 blocks of a Qwen tower), :meth:`~MaskedAutoencoder.forward_encoder` on the
visible patches only, :meth:`~MaskedAutoencoder.forward_decoder` (a light transformer, 4 layers of 512 by default,
that sees encoded tokens plus a shared mask token at every hidden position) and
:meth:`~MaskedAutoencoder.forward_loss`: the mean squared error between predicted and true patches, each true
patch normalized to zero mean and unit variance (``norm_pix_loss``), over the masked patches only.

:func:`pretrain` runs the stage from a recipe and exports the encoder for fine-tuning.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landformer.core.config import to_dict
from landformer.core.errors import UserError
from landformer.core.io import write_json
from landformer.core.nn import Transformer
from landformer.core.task import BaseTask, ImagesEvery
from landformer.core.train import fit, last_checkpoint, prepare_run, seed_everything
from landformer.core.viz import save_png
from landformer.embeddings.config import EmbeddingsConfig
from landformer.embeddings.encoders import PatchEncoder, build_encoder, count_parameters
from landformer.embeddings.pipeline import load_data, make_loaders, save_encoder, set_threads


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


class MAETask(BaseTask):
    """Lightning task of the MAE; validation masks are drawn from a generator seeded by the batch, so the
    validation loss of two checkpoints compares the same masks."""

    def __init__(
        self,
        encoder: dict[str, Any],
        frames: int = 1,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 4,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
        lr: float = 1.5e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 20,
        max_steps: int = 300,
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__(lr, weight_decay, warmup_steps, max_steps, min_lr_ratio)

    def configure_models(self) -> None:
        hp = self.hparams
        self.mae = MaskedAutoencoder(
            build_encoder(hp.encoder, hp.frames),
            mask_ratio=hp.mask_ratio,
            decoder_dim=hp.decoder_dim,
            decoder_depth=hp.decoder_depth,
            decoder_heads=hp.decoder_heads,
            norm_pix_loss=hp.norm_pix_loss,
        )

    def compute_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        generator = None
        if not self.training:
            generator = torch.Generator(device=batch["frames"].device).manual_seed(int(batch["index"][0]))
        loss, _, _ = self.mae(batch["frames"], generator=generator)
        return {"loss": loss}


def build_mae_task(config: EmbeddingsConfig, frames: int) -> MAETask:
    mae = config.mae
    return MAETask(
        encoder=to_dict(config.encoder),
        frames=frames,
        mask_ratio=mae.mask_ratio,
        decoder_dim=mae.decoder_dim,
        decoder_depth=mae.decoder_depth,
        decoder_heads=mae.decoder_heads,
        norm_pix_loss=mae.norm_pix_loss,
        lr=mae.lr,
        weight_decay=mae.weight_decay,
        warmup_steps=mae.warmup_steps,
        max_steps=config.train_pretrain.max_steps,
        min_lr_ratio=mae.min_lr_ratio,
    )


def pretrain(
    config: EmbeddingsConfig, run_dir: str | os.PathLike[str], resume: bool | str | os.PathLike[str] = False
) -> dict[str, Any]:
    """Pretrain the encoder with the MAE on the training tiles (never the validation or test ones), export the
    best checkpoint's encoder as ``encoder.safetensors`` + ``encoder.json`` and draw ``reconstructions.png``.
    Returns a summary, also written to ``summary.json``."""
    start = time.perf_counter()
    run_dir = Path(run_dir)
    config.validate()
    if resume is False and last_checkpoint(run_dir) is not None:
        raise UserError(f"{run_dir} already holds a training run (checkpoints/last.ckpt): resume it or choose another")
    prepare_run(run_dir, config, "embeddings pretrain")
    set_threads(config)
    dataset = load_data(config.data, config.encoder.in_channels)
    train_loader, val_loader = make_loaders(dataset, config.data, 0.0, 1.0)
    seed_everything(config.train_pretrain.seed)
    task = build_mae_task(config, dataset.n_frames)
    try:
        task.mae.encoder.check_tile(dataset.tile_size, dataset.tile_size)
    except ValueError as err:
        raise UserError(f"embeddings encoder: {err} (change encoder.patch_size)") from None
    shown = dataset.indices("val")[:6]
    pictures = ImagesEvery(
        lambda task: {"mae/reconstructions": reconstruction_grid(task.mae, dataset, shown)},
        config.train_pretrain.val_every_steps,
    )
    result = fit(task, (train_loader, val_loader), config.train_pretrain, run_dir, resume=resume, callbacks=[pictures])
    checkpoint = result.load_best_into(task)
    task.eval()
    meta = {
        "stage": "pretrain",
        "encoder": to_dict(config.encoder),
        "frames": dataset.n_frames,
        "tile_size": dataset.tile_size,
        "checkpoint": str(checkpoint),
        "global_step": result.global_step,
    }
    weights = save_encoder(run_dir, task.mae.encoder, meta)
    picture = save_png(run_dir / "reconstructions.png", reconstruction_grid(task.mae, dataset, shown))
    summary = {
        "run_dir": str(run_dir),
        "encoder": str(weights),
        "reconstructions": str(picture),
        "checkpoint": str(checkpoint),
        "global_step": result.global_step,
        "val_loss": result.metrics.get("val/loss"),
        "encoder_parameters": count_parameters(task.mae.encoder),
        "n_train_tiles": len(dataset.indices("train")),
        "fit_seconds": round(result.seconds, 2),
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(run_dir / "summary.json", summary)
    return summary


@torch.no_grad()
def reconstruction_grid(mae: MaskedAutoencoder, dataset: Any, indices: np.ndarray) -> np.ndarray:
    """Rows of (tile, masked tile, reconstruction), each shown through the tile's first three principal axes.

    Reconstructions are un-normalized with the true patch's mean and spread (as in the MAE paper's figures). The
    tiles go to the model's device, so this also draws while training on a GPU.
    """
    from landformer.core.viz import image_grid, upscale

    device = next(mae.parameters()).device
    frames = torch.from_numpy(dataset.tiles[indices]).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    _, prediction, mask = mae(frames, generator=generator)
    patches = mae.patchify(frames)
    if mae.norm_pix_loss:
        mean = patches.mean(dim=-1, keepdim=True)
        std = (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        prediction = prediction * std + mean
    shown = torch.where(mask[..., None].bool(), prediction, patches).cpu()
    masked = torch.where(mask[..., None].bool(), torch.zeros_like(patches), patches).cpu()
    patches = patches.cpu()
    size = dataset.tile_size
    cells = []
    for row in range(len(indices)):
        images = [_patches_to_tile(mae.encoder, p[row : row + 1], size) for p in (patches, masked, shown)]
        basis = _principal_axes(images[0])
        cells.extend(upscale(_as_rgb(image, basis), max(1, 96 // size)) for image in images)
    return image_grid(cells, ncols=3)


def _patches_to_tile(encoder: PatchEncoder, patches: Tensor, size: int) -> np.ndarray:
    """(1, L, patch_dim) -> (C, H, W) of the first frame, by inverting the encoder's patch order.

    Patchifying a probe whose first frame holds each pixel's flat index (and -1 in any second frame) tells where
    every patch value came from.
    """
    count = encoder.in_channels * size * size
    probe = torch.full((1, max(encoder.frames, 1), encoder.in_channels, size, size), -1.0, dtype=torch.float64)
    probe[0, 0] = torch.arange(count, dtype=torch.float64).reshape(encoder.in_channels, size, size)
    source = encoder.patchify(probe).reshape(-1).long()
    values = patches.reshape(-1).double()
    tile = torch.zeros(count, dtype=torch.float64)
    first_frame = source >= 0
    tile[source[first_frame]] = values[first_frame]
    return tile.reshape(encoder.in_channels, size, size).numpy()


def _principal_axes(tile: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    flat = tile.reshape(tile.shape[0], -1)
    mean = flat.mean(axis=1, keepdims=True)
    _, _, vt = np.linalg.svd((flat - mean).T, full_matrices=False)
    projected = vt[:3] @ (flat - mean)
    return mean, vt[:3], np.percentile(projected, 2, axis=1), np.percentile(projected, 98, axis=1)


def _as_rgb(tile: np.ndarray, basis: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    mean, axes, low, high = basis
    projected = axes @ (tile.reshape(tile.shape[0], -1) - mean)
    scaled = np.clip((projected - low[:, None]) / np.maximum(high - low, 1e-9)[:, None], 0, 1)
    return (scaled.T.reshape(tile.shape[1], tile.shape[2], 3) * 255).astype(np.uint8)
