"""core.train and core.task: Trainer construction, checkpoints, resume, seeding, run records."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from landformer.core import train as train_module
from landformer.core.config import load_config
from landformer.core.errors import UserError
from landformer.core.io import load_torch, read_json
from landformer.core.task import BaseTask, warmup_cosine
from landformer.core.train import (
    FitResult,
    TrainConfig,
    add_resume_argument,
    build_trainer,
    clear_earlier_run,
    fit,
    last_checkpoint,
    prepare_run,
    seed_everything,
)


class TinyRegression(BaseTask):
    """y = sum(x) with a two-layer MLP: learns in a few steps, small enough for many tests."""

    def __init__(
        self, width: int = 8, lr: float = 0.01, weight_decay: float = 0.01, warmup_steps: int = 2, max_steps: int = 20
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, max_steps=max_steps)

    def configure_models(self) -> None:
        width = self.hparams.width
        self.net = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))

    def compute_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        error = self.net(x) - y
        return {"loss": error.pow(2).mean(), "mae": error.abs().mean()}


class CrashAtStep(lightning.Callback):
    """Stands in for a killed job: raises once training has gone past ``step`` (after its checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if trainer.global_step > self.step:
            raise RuntimeError("simulated crash")


def make_loaders(n_train: int = 32, batch_size: int = 8) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + 16, 4, generator=generator)
    y = x.sum(dim=1, keepdim=True)
    train = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=batch_size)
    val = DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=batch_size)
    return train, val


def quick_config(**changes: object) -> TrainConfig:
    values: dict[str, object] = {"max_steps": 20, "val_every_steps": 10, "checkpoint_every_steps": 5}
    values |= {"progress_bar": False, "accelerator": "cpu", "loggers": ["csv"]}
    return TrainConfig(**(values | changes))  # type: ignore[arg-type]


def val_mse(task: TinyRegression, loader: DataLoader) -> float:
    with torch.no_grad():
        errors = [(task.net(x) - y).pow(2) for x, y in loader]
    return torch.cat(errors).mean().item()


def test_fit_writes_checkpoints_logs_and_learns(tmp_path: Path) -> None:
    seed_everything(0)
    task = TinyRegression()
    train, val = make_loaders()
    untrained = val_mse(task, val)
    config = quick_config(loggers=["csv", "tensorboard"])
    result = fit(task, (train, val), config, tmp_path)

    assert isinstance(result, FitResult)
    assert result.global_step == 20
    checkpoints = tmp_path / "checkpoints"
    # keep_checkpoints=2 periodic ones (the newest), plus last and best.
    assert sorted(p.name for p in checkpoints.glob("step*.ckpt")) == ["step0000015.ckpt", "step0000020.ckpt"]
    assert result.last_checkpoint == checkpoints / "last.ckpt" == last_checkpoint(tmp_path)
    assert result.best_checkpoint == checkpoints / "best.ckpt"
    # Lightning's own checkpoints load with weights_only=True.
    state = load_torch(result.last_checkpoint)
    assert state["global_step"] == 20
    assert state["hyper_parameters"]["width"] == 8
    assert torch.equal(state["state_dict"]["net.0.weight"], task.net[0].weight.detach())
    # Export takes the best checkpoint's weights, not the task's final ones.
    best = load_torch(result.best_checkpoint)["state_dict"]
    fresh = TinyRegression()
    assert result.load_best_into(fresh) == result.best_checkpoint
    assert all(torch.equal(value, best[name]) for name, value in fresh.state_dict().items())
    # The final validation loss is what the module reports, and it improved on the untrained model.
    assert result.metrics["val/loss"] == pytest.approx(val_mse(task, val), rel=1e-5)
    assert result.metrics["val/loss"] < untrained
    rows = list(csv.DictReader((tmp_path / "logs/csv/version_0/metrics.csv").open()))
    assert any(row["train/loss"] for row in rows) and any(row["val/loss"] for row in rows)
    assert list((tmp_path / "logs/tensorboard/version_0").glob("events.out.tfevents.*"))


