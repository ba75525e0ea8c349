"""The bad-input corpus (issue 13): every bad input to the ``landformer`` command is one clean error.

Each case builds its bad input itself (tiny files under ``tmp_path``), runs the CLI in-process and asserts: exit
code 2, exactly one stderr line starting ``landformer: error:`` (naming what the case says it should), no
traceback, and nothing written at the final output path (a path that existed before is left as it was), with no
temporary or lock file left behind. Cases cover the core (``data``, ``synth``) and the five pipelines.

Bad inputs that are handled rather than refused (a training label off the globe is dropped and reported, a
killed run's temporary files are swept, SIGTERM removes temporary files) are tested after the corpus.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rasterio.transform import from_origin

from landformer.cli import main
from landformer.core.chips import write_chips
from landformer.core.io import OutputLock
from landformer.core.raster import write_geotiff

ROOT = Path(__file__).resolve().parents[1]
ALBERS = "EPSG:5070"
GRID = from_origin(-1_000_000.0, 2_000_000.0, 30.0, 30.0)
NLCD_CODES = np.array([11, 21, 41, 42, 52, 71, 81, 82], dtype=np.uint8)
TOY_LEGEND = {
    "name": "toy",
    "nodata": [0],
    "classes": [
        {"code": 1, "name": "water", "color": "#466b9f"},
        {"code": 2, "name": "forest", "color": "#1c5f2c"},
        {"code": 3, "name": "crops", "color": "#dcd939"},
        {"code": 4, "name": "town", "color": "#eb0000"},
    ],
}
HM_YEARS = (2000, 2005, 2010)
CAP_DAC_OVERRIDE = 1


# ------------------------------------------------------------------------------------------------ inputs


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


class Shared:
    """Inputs that many cases use and that take a moment to build: tiny models, made once per module."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @functools.cached_property
    def landcover_chips(self) -> Path:
        maps = rng(1).integers(0, 4, (24, 1, 8, 8)).astype(np.int16)
        coords = np.column_stack([np.linspace(-100, -99, 24), np.linspace(40, 41, 24)])
        metadata = {"legend": TOY_LEGEND, "channel_names": ["landcover"], "chip_size": 8}
        return write_chips(self.root / "toy_chips.npz", maps[:16], maps[16:], coords[:16], coords[16:], metadata)

    @functools.cached_property
    def landcover_model(self) -> Path:
        from landformer.core.legend import Legend
        from landformer.landcover.export import save
        from landformer.landcover.model import LandCoverConfig, LandCoverRandAR

        torch.manual_seed(0)
        model = LandCoverRandAR(LandCoverConfig(n_classes=4, chip_size=8, n_layers=1, n_heads=2, dim=16)).eval()
        folder = self.root / "landcover_model"
        save(model, Legend.from_dict(TOY_LEGEND), folder, {"chips": str(self.landcover_chips)})
        return folder

    @functools.cached_property
    def forecast_model(self) -> Path:
        """An untrained forecaster for HM (0..1, 5-year steps, K = 3, no covariates), exported like a trained one."""
        from landformer.core.normalize import ZScore
        from landformer.forecast.export import model_config_dict, save
        from landformer.forecast.model import ConvLSTMForecaster, ForecastModelConfig

        torch.manual_seed(0)
        config = ForecastModelConfig(n_covariate_channels=0, hidden_channels=(4,), kernel_size=1)
        meta = {
            "model_config": model_config_dict(config),
            "normalizer": ZScore((0.3,), (0.2,)).to_dict(),
            "covariate_normalizer": None,
            "channel_names": ["hm"],
            "covariate_names": [],
            "years": [1990, 1995, 2000, 2005, 2010],
            "cadence": 5,
            "scale": 1.0,
            "valid_range": [0.0, 1.0],
        }
        weights, _ = save(self.root / "forecast_model", ConvLSTMForecaster(config).state_dict(), meta)
        return weights

    @functools.cached_property
    def terrain_models(self) -> dict[str, Path]:
        """An untrained tokenizer (16 px tiles) and a MaskGIT on it, exported like trained ones."""
        from landformer.terrain.config import MaskGITModelConfig, TokenizerModelConfig
        from landformer.terrain.export import LoadedTokenizer, save
        from landformer.terrain.model import MaskGIT, VQTokenizer

        summary = {"tile_size": 16, "pixel_size_m": 30.0, "median_offset_m": 500.0, "median_scale_m": 40.0}
        sampling = {"steps": 2, "temperature": 1.0, "choice_temperature": 4.5, "bf16": False}
        torch.manual_seed(0)
        tokenizer = save(
            self.root / "tokenizer", VQTokenizer(TokenizerModelConfig(channels=8, codebook_size=32)), summary
        )
        maskgit = MaskGIT(MaskGITModelConfig(vocab_size=32, grid=4, dim=32, n_layers=1, n_heads=2, dropout=0.0))
        weights = save(self.root / "maskgit", maskgit, LoadedTokenizer.load(tokenizer), 2, sampling, summary, None)
        return {"tokenizer": tokenizer, "maskgit": weights}

    @functools.cached_property
    def world(self) -> Path:
        from landformer.synth.world import make_world

        return make_world(self.root / "world", size=32, seed=3).folder


@dataclass
class Workspace:
    """One case's folder, with makers for the inputs it needs."""

    tmp: Path
    shared: Shared
    readonly: bool = False

    def __post_init__(self) -> None:
        self.locks: list[OutputLock] = []

    def path(self, name: str) -> Path:
        return self.tmp / name

    # rasters -----------------------------------------------------------------------------------------------

    def raster(
        self,
        name: str,
        array: np.ndarray,
        nodata: float | None = None,
        crs: str | None = ALBERS,
        transform: Any = GRID,
    ) -> Path:
        if crs is None:
            import rasterio

            data = array[None] if array.ndim == 2 else array
            profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0]}
            path = self.path(name)
            with rasterio.open(path, "w", dtype=data.dtype, transform=transform, compress="deflate", **profile) as dst:
                dst.write(data)
            return path
        return write_geotiff(self.path(name), array, transform, crs, nodata=nodata)

    def nlcd(self, name: str = "nlcd.tif", size: int = 64, extra: dict[tuple[int, int], int] | None = None) -> Path:
        codes = NLCD_CODES[rng().integers(0, len(NLCD_CODES), (size, size))]
        for (row, col), code in (extra or {}).items():
            codes[row, col] = code
        return self.raster(name, codes, nodata=0)

    def dem(self, name: str = "dem.tif", size: int = 64, poke: float | None = None) -> Path:
        values = (200 + 500 * rng(2).random((size, size))).astype(np.float32)
        if poke is not None:
            values[size // 2 : size // 2 + 3, 5:9] = poke
        return self.raster(name, values, nodata=-9999.0)

    def big_dem(self, name: str = "big_dem.tif", poke: float | None = None) -> Path:
        """300 x 300 random floats: tiled (256 px blocks) and barely compressible, so a cut lands in pixel data."""
        return self.dem(name, size=300, poke=poke)

    def truncated(self, source: Path, name: str) -> Path:
        data = source.read_bytes()
        return self._bytes(name, data[: len(data) * 2 // 3])

    def corrupt(self, source: Path, name: str) -> Path:
        """The header intact, a stretch of pixel data scrambled."""
        data = bytearray(source.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 4000] = bytes(b ^ 0x5A for b in data[middle : middle + 4000])
        return self._bytes(name, bytes(data))

    def _bytes(self, name: str, data: bytes) -> Path:
        path = self.path(name)
        path.write_bytes(data)
        return path

    def text(self, name: str, content: str) -> Path:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(content))
        return path

    def garbage(self, name: str) -> Path:
        return self._bytes(name, rng(5).integers(0, 256, 3000, dtype=np.uint8).tobytes())

    def hm_series(self, values: list[np.ndarray] | None = None, prefix: str = "hm", **raster: Any) -> list[Path]:
        """Three HM rasters (0..1) on one 40 x 40 grid, 5 years apart."""
        if values is None:
            base = rng(4).random((40, 40)).astype(np.float32) * 0.5
            values = [base, base + 0.1, base + 0.2]
        return [self.raster(f"{prefix}_{year}.tif", v, **raster) for year, v in zip(HM_YEARS, values, strict=True)]

    def torch_file(self, name: str, obj: Any) -> Path:
        path = self.path(name)
        torch.save(obj, path)
        return path

    # output places -----------------------------------------------------------------------------------------

    def readonly_folder(self, name: str = "locked_down") -> Path:
        """A folder nobody may write into; the case runs without root's override of file permissions."""
        folder = self.path(name)
        folder.mkdir()
        folder.chmod(0o555)
        self.readonly = True
        return folder

    def file_in_the_way(self, name: str = "occupied") -> Path:
        return self._bytes(name, b"not a folder\n")

    def lock(self, out: Path) -> Path:
        """Hold the lock of ``out`` as a second command writing there would (released after the case)."""
        self.locks.append(OutputLock(out).acquire())
        return out

    def release(self) -> None:
        for lock in self.locks:
            lock.release()


# ------------------------------------------------------------------------------------------------ the corpus


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Workspace], tuple[list[Any], Path]]  # -> argv, the final output path
    expect: str = ""  # a piece of the error line
    refuse: str = ""  # a piece the error line must not hold


