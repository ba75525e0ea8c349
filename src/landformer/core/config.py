"""Typed configs from YAML.

A config is a (possibly nested) dataclass. :func:`load_config` reads YAML with ``yaml.safe_load`` and
builds the dataclass, checking every key and type at the door: an unknown key, a misspelt key or a value of
the wrong type is a :class:`UserError` that names the file and the dotted key. ``overrides`` such as
``["train.max_steps=50"]`` let the CLI change single values without editing the file.

A field declared with :func:`option` is also a command-line flag: the command's options *are* its config
dataclass, and :func:`landformer.core.commands.add_config_flags` turns those fields into argparse flags, so no
command keeps a table of flags beside its config.

Recipes ship inside the package (``landformer/recipes``, the repository's ``configs/`` folder), so a recipe is
given either as a path or by name: ``landcover_tiny`` is ``configs/landcover_tiny.yaml`` of the checkout or of
the installed wheel alike.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from landformer.core.errors import UserError
from landformer.core.io import require_file, write_text

T = TypeVar("T")
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
_FLOAT_LITERAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted (tuples, Paths, nested configs)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key, source)
            except UserError:
                continue
        raise UserError(f"{source}: '{key}' = {value!r} is not {_describe(tp)}")
    if origin is Literal:
        # Compare types too: True == 1 in Python, but `true` is not a valid choice for Literal[1, 2].
        if not any(value == choice and type(value) is type(choice) for choice in get_args(tp)):
            choices = ", ".join(repr(choice) for choice in get_args(tp))
            raise UserError(f"{source}: '{key}' = {value!r} is not one of {choices}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{source}: '{key}' = {value!r} should be a list")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"{source}: '{key}' should have {len(args)} items, got {len(value)}")
            items = [_convert(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args, strict=True))]
        else:
            item_type = args[0] if args else Any
            items = [_convert(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{source}: '{key}' = {value!r} should be a mapping")
        _, value_type = get_args(tp) or (str, Any)
        return {str(k): _convert(v, value_type, f"{key}.{k}", source) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{source}: '{key}' should be a mapping of {tp.__name__} fields")
        return from_dict(tp, value, source=source, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{source}: '{key}' = {value!r} should be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{source}: '{key}' = {value!r} should be an integer")
        return value
    if tp is float:
        # PyYAML follows YAML 1.1, which reads 1e-4 (no dot) as a string; accept such plain decimal literals.
        if isinstance(value, str) and _FLOAT_LITERAL.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{source}: '{key}' = {value!r} should be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{source}: '{key}' = {value!r} should be a string")
        return value
    if tp is Path:
        if not isinstance(value, (str, os.PathLike)):
            raise UserError(f"{source}: '{key}' = {value!r} should be a path")
        return Path(value)
    raise TypeError(f"unsupported config annotation {tp!r} for '{key}'")


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    flag: str | None = None,
    default_factory: Any = dataclasses.MISSING,
    common: bool = False,
) -> Any:
    """A config field that is also a command-line flag.

    ``flag`` defaults to the field name in kebab case (``max_steps`` -> ``--max-steps``). The flag is a shorthand
    for ``--set <dotted key>=VALUE`` and wins over it; a bool field becomes a switch that sets the opposite of its
    default (``--no-clean`` for ``enabled: bool = True``). ``common`` marks the training flags every pipeline's
    ``train`` command takes.
    """
    metadata = {"help": help, "flag": flag, "common": common}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class ConfigFlag:
    """One :func:`option` field of a (nested) config, as a command-line flag."""

    flag: str  # e.g. "--max-steps"
    key: str  # the dotted config key, e.g. "train.max_steps"
    annotation: Any  # the field's type annotation
    default: Any  # the field's default (dataclasses.MISSING when it has none)
    help: str
    common: bool


def config_flags(cls: type, prefix: str = "") -> list[ConfigFlag]:
    """The :func:`option` fields of dataclass ``cls`` and of its nested sections, in declaration order."""
    hints = get_type_hints(cls)
    flags: list[ConfigFlag] = []
    for field in dataclasses.fields(cls):
        annotation = hints[field.name]
        if "help" in field.metadata:
            default = field.default
            if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = field.default_factory()  # type: ignore[misc]
            name = field.metadata["flag"] or "--" + field.name.replace("_", "-")
            help, common = field.metadata["help"], field.metadata["common"]
            flags.append(ConfigFlag(name, prefix + field.name, annotation, default, help, common))
        elif dataclasses.is_dataclass(annotation):
            flags.extend(config_flags(annotation, f"{prefix}{field.name}."))
    return flags


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config", prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise UserError."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping at '{prefix.rstrip('.') or 'top level'}'")
    hints = get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}  # type: ignore[arg-type]
    unknown = [key for key in data if key not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(fields)})"
        raise UserError(f"{source}: unknown key '{prefix}{key}'{hint}")
    data = {name: _over_default_section(fields[name], value) for name, value in data.items()}
    kwargs = {name: _convert(value, hints[name], f"{prefix}{name}", source) for name, value in data.items()}
    missing = [
        name
        for name, field in fields.items()
        if name not in kwargs and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise UserError(f"{source}: missing required key(s) {', '.join(prefix + name for name in missing)}")
    return cls(**kwargs)


def _over_default_section(field: dataclasses.Field, value: Any) -> Any:
    """A partly given section laid over the section's own default, not over its class's bare defaults.

    A recipe's ``train`` section may default to, say, ``TrainConfig(max_steps=300, lr=5e-3)``; a YAML or
    ``--set train.lr=1e-3`` that names only ``lr`` must keep ``max_steps=300`` rather than fall back to
    ``TrainConfig``'s own default.
    """
    if not isinstance(value, dict) or field.default_factory is dataclasses.MISSING:  # type: ignore[misc]
        return value
    default = field.default_factory()  # type: ignore[misc]
    return _lay_over(default, value) if dataclasses.is_dataclass(default) else value


def _lay_over(default: Any, update: dict[str, Any]) -> dict[str, Any]:
    """``default`` (a dataclass instance) as a dict with ``update``'s keys on top; sub-sections merge the same
    way, while any other value (a list, a plain dict) is replaced whole."""
    merged = to_dict(default)
    for key, value in update.items():
        current = getattr(default, key, None)
        merged[key] = (
            _lay_over(current, value) if isinstance(value, dict) and dataclasses.is_dataclass(current) else value
        )
    return merged


def check_values(section: str, checks: typing.Iterable[tuple[bool, str]]) -> None:
    """Raise a UserError ``"<section>: <message>"`` for the first check that fails.

    Config dataclasses call this from ``__post_init__`` with ``(condition, message)`` pairs so every range
    check reads as one line and every error names its section and value.
    """
    for ok, message in checks:
        if not ok:
            raise UserError(f"{section}: {message}")


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-friendly dict of a config dataclass (Paths become strings, tuples lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {field.name: plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(config)


def apply_overrides(data: dict[str, Any], overrides: typing.Sequence[str], source: str) -> dict[str, Any]:
    """Apply ``dotted.key=value`` strings (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} should look like key=value (e.g. train.max_steps=100)")
        dotted, raw = item.split("=", 1)
        node = data
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"{source}: cannot override '{dotted}': '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def packaged_recipes() -> list[str]:
    """Names of the recipes shipped in the package, e.g. ``landcover_tiny``."""
    return sorted(path.stem for path in RECIPES.glob("*.yaml"))


