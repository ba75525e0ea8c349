"""``landformer forecast ...``: the forecast pipeline's sub-commands (thin shells over its Python API)."""

from __future__ import annotations

import argparse

from landformer.cli import add_group


def register(subparsers: argparse._SubParsersAction) -> None:
    add_group(subparsers, "forecast", "ConvLSTM multi-horizon forecasting of a raster time series")