CASES: list[Case] = []


def case(id: str, expect: str = "", refuse: str = "") -> Callable:
    def register(build: Callable[[Workspace], tuple[list[Any], Path]]) -> Callable:
        CASES.append(Case(id, build, expect, refuse))
        return build

    return register


def add(id: str, build: Callable[[Workspace], tuple[list[Any], Path]], expect: str = "", refuse: str = "") -> None:
    CASES.append(Case(id, build, expect, refuse))


def output_place_cases(
    prefix: str, command: Callable[[Workspace, Path], list[Any]], kind: str, lockable: bool = True
) -> None:
    """The four output-place failures of one command: --out of the wrong kind (a folder where a file goes, or
    the other way round), a parent that is a file, a folder that cannot be written, and a second writer."""
    name = "out.tif" if kind == "file" else "out"

    def wrong_kind(w: Workspace) -> tuple[list[Any], Path]:
        if kind == "file":
            out = w.path("a_folder")
            out.mkdir()
        else:
            out = w.file_in_the_way("a_file")
        return command(w, out), out

    def parent_is_file(w: Workspace) -> tuple[list[Any], Path]:
        out = w.file_in_the_way() / "sub" / name
        return command(w, out), out

    def readonly(w: Workspace) -> tuple[list[Any], Path]:
        out = w.readonly_folder() / name
        return command(w, out), out

    def locked(w: Workspace) -> tuple[list[Any], Path]:
        out = w.lock(w.path(name))
        return command(w, out), out

    add(f"{prefix}-out-{'is-folder' if kind == 'file' else 'is-file'}", wrong_kind, "--out")
    add(f"{prefix}-out-parent-is-file", parent_is_file, "is a file, not a folder")
    add(f"{prefix}-out-readonly", readonly, "permission denied")
    if lockable:
        add(f"{prefix}-out-locked", locked, "being written by another landformer command")


# --- data chips ---------------------------------------------------------------------------------------------


def chips(w: Workspace, raster: Path | str, *extra: Any, out: Path | None = None) -> tuple[list[Any], Path]:
    out = out or w.path("chips.npz")
    sampling = [] if "--stride" in extra or "--count" in extra else ["--count", "20"]
    blocks = [] if "--block-size" in extra else ["--block-size", "16"]
    return ["data", "chips", raster, "--out", out, "--chip-size", "8", *sampling, *blocks, *extra], out


add("chips-raster-missing", lambda w: chips(w, w.path("nope.tif")), "not found")
add("chips-raster-is-text", lambda w: chips(w, w.text("notes.tif", "hello")), "not a raster GDAL can open")
add("chips-raster-url-unreachable", lambda w: chips(w, "http://127.0.0.1:1/nlcd.tif"), "127.0.0.1:1/nlcd.tif")
add("chips-raster-url-in-vsicurl", lambda w: chips(w, "/vsicurl/https://127.0.0.1:1/nlcd.tif"), "cannot be opened")
add("chips-raster-zip-missing", lambda w: chips(w, f"/vsizip/{w.path('nope.zip')}/nlcd.tif"), "nope.zip/nlcd.tif")
add(
    "chips-raster-without-crs",
    lambda w: chips(w, w.raster("nocrs.tif", NLCD_CODES[rng().integers(0, 8, (32, 32))], crs=None)),
    "--assume-crs",
)
add(
    "chips-raster-without-georeferencing",
    lambda w: chips(
        w, w.raster("plain.tif", np.ones((32, 32), np.uint8), crs=None, transform=from_origin(0, 0, 1, -1))
    ),
    "no place on the ground",
)
add(
    "chips-bad-assume-crs",
    lambda w: chips(
        w, w.raster("nocrs.tif", NLCD_CODES[rng().integers(0, 8, (32, 32))], crs=None), "--assume-crs", "EPSG:1"
    ),
    "EPSG:1",
)
add("chips-class-raster-truncated", lambda w: chips(w, w.truncated(w.nlcd(size=300), "cut.tif")), "cut.tif")
add("chips-class-raster-corrupt", lambda w: chips(w, w.corrupt(w.nlcd(size=300), "bad.tif")), "bad.tif")
add(
    "chips-covariate-truncated",
    lambda w: chips(w, w.nlcd(size=300), "--covariate", w.truncated(w.big_dem(), "cut_dem.tif"), "--stride", "8"),
    "cut_dem.tif",
)
add(
    "chips-covariate-corrupt",
    lambda w: chips(w, w.nlcd(size=300), "--covariate", w.corrupt(w.big_dem(), "bad_dem.tif")),
    "bad_dem.tif",
)
add(
    "chips-covariate-plus-inf",
    lambda w: chips(w, w.nlcd(), "--covariate", w.dem(poke=np.inf), "--stride", "8"),
    "infinite value",
)
add(
    "chips-covariate-minus-inf",
    lambda w: chips(w, w.nlcd(), "--covariate", w.dem(poke=-np.inf), "--stride", "8"),
    "infinite value",
)
add(
    "chips-float-class-raster-with-inf",
    lambda w: chips(w, w.raster("classes.tif", np.where(np.eye(32) > 0, np.inf, 41.0).astype(np.float32))),
    "infinite value",
)
add(
    "chips-code-not-in-legend-outside-sampled-windows",
    lambda w: chips(w, w.nlcd(size=256, extra={(255, 255): 99}), "--count", "1"),
    "99",
)
add("chips-code-not-in-legend", lambda w: chips(w, w.nlcd(extra={(3, 3): 7}), "--stride", "8"), "7")
add(
    "chips-fractional-class-codes",
    lambda w: chips(w, w.raster("frac.tif", np.full((32, 32), 41.5, np.float32))),
    "fractional",
)
add("chips-unknown-legend-name", lambda w: chips(w, w.nlcd(), "--legend", "nlcd2049"), "nlcd2049")
add("chips-legend-json-missing", lambda w: chips(w, w.nlcd(), "--legend", w.path("legend.json")), "legend.json")
add(
    "chips-legend-json-invalid",
    lambda w: chips(w, w.nlcd(), "--legend", w.text("legend.json", "{not json")),
    "legend.json",
)
add(
    "chips-legend-json-without-classes",
    lambda w: chips(w, w.nlcd(), "--legend", w.text("legend.json", '{"name": "x"}')),
    "classes",
)
add(
    "chips-chip-larger-than-raster",
    lambda w: chips(w, w.nlcd(size=16), "--chip-size", "32", "--block-size", "64"),
    "larger than",
)
add("chips-chip-size-zero", lambda w: chips(w, w.nlcd(), "--chip-size", "0"), "chip size")
add("chips-seed-negative", lambda w: chips(w, w.nlcd(), "--seed", "-1"), "seed")
add("chips-count-zero", lambda w: chips(w, w.nlcd(), "--count", "0"), "count")
add("chips-stride-zero", lambda w: ["data", "chips", w.nlcd(), "--out", w.path("c.npz"), "--stride", "0"], "stride")
add("chips-max-nodata-above-one", lambda w: chips(w, w.nlcd(), "--max-nodata", "2"), "max nodata")
add("chips-test-fraction-negative", lambda w: chips(w, w.nlcd(), "--test-fraction", "-0.1"), "test fraction")
add("chips-block-smaller-than-chip", lambda w: chips(w, w.nlcd(), "--block-size", "4"), "block size")
add("chips-class-fraction-syntax", lambda w: chips(w, w.nlcd(), "--max-class-fraction", "water"), "CODE=FRACTION")
add("chips-class-fraction-unknown-code", lambda w: chips(w, w.nlcd(), "--max-class-fraction", "5=0.5"), "[5]")
add("chips-class-fraction-above-one", lambda w: chips(w, w.nlcd(), "--max-class-fraction", "11=1.5"), "1.5")
add("chips-out-not-npz", lambda w: chips(w, w.nlcd(), out=w.path("chips.zip")), ".npz")
add("chips-covariate-missing", lambda w: chips(w, w.nlcd(), "--covariate", w.path("dem.tif")), "dem.tif")
add(
    "chips-covariate-without-overlap",
    lambda w: chips(
        w,
        w.nlcd(),
        "--covariate",
        w.raster("far.tif", np.ones((8, 8), np.float32), transform=from_origin(2_000_000.0, 0.0, 30.0, 30.0)),
    ),
    "does not overlap",
)
add(
    "chips-all-nodata",
    lambda w: chips(w, w.raster("empty.tif", np.zeros((32, 32), np.uint8), nodata=0), "--stride", "8"),
    "passes",
)
add(
    "chips-config-unknown-key",
    lambda w: ["data", "chips", "--config", w.text("c.yaml", f"class_raster: {w.nlcd()}\nchip_sise: 8\n"), "--out",
               w.path("c.npz")],
    "chip_sise",
)  # fmt: skip
add(
    "chips-config-not-a-mapping",
    lambda w: ["data", "chips", w.nlcd(), "--config", w.text("c.yaml", "- 1\n- 2\n"), "--out", w.path("c.npz")],
    "c.yaml",
)
add(
    "chips-config-missing",
    lambda w: ["data", "chips", "--config", w.path("c.yaml"), "--out", w.path("c.npz")],
    "c.yaml",
)
add(
    "chips-config-without-class-raster",
    lambda w: ["data", "chips", "--config", w.text("c.yaml", "chip_size: 8\n"), "--out", w.path("c.npz")],
    "class raster",
)
output_place_cases("chips", lambda w, out: chips(w, w.nlcd(), out=out)[0], "file")
add(
    "chips-out-locked-npz",
    lambda w: chips(w, w.nlcd(), out=w.lock(w.path("locked.npz"))),
    "being written by another landformer command",
)


