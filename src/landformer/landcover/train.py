"""``landcover train``: chips (given, cut from a world, or built on the spot from real IGBP land cover or a
synthetic world) -> a run folder.

A run folder holds::

    RUN/config.yaml, run.json        the resolved recipe and how the run was started (core/train.py)
    RUN/chips.npz                    the chips built when no data was given, from
    RUN/chips_igbp.tif               the IGBP land cover of data.igbp_region (data.source: igbp, the default)
    RUN/world/                       or a synthetic world (data.source: synthetic)
    RUN/checkpoints/                 last.ckpt (resume), best.ckpt (lowest validation loss), periodic ones
    RUN/samples/gen_*.png, gt_*.png, pred_*.png   pictures written while training
    RUN/model.safetensors + model.json            the best weights, ready for sample/inpaint/perplexity/...
    RUN/data.json                    legend, chip size, channels and covariate statistics of the chips
    RUN/train_summary.json           steps, losses, throughput, paths

Validation runs on spatial blocks of the train split set aside for it (``data.val_chips`` distinct chips spread
evenly through them, each in a fixed random order; :func:`~landformer.landcover.data.training_chips`), so
``val/loss`` is a held-out negative log-likelihood in nats per pixel and choosing the best checkpoint on it never
looks at the test split. Training chips touching those blocks are left out, and with ``data.deduplicate`` so are
exact copies of another chip.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landformer.core.chips import ChipConfig, ChipSet, as_class_indices, load_chips, make_chips
from landformer.core.errors import UserError
from landformer.core.io import launch_rank, load_torch, read_json, write_json
from landformer.core.legend import Legend, load_legend
from landformer.core.task import task_from_recipe
from landformer.core.train import check_training_checkpoint, fit, last_checkpoint, prepare_run, seed_everything
from landformer.landcover import export
from landformer.landcover.config import LandCoverConfig, LandCoverRecipe
from landformer.landcover.data import (
    ChipSplitReader,
    ChipTensors,
    default_chips_path,
    evaluation_loader,
    spread_indices,
    training_chips,
    training_loader,
)
from landformer.landcover.export import MODEL_FILE, CovariateStats
from landformer.landcover.task import LandCoverTask, SampleImages, Throughput
from landformer.synth.packaged import igbp_chips
from landformer.synth.world import load_world, make_world

DATA_RECORD = "data.json"
VAL_ORDER_SEED = 12345  # fixed visiting orders of the validation chips: losses comparable across runs


def chips_from_world(
    world_folder: Path, out: Path, chip_size: int, stride: int, test_fraction: float, elevation: bool, seed: int
) -> Path:
    """Cut a chip file from a synthetic world's land cover (NLCD legend), with its DEM as channel 1 if asked."""
    world = load_world(world_folder)
    config = ChipConfig(
        class_raster=world.landcover,
        covariates=[world.elevation] if elevation else [],
        legend="nlcd",
        chip_size=chip_size,
        stride=stride,
        test_fraction=test_fraction,
        seed=seed,
    )
    return make_chips(config, out)


def igbp_chip_settings(recipe: LandCoverRecipe) -> dict[str, Any]:
    """The arguments of :func:`landformer.synth.packaged.igbp_chips` that cut this recipe's IGBP chips."""
    data = recipe.data
    return {
        "chip_size": data.chip_size,
        "stride": data.stride,
        "test_fraction": data.test_fraction,
        "seed": recipe.train.seed,
        "bbox": list(data.igbp_region),
        "max_water": data.igbp_max_water,
    }


