"""``geoloc train``: clean the training labels, then train a region router and one regressor per region.

A run folder holds the bundle :mod:`~landformer.geoloc.export` describes, and around it::

    run_dir/config.yaml, run.json       the resolved recipe and how the run was made
    run_dir/cleaning_report.json        what cleaning dropped, why, and counts per region
    run_dir/cleaning_dropped.csv        the dropped rows, one a line
    run_dir/router/                     Lightning run of the Region_ID classifier
    run_dir/regions/<region>/           Lightning run of the region's regressor

Each region regresses its images' coordinates in its own local frame (centred on the spherical mean of its
cleaned training coordinates; see :mod:`~landformer.geoloc.frames`), scaled by the configured scaler; the
exported weights are those of the best validation loss (the last step when there is no validation data).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from landformer.core.errors import UserError
from landformer.core.io import atomic_path, load_torch, write_json
from landformer.core.task import task_from_recipe
from landformer.core.train import TrainConfig, fit, last_checkpoint, prepare_run, seed_everything
from landformer.geoloc.clean import clean_labels, format_report
from landformer.geoloc.config import GeolocConfig
from landformer.geoloc.data import (
    GeolocDataset,
    ImageStore,
    LabelTable,
    check_images,
    fit_band_normalizer,
    read_filename_list,
    read_labels,
)
from landformer.geoloc.export import (
    FORMAT,
    MANIFEST,
    NETWORK_KEYS,
    NORMALIZATION,
    save,
    save_network,
    save_normalizer,
    save_region,
)
from landformer.geoloc.frames import LocalFrame
from landformer.geoloc.scaler import CoordinateScaler
from landformer.geoloc.task import GeolocTask, load_pretrained_backbone


def _say(message: str) -> None:
    print(f"[geoloc] {message}", flush=True)


def _is_rank_zero() -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0


def folder_names(regions: list[str]) -> dict[str, str]:
    """A distinct, filesystem-safe folder name for every Region_ID (``Europe/West`` -> ``Europe_West``)."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for region in regions:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", region).strip(".") or "region"
        name, suffix = base, 2
        while name.lower() in used:
            name, suffix = f"{base}_{suffix}", suffix + 1
        used.add(name.lower())
        names[region] = name
    return names


def refuse_existing_run(out: Path) -> None:
    """Starting afresh over a finished or interrupted run would overwrite its checkpoints and reports: say so
    before anything is written (the shared trainer would only notice at the first region)."""
    folders = [out / "router", *sorted((out / "regions").glob("*"))]
    taken = [folder for folder in folders if last_checkpoint(folder) is not None]
    if taken:
        raise UserError(
            f"{out} already holds a training run ({taken[0]}/checkpoints/last.ckpt): resume it (--resume) or "
            "choose another --out"
        )


def select_regions(table: LabelTable, config: GeolocConfig) -> tuple[list[str], dict[str, str]]:
    """The regions to train (sorted) and the skipped ones with the reason; a UserError when ``too_few`` is
    ``error`` and a region is short of ``min_samples``, or when no region is left."""
    assert table.regions is not None
    counts: dict[str, int] = {}
    for region in table.regions:
        counts[region] = counts.get(region, 0) + 1
    wanted = config.regions.only or sorted(counts)
    unknown = [region for region in wanted if region not in counts]
    if unknown:
        raise UserError(
            f"regions {unknown} asked for in regions.only have no training images after cleaning "
            f"(regions present: {', '.join(sorted(counts))})"
        )
    chosen, skipped = [], {}
    for region in sorted(wanted):
        if counts[region] >= config.regions.min_samples:
            chosen.append(region)
            continue
        reason = f"{counts[region]} training images after cleaning, fewer than min_samples {config.regions.min_samples}"
        if config.regions.too_few == "error":
            raise UserError(
                f"{table.source}: region {region!r} has {reason}; lower --min-region-samples or use --too-few skip"
            )
        warnings.warn(f"region {region!r} skipped: {reason}", stacklevel=2)
        skipped[region] = reason
    if not chosen:
        raise UserError(f"{table.source}: no region has {config.regions.min_samples} training images after cleaning")
    return chosen, skipped


def _write_dropped_csv(path: Path, dropped: list[dict[str, Any]]) -> None:
    columns = ("filename", "latitude", "longitude", "Region_ID", "reason", "detail")
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(dropped)


