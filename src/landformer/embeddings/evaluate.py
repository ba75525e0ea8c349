"""Scores, probes and pictures: R2 / MAE / RMSE, the ridge and kNN baselines, scatter plots and the comparison table.

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

from landformer.core.errors import UserError
from landformer.core.io import atomic_path, write_json, write_text
from landformer.embeddings.data import EmbeddingDataset

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
    from landformer.core.viz import new_figure, save_figure

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
    from landformer.core.config import load_config
    from landformer.embeddings.config import EmbeddingsConfig
    from landformer.embeddings.pipeline import load_data
    from landformer.embeddings.regress import load_regressor, predict

    start = time.perf_counter()
    if not runs:
        raise UserError("evaluate needs at least one sft or dpo run folder")
    out = Path(out)
    if data_config is None:
        data_config = load_config(EmbeddingsConfig, Path(runs[0]) / "config.yaml").data
    models = [(run, *load_regressor(run, device=device)) for run in runs]
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
    import pandas as pd

    table = pd.DataFrame({"id": dataset.ids, "split": dataset.split, "group": dataset.groups, "true": dataset.targets})
    for name, prediction in predictions.items():
        table[f"pred_{name}"] = prediction
        if name in spreads:
            table[f"sd_{name}"] = spreads[name]
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
