"""The files a stage exports beside its Lightning checkpoints, which the next stage and inference read:

- ``pretrain``: ``encoder.safetensors`` + ``encoder.json`` (the encoder config, frames, tile size), written by
  :func:`save_encoder`, read by :func:`load_encoder`;
- ``sft`` / ``dpo``: ``model.safetensors`` + ``model.json`` (encoder and Gaussian head, the target scaling): the
  inference bundle, written by :func:`save`, read back as a ready :class:`~landformer.embeddings.model.Regressor`
  by :func:`load`.

The next stage starts from a run folder (or one of those files), so stages chain: pretrain -> sft -> dpo. The JSON
is the metadata in the safetensors header, so either file describes the weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from landformer.core.errors import UserError
from landformer.core.export import pipeline_metadata, save_bundle
from landformer.core.io import load_safetensors
from landformer.embeddings.model import Regressor, build_regressor
from landformer.embeddings.tiles import EmbeddingDataset

ENCODER_FILE, ENCODER_JSON = "encoder.safetensors", "encoder.json"
MODEL_FILE, MODEL_JSON = "model.safetensors", "model.json"
# Written since 0.2; files of 0.1 have no format and load alike (their readers check the fields they use).
ENCODER_FORMAT, MODEL_FORMAT = "landformer-embeddings-encoder", "landformer-embeddings-regressor"


def _locate(path: str | os.PathLike[str], file_name: str, what: str) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / file_name
    if not path.is_file():
        raise UserError(f"{what} not found: {path} (run the stage that writes it first)")
    return path


def save_encoder(run_dir: Path, encoder: nn.Module, meta: dict[str, Any]) -> Path:
    """``encoder.safetensors`` + ``encoder.json``: the pretrained encoder for the next stage."""
    return save_bundle(run_dir / ENCODER_FILE, encoder.state_dict(), ENCODER_FORMAT, 1, name="encoder", **meta)


def load_encoder(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, meta) of a pretrain run folder or its ``encoder.safetensors``; meta as the pretrain stage saved it."""
    tensors, meta = load_safetensors(_locate(path, ENCODER_FILE, "pretrained encoder"), "pretrained encoder")
    return tensors, pipeline_metadata(meta)


def model_meta(
    stage: str,
    encoder: dict[str, Any],
    frames: int,
    dataset: EmbeddingDataset,
    task_hparams: Any,
    scaling: tuple[float, float],
) -> dict[str, Any]:
    """What :func:`load` needs to rebuild the regressor and put its predictions back into target units."""
    return {
        "stage": stage,
        "encoder": encoder,
        "frames": frames,
        "tile_size": dataset.tile_size,
        "head_hidden": task_hparams["head_hidden"],
        "head_dropout": task_hparams["head_dropout"],
        "pooling": task_hparams.get("pooling", "mean"),
        "probe": bool(task_hparams.get("probe", False)),
        "lora": task_hparams.get("lora"),
        "target_mean": scaling[0],
        "target_scale": scaling[1],
        "target_name": dataset.target_name,
    }


def save(run_dir: Path, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """``model.safetensors`` + ``model.json``: the SFT/DPO regressor's weights and :func:`model_meta`."""
    return save_bundle(run_dir / MODEL_FILE, state, MODEL_FORMAT, 1, **meta)


def load(path: str | os.PathLike[str], device: str = "cpu") -> tuple[Regressor, dict[str, Any]]:
    """An exported SFT/DPO model (run folder or ``model.safetensors``) in eval mode, and the metadata its stage
    saved."""
    tensors, meta = load_safetensors(_locate(path, MODEL_FILE, "regression model"), "regression model")
    meta = pipeline_metadata(meta)
    model = build_regressor(meta)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise UserError(
            f"{path}: weights do not fit the model its JSON describes: {str(err).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), meta
