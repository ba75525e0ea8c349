"""``landformer embeddings ...``: the embeddings pipeline's sub-commands (thin shells over its Python API).

- ``embeddings make-dataset``  the default data: city tiles from packaged real layers, or synthetic-world tiles
- ``embeddings train --stage pretrain``  stage 1, MAE -> encoder.safetensors
- ``embeddings train --stage sft``       stage 2, regression head (+ encoder) -> model.safetensors, vs ridge/kNN
- ``embeddings train --stage dpo``       stage 3, DPO of the Gaussian head against the SFT model
  (``pretrain``, ``sft`` and ``dpo`` are deprecated aliases of these, kept for one release)
- ``embeddings evaluate``      baselines and any sft/dpo runs on the held-out split: table, scatter, predictions
- ``embeddings pca``           route B: PCA 64 -> 3 fitted on training pixels, and a 3-channel copy of the data
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from landformer.core.commands import (
    add_alias,
    add_command,
    add_config_flags,
    add_group,
    add_recipe_arguments,
    add_training_flags,
    recipe_overrides,
    recipe_printed,
)
from landformer.core.config import load_config
from landformer.core.errors import UserError
from landformer.core.train import add_resume_argument
from landformer.embeddings.config import DataConfig, EmbeddingsConfig

DEFAULT_CONFIG_NOTE = "built-in defaults, the same as configs/embeddings_tiny.yaml"
STAGES = {
    "pretrain": "stage 1, MAE pretraining of the encoder",
    "sft": "stage 2, fine-tune a regression head (and the encoder), scored against ridge/kNN",
    "dpo": "stage 3, DPO against the frozen SFT model (Gaussian head, or dpo.route=text via trl)",
}
DATA_NOTE = "default: the recipe's data, else the city dataset in runs/embeddings/data (built on first use)"


def register(subparsers: argparse._SubParsersAction) -> None:
    group = add_group(
        subparsers,
        "embeddings",
        "64-channel satellite-embedding models: MAE, Qwen-VL towers, regression, preference optimization",
    )

    make = add_command(
        group,
        "make-dataset",
        "build the default embedding dataset (real cities or a synthetic world)",
        run_make_dataset,
    )
    make.add_argument(
        "--source",
        choices=("cities", "world"),
        default="cities",
        help="cities: tiles around real cities, target log population; world: synthetic HM growth",
    )
    make.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    make.add_argument("--n-cities", type=int, default=3000, help="cities: tiles to build")
    make.add_argument("--tile-size", type=int, default=None, help="pixels per tile side (cities 16, world 16)")
    make.add_argument("--pixel-arcsec", type=int, default=60, help="cities: pixel size, a multiple of 30 arc-seconds")
    make.add_argument("--seed", type=int, default=0, help="cities: which cities are drawn; world: the world's seed")
    make.add_argument("--projection-seed", type=int, default=0, help="seed of the fixed features -> 64-d projection")
    make.add_argument("--noise", type=float, default=0.05, help="per-pixel noise added before normalizing")
    make.add_argument("--world", type=Path, default=None, help="world: an existing `landformer synth world` folder")
    make.add_argument(
        "--world-size", type=int, default=256, help="world: side of the world built when --world is absent"
    )

    train = add_command(
        group, "train", "train a stage: " + "; ".join(f"{k}: {v}" for k, v in STAGES.items()), run_train
    )
    _add_training_arguments(train, None)
    for stage in STAGES:
        _add_training_arguments(
            add_alias(group, stage, f"embeddings train --stage {stage}", run_train, stage=stage), stage
        )

    evaluate = add_command(group, "evaluate", "score ridge, kNN and sft/dpo runs on the held-out split", run_evaluate)
    evaluate.add_argument("--runs", type=Path, nargs="+", required=True, help="sft/dpo run folders to compare")
    evaluate.add_argument("--out", type=Path, required=True, help="folder for metrics.json, comparison.md, scatter.png")
    evaluate.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    _add_data_arguments(evaluate, "default: the data of the first run", section="")

    pca = add_command(
        group, "pca", "fit PCA 64 -> 3 on training pixels and write a 3-channel copy of the data", run_pca
    )
    pca.add_argument("--out", type=Path, required=True, help="folder for pca.json/.npz and the 3-channel dataset")
    add_recipe_arguments(pca, DEFAULT_CONFIG_NOTE)
    pca.add_argument("--fit", type=Path, default=None, help="apply this pca.json instead of fitting a new one")
    pca.add_argument("--max-pixels", type=int, default=200_000, help="training pixels sampled for the fit")
    pca.add_argument("--seed", type=int, default=0, help="seed of the pixel sample")
    pca.add_argument("--no-convert", action="store_true", help="only fit and save the PCA")
    _add_data_arguments(pca, DATA_NOTE)


def _add_training_arguments(parser: argparse.ArgumentParser, stage: str | None) -> None:
    """The arguments of ``embeddings train``; an alias with a fixed ``stage`` has no --stage and only its own
    stage's arguments."""
    if stage is None:
        parser.add_argument("--stage", choices=list(STAGES), default=None, help="pretrain, sft or dpo")
    add_recipe_arguments(parser, DEFAULT_CONFIG_NOTE)
    add_training_flags(parser)
    parser.add_argument("--out", type=Path, required=True, help="run folder for checkpoints, model and pictures")
    _add_data_arguments(parser, DATA_NOTE)
    if stage in (None, "sft"):
        parser.add_argument(
            "--init",
            type=Path,
            default=None,
            help="--stage sft: pretrain run folder (or its encoder.safetensors) to start the encoder from",
        )
    if stage in (None, "dpo"):
        parser.add_argument(
            "--sft", type=Path, required=stage == "dpo", help="--stage dpo: sft run folder (or its model.safetensors)"
        )
    add_resume_argument(parser)


