"""Command-line options of the land-cover commands, and the argparse helpers ``cli.py``, ``change_cli.py`` and
``cli_apps.py`` share.

A command on a trained model is a Python function plus an options dataclass: each field is a flag
(:func:`~landformer.core.config.option`) and reaches the function by name (:func:`call_with_options`). The helpers
live apart from ``cli.py`` so the command modules import them from one place instead of from each other, which
made an import circle. Nothing heavy is imported here: ``landformer --help`` loads this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from landformer.core.commands import Formatter, add_config_flags, recipe_overrides
from landformer.core.config import config_flags, load_config, option
from landformer.core.errors import UserError
from landformer.core.train import check_device
from landformer.landcover.config import CHANGE_DRAWS

T = TypeVar("T")
R = TypeVar("R")

MODEL_HELP = "run folder of `landcover train`, its model.safetensors, or igbp (the packaged real-IGBP model)"


class ListFormatter(argparse.RawDescriptionHelpFormatter, Formatter):
    """``--help`` that keeps the line breaks of the description and epilog (one baseline per line)."""


def add_baselines_epilog(parser: argparse.ArgumentParser, lines: dict[str, str]) -> None:
    """List ``name: what it is`` under the arguments of ``parser``'s ``--help``, one per line."""
    width = max(map(len, lines))
    parser.epilog = "baselines:\n" + "\n".join(f"  {name:<{width}}  {text}" for name, text in lines.items())
    parser.formatter_class = ListFormatter


