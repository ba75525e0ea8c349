"""The one place that builds a Lightning ``Trainer``.

Every pipeline trains through :func:`fit`, so devices, precision, loggers, checkpoints and resuming behave the
same everywhere and are configured by one :class:`TrainConfig` section of a recipe YAML. A run folder holds::

    run_dir/
      config.yaml            the resolved config (prepare_run)
      run.json               versions, git commit, command line, start time of each invocation (prepare_run)
      checkpoints/last.ckpt  always the newest training state; resume from it with resume=True / --resume
      checkpoints/step*.ckpt the newest `keep_checkpoints` periodic checkpoints
      checkpoints/best.ckpt  lowest `monitor` value, when there is validation
      logs/csv/version_N/metrics.csv, logs/tensorboard/version_N/, logs/wandb/ (when asked)

Pictures a task draws while it trains (samples, reconstructions) go to TensorBoard and W&B through
:func:`log_images`, beside the PNG files in the run folder.

The same code runs on one CPU, one CUDA GPU (bf16 mixed precision when the GPU supports it) and many GPUs or
nodes: set ``strategy`` to ``ddp`` or ``fsdp`` and ``devices``/``num_nodes``, and launch with ``torchrun`` or SLURM
as Lightning documents. Checkpoints are resumed with ``weights_only=True`` (see :mod:`landformer.core.task` for
what that requires of hyperparameters).
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from landformer import __version__
from landformer.core.config import option, save_config
from landformer.core.errors import UserError
from landformer.core.extras import require
from landformer.core.io import load_torch, make_folder, read_json, require_file, unpickling_reason, write_json

LOGGERS = ("csv", "tensorboard", "wandb")
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
_STEP_SUFFIX = re.compile(r"_\d+$")  # gen_0000100 -> gen


@dataclass
class TrainConfig:
    """How to train; pipelines read it from the ``train:`` section of their recipe YAML."""

    max_steps: int = option(200, help="optimiser steps to train for", common=True)
    max_epochs: int = -1  # also stop after this many passes over the data; -1: no epoch limit
    # A wall-clock cap for a lease of fixed length (a GPU booked for ten minutes, a CI slot): training stops at
    # the first step past it and the run exports its best checkpoint as usual. The learning-rate schedule still
    # follows max_steps, so set max_steps to what the time allows for the best result.
    max_minutes: float | None = option(
        None, help="also stop after this many minutes of training (wall clock)", common=True
    )
    val_every_steps: int = option(50, flag="--val-every", help="validate every this many steps")
    log_every_steps: int = option(10, flag="--log-every", help="write training metrics every this many steps")
    accelerator: str = option("auto", help="auto, cpu, gpu, cuda, mps", common=True)
    devices: int | str = option("auto", help="devices per node: a number, auto, or ids like 0,1", common=True)
    strategy: str = option("auto", help="auto, ddp, ddp_spawn, fsdp")  # any Lightning strategy name
    num_nodes: int = option(1, help="machines taking part")  # multi-node runs are launched by torchrun/SLURM
    # "auto": "bf16-mixed" on a CUDA GPU with bf16, else "32-true"; or any Lightning value
    precision: str = option("auto", help="auto, 32-true, bf16-mixed, 16-mixed", common=True)
    checkpoint_every_steps: int = option(
        100, flag="--checkpoint-every", help="periodic checkpoint every this many steps"
    )  # also refreshes last.ckpt
    keep_checkpoints: int = option(2, help="periodic checkpoints kept")  # newest first; last/best come on top
    loggers: list[str] = option(
        default_factory=lambda: ["csv", "tensorboard"], help="any of csv, tensorboard, wandb", common=True
    )
    wandb_project: str = option(
        "landformer", help="W&B project (WANDB_MODE=offline logs locally)"
    )  # set WANDB_MODE=offline to log without a network
    seed: int = option(0, help="random seed", common=True)  # Python, NumPy and torch in every process and worker
    gradient_clip: float = option(1.0, help="clip the gradient norm (0: off)")
    accumulate_grad_batches: int = option(1, flag="--accumulate", help="batches summed per optimiser step")
    early_stopping_patience: int | None = option(
        None, flag="--patience", help="early stopping: validations without improvement"
    )  # None: never stop early
    monitor: str = "val/loss"  # metric (lower is better) that picks best.ckpt and drives early stopping
    deterministic: bool = option(False, help="deterministic kernels (slower, bit-exact reruns)")
    progress_bar: bool = option(True, flag="--no-progress", help="hide progress bars")

    def __post_init__(self) -> None:
        positive = ("max_steps", "val_every_steps", "log_every_steps", "checkpoint_every_steps")
        for name in (*positive, "num_nodes", "accumulate_grad_batches"):
            if getattr(self, name) < 1:
                raise UserError(f"train config: '{name}' = {getattr(self, name)} should be at least 1")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise UserError(f"train config: 'max_minutes' = {self.max_minutes} should be positive")
        if self.keep_checkpoints < 1:
            raise UserError(f"train config: 'keep_checkpoints' = {self.keep_checkpoints} should be at least 1")
        unknown = [name for name in self.loggers if name not in LOGGERS]
        if unknown:
            choices = ", ".join(LOGGERS)
            raise UserError(f"train config: unknown logger(s) {unknown} in 'loggers' (choose from {choices})")
        if isinstance(self.devices, str) and self.devices != "auto" and not _is_device_list(self.devices):
            raise UserError(f"train config: 'devices' = {self.devices!r} should be a number, 'auto' or like '0,1'")
        if self.gradient_clip < 0:
            raise UserError(f"train config: 'gradient_clip' = {self.gradient_clip} should be 0 (off) or positive")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise UserError(f"train config: 'early_stopping_patience' = {self.early_stopping_patience} should be >= 1")


def _is_device_list(text: str) -> bool:
    """Lightning also takes devices as a comma-separated list of GPU ids, e.g. "0,1" or "-1" (all)."""
    return all(part.strip().lstrip("-").isdigit() for part in text.split(",") if part.strip())


@dataclass
class FitResult:
    """What a finished :func:`fit` produced."""

    run_dir: Path
    last_checkpoint: Path | None  # the newest training state (resume from it)
    best_checkpoint: Path | None  # lowest `monitor`, when there was validation
    global_step: int  # optimiser steps taken in total, including those before a resume
    metrics: dict[str, float]  # the latest value of every logged metric
    seconds: float  # wall time of this fit call

    def load_best_into(self, task: Any) -> Path:
        """Put the weights of the best checkpoint (the last one when there was no validation) into ``task``, for
        export; returns that checkpoint's path. Loaded with ``weights_only=True``."""

        checkpoint = self.best_checkpoint or self.last_checkpoint
        if checkpoint is None:
            raise RuntimeError(f"fit() left no checkpoint in {self.run_dir}")
        task.load_state_dict(load_torch(checkpoint, "checkpoint")["state_dict"])
        return checkpoint


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """``"auto"`` becomes ``"bf16-mixed"`` when training will run on a CUDA GPU that supports bf16, else
    ``"32-true"`` (CPU autocast is rarely faster for small models); any other value is passed to Lightning."""
    if precision != "auto":
        return precision
    import torch

    on_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_cuda and torch.cuda.is_bf16_supported() else "32-true"


