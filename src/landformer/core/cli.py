"""``landformer data ...``: turning rasters into training data."""

from __future__ import annotations

import argparse

from landformer.cli import add_group


def register(subparsers: argparse._SubParsersAction) -> None:
    add_group(subparsers, "data", "prepare training data from rasters (chips, legends)")
