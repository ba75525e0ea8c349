"""geoloc recipe: every flag maps onto a config key; flags beat --set, which beats the YAML."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from landformer.core.config import config_flags, load_config
from landformer.core.errors import UserError
from landformer.geoloc.config import (
    DatasetConfig,
    GeolocConfig,
    add_config_arguments,
    add_dataset_arguments,
    config_from_args,
    dataset_config_from_args,
)

ROOT = Path(__file__).resolve().parents[1]


def _parse(argv: list[str]) -> GeolocConfig:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_precedence_defaults_yaml_set_flags(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  backbone: resnet18\n  scaler: minmax\ntrain:\n  max_steps: 7\n")
    config = _parse(["--config", str(recipe), "--set", "model.backbone=convnext_atto", "--set", "optim.lr=1e-4"])
    assert (config.model.backbone, config.model.scaler, config.train.max_steps) == ("convnext_atto", "minmax", 7)
    assert config.optim.lr == 1e-4
    config = _parse(["--config", str(recipe), "--set", "model.backbone=convnext_atto", "--backbone", "efficientnet_b0"])
    assert config.model.backbone == "efficientnet_b0"
    config = _parse(
        ["--devices", "2", "--strategy", "ddp", "--loggers", "csv", "wandb", "--no-router", "--patience", "3"]
    )
    assert config.train.devices == 2 and config.train.strategy == "ddp" and config.train.loggers == ["csv", "wandb"]
    assert not config.router.enabled and config.train.early_stopping_patience == 3
    assert _parse([]) == GeolocConfig()


# The flags `geoloc train` has always had, and the key each sets: they come from the config's options now.
FLAG_KEYS = {
    "--out": "out", "--train-csv": "data.train_csv", "--val-csv": "data.val_csv", "--images": "data.images",
    "--val-images": "data.val_images", "--image-size": "data.image_size", "--batch-size": "data.batch_size",
    "--num-workers": "data.num_workers", "--no-preload": "data.preload", "--no-clean": "clean.enabled",
    "--mad-threshold": "clean.mad_threshold", "--dbscan-eps-km": "clean.dbscan_eps_km",
    "--dbscan-min-samples": "clean.dbscan_min_samples", "--exclude": "clean.exclude_file",
    "--backbone": "model.backbone", "--pretrained": "model.pretrained", "--drop-rate": "model.drop_rate",
    "--scaler": "model.scaler", "--lr": "optim.lr", "--weight-decay": "optim.weight_decay", "--t0": "optim.t_0",
    "--t-mult": "optim.t_mult", "--min-lr-ratio": "optim.min_lr_ratio", "--min-region-samples": "regions.min_samples",
    "--too-few": "regions.too_few", "--regions": "regions.only", "--no-router": "router.enabled",
    "--router-backbone": "router.backbone", "--router-steps": "router.max_steps", "--no-balance": "router.balance",
    "--val-every": "train.val_every_steps", "--patience": "train.early_stopping_patience",
    "--log-every": "train.log_every_steps", "--checkpoint-every": "train.checkpoint_every_steps",
    "--keep-checkpoints": "train.keep_checkpoints", "--gradient-clip": "train.gradient_clip",
    "--accumulate": "train.accumulate_grad_batches", "--wandb-project": "train.wandb_project",
    "--strategy": "train.strategy", "--num-nodes": "train.num_nodes", "--no-progress": "train.progress_bar",
    "--deterministic": "train.deterministic", "--max-steps": "train.max_steps", "--seed": "train.seed",
    "--accelerator": "train.accelerator", "--devices": "train.devices", "--precision": "train.precision",
    "--loggers": "train.loggers", "--max-minutes": "train.max_minutes",
}  # fmt: skip


def test_every_flag_names_a_real_key() -> None:
    assert {flag.flag: flag.key for flag in config_flags(GeolocConfig)} == FLAG_KEYS
    config = GeolocConfig()
    for key in FLAG_KEYS.values():
        node = config
        for part in key.split("."):
            assert hasattr(node, part), key
            node = getattr(node, part)


def test_switches_set_the_opposite_of_the_default() -> None:
    config = _parse(["--no-clean", "--no-preload", "--no-balance", "--no-progress", "--deterministic"])
    assert (config.clean.enabled, config.data.preload, config.router.balance) == (False, False, False)
    assert (config.train.progress_bar, config.train.deterministic) == (False, True)


def test_bad_values_are_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="scaler"):
        _parse(["--scaler", "quantile"])
    with pytest.raises(UserError, match="too_few"):
        _parse(["--too-few", "ignore"])
    with pytest.raises(UserError, match=r"unknown key 'model\.backbon'"):
        _parse(["--set", "model.backbon=x"])


def test_shipped_recipes_load() -> None:
    for path in sorted((ROOT / "configs").glob("geoloc_*.yaml")):
        load_config(GeolocConfig, path)


# The flags `geoloc make-dataset` has always had, and the key each sets: they come from DatasetConfig's options now.
DATASET_FLAG_KEYS = {
    "--out": "out", "--sources": "sources", "--city-list": "city_list", "--per-region": "per_region",
    "--min-region-cities": "min_region_cities", "--min-spacing-km": "min_spacing_km", "--chip-size": "chip_size",
    "--resolution": "resolution", "--block-degrees": "block_degrees", "--val-fraction": "val_fraction",
    "--test-fraction": "test_fraction", "--world": "world", "--world-size": "world_size",
    "--world-chips": "world_chips_per_region", "--world-chip-size": "world_chip_size", "--seed": "seed",
}  # fmt: skip


def test_make_dataset_flags_name_their_keys_and_defaults() -> None:
    flags = config_flags(DatasetConfig)
    assert {flag.flag: flag.key for flag in flags} == DATASET_FLAG_KEYS
    for flag in flags:  # --help shows each default, as it did when a table listed the flags
        if flag.default is not None:
            shown = " ".join(map(str, flag.default)) if isinstance(flag.default, list) else str(flag.default)
            assert flag.help.endswith(f"(default: {shown})"), flag.flag
    parser = argparse.ArgumentParser()
    add_dataset_arguments(parser)
    argv = ["--set", "per_region=5", "--per-region", "7", "--sources", "cities", "--world-chips", "9"]
    config = dataset_config_from_args(parser.parse_args(argv))
    assert (config.per_region, config.sources, config.world_chips_per_region) == (7, ["cities"], 9)
    assert dataset_config_from_args(parser.parse_args([])) == DatasetConfig()
