"""``landformer terrain ...``: the terrain pipeline's sub-commands (thin shells over its Python API)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from landformer.core.commands import (
    add_alias,
    add_command,
    add_group,
    add_recipe_arguments,
    add_training_flags,
    recipe_overrides,
    recipe_printed,
)
from landformer.core.errors import UserError
from landformer.terrain.scales import EXPAND_SCALES, SCALE_FACTOR

# The packaged recipe each stage starts from when --config is not given.
DEFAULT_RECIPES = {"tokenizer": "terrain_tokenizer_tiny", "maskgit": "terrain_maskgit_tiny"}
CANDIDATES_HELP = (
    "continuations drawn per side, keeping the one that ponds least water along the edge (8: about a quarter "
    "less ponding on held-out Jacksboro, 8x the generation time; default: 1)"
)
NO_DRAIN_HELP = (
    "keep the strips as generated: by default, where a strip closes a valley that reaches the edge, a way out is "
    "cut through the strip so the valley drains instead of ponding against it"
)
STAGES = {
    "tokenizer": "the VQ tokenizer (stage 1)",
    "maskgit": "the MaskGIT generator (stage 2), on a tokenizer's tokens",
}


def _print(summary: dict) -> None:
    print(json.dumps(summary, indent=2, default=str))


def _add_dem_flags(config: Any, args: argparse.Namespace) -> None:
    """``--dem`` adds the user's DEMs to the recipe's sources; ``--no-packaged`` drops the packaged ones."""
    config.data.dems = [*config.data.dems, *(Path(path) for path in args.dem)]
    if args.no_packaged:
        config.data.packaged = []


def _train(args: argparse.Namespace) -> None:
    from landformer.core.config import load_config
    from landformer.terrain.config import MaskGITConfig, TokenizerConfig
    from landformer.terrain.train import train

    if args.stage is None:
        raise UserError("terrain train: choose --stage tokenizer or --stage maskgit")
    if args.stage == "tokenizer" and args.tokenizer is not None:
        raise UserError("--tokenizer goes with --stage maskgit: the tokenizer whose tokens the generator learns")
    overrides = recipe_overrides(args) + ([f"tokenizer={args.tokenizer}"] if args.tokenizer else [])
    recipe_class = TokenizerConfig if args.stage == "tokenizer" else MaskGITConfig
    config = load_config(recipe_class, args.config or DEFAULT_RECIPES[args.stage], overrides)
    _add_dem_flags(config, args)
    if recipe_printed(args, config):
        return
    _print(train(config, args.out, resume=args.resume))
    if args.stage == "tokenizer":
        print(f"tokenizer written to {Path(args.out) / 'tokenizer.safetensors'}")
    else:
        print(f"generator written to {Path(args.out) / 'maskgit.safetensors'}")


def _reconstruct(args: argparse.Namespace) -> None:
    from landformer.terrain.evaluate import reconstruct

    _print(reconstruct(args.tokenizer, args.out, dem=args.dem, count=args.count, seed=args.seed))
    print(f"panel written to {Path(args.out) / 'reconstructions.png'}")


def _map_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of :func:`_add_map_arguments`, as keyword arguments of ``sample`` and ``write_world``."""
    return {
        "seed": args.seed,
        "pixel_size": args.pixel_size,
        "crs": args.crs,
        "origin": tuple(args.origin) if args.origin is not None else None,
        "offset": args.offset,
        "scale": args.scale,
    }


def _sample(args: argparse.Namespace) -> None:
    from landformer.terrain.sample import sample

    summary = sample(
        args.model,
        args.out,
        count=args.count,
        condition_code=args.condition_code,
        tokenizer=args.tokenizer,
        **_map_options(args),
    )
    _print(summary)


