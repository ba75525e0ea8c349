"""What the stages train and score on: the recipe's tiles loaded into memory, and the torch datasets and loaders
over them.

:func:`load_data` turns a recipe's ``data`` section into an :class:`~landformer.embeddings.tiles.EmbeddingDataset`
(building the default city dataset on first use); :func:`make_loaders` gives the augmented training loader and the
plain validation loader of the pretrain and sft stages; :class:`PairDataset` and :func:`make_pairs` hold the
preference pairs of the dpo stage. Reading tile files and label tables is :mod:`~landformer.embeddings.tiles`'s job.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from landformer.core.errors import UserError
from landformer.embeddings.augment import TileAugmenter
from landformer.embeddings.config import DataConfig, EmbeddingsConfig
from landformer.embeddings.make_dataset import CityDatasetConfig, make_city_dataset
from landformer.embeddings.tiles import (
    DATASET_JSON,
    EMBEDDING_DIM,
    EmbeddingDataset,
    TileSource,
    load_dataset,
    resolve_source,
)

DEFAULT_DATASET = Path("runs/embeddings/data")


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


def set_threads(config: EmbeddingsConfig) -> None:
    """Use the recipe's CPU thread count (small models on a shared CPU run fastest on one thread)."""
    if config.threads > 0:
        torch.set_num_threads(config.threads)


class TileDataset(Dataset):
    """Samples ``{"frames", "valid", "target", "index"}`` of some tiles; targets are standardized with the given
    mean and scale (the training split's), so the heads learn numbers of order 1."""

    def __init__(
        self,
        data: EmbeddingDataset,
        indices: np.ndarray,
        augmenter: TileAugmenter | None = None,
        samples_per_tile: int = 1,
        target_mean: float = 0.0,
        target_scale: float = 1.0,
    ) -> None:
        self.data = data
        self.indices = np.asarray(indices, dtype=np.int64)
        self.augmenter = augmenter
        self.samples_per_tile = samples_per_tile if augmenter is not None else 1
        self.target_mean = target_mean
        self.target_scale = target_scale

    def __len__(self) -> int:
        return len(self.indices) * self.samples_per_tile

    def __getitem__(self, item: int) -> dict[str, Tensor]:
        index = int(self.indices[item % len(self.indices)])
        frames = torch.from_numpy(self.data.tiles[index])
        valid = torch.from_numpy(self.data.valid[index])
        if self.augmenter is not None:
            frames, valid = self.augmenter(frames, valid)
        target = (self.data.targets[index] - self.target_mean) / self.target_scale
        return {
            "frames": frames.contiguous(),
            "valid": valid.contiguous(),
            "target": torch.tensor(target, dtype=torch.float32),
            "index": torch.tensor(index),
        }


def make_loaders(
    dataset: EmbeddingDataset, data: DataConfig, target_mean: float, target_scale: float
) -> tuple[DataLoader, DataLoader]:
    """Shuffled, augmented training loader and a plain validation loader."""
    augmenter = TileAugmenter(data.crop_scales, data.crop_centred) if data.augment else None
    train = TileDataset(dataset, dataset.indices("train"), augmenter, data.samples_per_tile, target_mean, target_scale)
    val = TileDataset(dataset, dataset.indices("val"), None, 1, target_mean, target_scale)
    workers = {"num_workers": data.num_workers, "persistent_workers": data.num_workers > 0}
    return (
        DataLoader(train, batch_size=data.batch_size, shuffle=True, drop_last=len(train) > data.batch_size, **workers),
        DataLoader(val, batch_size=data.batch_size, shuffle=False, **workers),
    )


def eval_loader(
    dataset: EmbeddingDataset, indices: np.ndarray, batch_size: int, mean: float, scale: float
) -> DataLoader:
    """The tiles ``indices`` in order, without augmentation (for predictions and features)."""
    return DataLoader(TileDataset(dataset, indices, None, 1, mean, scale), batch_size=batch_size, shuffle=False)


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
    """Validation tiles of the dpo stage: their inputs (features or frames) and standardized targets."""

    def __init__(self, inputs: Tensor, targets: Tensor) -> None:
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, item: int) -> dict[str, Tensor]:
        return {"inputs": self.inputs[item], "target": self.targets[item]}