def resolve_chips(recipe: LandCoverRecipe, run_dir: Path) -> Path:
    """The chip file to train on: the recipe's, one cut from its world, or one built in RUN from IGBP land cover
    (``data.source: igbp``) or from a synthetic world built there (``data.source: synthetic``).

    Chips built here are kept in the run folder and reused on resume, so a resumed run sees the same data.
    """
    data = recipe.data
    if data.chips is not None:
        return Path(data.chips)
    out = default_chips_path(run_dir)
    if out.is_file():
        return out
    world = data.world
    if data.builds_igbp:
        print(f"cutting {data.chip_size} px chips of real IGBP land cover (MODIS MCD12C1 2019) into {out}")
        return igbp_chips(out, **igbp_chip_settings(recipe))
    if world is None:
        world = run_dir / "world"
        if not (world / "world.json").is_file():
            seed = recipe.train.seed if data.world_seed is None else data.world_seed
            print(f"building a {data.world_size} px synthetic world in {world}")
            make_world(world, size=data.world_size, seed=seed)
    return chips_from_world(
        Path(world), out, data.chip_size, data.stride, data.test_fraction, data.covariates, recipe.train.seed
    )


def chips_legend(chips: ChipSet, legend_name: str | None, source: Path):
    """The chips' legend; a file without one (the original 4-array format) needs ``data.legend``."""
    if "legend" in chips.metadata:
        legend = chips.legend
        if legend_name is not None and load_legend(legend_name).codes != legend.codes:
            raise UserError(f"chip file {source} records legend '{legend.name}', but data.legend = {legend_name!r}")
        return legend
    if legend_name is None:
        raise UserError(f"chip file {source} records no legend: set data.legend (e.g. --set data.legend=nlcd)")
    return load_legend(legend_name)


def check_training_chips(chips: ChipSet, n_classes: int, source: Path, covariates: bool) -> None:
    """Class indices inside the legend in both splits; covariate channels present when asked for."""
    for name, data in (("train_data", chips.train_data), ("test_data", chips.test_data)):
        if data.size == 0:
            continue
        classes = data[:, 0]
        finite = classes[np.isfinite(classes)] if classes.dtype.kind == "f" else classes
        bad = np.unique(finite[(finite < -1) | (finite >= n_classes)])
        if bad.size:
            raise UserError(
                f"chip file {source}: {name} holds class values {bad[:10].tolist()} outside the legend's "
                f"indices -1..{n_classes - 1}"
            )
    if len(chips.train_data) == 0:
        raise UserError(f"chip file {source} has no training chips")
    if covariates and chips.train_data.shape[1] < 2:
        raise UserError(f"data.covariates is true but chip file {source} has only the class channel")


def model_config_for(
    recipe: LandCoverRecipe, n_classes: int, chip_size: int, covariate_channels: int
) -> LandCoverConfig:
    """The model shape of the recipe with what the data decide: classes, chip size, covariate channels."""
    return dataclasses.replace(
        recipe.model, n_classes=n_classes, chip_size=chip_size, covariate_channels=covariate_channels
    )


def record_data(run_dir: Path, record: dict[str, Any], resuming: bool) -> None:
    """Write ``RUN/data.json`` (legend, chip size, channels, covariate statistics); on resume, refuse data that
    differ from what the checkpoint was trained on (another legend would silently relabel every class)."""
    path = run_dir / DATA_RECORD
    if resuming and path.is_file():
        earlier = read_json(path, "run data record")
        for key, what in (("legend_codes", "legend codes"), ("chip_size", "chip size"), ("channels", "channels")):
            if earlier.get(key) != record[key]:
                raise UserError(
                    f"cannot resume {run_dir}: its checkpoint was trained on {what} {earlier.get(key)}, the chips "
                    f"{record['chips']} have {record[key]}"
                )
        return
    write_json(path, record)


def _resume_step(run_dir: Path, resume: bool | str | os.PathLike[str]) -> int:
    """The optimiser step a resumed run continues from (0 for a fresh run)."""
    if resume is False:
        return 0
    path = last_checkpoint(run_dir) if resume is True else Path(resume)
    if path is None:
        raise UserError(f"cannot resume: no checkpoint {run_dir / 'checkpoints' / 'last.ckpt'} (train first)")
    return int(load_torch(check_training_checkpoint(path), "checkpoint to resume from")["global_step"])