def last_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """``run_dir/checkpoints/last.ckpt`` if a previous run left one, else None."""
    path = Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT
    return path if path.is_file() else None


class _DropAdverts:
    """Logging filter that drops Lightning's advertisement for its hosted logging service."""

    def filter(self, record: Any) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def _quiet_lightning() -> None:
    """Drop messages that say nothing about the user's run: an advert, a deprecation inside Lightning 2.6 that
    torch 2.14 reports on every fit, and a warning about epochs shorter than the logging interval (training here
    is counted in steps and logging continues across epoch boundaries)."""

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(existing, _DropAdverts) for existing in logger.filters):
        logger.addFilter(_DropAdverts())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (and, through Lightning, data-loader workers). Call it before building the
    task so initial weights are reproducible; :func:`fit` seeds again before training."""
    import lightning

    lightning.seed_everything(seed, workers=True, verbose=False)


def _is_rank_zero() -> bool:
    """True in the process that writes run files (the only one, unless launched by torchrun/SLURM/DDP)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _git_commit() -> str | None:
    """The commit of the landformer source tree, with "+dirty" for uncommitted changes; None outside git."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if status else "") if commit else None


def prepare_run(run_dir: str | os.PathLike[str], config: Any, name: str) -> Path:
    """Create ``run_dir`` and record how the run was made: ``config.yaml`` (the resolved config, loadable with
    ``load_config``) and ``run.json`` (versions, git commit, start time, command line). A resumed run keeps the
    earlier invocations in ``run.json["previous"]``."""
    import lightning
    import torch

    run_dir = make_folder(run_dir)
    if not _is_rank_zero():
        return run_dir
    save_config(config, run_dir / "config.yaml")
    info: dict[str, Any] = {
        "name": name,
        "landformer_version": __version__,
        "torch_version": torch.__version__,
        "lightning_version": lightning.__version__,
        "python_version": platform.python_version(),
        "git_commit": _git_commit(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command_line": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
        "host": platform.node(),
    }
    run_json = run_dir / "run.json"
    if run_json.is_file():
        earlier = read_json(run_json, "run record")
        if isinstance(earlier, dict):
            previous = earlier.pop("previous", [])
            info["previous"] = [*previous, earlier] if isinstance(previous, list) else [earlier]
    write_json(run_json, info)
    return run_dir


@functools.cache
def _periodic_checkpoint_class() -> type:
    """ModelCheckpoint whose ``last.ckpt`` also holds the final step when training ends between periodic saves
    (Lightning only writes it at the end if it was never written), so a finished run can be extended exactly.

    Built on first use so that importing this module (for TrainConfig) does not import Lightning.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    class PeriodicCheckpoint(ModelCheckpoint):
        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            if self._last_global_step_saved != trainer.global_step:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            super().on_train_end(trainer, pl_module)

    # Picklable by name (ddp_spawn sends the trainer's callbacks to its workers): see __getattr__ below.
    PeriodicCheckpoint.__module__ = __name__
    PeriodicCheckpoint.__qualname__ = "PeriodicCheckpoint"
    return PeriodicCheckpoint