def test_resume_after_crash_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    """A run killed after step 9 resumes from its step-8 checkpoint and ends bit-identical to a straight run."""
    train, val = make_loaders()  # 4 batches per epoch: step 8 is an epoch boundary, so data order agrees
    config = quick_config(max_steps=16, checkpoint_every_steps=8, val_every_steps=4, deterministic=True)

    seed_everything(1)
    straight = TinyRegression(max_steps=16)
    straight_result = fit(straight, (train, val), config, tmp_path / "straight")

    seed_everything(1)
    crashed = TinyRegression(max_steps=16)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(crashed, (train, val), config, tmp_path / "crashed", callbacks=[CrashAtStep(8)])
    assert load_torch(last_checkpoint(tmp_path / "crashed"))["global_step"] == 8

    seed_everything(2)  # a fresh process: different initial weights, all overwritten
    resumed = TinyRegression(max_steps=16)
    resumed_result = fit(resumed, (train, val), config, tmp_path / "crashed", resume=True)

    assert resumed_result.global_step == straight_result.global_step == 16
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    straight_state = load_torch(straight_result.last_checkpoint)
    resumed_state = load_torch(resumed_result.last_checkpoint)
    assert straight_state["optimizer_states"][0]["state"][0]["step"] == 16
    assert resumed_state["optimizer_states"][0]["state"][0]["step"] == 16
    assert resumed_state["lr_schedulers"] == straight_state["lr_schedulers"]
    # The resumed invocation logs into a new version folder and leaves the first one's metrics alone.
    assert (tmp_path / "crashed/logs/csv/version_0/metrics.csv").is_file()
    assert (tmp_path / "crashed/logs/csv/version_1/metrics.csv").is_file()


def test_resume_refuses_missing_unsafe_and_mismatched_checkpoints(tmp_path: Path) -> None:
    train, val = make_loaders()
    config = quick_config(max_steps=5)
    with pytest.raises(UserError, match=r"no checkpoint .*last.ckpt"):
        fit(TinyRegression(), (train, val), config, tmp_path / "empty", resume=True)
    with pytest.raises(UserError, match="not found"):
        fit(TinyRegression(), (train, val), config, tmp_path / "empty", resume=tmp_path / "nope.ckpt")

    fit(TinyRegression(), (train, val), config, tmp_path / "run")
    with pytest.raises(UserError, match=r"already holds a training run .*resume it"):
        fit(TinyRegression(), (train, val), config, tmp_path / "run")
    with pytest.raises(UserError, match="does not fit this model"):
        fit(TinyRegression(width=16), (train, val), quick_config(max_steps=10), tmp_path / "run", resume=True)

    unsafe = tmp_path / "unsafe.ckpt"
    state = load_torch(last_checkpoint(tmp_path / "run"))
    state["hyper_parameters"]["when"] = Path("pickled-object")  # any non-allowlisted class
    torch.save(state, unsafe)
    with pytest.raises(UserError, match="cannot be loaded safely"):
        fit(TinyRegression(), (train, val), quick_config(max_steps=10), tmp_path / "run", resume=unsafe)


def test_early_stopping_stops_when_validation_stalls(tmp_path: Path) -> None:
    train, val = make_loaders()
    task = TinyRegression(lr=0.0)  # nothing changes, so val/loss never improves
    config = quick_config(max_steps=40, val_every_steps=2, early_stopping_patience=2)
    result = fit(task, (train, val), config, tmp_path)
    # Validations at steps 2 (best), 4 and 6 (no improvement, patience 2 used up) -> stop at step 6.
    assert result.global_step == 6


def test_wall_clock_cap_stops_training_and_keeps_a_checkpoint(tmp_path: Path) -> None:
    """A cap far below one step's time stops training after the first step; the run still ends with a
    checkpoint to export, as a GPU lease of fixed length needs."""
    train, _ = make_loaders()
    result = fit(TinyRegression(), train, quick_config(max_steps=1000, max_minutes=1e-6), tmp_path)
    assert result.global_step == 1
    assert load_torch(result.last_checkpoint)["global_step"] == 1
    with pytest.raises(UserError, match="'max_minutes' = 0"):
        TrainConfig(max_minutes=0)


def test_training_without_validation_keeps_last_only(tmp_path: Path) -> None:
    train, _ = make_loaders()
    result = fit(TinyRegression(), train, quick_config(max_steps=7), tmp_path)
    assert result.best_checkpoint is None
    assert result.global_step == 7
    # last.ckpt is refreshed at the end even though 7 is not a multiple of checkpoint_every_steps.
    assert load_torch(result.last_checkpoint)["global_step"] == 7
    assert result.load_best_into(TinyRegression()) == result.last_checkpoint  # no validation: the last weights
    assert "val/loss" not in result.metrics


