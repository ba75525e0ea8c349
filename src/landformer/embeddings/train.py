"""Stage 2: supervised fine-tuning of a regression head on pooled encoder features.

The head is Gaussian: it predicts a mean and a log-variance for the standardized target. The mean is trained with
the squared error (so it is the same estimate an MSE regressor gives), the variance with the Gaussian negative
log-likelihood of the *detached* mean (so learning the spread never pulls the mean). Stage 3 needs that spread.

Training is staged: for the first ``freeze_epochs`` the encoder is frozen (run without gradients, and its learning
rate held at 0) while the head learns from scratch on pretrained features; then the encoder joins at
``encoder_lr_scale`` times the head's learning rate, so fine-tuning does not wreck the pretrained features with the
large early gradients of a random head. Validation R2 picks the best checkpoint and stops training early
(``train_sft.monitor`` is ``val/r2_deficit`` = 1 - R2, since the trainer minimizes). With ``sft.lora`` the
encoder's attention and MLP projections get low-rank adapters (peft) and only those, the patch embedding and the
head train: the option meant for the 7B towers.

With ``sft.start_from_probe`` (LP-FT, Kumar et al. 2022) the head also holds a linear branch on the tile's mean raw
embedding, set to the ridge probe fitted on the training tiles, and the deep head's mean output starts at zero:
fine-tuning starts exactly at the probe, and the first gradients the encoder sees are the probe's residuals, not
a random head's. The step-0 weights (``probe_start.safetensors``) stay a candidate of the validation choice: the
fine-tuned model replaces them only when its validation gain is clear of noise (``sft.probe_min_gain_se``), so
fine-tuning that does not clearly help leaves the probe as it was. ``sft.probe_lr_scale = 0`` keeps the branch at
the ridge fit (the deep part then learns the probe's residual).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landformer.core.config import to_dict
from landformer.core.errors import UserError
from landformer.core.io import load_safetensors, save_safetensors, write_json
from landformer.core.task import BaseTask
from landformer.core.train import fit, last_checkpoint, log_images, prepare_run, seed_everything, shows_images
from landformer.embeddings.config import EmbeddingsConfig
from landformer.embeddings.data import EmbeddingDataset
from landformer.embeddings.encoders import PatchEncoder, build_encoder, count_parameters, exported_encoder_config
from landformer.embeddings.evaluate import (
    fit_baselines,
    fit_ridge_probe,
    regression_metrics,
    save_scatter,
    split_metrics,
)
from landformer.embeddings.pipeline import (
    eval_loader,
    load_data,
    load_encoder_file,
    load_model_file,
    make_loaders,
    save_model,
    set_threads,
    target_scaling,
)

LOG_VAR_RANGE = (-9.0, 4.0)  # standardized units: sd between 0.011 and 7.4
PROBE_START_FILE = "probe_start.safetensors"  # the step-0 weights of a start_from_probe run


def mean_embedding(frames: Tensor) -> Tensor:
    """(B, F, C, H, W) -> (B, C): the mean of the first frame's pixel vectors over the pixels observed in every
    frame, the input of the ridge and kNN probes (:meth:`~landformer.embeddings.data.EmbeddingDataset.mean_embeddings`).
    Masked pixels arrive as zero vectors, and an observed embedding pixel is a unit vector, never zero."""
    observed = (frames.abs().amax(dim=2) > 0).all(dim=1).flatten(1).to(frames.dtype)  # (B, H*W)
    pixels = frames[:, 0].flatten(2)  # (B, C, H*W)
    return torch.einsum("bcp,bp->bc", pixels, observed) / observed.sum(dim=1, keepdim=True).clamp_min(1.0)


class LinearProbe(nn.Module):
    """A linear model of the standardized target on the tile's mean raw embedding, with the embedding standardized
    by fixed (buffered, exported) statistics: the ridge probe as a layer, so fine-tuning can start from it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(channels))
        self.register_buffer("feature_scale", torch.ones(channels))
        self.linear = nn.Linear(channels, 1)

    def forward(self, embedding: Tensor) -> Tensor:
        return self.linear((embedding - self.feature_mean) / self.feature_scale)[..., 0]

    @torch.no_grad()
    def set_from_ridge(self, ridge: Any, target_mean: float, target_scale: float) -> None:
        """Copy a fitted ridge probe (:func:`~landformer.embeddings.evaluate.fit_ridge_probe`, in target units)
        into this layer, converted to the standardized targets the heads predict."""
        scaler, model = ridge[0], ridge[-1]
        self.feature_mean.copy_(torch.as_tensor(scaler.mean_))
        self.feature_scale.copy_(torch.as_tensor(scaler.scale_))
        self.linear.weight.copy_(torch.as_tensor(model.coef_ / target_scale)[None])
        self.linear.bias.fill_((float(model.intercept_) - target_mean) / target_scale)


