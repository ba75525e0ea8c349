"""Atomic writes, output folders and locks, and safe loading.

Every output goes to a temporary file in the destination folder and is renamed into place only when it is
complete, so a crash or a bad input never leaves a half-written file behind. Temporary names carry the writer's
process id (``.NAME.PID.XXXX.tmpSUFFIX``): an exception, Ctrl-C or SIGTERM (see :func:`signals_as_exceptions`)
removes them, and the temporary files of a process that died without cleaning up (``kill -9``, a power cut) are
swept by the next writer to the same place. :func:`output_guard` checks an output path before any work starts
(a folder where a file is wanted, a parent that is a file, a folder that cannot be written), holds a lock file
beside it so a second writer to the same path is refused, and removes a run folder that a failed command
created and left without checkpoints. Nothing is ever unpickled: tensors load through safetensors or
``torch.load(weights_only=True)``, everything else is JSON or a pickle-free ``.npz``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import pickle
import re
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

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
    (GDAL, PIL, imageio) still pick the right driver, and holds this process's id so that a later writer can
    tell the leftovers of a killed process (swept here) from the files of one still running.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder, expected a file path")
    make_folder(path.parent)
    sweep_stale_temps(path.parent, path.name)
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{path.stem}.{os.getpid()}.", suffix=f".tmp{path.suffix}", dir=path.parent
        )
    except OSError as err:
        raise UserError(f"cannot write {path}: {_os_reason(err)}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates files readable by the owner only; give the result the usual permissions.
        os.chmod(tmp, 0o666 & ~_UMASK)
        try:
            os.replace(tmp, path)
        except OSError as err:
            raise UserError(f"cannot write {path}: {_os_reason(err)}") from None
    finally:
        tmp.unlink(missing_ok=True)
        # GDAL may leave sidecars (.aux.xml) named after the temporary file. (No glob: names may hold "[".)
        with contextlib.suppress(OSError):
            for sidecar in path.parent.iterdir():
                if sidecar.name.startswith(f"{tmp.name}."):
                    sidecar.unlink(missing_ok=True)


def _os_reason(err: OSError) -> str:
    """``[Errno 13] Permission denied`` as a short phrase, without repeating the file name."""
    return (err.strerror or str(err)).lower()


def make_folder(folder: str | os.PathLike[str]) -> Path:
    """``mkdir -p folder``, where a file in the way or a folder that cannot be written is a UserError naming it."""
    folder = Path(folder)
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        raise UserError(f"cannot create folder {folder}: {blocker} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create folder {folder}: {_os_reason(err)}") from None
    return folder


def _file_in_the_way(folder: Path) -> Path | None:
    """The first existing non-folder among ``folder`` and its parents, if any."""
    for candidate in (folder, *folder.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


# ------------------------------------------------------------------------------ temporary files of dead writers

_TEMP_NAME = re.compile(r"\.(?P<stem>.*)\.(?P<pid>\d+)\.[^./]+\.tmp(?P<rest>.*)")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def sweep_stale_temps(folder: str | os.PathLike[str], name: str | None = None, recursive: bool = False) -> list[Path]:
    """Remove the temporary files (and their GDAL sidecars) that :func:`atomic_path` left in ``folder`` for a
    process that is no longer running; only those of the final file ``name`` when it is given. Returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stem, suffix = (Path(name).stem, Path(name).suffix) if name is not None else (None, None)
    removed = []
    walker = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for root, _, files in walker:
        for file_name in files:
            match = _TEMP_NAME.fullmatch(file_name)
            if match is None or (stem is not None and match["stem"] != stem):
                continue
            if suffix is not None and not match["rest"].startswith(suffix):
                continue
            if _process_alive(int(match["pid"])):
                continue
            path = Path(root) / file_name
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


# ------------------------------------------------------------------------------ output paths, locks, cleanup

OutputKind = Literal["file", "folder"]


def check_output_path(path: str | os.PathLike[str], kind: OutputKind, flag: str = "--out") -> Path:
    """Refuse, before any work starts, an output path that cannot be written: a folder where a file is wanted
    (or the other way round), a parent that is a file, a folder without write permission."""
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give the path of the file to write")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder for the outputs")
    blocker = _file_in_the_way(path.parent)
    if blocker is not None:
        raise UserError(f"{flag} {path} cannot be created: {blocker} is a file, not a folder")
    writable = path if kind == "folder" and path.is_dir() else path.parent
    while not writable.exists():
        writable = writable.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".landformer-write-test.", dir=writable)
    except OSError as err:
        raise UserError(f"{flag} {path} cannot be written: folder {writable}: {_os_reason(err)}") from None
    os.close(fd)
    os.unlink(probe)
    return path


