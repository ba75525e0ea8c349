"""What every command on a trained model needs: the model loaded, its chips opened and checked, a seeded
generator, batches, and the chip-sized windows that cover a region larger than a chip."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from landformer.core.chips import ChipSet, load_chips
from landformer.core.errors import UserError
from landformer.landcover.data import ChipTensors, lonlat_inputs, model_inputs
from landformer.landcover.export import LoadedModel, check_chips_match, load
from landformer.landcover.model import LandCoverRandAR
from landformer.synth.packaged import cache_dir, igbp_chips

ModelLike = LoadedModel | str | os.PathLike[str]


def loaded_model(model: ModelLike, device: str = "cpu") -> LoadedModel:
    """``model`` itself when it is loaded already (a caller running several commands loads it once), else loaded."""
    return model if isinstance(model, LoadedModel) else load(model, device)


def generator_for(model: LandCoverRandAR, seed: int) -> torch.Generator:
    """A seeded generator where decoding draws: on the model's GPU, else on the CPU."""
    device = model.device
    return torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(seed)


def training_chips_path(loaded: LoadedModel) -> Path | None:
    """The chip file the model was trained on: the recorded one while it exists, else, for a model trained on
    IGBP chips built on the spot (the packaged ``igbp`` model), the same chips cut again into the data cache."""
    extra = loaded.metadata.get("extra", {})
    recorded = extra.get("chips")
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    settings = extra.get("igbp_chips")
    if not settings:
        return None
    key = "_".join(str(value) for value in settings.values()).replace(" ", "")
    cached = cache_dir() / f"igbp_chips_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"
    if not cached.is_file():
        print(f"cutting the IGBP chips model {loaded.path.name} was trained on into {cached}")
        igbp_chips(cached, **settings)
    return cached


def open_chips(loaded: LoadedModel, chips: str | os.PathLike[str] | None) -> tuple[ChipSet, Path]:
    """The chip file to work on (default: the one the model was trained on), checked against the model."""
    path = Path(chips) if chips is not None else training_chips_path(loaded)
    if path is None:
        raise UserError(f"give a chip file (--chips): the model {loaded.path} records none that still exists")
    chip_set = load_chips(path)
    check_chips_match(loaded, chip_set, str(path))
    return chip_set, path


def select_chips(loaded: LoadedModel, chip_set: ChipSet, n: int | None, split: str = "test") -> ChipTensors:
    """``n`` chips (all when None) spread evenly through a split, as model inputs; an empty split is a UserError."""
    data = chip_set.test_data if split == "test" else chip_set.train_data
    if len(data) == 0:
        raise UserError(f"chip file {chip_set.source}: the {split} split is empty")
    if n is not None and n < 1:
        raise UserError(f"the number of chips should be at least 1, got {n}")
    return ChipTensors.from_chips(chip_set, split, loaded.covariate_stats, loaded.config.use_lonlat, limit=n)


def to_model_device(tensor: Tensor | None, loaded: LoadedModel) -> Tensor | None:
    """``tensor`` on the model's device; None (no conditioning) stays None."""
    return tensor.to(loaded.model.device) if tensor is not None else None


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Slices of ``range(n)`` of at most ``batch_size``: memory stays bounded however many maps are asked for."""
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar for the command line; ``enabled=False`` keeps library calls and tests quiet."""
    return tqdm(total=total, desc=desc, disable=None if enabled else True, leave=False)


def window_starts(length: int, size: int, overlap: int) -> list[int]:
    """Starts of windows of ``size`` covering ``0..length`` with at least ``overlap`` shared cells; the last
    window ends exactly at ``length``."""
    if size > length:
        raise UserError(f"a window of {size} cells does not fit in {length}")
    if not 0 <= overlap < size:
        raise UserError(f"overlap must be in 0..{size - 1}, got {overlap}")
    starts = list(range(0, length - size + 1, size - overlap))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def check_region(model: LandCoverRandAR, height: int, width: int, what: str) -> int:
    """The model's chip size, after refusing a region smaller than one chip (no window would fit in it)."""
    size = model.config.chip_size
    if height < size or width < size:
        raise UserError(f"{what} is {height}x{width}; it must be at least the model's {size}x{size} chip")
    return size


def split_inputs(
    chips: ChipSet, loaded: LoadedModel, split: str = "test", limit: int | None = None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Labels (N, H, W), covariates (N, c, H, W) or None, lon/lat (N, 2) or None of one split of loaded chips."""
    data = chips.test_data if split == "test" else chips.train_data
    coords = chips.test_coords if split == "test" else chips.train_coords
    if len(data) == 0:
        raise UserError(f"chip file {chips.source}: the {split} split holds no chips")
    if limit is not None:
        data, coords = data[:limit], coords[:limit]
    labels, covariates = model_inputs(data, loaded.covariate_stats)
    lonlat = lonlat_inputs(coords) if loaded.config.use_lonlat else None
    return labels, covariates, lonlat


def chip_inputs(
    path: Path, loaded: LoadedModel, split: str = "test", limit: int | None = None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """:func:`split_inputs` of the chip file at ``path``, checked against the model."""
    return split_inputs(open_chips(loaded, path)[0], loaded, split, limit)
