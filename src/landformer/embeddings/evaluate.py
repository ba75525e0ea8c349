"""Scores, probes and pictures: R2 / MAE / RMSE, the ridge and kNN baselines, a model's predictions and the report
of a stage, scatter plots, the comparison table and the MAE's reconstructions.

The baselines are the probes the AlphaEarth authors evaluate embeddings with: a linear (ridge) model and a
k-nearest-neighbour regressor on the tile's mean embedding (mean of its observed 64-d pixel vectors). Both are
fitted on the training split; ridge picks its penalty by leave-one-out on the training tiles, kNN picks k on the
validation split. Scores are reported on the held-out test split (whole regions never seen in training).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from landformer.core.config import load_config
from landformer.core.errors import UserError
from landformer.core.io import atomic_path, write_json, write_text
from landformer.core.viz import image_grid, new_figure, save_figure, upscale
from landformer.embeddings.config import EmbeddingsConfig
from landformer.embeddings.data import eval_loader, load_data
from landformer.embeddings.encoders import PatchEncoder
from landformer.embeddings.export import load
from landformer.embeddings.model import MaskedAutoencoder, Regressor
from landformer.embeddings.tiles import EmbeddingDataset

KNN_CHOICES = (3, 5, 10, 20, 40)
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 4, 29))


def regression_metrics(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """R2 (1 - SSE / SST around the truth's own mean), mean absolute error, root mean squared error, bias."""
    truth = np.asarray(truth, dtype=np.float64)
    prediction = np.asarray(prediction, dtype=np.float64)
    if truth.shape != prediction.shape or truth.size == 0:
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} must be equal, non-empty shapes")
    error = prediction - truth
    total = float(((truth - truth.mean()) ** 2).sum())
    return {
        "r2": 1.0 - float((error**2).sum()) / total if total > 0 else float("nan"),
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt((error**2).mean())),
        "bias": float(error.mean()),
        "n": int(truth.size),
    }


def fit_ridge_probe(dataset: EmbeddingDataset) -> Any:
    """The ridge probe: standardized mean-pooled raw embeddings -> target, fitted on the training tiles, with its
    penalty chosen by leave-one-out on them (a scikit-learn pipeline of StandardScaler and RidgeCV)."""
    # scikit-learn's linear models take seconds to import (as long as torch); only the baselines need them.
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = dataset.indices("train")
    if len(train) == 0:
        raise UserError("the dataset has no training tiles to fit the ridge and kNN baselines on")
    features = dataset.mean_embeddings()[train]
    return make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS)).fit(features, dataset.targets[train])


def fit_baselines(dataset: EmbeddingDataset) -> dict[str, dict[str, Any]]:
    """Ridge and kNN on mean-pooled raw embeddings; predictions for every tile plus the chosen settings."""
    # scikit-learn: imported where the baselines are fitted (seconds), as in fit_ridge_probe.
    from sklearn.neighbors import KNeighborsRegressor

    features = dataset.mean_embeddings()
    train, val = dataset.indices("train"), dataset.indices("val")
    targets = dataset.targets
    ridge = fit_ridge_probe(dataset)
    best_k, best_score = min(KNN_CHOICES[0], len(train)), -np.inf
    for k in KNN_CHOICES:
        if k > len(train):
            break
        knn = KNeighborsRegressor(n_neighbors=k).fit(features[train], targets[train])
        score = regression_metrics(targets[val], knn.predict(features[val]))["r2"]
        if score > best_score:
            best_k, best_score = k, score
    knn = KNeighborsRegressor(n_neighbors=best_k).fit(features[train], targets[train])
    return {
        "ridge": {"prediction": ridge.predict(features), "settings": {"alpha": float(ridge[-1].alpha_)}},
        "knn": {"prediction": knn.predict(features), "settings": {"k": best_k}},
    }


def split_metrics(dataset: EmbeddingDataset, prediction: np.ndarray) -> dict[str, dict[str, float]]:
    """Metrics of one model's predictions (for every tile) on each split."""
    return {
        split: regression_metrics(dataset.targets[indices], prediction[indices])
        for split in ("train", "val", "test")
        if len(indices := dataset.indices(split))
    }


