"""The Lightning task for one geoloc model: a region's coordinate regressor or the region router.

``mode="regress"``: MSE between predicted and true scaled local coordinates (what the original work optimised
and printed). ``mode="route"``: cross-entropy over Region_ID classes, with accuracy logged. Both train with
AdamW (weight decay on matrices only, from :class:`~landformer.core.task.BaseTask`) and a per-step
CosineAnnealingWarmRestarts schedule (first cycle ``t_0`` steps, each next cycle ``t_mult`` times longer).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from landformer.core.errors import UserError
from landformer.core.io import load_torch, require_file
from landformer.core.task import BaseTask
from landformer.geoloc.model import ImageRegressor, adapt_pretrained_state

MODES = ("regress", "route")


class GeolocTask(BaseTask):
    """A timm backbone with a regression (2 outputs) or routing (``n_outputs`` regions) head."""

    def __init__(
        self,
        backbone: str = "resnet10t",
        in_chans: int = 3,
        n_outputs: int = 2,
        mode: str = "regress",
        drop_rate: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        t_0: int = 200,
        t_mult: int = 2,
        min_lr_ratio: float = 0.01,
        max_steps: int = 1000,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        super().__init__(
            lr=lr, weight_decay=weight_decay, warmup_steps=0, max_steps=max_steps, min_lr_ratio=min_lr_ratio
        )

    def configure_models(self) -> None:
        hp = self.hparams
        self.model = ImageRegressor(hp.backbone, hp.in_chans, hp.n_outputs, hp.drop_rate)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def compute_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        # Losses in float32 even under bf16 autocast, so a mean over the batch is not rounded to 8 bits.
        outputs = self(batch["image"]).float()
        if self.hparams.mode == "regress":
            squared = (outputs - batch["target"].float()) ** 2
            return {"loss": squared.mean(), "mse_lat": squared[:, 0].mean(), "mse_lon": squared[:, 1].mean()}
        labels = batch["region"]
        return {
            "loss": F.cross_entropy(outputs, labels),
            "accuracy": (outputs.argmax(dim=1) == labels).float().mean(),
        }

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = super().configure_optimizers()["optimizer"]
        scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer,
            T_0=self.hparams.t_0,
            T_mult=self.hparams.t_mult,
            eta_min=self.hparams.lr * self.hparams.min_lr_ratio,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def read_weights(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A state dict from a ``.safetensors`` file or a torch file read with ``weights_only=True``; checkpoints that
    wrap it under ``state_dict`` or ``model`` are unwrapped."""
    path = require_file(path, "pretrained weights")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise UserError(f"pretrained weights {path} are not a readable safetensors file: {err}") from None
    state = load_torch(path, "pretrained weights")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(value, Tensor) for value in state.values()):
        raise UserError(f"pretrained weights {path} hold no state dict of tensors")
    return state


def load_pretrained_backbone(task: GeolocTask, path: str | os.PathLike[str]) -> list[str]:
    """Load local pretrained weights into the task's backbone (first conv adapted to the image bands); returns
    the keys of the file that the backbone does not use (typically the old classifier)."""
    try:
        state, dropped = adapt_pretrained_state(task.model.backbone, read_weights(path))
    except ValueError as err:
        raise UserError(f"pretrained weights {path} for {task.hparams.backbone}: {err}") from None
    task.model.backbone.load_state_dict(state)
    return dropped
