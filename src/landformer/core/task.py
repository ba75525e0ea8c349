"""``BaseTask``: the LightningModule every pipeline's task subclasses.

A pipeline task lists its own plain, typed ``__init__`` arguments (model sizes, loss weights) and passes the
optimisation arguments on to ``BaseTask.__init__``. ``save_hyperparameters`` then records the arguments of the
whole chain of constructors, so a checkpoint rebuilds the task with ``Task.load_from_checkpoint``. Subclasses
build their networks in :meth:`configure_models` and compute losses in :meth:`compute_loss`; logging, the AdamW
optimiser and the warmup-cosine schedule live here once.

Hyperparameters must be plain values (bool, int, float, str, None and lists/tuples/dicts of them): checkpoints
are resumed with ``torch.load(weights_only=True)``, which refuses anything else, so a config dataclass or a Path
passed to ``__init__`` would make the run impossible to resume. :meth:`BaseTask.__init__` checks this up front.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning
import torch
from torch import Tensor

PLAIN_SCALARS = (bool, int, float, str, type(None))


def _check_plain(value: Any, name: str) -> None:
    """Raise TypeError if ``value`` holds anything ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(value, PLAIN_SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{name}[{index}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"hyperparameter {name} has a key of type {type(key).__name__}; use str or int")
            _check_plain(item, f"{name}.{key}")
        return
    raise TypeError(
        f"hyperparameter {name} is a {type(value).__name__}; task arguments must be plain values "
        "(bool, int, float, str, None, lists and dicts of them) so checkpoints resume with weights_only=True"
    )


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate multiplier: linear warmup to 1 over ``warmup_steps``, then cosine decay to ``min_lr_ratio``
    at ``max_steps`` (and flat after it, so training past the planned end never raises the rate again)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class BaseTask(lightning.LightningModule):
    """Shared training logic; subclasses implement :meth:`configure_models` and :meth:`compute_loss`."""

    #: ``__init__`` arguments left out of the saved hyperparameters (for example a pretrained module).
    ignore: tuple[str, ...] = ()

    def __init__(
        self,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        max_steps: int = 1000,
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=list(self.ignore))
        for name, value in self.hparams.items():
            _check_plain(value, name)
        self.configure_models()

    def configure_models(self) -> None:
        """Build the networks from ``self.hparams`` (called once, at the end of ``__init__``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement configure_models()")

    def compute_loss(self, batch: Any) -> dict[str, Tensor]:
        """Return scalar tensors for one batch; ``"loss"`` is the one optimised, the others are only logged."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss(batch)")

    def _losses(self, batch: Any) -> dict[str, Tensor]:
        losses = self.compute_loss(batch)
        if "loss" not in losses:
            raise KeyError(f"{type(self).__name__}.compute_loss must return a 'loss' entry, got {sorted(losses)}")
        return losses

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        losses = self._losses(batch)
        self.log("train/loss", losses["loss"].detach(), prog_bar=True)
        self.log_dict({f"train/{name}": value.detach() for name, value in losses.items() if name != "loss"})
        return losses["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        losses = self._losses(batch)
        # Epoch-level means, averaged over ranks, so "val/loss" is comparable between runs and usable by callbacks.
        self.log("val/loss", losses["loss"], on_epoch=True, sync_dist=True, prog_bar=True)
        others = {f"val/{name}": value for name, value in losses.items() if name != "loss"}
        self.log_dict(others, on_epoch=True, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with weight decay on matrices only (not on biases and norm gains), warmup-cosine per step."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": self.hparams.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.hparams.lr)
        warmup, total, floor = self.hparams.warmup_steps, self.hparams.max_steps, self.hparams.min_lr_ratio
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total, floor))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