def recipe_path(path_or_name: str | os.PathLike[str]) -> Path:
    """The recipe file at ``path_or_name``, else the packaged recipe of that name (``landcover_tiny`` or
    ``landcover_tiny.yaml``); anything else is a UserError that says what exists."""
    path = Path(path_or_name)
    if path.exists():
        return require_file(path, "config")
    packaged = RECIPES / f"{path.stem}.yaml"
    bare_name = len(path.parts) == 1 and path.suffix in ("", ".yaml")
    if bare_name and packaged.is_file():
        return packaged
    if packaged.is_file():
        raise UserError(f"config not found: {path} (a packaged recipe has that name: --config {path.stem})")
    raise UserError(f"config not found: {path} (packaged recipes: {', '.join(packaged_recipes())})")


def read_yaml_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a YAML file (``{}`` for an empty file), read with ``safe_load``; anything else is a UserError.
    ``path`` may name a packaged recipe (:func:`recipe_path`)."""
    path = recipe_path(path)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"config {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise UserError(f"config {path} should be a mapping of keys to values")
    return loaded or {}


def load_config(cls: type[T], path: str | os.PathLike[str] | None = None, overrides: typing.Sequence[str] = ()) -> T:
    """Read a YAML file (or start from the defaults when ``path`` is None) into dataclass ``cls``."""
    data: dict[str, Any] = {}
    source = "--set" if overrides else "defaults"
    if path is not None:
        path = recipe_path(path)
        data = read_yaml_mapping(path)
        source = str(path)
    apply_overrides(data, overrides, source)
    return from_dict(cls, data, source=source)


def config_yaml(config: Any) -> str:
    """A config dataclass as the YAML text that :func:`load_config` reads back into an equal config."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def save_config(config: Any, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as YAML, atomically, with the package version in a header comment.

    The version goes in a comment so the saved file loads back unchanged with :func:`load_config`.
    """
    from landformer import __version__

    header = f"# resolved {type(config).__name__} written by landformer {__version__}\n"
    return write_text(path, header + config_yaml(config))
