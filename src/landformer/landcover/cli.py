"""``landformer landcover ...``: the land-cover pipeline's sub-commands (thin shells over its Python API)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from landformer.core.commands import (
    Formatter,
    add_command,
    add_group,
    add_recipe_arguments,
    add_training_flags,
    recipe_overrides,
    recipe_printed,
)
from landformer.core.errors import UserError
from landformer.core.train import add_resume_argument

# Temperature of sampled inpainting fills: below 1, a fill favours the likeliest class of each hidden pixel a
# little more, which is what accuracy against the truth rewards (chosen on validation chips, bench_landcover_quality).
INPAINT_TEMPERATURE = 0.3
MODEL_HELP = "run folder of `landcover train`, its model.safetensors, or igbp (the packaged real-IGBP model)"


# Spelled out here rather than imported from landcover.baselines, whose imports would slow every --help.
INFO_BASELINES = {
    "context": "causal-context model: class counts given the W, N, NW, NE neighbours (chip edge and nodata: "
    "'outside'), fitted on the train split, add-1/2 smoothing, raster order",
    "class_entropy": "i.i.d. pixels with the test chips' own class frequencies",
    "CODEC": "gzip, bz2, lzma, png, webp (lossless): all test chips in one stream or mosaic, headers paid once",
    "CODEC_per_chip": "the same codecs on each chip alone, headers included",
    "test chips": "exact duplicates, and chips sharing a pixel with a chip kept before them, are dropped first",
}


class ListFormatter(argparse.RawDescriptionHelpFormatter, Formatter):
    """``--help`` that keeps the line breaks of the description and epilog (one baseline per line)."""


def add_baselines_epilog(parser: argparse.ArgumentParser, lines: dict[str, str]) -> None:
    """List ``name: what it is`` under the arguments of ``parser``'s ``--help``, one per line."""
    width = max(map(len, lines))
    parser.epilog = "baselines:\n" + "\n".join(f"  {name:<{width}}  {text}" for name, text in lines.items())
    parser.formatter_class = ListFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    from landformer.landcover.change_cli import add_change_commands  # it builds on the helpers below
    from landformer.landcover.cli_apps import add_app_commands  # it builds on the helpers below

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
    from landformer.landcover.train import train_landcover

    recipe = load_config(LandCoverRecipe, args.config, recipe_overrides(args))
    if args.chips is not None:
        recipe.data.chips, recipe.data.world = args.chips, None
    if args.world is not None:
        recipe.data.world, recipe.data.chips = args.world, None
    if recipe_printed(args, recipe):
        return
    summary = train_landcover(recipe, args.out, resume=args.resume)
    val = summary["val_loss_nats"]
    val_text = f"; validation loss {val:.4f} nats/pixel" if val is not None else ""
    print(f"trained {summary['global_step']} steps in {summary['fit_seconds']} s{val_text}")
    print(f"run folder {summary['run_dir']}; model {summary['model']}")


# ------------------------------------------------------------------ arguments shared by the commands on a model


def add_model_arguments(parser: argparse.ArgumentParser, out_help: str, threads: int = 1) -> None:
    """--model, --out, --seed, --device and --threads: every command that runs a trained model takes them."""
    parser.add_argument("--model", type=Path, required=True, help=MODEL_HELP)
    parser.add_argument("--out", type=Path, required=True, help=out_help)
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for orders, masks and sampling (same seed, same outputs)"
    )
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    parser.add_argument(
        "--threads",
        type=int,
        default=threads,
        help="torch CPU threads (0: torch's default; tiny models run fastest on 1)",
    )


def add_chips_argument(
    parser: argparse.ArgumentParser,
    help: str = "chip file (.npz) whose test split is used (default: the chips the model was trained on)",
    required: bool = False,
) -> None:
    parser.add_argument("--chips", type=Path, default=None, required=required, help=help)


def add_decoding_arguments(
    parser: argparse.ArgumentParser, steps: bool = True, top_k: bool = False, top_p: bool = False
) -> None:
    """--steps (parallel decoding), --temperature and optionally --top-k and --top-p."""
    if steps:
        parser.add_argument(
            "--steps",
            type=int,
            default=None,
            help="parallel decoding in this many steps (cosine schedule); default: one pixel per step (KV cache)",
        )
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (> 0)")
    if top_k:
        parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely classes only")
    if top_p:
        parser.add_argument("--top-p", type=float, default=None, help="sample from the smallest set reaching this mass")


def add_batch_size_argument(parser: argparse.ArgumentParser, default: int, what: str = "maps") -> None:
    parser.add_argument("--batch-size", type=int, default=default, help=f"{what} processed at once")