# --- data info ----------------------------------------------------------------------------------------------


def chip_file(w: Workspace, name: str, **arrays: Any) -> Path:
    path = w.path(name)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def four_arrays(train: np.ndarray) -> dict[str, np.ndarray]:
    coords = np.zeros((len(train), 2))
    return {"train_data": train, "test_data": train[:0], "train_coords": coords, "test_coords": coords[:0]}


def info(path: Path, *extra: Any) -> tuple[list[Any], Path]:
    return ["data", "info", path, *extra], path.parent / "no_output_here"


add("info-missing", lambda w: info(w.path("nope.tif")), "not found")
add("info-not-a-raster", lambda w: info(w.text("notes.tif", "text")), "not a raster")
add("info-truncated-geotiff", lambda w: info(w.truncated(w.big_dem(), "cut.tif")), "truncated")
add("info-truncated-class-raster", lambda w: info(w.truncated(w.nlcd(size=300), "cut.tif")), "cut.tif")
add("info-corrupt-geotiff-verify", lambda w: info(w.corrupt(w.big_dem(), "bad.tif"), "--verify"), "bad.tif")
add("info-inf-geotiff-verify", lambda w: info(w.dem(poke=np.inf), "--verify"), "infinite")
add(
    "info-without-crs",
    lambda w: info(w.raster("nocrs.tif", np.ones((8, 8), np.uint8), crs=None)),
    "--assume-crs",
)
add("info-chip-file-garbage", lambda w: info(w.garbage("chips.npz")), "corrupt")
add("info-chip-file-missing-keys", lambda w: info(chip_file(w, "c.npz", train_data=np.zeros((2, 1, 4, 4)))), "lacks")
add(
    "info-chip-file-pickled-objects",
    lambda w: info(chip_file(w, "c.npz", **four_arrays(np.array([None, {}], dtype=object)))),
    "pickled",
)
add(
    "info-chip-file-not-square",
    lambda w: info(chip_file(w, "c.npz", **four_arrays(np.zeros((2, 1, 4, 5), np.int16)))),
    "H == W",
)
add(
    "info-chip-file-with-inf",
    lambda w: info(chip_file(w, "c.npz", **four_arrays(np.full((2, 2, 4, 4), np.inf, np.float32)))),
    "infinite",
)
add(
    "info-chip-file-bad-coords",
    lambda w: info(
        chip_file(w, "c.npz", **(four_arrays(np.zeros((2, 1, 4, 4), np.int16)) | {"train_coords": np.zeros((3, 2))}))
    ),
    "train_coords",
)


# --- data align ---------------------------------------------------------------------------------------------


def align(w: Workspace, source: Path, *extra: Any, out: Path | None = None) -> tuple[list[Any], Path]:
    out = out or w.path("aligned.tif")
    return ["data", "align", source, "--like", w.nlcd(), "--out", out, *extra], out


add("align-source-missing", lambda w: align(w, w.path("nope.tif")), "not found")
add("align-like-missing", lambda w: (["data", "align", w.dem(), "--like", w.path("x.tif"), "--out", w.path("o.tif")],
                                     w.path("o.tif")), "x.tif")  # fmt: skip
add("align-source-truncated", lambda w: align(w, w.truncated(w.big_dem(), "cut.tif")), "cut.tif")
add("align-source-corrupt", lambda w: align(w, w.corrupt(w.big_dem(), "bad.tif")), "bad.tif")
add("align-source-plus-inf", lambda w: align(w, w.dem(poke=np.inf)), "infinite")
add("align-source-minus-inf", lambda w: align(w, w.dem(poke=-np.inf)), "infinite")
add(
    "align-source-without-overlap",
    lambda w: align(w, w.raster("far.tif", np.ones((8, 8), np.float32), transform=from_origin(3e6, 0, 30, 30))),
    "does not overlap",
)
add(
    "align-source-without-crs",
    lambda w: align(w, w.raster("nocrs.tif", np.ones((8, 8), np.float32), crs=None)),
    "--assume-crs",
)
add(
    "align-bad-assume-crs",
    lambda w: align(w, w.raster("nocrs.tif", np.ones((8, 8), np.float32), crs=None), "--assume-crs", "not-a-crs"),
    "not-a-crs",
)
output_place_cases("align", lambda w, out: align(w, w.dem(), out=out)[0], "file")


# --- synth --------------------------------------------------------------------------------------------------


def world(w: Workspace, *extra: Any, out: Path | None = None) -> tuple[list[Any], Path]:
    out = out or w.path("world")
    return ["synth", "world", "--out", out, "--size", "32", *extra], out


add("world-size-beyond-memory", lambda w: world(w, "--size", "100000000"), "EiB")
add("world-size-beyond-this-machine", lambda w: world(w, "--size", "40000"), "GiB")
add("world-size-too-small", lambda w: world(w, "--size", "8"), "at least")
add("world-size-negative", lambda w: world(w, "--size", "-5"), "-5")
add("world-pixel-size-zero", lambda w: world(w, "--pixel-size", "0"), "pixel size")
add("world-pixel-size-negative", lambda w: world(w, "--pixel-size", "-30"), "pixel size")
add("world-pixel-size-nan", lambda w: world(w, "--pixel-size", "nan"), "pixel size")
add("world-pixel-size-inf", lambda w: world(w, "--pixel-size", "inf"), "pixel size")
output_place_cases("world", lambda w, out: world(w, out=out)[0], "folder")


