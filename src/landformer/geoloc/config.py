"""The geoloc recipe: one dataclass per section, loaded from YAML with ``--config`` and ``--set key=value``.

Every :func:`~landformer.core.config.option` field is also a command-line flag; the precedence is defaults < YAML <
``--set`` < flags.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from landformer.core.commands import add_config_flags, add_recipe_arguments, recipe_overrides
from landformer.core.config import check_values, load_config, option
from landformer.core.train import TrainConfig
from landformer.geoloc.clean import CleanConfig


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