def lock_path(path: str | os.PathLike[str]) -> Path:
    """Where the lock of output ``path`` lives: a hidden file beside it, so a folder output is not created early."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


class OutputLock:
    """An exclusive lock on an output path, held by one process at a time (``flock`` on a file beside it).

    The kernel drops the lock when its holder dies, however it dies, so a killed run never blocks the next one;
    the lock file itself is removed on a clean release and reused otherwise.
    """

    def __init__(self, path: str | os.PathLike[str], flag: str = "--out") -> None:
        self.path, self.flag = Path(path), flag
        self.file = lock_path(path)
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        while True:
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
            except OSError as err:
                reason = _os_reason(err)
                raise UserError(f"{self.flag} {self.path}: cannot create lock file {self.file}: {reason}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                os.close(fd)
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise UserError(f"{self.flag} {self.path}: cannot lock {self.file}: {_os_reason(err)}") from None
                raise UserError(
                    f"{self.flag} {self.path} is being written by another landformer command ({holder or 'unknown'}); "
                    f"wait for it to finish or choose another {self.flag}"
                ) from None
            # The file may have been removed by its previous holder between open and flock: then lock anew.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.file.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def launch_rank() -> int:
    """This process's global rank in a torchrun (``RANK``) or SLURM (``SLURM_PROCID``) launch; 0 outside one."""
    for name in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


@contextlib.contextmanager
def output_guard(path: str | os.PathLike[str], kind: OutputKind, flag: str = "--out") -> Iterator[Path]:
    """Run a command's work for output ``path`` (a file or a folder) safely.

    Before the work: the path is checked (:func:`check_output_path`), missing parent folders are made, a lock is
    taken (a second writer to the same path is refused while this one runs) and temporary files that killed
    runs left there are swept. After a failure (any exception): a folder output that did not exist before is
    removed unless it holds a checkpoint to resume from, and parent folders made here are removed when empty.
    """
    path = check_output_path(path, kind, flag)
    if launch_rank() > 0:
        # A torchrun or SLURM launch runs the same command, with the same --out, on every rank: rank 0 guards the
        # output, and the other ranks, which Lightning keeps from writing it, must not be refused as a second writer.
        make_folder(path.parent)
        yield path
        return
    made = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    make_folder(path.parent)
    existed = path.exists()
    try:
        with OutputLock(path, flag):
            sweep_stale_temps(path.parent, path.name)
            if kind == "folder" and existed:
                sweep_stale_temps(path, recursive=True)
            try:
                yield path
            except BaseException:
                if kind == "folder" and not existed and path.is_dir() and not any(path.rglob("*.ckpt")):
                    shutil.rmtree(path, ignore_errors=True)
                raise
    finally:
        for folder in made:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()