def packaged(w: Workspace, layer: str, *extra: Any, out: Path | None = None) -> tuple[list[Any], Path]:
    out = out or w.path(f"{layer}.tif")
    return ["synth", "packaged", layer, "--out", out, *extra], out


add("packaged-koppen-without-bbox", lambda w: packaged(w, "koppen"), "--bbox")
add("packaged-igbp-without-bbox", lambda w: packaged(w, "igbp"), "--bbox")
add("packaged-landmask-without-bbox", lambda w: packaged(w, "landmask"), "--bbox")
add("packaged-bbox-west-east-swapped", lambda w: packaged(w, "koppen", "--bbox", "10", "40", "0", "50"), "bbox")
add("packaged-bbox-south-north-swapped", lambda w: packaged(w, "koppen", "--bbox", "0", "50", "10", "40"), "bbox")
add("packaged-bbox-too-large", lambda w: packaged(w, "koppen", "--bbox", "-120", "0", "0", "60"), "--allow-large")
add("packaged-bbox-nan", lambda w: packaged(w, "igbp", "--bbox", "nan", "0", "10", "10"), "non-finite")
add("packaged-bbox-off-the-globe", lambda w: packaged(w, "koppen", "--bbox", "0", "80", "10", "95"), "bbox")
add("packaged-resolution-zero", lambda w: packaged(w, "countries", "--resolution", "0"), "resolution")
add("packaged-resolution-too-fine", lambda w: packaged(w, "countries", "--resolution", "1e-6"), "too many")
output_place_cases("packaged", lambda w, out: packaged(w, "jacksboro", out=out)[0], "file")


# --- landcover ----------------------------------------------------------------------------------------------


def lc_train(w: Workspace, *extra: Any, out: Path | None = None) -> tuple[list[Any], Path]:
    out = out or w.path("run")
    return ["landcover", "train", "--out", out, *extra], out


def lc(w: Workspace, command: str, *extra: Any, model: Path | None = None) -> tuple[list[Any], Path]:
    out = w.path(command)
    return ["landcover", command, "--model", model or w.shared.landcover_model, "--out", out, *extra], out


def ckpt_with_code(w: Workspace) -> Path:
    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("echo this should never run",))

    return w.torch_file("evil.ckpt", {"state_dict": {}, "global_step": 1, "payload": Payload()})


def run_folder_with(w: Workspace, checkpoint: Path) -> Path:
    run = w.path("run")
    (run / "checkpoints").mkdir(parents=True)
    os.replace(checkpoint, run / "checkpoints" / "last.ckpt")
    return run


add("lc-train-chips-missing", lambda w: lc_train(w, "--chips", w.path("c.npz")), "c.npz")
add("lc-train-chips-garbage", lambda w: lc_train(w, "--chips", w.garbage("c.npz")), "c.npz")
add(
    "lc-train-chips-missing-keys",
    lambda w: lc_train(w, "--chips", chip_file(w, "c.npz", train_data=np.zeros((2, 1, 4, 4)))),
    "lacks",
)
add(
    "lc-train-chips-with-inf",
    lambda w: lc_train(w, "--chips", chip_file(w, "c.npz", **four_arrays(np.full((4, 2, 8, 8), np.inf, np.float32)))),
    "infinite",
)
add("lc-train-unknown-key", lambda w: lc_train(w, "--set", "model.wings=2"), "wings")
add("lc-train-value-of-wrong-type", lambda w: lc_train(w, "--set", "train.max_steps=many"), "max_steps")
add("lc-train-config-missing", lambda w: lc_train(w, "--config", w.path("r.yaml")), "r.yaml")
add("lc-train-config-not-yaml", lambda w: lc_train(w, "--config", w.text("r.yaml", "data: [unclosed\n")), "r.yaml")
add("lc-train-world-missing", lambda w: lc_train(w, "--world", w.path("w")), "world")
add(
    "lc-train-resume-without-checkpoint",
    lambda w: lc_train(w, "--chips", w.shared.landcover_chips, "--resume", out=w.path("fresh")),
    "cannot resume",
)
add(
    "lc-train-resume-checkpoint-that-runs-code",
    lambda w: lc_train(w, "--chips", w.shared.landcover_chips, "--resume", ckpt_with_code(w)),
    "posix.system",
    refuse="weights_only",
)
add(
    "lc-train-resume-truncated-checkpoint",
    lambda w: lc_train(
        w, "--chips", w.shared.landcover_chips, "--resume", w.truncated(w.torch_file("a.ckpt", {"w": torch.ones(99)}),
                                                                        "cut.ckpt")
    ),
    "cut.ckpt",
)  # fmt: skip
add(
    "lc-train-resume-not-a-training-checkpoint",
    lambda w: lc_train(
        w, "--chips", w.shared.landcover_chips, "--resume", w.torch_file("w.ckpt", {"w": torch.ones(2)})
    ),
    "not a training checkpoint",
)
add(
    "lc-train-run-folder-with-unsafe-last-checkpoint",
    lambda w: lc_train(w, "--chips", w.shared.landcover_chips, "--resume", out=run_folder_with(w, ckpt_with_code(w))),
    "cannot be loaded safely",
    refuse="weights_only",
)
output_place_cases("lc-train", lambda w, out: lc_train(w, out=out)[0], "folder")
add("lc-sample-model-missing", lambda w: lc(w, "sample", model=w.path("m")), "does not exist")
add("lc-sample-model-garbage", lambda w: lc(w, "sample", model=w.garbage("model.safetensors")), "model.safetensors")
add("lc-sample-n-zero", lambda w: lc(w, "sample", "--n", "0"), "number of samples")
add("lc-sample-temperature-zero", lambda w: lc(w, "sample", "--temperature", "0"), "temperature")
add("lc-sample-top-p-above-one", lambda w: lc(w, "sample", "--top-p", "2"), "top")
add("lc-sample-threads-negative", lambda w: lc(w, "sample", "--threads", "-1"), "--threads")
add("lc-sample-reference-missing", lambda w: lc(w, "sample", "--reference", w.path("r.tif")), "r.tif")
add(
    "lc-sample-reference-truncated",
    lambda w: lc(w, "sample", "--reference", w.truncated(w.big_dem(), "c.tif")),
    "c.tif",
)
output_place_cases("lc-sample", lambda w, out: ["landcover", "sample", "--model", w.shared.landcover_model,
                                                "--out", out], "folder")  # fmt: skip
add("lc-animate-rows-zero", lambda w: lc(w, "animate", "--nrows", "0"), "nrows")
add("lc-animate-fps-nan", lambda w: lc(w, "animate", "--fps", "nan"), "fps")
add("lc-animate-fps-zero", lambda w: lc(w, "animate", "--fps", "0"), "fps")
add("lc-sample-temperature-inf", lambda w: lc(w, "sample", "--temperature", "inf"), "temperature")
add("lc-sample-batch-size-zero", lambda w: lc(w, "sample", "--batch-size", "0"), "--batch-size")
add("lc-sample-device-unknown", lambda w: lc(w, "sample", "--device", "banana"), "banana")
add("lc-inpaint-eval-batch-size-zero", lambda w: lc(w, "inpaint-eval", "--batch-size", "0"), "--batch-size")
add("lc-perplexity-batch-size-zero", lambda w: lc(w, "perplexity", "--batch-size", "0"), "--batch-size")
add("lc-panorama-height-zero", lambda w: lc(w, "panorama", "--height", "0"), "panorama")
add(
    "lc-train-model-dim-zero", lambda w: lc_train(w, "--chips", w.shared.landcover_chips, "--set", "model.dim=0"), "dim"
)
add("lc-inpaint-ratio-above-one", lambda w: lc(w, "inpaint", "--ratio", "1.5"), "ratio")
add("lc-inpaint-chips-missing", lambda w: lc(w, "inpaint", "--chips", w.path("c.npz")), "c.npz")
add("lc-inpaint-eval-ratio-zero", lambda w: lc(w, "inpaint-eval", "--ratios", "0"), "ratio")
add("lc-perplexity-orders-zero", lambda w: lc(w, "perplexity", "--orders", "0"), "orders")
add("lc-info-chips-with-inf", lambda w: lc(w, "info", "--chips", chip_file(w, "c.npz", **four_arrays(
    np.full((4, 2, 8, 8), np.inf, np.float32)))), "infinite")  # fmt: skip
