"""Land-cover training data-parallel on two CPU processes (DDP over gloo) equals one process with the same
global batch: the ranks read different chips, and the losses and trained weights match."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning
import pytest
import torch

from landformer.core.train import TrainConfig, fit, seed_everything
from landformer.landcover.data import ChipTensors, training_loader
from landformer.landcover.task import LandCoverTask

GLOBAL_BATCH, STEPS, N_CHIPS, CHIP, CLASSES = 4, 3, 12, 8, 4
MODEL = {"n_classes": CLASSES, "chip_size": CHIP, "n_layers": 1, "n_heads": 2, "dim": 16}


class StepRecorder(lightning.Callback):
    """Appends each rank's training loss and the chips of its batch to ``folder/rank<r>.jsonl``; defined at module
    level so that ``ddp_spawn`` can send it to its worker processes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        labels = batch["labels"].flatten(1)
        record = {"step": trainer.global_step, "loss": float(outputs["loss"]), "chips": chip_index(labels).tolist()}
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a") as file:
            file.write(json.dumps(record) + "\n")


def chip_index(flat_labels: torch.Tensor) -> torch.Tensor:
    """The index each chip carries in its first two cells (base CLASSES): which chip a rank was given."""
    return flat_labels[:, 0] + CLASSES * flat_labels[:, 1]


def distinct_chips() -> ChipTensors:
    """Random chips, each carrying its own index in its first two cells."""
    labels = torch.randint(0, CLASSES, (N_CHIPS, CHIP * CHIP), generator=torch.Generator().manual_seed(0))
    labels[:, 0], labels[:, 1] = torch.arange(N_CHIPS) % CLASSES, torch.arange(N_CHIPS) // CLASSES
    return ChipTensors(labels.reshape(N_CHIPS, CHIP, CHIP), None, None)


def train(folder: Path, devices: int) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """STEPS optimiser steps of a global batch of GLOBAL_BATCH chips on ``devices`` processes; the records of
    every rank and the trained weights."""
    folder.mkdir()
    seed_everything(0)
    task = LandCoverTask(MODEL, lr=3e-3, warmup_steps=0, max_steps=STEPS)
    loader = training_loader(distinct_chips(), GLOBAL_BATCH // devices, STEPS, seed=0, augment=False)
    config = TrainConfig(
        max_steps=STEPS,
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        loggers=[],
        progress_bar=False,
        checkpoint_every_steps=STEPS,
    )
    result = fit(task, loader, config, folder, callbacks=[StepRecorder(folder)])
    records = [
        json.loads(line) | {"rank": int(path.stem.removeprefix("rank"))}
        for path in sorted(folder.glob("rank*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    weights = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return records, weights


def test_two_ddp_ranks_equal_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    one_records, one_weights = train(tmp_path / "one", devices=1)
    two_records, two_weights = train(tmp_path / "two", devices=2)
    assert [r["step"] for r in one_records] == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        (one,) = [r for r in one_records if r["step"] == step]
        ranks = sorted((r for r in two_records if r["step"] == step), key=lambda r: r["rank"])
        assert [r["rank"] for r in ranks] == [0, 1]
        # Each rank reads half of the global batch: different chips, together the one process's batch.
        assert len(ranks[0]["chips"]) == len(ranks[1]["chips"]) == GLOBAL_BATCH // 2
        assert not set(ranks[0]["chips"]) & set(ranks[1]["chips"])
        assert sorted(ranks[0]["chips"] + ranks[1]["chips"]) == sorted(one["chips"])
        # Every cell is valid, so the mean of the two ranks' mean losses is the global batch's mean loss; after
        # the first step it also depends on DDP having averaged the gradients like one process.
        assert (ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(one["loss"], rel=1e-5)
    assert set(one_weights) == set(two_weights)
    for name, weight in one_weights.items():
        torch.testing.assert_close(two_weights[name], weight, atol=1e-5, rtol=1e-4)
    seed_everything(0)
    initial = LandCoverTask(MODEL).model.head.weight
    assert (one_weights["model.head.weight"] - initial).abs().max() > 1e-3  # the steps did train
