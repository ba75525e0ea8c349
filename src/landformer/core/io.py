"""Atomic writes and safe loading.

Every output goes to a temporary file in the destination folder and is renamed into place only when it is
complete, so a crash or a bad input never leaves a half-written file behind. Nothing is ever unpickled:
tensors load through safetensors or ``torch.load(weights_only=True)``, everything else is JSON or a
pickle-free ``.npz``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from landformer.core.errors import UserError


def require_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """Return ``path`` as a Path, or raise a UserError if it does not exist or is a folder."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if path.is_dir():
        raise UserError(f"{what} is a folder, expected a file: {path}")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the final suffix so libraries that choose a format by extension
    (GDAL, PIL, imageio) still pick the right driver.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates files readable by the owner only; give the result the usual permissions.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        # GDAL may leave sidecars (.aux.xml) named after the temporary file. (No glob: names may hold "[".)
        for sidecar in path.parent.iterdir():
            if sidecar.name.startswith(f"{tmp.name}."):
                sidecar.unlink(missing_ok=True)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def _json_ready(value: Any) -> Any:
    """``value`` with numpy scalars/arrays and Paths made plain, and NaN/inf made ``null``.

    Python's json writes bare ``NaN``/``Infinity``, which is not JSON: jq, browsers and most other readers
    refuse the whole file. A metric that could not be computed is ``null`` instead.
    """
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as strict, indented JSON (NaN and inf become null), atomically."""
    return write_text(path, json.dumps(_json_ready(obj), indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    path = require_file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{what} {path} is not valid JSON: {err}") from None


def write_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], compress: bool = True) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        (np.savez_compressed if compress else np.savez)(handle, **arrays)
    return Path(path)


def read_npz(
    path: str | os.PathLike[str], required: tuple[str, ...] = (), what: str = "npz file"
) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` without pickle; corrupt files and missing keys are UserErrors."""
    path = require_file(path, what)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise UserError(f"{what} {path} is a single .npy array, not an .npz archive of named arrays")
        with loaded as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as err:
        raise UserError(f"{what} {path} is corrupt, truncated or holds pickled objects: {err}") from None
    missing = [key for key in required if key not in arrays]
    if missing:
        raise UserError(f"{what} {path} lacks key(s) {', '.join(missing)} (has: {', '.join(sorted(arrays))})")
    return arrays


def save_safetensors(path: str | os.PathLike[str], tensors: Mapping[str, Any], metadata: Mapping[str, Any]) -> Path:
    """Write tensors plus JSON-encodable metadata (stored as one JSON string under ``"landformer"``)."""
    from safetensors.torch import save_file

    contiguous = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata={"landformer": json.dumps(_json_ready(metadata), allow_nan=False)})
    return Path(path)


def load_safetensors(path: str | os.PathLike[str], what: str = "model file") -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(tensors, metadata)`` written by :func:`save_safetensors`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = require_file(path, what)
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("landformer", "{}")
    except (SafetensorError, OSError) as err:
        raise UserError(f"{what} {path} is not a readable safetensors file: {err}") from None
    return tensors, json.loads(raw)


def load_torch(path: str | os.PathLike[str], what: str = "checkpoint") -> Any:
    """Load a ``.ckpt``/``.pt`` file with ``weights_only=True``: tensors and plain containers only."""
    import pickle

    import torch

    path = require_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, KeyError, ValueError) as err:
        # Garbage input surfaces as KeyError/ValueError from the unpickler, so those count as unreadable too.
        raise UserError(f"{what} {path} cannot be loaded safely: {unpickling_reason(err)}") from None


def unpickling_reason(err: BaseException) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused a file.

    For a disallowed object that is the "Unsupported global: GLOBAL module.Class" line; torch's own first line
    suggests re-loading with ``weights_only=False``, which is exactly what must not be done with unknown files.
    """
    text = str(err).strip()
    match = re.search(r"Unsupported global: GLOBAL [\w.]+", text)
    if match:
        return f"it holds an object that is not plain data ({match.group(0)})"
    if "WeightsUnpickler error" in text:
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        return "it is a pickle that is not a plain-data checkpoint" + (f" ({detail.group(1)})" if detail else "")
    first_line = re.sub(r"\x1b\[[0-9;]*m", "", text.splitlines()[0]) if text else ""
    return f"{type(err).__name__}: {first_line}" if first_line else type(err).__name__
