"""Lightning tasks of the two terrain stages: the VQGAN-style tokenizer and the MaskGIT generator.

The tokenizer trains two networks against each other, so it optimises manually: per batch one step of the
tokenizer (reconstruction + adversarial loss) and, once the discriminator is on, one step of the
discriminator. ``global_step`` (and so ``max_steps``) counts tokenizer steps only: the discriminator's step
goes straight to its torch optimiser. Gradients are clipped here (Lightning's automatic clipping does not
apply to manual optimisation), and fp16 mixed precision, which needs a gradient scaler per optimiser, is not
supported (fp32 and bf16 are).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from landformer.core.task import BaseTask, warmup_cosine
from landformer.terrain.export import load_vgg_features
from landformer.terrain.model import (
    MaskGIT,
    MaskGITModelConfig,
    PatchDiscriminator,
    PerceptualLoss,
    TokenizerModelConfig,
    VQTokenizer,
    adaptive_weight,
    gan_scale,
    gradient_loss,
    hinge_d_loss,
    masked_token_loss,
    spectral_loss,
    training_mask,
)

D_LOSS_SMOOTHING = 0.95  # exponential moving average of the discriminator loss that gan_scale reads
# Checkpoints keep the tokenizer task's network under its name from before it became ``self.model``.
CHECKPOINT_PREFIX = "tokenizer."

C = TypeVar("C")


def config_from_hparams(config_class: type[C], hparams: Mapping[str, Any]) -> C:
    """The network config of a task from its hyperparameters, field by field of ``config_class``.

    A field the hyperparameters lack or leave at None takes the config's default: checkpoints from before a field
    existed (``upsample``) and tasks built without ``fsq_levels`` get the network they were trained with.
    """
    names = [field.name for field in dataclasses.fields(config_class)]  # type: ignore[arg-type]
    return config_class(**{name: hparams[name] for name in names if hparams.get(name) is not None})


def renamed_weights(state: Mapping[str, Tensor], old_prefix: str, new_prefix: str) -> dict[str, Tensor]:
    """``state`` with every key that starts with ``old_prefix`` starting with ``new_prefix`` instead."""
    return {
        new_prefix + key.removeprefix(old_prefix) if key.startswith(old_prefix) else key: value
        for key, value in state.items()
    }


class TokenizerTask(BaseTask):
    """VQ tokenizer trained with L1 + slope + spectral (+ optional perceptual) losses and a PatchGAN."""

    d_loss_ema: Tensor

    def __init__(
        self,
        channels: int = 32,
        downsample: int = 4,
        res_blocks: int = 1,
        quantizer: str = "vq",
        codebook_size: int = 512,
        code_dim: int = 8,
        fsq_levels: list[int] | None = None,
        commitment: float = 0.25,
        upsample: str = "nearest",
        disc_channels: int = 32,
        disc_layers: int = 2,
        l1_weight: float = 1.0,
        gradient_weight: float = 1.0,
        spectral_weight: float = 0.1,
        perceptual_weights: str | None = None,
        perceptual_weight: float = 0.1,
        disc_start: int = 100,
        disc_weight: float = 0.1,
        disc_high_loss: float = 0.9,
        disc_low_loss: float = 0.6,
        gradient_clip: float = 1.0,
        disc_lr: float = 2e-3,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 20,
        max_steps: int = 1000,
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__(
            lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio
        )
        self.automatic_optimization = False
        self.register_buffer("d_loss_ema", torch.tensor(1.0))  # hinge loss at chance: the GAN starts switched off
        self._val_counts: Tensor | None = None

    @property
    def model_config(self) -> TokenizerModelConfig:
        return config_from_hparams(TokenizerModelConfig, self.hparams)

    def configure_models(self) -> None:
        config = self.model_config
        self.model = VQTokenizer(config)
        self.discriminator = PatchDiscriminator(config.disc_channels, config.disc_layers)
        self.perceptual: PerceptualLoss | None = None
        if self.hparams.perceptual_weights:
            self.perceptual = PerceptualLoss(load_vgg_features(self.hparams.perceptual_weights))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints name the tokenizer's weights ``tokenizer.*``, as before the task held it as ``self.model``,
        so runs started by either layout resume and tools reading checkpoints see one layout."""
        checkpoint["state_dict"] = renamed_weights(checkpoint["state_dict"], "model.", CHECKPOINT_PREFIX)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = renamed_weights(checkpoint["state_dict"], CHECKPOINT_PREFIX, "model.")

    def reconstruction_losses(self, x: Tensor, rec: Tensor) -> dict[str, Tensor]:
        hp = self.hparams
        losses = {
            "l1": F.l1_loss(rec, x),
            "gradient": gradient_loss(rec, x),
            "spectral": spectral_loss(rec, x),
        }
        total = hp.l1_weight * losses["l1"] + hp.gradient_weight * losses["gradient"]
        total = total + hp.spectral_weight * losses["spectral"]
        if self.perceptual is not None:
            losses["perceptual"] = self.perceptual(rec, x)
            total = total + hp.perceptual_weight * losses["perceptual"]
        losses["reconstruction"] = total
        return losses

    def compute_loss(self, batch: Any) -> dict[str, Tensor]:
        """Reconstruction losses of one batch (validation, and the tokenizer half of a training step)."""
        x = batch["elevation"]
        rec, indices, quant_loss = self.model(x)
        losses = self.reconstruction_losses(x, rec)
        losses["quantization"] = quant_loss
        losses["loss"] = losses["reconstruction"] + quant_loss
        losses["l1_metres"] = ((rec - x).abs().mean(dim=(1, 2, 3)) * batch["scale"]).mean()
        self._last_outputs = (x, rec, indices)
        return losses

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        hp = self.hparams
        opt_g, opt_d = self.optimizers()
        sched_g, sched_d = self.lr_schedulers()
        losses = self.compute_loss(batch)
        x, rec, _ = self._last_outputs
        loss = losses["loss"]
        gan_on = self.global_step >= hp.disc_start
        if gan_on:
            g_loss = -self.discriminator(rec).mean()
            scale = gan_scale(float(self.d_loss_ema), hp.disc_high_loss, hp.disc_low_loss)
            d_weight = torch.zeros((), device=x.device)
            if scale > 0:
                d_weight = adaptive_weight(losses["reconstruction"], g_loss, self.model.last_layer) * hp.disc_weight
                d_weight = d_weight * scale
            loss = loss + d_weight * g_loss
            losses.update(g_loss=g_loss.detach(), d_weight=d_weight, gan_scale=torch.tensor(scale))
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if hp.gradient_clip:
            self.clip_gradients(opt_g, gradient_clip_val=hp.gradient_clip, gradient_clip_algorithm="norm")
        opt_g.step()
        sched_g.step()
        if gan_on:
            d_loss = hinge_d_loss(self.discriminator(x.detach()), self.discriminator(rec.detach()))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            if hp.gradient_clip:
                torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), hp.gradient_clip)
            opt_d.optimizer.step()  # the raw optimiser: global_step counts tokenizer steps only
            sched_d.step()
            self.d_loss_ema.mul_(D_LOSS_SMOOTHING).add_((1 - D_LOSS_SMOOTHING) * d_loss.detach())
            losses["d_loss"] = d_loss.detach()
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log_dict({f"train/{name}": value.detach().float() for name, value in losses.items() if name != "loss"})
        return loss.detach()

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(self.model.vocab_size, dtype=torch.int64, device=self.device)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        _, _, indices = self._last_outputs
        assert self._val_counts is not None
        self._val_counts += torch.bincount(indices.reshape(-1), minlength=self.model.vocab_size)

    def on_validation_epoch_end(self) -> None:
        """Codebook usage over the whole validation epoch: the share of codes used at least once, and the
        perplexity exp(entropy) of their frequencies (equal to the vocabulary size for uniform use)."""
        if self._val_counts is None:
            return
        counts = self.trainer.strategy.reduce(self._val_counts.float(), reduce_op="sum")
        total = counts.sum().clamp_min(1.0)
        probs = counts / total
        entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
        self.log("val/codes_used", (counts > 0).sum().float())
        self.log("val/codebook_usage", (counts > 0).float().mean())
        self.log("val/perplexity", entropy.exp())

    def configure_optimizers(self) -> Any:
        """One AdamW with betas (0.5, 0.9), as is usual for GANs, per network (BaseTask's single optimiser over
        all parameters does not fit two players), each on the shared warmup-cosine schedule."""
        hp = self.hparams
        optimizers = [
            torch.optim.AdamW(network.parameters(), lr=lr, betas=(0.5, 0.9), weight_decay=hp.weight_decay)
            for network, lr in ((self.model, hp.lr), (self.discriminator, hp.disc_lr))
        ]
        warmup, total, floor = hp.warmup_steps, hp.max_steps, hp.min_lr_ratio
        schedules = [
            torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, warmup, total, floor))
            for opt in optimizers
        ]
        return optimizers, schedules


