"""The land-cover training recipe: one YAML with ``data``, ``model``, ``task``, ``images`` and ``train`` sections.

Plain dataclasses without torch, so the CLI can read and check a recipe cheaply. ``configs/landcover_tiny.yaml``
(the CPU default, the same as these defaults) and ``configs/landcover_reference.yaml`` (GPU-sized) are instances
of :class:`LandCoverRecipe`; ``--set model.dim=128`` overrides single keys. The model's own config,
:class:`LandCoverConfig`, lives here rather than in ``model.py``: the recipe's ``model`` section *is* it, and
``model.py`` imports it from here. The number of classes, the chip size and the number of covariate channels
come from the chips (legend, array shape), not from the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from landformer.core.config import check_values, load_config
from landformer.core.errors import UserError
from landformer.core.train import TrainConfig
from landformer.synth.packaged import IGBP_TRAINING_BBOX, check_bbox

# Land change: p(t2 | t1) per pixel as the class shares of this many draws of t2 per chip window. Chosen on the
# validation worlds of bench_landcover_change_worlds.py (pooled Figure of Merit 0.070 with 8 draws, 0.078 with 16,
# 0.074 with 32; Markov-CA 0.072), never on held-out worlds.
CHANGE_DRAWS = 16


@dataclass
class LandCoverDataSection:
    """Where the chips come from. Give ``chips`` (a chip file) or ``world`` (a synthetic world folder); with
    neither, training cuts chips inside the run folder from ``source``: real IGBP land cover (MODIS MCD12C1 2019,
    0.05 degree, chips of ``igbp_region`` that are at most ``igbp_max_water`` water), or a synthetic world of
    ``world_size`` pixels."""

    chips: Path | None = None  # chip file of `landformer data chips` (or the original 4-array format)
    world: Path | None = None  # folder of `landformer synth world`: chips are cut from its land cover (+ DEM)
    legend: str | None = None  # legend for chip files that record none (nlcd, corine, igbp or a JSON path)
    # What channel 0 of a chip file without a legend holds: raw legend codes (mapped through the legend) or class
    # indices; None: decided from the values, an error when both readings fit and differ (CORINE codes 1..41).
    # None sits inside the Literal so that a wrong value's error lists all three choices.
    class_values: Literal["raw", "indices", None] = None
    source: Literal["igbp", "synthetic"] = "igbp"  # data built when neither chips nor world is given
    igbp_region: tuple[float, float, float, float] = IGBP_TRAINING_BBOX  # west, south, east, north (degrees)
    igbp_max_water: float = 0.5  # drop IGBP chips whose share of water bodies exceeds this
    world_size: int = 512  # side in pixels of the synthetic world (source: synthetic)
    world_seed: int | None = None  # seed of that world; None: the train seed
    chip_size: int = 16  # side of the chips cut from IGBP or a world
    stride: int = 8  # step between those chips
    test_fraction: float = 0.2  # share of spatial blocks held out (validation and all held-out scores)
    covariates: bool = False  # feed chip channels 1.. (elevation) to the model as conditioning
    augment: bool = True  # random quarter turns and flips of training chips (land cover has no up)
    batch_size: int = 16
    # Validation chips (spread evenly) from spatial blocks of the train split set aside, not from the test split:
    # the best checkpoint is chosen on them (see landcover.data.training_chips).
    val_chips: int = 128
    deduplicate: bool = True  # train on one copy of chips that are exact copies of another (mostly uniform chips)
    num_workers: int = 0

    @property
    def builds_igbp(self) -> bool:
        """True when training cuts its own IGBP chips: neither chips nor a world given, source igbp."""
        return self.chips is None and self.world is None and self.source == "igbp"

    def validate(self) -> None:
        if self.chips is not None and self.world is not None:
            raise UserError("landcover data: give either chips or world, not both")
        if self.builds_igbp and self.covariates:
            raise UserError(
                "landcover data: covariates = true, but the IGBP chips have no elevation channel; give chips or a "
                "world with one, or set data.source=synthetic"
            )
        check_bbox(self.igbp_region, allow_large=True, what="landcover data: igbp_region")
        checks = [
            (self.world_size >= 64, f"world_size = {self.world_size} should be at least 64"),
            (self.chip_size >= 2, f"chip_size = {self.chip_size} should be at least 2"),
            (self.stride >= 1, f"stride = {self.stride} should be at least 1"),
            (0 <= self.test_fraction < 1, f"test_fraction = {self.test_fraction} should lie in [0, 1)"),
            (0 <= self.igbp_max_water <= 1, f"igbp_max_water = {self.igbp_max_water} should lie in [0, 1]"),
            (self.batch_size >= 1, f"batch_size = {self.batch_size} should be at least 1"),
            (self.val_chips >= 1, f"val_chips = {self.val_chips} should be at least 1"),
            (self.num_workers >= 0, f"num_workers = {self.num_workers} should be at least 0"),
        ]
        check_values("landcover data", checks)


@dataclass
class LandCoverConfig:
    """Architecture of :class:`~landformer.landcover.model.LandCoverRandAR`, and the recipe's ``model`` section.

    ``n_classes``, ``chip_size`` and ``covariate_channels`` describe the data, so training fills them in from the
    chips (legend, array shape, ``data.covariates``) whatever the recipe says; an exported model stores them all.
    Training settings (lr, batch, steps) live in the other sections.
    """

    n_classes: int = 8
    chip_size: int = 16
    n_layers: int = 4
    n_heads: int = 4
    dim: int = 64
    mlp_ratio: float = 2.6667
    dropout: float = 0.0
    rope_base: float = 100.0  # wavelengths of about 6 to 600 cells: enough resolution for 8..64-cell chips
    order: Literal["random", "raster"] = "random"  # raster is the fixed-order baseline for comparison
    covariate_channels: int = 0
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
    # Start from the weights of a trained model (a run folder, its model.safetensors, or a packaged name such as
    # `igbp`) instead of random ones: a second training stage with a fresh learning-rate schedule. The model
    # shape and legend must match. Ignored on resume, where the checkpoint holds the weights.
    init_from: str | None = None


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
    return TrainConfig(max_steps=300, val_every_steps=50, checkpoint_every_steps=100, log_every_steps=10)


def recipe_model(recipe: str, n_classes: int) -> LandCoverConfig:
    """The network of the packaged recipe ``recipe`` (its ``model:`` section at its ``data.chip_size``) for
    ``n_classes`` classes: the size presets live in the recipes, and these functions only read them."""
    loaded = load_config(LandCoverRecipe, recipe)
    return replace(loaded.model, n_classes=n_classes, chip_size=loaded.data.chip_size)


def tiny_config(n_classes: int) -> LandCoverConfig:
    """The CPU preset of ``configs/landcover_tiny.yaml``: 16x16 chips, ~0.2M parameters, minutes on 2 cores."""
    return recipe_model("landcover_tiny", n_classes)


def reference_config(n_classes: int) -> LandCoverConfig:
    """The reference preset of ``configs/landcover_reference.yaml``: 16 layers, 16 heads, dim 256, 32x32 chips."""
    return recipe_model("landcover_reference", n_classes)


@dataclass
class LandCoverRecipe:
    data: LandCoverDataSection = field(default_factory=LandCoverDataSection)
    model: LandCoverConfig = field(default_factory=LandCoverConfig)
    task: LandCoverTaskSection = field(default_factory=LandCoverTaskSection)
    images: LandCoverImagesSection = field(default_factory=LandCoverImagesSection)
    train: TrainConfig = field(default_factory=tiny_train_section)

    def validate(self) -> None:
        self.data.validate()
        if self.images.every_steps < 1 or self.images.n < 1:
            raise UserError("landcover images: every_steps and n should be at least 1")
        if self.images.steps is not None and self.images.steps < 1:
            raise UserError(f"landcover images: steps = {self.images.steps} should be at least 1 (or null)")
