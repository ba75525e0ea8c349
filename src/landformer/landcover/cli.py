"""``landformer landcover ...``: the land-cover pipeline's sub-commands (thin shells over its Python API)."""

from __future__ import annotations

import argparse

from landformer.cli import add_group
from landformer.landcover.cli_apps import add_app_commands


def register(subparsers: argparse._SubParsersAction) -> None:
    group = add_group(
        subparsers,
        "landcover",
        "random-order autoregressive land-cover model: train, sample, inpaint, score, Gibbs, maps",
    )
    add_app_commands(group)
