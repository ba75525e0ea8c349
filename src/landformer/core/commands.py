"""Argparse helpers every command group uses: one help formatter, commands and groups, the recipe flags
(``--config``, ``--set``, ``--print-config``) and training flags alike everywhere, deprecated aliases, and the
``--out`` guard. They live in core so that pipelines and core's own commands never import the top-level
``landformer.cli``, which imports them all."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each argument's default once: not when the help text already names it, and not for ``None``
    (a required or optional-without-default argument), where "(default: None)" tells the reader nothing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if "default" in help_text.lower() or action.default is None or action.default is argparse.SUPPRESS:
            return help_text
        return super()._get_help_string(action)


def add_command(
    subparsers: argparse._SubParsersAction, name: str, help: str, func: Callable[[argparse.Namespace], object]
) -> argparse.ArgumentParser:
    """Add one runnable sub-command whose ``--help`` shows every default."""
    parser = subparsers.add_parser(name, help=help, description=help, formatter_class=Formatter)
    parser.set_defaults(func=func, command_parser=parser)
    return parser


def guarded_output(args: argparse.Namespace) -> contextlib.AbstractContextManager[Any]:
    """:func:`~landformer.core.io.output_guard` for the command's ``--out``, when it has one and it is set.

    Whether ``--out`` names a file or a folder is read from its help text ("run folder", "folder for ...",
    "output GeoTIFF", "chip file ..."), which every command states.
    """
    from landformer.core.io import output_guard

    parser = getattr(args, "command_parser", None)
    if getattr(args, "print_config", False):
        return contextlib.nullcontext()  # nothing is written
    for action in parser._actions if parser is not None else []:
        if "--out" in action.option_strings:
            value = getattr(args, action.dest, None)
            if value is None:
                break
            kind = "folder" if "folder" in (action.help or "").lower() else "file"
            return output_guard(Path(value), kind)
    return contextlib.nullcontext()


def add_group(subparsers: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """Add a command group (``landformer NAME ...``) and return its sub-parser collection."""
    parser = subparsers.add_parser(name, help=help, description=help, formatter_class=Formatter)
    parser.set_defaults(func=lambda args, parser=parser: parser.print_help())
    return parser.add_subparsers(title="commands", metavar="COMMAND")


def add_recipe_arguments(parser: argparse.ArgumentParser, default_note: str) -> None:
    """``--config`` (a recipe YAML or a packaged recipe's name), repeatable ``--set key=value`` overrides and
    ``--print-config``, the same on every command that reads a recipe; the command calls :func:`recipe_printed`
    once the recipe is resolved."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"recipe YAML, or the name of a packaged recipe such as landcover_tiny (default: {default_note})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one recipe value, e.g. --set train.max_steps=100 (repeatable)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the fully resolved recipe (--config, --set and flags applied) as YAML and exit",
    )


# The settings every training command takes as flags: (flag, key of the recipe's train section, type, nargs, help).
TRAINING_FLAGS: tuple[tuple[str, str, type, str | None, str], ...] = (
    ("--max-steps", "max_steps", int, None, "optimiser steps to train for"),
    ("--seed", "seed", int, None, "random seed"),
    ("--accelerator", "accelerator", str, None, "auto, cpu, gpu, cuda, mps"),
    ("--devices", "devices", str, None, "devices per node: a number, auto, or ids like 0,1"),
    ("--precision", "precision", str, None, "auto, 32-true, bf16-mixed, 16-mixed"),
    ("--loggers", "loggers", str, "+", "any of csv, tensorboard, wandb"),
)


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    """The :data:`TRAINING_FLAGS`; each is a shorthand for ``--set <train section>.<key>=VALUE`` and wins over it."""
    for flag, key, kind, nargs, text in TRAINING_FLAGS:
        parser.add_argument(
            flag,
            dest=f"train__{key}",
            type=kind,
            nargs=nargs,
            default=argparse.SUPPRESS,
            metavar=key.upper(),
            help=f"{text} [train.{key}]",
        )


def recipe_overrides(args: argparse.Namespace, section: str = "train") -> list[str]:
    """``--set`` overrides followed by the :data:`TRAINING_FLAGS` given, as overrides of the train ``section``."""
    overrides = list(args.overrides)
    for _, key, _, _, _ in TRAINING_FLAGS:
        value = getattr(args, f"train__{key}", None)
        if value is None:
            continue
        if key == "devices" and value.strip().isdigit():
            value = int(value)
        overrides.append(f"{section}.{key}={json.dumps(value)}")  # JSON is YAML: lists and strings stay intact
    return overrides


def recipe_printed(args: argparse.Namespace, recipe: Any) -> bool:
    """With ``--print-config``: print ``recipe`` as YAML (what ``--config`` reads back) and return True, so the
    command stops before it trains or reads data."""
    if not getattr(args, "print_config", False):
        return False
    from landformer.core.config import config_yaml

    print(config_yaml(recipe), end="")
    return True


def add_alias(
    subparsers: argparse._SubParsersAction,
    name: str,
    replacement: str,
    func: Callable[[argparse.Namespace], object],
    **fixed: object,
) -> argparse.ArgumentParser:
    """A deprecated command name kept for one release: it runs ``func`` with ``fixed`` arguments set (e.g. the
    stage) and says on stderr which command replaces it."""
    help = f"deprecated alias of `{replacement}`, removed in 0.3"
    parser = add_command(subparsers, name, help, func)
    old = f"{replacement.split()[0]} {name}"  # the group, then the old command
    parser.set_defaults(deprecated_alias=f"`{old}` is deprecated and goes in 0.3: use `{replacement}`", **fixed)
    return parser


def optional_arguments_not_required(parser: argparse.ArgumentParser) -> None:
    """Let ``--print-config`` run without the flags a real run needs (``--out``, ``--sft``...), in every command."""
    for action in parser._actions:
        if action.option_strings:
            action.required = False
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                optional_arguments_not_required(subparser)