class MaskGITTask(BaseTask):
    """MaskGIT on pre-computed token grids: cosine-schedule masks (and outpainting-shaped ones), loss on masked
    tokens only, condition dropout for classifier-free use."""

    def __init__(
        self,
        vocab_size: int = 512,
        grid: int = 8,
        tile: int = 4,
        dim: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        dropout: float = 0.1,
        rope_base: float = 100.0,
        n_condition_classes: int = 0,
        outpaint_mask_prob: float = 0.5,
        condition_dropout: float = 0.1,
        label_smoothing: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 20,
        max_steps: int = 1000,
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__(
            lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio
        )
        self._val_batch = 0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._val_batch = batch_idx
        super().validation_step(batch, batch_idx)

    @property
    def model_config(self) -> MaskGITModelConfig:
        return config_from_hparams(MaskGITModelConfig, self.hparams)

    def configure_models(self) -> None:
        self.model = MaskGIT(self.model_config)

    def compute_loss(self, batch: Any) -> dict[str, Tensor]:
        hp = self.hparams
        tokens = batch["tokens"]
        # Validation draws the same masks every epoch (seeded by the batch), so its loss curve is not noise.
        generator = None if self.training else torch.Generator().manual_seed(self._val_batch)
        mask = training_mask(len(tokens), hp.grid, hp.tile, hp.outpaint_mask_prob, generator).to(tokens.device)
        inputs = tokens.masked_fill(mask, self.model.config.mask_id)
        condition = batch.get("condition")
        if condition is not None and self.training and hp.condition_dropout > 0:
            dropped = torch.rand(len(tokens), device=tokens.device) < hp.condition_dropout
            condition = condition.masked_fill(dropped[:, None, None], hp.n_condition_classes)
        logits = self.model(inputs, condition)
        loss = masked_token_loss(logits, tokens, mask, hp.label_smoothing if self.training else 0.0)
        accuracy = (logits[mask].argmax(dim=-1) == tokens[mask]).float().mean()
        return {"loss": loss, "masked_accuracy": accuracy, "masked_fraction": mask.float().mean()}
