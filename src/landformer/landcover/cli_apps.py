"""Land-cover application commands: gibbs, embed-plot, dev-prob, panorama, evaluate."""

from __future__ import annotations

import argparse


def add_app_commands(group: argparse._SubParsersAction) -> None:
    """Add the application sub-commands to the ``landcover`` group."""
