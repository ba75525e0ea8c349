"""``landformer landcover ...``: the land-cover pipeline's sub-commands (thin shells over its Python API)."""

from __future__ import annotations

import argparse
from pathlib import Path

from landformer.cli import add_command, add_group
from landformer.core.train import add_resume_argument
from landformer.landcover.cli_apps import add_app_commands

MODEL_HELP = "run folder of `landcover train`, or its model.safetensors"


def register(subparsers: argparse._SubParsersAction) -> None:
    group = add_group(
        subparsers,
        "landcover",
        "random-order autoregressive land-cover model: train, sample, inpaint, score, Gibbs, maps",
    )
    _register_train(group)
    add_app_commands(group)


def _register_train(group: argparse._SubParsersAction) -> None:
    train = add_command(group, "train", "train the model (on a synthetic world when no data is given)", run_train)
    train.add_argument(
        "--config", type=Path, default=None, help="recipe YAML (default: built-in, same as configs/landcover_tiny.yaml)"
    )
    source = train.add_mutually_exclusive_group()
    source.add_argument("--chips", type=Path, default=None, help="chip file of `landformer data chips` (.npz)")
    source.add_argument("--world", type=Path, default=None, help="synthetic world folder to cut chips from")
    train.add_argument("--out", type=Path, required=True, help="run folder for checkpoints, pictures and the model")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one recipe value, e.g. --set train.max_steps=100 (repeatable)",
    )
    add_resume_argument(train)


def run_train(args: argparse.Namespace) -> None:
    from landformer.core.config import load_config
    from landformer.landcover.config import LandCoverRecipe
    from landformer.landcover.train import train_landcover

    recipe = load_config(LandCoverRecipe, args.config, args.overrides)
    if args.chips is not None:
        recipe.data.chips, recipe.data.world = args.chips, None
    if args.world is not None:
        recipe.data.world, recipe.data.chips = args.world, None
    summary = train_landcover(recipe, args.out, resume=args.resume)
    val = summary["val_loss_nats"]
    val_text = f"; validation loss {val:.4f} nats/pixel" if val is not None else ""
    print(f"trained {summary['global_step']} steps in {summary['fit_seconds']} s{val_text}")
    print(f"run folder {summary['run_dir']}; model {summary['model']}")
