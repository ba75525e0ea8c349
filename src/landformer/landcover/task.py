"""Lightning task for the land-cover RandAR model, and the callbacks that show and time its training.

The loss is the model's own mean cross-entropy over valid cells in the batch's visiting orders (the orders come
with the batch, see ``data.py``, so a resumed run repeats the uninterrupted one exactly). ``bits_per_pixel`` is
the same number in bits.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning
import torch
from torch import Tensor

from landformer.core.legend import Legend
from landformer.core.task import BaseTask
from landformer.core.train import log_image_files
from landformer.core.viz import save_png
from landformer.landcover import plots
from landformer.landcover.data import ChipTensors
from landformer.landcover.decoding import sample
from landformer.landcover.model import LandCoverConfig, LandCoverRandAR


class LandCoverTask(BaseTask):
    """Trains :class:`LandCoverRandAR`; ``model_config`` is a plain dict of :class:`LandCoverConfig` fields."""

    def __init__(
        self,
        model_config: dict[str, Any],
        lr: float = 3e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 50,
        max_steps: int = 1000,
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__(
            lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio
        )

    @property
    def model_config(self) -> LandCoverConfig:
        return LandCoverConfig(**self.hparams.model_config)

    def configure_models(self) -> None:
        self.model = LandCoverRandAR(self.model_config)

    def compute_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        _, loss = self.model(
            batch["labels"],
            batch["order"],
            covariates=batch.get("covariates"),
            lonlat=batch.get("lonlat"),
            drop_cond=batch.get("drop_cond") if self.training else None,
        )
        return {"loss": loss, "bits_per_pixel": loss / math.log(2)}


def teacher_forced_prediction(model: LandCoverRandAR, chips: ChipTensors, seed: int) -> Tensor:
    """The most likely class of every cell given the cells before it in a random order (B, H, W); nodata -1.

    This is what the training loss looks at, shown as a map: how well each cell is predicted from a random
    subset of the others.
    """
    labels = chips.labels.to(model.device)
    batch, height, width = labels.shape
    generator = torch.Generator().manual_seed(seed)
    order = torch.rand(batch, height * width, generator=generator).argsort(dim=1).to(model.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        covariates = chips.covariates.to(model.device) if chips.covariates is not None else None
        lonlat = chips.lonlat.to(model.device) if chips.lonlat is not None else None
        logits, _ = model(labels, order, covariates, lonlat)
    model.train(was_training)
    predicted = torch.empty(batch, height * width, dtype=torch.long, device=model.device)
    predicted.scatter_(1, order, logits.argmax(dim=-1))
    return predicted.reshape(batch, height, width).masked_fill(labels < 0, -1).cpu()


class SampleImages(lightning.Callback):
    """Every ``every_steps`` optimiser steps (and at the end) write into ``folder``: ``gen_<step>.png`` (maps
    sampled from scratch, with the chips' covariates when the model is conditioned), ``gt_<step>.png`` (the real
    chips) and ``pred_<step>.png`` (their teacher-forced reconstruction)."""

    def __init__(
        self,
        folder: Path,
        chips: ChipTensors,
        legend: Legend,
        every_steps: int,
        steps: int | None,
        temperature: float,
        seed: int,
    ) -> None:
        self.folder = Path(folder)
        self.chips = chips
        self.legend = legend
        self.every_steps = every_steps
        self.steps = steps
        self.temperature = temperature
        self.seed = seed
        self.written: list[Path] = []
        self._last_step = -1

    def write(self, model: LandCoverRandAR, step: int) -> list[Path]:
        device = model.device
        generator = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(self.seed)
        covariates = self.chips.covariates.to(device) if self.chips.covariates is not None else None
        lonlat = self.chips.lonlat.to(device) if self.chips.lonlat is not None else None
        generated = sample(
            model,
            len(self.chips),
            steps=self.steps,
            temperature=self.temperature,
            covariates=covariates,
            lonlat=lonlat,
            generator=generator,
        ).cpu()
        predicted = teacher_forced_prediction(model, self.chips, self.seed)
        self.folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, maps in (("gen", generated), ("gt", self.chips.labels), ("pred", predicted)):
            paths.append(save_png(self.folder / f"{name}_{step:07d}.png", plots.class_grid(maps.numpy(), self.legend)))
        self.written.extend(paths)
        self._last_step = step
        return paths

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if trainer.is_global_zero and step % self.every_steps == 0 and step != self._last_step:
            log_image_files(trainer, self.write(pl_module.model, step), step, section="samples")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero and trainer.global_step != self._last_step:
            step = trainer.global_step
            log_image_files(trainer, self.write(pl_module.model, step), step, section="samples")


class Throughput(lightning.Callback):
    """Valid pixel-tokens per second of the training steps (forward, backward, optimiser), after a warm-up.

    Logged as ``train/tokens_per_s``; :attr:`tokens_per_s` is the mean over the whole run after ``warmup`` steps.
    """

    def __init__(self, warmup: int = 5) -> None:
        self.warmup = warmup
        self.tokens = 0
        self.seconds = 0.0
        self.steps = 0
        self._start = 0.0

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self._start
        self.steps += 1
        if self.steps <= self.warmup:
            return
        tokens = int((batch["labels"] >= 0).sum())
        self.tokens += tokens
        self.seconds += seconds
        pl_module.log("train/tokens_per_s", tokens / max(seconds, 1e-9))