def load_initial_weights(
    task: LandCoverTask,
    source: str,
    config: LandCoverConfig,
    legend: Legend,
    igbp_split: dict[str, Any] | None = None,
) -> None:
    """Copy the weights of a trained model (``task.init_from``) into ``task``: the second stage of a recipe
    trained in two parts. Its shape and legend must be this run's, or every class would be relabelled; and when
    both runs cut IGBP chips (``igbp_split``: this run's :func:`igbp_chip_settings`), the same ones, or the first
    stage's training chips would sit in this run's test split and its held-out scores would not be held out."""
    initial = export.load(source)
    first_split = initial.metadata.get("extra", {}).get("igbp_chips")
    if igbp_split is not None and first_split is not None and first_split != igbp_split:
        differ = [
            f"{key} {first_split.get(key)!r} (this run {value!r})"
            for key, value in igbp_split.items()
            if first_split.get(key) != value
        ]
        raise UserError(
            f"task.init_from = {source!r} was trained on another split of the IGBP chips: {', '.join(differ)}; "
            "its training chips would be this run's test chips (the chip split's seed is train.seed)"
        )
    if initial.config != config:
        differ = [
            f"{key} {value!r} (this run {getattr(config, key)!r})"
            for key, value in dataclasses.asdict(initial.config).items()
            if getattr(config, key) != value
        ]
        raise UserError(f"task.init_from = {source!r} does not fit this recipe's model: {', '.join(differ)}")
    if initial.legend.codes != legend.codes:
        raise UserError(
            f"task.init_from = {source!r} was trained on legend codes {initial.legend.codes}, these chips have "
            f"{legend.codes}"
        )
    task.model.load_state_dict(initial.model.state_dict())


