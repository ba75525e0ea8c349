"""``landformer landcover ...``: the land-cover pipeline's sub-commands (thin shells over its Python API)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeVar

from landformer.core.commands import (
    add_command,
    add_group,
    add_recipe_arguments,
    add_training_flags,
    recipe_overrides,
    recipe_printed,
)
from landformer.core.train import add_resume_argument
from landformer.landcover.change_cli import add_change_commands
from landformer.landcover.cli_apps import add_app_commands
from landformer.landcover.options import (
    AnimateOptions,
    InfoOptions,
    InpaintEvalOptions,
    InpaintOptions,
    PerplexityOptions,
    SampleOptions,
    add_baselines_epilog,
    add_options,
    call_with_options,
    parsed_options,
    use_device_and_threads,
)

T = TypeVar("T")

# Spelled out here rather than imported from landcover.baselines, whose imports would slow every --help.
INFO_BASELINES = {
    "context": "causal-context model: class counts given the W, N, NW, NE neighbours (chip edge and nodata: "
    "'outside'), fitted on the train split, add-1/2 smoothing, raster order",
    "class_entropy": "i.i.d. pixels with the test chips' own class frequencies",
    "CODEC": "gzip, bz2, lzma, png, webp (lossless): all test chips in one stream or mosaic, headers paid once",
    "CODEC_per_chip": "the same codecs on each chip alone, headers included",
    "test chips": "exact duplicates, and chips sharing a pixel with a chip kept before them, are dropped first",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    group = add_group(
        subparsers,
        "landcover",
        "random-order autoregressive land-cover model: train, sample, inpaint, score, Gibbs, maps",
    )
    _register_train(group)
    _register_sampling(group)
    _register_scoring(group)
    add_app_commands(group)
    add_change_commands(group)


def _register_train(group: argparse._SubParsersAction) -> None:
    train = add_command(
        group,
        "train",
        "train the model (on real IGBP chips when no data is given; --set data.source=synthetic for a synthetic world)",
        run_train,
    )
    add_recipe_arguments(train, "built-in, same as configs/landcover_tiny.yaml")
    add_training_flags(train)
    source = train.add_mutually_exclusive_group()
    source.add_argument("--chips", type=Path, default=None, help="chip file of `landformer data chips` (.npz)")
    source.add_argument("--world", type=Path, default=None, help="synthetic world folder to cut chips from")
    train.add_argument("--out", type=Path, required=True, help="run folder for checkpoints, pictures and the model")
    add_resume_argument(train)


def run_train(args: argparse.Namespace) -> None:
    from landformer.core.config import load_config
    from landformer.landcover.config import LandCoverRecipe
    from landformer.landcover.train import train

    recipe = load_config(LandCoverRecipe, args.config, recipe_overrides(args))
    if args.chips is not None:
        recipe.data.chips, recipe.data.world = args.chips, None
    if args.world is not None:
        recipe.data.world, recipe.data.chips = args.world, None
    if recipe_printed(args, recipe):
        return
    summary = train(recipe, args.out, resume=args.resume)
    val = summary["val_loss_nats"]
    val_text = f"; validation loss {val:.4f} nats/pixel" if val is not None else ""
    print(f"trained {summary['global_step']} steps in {summary['fit_seconds']} s{val_text}")
    print(f"run folder {summary['run_dir']}; model {summary['model']}")


def _register_sampling(group: argparse._SubParsersAction) -> None:
    commands = (
        ("sample", "generate maps from scratch (PNG grid, npz, GeoTIFFs)", SampleOptions, run_sample),
        ("animate", "GIF of a grid of maps generated pixel by pixel in random order", AnimateOptions, run_animate),
        ("inpaint", "hide pixels of test chips and generate them from the rest", InpaintOptions, run_inpaint),
        (
            "inpaint-eval",
            "inpainting accuracy and log-loss vs mask ratio, against two baselines",
            InpaintEvalOptions,
            run_inpaint_eval,
        ),
    )
    for name, help, options, run in commands:
        add_options(add_command(group, name, help, run), options)


def _register_scoring(group: argparse._SubParsersAction) -> None:
    score = add_command(
        group, "perplexity", "held-out log-likelihood in random and raster orders (nats, bits)", run_perplexity
    )
    add_options(score, PerplexityOptions)
    info = add_command(
        group,
        "info",
        "bits per pixel of the model vs a causal-context model, class entropy and compressors (fair test chips)",
        run_info,
    )
    add_options(info, InfoOptions)
    add_baselines_epilog(info, INFO_BASELINES)
    validation = add_command(
        group,
        "validation-chips",
        "write the validation blocks that training sets aside as a chip file, to choose settings on (never on test)",
        run_validation_chips,
    )
    validation.add_argument("--chips", type=Path, required=True, help="the chip file the model trained on (.npz)")
    validation.add_argument("--seed", type=int, default=0, help="the run's train.seed, which chose the blocks")
    validation.add_argument("--out", type=Path, required=True, help="chip file to write (.npz)")


def _options(args: argparse.Namespace, options: type[T]) -> T:
    """The command's options from its flags, with --device and --threads checked and applied."""
    parsed = parsed_options(args, options)
    use_device_and_threads(parsed)
    return parsed


