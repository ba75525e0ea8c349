"""geoloc recipe: every flag maps onto a config key; flags beat --set, which beats the YAML."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from landformer.core.config import load_config
from landformer.core.errors import UserError
from landformer.geoloc.config import FLAGS, SWITCHES, GeolocConfig, add_config_arguments, config_from_args

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


def test_every_flag_names_a_real_key() -> None:
    keys = {key for _, key, *_ in FLAGS} | {key for _, key, *_ in SWITCHES}
    config = GeolocConfig()
    for key in keys:
        node = config
        for part in key.split("."):
            assert hasattr(node, part), key
            node = getattr(node, part)


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
