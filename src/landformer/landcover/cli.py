"""``landformer landcover ...``: the landcover pipeline's sub-commands (thin shells over its Python API)."""

from __future__ import annotations

import argparse

from landformer.cli import add_group


def register(subparsers: argparse._SubParsersAction) -> None:
    add_group(
        subparsers,
        "landcover",
        "random-order autoregressive land-cover model: train, sample, inpaint, score, Gibbs, maps",
    )
