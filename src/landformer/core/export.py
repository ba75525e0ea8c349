"""The inference bundle: ``NAME.safetensors`` (the network's weights, with the metadata in the safetensors header)
beside ``NAME.json`` (the same metadata, for people and tools), written atomically.

The metadata always holds ``format`` (which pipeline and network), ``format_version`` and ``landformer_version``;
a pipeline adds the network's config and what it needs to use the network (legend, normaliser, grid).
:func:`load_bundle` checks the format and names the file in every error, so loading the wrong kind of file is a
one-line :class:`UserError`, never a shape mismatch deep in ``load_state_dict``.

Every pipeline writes its networks through :func:`save_bundle` (geoloc one per region and one router, under a
manifest of its own), so each task's ``task.model`` is saved the same way everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from landformer import __version__
from landformer.core.errors import UserError
from landformer.core.io import load_safetensors, save_safetensors, write_json

BUNDLE_KEYS = ("format", "format_version", "landformer_version")  # what save_bundle adds to a pipeline's metadata


def pipeline_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` without the keys :func:`save_bundle` adds: the metadata the pipeline itself saved."""
    return {key: value for key, value in meta.items() if key not in BUNDLE_KEYS}


def bundle_file(path: str | os.PathLike[str], name: str = "model") -> Path:
    """``path`` itself when it names a ``.safetensors`` file, else ``path/NAME.safetensors`` (a run folder)."""
    path = Path(path)
    return path if path.suffix == ".safetensors" else path / f"{name}.safetensors"


def save_bundle(
    path: str | os.PathLike[str],
    state: Mapping[str, Any],
    format: str,
    format_version: int,
    name: str = "model",
    **meta: Any,
) -> Path:
    """Write the weights ``state`` to :func:`bundle_file` and the metadata to ``NAME.json`` beside it (the same
    record is in the safetensors header); return the weights file. ``meta`` (plain JSON values: the network's
    config and whatever using it needs) is stored after ``format``, ``format_version`` and
    ``landformer_version``."""
    file = bundle_file(path, name)
    file.parent.mkdir(parents=True, exist_ok=True)
    header = dict(zip(BUNDLE_KEYS, (format, format_version, __version__), strict=True)) | meta
    save_safetensors(file, state, header)  # it copies the tensors to the CPU, contiguous
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
        raise UserError(f"{file}: format_version {version!r} is not one this landformer reads (1 to {max_version})")
    return state, meta, file