def check_at_least(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise UserError(f"{name} must be at least {minimum}, got {value}")


def use_device_and_threads(args: argparse.Namespace | ModelOptions) -> None:
    """Check --device, --threads (and --batch-size where there is one) and apply --threads, before anything loads
    a model."""
    import torch  # here, not at the top: this module is loaded by every `landformer --help`

    check_device(args.device)
    check_at_least("--threads", args.threads, 0)
    check_at_least("--batch-size", getattr(args, "batch_size", None))
    if args.threads > 0:
        torch.set_num_threads(args.threads)


# --------------------------------------------------------------- the options of the commands on a trained model
# Each command's options are one dataclass: its fields are the command's flags (core.config.option) and are passed
# by name to the Python function the command runs (call_with_options), so no command lists them twice.

OUT_HELP = "folder for the outputs"
THREADS_HELP = "torch CPU threads (0: torch's default; tiny models run fastest on 1)"
CHIPS_HELP = "chip file (.npz) whose test split is used (default: the chips the model was trained on)"
STEPS_HELP = "parallel decoding in this many steps (cosine schedule); default: one pixel per step (KV cache)"
# Temperature of sampled inpainting fills: below 1, a fill favours the likeliest class of each hidden pixel a
# little more, which is what accuracy against the truth rewards (chosen on validation chips, bench_landcover_quality).
INPAINT_TEMPERATURE = 0.3


@dataclass(kw_only=True)
class ModelOptions:
    """What every command that runs a trained model takes."""

    model: Path = option(help=MODEL_HELP)
    out: Path = option(help=OUT_HELP)
    seed: int = option(0, help="seed for orders, masks and sampling (same seed, same outputs)")
    device: str = option("cpu", help="torch device: cpu, cuda, cuda:1, mps")
    threads: int = option(1, help=THREADS_HELP)


@dataclass(kw_only=True)
class SampleOptions(ModelOptions):
    out: Path = option(help="folder for samples.png, samples.npz (and sample_XXX.tif)")
    n: int = option(16, help="number of maps")
    steps: int | None = option(None, help=STEPS_HELP)
    temperature: float = option(1.0, help="softmax temperature (> 0)")
    top_k: int | None = option(None, help="sample among the k most likely classes only")
    top_p: float | None = option(None, help="sample from the smallest set reaching this mass")
    guidance: float = option(0.0, help="classifier-free guidance w: cond + w (cond - null); 0 is off")
    chips: Path | None = option(None, help=CHIPS_HELP)
    reference: Path | None = option(
        None,
        help="raster to place samples on (random windows, written as GeoTIFFs); for a model conditioned on "
        "covariates its bands are the covariates (e.g. the DEM)",
    )
    unconditional: bool = option(False, help="sample a conditioned model with its null conditioning")
    batch_size: int = option(64, help="maps processed at once")


@dataclass(kw_only=True)
class AnimateOptions(ModelOptions):
    out: Path = option(help="folder for animation.gif and final.png")
    nrows: int = option(3, help="rows of maps")
    ncols: int = option(3, help="columns of maps")
    temperature: float = option(1.0, help="softmax temperature (> 0)")
    fps: float = option(30.0, help="frames (pixels) per second")
    chips: Path | None = option(None, help=CHIPS_HELP)
    unconditional: bool = option(False, help="animate a conditioned model with its null conditioning")


@dataclass(kw_only=True)
class InpaintOptions(ModelOptions):
    out: Path = option(help="folder for inpaint.png, inpaint.npz and inpaint.json")
    chips: Path | None = option(None, help=CHIPS_HELP)
    mask: str = option(
        "box",
        help="box (centred square), random (scattered pixels) or a mask raster of one chip's size (nonzero = hide)",
    )
    ratio: float = option(0.5, help="share of pixels hidden by box and random masks")
    n: int = option(16, help="number of test chips")
    steps: int | None = option(None, help=STEPS_HELP)
    temperature: float = option(1.0, help="softmax temperature (> 0)")
    top_k: int | None = option(None, help="sample among the k most likely classes only")
    top_p: float | None = option(None, help="sample from the smallest set reaching this mass")
    nodata: Literal["keep", "draw"] = option(
        "keep",
        help="nodata pixels of the input outside the redrawn part: keep them as nodata (told to the model, "
        "returned as nodata) or draw them like the rest (gap filling)",
    )


@dataclass(kw_only=True)
class InpaintEvalOptions(ModelOptions):
    out: Path = option(help="folder for inpaint_eval.json and inpaint_eval.png")
    chips: Path | None = option(None, help=CHIPS_HELP)
    ratios: tuple[float, ...] = option((0.1, 0.3, 0.5, 0.7, 0.9), help="mask ratios to evaluate")
    n: int = option(64, help="number of test chips")
    mask: Literal["random", "box"] = option("random", help="kind of mask: random or box")
    steps: int | None = option(None, help="decoding steps of the sampled completion (default: one per pixel)")
    temperature: float = option(
        INPAINT_TEMPERATURE,
        help="softmax temperature of the sampled completion (chosen on validation chips, see README)",
    )
    batch_size: int = option(64, help="chips processed at once")


@dataclass(kw_only=True)
class PerplexityOptions(ModelOptions):
    out: Path = option(help="folder for perplexity.json")
    chips: Path | None = option(None, help=CHIPS_HELP)
    orders: int = option(8, help="random orders to average the model's bits over")
    n: int | None = option(None, help="score only the first N test chips (default: all)")
    batch_size: int = option(64, help="chips processed at once")


@dataclass(kw_only=True)
class InfoOptions(PerplexityOptions):
    out: Path = option(help="folder for info.json and info.png")
    n: int | None = option(None, help="use only the first N test chips (default: all)")


def add_options(parser: argparse.ArgumentParser, options: type) -> None:
    """One flag per field of the options dataclass; a field without a default is a required flag."""
    add_config_flags(parser, options)
    required = {"set__" + flag.key for flag in config_flags(options) if flag.default is dataclasses.MISSING}
    for action in parser._actions:
        action.required = action.required or action.dest in required


def parsed_options(args: argparse.Namespace, options: type[T]) -> T:
    """The options dataclass from the flags given (the others keep their defaults), checked like a recipe."""
    return load_config(options, None, recipe_overrides(args))


def call_with_options(function: Callable[..., R], options: Any, **extra: Any) -> R:
    """Call ``function`` with the fields of ``options`` it takes, by name, and ``extra`` (which wins)."""
    accepted = inspect.signature(function).parameters
    values = {field.name: getattr(options, field.name) for field in dataclasses.fields(options)}
    return function(**{name: value for name, value in values.items() if name in accepted}, **extra)


@dataclass(kw_only=True)
class GibbsOptions(ModelOptions):
    out: Path = option(help=OUT_HELP)
    threads: int = option(0, help=THREADS_HELP)
    chips: Path | None = option(None, help="chip file whose chips start the chains (default: noise)")
    split: Literal["test", "train"] = option("test", help="which chips start the chains: test or train")
    chains: int = option(16, help="number of chains, run as one batch")
    sweeps: int = option(20, help="sweeps per chain (each visits every cell once)")
    block_size: int | None = option(
        None,
        help="cells redrawn together, last in the order (default: single cells, exact p(x_i | all others), grouped "
        "so that each update re-encodes about sqrt(N) cells)",
    )
    temperature: float = option(1.0, help="softmax temperature (> 0)")
    init: Literal["chips", "noise"] | None = option(None, help="start from the chips or from random classes (noise)")
    fps: float = option(4.0, help="frames per second of the GIF")


@dataclass(kw_only=True)
class EmbedOptions(ModelOptions):
    out: Path = option(help=OUT_HELP)
    threads: int = option(0, help=THREADS_HELP)
    what: Literal["classes", "positions", "chips"] = option(
        "classes", help="what to project: classes, positions or chips"
    )
    chips: Path | None = option(None, help="chip file (needed for --what chips)")
    n: int = option(512, help="at most this many test chips for --what chips")
    method: Literal["auto", "umap", "pca"] = option("auto", help="auto: UMAP, or PCA for few points; umap; pca")


@dataclass(kw_only=True)
class DevProbOptions(ModelOptions):
    out: Path = option(help=OUT_HELP)
    threads: int = option(0, help=THREADS_HELP)
    raster: Path | None = option(None, help="class raster (codes of the model's legend)")
    window: list[int] | None = option(None, help="pixel window COL ROW W H of --raster to read")
    chips: Path | None = option(None, help="chip file instead of a raster: use test chip --chip-index")
    chip_index: int = option(0, help="test chip to use with --chips")
    region: list[int] | None = option(
        None, help="box COL ROW W H inside the window to re-imagine (default: the central half of the window)"
    )
    samples: int = option(32, help="number of inpainted samples")
    steps: int | None = option(None, help=STEPS_HELP)
    temperature: float = option(1.0, help="softmax temperature (> 0)")
    batch_size: int = option(32, help="samples processed at once")
    nodata: Literal["keep", "draw"] = option(
        "keep",
        help="nodata pixels of the input outside the redrawn part: keep them as nodata (told to the model, "
        "returned as nodata) or draw them like the rest (gap filling)",
    )
    overlap: int | None = option(None, help="cells shared by neighbouring windows (half a chip)")


@dataclass(kw_only=True)
class PanoramaOptions(ModelOptions):
    out: Path = option(help=OUT_HELP)
    threads: int = option(0, help=THREADS_HELP)
    width: int = option(96, help="panorama width in cells")
    height: int | None = option(None, help="panorama height in cells (default: one chip)")
    n: int = option(1, help="number of panoramas, drawn as one batch")
    steps: int | None = option(None, help=STEPS_HELP)
    temperature: float = option(1.0, help="softmax temperature (> 0)")
    top_k: int | None = option(None, help="sample among the k most likely classes only")
    overlap: int | None = option(None, help="cells shared by neighbouring windows (half a chip)")
    fps: float = option(12.0, help="frames per second of the reveal GIF")


@dataclass(kw_only=True)
class EvaluateOptions(ModelOptions):
    out: Path = option(help=OUT_HELP)
    threads: int = option(0, help=THREADS_HELP)
    chips: Path | None = option(
        None, help="chip file whose test chips are the reference (default: the model's training chips)"
    )
    n: int = option(64, help="samples per decoding setting (and test chips)")
    steps: list[int] = option(default_factory=lambda: [16], help="parallel decoding steps to compare with sequential")
    temperature: float = option(1.0, help="softmax temperature (> 0)")
    parallel_temperature: float | None = option(
        None,
        help="temperature of the parallel samples (default: --temperature; README: 0.9 for --model igbp, "
        "whose sequential samples draw at 0.97)",
    )
    batch_size: int = option(64, help="samples processed at once")


@dataclass(kw_only=True)
class ChangeModelOptions(ModelOptions):
    """What change-simulate and change-evaluate share: how p(t2 | t1) is read off the model."""

    out: Path = option(help=OUT_HELP)
    method: Literal["samples", "marginal"] = option(
        "samples",
        help="p(t2 | t1) from --samples draws per chip window, or each pixel's marginal in one pass per window "
        "(samples or marginal)",
    )
    n_samples: int = option(
        CHANGE_DRAWS,
        flag="--samples",
        help="draws of t2 per chip window (--method samples; chosen on validation worlds)",
    )
    steps: int | None = option(None, help=STEPS_HELP)
    temperature: float = option(1.0, help="softmax temperature (> 0)")
    batch_size: int = option(64, help="chip windows processed at once")


@dataclass(kw_only=True)
class ChangeSimulateOptions(ChangeModelOptions):
    """The options of change-simulate; its repeatable --to and --keep are plain argparse flags (a list option
    takes its values after one flag, not one value per flag)."""

    t1: Path = option(help="class raster of the first epoch (model's legend)")
    quantity: Literal["model", "markov"] = option(
        "model",
        help="how many pixels of each transition the map gets: the model's expectation (model), or the Markov "
        "matrix of the training pair's train blocks (markov)",
    )
    tile: int = option(256, help="output tile side in pixels (memory per tile)")


@dataclass(kw_only=True)
class ChangeEvaluateOptions(ChangeModelOptions):
    t1: Path | None = option(
        None,
        help="t1 raster (default: the pair the model trained on, if one); a pair it never saw is cut into its own "
        "train / validation / test blocks",
    )
    t2: Path | None = option(None, help="t2 raster, with --t1 (default: the pair the model trained on, if one)")
    orders: int = option(2, help="random orders averaged for bits per pixel")
    unconditional: Path | None = option(
        None, help="a land-cover model trained without t1 (e.g. on the same t2 chips) to score beside it"
    )