def test_same_seed_same_weights(tmp_path: Path) -> None:
    train, val = make_loaders()
    config = quick_config(max_steps=6, seed=3)
    runs = []
    for name in ("a", "b"):
        seed_everything(config.seed)
        task = TinyRegression()
        fit(task, (train, val), config, tmp_path / name)
        runs.append(task.net[0].weight.detach().clone())
    assert torch.equal(runs[0], runs[1])


def test_learning_rate_follows_warmup_cosine(tmp_path: Path) -> None:
    train, _ = make_loaders()
    task = TinyRegression(lr=0.01, warmup_steps=2, max_steps=10)
    fit(task, train, quick_config(max_steps=10, log_every_steps=1), tmp_path)
    rows = list(csv.DictReader((tmp_path / "logs/csv/version_0/metrics.csv").open()))
    logged = {int(row["step"]): float(row["lr-AdamW/pg1"]) for row in rows if row.get("lr-AdamW/pg1")}
    # LearningRateMonitor logs the rate used by the optimiser step that follows (step k uses factor(k)).
    for step, lr in logged.items():
        assert lr == pytest.approx(0.01 * warmup_cosine(step, 2, 10, 0.1), rel=1e-6)
    assert len(logged) >= 8


class StagedRegression(TinyRegression):
    """The second layer from step 0 at lr; the first from step 3 at lr / 10 (a frozen-then-unfrozen encoder)."""

    def parameter_parts(self) -> list[tuple[torch.nn.Module, float, int]]:
        return [(self.net[2], 1.0, 0), (self.net[0], 0.1, 3)]


def test_parameter_parts_train_at_their_own_rate_and_start_step() -> None:
    task = StagedRegression(lr=0.01, warmup_steps=2, max_steps=10)
    configured = task.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    groups = optimizer.param_groups
    assert [(g["params"][0] is task.net[2].weight, g["weight_decay"]) for g in groups] == [
        (True, 0.01),  # head matrix
        (False, 0.0),  # head bias
        (False, 0.01),  # first-layer matrix
        (False, 0.0),  # first-layer bias
    ]
    for step in range(8):
        head = 0.01 * warmup_cosine(step, 2, 10, 0.1)
        first = 0.0 if step < 3 else 0.001 * warmup_cosine(step - 3, 2, 7, 0.1)
        assert [g["lr"] for g in groups] == pytest.approx([head, head, first, first], rel=1e-9, abs=1e-15)
        optimizer.step()
        scheduler.step()


def test_default_parameter_parts_is_the_whole_task_at_lr() -> None:
    task = TinyRegression(lr=0.01, warmup_steps=2, max_steps=10)
    groups = task.configure_optimizers()["optimizer"].param_groups
    assert sum(len(g["params"]) for g in groups) == len(list(task.parameters()))
    assert [g["lr"] for g in groups] == pytest.approx([0.005, 0.005])