def __getattr__(name: str) -> Any:
    """Lazy module attribute: ``landformer.core.train.PeriodicCheckpoint`` without importing Lightning early."""
    if name == "PeriodicCheckpoint":
        return _periodic_checkpoint_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_loggers(config: TrainConfig, run_dir: Path) -> list[Any]:
    """CSV and TensorBoard write under ``run_dir/logs``; each (re)start gets a new ``version_N`` folder so a
    resumed run never overwrites the metrics written before it."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    log_dir = run_dir / "logs"
    loggers: list[Any] = []
    for name in config.loggers:
        if name == "csv":
            loggers.append(CSVLogger(save_dir=log_dir, name="csv"))
        elif name == "tensorboard":
            loggers.append(TensorBoardLogger(save_dir=log_dir, name="tensorboard", default_hp_metric=False))
        elif name == "wandb":
            require("wandb")
            log_dir.mkdir(parents=True, exist_ok=True)
            offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun")
            loggers.append(
                WandbLogger(project=config.wandb_project, name=run_dir.name, save_dir=str(log_dir), offline=offline)
            )
    return loggers


def log_images(trainer: Any, images: Mapping[str, Any], step: int) -> None:
    """Send RGB images to every logger of ``trainer`` that shows pictures: TensorBoard and W&B (CSV keeps none;
    the PNG files in the run folder stay the record). ``images`` maps a tag such as ``samples/gen`` to an
    (H, W, 3) uint8 array or a PNG file. Only rank 0 logs, as it alone writes the run's files."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    if not shows_images(trainer):
        return
    arrays = {tag: _rgb(image) for tag, image in images.items()}
    for logger in trainer.loggers:
        for tag, rgb in arrays.items():
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, rgb, step, dataformats="HWC")
            elif isinstance(logger, WandbLogger):
                logger.log_image(key=tag, images=[rgb], step=step)


