"""Route B: principal components 64 -> 3, so embedding tiles become 3-channel images for RGB models.

The PCA is fitted on the *training* tiles' observed pixels only (a seeded sample of at most ``max_pixels``), so
held-out regions never shape the projection. Each component is then scaled to [0, 1] between its 2nd and 98th
percentile on those pixels (clipped), which puts the result in the range RGB models are normalized from. The
fit is saved as JSON (readable anywhere) with the same arrays in an ``.npz`` beside it.

:func:`convert_dataset` writes a 3-channel copy of a dataset: ``tiles/<id>.npy`` (3, H, W) float32 in [0, 1]
(masked pixels 0), the label table, a ``dataset.json`` with ``"channels": 3`` and a preview grid. Training on it
uses ``encoder.in_channels = 3``; a Qwen tower then keeps its pretrained RGB patch embedding.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from landformer.core.errors import UserError
from landformer.core.io import atomic_path, read_json, write_json, write_npz
from landformer.core.viz import image_grid, save_png, upscale
from landformer.embeddings.tiles import DATASET_JSON, EmbeddingDataset


@dataclass
class PCA3:
    """A fitted 64 -> 3 projection with per-component display ranges."""

    mean: np.ndarray  # (64,)
    components: np.ndarray  # (3, 64), rows orthonormal, by decreasing variance
    explained_variance_ratio: np.ndarray  # (3,)
    low: np.ndarray  # (3,) 2nd percentile of each component on the training pixels
    high: np.ndarray  # (3,) 98th percentile
    n_pixels: int

    def project(self, tiles: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """(..., 64, H, W) -> (..., 3, H, W) in [0, 1]; pixels not ``valid`` (..., H, W) become 0."""
        centred = np.moveaxis(tiles, -3, -1) - self.mean
        scores = centred @ self.components.T
        scaled = np.clip((scores - self.low) / np.maximum(self.high - self.low, 1e-12), 0.0, 1.0)
        out = np.moveaxis(scaled, -1, -3).astype(np.float32)
        if valid is not None:
            out = np.where(np.expand_dims(valid, -3), out, np.float32(0.0))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "pca 64->3",
            "mean": self.mean.tolist(),
            "components": self.components.tolist(),
            "explained_variance_ratio": self.explained_variance_ratio.tolist(),
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "n_pixels": self.n_pixels,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "PCA file") -> PCA3:
        try:
            pca = cls(
                mean=np.asarray(data["mean"], dtype=np.float64),
                components=np.asarray(data["components"], dtype=np.float64),
                explained_variance_ratio=np.asarray(data["explained_variance_ratio"], dtype=np.float64),
                low=np.asarray(data["low"], dtype=np.float64),
                high=np.asarray(data["high"], dtype=np.float64),
                n_pixels=int(data["n_pixels"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{source} is not a PCA fit written by `landformer embeddings pca`: {err}") from None
        if pca.components.shape != (3, len(pca.mean)):
            raise UserError(
                f"{source}: components of shape {pca.components.shape} do not fit a mean of {len(pca.mean)}"
            )
        return pca


def fit_pca(dataset: EmbeddingDataset, max_pixels: int = 200_000, seed: int = 0) -> PCA3:
    """Fit on a seeded sample of the observed pixels of the training tiles (every frame)."""
    if max_pixels < 3:
        raise UserError(f"--max-pixels {max_pixels}: a 3-component PCA needs at least 3 pixels")
    train = dataset.indices("train")
    if len(train) == 0:
        raise UserError("the dataset has no training tiles to fit the PCA on")
    tiles = dataset.tiles[train]  # (N, F, C, H, W)
    valid = np.broadcast_to(dataset.valid[train][:, None], (len(train), tiles.shape[1], *dataset.valid.shape[1:]))
    pixels = np.moveaxis(tiles, 2, -1)[valid].astype(np.float64)  # (P, C)
    if len(pixels) < 3:
        raise UserError("fewer than 3 observed training pixels: cannot fit a 3-component PCA")
    if len(pixels) > max_pixels:
        pixels = pixels[np.random.default_rng(seed).choice(len(pixels), max_pixels, replace=False)]
    mean = pixels.mean(axis=0)
    _, singular, vt = np.linalg.svd(pixels - mean, full_matrices=False)
    components = vt[:3]
    # A component's sign is arbitrary; fix it so the largest loading is positive (same picture on every run).
    components *= np.sign(components[np.arange(3), np.abs(components).argmax(axis=1)])[:, None]
    variance = singular**2
    scores = (pixels - mean) @ components.T
    return PCA3(
        mean=mean,
        components=components,
        explained_variance_ratio=variance[:3] / variance.sum(),
        low=np.percentile(scores, 2, axis=0),
        high=np.percentile(scores, 98, axis=0),
        n_pixels=len(pixels),
    )


def save_pca(pca: PCA3, path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``path`` as JSON and the same arrays as ``.npz`` beside it."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise UserError(f"PCA output {path} should end in .json (an .npz copy is written beside it)")
    write_json(path, pca.to_dict())
    arrays = {key: np.asarray(value) for key, value in pca.to_dict().items() if key != "kind"}
    npz = write_npz(path.with_suffix(".npz"), arrays)
    return path, npz


def load_pca(path: str | os.PathLike[str]) -> PCA3:
    data = read_json(path, "PCA file")
    if not isinstance(data, dict):
        raise UserError(f"PCA file {path} should hold a JSON object")
    return PCA3.from_dict(data, f"PCA file {path}")


def convert_dataset(dataset: EmbeddingDataset, pca: PCA3, labels: Path, out: str | os.PathLike[str]) -> Path:
    """Write the 3-channel copy of ``dataset`` (every frame) into ``out``; returns its ``dataset.json``."""
    out = Path(out)
    if pca.components.shape[1] != dataset.tiles.shape[2]:
        raise UserError(f"the PCA maps {pca.components.shape[1]} channels, the tiles have {dataset.tiles.shape[2]}")
    folders = ["tiles"] + [f"tiles_frame{frame}" for frame in range(1, dataset.n_frames)]
    previews = []
    for index, tile_id in enumerate(dataset.ids):
        rgb = pca.project(dataset.tiles[index], dataset.valid[index][None])  # (F, 3, H, W)
        for frame, folder in enumerate(folders):
            with atomic_path(out / folder / f"{tile_id}.npy") as tmp, open(tmp, "wb") as handle:
                np.save(handle, rgb[frame])
        if len(previews) < 36:
            picture = (np.moveaxis(rgb[0], 0, -1) * 255).round().astype(np.uint8)
            previews.append(upscale(picture, max(1, 64 // dataset.tile_size)))
    suffix = labels.suffix.lower()
    with atomic_path(out / f"labels{suffix}") as tmp:
        shutil.copyfile(labels, tmp)
    save_png(out / "preview.png", image_grid(previews))
    source_meta = dataset.info
    return write_json(
        out / DATASET_JSON,
        {
            "kind": "pca3",
            "tiles": "tiles",
            "next_tiles": folders[1] if len(folders) > 1 else None,
            "labels": f"labels{suffix}",
            "channels": 3,
            "tile_degrees": source_meta.get("tile_degrees"),  # the same overlap buffer, so the same split
            "source": source_meta,
            "explained_variance_ratio": pca.explained_variance_ratio.tolist(),
            "columns": source_meta.get("columns", {}),
        },
    )
