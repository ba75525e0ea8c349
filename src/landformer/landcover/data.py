"""Chips as model inputs: class labels, z-scored covariates, training orders, and a resumable data stream.

The chip file contract (``core/chips.py``): ``(N, C, H, W)``, channel 0 class indices (-1 nodata), channels
1.. covariates such as elevation (NaN nodata). The model sees labels as a LongTensor and covariates z-scored with
the training split's statistics, NaN replaced by 0 (the mean), so a missing elevation pixel reads as "average".

Training randomness lives in the data, not in the model: sample number ``i`` of the run (counted over the whole
run, across epochs) always gets the same chip, the same flip/rotation and the same visiting order, all derived
from ``(seed, i)``. A run resumed at step s therefore continues with sample ``s * batch_size`` and sees exactly
the batches the uninterrupted run would have seen, so resuming is exact, not just "close".
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from landformer.core.chips import ChipSet, load_chips, write_chips
from landformer.core.errors import UserError
from landformer.landcover.baselines import non_overlapping
from landformer.landcover.evaluate import first_occurrences


@dataclass
class CovariateStats:
    """Per-channel mean and standard deviation of the covariates (training split), for z-scoring."""

    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    @classmethod
    def fit(cls, covariates: np.ndarray) -> CovariateStats:
        """Statistics of (N, C, H, W) covariates, ignoring NaN; a constant channel gets std 1."""
        if covariates.shape[1] == 0:
            return cls()
        values = covariates.astype(np.float64)
        mean = np.nanmean(values, axis=(0, 2, 3))
        std = np.nanstd(values, axis=(0, 2, 3))
        mean = np.where(np.isfinite(mean), mean, 0.0)
        std = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
        return cls([float(m) for m in mean], [float(s) for s in std])

    @property
    def n_channels(self) -> int:
        return len(self.mean)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Any, source: str) -> CovariateStats:
        if not isinstance(data, dict) or len(data.get("mean", [])) != len(data.get("std", [None])):
            raise UserError(f"{source}: covariate statistics should hold 'mean' and 'std' lists of one length")
        return cls([float(v) for v in data["mean"]], [float(v) for v in data["std"]])


def model_inputs(chips_array: np.ndarray, stats: CovariateStats | None) -> tuple[Tensor, Tensor | None]:
    """(N, C, H, W) chips -> labels (N, H, W) int64 and z-scored covariates (N, c, H, W) float32 or None.

    ``c`` is the number of covariate channels of ``stats`` (a model's are ``LoadedModel.covariate_stats``); the
    chips' further channels are ignored. NaN covariates become 0 after scaling.
    """
    chips_array = np.asarray(chips_array)
    if chips_array.ndim == 3:
        chips_array = chips_array[:, None]
    if chips_array.ndim != 4:
        raise UserError(f"chips should be (N, C, H, W), got shape {chips_array.shape}")
    classes = chips_array[:, 0]
    if classes.dtype.kind == "f":
        classes = np.where(np.isfinite(classes), classes, -1)
    labels = torch.from_numpy(np.ascontiguousarray(classes).astype(np.int64))
    stats = stats or CovariateStats()
    if stats.n_channels == 0:
        return labels, None
    if chips_array.shape[1] < 1 + stats.n_channels:
        raise UserError(
            f"chips have {chips_array.shape[1] - 1} covariate channel(s); the model needs {stats.n_channels}"
        )
    raw = chips_array[:, 1 : 1 + stats.n_channels].astype(np.float32)
    mean = np.asarray(stats.mean, dtype=np.float32)[None, :, None, None]
    std = np.asarray(stats.std, dtype=np.float32)[None, :, None, None]
    scaled = np.nan_to_num((raw - mean) / std, nan=0.0, posinf=0.0, neginf=0.0)
    return labels, torch.from_numpy(scaled)


def spread_indices(total: int, count: int) -> np.ndarray:
    """``count`` distinct indices spread evenly over ``range(total)``, in increasing order."""
    return np.unique(np.linspace(0, total - 1, num=min(count, total)).round().astype(np.int64))


VALIDATION_BLOCK_SHARE = 0.05  # of the train split's spatial blocks, set aside to validate on
MIN_BLOCKS_TO_CARVE = 4  # fewer train blocks than this: validate on the test split instead (and say so)


@dataclass
class TrainingChips:
    """Which chips of a chip file's train split train the model and which validate it.

    Validation chips come from spatial blocks of the train split set aside, not from the test split: the best
    checkpoint is chosen on them, and a choice made on test chips would leak into every held-out score. Training
    chips that share a pixel with a validation chip are dropped too. ``validation`` is None when the train split
    cannot be carved (too few blocks, or a file without CRS and pixel size); validation then falls back to the
    test split, as ``note`` says.
    """

    train: np.ndarray  # indices into chips.train_data
    validation: np.ndarray | None  # indices into chips.train_data: distinct, non-overlapping chips
    note: str

    def describe(self, total: int) -> str:
        where = f"{len(self.validation)} validation chips" if self.validation is not None else "no validation carve"
        return f"{len(self.train)} of {total} train-split chips train, {where}: {self.note}"


def training_chips(chips: ChipSet, deduplicate: bool, seed: int) -> TrainingChips:
    """Carve validation blocks out of the train split (``VALIDATION_BLOCK_SHARE`` of its blocks, chosen by
    ``seed``), and with ``deduplicate`` keep only the first copy of chips that are exact copies of another.

    De-duplication matters on smooth maps: most 16 px windows of a 1 km climate map are one class, and the held-out
    scores count each distinct chip once, so training on every copy spends the steps on the easiest chips."""
    total = len(chips.train_data)
    everything = np.arange(total, dtype=np.int64)
    train, validation, note = everything, None, "validation on the test split"
    if "change_pair" in chips.metadata:
        # A pair's chip file keeps its validation blocks as the test split (its test blocks stay in the rasters).
        centres: tuple[np.ndarray, np.ndarray] | str = "it holds the pair's validation blocks"
    else:
        centres = chips.centre_pixels(chips.train_coords) if total else "the train split is empty"
    if isinstance(centres, str):
        note = f"validation on the test split ({centres})"
    else:
        rows, cols = (np.asarray(axis, dtype=np.float64) for axis in centres)
        size = chips.chip_size
        block = int(chips.metadata.get("split", {}).get("block_size") or 8 * size)

        def block_keys(r: np.ndarray, c: np.ndarray) -> np.ndarray:
            # One integer per block: rows and columns of blocks stay far below 2**31 on any raster.
            return np.floor(r / block).astype(np.int64) * (1 << 32) + np.floor(c / block).astype(np.int64)

        keys = block_keys(rows, cols)
        blocks = np.unique(keys)
        if len(blocks) < MIN_BLOCKS_TO_CARVE:
            covered = f"{len(blocks)} block" + ("s" if len(blocks) > 1 else "")
            note = f"validation on the test split (the train split covers only {covered} of {block} px)"
        else:
            n_val = max(1, round(VALIDATION_BLOCK_SHARE * len(blocks)))
            chosen = np.random.default_rng([seed, 2]).choice(blocks, size=n_val, replace=False)

            def in_chosen(r: np.ndarray, c: np.ndarray) -> np.ndarray:
                return np.isin(block_keys(r, c), chosen)

            is_val = in_chosen(rows, cols)
            # A chip overlaps a validation chip only if its centre lies within one chip of a validation block;
            # blocks are at least a chip wide, so then one corner of the chip-sized square around it lies inside.
            reach = size - 0.5
            near = is_val.copy()
            for dr in (-reach, reach):
                for dc in (-reach, reach):
                    near |= in_chosen(rows + dr, cols + dc)
            val_all = np.flatnonzero(is_val)
            distinct = val_all[first_occurrences(chips.train_data[val_all])]
            validation = distinct[non_overlapping(rows[distinct], cols[distinct], size)]
            train = np.flatnonzero(~near)
            note = (
                f"{n_val} of {len(blocks)} blocks of {block} px set aside to validate on; "
                f"{int(near.sum() - is_val.sum())} chips beside them dropped"
            )
    if deduplicate and len(train):
        kept = train[first_occurrences(chips.train_data[train])]
        note += f"; {len(train) - len(kept)} exact duplicate chips dropped"
        train = kept
    return TrainingChips(train, validation, note)


def write_validation_chips(chips_path: str | os.PathLike[str], out: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write the validation carve of a chip file as a chip file of its own: the carved validation chips as its
    test split, the chips training keeps as its train split (every copy; the context model fits on them).

    Give it to ``info``, ``evaluate``, ``inpaint-eval`` or the land-cover benchmarks as ``--chips`` to choose
    settings (temperature, steps) on validation chips, never on the test split. ``seed`` is the run's
    ``train.seed``, which chose the blocks set aside."""
    chips = load_chips(chips_path)
    carve = training_chips(chips, deduplicate=False, seed=seed)
    if carve.validation is None:
        raise UserError(f"chip file {chips_path}: no validation blocks can be set aside ({carve.note})")
    metadata = {
        **chips.metadata,
        "validation_of": {"chips": str(chips_path), "seed": seed, "carve": carve.note},
        "counts": {"train": len(carve.train), "test": len(carve.validation)},
    }
    return write_chips(
        out,
        chips.train_data[carve.train],
        chips.train_data[carve.validation],
        chips.train_coords[carve.train],
        chips.train_coords[carve.validation],
        metadata,
    )


def lonlat_inputs(coords: np.ndarray) -> Tensor:
    """(N, 2) lon/lat degrees of chip centres as float32."""
    return torch.from_numpy(np.asarray(coords, dtype=np.float32).reshape(-1, 2))


def dihedral(array: Tensor, k: int) -> Tensor:
    """One of the 8 symmetries of the square on the last two axes: k % 4 quarter turns, then a flip if k >= 4."""
    array = torch.rot90(array, k % 4, dims=(-2, -1))
    return array.flip(-1) if k >= 4 else array


def _sample_generator(seed: int, index: int) -> torch.Generator:
    """A generator for sample ``index`` of a run: reproducible, independent of what came before."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63))


@dataclass
class ChipTensors:
    """One split of a chip file as model inputs."""

    labels: Tensor  # (N, H, W) int64
    covariates: Tensor | None  # (N, c, H, W) float32
    lonlat: Tensor | None  # (N, 2) float32

    def __len__(self) -> int:
        return self.labels.shape[0]

    @classmethod
    def from_chips(
        cls,
        chips: ChipSet,
        split: str,
        stats: CovariateStats | None,
        use_lonlat: bool,
        limit: int | None = None,
        indices: np.ndarray | None = None,
    ) -> ChipTensors:
        """``split`` is "train" or "test", ``indices`` (optional) the chips of it to take; ``limit`` keeps that
        many chips, evenly spaced through them.

        Chip files list chips region by region, so the first chips would all come from one corner of the map;
        evenly spaced ones cover the whole split.
        """
        data = chips.train_data if split == "train" else chips.test_data
        coords = chips.train_coords if split == "train" else chips.test_coords
        if indices is not None:
            data, coords = data[indices], coords[indices]
        if limit is not None and limit < len(data):
            keep = spread_indices(len(data), limit)
            data, coords = data[keep], coords[keep]
        labels, covariates = model_inputs(data, stats)
        return cls(labels, covariates, lonlat_inputs(coords) if use_lonlat else None)

    @property
    def side(self) -> int:
        return self.labels.shape[-1]

    def chip(self, index: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Labels (H, W), covariates (c, H, W) or None, lon/lat (2,) or None of chip ``index``."""
        covariates = self.covariates[index] if self.covariates is not None else None
        return self.labels[index], covariates, self.lonlat[index] if self.lonlat is not None else None


class ChipSplitReader:
    """One split of a chip file turned into model inputs chip by chip, for training: the split's array stays as
    the chip file gave it, memory-mapped for an uncompressed file (``data chips --uncompressed``), so DDP ranks
    and loader workers share its pages instead of each holding an int64 copy of every chip (what
    :class:`ChipTensors` makes). Its chips equal :class:`ChipTensors`'."""

    def __init__(
        self,
        data: np.ndarray,
        coords: np.ndarray,
        stats: CovariateStats | None,
        use_lonlat: bool,
        indices: np.ndarray | None = None,
    ) -> None:
        self.data = data
        # Chip i of the reader is data[indices[i]]: a subset without copying the (possibly mapped) array.
        self.indices = np.arange(len(data), dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
        self.stats = stats
        self.lonlat = lonlat_inputs(np.asarray(coords)[self.indices]) if use_lonlat else None

    @classmethod
    def from_chips(
        cls,
        chips: ChipSet,
        split: str,
        stats: CovariateStats | None,
        use_lonlat: bool,
        indices: np.ndarray | None = None,
    ) -> ChipSplitReader:
        if split == "train":
            return cls(chips.train_data, chips.train_coords, stats, use_lonlat, indices)
        return cls(chips.test_data, chips.test_coords, stats, use_lonlat, indices)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def side(self) -> int:
        return self.data.shape[-1]

    def chip(self, index: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        row = int(self.indices[index])
        labels, covariates = model_inputs(self.data[row : row + 1], self.stats)
        lonlat = self.lonlat[index] if self.lonlat is not None else None
        return labels[0], covariates[0] if covariates is not None else None, lonlat


class ChipDataset(Dataset):
    """Items are dicts of ``labels``, ``order`` and, when used, ``covariates`` and ``lonlat``.

    Item ``i`` is chip ``i % len`` with a symmetry (when ``augment``), a visiting order and whether to drop the
    conditioning (with probability ``cond_dropout``, for classifier-free guidance) all drawn from ``(seed, i)``:
    in training ``i`` comes from :class:`RunStream`, in evaluation the chip's own index, so
    every chip keeps one fixed order and validation losses are comparable over time.
    """

    def __init__(
        self,
        tensors: ChipTensors | ChipSplitReader,
        seed: int,
        augment: bool,
        order: str = "random",
        cond_dropout: float = 0.0,
    ) -> None:
        if len(tensors) == 0:
            raise UserError("no chips to train or validate on (the chip file's split is empty)")
        self.tensors = tensors
        self.seed = seed
        self.augment = augment
        self.order = order
        self.cond_dropout = cond_dropout
        self.n_cells = tensors.side * tensors.side

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        generator = _sample_generator(self.seed, index)
        chip = index % len(self.tensors)
        symmetry = int(torch.randint(8, (1,), generator=generator)) if self.augment else 0
        labels, covariates, lonlat = self.tensors.chip(chip)
        item = {"labels": dihedral(labels, symmetry)}
        if covariates is not None:
            item["covariates"] = dihedral(covariates, symmetry)
        if lonlat is not None:
            item["lonlat"] = lonlat
        if self.order == "random":
            item["order"] = torch.randperm(self.n_cells, generator=generator)
        else:
            item["order"] = torch.arange(self.n_cells)
        if self.cond_dropout > 0:
            item["drop_cond"] = torch.rand((), generator=generator) < self.cond_dropout
        return item


def _process_share() -> tuple[int, int]:
    """(rank, world size) of this training process: 0, 1 unless torch.distributed runs (DDP, FSDP)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class RunStream(IterableDataset):
    """The training items of local batches ``start_batch .. total_batches - 1`` of this process, in order.

    Global batch g holds run-sample numbers ``g * batch_size ... (g + 1) * batch_size - 1``; number i is chip
    ``perm_e[i % n]`` with ``e = i // n`` and ``perm_e`` a permutation drawn from ``(seed, e)``, so every chip
    is seen once per epoch. With R processes (DDP), local batch j of rank r is global batch ``j * R + r``; with
    data-loader workers, worker w makes the local batches j with ``j % W == w`` and the loader's round-robin
    puts them back in order. The stream is a pure function of the step, so resuming at step s is exact, and it
    is an iterable dataset so Lightning does not wrap it in a distributed sampler of its own.
    """

    def __init__(
        self, dataset: ChipDataset, batch_size: int, total_batches: int, seed: int, start_batch: int = 0
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.total_batches = total_batches
        self.start_batch = start_batch
        self.seed = seed

    def __len__(self) -> int:
        return max(0, self.total_batches - self.start_batch) * self.batch_size

    def sample_numbers(self, global_batch: int) -> list[int]:
        """Dataset indices of one global batch: ``e * n + perm_e[i % n]`` for its run-sample numbers i."""
        n = len(self.dataset)
        permutations: dict[int, Tensor] = {}
        numbers = []
        for i in range(global_batch * self.batch_size, (global_batch + 1) * self.batch_size):
            epoch = i // n
            if epoch not in permutations:
                permutations[epoch] = torch.randperm(n, generator=_sample_generator(self.seed + 7919, epoch))
            numbers.append(epoch * n + int(permutations[epoch][i % n]))
        return numbers

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        rank, world = _process_share()
        worker = get_worker_info()
        worker_id, n_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for local_batch in range(self.start_batch, self.total_batches):
            if local_batch % n_workers != worker_id:
                continue
            for number in self.sample_numbers(local_batch * world + rank):
                yield self.dataset[number]


def collate(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def training_loader(
    tensors: ChipTensors | ChipSplitReader,
    batch_size: int,
    total_steps: int,
    seed: int,
    start_step: int = 0,
    augment: bool = True,
    order: str = "random",
    cond_dropout: float = 0.0,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader:
    """Batches for optimiser steps ``start_step .. total_steps - 1``: the same batches whatever the start."""
    dataset = ChipDataset(tensors, seed, augment, order, cond_dropout)
    stream = RunStream(dataset, batch_size, total_steps, seed, start_step)
    return DataLoader(stream, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)


def evaluation_loader(
    tensors: ChipTensors, batch_size: int, seed: int, order: str = "random"
) -> torch.utils.data.DataLoader:
    """Chips in file order, each with a fixed visiting order, so validation losses are comparable over time."""
    return DataLoader(ChipDataset(tensors, seed, augment=False, order=order), batch_size=batch_size, collate_fn=collate)


def class_entropy_bits(labels: np.ndarray, n_classes: int) -> float:
    """Entropy in bits of the class frequencies of ``labels`` (nodata left out): the i.i.d. coding baseline."""
    valid = labels[labels >= 0].astype(np.int64)
    if valid.size == 0:
        return math.nan
    counts = np.bincount(valid, minlength=n_classes).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def default_chips_path(run_dir: Path) -> Path:
    """Where ``landcover train`` writes the chips it builds from a world."""
    return Path(run_dir) / "chips.npz"