def _expand(args: argparse.Namespace) -> None:
    from landformer.terrain.export import load
    from landformer.terrain.outpaint import expand_map

    generator = load(args.model, args.tokenizer)
    amounts = {"right": args.right, "down": args.down, "left": args.left, "up": args.up}
    _print(
        expand_map(
            generator,
            args.dem,
            args.out,
            amounts,
            seed=args.seed,
            block=args.block,
            scales=args.scales,
            candidates=args.candidates,
            drain=args.drain,
        )
    )


def _world(args: argparse.Namespace) -> None:
    from landformer.terrain.export import load
    from landformer.terrain.outpaint import write_world

    if args.threads < 0:
        raise UserError(f"--threads {args.threads}: give a number of threads, or 0 for torch's default")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    generator = load(args.model, args.tokenizer)
    summary = write_world(
        generator, args.out, args.size, condition=args.condition, block=args.block, **_map_options(args)
    )
    _print(summary)


def _evaluate(args: argparse.Namespace) -> None:
    from landformer.terrain.evaluate import evaluate, format_report

    summary = evaluate(
        args.model,
        args.out,
        dem=args.dem,
        amount=args.amount,
        samples=args.samples,
        seed=args.seed,
        scales=args.scales,
        tokenizer=args.tokenizer,
        candidates=args.candidates,
        drain=args.drain,
    )
    print(format_report(summary))
    print(f"evaluation written to {Path(args.out) / 'evaluation.json'}")


def _add_training_arguments(parser: argparse.ArgumentParser, stage: str | None, out: str | None) -> None:
    """The arguments of ``terrain train``; an alias with a fixed ``stage`` has no --stage, and its old default
    run folder ``out``."""
    from landformer.core.train import add_resume_argument

    if stage is None:
        parser.add_argument(
            "--stage", choices=list(STAGES), default=None, help="tokenizer (stage 1) or maskgit (stage 2)"
        )
    recipes = " or ".join(f"{name} for --stage {key}" for key, name in DEFAULT_RECIPES.items())
    add_recipe_arguments(parser, DEFAULT_RECIPES[stage] if stage else recipes)
    add_training_flags(parser)
    parser.add_argument(
        "--dem",
        nargs="+",
        default=[],
        metavar="FILE",
        help="your DEM GeoTIFFs (metres, any GDAL raster), trained on beside the packaged real DEMs",
    )
    parser.add_argument(
        "--no-packaged", action="store_true", help="leave out the packaged DEMs (Jacksboro, topobathy, pvlib)"
    )
    parser.add_argument("--out", default=out, required=out is None, help="run folder")
    if stage != "tokenizer":
        parser.add_argument(
            "--tokenizer", default=None, help="--stage maskgit: tokenizer run folder (overrides the recipe's)"
        )
    add_resume_argument(parser)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="real",
        help="generator run folder, maskgit.safetensors, or a packaged model's name (real: trained on the packaged "
        "real DEMs)",
    )
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer run folder or .safetensors (default: the one it was trained with)"
    )


def _add_map_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same terrain)")
    parser.add_argument(
        "--pixel-size", type=float, default=None, help="pixel size in CRS units (default: the training DEM's)"
    )
    parser.add_argument("--crs", default=None, help="CRS of the GeoTIFF (default: the training DEM's)")
    parser.add_argument(
        "--origin",
        type=float,
        nargs=2,
        default=None,
        metavar=("X", "Y"),
        help="where: top-left corner in CRS units (default: the training DEM's top-left corner)",
    )
    parser.add_argument("--offset", type=float, default=None, help="mean height in m (default: training median)")
    parser.add_argument("--scale", type=float, default=None, help="relief (std) in m (default: training median)")