class GaussianHead(nn.Module):
    """Pooled features -> (mean, log-variance) of the standardized target.

    With ``probe_width`` the last ``probe_width`` feature columns are the tile's mean raw embedding, and a
    :class:`LinearProbe` on them is added to the mean (the deep part sees only the encoder features).
    """

    def __init__(self, width: int, hidden: int = 128, dropout: float = 0.1, probe_width: int = 0) -> None:
        super().__init__()
        self.width = width
        self.net = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 2),
        )
        self.probe = LinearProbe(probe_width) if probe_width else None

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(features[..., : self.width])
        mean = out[..., 0]
        if self.probe is not None:
            mean = mean + self.probe(features[..., self.width :])
        return mean, out[..., 1].clamp(*LOG_VAR_RANGE)


class Regressor(nn.Module):
    """Encoder + pooling of its patch tokens (:func:`~landformer.embeddings.encoders.pool_tokens`) + Gaussian head;
    with ``probe``, plus a linear probe on the tile's mean raw embedding (:class:`LinearProbe`)."""

    def __init__(
        self,
        encoder: PatchEncoder,
        head_hidden: int = 128,
        head_dropout: float = 0.1,
        pooling: str = "mean",
        probe: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.probe = probe
        probe_width = encoder.in_channels if probe else 0
        self.head = GaussianHead(encoder.pooled_width(pooling), head_hidden, head_dropout, probe_width)

    def features(self, frames: Tensor) -> Tensor:
        """The head's input: pooled encoder features, followed by the mean raw embedding when ``probe`` is set."""
        pooled = self.encoder.features(frames, self.pooling)
        if not self.probe:
            return pooled
        return torch.cat([pooled, mean_embedding(frames).to(pooled.dtype)], dim=-1)

    @torch.no_grad()
    def start_from_probe(self, ridge: Any, target_mean: float, target_scale: float) -> None:
        """Make the model's mean prediction exactly the ridge probe's (LP-FT, Kumar et al. 2022): the probe layer
        takes the ridge fit and the deep head's mean output starts at zero, so fine-tuning begins at the probe
        and the encoder's first gradients come from the probe's residuals, not from a random head."""
        if self.head.probe is None:
            raise ValueError("start_from_probe needs a Regressor built with probe=True")
        self.head.probe.set_from_ridge(ridge, target_mean, target_scale)
        last = self.head.net[-1]
        last.weight[0].zero_()
        last.bias[0].zero_()

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.features(frames))

    def log_prob(self, frames: Tensor, values: Tensor) -> Tensor:
        """Gaussian log-density of ``values`` (B,) or (B, K) under the prediction for each tile."""
        mean, log_var = self(frames)
        if values.ndim == 2:
            mean, log_var = mean[:, None], log_var[:, None]
        return gaussian_log_prob(values, mean, log_var)


def gaussian_log_prob(values: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    return -0.5 * ((values - mean) ** 2 * torch.exp(-log_var) + log_var + math.log(2 * math.pi))


def add_lora(encoder: nn.Module, rank: int, alpha: int, dropout: float, targets: list[str]) -> None:
    """Inject LoRA adapters into the encoder's matching linear layers and freeze everything else in it except
    the patch embedding (which is new for 64 channels and has to learn)."""
    from peft import LoraConfig, inject_adapter_in_model

    present = {name.rsplit(".", 1)[-1] for name, module in encoder.named_modules() if isinstance(module, nn.Linear)}
    chosen = [target for target in targets if target in present]
    if not chosen:
        raise UserError(f"sft.lora_targets {targets} match no linear layer of the encoder (it has: {sorted(present)})")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=chosen)
    inject_adapter_in_model(config, encoder)
    for name, param in encoder.named_parameters():
        param.requires_grad = "lora_" in name or "patch_embed" in name


def build_regressor(spec: Mapping[str, Any]) -> Regressor:
    """The Gaussian regressor that a task's hyperparameters or an exported model's JSON describe: ``encoder``,
    ``frames``, ``head_hidden``, ``head_dropout``, ``pooling`` (older exports: mean), ``probe`` (older exports:
    none) and optional ``lora``."""
    model = Regressor(
        build_encoder(spec["encoder"], spec["frames"]),
        spec["head_hidden"],
        spec["head_dropout"],
        spec.get("pooling", "mean"),
        bool(spec.get("probe", False)),
    )
    lora = spec.get("lora")
    if lora:
        add_lora(model.encoder, lora["rank"], lora["alpha"], lora["dropout"], lora["targets"])
    return model


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


def _lora_settings(config: EmbeddingsConfig) -> dict[str, Any] | None:
    sft = config.sft
    if not sft.lora:
        return None
    return {"rank": sft.lora_rank, "alpha": sft.lora_alpha, "dropout": sft.lora_dropout, "targets": sft.lora_targets}