def shows_images(trainer: Any) -> bool:
    """Whether :func:`log_images` would send pictures anywhere: this is rank 0 and a logger shows them."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    image_loggers = (TensorBoardLogger, WandbLogger)
    return trainer.is_global_zero and any(isinstance(logger, image_loggers) for logger in trainer.loggers)


def log_image_files(trainer: Any, paths: Iterable[Path], step: int, section: str = "images") -> None:
    """:func:`log_images` for PNG files named ``<name>_<step>.png`` (or ``<name>.png``): each is tagged
    ``<section>/<name>``, so the pictures of successive steps line up under one tag."""
    log_images(trainer, {f"{section}/{_STEP_SUFFIX.sub('', Path(path).stem)}": Path(path) for path in paths}, step)


def _rgb(image: Any) -> Any:
    """An (H, W, 3) uint8 array from an array or an image file (grey and RGBA become RGB)."""
    import imageio.v3 as iio

    array = np.asarray(iio.imread(image) if isinstance(image, (str, os.PathLike)) else image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def build_trainer(
    config: TrainConfig,
    run_dir: str | os.PathLike[str],
    callbacks: Sequence[Any] = (),
    validate: bool = True,
    plugins: Sequence[Any] = (),
) -> Any:
    """A ``lightning.Trainer`` for ``config`` writing under ``run_dir``.

    ``validate`` says whether there will be validation data: only then is ``best.ckpt`` tracked and early
    stopping possible (both need the ``monitor`` metric, which only validation produces).
    """
    import lightning
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    periodic_checkpoint = _periodic_checkpoint_class()

    _quiet_lightning()
    run_dir = Path(run_dir)
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    # Periodic checkpoints: monitoring "step" in max mode keeps the newest `keep_checkpoints` of them. The version
    # counter is off so last.ckpt is always overwritten in place, never renamed to last-v1.ckpt.
    all_callbacks: list[Any] = [
        periodic_checkpoint(
            dirpath=checkpoint_dir,
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            monitor="step",
            mode="max",
            save_top_k=config.keep_checkpoints,
            every_n_train_steps=config.checkpoint_every_steps,
            save_last=True,
            enable_version_counter=False,
        )
    ]
    if validate:
        all_callbacks.append(
            ModelCheckpoint(
                dirpath=checkpoint_dir,
                filename="best",
                monitor=config.monitor,
                mode="min",
                save_top_k=1,
                enable_version_counter=False,
            )
        )
        if config.early_stopping_patience is not None:
            patience = config.early_stopping_patience
            all_callbacks.append(EarlyStopping(monitor=config.monitor, mode="min", patience=patience))
    loggers = build_loggers(config, run_dir)
    if loggers:
        all_callbacks.append(LearningRateMonitor(logging_interval="step"))
    all_callbacks.extend(callbacks)
    try:
        return lightning.Trainer(
            accelerator=config.accelerator,
            devices=config.devices,
            strategy=config.strategy,
            num_nodes=config.num_nodes,
            precision=resolve_precision(config.precision, config.accelerator),
            max_steps=config.max_steps,
            max_epochs=config.max_epochs,
            max_time=None if config.max_minutes is None else timedelta(minutes=config.max_minutes),
            # Validation counts training batches across epoch boundaries (check_val_every_n_epoch=None), so small
            # data sets with fewer batches than val_every_steps still validate on schedule.
            val_check_interval=config.val_every_steps * config.accumulate_grad_batches if validate else None,
            check_val_every_n_epoch=None if validate else 1,
            log_every_n_steps=config.log_every_steps,
            gradient_clip_val=config.gradient_clip or None,
            accumulate_grad_batches=config.accumulate_grad_batches,
            deterministic=config.deterministic,
            enable_progress_bar=config.progress_bar,
            enable_model_summary=config.progress_bar,
            logger=loggers or False,
            callbacks=all_callbacks,
            plugins=list(plugins) or None,
            default_root_dir=run_dir,
        )
    except (MisconfigurationException, ValueError) as err:
        raise UserError(f"train config: {str(err).strip().splitlines()[0]}") from None


def check_device(name: str, flag: str = "--device") -> None:
    """Refuse a torch device name that is not one, or a CUDA/MPS device this machine does not have."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"{flag} {name!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{flag} {name}: no CUDA device is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{flag} {name}: no MPS device is available")


def add_resume_argument(parser: Any) -> None:
    """The ``--resume`` option every training command shares; pass ``args.resume`` straight to :func:`fit`."""
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CKPT",
        help="continue training from the run folder's checkpoints/last.ckpt, or from the checkpoint CKPT",
    )


def _split_data(data: Any) -> tuple[dict[str, Any], bool]:
    """Trainer.fit keyword arguments for a DataModule, a training loader, or a (train, val) pair."""
    import lightning
    from lightning.pytorch.utilities.model_helpers import is_overridden

    if isinstance(data, lightning.LightningDataModule):
        return {"datamodule": data}, is_overridden("val_dataloader", data, lightning.LightningDataModule)
    if isinstance(data, tuple) and len(data) == 2:
        train, val = data
        return {"train_dataloaders": train, "val_dataloaders": val}, val is not None
    if isinstance(data, Iterable):
        return {"train_dataloaders": data}, False
    kind = type(data).__name__
    raise TypeError(f"fit() needs a LightningDataModule, a DataLoader or a (train, val) pair, got {kind}")


