"""The inference bundle: ``NAME.safetensors`` (the network's weights, with the metadata in the safetensors header)
beside ``NAME.json`` (the same metadata, for people and tools), written atomically.

The metadata always holds ``format`` (which pipeline and network), ``format_version``, ``landformer_version`` and
``config`` (the network's config dataclass as plain values); a pipeline adds what it needs to use the network
(legend, normaliser, grid). :func:`load_bundle` checks the format and names the file in every error, so loading
the wrong kind of file is a one-line :class:`UserError`, never a shape mismatch deep in ``load_state_dict``.

Land cover writes its models this way; terrain, forecast and geoloc keep the file layouts their packaged models
and saved runs already have (``model_config`` in place of ``config``, several files per run) and check them the
same way in their own ``export.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from landformer import __version__
from landformer.core.errors import UserError
from landformer.core.io import load_safetensors, save_safetensors, write_json


def bundle_file(path: str | os.PathLike[str], name: str = "model") -> Path:
    """``path`` itself when it names a ``.safetensors`` file, else ``path/NAME.safetensors`` (a run folder)."""
    path = Path(path)
    return path if path.suffix == ".safetensors" else path / f"{name}.safetensors"


def save_bundle(
    path: str | os.PathLike[str],
    state: Mapping[str, Any],
    format: str,
    format_version: int,
    config: Mapping[str, Any],
    name: str = "model",
    **meta: Any,
) -> Path:
    """Write the weights ``state`` and the metadata to :func:`bundle_file` and ``NAME.json`` beside it; return the
    weights file. ``meta`` (plain JSON values) is stored beside ``format``, ``format_version``,
    ``landformer_version`` and ``config``."""

    file = bundle_file(path, name)
    file.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "format": format,
        "format_version": format_version,
        "landformer_version": __version__,
        "config": dict(config),
        **meta,
    }
    save_safetensors(file, state, header)
    write_json(file.with_name(f"{name}.json"), header)
    return file


def load_bundle(
    path: str | os.PathLike[str], format: str, what: str, name: str = "model", max_version: int = 1
) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """The weights, the metadata and the file of a bundle written by :func:`save_bundle`; a missing file, a file
    of another format or a newer ``format_version`` is a UserError that names the file and ``what`` it should be."""
    file = bundle_file(path, name)
    if not file.is_file():
        raise UserError(f"{what} not found: {file}")
    state, meta = load_safetensors(file, what)
    if meta.get("format") != format:
        raise UserError(f"{file} is not a {what} (format {meta.get('format')!r}, expected {format!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > max_version:
        raise UserError(f"{file}: format_version {version!r} is newer than this landformer reads ({max_version})")
    return state, meta, file
