"""Land-cover application commands: gibbs, embed-plot, dev-prob, panorama, evaluate.

Thin shells over the modules of :mod:`landformer.landcover.apps`: each command loads a trained model (a run folder of
``landcover train`` or its ``model.safetensors``), reads chips or a raster window, calls one function and writes
its outputs under ``--out``. Heavy imports stay inside the functions so ``landformer --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from landformer.core.commands import add_command
from landformer.core.errors import UserError
from landformer.landcover.options import (
    DevProbOptions,
    EmbedOptions,
    EvaluateOptions,
    GibbsOptions,
    ModelOptions,
    PanoramaOptions,
    add_baselines_epilog,
    add_options,
    check_at_least,
    parsed_options,
    use_device_and_threads,
)


def add_app_commands(group: argparse._SubParsersAction) -> None:
    """Add the application sub-commands to the ``landcover`` group."""
    commands = (
        ("gibbs", "Gibbs chains that redraw blocks of cells from p(x_block | rest)", GibbsOptions, run_gibbs),
        ("embed-plot", "UMAP of class or position embeddings or of chip representations", EmbedOptions, run_embed),
        (
            "dev-prob",
            "probability of development: many inpaintings of a region, share of developed",
            DevProbOptions,
            run_dev_prob,
        ),
        ("panorama", "a map wider than the chips by sliding-window outpainting", PanoramaOptions, run_panorama),
        (
            "evaluate",
            "realism of sequential and parallel samples against test chips (landscape metrics), beside baselines",
            EvaluateOptions,
            run_eval,
        ),
    )
    parsers = {}
    for name, help, options, run in commands:
        parsers[name] = add_command(group, name, help, run)
        add_options(parsers[name], options)
    realism = parsers["evaluate"]
    add_baselines_epilog(
        realism,
        {
            "context_model": "n maps drawn cell by cell in raster order from the causal-context model (class counts "
            "given the W, N, NW, NE neighbours) fitted on the train split",
            "shuffled_baseline": "the test chips with their pixels shuffled: same class histogram, no structure",
            "noise_floor": "alternate halves of the test chips against each other: the gaps chance alone makes",
            "test chips": "exact duplicates, and chips sharing a pixel with a chip kept before them, are dropped first",
        },
    )


def _load_model(options: ModelOptions) -> Any:
    from landformer.landcover.export import load

    use_device_and_threads(options)
    return load(options.model, device=options.device)


def _report(paths: dict[str, Path]) -> None:
    for name, path in paths.items():
        print(f"{name}: {path}")


def run_gibbs(args: argparse.Namespace) -> None:
    import numpy as np

    from landformer.landcover.apps import gibbs
    from landformer.landcover.apps.common import chip_inputs

    options = parsed_options(args, GibbsOptions)
    check_at_least("--chains", options.chains)
    check_at_least("--sweeps", options.sweeps, 0)
    if options.block_size is not None:
        check_at_least("--block-size", options.block_size)
    init = options.init or ("chips" if options.chips else "noise")
    if init == "chips" and options.chips is None:
        raise UserError("gibbs --init chips needs --chips chips.npz")
    loaded = _load_model(options)
    covariates = lonlat = None
    if options.chips is not None:
        labels, covariates, lonlat = chip_inputs(options.chips, loaded, options.split, options.chains)
        labels = labels.numpy()
        if len(labels) < options.chains:
            raise UserError(
                f"chip file {options.chips}: {len(labels)} {options.split} chips for {options.chains} chains"
            )
    else:
        size = loaded.chip_size
        labels = np.zeros((options.chains, size, size), dtype=np.int64)
    start = labels if init == "chips" else gibbs.noise_start(labels, loaded.legend.n_classes, options.seed)
    run = gibbs.gibbs_chains(
        loaded.model,
        start,
        options.sweeps,
        options.block_size,
        options.temperature,
        covariates,
        lonlat,
        seed=options.seed,
        progress=True,
    )
    paths = gibbs.write_gibbs(run, loaded.legend, options.out, fps=options.fps)
    print(f"{options.chains} chains x {options.sweeps} sweeps in {run.seconds:.1f} s")
    _report(paths)


def run_embed(args: argparse.Namespace) -> None:
    from landformer.landcover.apps import embedding
    from landformer.landcover.apps.common import chip_inputs

    options = parsed_options(args, EmbedOptions)
    check_at_least("--n", options.n)
    loaded = _load_model(options)
    labels = covariates = lonlat = None
    if options.what == "chips":
        if options.chips is None:
            raise UserError("embed-plot --what chips needs --chips chips.npz")
        labels, covariates, lonlat = chip_inputs(options.chips, loaded, "test", options.n)
    result = embedding.embed_plot(
        loaded.model, loaded.legend, options.what, options.out, labels, covariates, lonlat, options.method, options.seed
    )
    if result.note:
        print(f"note: {result.note}")
    _report(result.paths)


def run_dev_prob(args: argparse.Namespace) -> None:
    from landformer.landcover.apps import development
    from landformer.landcover.apps.common import chip_inputs

    options = parsed_options(args, DevProbOptions)
    for flag, box in (("--window", options.window), ("--region", options.region)):
        if box is not None and len(box) != 4:
            raise UserError(f"{flag} takes four numbers, COL ROW W H; got {len(box)}")
    check_at_least("--samples", options.samples)
    check_at_least("--batch-size", options.batch_size)
    check_at_least("--steps", options.steps)
    if (options.raster is None) == (options.chips is None):
        raise UserError("dev-prob needs either --raster with --window, or --chips")
    loaded = _load_model(options)
    transform = crs = covariates = lonlat = None
    if options.raster is not None:
        if options.window is None:
            raise UserError("dev-prob --raster needs --window COL ROW W H")
        labels, transform, crs, lonlat = development.read_raster_window(options.raster, options.window, loaded)
        if loaded.config.covariate_channels:
            print("note: the model takes covariates; a raster window has none, so it runs unconditioned on them")
    else:
        chips, all_covariates, all_lonlat = chip_inputs(options.chips, loaded, "test")
        if not 0 <= options.chip_index < len(chips):
            raise UserError(f"--chip-index {options.chip_index}: chip file {options.chips} has {len(chips)} test chips")
        labels = chips[options.chip_index].numpy()
        covariates = all_covariates[options.chip_index] if all_covariates is not None else None
        lonlat = all_lonlat[options.chip_index] if all_lonlat is not None else None
    reimagine = development.region_mask(options.region, *labels.shape)
    result = development.development_probability(
        loaded.model,
        loaded.legend,
        labels,
        reimagine,
        options.samples,
        options.steps,
        options.temperature,
        covariates,
        lonlat,
        options.batch_size,
        options.overlap,
        seed=options.seed,
        progress=True,
        keep_nodata=options.nodata == "keep",
    )
    paths = development.write_development_probability(
        result, loaded.legend, labels, reimagine, options.out, transform, crs
    )
    region = result.probability[reimagine]
    print(f"mean P(developed) in the re-imagined region: {float(region.mean()):.3f} ({options.samples} samples)")
    _report(paths)


def run_panorama(args: argparse.Namespace) -> None:
    from landformer.landcover.apps import panorama

    options = parsed_options(args, PanoramaOptions)
    check_at_least("--n", options.n)
    check_at_least("--steps", options.steps)
    check_at_least("--top-k", options.top_k)
    loaded = _load_model(options)
    result = panorama.panorama(
        loaded.model,
        options.width,
        options.height,
        options.n,
        options.steps,
        options.temperature,
        options.top_k,
        options.overlap,
        seed=options.seed,
        progress=True,
    )
    print(f"{result.maps.shape[1]}x{result.maps.shape[2]} from {len(result.windows)} windows in {result.seconds:.1f} s")
    _report(panorama.write_panorama(result, loaded.legend, options.out, fps=options.fps))


def run_eval(args: argparse.Namespace) -> None:
    import torch

    from landformer.landcover import baselines
    from landformer.landcover.apps import realism
    from landformer.landcover.apps.common import open_chips, split_inputs

    options = parsed_options(args, EvaluateOptions)
    check_at_least("--n", options.n)
    check_at_least("--batch-size", options.batch_size)
    for steps in options.steps:
        check_at_least("--steps", steps)
    loaded = _load_model(options)
    chips, options.chips = open_chips(loaded, options.chips)
    fair, heldout = baselines.fair_test_split(chips)
    notes = [heldout.describe()]
    labels, covariates, lonlat = split_inputs(fair, loaded, "test")
    if len(labels) < options.n:
        raise UserError(f"chip file {options.chips}: {heldout.describe()}; --n {options.n} asks for more")
    context = baselines.fit_context_model(chips, loaded.legend.n_classes)
    if context is None:
        notes.append(f"chip file {options.chips}: the train split is empty, so there are no context-model samples")
    for note in notes:
        print(f"note: {note}")
    picked = torch.as_tensor(realism.spread_indices(len(labels), options.n))
    labels = labels[picked]
    covariates = covariates[picked] if covariates is not None else None
    lonlat = lonlat[picked] if lonlat is not None else None
    result = realism.sample_realism(
        loaded.model,
        labels.numpy(),
        options.n,
        [None, *options.steps],
        options.temperature,
        covariates,
        lonlat,
        options.batch_size,
        options.seed,
        context,
        options.parallel_temperature,
    )
    result.notes.extend(notes)
    summary = result.summary()
    print(summary["table"])
    for name, setting in summary["settings"].items():
        print(f"{name}: {setting['samples_per_s']:.2f} samples/s")
    _report(realism.write_realism(result, loaded.legend, options.out))