def clear_earlier_run(run_dir: Path, name: str) -> None:
    """Delete ``run_dir`` when it holds an earlier training run called ``name`` (its run.json says so), so a
    command that always trains afresh (the demo) can run again; any other folder is left for training to refuse."""
    run_json = run_dir / "run.json"
    if run_json.is_file() and read_json(run_json).get("name") == name:
        shutil.rmtree(run_dir)


def _resume_path(run_dir: Path, resume: bool | str | os.PathLike[str]) -> Path | None:
    if resume is False:
        if last_checkpoint(run_dir) is not None:
            # Starting afresh would overwrite last.ckpt of a run that may have taken days.
            raise UserError(
                f"{run_dir} already holds a training run ({CHECKPOINT_DIR}/{LAST_CHECKPOINT}): "
                "resume it (--resume) or choose another run folder"
            )
        return None
    if resume is True:
        path = last_checkpoint(run_dir)
        if path is None:
            raise UserError(f"cannot resume: no checkpoint {run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT} (train first)")
        return check_training_checkpoint(path)
    return check_training_checkpoint(require_file(resume, "checkpoint to resume from"))


def check_training_checkpoint(path: Path) -> Path:
    """Refuse, before training starts, a checkpoint that cannot be loaded safely or is no training checkpoint."""
    state = load_torch(path, "checkpoint to resume from", mmap=True)
    if not isinstance(state, dict) or "state_dict" not in state or "global_step" not in state:
        keys = ", ".join(sorted(map(str, state))[:8]) if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{path} is not a training checkpoint of `fit` (it holds {keys or 'nothing'})")
    return path


def fit(
    task: Any,
    datamodule_or_loaders: Any,
    config: TrainConfig,
    run_dir: str | os.PathLike[str],
    resume: bool | str | os.PathLike[str] = False,
    callbacks: Sequence[Any] = (),
) -> FitResult:
    """Train ``task`` (a LightningModule) on a DataModule, a training DataLoader or a ``(train, val)`` pair.

    ``resume=True`` continues from ``run_dir/checkpoints/last.ckpt`` (a UserError if there is none); a path
    resumes from that checkpoint; ``resume=False`` refuses a ``run_dir`` that already has a ``last.ckpt``.
    Model weights, optimiser and scheduler state, step counters and callback state all continue; ``max_steps``
    is the total, so resuming a run that stopped at step N trains the remaining ``max_steps - N`` steps. A data
    loader without state restarts its epoch on resume, so data order matches an uninterrupted run only when the
    checkpoint falls on an epoch boundary (or the sampler is seeded by step).

    ``fit`` seeds everything with ``config.seed`` before training (data order, dropout, masking); the task's
    initial weights are drawn when it is built, so call :func:`seed_everything` before building it.
    """
    run_dir = Path(run_dir)
    ckpt_path = _resume_path(run_dir, resume)
    seed_everything(config.seed)
    fit_kwargs, validate = _split_data(datamodule_or_loaders)
    trainer = build_trainer(config, run_dir, callbacks=callbacks, validate=validate)
    start = time.perf_counter()
    try:
        trainer.fit(task, ckpt_path=ckpt_path, weights_only=True, **fit_kwargs)
    except pickle.UnpicklingError as err:
        raise UserError(f"checkpoint {ckpt_path} cannot be loaded safely: {unpickling_reason(err)}") from None
    except RuntimeError as err:
        if ckpt_path is not None and "Error(s) in loading state_dict" in str(err):
            first_line = str(err).strip().splitlines()[1 if "\n" in str(err).strip() else 0].strip()
            raise UserError(f"checkpoint {ckpt_path} does not fit this model (changed config?): {first_line}") from None
        raise
    seconds = time.perf_counter() - start

    best: Path | None = None
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor == config.monitor and callback.best_model_path:
            best = Path(callback.best_model_path)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
    last = last_checkpoint(run_dir)
    global_step = trainer.global_step
    if global_step == 0 and last is not None:
        # ddp_spawn trains in worker processes and leaves this process's counters at 0; the checkpoint knows.
        import torch

        global_step = int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    return FitResult(
        run_dir=run_dir,
        last_checkpoint=last,
        best_checkpoint=best,
        global_step=global_step,
        metrics=metrics,
        seconds=seconds,
    )
