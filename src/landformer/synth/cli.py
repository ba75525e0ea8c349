"""``landformer synth ...``: the procedural default world and the packaged real data."""

from __future__ import annotations

import argparse

from landformer.cli import add_group


def register(subparsers: argparse._SubParsersAction) -> None:
    add_group(subparsers, "synth", "build the embedded default data (procedural world, packaged real layers)")