def comparison_table(rows: dict[str, dict[str, dict[str, float]]], split: str = "test") -> str:
    """Markdown table of R2 / MAE / RMSE per model on one split."""
    lines = [f"| model | R2 ({split}) | MAE | RMSE | n |", "|---|---|---|---|---|"]
    for name, metrics in rows.items():
        if split not in metrics:
            continue
        m = metrics[split]
        lines.append(f"| {name} | {m['r2']:.4f} | {m['mae']:.4f} | {m['rmse']:.4f} | {m['n']} |")
    return "\n".join(lines)


def save_scatter(
    path: str | os.PathLike[str],
    truth: np.ndarray,
    predictions: dict[str, np.ndarray],
    title: str,
    target_name: str = "target",
) -> Path:
    """One panel per model of predicted against true values, with the 1:1 line and the panel's R2."""
    if not predictions:
        raise UserError("save_scatter: no predictions to plot")
    count = len(predictions)
    figure = new_figure(340 * count, 390)
    everything = np.concatenate([truth, *predictions.values()])
    low, high = float(np.min(everything)), float(np.max(everything))
    margin = 0.03 * (high - low or 1.0)
    for index, (name, prediction) in enumerate(predictions.items()):
        axis = figure.add_subplot(1, count, index + 1)
        axis.scatter(truth, prediction, s=6, alpha=0.5, color="tab:blue", linewidths=0)
        axis.plot([low - margin, high + margin], [low - margin, high + margin], color="0.4", linewidth=0.8)
        axis.set_xlim(low - margin, high + margin)
        axis.set_ylim(low - margin, high + margin)
        axis.set_aspect("equal")
        r2 = regression_metrics(truth, prediction)["r2"]
        axis.set_title(f"{name}: R2 = {r2:.3f}", fontsize=9)
        axis.set_xlabel(f"true {target_name}", fontsize=8)
        if index == 0:
            axis.set_ylabel(f"predicted {target_name}", fontsize=8)
        axis.tick_params(labelsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.96))
    return save_figure(figure, path)


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


