"""Stage 3: direct preference optimization (Rafailov et al. 2023) of the Gaussian regressor.

A regressor with a Gaussian head is a policy over numbers: pi(y | tile) = N(y; mean, variance). For every training
tile the frozen SFT model (the reference) proposes candidate predictions y1, y2 ~ N(mean_ref, (s * sd_ref)^2); the
one closer to the true target is *chosen*, the other *rejected*. DPO then minimizes

    -log sigmoid(beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])

which raises the policy's density at chosen numbers and lowers it at rejected ones relative to the reference,
so the predicted mean moves towards the side of the truth the preferences point to (and the variance follows
how consistently they point there). When chosen and rejected are equal the bracket is zero whatever the
parameters, so such a pair gives no gradient. ``beta`` sets how far the policy may drift from the reference.

By default only the head moves (``dpo.train_encoder = false``): the pooled encoder features of every tile are
computed once and the stage trains in seconds. The stage reports, on the same split as SFT, whether DPO changed
R2, and by how much; nothing guarantees it improves on SFT, since the preferences carry no more information
about the targets than the training labels the SFT model was fitted to.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from landformer.core.errors import UserError
from landformer.core.io import write_json
from landformer.core.task import BaseTask
from landformer.core.train import fit, last_checkpoint, prepare_run, seed_everything
from landformer.embeddings.config import EmbeddingsConfig
from landformer.embeddings.data import EmbeddingDataset
from landformer.embeddings.evaluate import regression_metrics
from landformer.embeddings.pipeline import (
    eval_loader,
    load_data,
    save_model,
    set_threads,
)
from landformer.embeddings.regress import (
    Regressor,
    build_regressor,
    gaussian_log_prob,
    load_regressor,
    log_validation_r2,
    predict,
    stage_report,
)


def dpo_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor, reference_rejected: Tensor, beta: float
) -> tuple[Tensor, Tensor]:
    """Mean DPO loss and the per-pair logits ``beta * (chosen log-ratio - rejected log-ratio)``."""
    logits = beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))
    return -F.logsigmoid(logits).mean(), logits


def make_pairs(
    mean: np.ndarray, sd: np.ndarray, target: np.ndarray, pairs_per_tile: int, sample_scale: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``pairs_per_tile`` candidate pairs per tile from N(mean, (sample_scale * sd)^2); return the tile index of
    each pair, the chosen value (closer to ``target``) and the rejected one."""
    rng = np.random.default_rng(seed)
    count = len(mean)
    draws = rng.normal(size=(count, pairs_per_tile, 2)) * (sample_scale * sd)[:, None, None] + mean[:, None, None]
    first_closer = np.abs(draws[..., 0] - target[:, None]) <= np.abs(draws[..., 1] - target[:, None])
    chosen = np.where(first_closer, draws[..., 0], draws[..., 1])
    rejected = np.where(first_closer, draws[..., 1], draws[..., 0])
    tiles = np.repeat(np.arange(count), pairs_per_tile)
    return tiles, chosen.reshape(-1), rejected.reshape(-1)


class PairDataset(Dataset):
    """Preference pairs of one tile each, with the reference's log-densities of both values."""

    def __init__(self, inputs: Tensor, tiles: np.ndarray, chosen: Tensor, rejected: Tensor, reference: Tensor) -> None:
        self.inputs = inputs  # (N, ...) pooled features or frames of the tiles
        self.tiles = torch.as_tensor(tiles)
        self.chosen = chosen
        self.rejected = rejected
        self.reference = reference  # (P, 2) reference log-densities of chosen and rejected

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, item: int) -> dict[str, Tensor]:
        tile = int(self.tiles[item])
        return {
            "inputs": self.inputs[tile],
            "chosen": self.chosen[item],
            "rejected": self.rejected[item],
            "reference": self.reference[item],
        }


class TileInputs(Dataset):
    """Validation tiles: their inputs (features or frames) and standardized targets."""

    def __init__(self, inputs: Tensor, targets: Tensor) -> None:
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, item: int) -> dict[str, Tensor]:
        return {"inputs": self.inputs[item], "target": self.targets[item]}


class DPOTask(BaseTask):
    """Lightning task of the DPO stage. ``inputs`` are pooled features when the encoder is frozen, else frames."""

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
        self.policy = build_regressor(self.hparams)
        if not self.hparams.train_encoder:
            self.policy.encoder.requires_grad_(False)

    def head_outputs(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        features = self.policy.features(inputs) if self.hparams.train_encoder else inputs
        return self.policy.head(features)

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
        return [(self.policy.head, 1.0, 0), (self.policy.encoder, self.hparams.encoder_lr_scale, 0)]


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
    config.validate()
    if resume is False and last_checkpoint(run_dir) is not None:
        raise UserError(f"{run_dir} already holds a training run (checkpoints/last.ckpt): resume it or choose another")
    reference, meta = load_regressor(sft)
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
    task = DPOTask(
        encoder=meta["encoder"],
        frames=meta["frames"],
        head_hidden=meta["head_hidden"],
        head_dropout=meta["head_dropout"],
        pooling=meta.get("pooling", "mean"),
        probe=bool(meta.get("probe", False)),
        lora=meta.get("lora"),
        beta=dpo.beta,
        train_encoder=dpo.train_encoder,
        encoder_lr_scale=dpo.encoder_lr_scale,
        lr=dpo.lr,
        weight_decay=dpo.weight_decay,
        warmup_steps=dpo.warmup_steps,
        max_steps=config.train_dpo.max_steps,
        min_lr_ratio=dpo.min_lr_ratio,
    )
    if resume is False:
        task.policy.load_state_dict(copy.deepcopy(reference.state_dict()))
        if not dpo.train_encoder:
            task.policy.encoder.requires_grad_(False)
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
    weights = save_model(run_dir, task.policy.state_dict(), dpo_meta)
    report = stage_report("dpo", dataset, task.policy, dpo_meta, run_dir)
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