def _loaders(
    train_set: Dataset, val_set: Dataset | None, batch_size: int, num_workers: int, weights: np.ndarray | None = None
) -> tuple[DataLoader, DataLoader | None]:
    """Shuffled training batches (the last partial batch dropped when there is more than one batch, so batch
    norm never sees a batch of one), or batches drawn with replacement in proportion to ``weights``, and ordered
    validation batches."""
    common = {"num_workers": num_workers, "persistent_workers": num_workers > 0}
    batch = min(batch_size, len(train_set))
    if weights is None:
        train = DataLoader(train_set, batch_size=batch, shuffle=True, drop_last=len(train_set) > batch_size, **common)
    else:
        sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.float64), len(train_set))
        train = DataLoader(
            train_set, batch_size=batch, sampler=sampler, drop_last=len(train_set) > batch_size, **common
        )
    has_val = val_set is not None and len(val_set) > 0
    val = DataLoader(val_set, batch_size=batch_size, shuffle=False, **common) if has_val else None
    return train, val


def _fit_and_export(
    task: GeolocTask,
    loaders: tuple[DataLoader, DataLoader | None],
    config: GeolocConfig,
    train_config: TrainConfig,
    run_dir: Path,
    resume: bool,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """Train with the shared trainer, then export the best (else last) weights as the folder's network."""
    if config.model.pretrained is not None and not (resume and last_checkpoint(run_dir)):
        unused = load_pretrained_backbone(task, config.model.pretrained)
        _say(f"  loaded {config.model.pretrained} into {task.hparams.backbone} (unused keys: {len(unused)})")
    result = fit(task, loaders, train_config, run_dir, resume=bool(resume and last_checkpoint(run_dir)))
    chosen = result.best_checkpoint or result.last_checkpoint
    record = {
        "steps": result.global_step,
        "seconds": round(result.seconds, 2),
        "checkpoint": str(chosen) if chosen else None,
        "last_val_loss": result.metrics.get("val/loss"),
    }
    if _is_rank_zero():
        if chosen is not None:
            task.load_state_dict(load_torch(chosen)["state_dict"])
        hparams = {key: value for key, value in task.hparams.items() if key in NETWORK_KEYS}
        save_network(run_dir, task.model, {**hparams, **metadata, **record})
    return record


def _task(config: GeolocConfig, backbone: str, in_chans: int, n_outputs: int, mode: str, max_steps: int) -> GeolocTask:
    seed_everything(config.train.seed)
    try:
        return task_from_recipe(
            GeolocTask,
            config,
            sections=("model", "optim"),
            backbone=backbone,
            in_chans=in_chans,
            n_outputs=n_outputs,
            mode=mode,
            max_steps=max_steps,
        )
    except ValueError as err:
        raise UserError(f"model config: {err}") from None


def train(recipe: GeolocConfig, run_dir: str | os.PathLike[str] | None = None, resume: bool = False) -> dict[str, Any]:
    """Run the whole training (see the module docstring) into ``run_dir`` (None: the recipe's ``out``) and return
    the manifest it writes.

    ``resume=True`` continues every region (and the router) from its folder's ``last.ckpt`` where there is one
    and trains the others from the start; finished regions end at once.
    """
    # The saved recipe names the folder the run is in, so it reruns the same run.
    config = dataclasses.replace(recipe, out=Path(recipe.out if run_dir is None else run_dir))
    if not isinstance(resume, bool):
        raise UserError("geoloc train resumes each region from its own folder: use --resume without a checkpoint path")
    data = config.data
    if data.train_csv is None:
        raise UserError("no training labels: give --train-csv (or data.train_csv in the config)")
    train_table = read_labels(data.train_csv, out_of_range=True)  # cleaning drops and reports those
    val_table = read_labels(data.val_csv) if data.val_csv is not None else None
    images = Path(data.images) if data.images is not None else Path(data.train_csv).parent / "images"
    val_images = Path(data.val_images) if data.val_images is not None else images
    if not resume:
        refuse_existing_run(Path(config.out))
    out = prepare_run(config.out, config, "geoloc")
    progress = config.train.progress_bar

    # 1. labels: exclusions and cleaning, fitted on the training labels only
    excluded = read_filename_list(config.clean.exclude_file) if config.clean.exclude_file else set()
    assert train_table.latitude is not None and train_table.longitude is not None and train_table.regions is not None
    keep, report = clean_labels(
        train_table.filenames, train_table.latitude, train_table.longitude, train_table.regions, config.clean, excluded
    )
    if _is_rank_zero():
        write_json(out / "cleaning_report.json", report)
        _write_dropped_csv(out / "cleaning_dropped.csv", report["dropped"])
    _say(f"cleaning {train_table.source} ({report['total']['kept']} of {report['total']['rows']} rows kept):")
    print(format_report(report), flush=True)
    cleaned = train_table.subset(keep)
    regions, skipped = select_regions(cleaned, config)
    cleaned = cleaned.subset(np.isin(np.asarray(cleaned.regions, dtype=object), regions))
    if val_table is not None:
        assert val_table.regions is not None
        usable = np.isin(np.asarray(val_table.regions, dtype=object), regions) & ~np.isin(
            val_table.filenames, list(excluded | set(config.clean.exclude))
        )
        if not usable.all():
            _say(f"{int((~usable).sum())} validation rows are excluded or belong to regions without a model; ignored")
        val_table = val_table.subset(usable)

    # 2. images: every header checked up front, band statistics from the cleaned training images
    bands, height, width = check_images(images, cleaned.filenames, what="training images", progress=progress)
    if val_table is not None and len(val_table):
        check_images(val_images, val_table.filenames, bands=bands, what="validation images", progress=progress)
    shape = (data.image_size, data.image_size) if data.image_size else (height, width)
    normalizer, raw = fit_band_normalizer(images, cleaned.filenames, keep=data.preload, progress=progress)
    train_store = ImageStore(images, cleaned.filenames, normalizer, shape, data.preload, raw, progress)
    del raw
    val_store = (
        ImageStore(val_images, val_table.filenames, normalizer, shape, data.preload, progress=progress)
        if val_table is not None and len(val_table)
        else None
    )
    if _is_rank_zero():
        save_normalizer(out, normalizer)

    region_of_train = np.asarray(cleaned.regions, dtype=object)
    region_of_val = np.asarray(val_table.regions, dtype=object) if val_store is not None else np.array([], dtype=object)
    folders = folder_names(regions)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "bands": bands,
        "band_names": list(normalizer.band_names),
        "image_shape": list(shape),
        "normalization": NORMALIZATION,
        "regions": {},
        "skipped_regions": skipped,
        "router": None,
    }

    # 3. the router: a Region_ID classifier over every trained region
    if config.router.enabled and len(regions) > 1:
        class_of = {region: index for index, region in enumerate(regions)}
        train_set = GeolocDataset(
            train_store, np.arange(len(cleaned)), labels=np.array([class_of[r] for r in region_of_train])
        )
        val_set = (
            GeolocDataset(val_store, np.arange(len(val_store)), labels=np.array([class_of[r] for r in region_of_val]))
            if val_store is not None
            else None
        )
        steps = config.router.max_steps or config.train.max_steps
        backbone = config.router.backbone or config.model.backbone
        _say(f"router: {len(regions)} regions, {len(train_set)} training images, {backbone}, {steps} steps")
        task = _task(config, backbone, bands, len(regions), "route", steps)
        router_config = dataclasses.replace(config.train, max_steps=steps)
        labels = train_set.labels
        weights = 1.0 / np.bincount(labels)[labels] if config.router.balance else None
        loaders = _loaders(train_set, val_set, data.batch_size, data.num_workers, weights)
        record = _fit_and_export(task, loaders, config, router_config, out / "router", resume, {"classes": regions})
        manifest["router"] = {"folder": "router", "classes": regions, "backbone": backbone, **record}

    # 4. one regressor per region, in the region's local frame
    for region in regions:
        folder = out / "regions" / folders[region]
        members = np.flatnonzero(region_of_train == region)
        assert cleaned.latitude is not None and cleaned.longitude is not None
        frame = LocalFrame.centred_on(cleaned.latitude[members], cleaned.longitude[members])
        local = frame.to_local(cleaned.latitude[members], cleaned.longitude[members])
        scaler = CoordinateScaler.fit(local, config.model.scaler)
        median_lat, median_lon = frame.to_global(np.median(local, axis=0)[None])
        train_set = GeolocDataset(train_store, members, targets=scaler.transform(local))
        val_set = None
        if val_store is not None and val_table is not None:
            assert val_table.latitude is not None and val_table.longitude is not None
            val_members = np.flatnonzero(region_of_val == region)
            val_local = frame.to_local(val_table.latitude[val_members], val_table.longitude[val_members])
            val_set = GeolocDataset(val_store, val_members, targets=scaler.transform(val_local))
        n_val = 0 if val_set is None else len(val_set)
        _say(f"region {region}: {len(members)} training / {n_val} validation images, {config.model.backbone}")
        description = {
            "region": region,
            "frame": frame.to_dict(),
            "scaler": scaler.to_dict(),
            "median": {"latitude": float(median_lat[0]), "longitude": float(median_lon[0])},
            "train_images": len(members),
            "val_images": n_val,
        }
        if _is_rank_zero():
            save_region(folder, description)
        task = _task(config, config.model.backbone, bands, 2, "regress", config.train.max_steps)
        loaders = _loaders(train_set, val_set, data.batch_size, data.num_workers)
        record = _fit_and_export(task, loaders, config, config.train, folder, resume, {"region": region})
        manifest["regions"][region] = {"folder": f"regions/{folders[region]}", **record}
        _say(
            f"region {region}: {record['steps']} steps, last val loss {record['last_val_loss']}, {record['seconds']} s"
        )

    if _is_rank_zero():
        save(out, manifest)
    _say(f"model written to {out / MANIFEST}")
    return manifest
