"""Training the embeddings pipeline, one stage at a time: :func:`train` runs the stage it is given.

- ``pretrain`` (:func:`pretrain`): the MAE on the training tiles; exports the encoder (``encoder.safetensors``).
- ``sft`` (:func:`finetune`): the Gaussian regressor, its encoder started from a pretrain run (``init``); picks the
  checkpoint with the best validation R2 and exports ``model.safetensors``, scored against the ridge and kNN probes.
  With ``sft.lora`` the encoder's attention and MLP projections get low-rank adapters (peft) and only those, the
  patch embedding and the head train: the option meant for the 7B towers.

  With ``sft.start_from_probe`` (LP-FT, Kumar et al. 2022) the head also holds a linear branch on the tile's mean
  raw embedding, set to the ridge probe fitted on the training tiles, and the deep head's mean output starts at
  zero: fine-tuning starts exactly at the probe, and the first gradients the encoder sees are the probe's
  residuals, not a random head's. The step-0 weights (``probe_start.safetensors``) stay a candidate of the
  validation choice: the fine-tuned model replaces them only when its validation gain is clear of noise
  (``sft.probe_min_gain_se``), so fine-tuning that does not clearly help leaves the probe as it was.
  ``sft.probe_lr_scale = 0`` keeps the branch at the ridge fit (the deep part then learns the probe's residual).
- ``dpo`` (:func:`prefer`): DPO of the Gaussian head against the frozen SFT model (``sft``), or with
  ``dpo.route = text`` the trl route of :mod:`~landformer.embeddings.trl_route`. By default only the head moves
  (``dpo.train_encoder = false``): the pooled encoder features of every tile are computed once and the stage trains
  in seconds. The stage reports, on the same split as SFT, whether DPO changed R2, and by how much; nothing
  guarantees it improves on SFT, since the preferences carry no more information about the targets than the
  training labels the SFT model was fitted to.

Every stage writes ``summary.json`` into its run folder and returns the same summary.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from landformer.core.config import to_dict
from landformer.core.errors import UserError
from landformer.core.io import load_safetensors, save_safetensors, write_json
from landformer.core.task import ImagesEvery, task_from_recipe
from landformer.core.train import fit, last_checkpoint, prepare_run, seed_everything
from landformer.core.viz import save_png
from landformer.embeddings.config import STAGES, EmbeddingsConfig
from landformer.embeddings.data import (
    PairDataset,
    TileInputs,
    eval_loader,
    load_data,
    make_loaders,
    make_pairs,
    set_threads,
    target_scaling,
)
from landformer.embeddings.evaluate import (
    fit_ridge_probe,
    predict,
    reconstruction_grid,
    regression_metrics,
    stage_report,
)
from landformer.embeddings.export import load, load_encoder, model_meta, save, save_encoder
from landformer.embeddings.model import Regressor, count_parameters, exported_encoder_config, gaussian_log_prob
from landformer.embeddings.task import DPOTask, MAETask, RegressionTask
from landformer.embeddings.tiles import EmbeddingDataset
from landformer.embeddings.trl_route import text_dpo

PROBE_START_FILE = "probe_start.safetensors"  # the step-0 weights of a start_from_probe run


def train(
    recipe: EmbeddingsConfig,
    run_dir: str | os.PathLike[str],
    resume: bool | str | os.PathLike[str] = False,
    stage: str = "pretrain",
    init: str | os.PathLike[str] | None = None,
    sft: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Run one ``stage`` (pretrain, sft or dpo) of ``recipe`` into ``run_dir`` and return its summary.

    ``init`` (sft only) is a pretrain run folder or its ``encoder.safetensors``; ``sft`` (dpo only, required) is an
    sft run folder or its ``model.safetensors``. ``resume`` is True (the run folder's last checkpoint), a
    checkpoint, or False for a fresh run.
    """
    if stage not in STAGES:
        raise UserError(f"embeddings train: stage {stage!r} is not one of {', '.join(STAGES)}")
    if init is not None and stage != "sft":
        raise UserError("--init goes with --stage sft")
    if sft is not None and stage != "dpo":
        raise UserError("--sft goes with --stage dpo")
    if stage == "pretrain":
        return pretrain(recipe, run_dir, resume=resume)
    if stage == "sft":
        return finetune(recipe, run_dir, init=init, resume=resume)
    if sft is None:
        raise UserError("--stage dpo needs --sft: the sft run to improve")
    if recipe.dpo.route == "text":
        return text_dpo(recipe, run_dir, sft=sft, resume=resume)
    return prefer(recipe, run_dir, sft=sft, resume=resume)