def evaluate_runs(
    runs: list[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    data_config: Any | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Score the baselines and every sft/dpo run on the same held-out split; write ``metrics.json``,
    ``comparison.md``, ``predictions.csv`` and ``scatter.png`` into ``out``.

    The data is the first run's (its ``config.yaml``), unless ``data_config`` gives other data to score on.
    """
    start = time.perf_counter()
    if not runs:
        raise UserError("evaluate needs at least one sft or dpo run folder")
    out = Path(out)
    if data_config is None:
        data_config = load_config(EmbeddingsConfig, Path(runs[0]) / "config.yaml").data
    models = [(run, *load(run, device=device)) for run in runs]
    dataset = load_data(data_config, int(models[0][2]["encoder"]["in_channels"]))
    test = dataset.indices("test")
    if len(test) == 0:
        raise UserError("the data has no test split to evaluate on (every tile is in train or val)")
    baselines = fit_baselines(dataset)
    predictions = {name: result["prediction"] for name, result in baselines.items()}
    spreads: dict[str, np.ndarray] = {}
    for run, model, meta in models:
        name = f"{meta['stage']}:{Path(run).name}" if Path(run).is_dir() else meta["stage"]
        if meta["tile_size"] != dataset.tile_size:
            raise UserError(f"{run} was trained on {meta['tile_size']} px tiles, the data has {dataset.tile_size} px")
        mean, sd = predict(model, meta, dataset, np.arange(len(dataset)), device=device)
        predictions[name] = mean
        spreads[name] = sd
    rows = {name: split_metrics(dataset, prediction) for name, prediction in predictions.items()}
    table = comparison_table(rows)
    scatter = save_scatter(
        out / "scatter.png",
        dataset.targets[test],
        {name: prediction[test] for name, prediction in predictions.items()},
        f"held-out test tiles (n = {len(test)})",
        dataset.target_name,
    )
    _write_predictions(out / "predictions.csv", dataset, predictions, spreads)
    write_text(out / "comparison.md", table + "\n")
    result = {
        "metrics": rows,
        "baseline_settings": {name: value["settings"] for name, value in baselines.items()},
        "table": table,
        "files": {
            "metrics": str(out / "metrics.json"),
            "comparison": str(out / "comparison.md"),
            "scatter": str(scatter),
            "predictions": str(out / "predictions.csv"),
        },
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(out / "metrics.json", result)
    return result


def _write_predictions(
    path: Path, dataset: EmbeddingDataset, predictions: dict[str, np.ndarray], spreads: dict[str, np.ndarray]
) -> None:
    table = pd.DataFrame({"id": dataset.ids, "split": dataset.split, "group": dataset.groups, "true": dataset.targets})
    for name, prediction in predictions.items():
        table[f"pred_{name}"] = prediction
        if name in spreads:
            table[f"sd_{name}"] = spreads[name]
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


@torch.no_grad()
def reconstruction_grid(mae: MaskedAutoencoder, dataset: Any, indices: np.ndarray) -> np.ndarray:
    """Rows of (tile, masked tile, reconstruction), each shown through the tile's first three principal axes.

    Reconstructions are un-normalized with the true patch's mean and spread (as in the MAE paper's figures). The
    tiles go to the model's device, so this also draws while training on a GPU.
    """
    device = next(mae.parameters()).device
    frames = torch.from_numpy(dataset.tiles[indices]).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    _, prediction, mask = mae(frames, generator=generator)
    patches = mae.patchify(frames)
    if mae.norm_pix_loss:
        mean = patches.mean(dim=-1, keepdim=True)
        std = (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        prediction = prediction * std + mean
    shown = torch.where(mask[..., None].bool(), prediction, patches).cpu()
    masked = torch.where(mask[..., None].bool(), torch.zeros_like(patches), patches).cpu()
    patches = patches.cpu()
    size = dataset.tile_size
    cells = []
    for row in range(len(indices)):
        images = [_patches_to_tile(mae.encoder, p[row : row + 1], size) for p in (patches, masked, shown)]
        basis = _principal_axes(images[0])
        cells.extend(upscale(_as_rgb(image, basis), max(1, 96 // size)) for image in images)
    return image_grid(cells, ncols=3)


def _patches_to_tile(encoder: PatchEncoder, patches: Tensor, size: int) -> np.ndarray:
    """(1, L, patch_dim) -> (C, H, W) of the first frame, by inverting the encoder's patch order.

    Patchifying a probe whose first frame holds each pixel's flat index (and -1 in any second frame) tells where
    every patch value came from.
    """
    count = encoder.in_channels * size * size
    probe = torch.full((1, max(encoder.frames, 1), encoder.in_channels, size, size), -1.0, dtype=torch.float64)
    probe[0, 0] = torch.arange(count, dtype=torch.float64).reshape(encoder.in_channels, size, size)
    source = encoder.patchify(probe).reshape(-1).long()
    values = patches.reshape(-1).double()
    tile = torch.zeros(count, dtype=torch.float64)
    first_frame = source >= 0
    tile[source[first_frame]] = values[first_frame]
    return tile.reshape(encoder.in_channels, size, size).numpy()


def _principal_axes(tile: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    flat = tile.reshape(tile.shape[0], -1)
    mean = flat.mean(axis=1, keepdims=True)
    _, _, vt = np.linalg.svd((flat - mean).T, full_matrices=False)
    projected = vt[:3] @ (flat - mean)
    return mean, vt[:3], np.percentile(projected, 2, axis=1), np.percentile(projected, 98, axis=1)


def _as_rgb(tile: np.ndarray, basis: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    mean, axes, low, high = basis
    projected = axes @ (tile.reshape(tile.shape[0], -1) - mean)
    scaled = np.clip((projected - low[:, None]) / np.maximum(high - low, 1e-9)[:, None], 0, 1)
    return (scaled.T.reshape(tile.shape[1], tile.shape[2], 3) * 255).astype(np.uint8)