def _add_data_arguments(parser: argparse.ArgumentParser, note: str, section: str = "data") -> None:
    """The data source flags, and the label-column flags of :class:`DataConfig` (under ``section`` of the recipe)."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dataset", type=Path, default=None, help=f"dataset folder with dataset.json ({note})")
    source.add_argument("--tiles", type=Path, default=None, help="folder of <id>.tif/.npy tiles or a tiles.npz bundle")
    parser.add_argument("--labels", type=Path, default=None, help="CSV or XLSX with one row per tile (with --tiles)")
    parser.add_argument("--next-tiles", type=Path, default=None, help="folder of the following year's tiles")
    add_config_flags(parser, DataConfig, section)


def _data_given(args: argparse.Namespace) -> bool:
    return args.dataset is not None or args.tiles is not None


def _apply_data_arguments(data: Any, args: argparse.Namespace) -> None:
    """Put the command line's data options into a DataConfig (a given source replaces the recipe's)."""
    if (args.tiles is None) != (args.labels is None):
        raise UserError("--tiles and --labels go together: give both")
    if args.next_tiles is not None and args.tiles is None:
        raise UserError("--next-tiles goes with --tiles and --labels")
    if args.dataset is not None:
        data.dataset, data.tiles, data.labels, data.next_tiles = args.dataset, None, None, None
    if args.tiles is not None:
        data.dataset, data.tiles, data.labels, data.next_tiles = None, args.tiles, args.labels, args.next_tiles


def _recipe(args: argparse.Namespace, train_section: str | None = None) -> Any:
    """The recipe with ``--set`` and the data flags applied, and the training flags on ``train_section``."""
    overrides = recipe_overrides(args, train_section) if train_section else recipe_overrides(args)
    config = load_config(EmbeddingsConfig, args.config, overrides)
    _apply_data_arguments(config.data, args)
    return config


def _print_metrics(summary: dict[str, Any]) -> None:
    from landformer.embeddings.evaluate import comparison_table

    print(comparison_table(summary["metrics"], "test" if "test" in next(iter(summary["metrics"].values())) else "val"))


def run_make_dataset(args: argparse.Namespace) -> None:
    from landformer.embeddings.make_dataset import (
        CityDatasetConfig,
        WorldDatasetConfig,
        make_city_dataset,
        make_world_dataset,
    )

    if args.source == "cities":
        if args.world is not None:
            raise UserError("--world goes with --source world")
        config = CityDatasetConfig(
            n_cities=args.n_cities,
            tile_size=args.tile_size or 16,
            pixel_arcsec=args.pixel_arcsec,
            noise=args.noise,
            seed=args.seed,
            projection_seed=args.projection_seed,
        )
        path = make_city_dataset(args.out, config)
    else:
        world = args.world
        if world is None:
            from landformer.synth.world import make_world

            world = make_world(args.out / "world", size=args.world_size, seed=args.seed).folder
        config = WorldDatasetConfig(
            tile_size=args.tile_size or 16, noise=args.noise, projection_seed=args.projection_seed
        )
        path = make_world_dataset(args.out, world, config)
    meta = json.loads(path.read_text())
    print(f"wrote {meta['count']} tiles of {meta['tile_size']} px ({meta['kind']}); description: {path}")


def run_train(args: argparse.Namespace) -> None:
    stage = args.stage
    if stage is None:
        raise UserError("embeddings train: choose --stage pretrain, sft or dpo")
    for flag, owner in (("init", "sft"), ("sft", "dpo")):
        if getattr(args, flag, None) is not None and stage != owner:
            raise UserError(f"--{flag} goes with --stage {owner}")
    config = _recipe(args, f"train_{stage}")
    if recipe_printed(args, config):
        return
    if stage == "dpo" and args.sft is None:
        raise UserError("--stage dpo needs --sft: the sft run to improve")
    from landformer.embeddings.train import train

    init, sft = getattr(args, "init", None), getattr(args, "sft", None)
    summary = train(config, args.out, resume=args.resume, stage=stage, init=init, sft=sft)
    {"pretrain": _print_pretrain, "sft": _print_sft, "dpo": _print_dpo}[stage](summary)


def _print_pretrain(summary: dict[str, Any]) -> None:
    print(f"pretrained {summary['global_step']} steps in {summary['fit_seconds']} s; val loss {summary['val_loss']}")
    print(f"encoder: {summary['encoder']}")
    print(f"reconstructions: {summary['reconstructions']}")


def _print_sft(summary: dict[str, Any]) -> None:
    print(f"fine-tuned {summary['global_step']} steps in {summary['fit_seconds']} s; model {summary['model']}")
    _print_metrics(summary)
    print(f"scatter: {summary['scatter']}")


def _print_dpo(summary: dict[str, Any]) -> None:
    if "text_model" in summary:
        print(
            f"text-route DPO: {summary['global_step']} steps on {summary['n_train_pairs']} pairs, "
            f"train loss {summary['train_loss']:.4f}; model {summary['text_model']}"
        )
        for split, scores in summary["generated_after"].items():
            before = summary["generated_before"][split]
            print(
                f"{split}: numbers parsed {before['parsed']}/{before['n']} -> {scores['parsed']}/{scores['n']}, "
                f"R2 {before.get('r2', float('nan')):.4f} -> {scores.get('r2', float('nan')):.4f}"
            )
        return
    print(f"DPO {summary['global_step']} steps on {summary['n_pairs']} pairs in {summary['fit_seconds']} s")
    _print_metrics(summary)
    for split, row in summary["sft_vs_dpo"].items():
        print(f"{split}: R2 sft {row['sft_r2']:.4f} -> dpo {row['dpo_r2']:.4f} ({row['change']:+.4f})")


def run_evaluate(args: argparse.Namespace) -> None:
    from landformer.embeddings.evaluate import evaluate_runs

    data = None
    if _data_given(args):
        data = load_config(DataConfig, None, recipe_overrides(args))
        _apply_data_arguments(data, args)
    result = evaluate_runs(args.runs, args.out, data_config=data, device=args.device)
    print(result["table"])
    for name, path in result["files"].items():
        print(f"{name}: {path}")


def run_pca(args: argparse.Namespace) -> None:
    from landformer.embeddings.data import load_data, tile_source
    from landformer.embeddings.pca import convert_dataset, fit_pca, load_pca, save_pca

    config = _recipe(args)
    if recipe_printed(args, config):
        return
    dataset = load_data(config.data)
    if args.fit is not None:
        pca = load_pca(args.fit)
    else:
        pca = fit_pca(dataset, max_pixels=args.max_pixels, seed=args.seed)
        json_path, npz_path = save_pca(pca, args.out / "pca.json")
        print(f"PCA fitted on {pca.n_pixels} training pixels: {json_path} (+ {npz_path.name})")
    ratios = ", ".join(f"{value:.1%}" for value in pca.explained_variance_ratio)
    print(f"explained variance of the 3 components: {ratios}")
    if not args.no_convert:
        path = convert_dataset(dataset, pca, tile_source(config.data).labels, args.out / "data")
        print(f"3-channel dataset: {path} (train on it with --set encoder.in_channels=3)")