def train(
    recipe: LandCoverRecipe, run_dir: str | os.PathLike[str], resume: bool | str | os.PathLike[str] = False
) -> dict[str, Any]:
    """Train on the recipe's chips, export the best weights to ``RUN/model.safetensors``; returns a summary
    (also written to ``RUN/train_summary.json``)."""
    start_time = time.perf_counter()
    run_dir = Path(run_dir)
    recipe.validate()
    if resume is False and last_checkpoint(run_dir) is not None:
        # Checked before config.yaml and run.json of the earlier run are overwritten (fit() checks too late).
        raise UserError(
            f"{run_dir} already holds a training run (checkpoints/last.ckpt): resume it (--resume) or choose "
            "another run folder"
        )
    start_step = _resume_step(run_dir, resume)
    prepare_run(run_dir, recipe, "landcover")
    chips_path = resolve_chips(recipe, run_dir)
    chips = load_chips(chips_path)
    legend = chips_legend(chips, recipe.data.legend, chips_path)
    chips = as_class_indices(chips, legend, recipe.data.class_values, setting="data.class_values")
    check_training_chips(chips, legend.n_classes, chips_path, recipe.data.covariates)
    n_covariates = chips.train_data.shape[1] - 1 if recipe.data.covariates else 0
    stats = CovariateStats.fit(chips.train_data[:, 1 : 1 + n_covariates]) if n_covariates else CovariateStats()
    model_config = model_config_for(recipe, legend.n_classes, chips.chip_size, n_covariates)
    record = {
        "chips": str(chips_path),
        "legend": legend.to_dict(),
        "legend_codes": legend.codes,
        "chip_size": chips.chip_size,
        "channels": chips.channel_names[: 1 + n_covariates],
        "covariate_stats": stats.to_dict(),
    }
    record_data(run_dir, record, resuming=resume is not False)

    use_lonlat = recipe.model.use_lonlat
    split = training_chips(chips, recipe.data.deduplicate, recipe.train.seed)
    print(split.describe(len(chips.train_data)))
    if len(split.train) == 0:
        raise UserError(f"chip file {chips_path}: no training chip is left once validation blocks are set aside")
    train_tensors = ChipSplitReader.from_chips(chips, "train", stats, use_lonlat, split.train)  # no copy
    if split.validation is not None:
        has_validation = len(split.validation) > 0
        val_tensors = ChipTensors.from_chips(
            chips, "train", stats, use_lonlat, limit=recipe.data.val_chips, indices=split.validation
        )
    else:
        has_validation = len(chips.test_data) > 0
        val_tensors = ChipTensors.from_chips(
            chips, "test" if has_validation else "train", stats, use_lonlat, limit=recipe.data.val_chips
        )
    training = recipe.train
    batch = recipe.data.batch_size
    conditional = n_covariates > 0 or use_lonlat
    train_loader = training_loader(
        train_tensors,
        batch,
        training.max_steps * training.accumulate_grad_batches,
        training.seed,
        start_step * training.accumulate_grad_batches,
        augment=recipe.data.augment,
        order=model_config.order,
        cond_dropout=model_config.cond_dropout if conditional else 0.0,
        num_workers=recipe.data.num_workers,
    )
    val_loader = evaluation_loader(val_tensors, batch, VAL_ORDER_SEED, model_config.order) if has_validation else None

    if recipe.task.threads:
        torch.set_num_threads(recipe.task.threads)
    seed_everything(training.seed)
    task = task_from_recipe(LandCoverTask, recipe, model_config=dataclasses.asdict(model_config))
    if recipe.task.init_from is not None and resume is False:
        igbp_split = igbp_chip_settings(recipe) if recipe.data.builds_igbp else None
        load_initial_weights(task, recipe.task.init_from, model_config, legend, igbp_split)
    keep = torch.from_numpy(spread_indices(len(val_tensors), recipe.images.n))
    image_chips = ChipTensors(
        val_tensors.labels[keep],
        val_tensors.covariates[keep] if val_tensors.covariates is not None else None,
        val_tensors.lonlat[keep] if val_tensors.lonlat is not None else None,
    )
    throughput = Throughput()
    images = SampleImages(
        run_dir / "samples",
        image_chips,
        legend,
        recipe.images.every_steps,
        recipe.images.steps,
        recipe.images.temperature,
        training.seed,
    )
    with warnings.catch_warnings():
        # The stream shards itself over loader workers (RunStream), so its length is exact; Lightning cannot know.
        warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
        result = fit(task, (train_loader, val_loader), training, run_dir, resume=resume, callbacks=[throughput, images])

    checkpoint = result.load_best_into(task)
    extra = {
        "global_step": result.global_step,
        "checkpoint": str(checkpoint),
        "chips": str(Path(chips_path).resolve()),
        "val_loss": result.metrics.get("val/loss"),
        "use_lonlat": use_lonlat,
        "init_from": recipe.task.init_from,
    }
    if recipe.data.builds_igbp:
        # How to cut the same chips again where the run folder is gone (the packaged model, `--model igbp`).
        extra["igbp_chips"] = igbp_chip_settings(recipe)
    # Every rank of a torchrun or SLURM launch ends with the same weights in the same run folder: rank 0 writes.
    writer = launch_rank() == 0
    model_file = (
        export.save(task.model.cpu(), legend, run_dir, extra, chips.channel_names, stats)
        if writer
        else run_dir / MODEL_FILE
    )
    summary = {
        "run_dir": str(run_dir),
        "model": str(model_file),
        "chips": str(chips_path),
        "checkpoint": str(checkpoint),
        "global_step": result.global_step,
        "metrics": result.metrics,
        "val_loss_nats": result.metrics.get("val/loss"),
        "val_bits_per_pixel": result.metrics.get("val/bits_per_pixel"),
        "train_tokens_per_s": throughput.tokens_per_s,
        "n_parameters": sum(p.numel() for p in task.model.parameters()),
        "n_train_chips": len(train_tensors),
        "n_val_chips": len(val_tensors) if has_validation else 0,
        "training_chips": split.describe(len(chips.train_data)),
        "images": [str(path) for path in images.written[-3:]],
        "fit_seconds": round(result.seconds, 2),
        "seconds": round(time.perf_counter() - start_time, 2),
    }
    if writer:
        write_json(run_dir / "train_summary.json", summary)
    return summary