def add_nodata_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nodata",
        choices=["keep", "draw"],
        default="keep",
        help="nodata pixels of the input outside the redrawn part: keep them as nodata (told to the model, "
        "returned as nodata) or draw them like the rest (gap filling)",
    )


def check_at_least(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise UserError(f"{name} must be at least {minimum}, got {value}")


def use_device_and_threads(args: argparse.Namespace) -> None:
    """Check --device, --threads (and --batch-size where there is one) and apply --threads, before anything loads
    a model."""
    import torch

    from landformer.core.train import check_device

    check_device(args.device)
    check_at_least("--threads", args.threads, 0)
    check_at_least("--batch-size", getattr(args, "batch_size", None))
    if args.threads > 0:
        torch.set_num_threads(args.threads)


def _register_sampling(group: argparse._SubParsersAction) -> None:
    sample = add_command(group, "sample", "generate maps from scratch (PNG grid, npz, GeoTIFFs)", run_sample)
    add_model_arguments(sample, "folder for samples.png, samples.npz (and sample_XXX.tif)")
    sample.add_argument("--n", type=int, default=16, help="number of maps")
    add_decoding_arguments(sample, top_k=True, top_p=True)
    sample.add_argument(
        "--guidance", type=float, default=0.0, help="classifier-free guidance w: cond + w (cond - null); 0 is off"
    )
    add_chips_argument(sample)
    sample.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="raster to place samples on (random windows, written as GeoTIFFs); for a model conditioned on "
        "covariates its bands are the covariates (e.g. the DEM)",
    )
    sample.add_argument(
        "--unconditional", action="store_true", help="sample a conditioned model with its null conditioning"
    )
    add_batch_size_argument(sample, 64)

    animate = add_command(
        group, "animate", "GIF of a grid of maps generated pixel by pixel in random order", run_animate
    )
    add_model_arguments(animate, "folder for animation.gif and final.png")
    animate.add_argument("--nrows", type=int, default=3, help="rows of maps")
    animate.add_argument("--ncols", type=int, default=3, help="columns of maps")
    add_decoding_arguments(animate, steps=False)
    animate.add_argument("--fps", type=float, default=30.0, help="frames (pixels) per second")
    add_chips_argument(animate)
    animate.add_argument(
        "--unconditional", action="store_true", help="animate a conditioned model with its null conditioning"
    )

    inpaint = add_command(group, "inpaint", "hide pixels of test chips and generate them from the rest", run_inpaint)
    add_model_arguments(inpaint, "folder for inpaint.png, inpaint.npz and inpaint.json")
    add_chips_argument(inpaint)
    inpaint.add_argument(
        "--mask",
        default="box",
        help="box (centred square), random (scattered pixels) or a mask raster of one chip's size (nonzero = hide)",
    )
    inpaint.add_argument("--ratio", type=float, default=0.5, help="share of pixels hidden by box and random masks")
    inpaint.add_argument("--n", type=int, default=16, help="number of test chips")
    add_decoding_arguments(inpaint, top_k=True, top_p=True)
    add_nodata_argument(inpaint)

    evaluate = add_command(
        group, "inpaint-eval", "inpainting accuracy and log-loss vs mask ratio, against two baselines", run_inpaint_eval
    )
    add_model_arguments(evaluate, "folder for inpaint_eval.json and inpaint_eval.png")
    add_chips_argument(evaluate)
    evaluate.add_argument(
        "--ratios", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9], help="mask ratios to evaluate"
    )
    evaluate.add_argument("--n", type=int, default=64, help="number of test chips")
    evaluate.add_argument("--mask", choices=["random", "box"], default="random", help="kind of mask")
    evaluate.add_argument(
        "--steps", type=int, default=None, help="decoding steps of the sampled completion (default: one per pixel)"
    )
    evaluate.add_argument(
        "--temperature",
        type=float,
        default=INPAINT_TEMPERATURE,
        help="softmax temperature of the sampled completion (chosen on validation chips, see README)",
    )
    add_batch_size_argument(evaluate, 64, "chips")


def _register_scoring(group: argparse._SubParsersAction) -> None:
    score = add_command(
        group, "perplexity", "held-out log-likelihood in random and raster orders (nats, bits)", run_perplexity
    )
    info = add_command(
        group,
        "info",
        "bits per pixel of the model vs a causal-context model, class entropy and compressors (fair test chips)",
        run_info,
    )
    add_baselines_epilog(info, INFO_BASELINES)
    for parser, out_help, n_help in (
        (score, "folder for perplexity.json", "score only the first N test chips (default: all)"),
        (info, "folder for info.json and info.png", "use only the first N test chips (default: all)"),
    ):
        add_model_arguments(parser, out_help)
        add_chips_argument(parser)
        parser.add_argument("--orders", type=int, default=8, help="random orders to average the model's bits over")
        parser.add_argument("--n", type=int, default=None, help=n_help)
        add_batch_size_argument(parser, 64, "chips")