add("lc-gibbs-chains-zero", lambda w: lc(w, "gibbs", "--chains", "0"), "chains")
add("lc-panorama-width-zero", lambda w: lc(w, "panorama", "--width", "0"), "panorama")
add("lc-evaluate-n-zero", lambda w: lc(w, "evaluate", "--n", "0"), "--n")
add(
    "lc-dev-prob-raster-truncated",
    lambda w: lc(w, "dev-prob", "--raster", w.truncated(w.nlcd(size=300), "cut.tif"), "--window", "0", "0", "8", "8"),
    "cut.tif",
)


# --- terrain (through core: its reads, writes and --out checks) ---------------------------------------------


def terrain(w: Workspace, command: str, *extra: Any, out: Path | None = None) -> tuple[list[Any], Path]:
    out = out or w.path(f"{command}.tif")
    return ["terrain", command, "--model", w.shared.terrain_models["maskgit"], "--out", out, *extra], out


def expand(w: Workspace, dem: Path, out: Path | None = None) -> tuple[list[Any], Path]:
    return terrain(w, "expand", "--dem", dem, "--right", "8", "--block", "16", out=out)


add("terrain-expand-dem-missing", lambda w: expand(w, w.path("dem.tif")), "dem.tif")
add("terrain-expand-dem-truncated", lambda w: expand(w, w.truncated(w.big_dem(), "cut.tif")), "cut.tif")
add("terrain-expand-dem-corrupt", lambda w: expand(w, w.corrupt(w.big_dem(), "bad.tif")), "bad.tif")
add("terrain-expand-dem-plus-inf", lambda w: expand(w, w.dem(poke=np.inf)), "infinite")
add("terrain-expand-dem-minus-inf", lambda w: expand(w, w.dem(poke=-np.inf)), "infinite")
add("terrain-expand-dem-is-text", lambda w: expand(w, w.text("dem.tif", "elevation")), "not a raster")
output_place_cases("terrain-expand", lambda w, out: expand(w, w.dem(), out=out)[0], "file")
output_place_cases("terrain-world", lambda w, out: terrain(w, "world", "--size", "32", out=out)[0], "file")
add("terrain-world-pixel-size-zero", lambda w: terrain(w, "world", "--size", "32", "--pixel-size", "0"), "pixel size")
add("terrain-world-pixel-size-nan", lambda w: terrain(w, "world", "--size", "32", "--pixel-size", "nan"), "pixel size")
add(
    "terrain-sample-pixel-size-zero",
    lambda w: (["terrain", "sample", "--model", w.shared.terrain_models["maskgit"], "--count", "1", "--pixel-size",
                "0", "--out", w.path("s")], w.path("s")),
    "pixel size",
)  # fmt: skip
add("terrain-world-crs-unknown", lambda w: terrain(w, "world", "--size", "32", "--crs", "EPSG:1"), "EPSG:1")
add("terrain-world-condition-missing", lambda w: terrain(w, "world", "--condition", w.path("c.tif")), "condition")
add("terrain-sample-model-missing", lambda w: (["terrain", "sample", "--model", w.path("m"), "--out", w.path("s")],
                                               w.path("s")), "not found")  # fmt: skip
add(
    "terrain-sample-model-garbage",
    lambda w: (["terrain", "sample", "--model", w.garbage("maskgit.safetensors"), "--out", w.path("s")], w.path("s")),
    "maskgit.safetensors",
)
output_place_cases(
    "terrain-sample",
    lambda w, out: ["terrain", "sample", "--model", w.shared.terrain_models["maskgit"], "--count", "1", "--out", out],
    "folder",
)
add(
    "terrain-reconstruct-dem-truncated",
    lambda w: (["terrain", "reconstruct", "--tokenizer", w.shared.terrain_models["tokenizer"], "--dem",
                w.truncated(w.big_dem(), "cut.tif"), "--out", w.path("r")], w.path("r")),
    "cut.tif",
)  # fmt: skip
add(
    "terrain-reconstruct-dem-inf",
    lambda w: (["terrain", "reconstruct", "--tokenizer", w.shared.terrain_models["tokenizer"], "--dem",
                w.dem(poke=np.inf), "--out", w.path("r")], w.path("r")),
    "infinite",
)  # fmt: skip
add(
    "terrain-reconstruct-tokenizer-missing",
    lambda w: (["terrain", "reconstruct", "--tokenizer", w.path("tok"), "--out", w.path("r")], w.path("r")),
    "tok",
)
output_place_cases(
    "terrain-fit-tokenizer", lambda w, out: ["terrain", "train", "--stage", "tokenizer", "--out", out], "folder"
)
add("terrain-world-threads-negative", lambda w: terrain(w, "world", "--size", "32", "--threads", "-1"), "--threads -1")
add("terrain-sample-scale-negative", lambda w: terrain(w, "sample", "--count", "1", "--scale", "-5"), "--scale -5")
add("terrain-sample-offset-nan", lambda w: terrain(w, "sample", "--count", "1", "--offset", "nan"), "--offset nan")
add(
    "terrain-reconstruct-count-zero",
    lambda w: (
        [
            "terrain",
            "reconstruct",
            "--tokenizer",
            w.shared.terrain_models["tokenizer"],
            "--count",
            "0",
            "--out",
            w.path("r"),
        ],
        w.path("r"),
    ),
    "count must be at least 1",
)
add(
    "terrain-fit-dem-missing",
    lambda w: (
        ["terrain", "train", "--stage", "tokenizer", "--dem", w.path("no.tif"), "--no-packaged", "--out", w.path("t")],
        w.path("t"),
    ),
    "no.tif",
)
add("terrain-evaluate-amount-thin", lambda w: terrain(w, "evaluate", "--dem", w.dem(), "--amount", "4"), "too thin")
add("terrain-evaluate-dem-missing", lambda w: terrain(w, "evaluate", "--dem", w.path("gone.tif")), "gone.tif")


# --- embeddings ---------------------------------------------------------------------------------------------


def tiles(
    w: Workspace, tile: np.ndarray | None = None, suffix: str = ".npy", rows: str | None = None, side: int = 8
) -> list[Any]:
    """Four unit-length 64-channel embedding tiles (the first one ``tile`` when given) and their labels."""
    folder = w.path("tiles")
    folder.mkdir(exist_ok=True)
    for index in range(4):
        values = rng(index).normal(size=(64, side, side)).astype(np.float32)
        values /= np.linalg.norm(values, axis=0)
        values = tile if tile is not None and index == 0 else values
        if suffix == ".npy":
            np.save(folder / f"t{index}.npy", values)
        else:
            w.raster(f"tiles/t{index}.tif", values, crs=None, transform=from_origin(0, 8, 1, 1))
    labels = w.text("labels.csv", rows or "id,target,group\n" + "".join(f"t{i},{i}.5,g{i}\n" for i in range(4)))
    return ["--tiles", folder, "--labels", labels]


def emb(w: Workspace, command: str, *extra: Any, out: Path | None = None) -> tuple[list[Any], Path]:
    """``embeddings COMMAND``, where a training stage's COMMAND becomes ``train --stage STAGE``."""
    out = out or w.path(command)
    verb = ["train", "--stage", command] if command in ("pretrain", "sft", "dpo") else [command]
    return ["embeddings", *verb, "--out", out, *extra], out


