"""Land-change commands: change-train, change-simulate, change-evaluate (thin shells over ``change_model.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    add_batch_size_argument,
    add_decoding_arguments,
    add_model_arguments,
    check_at_least,
    use_device_and_threads,
)


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
    _add_change_model_arguments(simulate)
    simulate.add_argument("--t1", type=Path, required=True, help="class raster of the first epoch (model's legend)")
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
    simulate.add_argument(
        "--quantity",
        choices=["model", "markov"],
        default="model",
        help="how many pixels of each transition the map gets: the model's expectation, or the Markov matrix of "
        "the training pair's train blocks",
    )
    simulate.add_argument("--tile", type=int, default=256, help="output tile side in pixels (memory per tile)")

    evaluate = add_command(
        group,
        "change-evaluate",
        "Figure of Merit, disagreement and bits on held-out blocks: model, persistence and Markov-CA",
        run_change_evaluate,
    )
    _add_change_model_arguments(evaluate)
    evaluate.add_argument("--t1", type=Path, default=None, help="t1 raster (default: the pair the model trained on)")
    evaluate.add_argument("--t2", type=Path, default=None, help="t2 raster (default: the pair the model trained on)")
    evaluate.add_argument("--orders", type=int, default=2, help="random orders averaged for bits per pixel")
    evaluate.add_argument(
        "--unconditional",
        type=Path,
        default=None,
        help="a land-cover model trained without t1 (e.g. on the same t2 chips) to score beside it",
    )


def _add_change_model_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, "folder for the outputs")
    parser.add_argument(
        "--method",
        choices=["samples", "marginal"],
        default="samples",
        help="p(t2 | t1) from --samples draws per chip window, or each pixel's marginal in one pass per window",
    )
    parser.add_argument("--samples", type=int, default=8, help="draws of t2 per chip window (--method samples)")
    add_decoding_arguments(parser)
    add_batch_size_argument(parser, 64, "chip windows")


def _check_sampling(args: argparse.Namespace) -> None:
    check_at_least("--samples", args.samples)
    check_at_least("--steps", args.steps)
    if not args.temperature > 0:
        raise UserError(f"--temperature must be above 0, got {args.temperature}")
    use_device_and_threads(args)


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

    _check_sampling(args)
    check_at_least("--tile", args.tile, 16)
    summary = simulate_change(
        args.model,
        args.t1,
        args.out,
        n_samples=args.samples,
        steps=args.steps,
        temperature=args.temperature,
        transitions=tuple(args.to or ["developed"]),
        keep_classes=tuple(args.keep),
        method=args.method,
        quantity=args.quantity,
        tile=args.tile,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
    )
    share = summary["expected_changes"] / (summary["height"] * summary["width"])
    print(f"simulated {summary['height']}x{summary['width']} px in {summary['seconds']} s; {100 * share:.2f}% change")
    for name, path in summary["files"].items():
        print(f"{name}: {path}")


def run_change_evaluate(args: argparse.Namespace) -> None:
    from landformer.landcover.change_model import evaluate_change

    _check_sampling(args)
    check_at_least("--orders", args.orders)
    result = evaluate_change(
        args.model,
        args.out,
        args.t1,
        args.t2,
        method=args.method,
        n_samples=args.samples,
        steps=args.steps,
        temperature=args.temperature,
        batch_size=args.batch_size,
        orders=args.orders,
        unconditional=args.unconditional,
        seed=args.seed,
        device=args.device,
    )
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
