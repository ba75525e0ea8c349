"""Inference-ready models: ``tokenizer.safetensors`` / ``maskgit.safetensors``, each with a JSON twin.

Training writes each stage into its run folder from the best checkpoint with :func:`save`, which tells the two
networks apart by their class. The safetensors metadata carries the same JSON as the ``.json`` file (architecture,
data statistics, sampling defaults), so the run folder or the ``.safetensors`` file alone is enough to load a
stage: :func:`load` gives the generator (MaskGIT with its tokenizer), :meth:`LoadedTokenizer.load` the tokenizer.

A tokenizer's *identity* is a hash of its architecture config and every weight. MaskGIT's tokens mean
something only to the tokenizer that made them, so the generator export records that identity (and where the
tokenizer was), and :func:`load` refuses, in one line, a tokenizer with any other identity.

The files keep their own layout (``model_config``, no ``landformer_version``) rather than core's
:func:`~landformer.core.export.save_bundle`, so that exports and the packaged ``real`` model stay readable both
ways between versions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from rasterio.transform import Affine
from torch import Tensor

from landformer.core.errors import UserError
from landformer.core.export import load_bundle, save_bundle
from landformer.core.io import load_safetensors, load_torch
from landformer.core.raster import parse_crs
from landformer.terrain.config import MaskGITModelConfig, TokenizerModelConfig
from landformer.terrain.data import scale_class
from landformer.terrain.model import MaskGIT, VQTokenizer, decode

TOKENIZER_FORMAT = "landformer-terrain-tokenizer"
MASKGIT_FORMAT = "landformer-terrain-maskgit"
FORMAT_VERSION = 1
TOKENIZER_FILE = "tokenizer.safetensors"
MASKGIT_FILE = "maskgit.safetensors"
# Models installed with the package, loadable by name (``--model real``): terrain/pretrained/NAME/ holds both
# stages. `real`: trained on the packaged real DEMs by configs/terrain_*_real.yaml (`make terrain-model`).
PRETRAINED = ("real",)


def pretrained_folder(name: str) -> Path:
    """The folder of a terrain model installed with the package (``terrain/pretrained/NAME/``)."""
    folder = Path(str(resources.files("landformer.terrain").joinpath("pretrained", name)))
    if not (folder / MASKGIT_FILE).is_file() or not (folder / TOKENIZER_FILE).is_file():
        raise UserError(
            f"the packaged terrain model {name!r} is missing from this install ({folder}); rebuild it with "
            "`make terrain-model`"
        )
    return folder


def model_identity(config: Mapping[str, Any], state: Mapping[str, Tensor]) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON config and every tensor's name, dtype, shape, bytes."""
    digest = hashlib.sha256(json.dumps(dict(config), sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def _weights_path(path: str | os.PathLike[str], file_name: str, what: str) -> Path:
    path = Path(path)
    if str(path) in PRETRAINED and not path.exists():
        path = pretrained_folder(str(path))
    if path.is_dir():
        weights = path / file_name
        if not weights.is_file():
            raise UserError(f"{path} holds no {file_name}; train one into it first ({what})")
        return weights
    return path


class LoadedTokenizer:
    """A trained tokenizer plus its metadata; encodes and decodes numpy arrays of normalised elevation."""

    def __init__(self, model: VQTokenizer, meta: dict[str, Any], source: Path) -> None:
        self.model = model.eval()
        self.meta = meta
        self.source = source
        self.identity: str = meta["identity"]

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedTokenizer:
        """Load a tokenizer from a run folder or its ``tokenizer.safetensors``; anything off is a UserError."""
        weights = _weights_path(path, TOKENIZER_FILE, "landformer terrain fit-tokenizer")
        tensors, meta, _ = load_bundle(weights, TOKENIZER_FORMAT, "landformer terrain tokenizer", "tokenizer")
        try:
            config = TokenizerModelConfig(**meta["model_config"])
            model = VQTokenizer(config)
            model.load_state_dict(tensors)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise UserError(f"{weights}: weights do not fit its config: {str(err).strip().splitlines()[0]}") from None
        identity = model_identity(meta["model_config"], tensors)
        if identity != meta.get("identity"):
            raise UserError(
                f"{weights}: weights changed since export (identity {identity}, recorded {meta.get('identity')})"
            )
        return cls(model.to(device), meta, weights)

    @property
    def downsample(self) -> int:
        return self.model.downsample

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    @property
    def tile_size(self) -> int:
        return int(self.meta["data"]["tile_size"])

    @property
    def device(self) -> torch.device:
        return self.model.last_layer.device

    @torch.inference_mode()
    def encode(self, normalized: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N, H, W) normalised elevation -> (N, H/f, W/f) int64 tokens."""
        out = []
        for start in range(0, len(normalized), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(normalized[start : start + batch_size], dtype=np.float32))
            out.append(self.model.encode(batch[:, None].to(self.device))[1].cpu().numpy())
        return np.concatenate(out) if out else np.empty((0,), dtype=np.int64)

    @torch.inference_mode()
    def decode(self, tokens: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N, h, w) tokens -> (N, h*f, w*f) float32 normalised elevation."""
        out = []
        for start in range(0, len(tokens), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(tokens[start : start + batch_size], dtype=np.int64))
            out.append(self.model.decode_indices(batch.to(self.device))[:, 0].float().cpu().numpy())
        return np.concatenate(out)


def _save_tokenizer(folder: str | os.PathLike[str], model: VQTokenizer, data_summary: dict[str, Any]) -> Path:
    """Write ``tokenizer.safetensors`` + ``tokenizer.json`` into ``folder``; returns the safetensors path."""
    folder = Path(folder)
    config = model.config.architecture()
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    return save_bundle(
        folder / TOKENIZER_FILE,
        state,
        TOKENIZER_FORMAT,
        FORMAT_VERSION,
        name="tokenizer",
        model_config=config,
        identity=model_identity(config, state),
        vocab_size=model.vocab_size,
        data=data_summary,
    )


def load_vgg_features(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The ``features.*`` tensors of a local torchvision VGG16 state dict (.safetensors or .pth), keys stripped."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state, _ = load_safetensors(path, "VGG16 weights")
    else:
        state = load_torch(path, "VGG16 weights")
    if not isinstance(state, Mapping):
        raise UserError(f"VGG16 weights {path} are not a state dict")
    features = {key.removeprefix("features."): value for key, value in state.items() if key.startswith("features.")}
    if not features:
        features = {key: value for key, value in state.items() if key.split(".")[0].isdigit()}
    if not features:
        raise UserError(f"VGG16 weights {path} hold no 'features.*' tensors (a torchvision vgg16 state dict?)")
    return features


@dataclasses.dataclass(frozen=True)
class MapGrid:
    """CRS, pixel size (x, y in CRS units), top-left corner and data type of a generated map."""

    crs: str
    pixel: tuple[float, float]
    origin: tuple[float, float]
    dtype: str  # "float32", or the integer type of the training DEM (int16 stays int16)

    def transform(self) -> Any:
        """The affine transform of a north-up map whose top-left corner is at the origin."""
        return Affine(self.pixel[0], 0.0, self.origin[0], 0.0, -self.pixel[1], self.origin[1])

    def cast(self, metres: np.ndarray) -> tuple[np.ndarray, float]:
        """``metres`` in this grid's data type and the nodata value used (see :func:`cast_heights`)."""
        return cast_heights(metres, self.dtype)


def cast_heights(metres: np.ndarray, dtype: str, nodata: float | None = None) -> tuple[np.ndarray, float]:
    """Heights in a DEM's data type: floats become float32 (NaN stays NaN, or becomes ``nodata``); integers are
    rounded and clipped to the type's range, NaN becoming ``nodata`` (default: the type's most negative value,
    -32768 for int16, as SRTM and most int16 DEMs use). Returns the array and the nodata value."""
    if np.dtype(dtype).kind not in "iu":
        fill = float("nan") if nodata is None else float(nodata)
        return np.where(np.isnan(metres), fill, metres).astype(np.float32), fill
    info = np.iinfo(dtype)
    fill = float(nodata) if nodata is not None else float(info.min if np.dtype(dtype).kind == "i" else info.max)
    values = np.clip(np.round(np.nan_to_num(metres, nan=fill)), info.min, info.max).astype(dtype)
    return values, fill


class TerrainGenerator:
    """MaskGIT and its tokenizer, ready to sample token grids and turn them into metres."""

    def __init__(self, maskgit: MaskGIT, tokenizer: LoadedTokenizer, meta: dict[str, Any], source: Path) -> None:
        self.maskgit = maskgit.eval()
        self.tokenizer = tokenizer
        self.meta = meta
        self.source = source

    @property
    def grid(self) -> int:
        """Side of the training window in tokens."""
        return self.maskgit.config.grid

    @property
    def tile(self) -> int:
        """Side of an outpainting tile in tokens (half the window)."""
        return int(self.meta["tile"])

    @property
    def downsample(self) -> int:
        return self.tokenizer.downsample

    @property
    def sampling(self) -> dict[str, Any]:
        return dict(self.meta["sampling"])

    @property
    def n_condition_classes(self) -> int:
        return self.maskgit.config.n_condition_classes

    @property
    def device(self) -> torch.device:
        return self.maskgit.head.weight.device

    @property
    def reference(self) -> dict[str, Any]:
        """The data summary of the training DEM that generated maps follow (see :meth:`map_grid`): its pixel size
        in metres, the median offset and scale of its tiles, its grid. Models trained before it was recorded, or
        on chip files only, have none: then the summary of all training tiles stands in."""
        data = self.meta["data"]
        return data.get("reference") or data

    @property
    def reference_pixel_size_m(self) -> float:
        return float(self.reference["pixel_size_m"])

    def default_offset_scale(self) -> tuple[float, float]:
        """Median offset and scale (m) of the reference DEM's training tiles: the heights samples get unless told
        otherwise."""
        return float(self.reference["median_offset_m"]), float(self.reference["median_scale_m"])

    def scale_class(self, pixel_size_m: float | None = None) -> int | None:
        """The pixel-size class a scale-conditioned model is told for a map of ``pixel_size_m`` metres (default:
        its reference DEM's); None for models without ``scale_classes``."""
        edges = self.meta.get("scale_classes")
        if not edges:
            return None
        return int(scale_class(self.reference_pixel_size_m if pixel_size_m is None else pixel_size_m, edges))

    def map_grid(
        self,
        pixel_size: float | None = None,
        crs: str | None = None,
        origin: tuple[float, float] | None = None,
    ) -> MapGrid:
        """Where generated maps go: the grid of the training DEM the data summary names as reference (the first DEM
        the user gave, else the finest packaged one), each part overridable. Models without a reference write
        EPSG:3857 at (0, 0) with the median training pixel size in metres."""
        reference = self.meta["data"].get("reference")
        if reference is None:
            default = MapGrid("EPSG:3857", (float(self.meta["data"]["pixel_size_m"]),) * 2, (0.0, 0.0), "float32")
        else:
            size_x, size_y = reference["pixel_size_crs"]
            default = MapGrid(reference["crs"], (float(size_x), float(size_y)), tuple(reference["origin"]), "float32")
            if np.dtype(reference["dtype"]).kind in "iu":
                default = dataclasses.replace(default, dtype=str(reference["dtype"]))
        if crs is not None and pixel_size is None and crs != default.crs:
            # Another CRS: metres of a projected one take the training pixel size in metres; degrees need telling.
            if parse_crs(crs, "--crs").is_geographic:
                raise UserError(f"--crs {crs} is in degrees, unlike the training DEM; give --pixel-size in degrees")
            metres = self.reference_pixel_size_m
            default = dataclasses.replace(default, pixel=(metres, metres))
        return MapGrid(
            default.crs if crs is None else crs,
            default.pixel if pixel_size is None else (float(pixel_size), float(pixel_size)),
            default.origin if origin is None else (float(origin[0]), float(origin[1])),
            default.dtype,
        )

    def decode_windows(
        self,
        tokens: np.ndarray,
        known: np.ndarray,
        generator: torch.Generator,
        condition: np.ndarray | None = None,
        steps: int | None = None,
    ) -> np.ndarray:
        """Fill the unknown tokens of (B, H, W) windows with MaskGIT; ``steps`` defaults to the recipe's."""
        sampling = self.sampling
        condition_tensor = None if condition is None else torch.from_numpy(condition).long().to(self.device)
        result = decode(
            self.maskgit,
            torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).to(self.device),
            torch.from_numpy(np.ascontiguousarray(known, dtype=bool)).to(self.device),
            steps=steps if steps is not None else int(sampling["steps"]),
            generator=generator,
            temperature=float(sampling["temperature"]),
            choice_temperature=float(sampling["choice_temperature"]),
            condition=condition_tensor,
            bf16=bool(sampling.get("bf16", False)),
        )
        return result.cpu().numpy()

    def to_metres(self, normalized: np.ndarray, offset: float, scale: float) -> np.ndarray:
        return (normalized * scale + offset).astype(np.float32)


def _save_generator(
    folder: str | os.PathLike[str],
    model: MaskGIT,
    tokenizer: LoadedTokenizer,
    tile: int,
    sampling: dict[str, Any],
    data_summary: dict[str, Any],
    legend: dict[str, Any] | None,
    scale_classes: list[float] | None = None,
) -> Path:
    """Write ``maskgit.safetensors`` + ``maskgit.json``, recording the identity and path of its tokenizer."""
    return save_bundle(
        Path(folder) / MASKGIT_FILE,
        model.state_dict(),
        MASKGIT_FORMAT,
        FORMAT_VERSION,
        name="maskgit",
        model_config=dataclasses.asdict(model.config),
        tokenizer_identity=tokenizer.identity,
        tokenizer_path=str(Path(tokenizer.source).resolve()),
        tile=tile,
        sampling=sampling,
        data=data_summary,
        condition_legend=legend,
        scale_classes=scale_classes,
    )


@overload
def save(folder: str | os.PathLike[str], model: VQTokenizer, data_summary: dict[str, Any]) -> Path: ...


@overload
def save(
    folder: str | os.PathLike[str],
    model: MaskGIT,
    tokenizer: LoadedTokenizer,
    tile: int,
    sampling: dict[str, Any],
    data_summary: dict[str, Any],
    legend: dict[str, Any] | None,
    scale_classes: list[float] | None = None,
) -> Path: ...


def save(folder: str | os.PathLike[str], model: VQTokenizer | MaskGIT, *args: Any, **kwargs: Any) -> Path:
    """Export a trained stage into ``folder`` and return its ``.safetensors`` path: a :class:`VQTokenizer` as
    ``tokenizer.safetensors`` (with the summary of its training data), a :class:`MaskGIT` as
    ``maskgit.safetensors`` (with its tokenizer, outpainting tile in tokens, sampling defaults, data summary,
    condition legend and pixel-size classes)."""
    if isinstance(model, VQTokenizer):
        return _save_tokenizer(folder, model, *args, **kwargs)
    if isinstance(model, MaskGIT):
        return _save_generator(folder, model, *args, **kwargs)
    raise TypeError(f"terrain save() takes a VQTokenizer or a MaskGIT, not a {type(model).__name__}")


def load(
    path: str | os.PathLike[str], tokenizer: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"
) -> TerrainGenerator:
    """MaskGIT from a run folder or ``maskgit.safetensors`` with its tokenizer (the recorded one by default).

    A tokenizer other than the one MaskGIT was trained on is refused in one line.
    """
    weights = _weights_path(path, MASKGIT_FILE, "landformer terrain fit")
    tensors, meta, _ = load_bundle(weights, MASKGIT_FORMAT, "landformer terrain generator", "maskgit")
    tokenizer_path = Path(tokenizer) if tokenizer is not None else Path(meta["tokenizer_path"])
    beside = weights.parent / TOKENIZER_FILE
    if tokenizer is None and not tokenizer_path.exists() and beside.is_file():
        tokenizer_path = beside  # a run folder (or packaged model) moved with both stages in it
    loaded = LoadedTokenizer.load(tokenizer_path, device)
    if loaded.identity != meta["tokenizer_identity"]:
        raise UserError(
            f"{weights} was trained on tokenizer {meta['tokenizer_identity']}, but {loaded.source} is tokenizer "
            f"{loaded.identity}; pass the tokenizer it was trained with"
        )
    try:
        model = MaskGIT(MaskGITModelConfig(**meta["model_config"]))
        model.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"{weights}: weights do not fit its config: {str(err).strip().splitlines()[0]}") from None
    return TerrainGenerator(model.to(device), loaded, meta, weights)