add("emb-sft-tiles-without-labels", lambda w: emb(w, "sft", "--tiles", w.path("tiles")), "--labels")
add("emb-sft-dataset-missing", lambda w: emb(w, "sft", "--dataset", w.path("ds")), "ds")
add(
    "emb-sft-dataset-json-corrupt",
    lambda w: emb(w, "sft", "--dataset", w.text("ds/dataset.json", "{").parent),
    "dataset.json",
)
add("emb-sft-tile-with-inf", lambda w: emb(w, "sft", *tiles(w, np.full((64, 8, 8), np.inf, np.float32))), "t0.npy")


@case("emb-sft-tile-geotiff-corrupt", "t0.tif")
def _(w: Workspace) -> tuple[list[Any], Path]:
    data = tiles(w, suffix=".tif", side=40)
    w.corrupt(w.path("tiles/t0.tif"), "tiles/t0.tif")
    return emb(w, "sft", *data)


add("emb-sft-tile-with-three-channels", lambda w: emb(w, "sft", *tiles(w, np.zeros((3, 8, 8), np.float32))), "channels")
add("emb-sft-labels-without-target", lambda w: emb(w, "sft", *tiles(w, rows="id,value,group\nt0,1,a\n")), "target")
add(
    "emb-sft-labels-target-not-a-number",
    lambda w: emb(w, "sft", *tiles(w, rows="id,target,group\nt0,many,a\n")),
    "many",
)
add("emb-sft-init-missing", lambda w: emb(w, "sft", *tiles(w), "--init", w.path("pre")), "pre")
add("emb-sft-unknown-key", lambda w: emb(w, "sft", "--set", "encoder.wings=3"), "wings")
add("emb-pretrain-config-missing", lambda w: emb(w, "pretrain", "--config", w.path("e.yaml")), "e.yaml")
add("emb-dpo-sft-missing", lambda w: emb(w, "dpo", "--sft", w.path("sft"), *tiles(w)), "sft")
add("emb-evaluate-run-missing", lambda w: emb(w, "evaluate", "--runs", w.path("sft"), *tiles(w)), "sft")
add("emb-pca-max-pixels-zero", lambda w: emb(w, "pca", "--max-pixels", "0", *tiles(w)), "--max-pixels")
add("emb-pca-fit-missing", lambda w: emb(w, "pca", "--fit", w.path("pca.json"), *tiles(w)), "pca.json")
add(
    "emb-make-dataset-world-missing", lambda w: emb(w, "make-dataset", "--source", "world", "--world", w.path("w")), "w"
)
add("emb-make-dataset-world-with-cities", lambda w: emb(w, "make-dataset", "--world", w.path("w")), "--source world")
add("emb-make-dataset-no-cities", lambda w: emb(w, "make-dataset", "--n-cities", "0"), "cities")
add("emb-make-dataset-pixel-not-multiple", lambda w: emb(w, "make-dataset", "--pixel-arcsec", "45"), "45")
add(
    "emb-pretrain-resume-checkpoint-that-runs-code",
    lambda w: emb(w, "pretrain", *tiles(w), "--resume", ckpt_with_code(w)),
    "posix.system",
    refuse="weights_only",
)
output_place_cases("emb-pretrain", lambda w, out: emb(w, "pretrain", *tiles(w), out=out)[0], "folder")
output_place_cases("emb-make-dataset", lambda w, out: emb(w, "make-dataset", out=out)[0], "folder", lockable=False)


# --- geoloc -------------------------------------------------------------------------------------------------


def geo_images(w: Workspace, n: int = 4, bands: int = 3, poke: float | None = None, size: int = 8) -> Path:
    """``n`` GeoTIFF chips in images/ beside a labels CSV listing them; returns the CSV."""
    (w.path("images")).mkdir(exist_ok=True)
    rows = ["filename,latitude,longitude,Region_ID"]
    for index in range(n):
        values = rng(index).random((bands, size, size)).astype(np.float32)
        if poke is not None and index == 0:
            values[0, 2, 2] = poke
        w.raster(f"images/c{index}.tif", values, crs="EPSG:4326", transform=from_origin(index, 40, 0.1, 0.1))
        rows.append(f"c{index}.tif,{40 + index * 0.1},{index * 0.1},EU")
    return w.text("train.csv", "\n".join(rows) + "\n")


def geo_train(w: Workspace, csv: Path | None, *extra: Any, out: Path | None = None) -> tuple[list[Any], Path]:
    out = out or w.path("run")
    given = ["--train-csv", csv] if csv is not None else []
    settings = ["--no-progress", "--max-steps", "1", "--min-region-samples", "2"]
    return ["geoloc", "train", *given, "--out", out, *settings, *extra], out


HEADER = "filename,latitude,longitude,Region_ID\n"
add("geo-train-without-csv", lambda w: geo_train(w, None), "--train-csv")
add("geo-train-csv-missing", lambda w: geo_train(w, w.path("t.csv")), "t.csv")
add("geo-train-csv-missing-column", lambda w: geo_train(w, w.text("t.csv", "filename,lat,lon\na.tif,1,2\n")), "missing")
add("geo-train-csv-not-a-number", lambda w: geo_train(w, w.text("t.csv", HEADER + "a.tif,north,2,EU\n")), "north")
add("geo-train-csv-inf", lambda w: geo_train(w, w.text("t.csv", HEADER + "a.tif,inf,2,EU\n")), "finite")
add("geo-train-csv-header-only", lambda w: geo_train(w, w.text("t.csv", HEADER)), "no rows")
add(
    "geo-train-csv-duplicate",
    lambda w: geo_train(w, w.text("t.csv", HEADER + "a.tif,1,2,EU\na.tif,1,2,EU\n")),
    "already listed",
)
add(
    "geo-train-csv-not-utf8", lambda w: geo_train(w, w._bytes("t.csv", HEADER.encode() + b"\xff\xfe,1,2,EU\n")), "t.csv"
)
add(
    "geo-train-image-folder-missing",
    lambda w: geo_train(w, w.text("t.csv", HEADER + "".join(f"a{i}.tif,1,2.{i},EU\n" for i in range(4)))),
    "images",
)
add("geo-train-image-with-inf", lambda w: geo_train(w, geo_images(w, poke=np.inf)), "infinite")


@case("geo-train-image-bands-differ", "bands")
def _(w: Workspace) -> tuple[list[Any], Path]:
    csv = geo_images(w)
    w.raster("images/c1.tif", np.ones((2, 8, 8), np.float32), crs="EPSG:4326", transform=from_origin(1, 40, 0.1, 0.1))
    return geo_train(w, csv)


@case("geo-train-image-missing", "c1.tif")
def _(w: Workspace) -> tuple[list[Any], Path]:
    csv = geo_images(w)
    w.path("images/c1.tif").unlink()
    return geo_train(w, csv)


@case("geo-train-image-corrupt", "c0.tif")
def _(w: Workspace) -> tuple[list[Any], Path]:
    csv = geo_images(w, size=96)
    w.corrupt(w.path("images/c0.tif"), "images/c0.tif")
    return geo_train(w, csv)


add(
    "geo-train-val-label-off-the-globe",
    lambda w: geo_train(w, geo_images(w), "--val-csv", w.text("v.csv", HEADER + "c0.tif,95,2,EU\n")),
    "latitude 95",
)
add("geo-train-resume-from-a-file", lambda w: geo_train(w, geo_images(w), "--resume", w.path("x.ckpt")), "--resume")
add("geo-train-unknown-key", lambda w: geo_train(w, geo_images(w), "--set", "model.wings=1"), "wings")
add(
    "geo-train-tiny-config-images-beside-the-csv",
    lambda w: geo_train(
        w, w.text("mine/train.csv", HEADER + "".join(f"gone{i}.tif,1,2.{i},EU\n" for i in range(4))), "--config",
        ROOT / "configs" / "geoloc_tiny.yaml", "--val-csv", w.text("mine/val.csv", HEADER + "gone.tif,1,2,EU\n"),
    ),
    "mine/images",
)  # fmt: skip
add(
    "geo-train-pretrained-weights-that-run-code",
    lambda w: geo_train(w, geo_images(w), "--backbone", "test_resnet", "--pretrained", ckpt_with_code(w)),
    "posix.system",
    refuse="weights_only",
)
output_place_cases("geo-train", lambda w, out: geo_train(w, geo_images(w), out=out)[0], "folder")
add("geo-evaluate-run-missing", lambda w: (["geoloc", "evaluate", "--run", w.path("run"), "--csv", geo_images(w),
                                            "--out", w.path("ev")], w.path("ev")), "run")  # fmt: skip