def register(subparsers: argparse._SubParsersAction) -> None:
    group = add_group(subparsers, "terrain", "VQGAN tokenizer + MaskGIT elevation generator with endless outpainting")

    parser = add_command(group, "train", "train a stage: " + "; ".join(f"{k}: {v}" for k, v in STAGES.items()), _train)
    _add_training_arguments(parser, None, None)

    parser = add_command(group, "reconstruct", "reconstruct DEM tiles through the tokenizer (PNG panels)", _reconstruct)
    parser.add_argument("--tokenizer", default="runs/terrain/tokenizer", help="tokenizer run folder or .safetensors")
    parser.add_argument("--dem", default=None, help="DEM GeoTIFF to reconstruct (default: the run's held-out tiles)")
    parser.add_argument("--count", type=int, default=6, help="tiles to reconstruct")
    parser.add_argument("--seed", type=int, default=0, help="which tiles of the DEM are drawn")
    parser.add_argument("--out", default="runs/terrain/reconstruct", help="output folder")

    parser = add_command(group, "sample", "sample elevation tiles: hillshade PNG grid and GeoTIFF", _sample)
    _add_model_arguments(parser)
    _add_map_arguments(parser)
    parser.add_argument("--count", type=int, default=16, help="tiles to sample")
    parser.add_argument("--condition-code", type=int, default=None, help="condition every token on this raw class code")
    parser.add_argument("--out", default="runs/terrain/samples", help="output folder")

    parser = add_command(group, "expand", "grow a DEM GeoTIFF on any side by fringe-only outpainting", _expand)
    _add_model_arguments(parser)
    parser.add_argument("--dem", required=True, help="DEM GeoTIFF to grow (a sample, a world or your own)")
    for side in ("left", "right", "up", "down"):
        parser.add_argument(f"--{side}", type=int, default=0, help=f"pixels to add on the {side}")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the new terrain")
    parser.add_argument(
        "--scales",
        type=int,
        default=EXPAND_SCALES,
        help=f"scales continued, each {SCALE_FACTOR}x coarser than the last (1: only the map's own)",
    )
    parser.add_argument("--candidates", type=int, default=1, help=CANDIDATES_HELP)
    parser.add_argument("--no-drain", dest="drain", action="store_false", help=NO_DRAIN_HELP)
    parser.add_argument("--block", type=int, default=512, help="pixels per side of each window copied and written")
    parser.add_argument("--out", default="runs/terrain/expanded.tif", help="output GeoTIFF (PNG preview beside it)")

    parser = add_command(
        group,
        "evaluate",
        "realism against held-out tiles and fractal noise, seams, grid, relief, valleys and pits at the edge of an "
        "expanded real DEM, and codebook use",
        _evaluate,
    )
    _add_model_arguments(parser)
    parser.add_argument(
        "--dem", default=None, help="held-out DEM GeoTIFF (default: the east part of Jacksboro, never trained on)"
    )
    parser.add_argument("--amount", type=int, default=64, help="pixels the DEM is grown by on every side")
    parser.add_argument("--samples", type=int, default=64, help="samples compared with the DEM's tiles")
    parser.add_argument("--seed", type=int, default=0, help="random seed of samples and expansion")
    parser.add_argument("--scales", type=int, default=EXPAND_SCALES, help="scales the expansion continues")
    parser.add_argument("--candidates", type=int, default=1, help=CANDIDATES_HELP)
    parser.add_argument("--no-drain", dest="drain", action="store_false", help=NO_DRAIN_HELP)
    parser.add_argument("--out", default="runs/terrain/evaluate", help="output folder")

    parser = add_command(group, "world", "write a large endless-terrain GeoTIFF window by window", _world)
    _add_model_arguments(parser)
    _add_map_arguments(parser)
    parser.add_argument("--size", type=int, default=1024, help="side of the map in pixels")
    parser.add_argument("--condition", default=None, help="categorical raster to condition on (models trained so)")
    parser.add_argument("--block", type=int, default=512, help="pixels per side of each decoded and written block")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default; 1 is fastest on a busy machine)"
    )
    parser.add_argument("--out", default="runs/terrain/world.tif", help="output GeoTIFF (PNG preview beside it)")

    for alias, stage in (("fit-tokenizer", "tokenizer"), ("fit", "maskgit")):
        parser = add_alias(group, alias, f"terrain train --stage {stage}", _train, stage=stage, tokenizer=None)
        _add_training_arguments(parser, stage, f"runs/terrain/{stage}")