def build_regression_task(
    config: EmbeddingsConfig, encoder: dict[str, Any], frames: int, freeze_steps: int
) -> RegressionTask:
    sft = config.sft
    return RegressionTask(
        encoder=encoder,
        frames=frames,
        head_hidden=sft.head_hidden,
        head_dropout=sft.head_dropout,
        pooling=sft.pooling,
        probe=sft.start_from_probe,
        probe_lr_scale=sft.probe_lr_scale,
        freeze_steps=freeze_steps,
        encoder_lr_scale=sft.encoder_lr_scale,
        lora=_lora_settings(config),
        lr=sft.lr,
        weight_decay=sft.weight_decay,
        warmup_steps=sft.warmup_steps,
        max_steps=config.train_sft.max_steps,
        min_lr_ratio=sft.min_lr_ratio,
    )


def model_meta(
    stage: str,
    encoder: dict[str, Any],
    frames: int,
    dataset: EmbeddingDataset,
    task_hparams: Any,
    scaling: tuple[float, float],
) -> dict[str, Any]:
    return {
        "stage": stage,
        "encoder": encoder,
        "frames": frames,
        "tile_size": dataset.tile_size,
        "head_hidden": task_hparams["head_hidden"],
        "head_dropout": task_hparams["head_dropout"],
        "pooling": task_hparams.get("pooling", "mean"),
        "probe": bool(task_hparams.get("probe", False)),
        "lora": task_hparams.get("lora"),
        "target_mean": scaling[0],
        "target_scale": scaling[1],
        "target_name": dataset.target_name,
    }