add("geo-predict-run-missing", lambda w: (["geoloc", "predict", "--run", w.path("run"), "--images", w.path("."),
                                           "--out", w.path("p.csv")], w.path("p.csv")), "run")  # fmt: skip
output_place_cases(
    "geo-predict",
    lambda w, out: ["geoloc", "predict", "--run", w.path("run"), "--images", w.path("."), "--out", out],
    "file",
)
add("geo-clean-csv-missing", lambda w: (["geoloc", "clean", "--csv", w.path("t.csv")], w.path("x")), "t.csv")
add(
    "geo-clean-mad-negative",
    lambda w: (["geoloc", "clean", "--csv", geo_images(w), "--mad-threshold", "-1"], w.path("x")),
    "mad_threshold",
)
add(
    "geo-clean-report-in-a-missing-place",
    lambda w: (["geoloc", "clean", "--csv", geo_images(w), "--report", w.file_in_the_way() / "r.json"],
               w.path("occupied") / "r.json"),
    "is a file, not a folder",
)  # fmt: skip


# --- forecast -----------------------------------------------------------------------------------------------


def predict(w: Workspace, *series: Any, out: Path | None = None, extra: tuple[Any, ...] = ()) -> tuple[list[Any], Path]:
    out = out or w.path("forecast")
    paths = list(series) or w.hm_series()
    return ["forecast", "predict", "--model", w.shared.forecast_model, "--series", *paths, "--out", out,
            "--no-compile", "--precision", "fp32", *extra], out  # fmt: skip


def hm_with(w: Workspace, last: np.ndarray, **raster: Any) -> list[Path]:
    series = w.hm_series()
    series[-1] = w.raster(series[-1].name, last, **raster)
    return series


BASE = rng(4).random((40, 40)).astype(np.float32) * 0.5
add("fc-predict-series-size-differs", lambda w: predict(w, *hm_with(w, BASE[:30, :36])), "another grid")
add(
    "fc-predict-series-crs-differs",
    lambda w: predict(w, *hm_with(w, BASE, crs="EPSG:5069")),
    "another grid",
)
add(
    "fc-predict-series-transform-differs",
    lambda w: predict(w, *hm_with(w, BASE, transform=from_origin(-999_700.0, 2_000_000.0, 30.0, 30.0))),
    "another grid",
)
add(
    "fc-predict-hm-outside-0-1",
    lambda w: predict(w, *w.hm_series([np.linspace(-500, 500, 1600, dtype=np.float32).reshape(40, 40)] * 3)),
    "valid range",
)
add(
    "fc-predict-hm-slightly-above-1",
    lambda w: predict(w, *w.hm_series([BASE, BASE, BASE + 0.8]), extra=("--scale", "1")),
    "valid range",
)
add(
    "fc-predict-inf-block",
    lambda w: predict(w, *hm_with(w, np.where(np.arange(40)[:, None] < 20, np.inf, BASE).astype(np.float32))),
    "infinite",
    refuse="no valid pixel",
)
add(
    "fc-predict-all-inf",
    lambda w: predict(w, *hm_with(w, np.full((40, 40), np.inf, np.float32))),
    "infinite",
    refuse="no valid pixel",
)
add("fc-predict-series-truncated", lambda w: predict(w, *w.hm_series()[:2], w.truncated(w.big_dem(), "hm_2010.tif")),
    "hm_2010.tif")  # fmt: skip
add("fc-predict-series-missing", lambda w: predict(w, w.path("hm_2000.tif"), w.path("hm_2005.tif"),
                                                   w.path("hm_2010.tif")), "hm_2000.tif")  # fmt: skip
add("fc-predict-series-out-of-order", lambda w: predict(w, *reversed(w.hm_series())), "out of order")
add("fc-predict-series-uneven", lambda w: predict(w, *w.hm_series(), extra=("--years", "2000", "2005", "2015")),
    "evenly")  # fmt: skip
add("fc-predict-too-few-steps", lambda w: predict(w, *w.hm_series()[1:]), "fewer than")
add("fc-predict-year-not-in-name", lambda w: predict(w, w.raster("a.tif", BASE), w.raster("b.tif", BASE),
                                                     w.raster("c.tif", BASE)), "--years")  # fmt: skip
add("fc-predict-cadence-differs", lambda w: predict(w, *w.hm_series(), extra=("--years", "2000", "2001", "2002")),
    "years apart")  # fmt: skip
add("fc-predict-bands-differ", lambda w: predict(w, *hm_with(w, np.stack([BASE, BASE]))), "band")
add("fc-predict-model-missing", lambda w: ["forecast", "predict", "--model", w.path("m"), "--series", *w.hm_series(),
                                          "--out", w.path("f")], "m")  # fmt: skip
add(
    "fc-predict-model-garbage",
    lambda w: [
        "forecast",
        "predict",
        "--model",
        w.garbage("model.safetensors"),
        "--series",
        *w.hm_series(),
        "--out",
        w.path("f"),
    ],
    "model.safetensors",
)
add("fc-predict-without-series", lambda w: (["forecast", "predict", "--model", w.shared.forecast_model, "--out",
                                            w.path("f")], w.path("f")), "--series")  # fmt: skip
add(
    "fc-predict-pattern-without-year",
    lambda w: (
        ["forecast", "predict", "--model", w.shared.forecast_model, "--pattern", "hm.tif", "--out", w.path("f")],
        w.path("f"),
    ),
    "{year}",
)
add("fc-predict-pattern-matches-nothing", lambda w: (["forecast", "predict", "--model", w.shared.forecast_model,
                                                     "--pattern", str(w.path("x_{year}.tif")), "--out", w.path("f")],
                                                    w.path("f")), "matches")  # fmt: skip
add("fc-predict-tile-too-small", lambda w: predict(w, extra=("--tile", "8")), "tile")
add("fc-predict-overlap-odd", lambda w: predict(w, extra=("--overlap", "3")), "overlap")
add("fc-predict-device-unknown", lambda w: predict(w, extra=("--device", "banana")), "banana")
add("fc-predict-threads-negative", lambda w: predict(w, extra=("--threads", "-2")), "threads")
add("fc-predict-covariate-missing", lambda w: predict(w, extra=("--covariate", w.path("dem.tif"))), "dem.tif")
add("fc-predict-all-nodata", lambda w: predict(w, *w.hm_series([np.full((40, 40), np.nan, np.float32)] * 3)),
    "no valid pixel")  # fmt: skip
output_place_cases("fc-predict", lambda w, out: predict(w, out=out)[0], "folder")


def fc_train(w: Workspace, *extra: Any, out: Path | None = None) -> tuple[list[Any], Path]:
    out = out or w.path("run")
    settings = [f"--set={key}" for key in ("train.max_steps=1", "data.n_input_steps=1", "data.min_input_steps=1",
                                            "data.chip_size=8", "data.block_size=16")]  # fmt: skip
    return ["forecast", "train", "--out", out, *settings, *extra], out


add(
    "fc-train-series-size-differs",
    lambda w: fc_train(w, "--series", *hm_with(w, BASE[:30, :36])),
    "another grid",
)
add(
    "fc-train-series-crs-differs",
    lambda w: fc_train(w, "--series", *hm_with(w, BASE, crs="EPSG:5069")),
    "another grid",
)
add("fc-train-inf-block", lambda w: fc_train(w, "--series", *hm_with(w, np.full((40, 40), np.inf, np.float32))),
    "infinite", refuse="no valid pixel")  # fmt: skip
