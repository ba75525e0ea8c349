"""Argparse helpers every command group uses: one help formatter, commands and groups, the recipe flags
(``--config``, ``--set``, ``--print-config``) and training flags alike everywhere, deprecated aliases, and the
``--out`` guard. They live in core so that pipelines and core's own commands never import the top-level
``landformer.cli``, which imports them all."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from landformer.core.config import ConfigFlag, config_flags
from landformer.core.errors import UserError
from landformer.core.train import TrainConfig


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


def _argparse_shape(annotation: Any) -> dict[str, Any]:
    """``type``/``nargs``/``choices`` for a flag of a config field annotated ``annotation``."""
    options = [option for option in get_args(annotation) if option is not type(None)]
    if get_origin(annotation) in (Union, types.UnionType):
        if len(options) == 1:
            return _argparse_shape(options[0])
        return {"type": _number_or_text}  # e.g. devices: int | str takes "2" as 2 and "auto" as "auto"
    if get_origin(annotation) is Literal:
        return {"type": type(options[0])}  # the config names the choices in a one-line error
    if get_origin(annotation) in (list, tuple):
        return {**_argparse_shape(options[0] if options else str), "nargs": "+"}
    if annotation in (int, float):
        return {"type": annotation}
    return {"type": str}  # str, Path and anything else arrive as text and are checked by the config


def _number_or_text(text: str) -> int | str:
    return int(text) if text.strip().isdigit() else text


def _add_flag(parser: argparse.ArgumentParser, flag: ConfigFlag, dest: str, default: Any = dataclasses.MISSING) -> None:
    """One argparse flag for ``flag``; ``default`` (when known) is named in the help, since the flag's own default
    must stay unset (SUPPRESS) for the recipe's value to stand when the flag is not given."""
    help = f"{flag.help} [{flag.key}]"
    shown = default not in (None, dataclasses.MISSING, [], ()) and flag.annotation is not bool
    if shown and "default" not in flag.help.lower():
        default = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        help += f" (default: {default})"
    if flag.annotation is bool:
        parser.add_argument(
            flag.flag, dest=dest, action="store_const", const=not flag.default, default=argparse.SUPPRESS, help=help
        )
        return
    metavar = flag.key.split(".")[-1].upper()
    parser.add_argument(
        flag.flag, dest=dest, default=argparse.SUPPRESS, metavar=metavar, help=help, **_argparse_shape(flag.annotation)
    )


def _built_in_value(config: Any, key: str) -> Any:
    """The value at dotted ``key`` of the config instance ``config`` (MISSING when there is none)."""
    for part in key.split("."):
        config = getattr(config, part, dataclasses.MISSING)
    return config


def add_config_flags(parser: argparse.ArgumentParser, config: type, section: str = "") -> None:
    """One flag per :func:`~landformer.core.config.option` field of the dataclass ``config`` (and of its nested
    sections), its help naming the built-in default; ``section`` is the dotted key ``config`` sits under in the
    recipe. :func:`recipe_overrides` turns the flags given back into ``--set`` overrides."""
    try:
        built_in = config()  # the defaults as the recipe resolves them (a section may default to its own values)
    except (TypeError, UserError):
        built_in = None
    for flag in config_flags(config):
        default = _built_in_value(built_in, flag.key) if built_in is not None else flag.default
        key = f"{section}.{flag.key}" if section else flag.key
        _add_flag(parser, dataclasses.replace(flag, key=key), "set__" + key.replace(".", "__"), default)


def training_flags() -> list[ConfigFlag]:
    """The flags every training command takes: the ``common`` options of :class:`TrainConfig`."""
    return [flag for flag in config_flags(TrainConfig, "train.") if flag.common]


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    """The :func:`training_flags`; each is a shorthand for ``--set <train section>.<key>=VALUE`` and wins over it.
    Their help names no default: each pipeline's recipe sets its own."""
    for flag in training_flags():
        _add_flag(parser, flag, f"train__{flag.key.removeprefix('train.')}")


def recipe_overrides(args: argparse.Namespace, section: str = "train") -> list[str]:
    """``--set`` overrides, then the training flags given (as overrides of the train ``section``), then the flags
    of :func:`add_config_flags`: flags win over ``--set``."""
    overrides = list(getattr(args, "overrides", []))
    for name, value in vars(args).items():
        if name.startswith("train__"):
            overrides.append(f"{section}.{name.removeprefix('train__')}={json.dumps(value)}")
    for name, value in vars(args).items():
        if name.startswith("set__"):
            # JSON is YAML: lists and strings stay intact, "2" stays a string where the field is a string.
            overrides.append(f"{name.removeprefix('set__').replace('__', '.')}={json.dumps(value)}")
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