# ------------------------------------------------------------------------------ signals


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` (temporary files, locks) runs before exiting."""


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM raises :class:`Terminated` as SIGINT raises
    KeyboardInterrupt, so temporary files are removed and locks released by the usual cleanup code."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------ memory


def format_bytes(n: float) -> str:
    """``85899345920`` -> ``"80.0 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def available_memory() -> int:
    """Bytes of memory this process can still use: MemAvailable, else total physical memory."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def require_memory(needed: float, what: str) -> None:
    """Refuse up front, in one line naming the size, work that would need more memory than is available."""
    available = available_memory()
    if needed > available:
        raise UserError(f"{what} needs about {format_bytes(needed)} of memory; {format_bytes(available)} is available")


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
    path: str | os.PathLike[str], required: tuple[str, ...] = (), what: str = "npz file", mmap: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` without pickle; corrupt files and missing keys are UserErrors.

    Arrays named in ``mmap`` that the archive stores uncompressed (``np.savez``, ``write_npz(compress=False)``)
    are memory-mapped copy-on-write instead of read: processes mapping the same file share one copy in the page
    cache, and writing to the array never changes the file. Compressed ones are read as usual.
    """
    path = require_file(path, what)
    with open(path, "rb") as handle:
        magic = handle.read(6)
    if not zipfile.is_zipfile(path) and magic != b"\x93NUMPY":
        raise UserError(f"{what} {path} is corrupt or truncated: it is neither an .npz archive nor a .npy array")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise UserError(f"{what} {path} is a single .npy array, not an .npz archive of named arrays")
        with loaded as npz:
            mapped = _mapped_members(path, npz.zip, mmap)
            arrays = {key: mapped[key] if key in mapped else npz[key] for key in npz.files}
    except ValueError as err:
        if "pickle" in str(err):  # numpy's message goes on to suggest allow_pickle=True: never for unknown files
            raise UserError(f"{what} {path} holds pickled objects, which are never loaded") from None
        raise UserError(f"{what} {path} is corrupt or truncated: {err}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise UserError(f"{what} {path} is corrupt or truncated: {err}") from None
    missing = [key for key in required if key not in arrays]
    if missing:
        raise UserError(f"{what} {path} lacks key(s) {', '.join(missing)} (has: {', '.join(sorted(arrays))})")
    return arrays


_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # a zip member's local file header, before its name and extra field
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _mapped_members(path: Path, archive: zipfile.ZipFile, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Memory maps of the members ``keys`` (``KEY.npy``) stored uncompressed in the archive at ``path``.

    An uncompressed member is a whole ``.npy`` file inside the archive: its array data start after the member's
    local header and the ``.npy`` header, and can be mapped in place. Missing or compressed members are left out.
    """
    mapped = {}
    with open(path, "rb") as handle:
        for key in keys:
            try:
                info = archive.getinfo(f"{key}.npy")
            except KeyError:
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                continue
            handle.seek(info.header_offset)
            fields = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
            if fields[0] != b"PK\x03\x04":
                raise ValueError(f"member {info.filename} has no local header at byte {info.header_offset}")
            handle.seek(info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1])  # name, extra field
            version = np.lib.format.read_magic(handle)
            if version not in _NPY_HEADER_READERS:  # format 3.0 (UTF-8 field names) has no public reader: read it
                continue
            shape, fortran_order, dtype = _NPY_HEADER_READERS[version](handle)
            if dtype.hasobject:
                raise ValueError(f"member {info.filename} holds Python objects; cannot load them without pickle")
            if math.prod(shape) == 0:  # nothing to map (mmap refuses length 0)
                mapped[key] = np.empty(shape, dtype=dtype)
                continue
            order = "F" if fortran_order else "C"
            mapped[key] = np.memmap(path, dtype=dtype, mode="c", offset=handle.tell(), shape=shape, order=order)
    return mapped


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


def load_torch(path: str | os.PathLike[str], what: str = "checkpoint", mmap: bool = False) -> Any:
    """Load a ``.ckpt``/``.pt`` file with ``weights_only=True``: tensors and plain containers only.

    ``mmap`` maps the tensors of a zip-format file instead of reading them (cheap for a check of a large file).
    """

    import torch

    path = require_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, KeyError, ValueError) as err:
        # Garbage input surfaces as KeyError/ValueError from the unpickler, so those count as unreadable too.
        raise UserError(f"{what} {path} cannot be loaded safely: {unpickling_reason(err)}") from None


def unpickling_reason(err: BaseException) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused a file.

    For a disallowed object that is the "Unsupported global: GLOBAL module.Class" line; torch's own first line
    suggests re-loading with ``weights_only=False``, which is exactly what must not be done with unknown files,
    so no line of that advice (nor its pointer to the documentation) is ever repeated.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    match = re.search(r"Unsupported global: GLOBAL [\w.]+", text)
    if match:
        return f"it holds an object that is not plain data ({match.group(0)})"
    match = re.search(r"unsupported GLOBAL ([\w.]+) whose module ([\w.]+) is blocked", text)
    if match:
        return f"it holds a call to {match.group(1)} (module {match.group(2)} is blocked): a pickle that runs code"
    if "WeightsUnpickler error" in text:
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        return "it is a pickle that is not a plain-data checkpoint" + (f" ({detail.group(1)})" if detail else "")
    advice = ("weights_only", "Weights only load failed", "documentation of torch.load", "trusted source")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not any(phrase in line for phrase in advice)]
    first = lines[0].split(". ")[0].rstrip(".") if lines else ""
    if not first and isinstance(err, EOFError):
        return "the file is empty or ends too early"
    return f"{type(err).__name__}: {first}" if first else type(err).__name__