def run_sample(args: argparse.Namespace) -> None:
    from landformer.landcover.apps.sampling import sample_maps

    options = _options(args, SampleOptions)
    summary = call_with_options(sample_maps, options)
    print(f"{summary['n']} samples (conditioning: {summary['conditioning']}) in {options.out}")
    print(f"grid: {summary['png']}; arrays: {summary['npz']}")
    if summary["geotiffs"]:
        print(f"GeoTIFFs: {len(summary['geotiffs'])} files, e.g. {summary['geotiffs'][0]}")


def run_animate(args: argparse.Namespace) -> None:
    from landformer.landcover.apps.animation import animate

    summary = call_with_options(animate, _options(args, AnimateOptions))
    print(f"animation ({summary['frames']} frames): {summary['gif']}; last frame: {summary['png']}")


def run_inpaint(args: argparse.Namespace) -> None:
    from landformer.landcover.apps.inpainting import inpaint

    options = _options(args, InpaintOptions)
    summary = call_with_options(inpaint, options, keep_nodata=options.nodata == "keep")
    print(
        f"inpainted {summary['n']} chips ({summary['hidden_fraction']:.0%} hidden): accuracy on hidden pixels "
        f"{summary['accuracy_hidden']:.3f}"
    )
    print(f"panel: {summary['png']}; arrays: {summary['npz']}")


def run_inpaint_eval(args: argparse.Namespace) -> None:
    from landformer.landcover.apps.inpainting import inpaint_eval

    options = _options(args, InpaintEvalOptions)
    summary = call_with_options(inpaint_eval, options)
    print("ratio  model  sample  majority  nearest   (accuracy on hidden pixels; log-loss in nats)")
    for row in summary["rows"]:
        print(
            f"{row['ratio']:5.2f}  {row['model_accuracy']:.3f}  {row['model_sample_accuracy']:.3f}   "
            f"{row['majority_accuracy']:.3f}     {row['nearest_accuracy']:.3f}     "
            f"log-loss {row['model_log_loss']:.3f} / {row['majority_log_loss']:.3f} / {row['nearest_log_loss']:.3f}"
        )
    print(f"results: {options.out / 'inpaint_eval.json'}; plot: {summary['png']}")


def run_perplexity(args: argparse.Namespace) -> None:
    from landformer.landcover.apps.scoring import heldout_perplexity

    s = call_with_options(heldout_perplexity, _options(args, PerplexityOptions))
    print(
        f"{s['chips']} ({s['pixels']} pixels): random orders {s['random_nats']:.4f} nats = {s['random_bits']:.4f} "
        f"bits/pixel (perplexity {s['random_perplexity']:.3f}); raster order {s['raster_nats']:.4f} nats = "
        f"{s['raster_bits']:.4f} bits/pixel"
    )
    print(f"results: {s['json']}")


def run_info(args: argparse.Namespace) -> None:
    from landformer.landcover.apps.scoring import information_content

    s = call_with_options(information_content, _options(args, InfoOptions))
    for note in s["notes"]:
        print(f"note: {note}")
    for name, bits in sorted(s["bits_per_pixel"].items(), key=lambda item: item[1]):
        print(f"{name:20s} {bits:.4f} bits/pixel")
    if s["ratio_to_context"] is not None:
        print(f"model / context model: {s['ratio_to_context']:.3f} (random orders; below 1 beats four neighbours)")
    print(f"results: {s['json']}; chart: {s['png']}")


def run_validation_chips(args: argparse.Namespace) -> None:
    from landformer.core.chips import load_chips
    from landformer.landcover.data import write_validation_chips

    path = write_validation_chips(args.chips, args.out, args.seed)
    chips = load_chips(path)
    print(f"{len(chips.test_data)} validation chips (test split), {len(chips.train_data)} training chips: {path}")
    print(f"note: {chips.metadata['validation_of']['carve']}")
