"""``landformer embeddings ...``: the embeddings pipeline's sub-commands (thin shells over its Python API)."""

from __future__ import annotations

import argparse

from landformer.cli import add_group


def register(subparsers: argparse._SubParsersAction) -> None:
    add_group(
        subparsers,
        "embeddings",
        "64-channel satellite-embedding models: MAE, Qwen-VL towers, regression, preference optimization",
    )