def test_warmup_cosine_shape() -> None:
    assert warmup_cosine(0, 4, 100, 0.1) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(52, 4, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(100, 4, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 4, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(0, 0, 10, 0.0) == pytest.approx(1.0)


def test_base_task_optimizer_groups_and_plain_hparams() -> None:
    task = TinyRegression(weight_decay=0.05)
    optimizer = task.configure_optimizers()["optimizer"]
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert {p.ndim for p in decayed["params"]} == {2} and {p.ndim for p in plain["params"]} == {1}
    expected = {"width": 8, "lr": 0.01, "weight_decay": 0.05, "warmup_steps": 2, "max_steps": 20, "min_lr_ratio": 0.1}
    assert dict(task.hparams) == expected

    class PathTask(TinyRegression):
        def __init__(self, data: Path = Path("x")) -> None:
            super().__init__()

    with pytest.raises(TypeError, match=r"hyperparameter data is a (Posix|Windows)Path"):
        PathTask()


def test_load_from_checkpoint_rebuilds_task(tmp_path: Path) -> None:
    train, _ = make_loaders()
    task = TinyRegression(width=6)
    result = fit(task, train, quick_config(max_steps=3), tmp_path)
    loaded = TinyRegression.load_from_checkpoint(result.last_checkpoint, weights_only=True)
    assert loaded.hparams.width == 6
    assert torch.equal(loaded.net[0].weight, task.net[0].weight)


def test_resolve_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    resolve = train_module.resolve_precision
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve("auto") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve("auto") == "bf16-mixed"
    assert resolve("auto", accelerator="cpu") == "32-true"
    assert resolve("16-mixed") == "16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve("auto", accelerator="gpu") == "32-true"


def test_build_trainer_settings(tmp_path: Path) -> None:
    config = quick_config(val_every_steps=7, accumulate_grad_batches=2, gradient_clip=0.0, loggers=[])
    trainer = build_trainer(config, tmp_path)
    assert trainer.max_steps == 20
    assert trainer.val_check_interval == 14  # counted in batches: 7 optimiser steps x 2 accumulated batches
    assert trainer.check_val_every_n_epoch is None
    assert trainer.gradient_clip_val is None
    assert trainer.loggers == []
    assert trainer.precision == "32-true"
    names = sorted(Path(cb.dirpath).name + "/" + str(cb.monitor) for cb in trainer.checkpoint_callbacks)
    assert names == ["checkpoints/step", "checkpoints/val/loss"]
    with pytest.raises(UserError, match=r"train config: .*precision"):
        build_trainer(quick_config(precision="17-fancy"), tmp_path)


def test_train_config_checks_values_and_loads_from_yaml(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"unknown logger.*'mlflow'"):
        TrainConfig(loggers=["csv", "mlflow"])
    with pytest.raises(UserError, match="'max_steps' = 0"):
        TrainConfig(max_steps=0)
    with pytest.raises(UserError, match="'devices' = 'many'"):
        TrainConfig(devices="many")
    recipe = tmp_path / "train.yaml"
    recipe.write_text("max_steps: 30\ndevices: 2\nprecision: bf16-mixed\nearly_stopping_patience: 3\n")
    config = load_config(TrainConfig, recipe, overrides=["loggers=[csv, wandb]", "devices=auto"])
    assert (config.max_steps, config.devices, config.precision) == (30, "auto", "bf16-mixed")
    assert config.loggers == ["csv", "wandb"] and config.early_stopping_patience == 3
    with pytest.raises(UserError, match=r"unknown key 'max_step'.*did you mean 'max_steps'"):
        load_config(TrainConfig, None, overrides=["max_step=3"])


def test_prepare_run_records_config_and_invocations(tmp_path: Path) -> None:
    config = quick_config(max_steps=11)
    run_dir = prepare_run(tmp_path / "run", config, "tiny-regression")
    assert load_config(TrainConfig, run_dir / "config.yaml") == config
    info = read_json(run_dir / "run.json")
    assert info["name"] == "tiny-regression"
    assert info["torch_version"] == torch.__version__
    assert info["lightning_version"] == lightning.__version__
    assert {"landformer_version", "git_commit", "started_at", "command_line"} <= set(info)
    prepare_run(run_dir, quick_config(max_steps=22), "tiny-regression")
    again = read_json(run_dir / "run.json")
    assert len(again["previous"]) == 1 and again["previous"][0]["started_at"] == info["started_at"]
    assert load_config(TrainConfig, run_dir / "config.yaml").max_steps == 22


def test_resume_argument_values() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_resume_argument(parser)
    assert parser.parse_args([]).resume is False
    assert parser.parse_args(["--resume"]).resume is True
    assert parser.parse_args(["--resume", "runs/x/checkpoints/step0000100.ckpt"]).resume.endswith("step0000100.ckpt")


def test_importing_train_config_stays_light() -> None:
    """Pipelines import TrainConfig while building the CLI: that must not pull in torch or Lightning."""
    import subprocess
    import sys

    code = "import sys, landformer.core.train; print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_wandb_logs_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train, _ = make_loaders()
    fit(TinyRegression(), train, quick_config(max_steps=3, loggers=["wandb"]), tmp_path / "run")
    runs = list((tmp_path / "run/logs/wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_finished_run_can_be_extended_exactly(tmp_path: Path) -> None:
    """Resuming a run that finished at step 8 with max_steps=16 equals training 16 steps in one go."""
    train, val = make_loaders()
    config = quick_config(max_steps=16, checkpoint_every_steps=5, val_every_steps=4)
    seed_everything(1)
    straight = TinyRegression(max_steps=16)
    fit(straight, (train, val), config, tmp_path / "straight")

    seed_everything(1)
    first = fit(TinyRegression(max_steps=16), (train, val), quick_config(max_steps=8), tmp_path / "extended")
    assert load_torch(first.last_checkpoint)["global_step"] == 8  # written at the end, between periodic saves
    extended = TinyRegression(max_steps=16)
    result = fit(extended, (train, val), config, tmp_path / "extended", resume=True)
    assert result.global_step == 16
    assert torch.equal(extended.net[0].weight, straight.net[0].weight)
    assert torch.equal(extended.net[2].bias, straight.net[2].bias)


def assert_two_ranks_shared_the_data(state: dict) -> None:
    """A DistributedSampler gives each of 2 ranks 16 of the 32 training samples (2 batches of 8 per epoch, where
    one process has 4) and 8 of the 16 validation samples (1 batch): step 6 is the end of the third epoch."""
    loops = state["loops"]["fit_loop"]
    assert loops["epoch_loop.batch_progress"]["current"]["completed"] == 2
    assert loops["epoch_loop.val_loop.batch_progress"]["current"]["completed"] == 1
    assert state["epoch"] == 2


@pytest.mark.slow
def test_two_process_ddp_spawn_on_cpu(tmp_path: Path) -> None:
    """fit() runs data-parallel in two spawned CPU processes (gloo); each rank sees half of every epoch."""
    train, val = make_loaders()
    config = quick_config(max_steps=6, checkpoint_every_steps=3, val_every_steps=3, devices=2, strategy="ddp_spawn")
    result = fit(TinyRegression(), (train, val), config, tmp_path)
    assert result.global_step == 6
    state = load_torch(result.last_checkpoint)
    assert state["global_step"] == 6
    assert_two_ranks_shared_the_data(state)


TORCHRUN_SCRIPT = """
import json, sys
import torch
from torch.utils.data import DataLoader, TensorDataset
from landformer.core.train import TrainConfig, fit, prepare_run
sys.path.insert(0, sys.argv[2])
from test_train import TinyRegression, make_loaders

train, val = make_loaders()
config = TrainConfig(max_steps=6, val_every_steps=3, checkpoint_every_steps=3, accelerator="cpu", devices=2,
                     strategy="ddp", progress_bar=False, loggers=["csv"])
run_dir = prepare_run(sys.argv[1], config, "ddp-test")
torch.manual_seed(0)
result = fit(TinyRegression(), (train, val), config, run_dir)
print("RESULT", torch.distributed.get_rank(), result.global_step, json.dumps(result.metrics), flush=True)
"""


@pytest.mark.slow
def test_torchrun_ddp_two_ranks_on_cpu(tmp_path: Path) -> None:
    """The launch a cluster uses: ``torchrun --nproc_per_node=2`` with strategy=ddp (gloo on CPU)."""
    import subprocess
    import sys

    script = tmp_path / "train_ddp.py"
    script.write_text(TORCHRUN_SCRIPT)
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", str(script), str(tmp_path / "run")]
    done = subprocess.run([*command, str(Path(__file__).parent)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = sorted(line.split()[1:3] for line in done.stdout.splitlines() if line.startswith("RESULT"))
    assert results == [["0", "6"], ["1", "6"]]
    state = load_torch(tmp_path / "run/checkpoints/last.ckpt")
    assert state["global_step"] == 6
    assert_two_ranks_shared_the_data(state)
    assert (tmp_path / "run/config.yaml").is_file() and (tmp_path / "run/run.json").is_file()


def test_clear_earlier_run_deletes_only_a_run_of_that_name(tmp_path: Path) -> None:
    ours, theirs, plain = tmp_path / "ours", tmp_path / "theirs", tmp_path / "plain"
    for folder, name in ((ours, "forecast"), (theirs, "geoloc")):
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps({"name": name}))
    plain.mkdir()
    (plain / "notes.txt").write_text("keep")
    for folder in (ours, theirs, plain, tmp_path / "missing"):
        clear_earlier_run(folder, "forecast")
    assert not ours.exists()
    assert (theirs / "run.json").is_file() and (plain / "notes.txt").read_text() == "keep"