def run_sample(args: argparse.Namespace) -> None:
    from landformer.landcover.sample import sample_maps

    use_device_and_threads(args)
    summary = sample_maps(
        args.model,
        args.out,
        n=args.n,
        steps=args.steps,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        guidance=args.guidance,
        chips=args.chips,
        reference=args.reference,
        unconditional=args.unconditional,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(f"{summary['n']} samples (conditioning: {summary['conditioning']}) in {args.out}")
    print(f"grid: {summary['png']}; arrays: {summary['npz']}")
    if summary["geotiffs"]:
        print(f"GeoTIFFs: {len(summary['geotiffs'])} files, e.g. {summary['geotiffs'][0]}")


def run_animate(args: argparse.Namespace) -> None:
    from landformer.landcover.sample import animate

    use_device_and_threads(args)
    summary = animate(
        args.model,
        args.out,
        nrows=args.nrows,
        ncols=args.ncols,
        temperature=args.temperature,
        fps=args.fps,
        chips=args.chips,
        unconditional=args.unconditional,
        seed=args.seed,
        device=args.device,
    )
    print(f"animation ({summary['frames']} frames): {summary['gif']}; last frame: {summary['png']}")


def run_inpaint(args: argparse.Namespace) -> None:
    from landformer.landcover.sample import inpaint

    use_device_and_threads(args)
    summary = inpaint(
        args.model,
        args.chips,
        args.out,
        mask=args.mask,
        ratio=args.ratio,
        n=args.n,
        steps=args.steps,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        device=args.device,
        keep_nodata=args.nodata == "keep",
    )
    print(
        f"inpainted {summary['n']} chips ({summary['hidden_fraction']:.0%} hidden): accuracy on hidden pixels "
        f"{summary['accuracy_hidden']:.3f}"
    )
    print(f"panel: {summary['png']}; arrays: {summary['npz']}")


def run_inpaint_eval(args: argparse.Namespace) -> None:
    from landformer.landcover.sample import inpaint_eval

    use_device_and_threads(args)
    summary = inpaint_eval(
        args.model,
        args.chips,
        args.out,
        ratios=tuple(args.ratios),
        n=args.n,
        mask=args.mask,
        steps=args.steps,
        temperature=args.temperature,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
    )
    print("ratio  model  sample  majority  nearest   (accuracy on hidden pixels; log-loss in nats)")
    for row in summary["rows"]:
        print(
            f"{row['ratio']:5.2f}  {row['model_accuracy']:.3f}  {row['model_sample_accuracy']:.3f}   "
            f"{row['majority_accuracy']:.3f}     {row['nearest_accuracy']:.3f}     "
            f"log-loss {row['model_log_loss']:.3f} / {row['majority_log_loss']:.3f} / {row['nearest_log_loss']:.3f}"
        )
    print(f"results: {Path(args.out) / 'inpaint_eval.json'}; plot: {summary['png']}")


def _scoring_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """Apply --device/--threads; the keyword arguments that perplexity and info both take from the command line."""
    use_device_and_threads(args)
    return {
        "chips": args.chips,
        "out": args.out,
        "orders": args.orders,
        "n": args.n,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "device": args.device,
    }


def run_perplexity(args: argparse.Namespace) -> None:
    from landformer.landcover.sample import perplexity

    s = perplexity(args.model, **_scoring_arguments(args))
    print(
        f"{s['chips']} ({s['pixels']} pixels): random orders {s['random_nats']:.4f} nats = {s['random_bits']:.4f} "
        f"bits/pixel (perplexity {s['random_perplexity']:.3f}); raster order {s['raster_nats']:.4f} nats = "
        f"{s['raster_bits']:.4f} bits/pixel"
    )
    print(f"results: {s['json']}")


def run_info(args: argparse.Namespace) -> None:
    from landformer.landcover.sample import information_content

    s = information_content(args.model, **_scoring_arguments(args))
    for note in s["notes"]:
        print(f"note: {note}")
    for name, bits in sorted(s["bits_per_pixel"].items(), key=lambda item: item[1]):
        print(f"{name:20s} {bits:.4f} bits/pixel")
    if s["ratio_to_context"] is not None:
        print(f"model / context model: {s['ratio_to_context']:.3f} (random orders; below 1 beats four neighbours)")
    print(f"results: {s['json']}; chart: {s['png']}")
