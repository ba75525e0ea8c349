"""The embeddings pipeline's LightningModules, one per training stage, each holding its network as ``self.model``.

- :class:`MAETask` (stage 1, pretrain): the :class:`~landformer.embeddings.model.MaskedAutoencoder`.
- :class:`RegressionTask` (stage 2, sft): the Gaussian :class:`~landformer.embeddings.model.Regressor`. Training is
  staged: for the first ``freeze_steps`` the encoder is frozen (run without gradients, and its learning rate held
  at 0) while the head learns from scratch on pretrained features; then the encoder joins at ``encoder_lr_scale``
  times the head's learning rate, so fine-tuning does not wreck the pretrained features with the large early
  gradients of a random head. The mean is trained with the squared error (so it is the same estimate an MSE
  regressor gives), the variance with the Gaussian negative log-likelihood of the *detached* mean (so learning the
  spread never pulls the mean). Validation R2 (``val/r2_deficit`` = 1 - R2, since the trainer minimizes) picks the
  best checkpoint and stops training early.
- :class:`DPOTask` (stage 3, dpo): direct preference optimization (Rafailov et al. 2023) of the regressor, the
  policy pi(y | tile) = N(y; mean, variance). For preference pairs drawn from the frozen SFT model (the reference,
  whose log-densities arrive with each pair) it minimizes

      -log sigmoid(beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])

  which raises the policy's density at chosen numbers and lowers it at rejected ones relative to the reference.
  When chosen and rejected are equal the bracket is zero whatever the parameters, so such a pair gives no gradient.
  ``beta`` sets how far the policy may drift from the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from landformer.core.task import BaseTask
from landformer.core.train import log_images, shows_images
from landformer.embeddings.evaluate import regression_metrics, save_scatter
from landformer.embeddings.model import MaskedAutoencoder, build_encoder, build_regressor, gaussian_log_prob


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
        self.model = MaskedAutoencoder(
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
        loss, _, _ = self.model(batch["frames"], generator=generator)
        return {"loss": loss}


def log_validation_r2(task: BaseTask, outputs: list[tuple[Tensor, Tensor]]) -> None:
    """Log the epoch's R2 of (prediction, truth) pairs as ``val/r2``, and ``val/r2_deficit`` = 1 - R2, the
    quantity early stopping minimises; empties ``outputs`` for the next epoch."""
    if not outputs:
        return
    prediction = torch.cat([p for p, _ in outputs]).numpy()
    truth = torch.cat([t for _, t in outputs]).numpy()
    outputs.clear()
    r2 = regression_metrics(truth, prediction)["r2"] if len(truth) > 1 else float("nan")
    task.log("val/r2", r2, prog_bar=True)
    task.log("val/r2_deficit", 1.0 - r2)
    trainer = task.trainer
    if shows_images(trainer) and not trainer.sanity_checking:
        # The validation scatter at every validation, in TensorBoard and W&B and as images/val_scatter_<step>.png.
        step = task.global_step
        path = Path(trainer.default_root_dir) / "images" / f"val_scatter_{step:07d}.png"
        scatter = save_scatter(path, truth, {"model": prediction}, f"validation tiles, step {step}")
        log_images(trainer, {"regression/validation": scatter}, step)


class RegressionTask(BaseTask):
    """Lightning task of the SFT stage: staged unfreezing, validation R2 for early stopping."""

    def __init__(
        self,
        encoder: dict[str, Any],
        frames: int = 1,
        head_hidden: int = 128,
        head_dropout: float = 0.1,
        pooling: str = "mean",
        probe: bool = False,
        probe_lr_scale: float = 1.0,
        freeze_steps: int = 0,
        encoder_lr_scale: float = 0.1,
        lora: dict[str, Any] | None = None,
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 20,
        max_steps: int = 400,
        min_lr_ratio: float = 0.05,
    ) -> None:
        super().__init__(lr, weight_decay, warmup_steps, max_steps, min_lr_ratio)
        self._val_outputs: list[tuple[Tensor, Tensor]] = []

    def configure_models(self) -> None:
        self.model = build_regressor(self.hparams)

    def encoder_frozen(self) -> bool:
        return self.training and self.global_step < self.hparams.freeze_steps

    def compute_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen()):
            features = self.model.features(batch["frames"])
        mean, log_var = self.model.head(features)
        target = batch["target"]
        mse = (mean - target).pow(2).mean()
        nll = -gaussian_log_prob(target, mean.detach(), log_var).mean()
        return {"loss": mse + nll, "mse": mse, "nll": nll}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        mean, _ = self.model(batch["frames"])
        self._val_outputs.append((mean.detach().float().cpu(), batch["target"].detach().float().cpu()))

    def on_validation_epoch_end(self) -> None:
        log_validation_r2(self, self._val_outputs)

    def parameter_parts(self) -> list[tuple[torch.nn.Module, float, int]]:
        """The head at ``lr`` from the start (its linear probe at ``lr * probe_lr_scale``); the encoder at
        ``lr * encoder_lr_scale`` from ``freeze_steps`` on."""
        hp = self.hparams
        head = self.model.head
        parts = [(head.net, 1.0, 0), (self.model.encoder, hp.encoder_lr_scale, hp.freeze_steps)]
        if head.probe is not None:
            parts.append((head.probe, hp.probe_lr_scale, 0))
        return parts


def dpo_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor, reference_rejected: Tensor, beta: float
) -> tuple[Tensor, Tensor]:
    """Mean DPO loss and the per-pair logits ``beta * (chosen log-ratio - rejected log-ratio)``."""
    logits = beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))
    return -F.logsigmoid(logits).mean(), logits


class DPOTask(BaseTask):
    """Lightning task of the DPO stage; ``self.model`` is the policy. The frozen reference is not part of the task:
    its log-densities of both values travel with each pair (:class:`~landformer.embeddings.data.PairDataset`), so
    it is evaluated once, not at every step. ``inputs`` are pooled features when the encoder is frozen, else
    frames."""

    def __init__(
        self,
        encoder: dict[str, Any],
        frames: int = 1,
        head_hidden: int = 128,
        head_dropout: float = 0.1,
        pooling: str = "mean",
        probe: bool = False,
        lora: dict[str, Any] | None = None,
        beta: float = 0.1,
        train_encoder: bool = False,
        encoder_lr_scale: float = 0.1,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 10,
        max_steps: int = 150,
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__(lr, weight_decay, warmup_steps, max_steps, min_lr_ratio)
        self._val_outputs: list[tuple[Tensor, Tensor]] = []

    def configure_models(self) -> None:
        self.model = build_regressor(self.hparams)
        if not self.hparams.train_encoder:
            self.model.encoder.requires_grad_(False)

    def head_outputs(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        features = self.model.features(inputs) if self.hparams.train_encoder else inputs
        return self.model.head(features)

    def compute_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        mean, log_var = self.head_outputs(batch["inputs"])
        chosen = gaussian_log_prob(batch["chosen"], mean, log_var)
        rejected = gaussian_log_prob(batch["rejected"], mean, log_var)
        loss, logits = dpo_loss(chosen, rejected, batch["reference"][:, 0], batch["reference"][:, 1], self.hparams.beta)
        return {"loss": loss, "reward_accuracy": (logits > 0).float().mean(), "margin": logits.mean()}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        mean, _ = self.head_outputs(batch["inputs"])
        self.log("val/loss", (mean - batch["target"]).pow(2).mean(), on_epoch=True, sync_dist=True)
        self._val_outputs.append((mean.detach().float().cpu(), batch["target"].detach().float().cpu()))

    def on_validation_epoch_end(self) -> None:
        log_validation_r2(self, self._val_outputs)

    def parameter_parts(self) -> list[tuple[torch.nn.Module, float, int]]:
        """Head and encoder at their own rates from the start (the SFT stage already unfroze the encoder)."""
        return [(self.model.head, 1.0, 0), (self.model.encoder, self.hparams.encoder_lr_scale, 0)]
