"""``landformer geoloc ...``: the geoloc pipeline's sub-commands (thin shells over its Python API)."""

from __future__ import annotations

import argparse

from landformer.cli import add_group


def register(subparsers: argparse._SubParsersAction) -> None:
    add_group(subparsers, "geoloc", "per-region latitude/longitude regression from images")
