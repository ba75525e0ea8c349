"""What every stage shares: finding and loading the data, loaders, and the exported-model files.

A stage's run folder ends with an exported model beside its Lightning checkpoints:

- ``pretrain``: ``encoder.safetensors`` + ``encoder.json`` (the encoder config, frames, tile size);
- ``sft`` / ``dpo``: ``model.safetensors`` + ``model.json`` (encoder and Gaussian head, the target scaling).

The next stage starts from a run folder (or one of those files), so stages chain: pretrain -> sft -> dpo.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from landformer.core.errors import UserError
from landformer.core.io import load_safetensors, read_json, save_safetensors, write_json
from landformer.embeddings.config import DataConfig, EmbeddingsConfig
from landformer.embeddings.data import (
    DATASET_JSON,
    EMBEDDING_DIM,
    EmbeddingDataset,
    TileSource,
    load_dataset,
    resolve_source,
)

DEFAULT_DATASET = Path("runs/embeddings/data")
ENCODER_FILE, ENCODER_JSON = "encoder.safetensors", "encoder.json"
MODEL_FILE, MODEL_JSON = "model.safetensors", "model.json"


def tile_source(data: DataConfig, channels: int = EMBEDDING_DIM, progress: bool = True) -> TileSource:
    """The tiles and labels a recipe names; the default city dataset is built on first use when it names none.

    Tiles given directly have ``channels`` channels (the encoder's); a dataset folder says how many it has.
    """
    if data.tiles is not None and data.labels is not None:
        return TileSource(
            tiles=Path(data.tiles),
            labels=Path(data.labels),
            next_tiles=Path(data.next_tiles) if data.next_tiles is not None else None,
            id_column=data.id_column,
            target_column=data.target_column,
            group_column=data.group_column,
            lon_column=data.lon_column,
            lat_column=data.lat_column,
            channels=channels,
            tile_degrees=data.tile_degrees,
        )
    folder = Path(data.dataset) if data.dataset is not None else DEFAULT_DATASET
    if data.dataset is None and not (folder / DATASET_JSON).is_file():
        from landformer.embeddings.make_dataset import CityDatasetConfig, make_city_dataset

        print(f"no dataset given: building the default city dataset in {folder} (once)", flush=True)
        make_city_dataset(folder, CityDatasetConfig(), progress=progress)
    return resolve_source(folder)


def load_data(data: DataConfig, channels: int = EMBEDDING_DIM, progress: bool = True) -> EmbeddingDataset:
    """Load the recipe's data; its channel count must be ``channels`` (the encoder's ``in_channels``)."""
    data.validate()
    source = tile_source(data, channels, progress)
    if source.channels != channels:
        raise UserError(
            f"the dataset {source.tiles} has {source.channels}-channel tiles but encoder.in_channels = {channels}"
        )
    return load_dataset(
        source,
        test_fraction=data.test_fraction,
        val_fraction=data.val_fraction,
        split_seed=data.split_seed,
        max_nodata=data.max_nodata,
        check_unit_length_of_tiles=data.check_unit_length,
        progress=progress,
    )


def target_scaling(dataset: EmbeddingDataset) -> tuple[float, float]:
    """Mean and standard deviation of the training targets (the heads predict standardized targets)."""
    train = dataset.targets[dataset.indices("train")]
    scale = float(train.std())
    return float(train.mean()), scale if scale > 0 else 1.0


def make_loaders(
    dataset: EmbeddingDataset, data: DataConfig, target_mean: float, target_scale: float
) -> tuple[Any, Any]:
    """Shuffled, augmented training loader and a plain validation loader."""
    from torch.utils.data import DataLoader

    from landformer.embeddings.augment import TileAugmenter, TileDataset

    augmenter = TileAugmenter(data.crop_scales, data.crop_centred) if data.augment else None
    train = TileDataset(dataset, dataset.indices("train"), augmenter, data.samples_per_tile, target_mean, target_scale)
    val = TileDataset(dataset, dataset.indices("val"), None, 1, target_mean, target_scale)
    workers = {"num_workers": data.num_workers, "persistent_workers": data.num_workers > 0}
    return (
        DataLoader(train, batch_size=data.batch_size, shuffle=True, drop_last=len(train) > data.batch_size, **workers),
        DataLoader(val, batch_size=data.batch_size, shuffle=False, **workers),
    )


def eval_loader(dataset: EmbeddingDataset, indices: np.ndarray, batch_size: int, mean: float, scale: float) -> Any:
    from torch.utils.data import DataLoader

    from landformer.embeddings.augment import TileDataset

    return DataLoader(TileDataset(dataset, indices, None, 1, mean, scale), batch_size=batch_size, shuffle=False)


def set_threads(config: EmbeddingsConfig) -> None:
    if config.threads > 0:
        import torch

        torch.set_num_threads(config.threads)


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    return max(1, n_samples // batch_size if n_samples > batch_size else 1)


# ------------------------------------------------------------------------------------------- exported files


def save_encoder(run_dir: Path, encoder: Any, meta: dict[str, Any]) -> Path:
    """``encoder.safetensors`` + ``encoder.json``: the pretrained encoder for the next stage."""
    path = save_safetensors(run_dir / ENCODER_FILE, encoder.state_dict(), meta)
    write_json(run_dir / ENCODER_JSON, meta)
    return path


def _locate(path: str | os.PathLike[str], file_name: str, what: str) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / file_name
    if not path.is_file():
        raise UserError(f"{what} not found: {path} (run the stage that writes it first)")
    return path


def load_encoder_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, meta) of a pretrain run folder or its ``encoder.safetensors``."""
    return load_safetensors(_locate(path, ENCODER_FILE, "pretrained encoder"), "pretrained encoder")


def save_model(run_dir: Path, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """``model.safetensors`` + ``model.json``: the SFT/DPO regressor."""
    path = save_safetensors(run_dir / MODEL_FILE, state, meta)
    write_json(run_dir / MODEL_JSON, meta)
    return path


def load_model_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, meta) of an sft/dpo run folder or its ``model.safetensors``."""
    return load_safetensors(_locate(path, MODEL_FILE, "regression model"), "regression model")


def read_stage_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    return read_json(Path(run_dir) / "summary.json", "stage summary")