def load_regressor(path: str | os.PathLike[str], device: str = "cpu") -> tuple[Regressor, dict[str, Any]]:
    """An exported SFT/DPO model (run folder or ``model.safetensors``) ready for :func:`predict`."""
    tensors, meta = load_model_file(path)
    model = build_regressor(meta)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise UserError(
            f"{path}: weights do not fit the model its JSON describes: {str(err).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), meta


@torch.no_grad()
def predict(
    model: Regressor,
    meta: dict[str, Any],
    dataset: EmbeddingDataset,
    indices: np.ndarray,
    batch_size: int = 64,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the prediction for each of ``indices``, in target units."""
    loader = eval_loader(dataset, indices, batch_size, 0.0, 1.0)
    model.eval()
    means, sds = [], []
    for batch in loader:
        mean, log_var = model(batch["frames"].to(device))
        means.append(mean.float().cpu())
        sds.append(torch.exp(0.5 * log_var).float().cpu())
    scale, offset = meta["target_scale"], meta["target_mean"]
    return (torch.cat(means).numpy() * scale + offset), (torch.cat(sds).numpy() * scale)


def stage_report(
    stage: str, dataset: EmbeddingDataset, model: Regressor, meta: dict[str, Any], run_dir: Path
) -> dict[str, Any]:
    """Metrics of the model and the ridge/kNN baselines on every split, and the test scatter plot."""
    mean, _ = predict(model, meta, dataset, np.arange(len(dataset)))
    baselines = fit_baselines(dataset)
    predictions = {"ridge": baselines["ridge"]["prediction"], "knn": baselines["knn"]["prediction"], stage: mean}
    metrics = {name: split_metrics(dataset, prediction) for name, prediction in predictions.items()}
    test = dataset.indices("test")
    scatter = None
    if len(test):
        scatter = save_scatter(
            run_dir / "scatter.png",
            dataset.targets[test],
            {name: prediction[test] for name, prediction in predictions.items()},
            f"held-out test tiles (n = {len(test)})",
            dataset.target_name,
        )
    return {
        "metrics": metrics,
        "baseline_settings": {name: baselines[name]["settings"] for name in ("ridge", "knn")},
        "scatter": str(scatter) if scatter else None,
    }


def validation_errors(model: Regressor, dataset: EmbeddingDataset, scaling: tuple[float, float]) -> np.ndarray:
    """Squared error on each validation tile (no augmentation, eval mode), in target units."""
    val = dataset.indices("val")
    mean, _ = predict(model, {"target_mean": scaling[0], "target_scale": scaling[1]}, dataset, val)
    return (mean - dataset.targets[val]) ** 2


def keep_start_unless_beaten(
    model: Regressor,
    start_file: Path,
    checkpoint: Path,
    dataset: EmbeddingDataset,
    scaling: tuple[float, float],
    min_gain_se: float,
) -> tuple[Path, dict[str, float]]:
    """Put the step-0 weights (the ridge probe, :meth:`Regressor.start_from_probe`) back into ``model`` unless the
    best checkpoint's validation gain over them, the mean over validation tiles of (start's squared error - its
    squared error), exceeds ``min_gain_se`` standard errors of that mean. Returns the file the model's weights now
    come from and the gain.

    Validation runs only after training steps, so without this the start is never among the candidates early
    stopping chooses from. The margin is there because a few dozen validation tiles cannot tell a small gain
    from noise, and a fine-tuned model that only looks better on them is usually no better on new tiles; tiles
    of one region are correlated, so the standard error is, if anything, too small."""
    if not start_file.is_file():
        raise UserError(f"{start_file} is missing: it holds the step-0 weights a start_from_probe run compares with")
    trained_state = {name: value.clone() for name, value in model.state_dict().items()}
    trained_errors = validation_errors(model, dataset, scaling)
    model.load_state_dict(load_safetensors(start_file, "step-0 weights")[0])
    gain = validation_errors(model, dataset, scaling) - trained_errors
    standard_error = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else 0.0
    report = {"mean": float(gain.mean()), "standard_error": standard_error, "min_gain_se": min_gain_se}
    if gain.mean() <= min_gain_se * standard_error:
        return start_file, report
    model.load_state_dict(trained_state)
    return checkpoint, report


def finetune(
    config: EmbeddingsConfig,
    run_dir: str | os.PathLike[str],
    init: str | os.PathLike[str] | None = None,
    resume: bool | str | os.PathLike[str] = False,
) -> dict[str, Any]:
    """Fine-tune a regressor on the training tiles, pick the checkpoint with the best validation R2, export it as
    ``model.safetensors`` + ``model.json`` and score it with the baselines (``summary.json``, ``scatter.png``).

    ``init`` is a pretrain run folder (or its ``encoder.safetensors``): its encoder, with its own encoder config,
    replaces the recipe's ``encoder`` section. Without it the encoder starts from scratch (or, for a Qwen tower
    with ``encoder.pretrained``, from the checkpoint's weights).
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    config.validate()
    if resume is False and last_checkpoint(run_dir) is not None:
        raise UserError(f"{run_dir} already holds a training run (checkpoints/last.ckpt): resume it or choose another")
    encoder_state, encoder_values = None, to_dict(config.encoder)
    if init is not None:
        encoder_state, pretrain_meta = load_encoder_file(init)
        encoder_values = pretrain_meta["encoder"]
        config.encoder.kind = encoder_values["kind"]
    prepare_run(run_dir, config, "embeddings sft")
    set_threads(config)
    dataset = load_data(config.data, int(encoder_values["in_channels"]))
    scaling = target_scaling(dataset)
    train_loader, val_loader = make_loaders(dataset, config.data, *scaling)
    freeze_steps = config.sft.freeze_epochs * len(train_loader)
    seed_everything(config.train_sft.seed)
    task = build_regression_task(config, encoder_values, dataset.n_frames, freeze_steps)
    try:
        task.model.encoder.check_tile(dataset.tile_size, dataset.tile_size)
    except ValueError as err:
        raise UserError(f"embeddings encoder: {err} (change encoder.patch_size)") from None
    if encoder_state is not None and resume is False:
        task.model.encoder.load_state_dict(encoder_state)
    start_file = run_dir / PROBE_START_FILE
    if config.sft.start_from_probe and resume is False:
        task.model.start_from_probe(fit_ridge_probe(dataset), *scaling)
        save_safetensors(start_file, task.model.state_dict(), {"stage": "sft", "step": 0})
    result = fit(task, (train_loader, val_loader), config.train_sft, run_dir, resume=resume)
    checkpoint = result.load_best_into(task)
    task.eval()
    probe_gain = None
    if config.sft.start_from_probe:
        checkpoint, probe_gain = keep_start_unless_beaten(
            task.model, start_file, checkpoint, dataset, scaling, config.sft.probe_min_gain_se
        )
    exported = exported_encoder_config(encoder_values, task.model.encoder)
    meta = model_meta("sft", exported, dataset.n_frames, dataset, dict(task.hparams), scaling)
    meta.update({"checkpoint": str(checkpoint), "global_step": result.global_step, "init": str(init) if init else None})
    weights = save_model(run_dir, task.model.state_dict(), meta)
    report = stage_report("sft", dataset, task.model, meta, run_dir)
    summary = {
        "run_dir": str(run_dir),
        "model": str(weights),
        "checkpoint": str(checkpoint),
        "global_step": result.global_step,
        "freeze_steps": freeze_steps,
        "kept_probe_start": checkpoint == start_file,
        "validation_gain_over_probe": probe_gain,
        "trainable_parameters": count_parameters(task.model, trainable_only=True),
        "parameters": count_parameters(task.model),
        **report,
        "fit_seconds": round(result.seconds, 2),
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(run_dir / "summary.json", summary)
    return summary
