"""The one ``landformer`` command. Each pipeline registers its own sub-commands; this file only dispatches.

User mistakes (:class:`~landformer.core.errors.UserError`), and an optional package that is not installed (named
with its pip extra), become one line on stderr and exit code 2;
``--debug`` shows the full traceback instead. A command's ``--out`` is checked, locked and cleaned up after a
failure by :func:`landformer.core.io.output_guard`; SIGTERM unwinds like Ctrl-C, so temporary files go too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from landformer import __version__
from landformer.core.errors import UserError


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


def _optional_arguments_not_required(parser: argparse.ArgumentParser) -> None:
    """Let ``--print-config`` run without the flags a real run needs (``--out``, ``--sft``...), in every command."""
    for action in parser._actions:
        if action.option_strings:
            action.required = False
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _optional_arguments_not_required(subparser)


def build_parser() -> argparse.ArgumentParser:
    from landformer import demo
    from landformer.core import cli as core_cli
    from landformer.embeddings import cli as embeddings_cli
    from landformer.forecast import cli as forecast_cli
    from landformer.geoloc import cli as geoloc_cli
    from landformer.landcover import cli as landcover_cli
    from landformer.synth import cli as synth_cli
    from landformer.terrain import cli as terrain_cli

    parser = argparse.ArgumentParser(
        prog="landformer",
        description="Deep generative and predictive models of the land surface.",
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"landformer {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    subparsers = parser.add_subparsers(title="pipelines and tools", metavar="COMMAND")
    for module in (core_cli, synth_cli, landcover_cli, terrain_cli, embeddings_cli, geoloc_cli, forecast_cli, demo):
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line, not only before the sub-command.
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    parser = build_parser()
    if "--print-config" in argv:
        _optional_arguments_not_required(parser)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    if hasattr(args, "deprecated_alias"):
        print(f"landformer: {args.deprecated_alias}", file=sys.stderr)
    from landformer.core.io import Terminated, signals_as_exceptions

    try:
        with signals_as_exceptions(), guarded_output(args):
            args.func(args)
    except (UserError, ModuleNotFoundError) as err:
        from landformer.core.extras import missing_extra

        error = missing_extra(err) if isinstance(err, ModuleNotFoundError) else err
        if debug or error is None:
            raise
        print(f"landformer: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Terminated)
        print(f"landformer: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
