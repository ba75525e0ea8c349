"""One verb set: ``train`` in every pipeline (``--stage`` where a pipeline trains in stages), the old verbs as
deprecated aliases, and the same ``--set`` and training flags on every training command."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from landformer.cli import build_parser, main
from landformer.core.commands import training_flags

# Old command -> the `train` command it stands for.
ALIASES = {
    ("terrain", "fit-tokenizer"): ("terrain", "train", "--stage", "tokenizer"),
    ("terrain", "fit"): ("terrain", "train", "--stage", "maskgit"),
    ("embeddings", "pretrain"): ("embeddings", "train", "--stage", "pretrain"),
    ("embeddings", "sft"): ("embeddings", "train", "--stage", "sft"),
    ("embeddings", "dpo"): ("embeddings", "train", "--stage", "dpo"),
}
# Each training command and where its train section sits in the recipe.
TRAINING_COMMANDS = {
    ("landcover", "train"): "train",
    ("terrain", "train", "--stage", "tokenizer"): "train",
    ("terrain", "train", "--stage", "maskgit"): "train",
    ("embeddings", "train", "--stage", "pretrain"): "train_pretrain",
    ("embeddings", "train", "--stage", "sft"): "train_sft",
    ("embeddings", "train", "--stage", "dpo"): "train_dpo",
    ("forecast", "train"): "train",
    ("geoloc", "train"): "train",
}
FLAG_VALUES = {
    "--max-steps": (["7"], 7),
    "--max-minutes": (["2.5"], 2.5),
    "--seed": (["5"], 5),
    "--accelerator": (["cpu"], "cpu"),
    "--devices": (["2"], 2),
    "--precision": (["bf16-mixed"], "bf16-mixed"),
    "--loggers": (["csv", "wandb"], ["csv", "wandb"]),
}


def resolved(capsys: pytest.CaptureFixture[str], argv: list[str] | tuple[str, ...]) -> dict:
    assert main([*argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("old", sorted(ALIASES), ids=" ".join)
def test_alias_runs_the_train_command_with_its_stage(old: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    new = ALIASES[old]
    parser = build_parser()
    old_args = parser.parse_args([*old, "--out", "x", *(["--sft", "s"] if old[-1] == "dpo" else [])])
    new_args = parser.parse_args([*new, "--out", "x"])
    assert old_args.func is new_args.func
    assert old_args.stage == new_args.stage
    assert resolved(capsys, [*old, "--max-steps", "3"]) == resolved(capsys, [*new, "--max-steps", "3"])
    assert main([*old, "--print-config"]) == 0
    err = capsys.readouterr().err.strip()
    assert err == f"landformer: `{' '.join(old)}` is deprecated and goes in 0.3: use `{' '.join(new)}`"


@pytest.mark.parametrize("group", ["terrain", "embeddings"])
def test_help_lists_train_and_marks_the_old_verbs_deprecated(group: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([group, "--help"])
    text = capsys.readouterr().out
    assert " train " in text
    for old, new in ALIASES.items():
        if old[0] == group:
            assert f"deprecated alias of `{' '.join(new)}`" in " ".join(text.split())


@pytest.mark.parametrize("command", sorted(TRAINING_COMMANDS), ids=" ".join)
def test_training_flags_and_set_work_alike_everywhere(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    section = TRAINING_COMMANDS[command]
    assert {flag.flag for flag in training_flags()} == set(FLAG_VALUES)
    flags = [part for flag, (values, _) in FLAG_VALUES.items() for part in (flag, *values)]
    train = resolved(capsys, [*command, *flags])[section]
    assert {flag: train[flag[2:].replace("-", "_")] for flag in FLAG_VALUES} == {
        flag: value for flag, (_, value) in FLAG_VALUES.items()
    }
    assert resolved(capsys, [*command, "--set", f"{section}.max_steps=11"])[section]["max_steps"] == 11
    # A flag wins over --set, whatever their order on the line.
    both = [*command, "--max-steps", "12", "--set", f"{section}.max_steps=11"]
    assert resolved(capsys, both)[section]["max_steps"] == 12


def test_print_config_needs_no_out_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for command in [*TRAINING_COMMANDS, ("terrain", "fit"), ("geoloc", "make-dataset")]:
        assert resolved(capsys, command)
    assert main(["terrain", "fit-tokenizer", "--out", "runs/t", "--print-config"]) == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["terrain", "train", "--out", "x"], "terrain train: choose --stage tokenizer or --stage maskgit"),
        (["embeddings", "train", "--out", "x"], "embeddings train: choose --stage pretrain, sft or dpo"),
        (["terrain", "train", "--stage", "tokenizer", "--tokenizer", "t", "--out", "x"], "--tokenizer goes with"),
        (["embeddings", "train", "--stage", "pretrain", "--init", "p", "--out", "x"], "--init goes with --stage sft"),
        (["embeddings", "train", "--stage", "sft", "--sft", "s", "--out", "x"], "--sft goes with --stage dpo"),
        (["embeddings", "train", "--stage", "dpo", "--out", "x"], "--stage dpo needs --sft"),
    ],
)
def test_stage_mistakes_are_one_line(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"landformer: error: {message}") and "\n" not in err
    assert not (tmp_path / "x").exists()
