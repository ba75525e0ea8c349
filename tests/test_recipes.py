"""Recipes ship in the package and load by name; ``--print-config`` prints what a command would train with."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from landformer.cli import main
from landformer.core.config import RECIPES, load_config, packaged_recipes, recipe_path
from landformer.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

# The command that trains with each recipe of configs/ (a recipe file holds one pipeline's sections).
RECIPE_COMMANDS = {
    "landcover_tiny": ["landcover", "train"],
    "landcover_reference": ["landcover", "train"],
    "landcover_igbp": ["landcover", "train"],
    "landcover_igbp_cpu": ["landcover", "train"],
    "terrain_tokenizer_tiny": ["terrain", "train", "--stage", "tokenizer"],
    "terrain_tokenizer_real": ["terrain", "train", "--stage", "tokenizer"],
    "terrain_tokenizer_reference": ["terrain", "train", "--stage", "tokenizer"],
    "terrain_maskgit_tiny": ["terrain", "train", "--stage", "maskgit"],
    "terrain_maskgit_real": ["terrain", "train", "--stage", "maskgit"],
    "terrain_maskgit_reference": ["terrain", "train", "--stage", "maskgit"],
    "embeddings_tiny": ["embeddings", "train", "--stage", "pretrain"],
    "embeddings_qwen2_vl_7b": ["embeddings", "train", "--stage", "pretrain"],
    "embeddings_qwen2_5_vl_7b": ["embeddings", "train", "--stage", "pretrain"],
    "forecast_tiny": ["forecast", "train"],
    "forecast_reference": ["forecast", "train"],
    "geoloc_tiny": ["geoloc", "train"],
    "geoloc_convnext": ["geoloc", "train"],
}
TRAINING_COMMANDS = sorted({tuple(command) for command in RECIPE_COMMANDS.values()})


def printed_config(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main([*argv, "--print-config"]) == 0
    return capsys.readouterr().out


def test_every_recipe_of_configs_is_packaged() -> None:
    assert set(RECIPE_COMMANDS) <= set(packaged_recipes())
    assert {path.stem for path in (ROOT / "configs").glob("*.yaml")} == set(packaged_recipes())
    for name in RECIPE_COMMANDS:
        assert recipe_path(name).read_bytes() == (ROOT / "configs" / f"{name}.yaml").read_bytes()
        assert recipe_path(f"{name}.yaml") == recipe_path(name)
    assert RECIPES.name == "recipes" and RECIPES.parent.name == "landformer"


@pytest.mark.parametrize("name", sorted(RECIPE_COMMANDS))
def test_recipe_by_name_equals_recipe_by_path(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    command = RECIPE_COMMANDS[name]
    by_name = printed_config(capsys, [*command, "--config", name])
    by_path = printed_config(capsys, [*command, "--config", str(ROOT / "configs" / f"{name}.yaml")])
    assert by_name == by_path
    assert yaml.safe_load(by_name)


@pytest.mark.parametrize("command", TRAINING_COMMANDS, ids=" ".join)
def test_printed_config_loads_back_to_the_same_recipe(
    command: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    printed = printed_config(capsys, [*command, "--max-steps", "4321"])
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    assert printed_config(capsys, [*command, "--config", str(saved)]) == printed
    assert "max_steps: 4321" in printed


def logger_lists(value: Any) -> list[list[str]]:
    """Every ``loggers`` list anywhere in a resolved recipe (embeddings has one per stage)."""
    if isinstance(value, dict):
        found = [value["loggers"]] if "loggers" in value else []
        return found + [lists for item in value.values() for lists in logger_lists(item)]
    return []


@pytest.mark.parametrize("command", TRAINING_COMMANDS, ids=" ".join)
def test_every_recipe_and_default_logs_to_tensorboard_beside_csv(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    recipes = [[]] + [["--config", name] for name, owner in RECIPE_COMMANDS.items() if tuple(owner) == command]
    for recipe in recipes:
        lists = logger_lists(yaml.safe_load(printed_config(capsys, [*command, *recipe])))
        assert lists, recipe
        for loggers in lists:
            assert {"csv", "tensorboard"} <= set(loggers), (recipe, loggers)


def test_recipe_not_found_says_what_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match=r"config not found: landcover_tiy \(packaged recipes: .*landcover_tiny"):
        recipe_path("landcover_tiy")
    monkeypatch.chdir(tmp_path)  # a user outside the checkout, following the README's paths
    with pytest.raises(UserError, match=r"a packaged recipe has that name: --config landcover_tiny\)"):
        recipe_path("configs/landcover_tiny.yaml")
    (tmp_path / "landcover_tiny.yaml").write_text("train: {max_steps: 3}\n")
    assert recipe_path("landcover_tiny.yaml") == Path("landcover_tiny.yaml")  # a file in the folder comes first


def test_bad_config_name_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["landcover", "train", "--config", "no_such_recipe", "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("landformer: error: config not found: no_such_recipe") and "\n" not in err


def test_load_config_by_name_reports_the_packaged_file() -> None:
    from landformer.forecast.config import ForecastConfig

    @dataclasses.dataclass
    class Small:
        data: dict[str, Any] = dataclasses.field(default_factory=dict)

    assert load_config(ForecastConfig, "forecast_tiny") == load_config(
        ForecastConfig, ROOT / "configs/forecast_tiny.yaml"
    )
    with pytest.raises(UserError, match=r"recipes/forecast_tiny\.yaml: unknown key 'model'"):
        load_config(Small, "forecast_tiny")
