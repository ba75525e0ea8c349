"""Land-change commands: change-train, change-simulate, change-evaluate (thin shells over ``change_model.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeVar

from landformer.core.commands import (
    add_command,
    add_recipe_arguments,
    add_training_flags,
    recipe_overrides,
    recipe_printed,
)
from landformer.core.errors import UserError
from landformer.core.train import add_resume_argument
from landformer.landcover.options import (
    ChangeEvaluateOptions,
    ChangeSimulateOptions,
    add_options,
    call_with_options,
    check_at_least,
    parsed_options,
    use_device_and_threads,
)

T = TypeVar("T")


def add_change_commands(group: argparse._SubParsersAction) -> None:
    """Add the land-change sub-commands to the ``landcover`` group."""
    train = add_command(
        group,
        "change-train",
        "train P(t2 | t1) on two epochs (default: a synthetic world's land cover 2000 -> 2010)",
        run_change_train,
    )
    add_recipe_arguments(train, "built-in, same as configs/landcover_change_tiny.yaml")
    add_training_flags(train)
    train.add_argument("--t1", type=Path, default=None, help="class raster of the first epoch (with --t2)")
    train.add_argument("--t2", type=Path, default=None, help="class raster of the second epoch, same legend")
    train.add_argument("--world", type=Path, default=None, help="synthetic world folder whose epochs are the pair")
    train.add_argument(
        "--align", action="store_true", help="resample t2 onto t1's grid (nearest) when the grids differ"
    )
    train.add_argument("--out", type=Path, required=True, help="run folder for checkpoints, chips and the model")
    add_resume_argument(train)

    simulate = add_command(
        group,
        "change-simulate",
        "simulate t2 from a t1 raster of any size: most likely map, P(change), P(transition) GeoTIFFs",
        run_change_simulate,
    )
    add_options(simulate, ChangeSimulateOptions)
    simulate.add_argument(
        "--to",
        action="append",
        default=None,
        help="transition of interest, repeatable: a legend group or class code/name (default: developed)",
    )
    simulate.add_argument(
        "--keep",
        action="append",
        default=[],
        help="t1 classes that cannot change, repeatable: a legend group or class code/name (e.g. 11 for water)",
    )

    evaluate = add_command(
        group,
        "change-evaluate",
        "Figure of Merit, disagreement and bits on held-out blocks: model, persistence and Markov-CA",
        run_change_evaluate,
    )
    add_options(evaluate, ChangeEvaluateOptions)


def _change_options(args: argparse.Namespace, options: type[T]) -> T:
    """The command's options from its flags, checked, with --device and --threads applied."""
    parsed = parsed_options(args, options)
    check_at_least("--samples", parsed.n_samples)
    check_at_least("--steps", parsed.steps)
    if not parsed.temperature > 0:
        raise UserError(f"--temperature must be above 0, got {parsed.temperature}")
    use_device_and_threads(parsed)
    return parsed


def run_change_train(args: argparse.Namespace) -> None:
    from landformer.core.config import load_config
    from landformer.landcover.change_model import ChangeRecipe, train_change

    recipe = load_config(ChangeRecipe, args.config, recipe_overrides(args))
    if (args.t1 is None) != (args.t2 is None):
        raise UserError("change-train: give --t1 and --t2 together")
    if args.t1 is not None and args.world is not None:
        raise UserError("change-train: give either --t1/--t2 or --world, not both")
    if args.t1 is not None:
        recipe.pair.t1, recipe.pair.t2 = args.t1, args.t2
    if args.world is not None:
        recipe.data.world = args.world
    if args.align:
        recipe.pair.align = True
    if recipe_printed(args, recipe):
        return
    summary = train_change(recipe, args.out, resume=args.resume)
    val = summary["val_bits_per_pixel"]
    val_text = f"; validation {val:.4f} bits/pixel of t2 given t1" if val is not None else ""
    print(f"trained {summary['global_step']} steps in {summary['fit_seconds']} s{val_text}")
    print(f"run folder {summary['run_dir']}; model {summary['model']}")


def run_change_simulate(args: argparse.Namespace) -> None:
    from landformer.landcover.change_model import simulate_change

    options = _change_options(args, ChangeSimulateOptions)
    check_at_least("--tile", options.tile, 16)
    transitions, keep = tuple(args.to or ["developed"]), tuple(args.keep)
    summary = call_with_options(simulate_change, options, transitions=transitions, keep_classes=keep)
    share = summary["expected_changes"] / (summary["height"] * summary["width"])
    print(f"simulated {summary['height']}x{summary['width']} px in {summary['seconds']} s; {100 * share:.2f}% change")
    for name, path in summary["files"].items():
        print(f"{name}: {path}")


def run_change_evaluate(args: argparse.Namespace) -> None:
    from landformer.landcover.change_model import evaluate_change

    options = _change_options(args, ChangeEvaluateOptions)
    check_at_least("--orders", options.orders)
    result = call_with_options(evaluate_change, options)
    print(format_change_table(result.summary))
    print(f"wrote {result.summary['json']} and {result.summary['picture']}")


def format_change_table(summary: dict) -> str:
    """The scores as a Markdown table (FoM and components in % of the held-out pixels) plus the bits."""
    lines = [
        "| method | FoM | hits | wrong hits | misses | false alarms | quantity | allocation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, score in summary["scores"].items():
        cells = [f"{score['figure_of_merit']:.3f}"] + [
            f"{100 * score[key]:.2f}%"
            for key in (
                "hits",
                "wrong_hits",
                "misses",
                "false_alarms",
                "quantity_disagreement",
                "allocation_disagreement",
            )
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    bits = ", ".join(f"{name} {value:.3f}" for name, value in summary["bits_per_pixel"].items())
    lines.append(f"\nbits per pixel of t2 on {summary['bits_chips']} held-out chips: {bits}")
    return "\n".join(lines)