add("fc-train-unknown-key", lambda w: fc_train(w, "--set", "data.wings=1"), "wings")
add("fc-train-world-missing", lambda w: fc_train(w, "--world", w.path("w")), "w")
add("fc-train-years-without-series", lambda w: fc_train(w, "--years", "2000"), "--years")
add(
    "fc-train-resume-checkpoint-that-runs-code",
    lambda w: fc_train(w, "--series", *w.hm_series(), "--resume", ckpt_with_code(w)),
    "posix.system",
    refuse="weights_only",
)
output_place_cases("fc-train", lambda w, out: fc_train(w, out=out)[0], "folder")
add("fc-evaluate-model-missing", lambda w: (["forecast", "evaluate", "--model", w.path("m"), "--out", w.path("e")],
                                           w.path("e")), "m")  # fmt: skip
add("fc-evaluate-covariate-without-data", lambda w: (["forecast", "evaluate", "--model", w.shared.forecast_model,
                                                     "--covariate", w.dem(), "--out", w.path("e")], w.path("e")),
    "--covariate")  # fmt: skip
add(
    "fc-evaluate-model-records-no-data",
    lambda w: (["forecast", "evaluate", "--model", w.shared.forecast_model, "--out", w.path("e")], w.path("e")),
    "records no training data",
)


# --- demo ---------------------------------------------------------------------------------------------------

output_place_cases("demo", lambda w, out: ["demo", "--out", out, "--size", "32"], "folder")


# ------------------------------------------------------------------------------------------------ the test


@contextlib.contextmanager
def without_permission_override(active: bool) -> Iterator[None]:
    """Run as root would without CAP_DAC_OVERRIDE (this thread only), so a read-only folder is read-only."""
    if not active or os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()
    assert libc.capget(ctypes.byref(header), data) == 0, ctypes.get_errno()
    saved = data[0].effective
    data[0].effective &= ~(1 << CAP_DAC_OVERRIDE)
    assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()
    try:
        yield
    finally:
        data[0].effective = saved
        assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()


def snapshot(path: Path) -> Any:
    """What lies at ``path``: None, a file's digest, or a folder's listing with digests."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if path.is_dir():
        return sorted((str(p.relative_to(path)), snapshot(p) if p.is_file() else "dir") for p in path.rglob("*"))
    return None


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".tmp" in p.name or p.name.endswith(".lock")]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Shared:
    return Shared(tmp_path_factory.mktemp("shared"))


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(
    case: Case, shared: Shared, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # commands with a default --out (terrain) write under tmp_path
    workspace = Workspace(tmp_path, shared)
    built = case.build(workspace)
    argv, out = built if isinstance(built, tuple) else (built, tmp_path / "f")
    before = snapshot(out)
    planted = set(leftovers(tmp_path))
    capfd.readouterr()
    try:
        with without_permission_override(workspace.readonly):
            code = main([str(arg) for arg in argv])
    finally:
        workspace.release()
    err = capfd.readouterr().err  # file-descriptor level: GDAL's or PROJ's own messages would show here too
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("landformer: error: "), err
    assert "Traceback" not in err
    assert case.expect in lines[0], lines[0]
    assert not case.refuse or case.refuse not in lines[0], lines[0]
    assert snapshot(out) == before, f"{out} changed"
    assert set(leftovers(tmp_path)) <= planted


def test_the_corpus_is_large_and_covers_every_part() -> None:
    assert len(CASES) >= 150 and len({case.id for case in CASES}) == len(CASES)
    prefixes = {case.id.split("-")[0] for case in CASES}
    assert {"chips", "info", "align", "world", "packaged", "lc", "terrain", "emb", "geo", "fc"} <= prefixes


# ------------------------------------------------------------------------------------------------ handled cases


def test_a_training_label_off_the_globe_is_dropped_and_reported(tmp_path: Path, capsys) -> None:
    """A latitude beyond +-90 (lat/lon swapped) is one of the outliers label cleaning exists for: the run goes on."""
    w = Workspace(tmp_path, Shared(tmp_path))
    csv = geo_images(w, n=6)
    rows = csv.read_text().splitlines()
    rows[3] = "c2.tif,95.0,0.2,EU"  # latitude and longitude swapped: latitude 95 is off the globe
    csv.write_text("\n".join(rows) + "\n")
    argv, out = geo_train(w, csv, "--no-router", "--backbone", "test_resnet", "--loggers", "csv")
    assert main([str(arg) for arg in argv]) == 0
    report = json.loads((out / "cleaning_report.json").read_text())
    assert report["total"]["off_globe"] == 1 and report["total"]["kept"] <= 5
    assert [row["filename"] for row in report["dropped"] if row["reason"] == "off_globe"] == ["c2.tif"]
    assert "off_globe" in capsys.readouterr().out


def test_geoloc_clean_reports_labels_off_the_globe(tmp_path: Path, capsys) -> None:
    csv = Workspace(tmp_path, Shared(tmp_path)).text(
        "t.csv", HEADER + "a.tif,91,10,EU\nb.tif,40,200,EU\nc.tif,40,1,EU\n"
    )
    assert main(["geoloc", "clean", "--csv", str(csv), "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted(row["filename"] for row in report["dropped"] if row["reason"] == "off_globe") == ["a.tif", "b.tif"]


SLOW_ALIGN = """
import signal, sys, time
import landformer.core.raster as raster
from landformer.cli import main

# A test suite started in the background (make test &) hands its children SIGINT ignored, and Python then keeps
# it ignored; a user pressing Ctrl-C in a terminal has it at Python's default, which this restores.
signal.signal(signal.SIGINT, signal.default_int_handler)

windows = raster.iter_windows

def slowly(*args, **kwargs):  # the output's temporary file exists while the first window is written
    for window in windows(*args, **kwargs):
        print("writing", flush=True)
        time.sleep(60)
        yield window

raster.iter_windows = slowly
sys.exit(main(sys.argv[1:]))
"""


def start_slow_align(w: Workspace, out: Path) -> subprocess.Popen[str]:
    argv = ["data", "align", str(w.dem()), "--like", str(w.nlcd()), "--out", str(out)]
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_ALIGN, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "writing"
    assert [p for p in out.parent.iterdir() if ".tmp" in p.name], "the writer should hold a temporary file"
    return process


@pytest.mark.parametrize(
    ("signum", "code", "word"), [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_sigterm_and_sigint_remove_temporary_files_and_the_lock(
    tmp_path: Path, signum: int, code: int, word: str
) -> None:
    w = Workspace(tmp_path, Shared(tmp_path))
    out = w.path("out/aligned.tif")
    process = start_slow_align(w, out)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code and err.strip().splitlines()[-1] == f"landformer: {word}"
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_killed_runs_temporary_files_are_swept_by_the_next_writer_to_the_same_place(tmp_path: Path) -> None:
    w = Workspace(tmp_path, Shared(tmp_path))
    out = w.path("aligned.tif")
    process = start_slow_align(w, out)
    process.kill()  # kill -9: no cleanup code runs
    process.communicate(timeout=60)
    stale = leftovers(tmp_path)
    assert [p.name.endswith(".tmp.tif") for p in stale if ".tmp" in p.name] == [True] and not out.exists()
    # the kernel released the dead writer's lock; the next writer takes it and sweeps the temporary file
    assert main(["data", "align", str(w.dem()), "--like", str(w.nlcd()), "--out", str(out)]) == 0
    assert out.is_file() and leftovers(tmp_path) == []


def test_a_failed_command_leaves_no_run_folder_and_keeps_an_existing_one(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["landcover", "train", "--chips", str(tmp_path / "missing.npz"), "--out", str(out)]) == 2
    assert not out.exists()  # prepare_run had written config.yaml and run.json there
    (out / "checkpoints").mkdir(parents=True)  # a folder that was there before the command is never removed
    (out / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint of a run to resume")
    assert main(["landcover", "train", "--chips", str(tmp_path / "missing.npz"), "--out", str(out)]) == 2
    assert (out / "checkpoints" / "last.ckpt").is_file()