def _check_fresh(config: EmbeddingsConfig, run_dir: Path, resume: bool | str | os.PathLike[str]) -> None:
    """Check the recipe, and refuse to start a fresh run in a folder that already holds one."""
    config.validate()
    if resume is False and last_checkpoint(run_dir) is not None:
        raise UserError(f"{run_dir} already holds a training run (checkpoints/last.ckpt): resume it or choose another")


def pretrain(
    config: EmbeddingsConfig, run_dir: str | os.PathLike[str], resume: bool | str | os.PathLike[str] = False
) -> dict[str, Any]:
    """Pretrain the encoder with the MAE on the training tiles (never the validation or test ones), export the
    best checkpoint's encoder as ``encoder.safetensors`` + ``encoder.json`` and draw ``reconstructions.png``.
    Returns a summary, also written to ``summary.json``."""
    start = time.perf_counter()
    run_dir = Path(run_dir)
    _check_fresh(config, run_dir, resume)
    prepare_run(run_dir, config, "embeddings pretrain")
    set_threads(config)
    dataset = load_data(config.data, config.encoder.in_channels)
    train_loader, val_loader = make_loaders(dataset, config.data, 0.0, 1.0)
    seed_everything(config.train_pretrain.seed)
    task = task_from_recipe(MAETask, config.stage("pretrain"), encoder=to_dict(config.encoder), frames=dataset.n_frames)
    try:
        task.model.encoder.check_tile(dataset.tile_size, dataset.tile_size)
    except ValueError as err:
        raise UserError(f"embeddings encoder: {err} (change encoder.patch_size)") from None
    shown = dataset.indices("val")[:6]
    pictures = ImagesEvery(
        lambda task: {"mae/reconstructions": reconstruction_grid(task.model, dataset, shown)},
        config.train_pretrain.val_every_steps,
    )
    result = fit(task, (train_loader, val_loader), config.train_pretrain, run_dir, resume=resume, callbacks=[pictures])
    checkpoint = result.load_best_into(task)
    task.eval()
    meta = {
        "stage": "pretrain",
        "encoder": to_dict(config.encoder),
        "frames": dataset.n_frames,
        "tile_size": dataset.tile_size,
        "checkpoint": str(checkpoint),
        "global_step": result.global_step,
    }
    weights = save_encoder(run_dir, task.model.encoder, meta)
    picture = save_png(run_dir / "reconstructions.png", reconstruction_grid(task.model, dataset, shown))
    summary = {
        "run_dir": str(run_dir),
        "encoder": str(weights),
        "reconstructions": str(picture),
        "checkpoint": str(checkpoint),
        "global_step": result.global_step,
        "val_loss": result.metrics.get("val/loss"),
        "encoder_parameters": count_parameters(task.model.encoder),
        "n_train_tiles": len(dataset.indices("train")),
        "fit_seconds": round(result.seconds, 2),
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(run_dir / "summary.json", summary)
    return summary


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
    _check_fresh(config, run_dir, resume)
    encoder_state, encoder_values = None, to_dict(config.encoder)
    if init is not None:
        encoder_state, pretrain_meta = load_encoder(init)
        encoder_values = pretrain_meta["encoder"]
        config.encoder.kind = encoder_values["kind"]
    prepare_run(run_dir, config, "embeddings sft")
    set_threads(config)
    dataset = load_data(config.data, int(encoder_values["in_channels"]))
    scaling = target_scaling(dataset)
    train_loader, val_loader = make_loaders(dataset, config.data, *scaling)
    freeze_steps = config.sft.freeze_epochs * len(train_loader)
    seed_everything(config.train_sft.seed)
    task = task_from_recipe(
        RegressionTask,
        config.stage("sft"),
        encoder=encoder_values,
        frames=dataset.n_frames,
        freeze_steps=freeze_steps,
        probe=config.sft.start_from_probe,
        lora=config.sft.lora_settings(),
    )
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
    weights = save(run_dir, task.model.state_dict(), meta)
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


@torch.no_grad()
def pooled_features(model: Regressor, dataset: EmbeddingDataset, batch_size: int = 64) -> Tensor:
    """(N, width) pooled encoder features of every tile (no augmentation)."""
    model.eval()
    loader = eval_loader(dataset, np.arange(len(dataset)), batch_size, 0.0, 1.0)
    return torch.cat([model.features(batch["frames"]).float() for batch in loader])


def prefer(
    config: EmbeddingsConfig,
    run_dir: str | os.PathLike[str],
    sft: str | os.PathLike[str],
    resume: bool | str | os.PathLike[str] = False,
) -> dict[str, Any]:
    """Run DPO from an SFT run folder; export ``model.safetensors`` + ``model.json`` (stage ``dpo``), and report
    SFT and DPO side by side with the baselines (``summary.json``, ``scatter.png``)."""
    start = time.perf_counter()
    run_dir = Path(run_dir)
    _check_fresh(config, run_dir, resume)
    reference, meta = load(sft)
    if meta["stage"] not in ("sft", "dpo"):
        raise UserError(f"{sft} is a {meta['stage']!r} model; DPO starts from an sft model")
    prepare_run(run_dir, config, "embeddings dpo")
    set_threads(config)
    dataset = load_data(config.data, int(meta["encoder"]["in_channels"]))
    if meta["tile_size"] != dataset.tile_size:
        raise UserError(f"{sft} was trained on {meta['tile_size']} px tiles, the data has {dataset.tile_size} px")
    dpo = config.dpo
    mean_shift, scale = meta["target_mean"], meta["target_scale"]
    targets = (dataset.targets - mean_shift) / scale

    # The reference's predictions and the inputs the policy will see, for every tile.
    for param in reference.parameters():
        param.requires_grad_(False)
    features = pooled_features(reference, dataset, config.data.batch_size)
    with torch.no_grad():
        ref_mean, ref_log_var = reference.head(features)
    inputs = torch.from_numpy(dataset.tiles) if dpo.train_encoder else features
    train = dataset.indices("train")
    tiles, chosen, rejected = make_pairs(
        ref_mean[train].numpy().astype(np.float64),
        torch.exp(0.5 * ref_log_var[train]).numpy().astype(np.float64),
        targets[train],
        dpo.pairs_per_tile,
        dpo.sample_scale,
        config.train_dpo.seed,
    )
    chosen_t = torch.tensor(chosen, dtype=torch.float32)
    rejected_t = torch.tensor(rejected, dtype=torch.float32)
    pair_mean, pair_log_var = ref_mean[train][tiles], ref_log_var[train][tiles]
    ref_logp = torch.stack(
        [gaussian_log_prob(chosen_t, pair_mean, pair_log_var), gaussian_log_prob(rejected_t, pair_mean, pair_log_var)],
        dim=1,
    )
    pairs = PairDataset(inputs[train], tiles, chosen_t, rejected_t, ref_logp)
    val = dataset.indices("val")
    val_set = TileInputs(inputs[val], torch.tensor(targets[val], dtype=torch.float32))
    batch_size = config.data.batch_size
    train_loader = DataLoader(pairs, batch_size=batch_size, shuffle=True, drop_last=len(pairs) > batch_size)
    val_loader = DataLoader(val_set, batch_size=batch_size, shuffle=False)

    seed_everything(config.train_dpo.seed)
    task = task_from_recipe(
        DPOTask,
        config.stage("dpo"),
        encoder=meta["encoder"],
        frames=meta["frames"],
        head_hidden=meta["head_hidden"],
        head_dropout=meta["head_dropout"],
        pooling=meta.get("pooling", "mean"),
        probe=bool(meta.get("probe", False)),
        lora=meta.get("lora"),
    )
    if resume is False:
        task.model.load_state_dict(copy.deepcopy(reference.state_dict()))
        if not dpo.train_encoder:
            task.model.encoder.requires_grad_(False)
    result = fit(task, (train_loader, val_loader), config.train_dpo, run_dir, resume=resume)
    checkpoint = result.load_best_into(task)
    task.eval()
    dpo_meta = {
        **meta,
        "stage": "dpo",
        "sft": str(sft),
        "beta": dpo.beta,
        "checkpoint": str(checkpoint),
        "global_step": result.global_step,
    }
    weights = save(run_dir, task.model.state_dict(), dpo_meta)
    report = stage_report("dpo", dataset, task.model, dpo_meta, run_dir)
    sft_mean, _ = predict(reference, meta, dataset, np.arange(len(dataset)))
    sft_metrics = {
        split: regression_metrics(dataset.targets[idx], sft_mean[idx])
        for split in ("train", "val", "test")
        if len(idx := dataset.indices(split))
    }
    report["metrics"]["sft"] = sft_metrics
    comparison = {
        split: {
            "sft_r2": sft_metrics[split]["r2"],
            "dpo_r2": report["metrics"]["dpo"][split]["r2"],
            "change": report["metrics"]["dpo"][split]["r2"] - sft_metrics[split]["r2"],
        }
        for split in sft_metrics
    }
    summary = {
        "run_dir": str(run_dir),
        "model": str(weights),
        "checkpoint": str(checkpoint),
        "global_step": result.global_step,
        "n_pairs": len(pairs),
        "sft_vs_dpo": comparison,
        "dpo_improves_test_r2": bool(comparison.get("test", comparison["val"])["change"] > 0),
        **report,
        "fit_seconds": round(result.seconds, 2),
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(run_dir / "summary.json", summary)
    return summary
