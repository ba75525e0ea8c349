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

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import lightning
import torch
from torch import Tensor

from landformer.core.config import to_dict

T = TypeVar("T")
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


def _delayed_warmup_cosine(start: int, warmup: int, total: int, floor: float) -> Callable[[int], float]:
    """Learning-rate multiplier: 0 before ``start``, then :func:`warmup_cosine` over the remaining steps."""

    def multiplier(step: int) -> float:
        if step < start:
            return 0.0
        return warmup_cosine(step - start, warmup, max(1, total - start), floor)

    return multiplier


def task_from_recipe(
    task_class: type[T], recipe: Any, sections: tuple[str, ...] = ("model", "task"), **extra: Any
) -> T:
    """Build a pipeline task from its recipe: the fields of the recipe's ``model`` section (the model's own config
    dataclass), of its ``task`` section (or the ``sections`` named) and ``train.max_steps``, as plain values,
    plus ``extra`` (which wins).

    Only the names ``task_class.__init__`` takes are passed on, because a task section may also hold settings
    that are not the task's (``threads``, ``init_from``): the recipe's dataclasses have already checked every key.
    """
    accepted = inspect.signature(task_class.__init__).parameters
    takes_anything = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    values: dict[str, Any] = {}
    for section in sections:
        if getattr(recipe, section, None) is not None:
            values.update(to_dict(getattr(recipe, section)))
    if getattr(recipe, "train", None) is not None:
        values["max_steps"] = recipe.train.max_steps
    values.update(extra)
    return task_class(**{name: value for name, value in values.items() if takes_anything or name in accepted})


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

    def parameter_parts(self) -> list[tuple[torch.nn.Module, float, int]]:
        """The parts of the model that learn at their own pace: ``(module, lr_scale, start_step)`` each.

        A part trains at ``lr * lr_scale`` from ``start_step`` on (rate 0 before it: a frozen stage) on the
        warmup-cosine schedule of the remaining steps. The default is the whole task at ``lr`` from step 0;
        staged fine-tuning overrides this, e.g. ``[(head, 1.0, 0), (encoder, 0.1, 500)]``.
        """
        return [(self, 1.0, 0)]

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with weight decay on matrices only (not on biases and norm gains), warmup-cosine per step,
        one pair of parameter groups per :meth:`parameter_parts` entry. Parts with nothing to train are left out."""
        hp = self.hparams
        groups: list[dict[str, Any]] = []
        schedules = []
        for module, scale, start in self.parameter_parts():
            trainable = [p for p in module.parameters() if p.requires_grad]
            matrices, vectors = [p for p in trainable if p.ndim >= 2], [p for p in trainable if p.ndim < 2]
            for params, decay in ((matrices, hp.weight_decay), (vectors, 0.0)):
                if params:
                    groups.append({"params": params, "weight_decay": decay, "lr": hp.lr * scale})
                    schedules.append(_delayed_warmup_cosine(start, hp.warmup_steps, hp.max_steps, hp.min_lr_ratio))
        optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class ImagesEvery(lightning.Callback):
    """Every ``every_steps`` optimiser steps and when training ends, draw pictures of the task with ``draw`` (in
    eval mode, without gradients) and send them to TensorBoard and W&B with :func:`landformer.core.train.log_images`.

    ``draw`` maps the task to ``{tag: (H, W, 3) uint8 array}``; it is not called when no logger shows pictures.
    """

    def __init__(self, draw: Callable[[Any], Mapping[str, Any]], every_steps: int) -> None:
        self.draw = draw
        self.every_steps = every_steps
        self._last_step = -1

    def _log(self, trainer: Any, pl_module: Any) -> None:
        from landformer.core.train import log_images, shows_images

        step = trainer.global_step
        if step == self._last_step or not shows_images(trainer):
            return
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            images = self.draw(pl_module)
        pl_module.train(was_training)
        log_images(trainer, images, step)
        self._last_step = step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step % self.every_steps == 0:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._log(trainer, pl_module)
