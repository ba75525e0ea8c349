"""The geoloc recipe: one dataclass per section, loaded from YAML with ``--config`` and ``--set key=value``.

Every key is also a command-line flag (see :data:`FLAGS`); the precedence is defaults < YAML < ``--set`` < flags.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from landformer.core.commands import TRAINING_FLAGS, add_recipe_arguments
from landformer.core.config import check_values, from_dict, load_config, to_dict
from landformer.core.train import TrainConfig
from landformer.geoloc.clean import CleanConfig


@dataclass
class DataConfig:
    train_csv: Path | None = None  # columns filename, latitude, longitude, Region_ID
    val_csv: Path | None = None  # same columns; drives early stopping and picks each region's best checkpoint
    images: Path | None = None  # folder the CSV filenames are relative to; None: images/ beside train_csv
    val_images: Path | None = None  # None: the same folder as images
    image_size: int | None = None  # resize every image to this square side; None: keep the first image's shape
    preload: bool = True  # decode every image once into memory (fast epochs); false: decode on every access
    batch_size: int = 64
    num_workers: int = 0  # data-loader worker processes (0: load in the training process)

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
    backbone: str = "resnet10t"  # any timm model name (convnext_tiny, resnet50, efficientnet_b0, ...)
    pretrained: Path | None = None  # local weights (.safetensors, or .pth/.pt read with weights_only); None: random
    drop_rate: float = 0.0  # dropout before the head
    scaler: Literal["robust", "standard", "minmax"] = "robust"  # how local coordinates are scaled per region


@dataclass
class OptimConfig:
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 0.05  # AdamW weight decay (matrices only)
    t_0: int = 200  # CosineAnnealingWarmRestarts: steps in the first cycle
    t_mult: int = 2  # each next cycle is this many times longer
    min_lr_ratio: float = 0.01  # eta_min = lr * min_lr_ratio

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
    min_samples: int = 20  # a region needs this many training images after cleaning
    too_few: Literal["skip", "error"] = "skip"  # what to do with a region below min_samples
    only: list[str] = field(default_factory=list)  # train only these Region_IDs (empty: every region)

    def __post_init__(self) -> None:
        check_values("regions config", [(self.min_samples >= 2, f"'min_samples' = {self.min_samples} should be >= 2")])


@dataclass
class RouterConfig:
    enabled: bool = True  # train a Region_ID classifier so predict works without a known region
    backbone: str | None = None  # None: model.backbone
    max_steps: int | None = None  # None: train.max_steps
    balance: bool = True  # draw every region equally often, so a small region is not routed away


@dataclass
class GeolocConfig:
    out: Path = Path("runs/geoloc")  # run folder: config, cleaning report, one sub-folder per region, router
    data: DataConfig = field(default_factory=DataConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    regions: RegionsConfig = field(default_factory=RegionsConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# (flag, dotted config key, argparse type, nargs, help)
FLAGS: tuple[tuple[str, str, Any, str | None, str], ...] = (
    ("--out", "out", str, None, "run folder"),
    ("--train-csv", "data.train_csv", str, None, "training labels (filename, latitude, longitude, Region_ID)"),
    ("--val-csv", "data.val_csv", str, None, "validation labels (early stopping, best checkpoint)"),
    ("--images", "data.images", str, None, "image folder (default: images/ beside the training CSV)"),
    ("--val-images", "data.val_images", str, None, "validation image folder (default: --images)"),
    ("--image-size", "data.image_size", int, None, "resize images to this square side"),
    ("--batch-size", "data.batch_size", int, None, "images per batch"),
    ("--num-workers", "data.num_workers", int, None, "data-loader worker processes"),
    ("--mad-threshold", "clean.mad_threshold", float, None, "modified z-score beyond which a label is an outlier"),
    ("--dbscan-eps-km", "clean.dbscan_eps_km", float, None, "DBSCAN neighbourhood radius in km"),
    ("--dbscan-min-samples", "clean.dbscan_min_samples", int, None, "DBSCAN points that make a cluster core"),
    ("--exclude", "clean.exclude_file", str, None, "file listing filenames to drop (one a line, or a CSV)"),
    ("--backbone", "model.backbone", str, None, "timm model name (resnet10t, convnext_tiny, efficientnet_b0...)"),
    ("--pretrained", "model.pretrained", str, None, "local pretrained weights (.safetensors/.pth)"),
    ("--drop-rate", "model.drop_rate", float, None, "dropout before the head"),
    ("--scaler", "model.scaler", str, None, "coordinate scaler: robust, standard or minmax"),
    ("--lr", "optim.lr", float, None, "AdamW learning rate"),
    ("--weight-decay", "optim.weight_decay", float, None, "AdamW weight decay"),
    ("--t0", "optim.t_0", int, None, "CosineAnnealingWarmRestarts first cycle (steps)"),
    ("--t-mult", "optim.t_mult", int, None, "CosineAnnealingWarmRestarts cycle growth"),
    ("--min-lr-ratio", "optim.min_lr_ratio", float, None, "lowest learning rate as a share of --lr"),
    ("--min-region-samples", "regions.min_samples", int, None, "training images a region needs after cleaning"),
    ("--too-few", "regions.too_few", str, None, "region below --min-region-samples: skip (warn) or error"),
    ("--regions", "regions.only", str, "+", "train only these Region_IDs"),
    ("--router-backbone", "router.backbone", str, None, "timm model for the region router"),
    ("--router-steps", "router.max_steps", int, None, "optimiser steps for the router"),
    ("--val-every", "train.val_every_steps", int, None, "validate every this many steps"),
    ("--patience", "train.early_stopping_patience", int, None, "early stopping: validations without improvement"),
    ("--log-every", "train.log_every_steps", int, None, "write training metrics every this many steps"),
    ("--checkpoint-every", "train.checkpoint_every_steps", int, None, "periodic checkpoint every this many steps"),
    ("--keep-checkpoints", "train.keep_checkpoints", int, None, "periodic checkpoints kept"),
    ("--gradient-clip", "train.gradient_clip", float, None, "clip the gradient norm (0: off)"),
    ("--accumulate", "train.accumulate_grad_batches", int, None, "batches summed per optimiser step"),
    ("--wandb-project", "train.wandb_project", str, None, "W&B project (WANDB_MODE=offline logs locally)"),
    ("--strategy", "train.strategy", str, None, "auto, ddp, ddp_spawn, fsdp"),
    ("--num-nodes", "train.num_nodes", int, None, "machines taking part"),
    # The training flags every pipeline's train command takes (--max-steps counts steps per region here).
    *((flag, f"train.{key}", kind, nargs, text) for flag, key, kind, nargs, text in TRAINING_FLAGS),
)
SWITCHES: tuple[tuple[str, str, bool, str], ...] = (
    ("--no-clean", "clean.enabled", False, "skip MAD and DBSCAN cleaning (exclusions still apply)"),
    ("--no-router", "router.enabled", False, "train no region router (predict then needs the region)"),
    ("--no-balance", "router.balance", False, "draw router training images as they come, not region-balanced"),
    ("--no-preload", "data.preload", False, "decode images on every access instead of once"),
    ("--no-progress", "train.progress_bar", False, "hide progress bars"),
    ("--deterministic", "train.deterministic", True, "deterministic kernels (slower, bit-exact reruns)"),
)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--set`` and one flag per entry of :data:`FLAGS` and :data:`SWITCHES`."""
    add_recipe_arguments(parser, "the built-in tiny recipe, as configs/geoloc_tiny.yaml")
    # SUPPRESS: an absent flag leaves no attribute, so the recipe's value stands (and --help shows no "None").
    for flag, key, kind, nargs, text in FLAGS:
        metavar = key.split(".")[-1].upper()
        parser.add_argument(
            flag,
            dest=_dest(key),
            type=kind,
            nargs=nargs,
            default=argparse.SUPPRESS,
            metavar=metavar,
            help=f"{text} [{key}]",
        )
    for flag, key, value, text in SWITCHES:
        parser.add_argument(
            flag, dest=_dest(key), action="store_const", const=value, default=argparse.SUPPRESS, help=f"{text} [{key}]"
        )


def _dest(key: str) -> str:
    return "cfg__" + key.replace(".", "__")


def _devices(text: str) -> int | str:
    return int(text) if text.strip().isdigit() else text


def config_from_args(args: argparse.Namespace) -> GeolocConfig:
    """The recipe from ``--config``, then ``--set`` overrides, then the flags the user gave."""
    config = load_config(GeolocConfig, args.config, args.overrides)
    data = to_dict(config)
    given = False
    for key in [entry[1] for entry in FLAGS] + [entry[1] for entry in SWITCHES]:
        value = getattr(args, _dest(key), None)
        if value is None:
            continue
        given = True
        if key == "train.devices":
            value = _devices(value)
        node = data
        *sections, last = key.split(".")
        for section in sections:
            node = node[section]
        node[last] = value
    return from_dict(GeolocConfig, data, source="command line") if given else config
