"""The inference-ready land-cover model: one ``model.safetensors`` with everything needed to use it, no pickle.

The file holds the weights and, in its metadata, a JSON record: the :class:`LandCoverConfig`, the legend (so
class indices mean the same thing when the model is used on another chip file), the channel names of the chips
it was trained on, the chip size, the mean/std used to normalise each covariate channel, and the landformer
version. ``model.json`` beside it is the same record, for people to read.

:func:`load` accepts the run folder of ``landcover train`` or the file itself, and
:func:`check_chips_match` refuses chip files the model cannot read (another legend, another chip size, missing
covariate channels, class indices outside the legend) with one line naming the file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landformer.core.chips import ChipSet
from landformer.core.errors import UserError
from landformer.core.export import load_bundle, save_bundle
from landformer.core.legend import NODATA_INDEX, Legend
from landformer.landcover.data import CovariateStats
from landformer.landcover.model import LandCoverConfig, LandCoverRandAR

EXPORT_FORMAT = "landformer-landcover"
PRETRAINED = ("igbp", "change")  # models installed with the package, loadable by name (``--model igbp``)
EXPORT_VERSION = 1
MODEL_FILE = "model.safetensors"


@dataclass
class LoadedModel:
    """A trained model (eval mode, CPU) with what is needed to feed it: legend, channels, covariate stats."""

    model: LandCoverRandAR
    legend: Legend
    config: LandCoverConfig
    covariate_stats: CovariateStats
    channel_names: list[str]
    metadata: dict[str, Any]
    path: Path

    @property
    def chip_size(self) -> int:
        return self.config.chip_size

    @property
    def covariate_names(self) -> list[str]:
        return self.channel_names[1 : 1 + self.config.covariate_channels]

    @property
    def is_conditional(self) -> bool:
        return self.model.is_conditional


def save(
    model: LandCoverRandAR,
    legend: Legend,
    path: str | os.PathLike[str],
    extra: dict[str, Any] | None = None,
    channel_names: list[str] | None = None,
    covariate_stats: CovariateStats | None = None,
) -> Path:
    """Write ``path`` (a ``.safetensors`` file, or a folder that receives ``model.safetensors``) and ``model.json``.

    ``channel_names`` default to the class channel plus one name per covariate channel; ``covariate_stats``
    must be given for a model with covariates (the normalisation is part of the model). ``extra`` (plain JSON)
    is stored under ``"extra"``: training step, source chips, ...
    """
    config = model.config
    if legend.n_classes != config.n_classes:
        raise UserError(f"legend '{legend.name}' has {legend.n_classes} classes, the model {config.n_classes}")
    stats = covariate_stats or CovariateStats()
    if stats.n_channels != config.covariate_channels:
        raise UserError(
            f"model reads {config.covariate_channels} covariate channel(s) but statistics for {stats.n_channels} "
            "were given"
        )
    names = channel_names or ["landcover"] + [f"covariate{i}" for i in range(1, config.covariate_channels + 1)]
    if len(names) < 1 + config.covariate_channels:
        raise UserError(f"{len(names)} channel names for a model with {config.covariate_channels} covariate channels")
    return save_bundle(
        path,
        model.state_dict(),
        EXPORT_FORMAT,
        EXPORT_VERSION,
        config=dataclasses.asdict(config),
        legend=legend.to_dict(),
        channel_names=list(names),
        chip_size=config.chip_size,
        covariate_stats=stats.to_dict(),
        extra=extra or {},
    )


def pretrained_path(name: str) -> Path:
    """The file of a model installed with the package (``landcover/pretrained/NAME.safetensors``)."""
    path = Path(str(resources.files("landformer.landcover").joinpath("pretrained", f"{name}.safetensors")))
    if not path.is_file():
        raise UserError(
            f"the packaged land-cover model {name!r} is missing from this install ({path}); rebuild it with "
            f"`make {name}-model`"
        )
    return path


def model_path(path: str | os.PathLike[str]) -> Path:
    """The model file of a run folder (``RUN/model.safetensors``), ``path`` itself when it is a file, or the
    packaged model of that name (:data:`PRETRAINED`) when no such file or folder exists."""
    path = Path(path)
    if str(path) in PRETRAINED and not path.exists():
        return pretrained_path(str(path))
    if path.is_dir():
        candidate = path / MODEL_FILE
        if not candidate.is_file():
            raise UserError(f"run folder {path} holds no {MODEL_FILE} (train it with `landformer landcover train`)")
        return candidate
    if not path.exists():
        raise UserError(f"model {path} does not exist (give a run folder of `landcover train` or its {MODEL_FILE})")
    return path


def load(path: str | os.PathLike[str], device: str = "cpu") -> LoadedModel:
    """Rebuild a saved model in eval mode; missing, corrupt or foreign files are UserErrors."""
    tensors, meta, file = load_bundle(model_path(path), EXPORT_FORMAT, "land-cover model", max_version=EXPORT_VERSION)
    source = str(file)
    try:
        config = LandCoverConfig(**meta["config"])
    except (KeyError, TypeError) as err:
        raise UserError(f"{file}: the stored model config does not fit this landformer version: {err}") from None
    legend = Legend.from_dict(meta.get("legend"), source=f"legend of {file}")
    stats = CovariateStats.from_dict(meta.get("covariate_stats", {"mean": [], "std": []}), source)
    model = LandCoverRandAR(config)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0]
        raise UserError(f"{file}: weights do not fit the stored config: {first_line}") from None
    model.to(torch.device(device)).eval()
    return LoadedModel(model, legend, config, stats, list(meta["channel_names"]), meta, file)


def check_chips_match(loaded: LoadedModel, chips: ChipSet, source: str) -> None:
    """Refuse a chip file this model cannot be used on; each problem is one line naming ``source``.

    Checks: square chips of the model's size, enough channels for the model's covariates (and the same channel
    names when the file records them), the same legend when the file records one, and class indices inside the
    model's legend in every split.
    """
    for name, data in (("train_data", chips.train_data), ("test_data", chips.test_data)):
        if data.ndim != 4 or data.shape[-1] != data.shape[-2]:
            raise UserError(f"chip file {source}: {name} chips are not square: shape {data.shape}")
    size = chips.train_data.shape[-1]
    if size != loaded.chip_size:
        raise UserError(
            f"chip file {source} holds {size}x{size} chips; the model {loaded.path} was trained on "
            f"{loaded.chip_size}x{loaded.chip_size} chips"
        )
    needed = 1 + loaded.config.covariate_channels
    if chips.train_data.shape[1] < needed:
        raise UserError(
            f"chip file {source} has {chips.train_data.shape[1]} channel(s); the model reads the class channel plus "
            f"covariates {loaded.covariate_names}"
        )
    if loaded.config.covariate_channels and chips.metadata.get("channel_names"):
        given = chips.channel_names[1:needed]
        if given != loaded.covariate_names:
            raise UserError(
                f"chip file {source} has covariate channels {given}; the model was trained on {loaded.covariate_names}"
            )
    if "legend" in chips.metadata:
        legend = chips.legend
        if legend.codes != loaded.legend.codes:
            raise UserError(
                f"chip file {source} uses legend '{legend.name}' (codes {legend.codes}); the model {loaded.path} "
                f"uses legend '{loaded.legend.name}' (codes {loaded.legend.codes})"
            )
    n_classes = loaded.legend.n_classes
    for name, data in (("train_data", chips.train_data), ("test_data", chips.test_data)):
        if data.size == 0:
            continue
        classes = data[:, 0]
        finite = classes[np.isfinite(classes)] if classes.dtype.kind == "f" else classes
        bad = np.unique(finite[(finite < NODATA_INDEX) | (finite >= n_classes) | (finite != np.round(finite))])
        if bad.size:
            raise UserError(
                f"chip file {source}: {name} holds class values {bad[:10].tolist()} that are not indices "
                f"{NODATA_INDEX}..{n_classes - 1} of the model's legend '{loaded.legend.name}'"
            )
