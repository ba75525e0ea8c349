"""The land-cover training recipe: one YAML with ``data``, ``model``, ``task``, ``images`` and ``train`` sections.

Plain dataclasses without torch, so the CLI can read and check a recipe cheaply. ``configs/landcover_tiny.yaml``
(the CPU default, the same as these defaults) and ``configs/landcover_reference.yaml`` (GPU-sized) are instances
of :class:`LandCoverRecipe`; ``--set model.dim=128`` overrides single keys. The number of classes, the chip size
and the number of covariate channels are not set here: they come from the chips (legend, array shape).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from landformer.core.config import check_values
from landformer.core.errors import UserError
from landformer.core.train import TrainConfig


@dataclass
class LandCoverDataSection:
    """Where the chips come from. Give ``chips`` (a chip file) or ``world`` (a synthetic world folder); with
    neither, training builds a synthetic world of ``world_size`` pixels and its chips inside the run folder."""

    chips: Path | None = None  # chip file of `landformer data chips` (or the original 4-array format)
    world: Path | None = None  # folder of `landformer synth world`: chips are cut from its land cover (+ DEM)
    legend: str | None = None  # legend for chip files that record none (nlcd, corine or a JSON path)
    world_size: int = 512  # side in pixels of the world built when no data is given
    world_seed: int | None = None  # seed of that world; None: the train seed
    chip_size: int = 16  # side of the chips cut from a world
    stride: int = 8  # step between chips cut from a world
    test_fraction: float = 0.2  # share of spatial blocks held out (validation and all held-out scores)
    covariates: bool = False  # feed chip channels 1.. (elevation) to the model as conditioning
    augment: bool = True  # random quarter turns and flips of training chips (land cover has no up)
    batch_size: int = 16
    val_chips: int = 128  # test chips used for the validation loss (spread evenly through the test split)
    num_workers: int = 0

    def validate(self) -> None:
        if self.chips is not None and self.world is not None:
            raise UserError("landcover data: give either chips or world, not both")
        checks = [
            (self.world_size >= 64, f"world_size = {self.world_size} should be at least 64"),
            (self.chip_size >= 2, f"chip_size = {self.chip_size} should be at least 2"),
            (self.stride >= 1, f"stride = {self.stride} should be at least 1"),
            (0 <= self.test_fraction < 1, f"test_fraction = {self.test_fraction} should lie in [0, 1)"),
            (self.batch_size >= 1, f"batch_size = {self.batch_size} should be at least 1"),
            (self.val_chips >= 1, f"val_chips = {self.val_chips} should be at least 1"),
            (self.num_workers >= 0, f"num_workers = {self.num_workers} should be at least 0"),
        ]
        check_values("landcover data", checks)


@dataclass
class LandCoverModelSection:
    """Network shape (see ``LandCoverConfig``); classes, chip size and covariate channels come from the data."""

    n_layers: int = 4
    n_heads: int = 4
    dim: int = 64
    mlp_ratio: float = 2.6667
    dropout: float = 0.0
    rope_base: float = 100.0
    order: Literal["random", "raster"] = "random"
    covariate_patch: int = 4
    use_lonlat: bool = False
    lonlat_frequencies: int = 8
    cond_dropout: float = 0.1  # share of training chips seen without conditioning (classifier-free guidance)


@dataclass
class LandCoverTaskSection:
    """Optimisation."""

    lr: float = 5e-3  # with 300 steps: the tiny recipe meets the quality targets in about 2.5 min of one core
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    threads: int = 1  # torch CPU threads while training (0: torch's default); small kernels on a shared CPU: 1


@dataclass
class LandCoverImagesSection:
    """Pictures written while training: ``samples/gen_*.png``, ``gt_*.png``, ``pred_*.png``."""

    every_steps: int = 100  # also written once when training ends
    n: int = 16  # chips per picture
    steps: int | None = None  # decoding steps for gen_*.png: None = one cell per step, else parallel decoding
    temperature: float = 1.0


def tiny_train_section() -> TrainConfig:
    """The ``train:`` section of the tiny recipe: 300 steps, about 2.5 min of one core. A recipe or ``--set``
    that gives only some ``train.*`` keys keeps these values for the others (core.config lays partial sections
    over their defaults)."""
    return TrainConfig(
        max_steps=300, val_every_steps=50, checkpoint_every_steps=100, log_every_steps=10, loggers=["csv"]
    )


@dataclass
class LandCoverRecipe:
    data: LandCoverDataSection = field(default_factory=LandCoverDataSection)
    model: LandCoverModelSection = field(default_factory=LandCoverModelSection)
    task: LandCoverTaskSection = field(default_factory=LandCoverTaskSection)
    images: LandCoverImagesSection = field(default_factory=LandCoverImagesSection)
    train: TrainConfig = field(default_factory=tiny_train_section)

    def validate(self) -> None:
        self.data.validate()
        if self.images.every_steps < 1 or self.images.n < 1:
            raise UserError("landcover images: every_steps and n should be at least 1")
        if self.images.steps is not None and self.images.steps < 1:
            raise UserError(f"landcover images: steps = {self.images.steps} should be at least 1 (or null)")
