"""Land-cover application commands: gibbs, embed-plot, dev-prob, panorama, evaluate.

Thin shells over :mod:`landformer.landcover.apps`: each command loads a trained model (a run folder of
``landcover train`` or its ``model.safetensors``), reads chips or a raster window, calls one function and writes
its outputs under ``--out``. Heavy imports stay inside the functions so ``landformer --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from landformer.core.commands import add_command
from landformer.core.errors import UserError
from landformer.landcover.cli import (
    add_baselines_epilog,
    add_batch_size_argument,
    add_chips_argument,
    add_decoding_arguments,
    add_model_arguments,
    add_nodata_argument,
    check_at_least,
    use_device_and_threads,
)

OUT_HELP = "folder for the outputs"


def add_app_commands(group: argparse._SubParsersAction) -> None:
    """Add the application sub-commands to the ``landcover`` group."""
    gibbs = add_command(group, "gibbs", "Gibbs chains that redraw blocks of cells from p(x_block | rest)", run_gibbs)
    add_model_arguments(gibbs, OUT_HELP, threads=0)
    add_chips_argument(gibbs, "chip file whose chips start the chains (default: noise)")
    gibbs.add_argument("--split", choices=["test", "train"], default="test", help="which chips start the chains")
    gibbs.add_argument("--chains", type=int, default=16, help="number of chains, run as one batch")
    gibbs.add_argument("--sweeps", type=int, default=20, help="sweeps per chain (each visits every cell once)")
    gibbs.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="cells redrawn together, last in the order (default: single cells, exact p(x_i | all others), grouped "
        "so that each update re-encodes about sqrt(N) cells)",
    )
    add_decoding_arguments(gibbs, steps=False)
    gibbs.add_argument(
        "--init", choices=["chips", "noise"], default=None, help="start from the chips or from random classes "
    )
    gibbs.add_argument("--fps", type=float, default=4.0, help="frames per second of the GIF")

    embed = add_command(
        group, "embed-plot", "UMAP of class or position embeddings or of chip representations", run_embed
    )
    add_model_arguments(embed, OUT_HELP, threads=0)
    embed.add_argument("--what", choices=["classes", "positions", "chips"], default="classes", help="what to project")
    add_chips_argument(embed, "chip file (needed for --what chips)")
    embed.add_argument("--n", type=int, default=512, help="at most this many test chips for --what chips")
    embed.add_argument(
        "--method", choices=["auto", "umap", "pca"], default="auto", help="auto: UMAP, or PCA for few points"
    )

    dev = add_command(
        group, "dev-prob", "probability of development: many inpaintings of a region, share of developed", run_dev_prob
    )
    add_model_arguments(dev, OUT_HELP, threads=0)
    dev.add_argument("--raster", type=Path, help="class raster (codes of the model's legend)")
    dev.add_argument(
        "--window", type=int, nargs=4, metavar=("COL", "ROW", "W", "H"), help="pixel window of --raster to read"
    )
    add_chips_argument(dev, "chip file instead of a raster: use test chip --chip-index")
    dev.add_argument("--chip-index", type=int, default=0, help="test chip to use with --chips")
    dev.add_argument(
        "--region",
        type=int,
        nargs=4,
        metavar=("COL", "ROW", "W", "H"),
        help="box inside the window to re-imagine (default: the central half of the window)",
    )
    dev.add_argument("--samples", type=int, default=32, help="number of inpainted samples")
    add_decoding_arguments(dev)
    add_batch_size_argument(dev, 32, "samples")
    add_nodata_argument(dev)
    dev.add_argument("--overlap", type=int, default=None, help="cells shared by neighbouring windows (half a chip)")

    pano = add_command(group, "panorama", "a map wider than the chips by sliding-window outpainting", run_panorama)
    add_model_arguments(pano, OUT_HELP, threads=0)
    pano.add_argument("--width", type=int, default=96, help="panorama width in cells")
    pano.add_argument("--height", type=int, default=None, help="panorama height in cells (default: one chip)")
    pano.add_argument("--n", type=int, default=1, help="number of panoramas, drawn as one batch")
    add_decoding_arguments(pano, top_k=True)
    pano.add_argument("--overlap", type=int, default=None, help="cells shared by neighbouring windows (half a chip)")
    pano.add_argument("--fps", type=float, default=12.0, help="frames per second of the reveal GIF")

    realism = add_command(
        group,
        "evaluate",
        "realism of sequential and parallel samples against test chips (landscape metrics), beside baselines",
        run_eval,
    )
    add_model_arguments(realism, OUT_HELP, threads=0)
    add_chips_argument(realism, "chip file whose test chips are the reference (default: the model's training chips)")
    realism.add_argument("--n", type=int, default=64, help="samples per decoding setting (and test chips)")
    realism.add_argument(
        "--steps", type=int, nargs="+", default=[16], help="parallel decoding steps to compare with sequential"
    )
    add_decoding_arguments(realism, steps=False)
    add_batch_size_argument(realism, 64, "samples")
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


def _load_model(args: argparse.Namespace) -> Any:
    from landformer.landcover.export import load_model

    use_device_and_threads(args)
    return load_model(args.model, device=args.device)


def _split_inputs(chips: Any, loaded: Any, split: str = "test", limit: int | None = None) -> tuple[Any, Any, Any]:
    """Labels (N, H, W), covariates (N, c, H, W) or None, lon/lat (N, 2) or None of one split of loaded chips."""
    from landformer.landcover.data import lonlat_inputs, model_inputs

    data = chips.test_data if split == "test" else chips.train_data
    coords = chips.test_coords if split == "test" else chips.train_coords
    if len(data) == 0:
        raise UserError(f"chip file {chips.source}: the {split} split holds no chips")
    if limit is not None:
        data, coords = data[:limit], coords[:limit]
    labels, covariates = model_inputs(data, loaded)
    lonlat = lonlat_inputs(coords) if loaded.config.use_lonlat else None
    return labels, covariates, lonlat


def _chip_inputs(path: Path, loaded: Any, split: str = "test", limit: int | None = None) -> tuple[Any, Any, Any]:
    """:func:`_split_inputs` of the chip file at ``path``, checked against the model."""
    from landformer.landcover.sample import open_chips

    return _split_inputs(open_chips(loaded, path)[0], loaded, split, limit)


def _report(paths: dict[str, Path]) -> None:
    for name, path in paths.items():
        print(f"{name}: {path}")


def run_gibbs(args: argparse.Namespace) -> None:
    import numpy as np

    from landformer.landcover import apps

    check_at_least("--chains", args.chains)
    check_at_least("--sweeps", args.sweeps, 0)
    if args.block_size is not None:
        check_at_least("--block-size", args.block_size)
    init = args.init or ("chips" if args.chips else "noise")
    if init == "chips" and args.chips is None:
        raise UserError("gibbs --init chips needs --chips chips.npz")
    loaded = _load_model(args)
    covariates = lonlat = None
    if args.chips is not None:
        labels, covariates, lonlat = _chip_inputs(args.chips, loaded, args.split, args.chains)
        labels = labels.numpy()
        if len(labels) < args.chains:
            raise UserError(f"chip file {args.chips}: {len(labels)} {args.split} chips for {args.chains} chains")
    else:
        size = loaded.chip_size
        labels = np.zeros((args.chains, size, size), dtype=np.int64)
    start = labels if init == "chips" else apps.noise_start(labels, loaded.legend.n_classes, args.seed)
    run = apps.gibbs_chains(
        loaded.model,
        start,
        args.sweeps,
        args.block_size,
        args.temperature,
        covariates,
        lonlat,
        seed=args.seed,
        progress=True,
    )
    paths = apps.write_gibbs(run, loaded.legend, args.out, fps=args.fps)
    print(f"{args.chains} chains x {args.sweeps} sweeps in {run.seconds:.1f} s")
    _report(paths)


def run_embed(args: argparse.Namespace) -> None:
    from landformer.landcover import apps

    check_at_least("--n", args.n)
    loaded = _load_model(args)
    labels = covariates = lonlat = None
    if args.what == "chips":
        if args.chips is None:
            raise UserError("embed-plot --what chips needs --chips chips.npz")
        labels, covariates, lonlat = _chip_inputs(args.chips, loaded, "test", args.n)
    result = apps.embed_plot(
        loaded.model, loaded.legend, args.what, args.out, labels, covariates, lonlat, args.method, args.seed
    )
    if result.note:
        print(f"note: {result.note}")
    _report(result.paths)


def _central_half(height: int, width: int) -> tuple[int, int, int, int]:
    return width // 4, height // 4, width - 2 * (width // 4), height - 2 * (height // 4)


def _region_mask(region: list[int] | None, height: int, width: int) -> Any:
    import numpy as np

    col, row, w, h = region if region is not None else _central_half(height, width)
    if w < 1 or h < 1 or col < 0 or row < 0 or col + w > width or row + h > height:
        raise UserError(f"--region {col} {row} {w} {h} does not lie inside the {width}x{height} window")
    mask = np.zeros((height, width), dtype=bool)
    mask[row : row + h, col : col + w] = True
    return mask


def _read_raster_window(path: Path, window: list[int], loaded: Any) -> tuple[Any, Any, Any, Any]:
    """Class indices (H, W), the window's transform and CRS, and lon/lat of its centre."""
    import numpy as np
    import torch
    from affine import Affine

    from landformer.core.raster import open_raster, pixel_to_lonlat, read_window

    col, row, width, height = window
    size = loaded.chip_size
    if width < size or height < size:
        raise UserError(f"--window {col} {row} {width} {height} is smaller than the model's {size}x{size} chip")
    with open_raster(path) as dataset:
        try:
            raw = read_window(dataset, row, col, height, width, bands=1)
        except ValueError as err:
            raise UserError(f"--window {col} {row} {width} {height}: {err}") from None
        transform = dataset.transform @ Affine.translation(col, row)
        crs = dataset.crs
    labels = loaded.legend.encode(raw, source=str(path)).astype(np.int64)
    lon, lat = pixel_to_lonlat(transform, crs, height / 2, width / 2)
    lonlat = torch.tensor([float(lon[0]), float(lat[0])], dtype=torch.float32) if loaded.config.use_lonlat else None
    return labels, transform, crs, lonlat


def run_dev_prob(args: argparse.Namespace) -> None:
    from landformer.landcover import apps

    check_at_least("--samples", args.samples)
    check_at_least("--batch-size", args.batch_size)
    check_at_least("--steps", args.steps)
    if (args.raster is None) == (args.chips is None):
        raise UserError("dev-prob needs either --raster with --window, or --chips")
    loaded = _load_model(args)
    transform = crs = covariates = lonlat = None
    if args.raster is not None:
        if args.window is None:
            raise UserError("dev-prob --raster needs --window COL ROW W H")
        labels, transform, crs, lonlat = _read_raster_window(args.raster, args.window, loaded)
        if loaded.config.covariate_channels:
            print("note: the model takes covariates; a raster window has none, so it runs unconditioned on them")
    else:
        chips, all_covariates, all_lonlat = _chip_inputs(args.chips, loaded, "test")
        if not 0 <= args.chip_index < len(chips):
            raise UserError(f"--chip-index {args.chip_index}: chip file {args.chips} has {len(chips)} test chips")
        labels = chips[args.chip_index].numpy()
        covariates = all_covariates[args.chip_index] if all_covariates is not None else None
        lonlat = all_lonlat[args.chip_index] if all_lonlat is not None else None
    reimagine = _region_mask(args.region, *labels.shape)
    result = apps.development_probability(
        loaded.model,
        loaded.legend,
        labels,
        reimagine,
        args.samples,
        args.steps,
        args.temperature,
        covariates,
        lonlat,
        args.batch_size,
        args.overlap,
        seed=args.seed,
        progress=True,
        keep_nodata=args.nodata == "keep",
    )
    paths = apps.write_development_probability(result, loaded.legend, labels, reimagine, args.out, transform, crs)
    region = result.probability[reimagine]
    print(f"mean P(developed) in the re-imagined region: {float(region.mean()):.3f} ({args.samples} samples)")
    _report(paths)


def run_panorama(args: argparse.Namespace) -> None:
    from landformer.landcover import apps

    check_at_least("--n", args.n)
    check_at_least("--steps", args.steps)
    check_at_least("--top-k", args.top_k)
    loaded = _load_model(args)
    result = apps.panorama(
        loaded.model,
        args.width,
        args.height,
        args.n,
        args.steps,
        args.temperature,
        args.top_k,
        args.overlap,
        seed=args.seed,
        progress=True,
    )
    print(f"{result.maps.shape[1]}x{result.maps.shape[2]} from {len(result.windows)} windows in {result.seconds:.1f} s")
    _report(apps.write_panorama(result, loaded.legend, args.out, fps=args.fps))


def run_eval(args: argparse.Namespace) -> None:
    import torch

    from landformer.landcover import apps, baselines
    from landformer.landcover.sample import open_chips

    check_at_least("--n", args.n)
    check_at_least("--batch-size", args.batch_size)
    for steps in args.steps:
        check_at_least("--steps", steps)
    loaded = _load_model(args)
    chips, args.chips = open_chips(loaded, args.chips)
    fair, heldout = baselines.fair_test_split(chips)
    notes = [heldout.describe()]
    labels, covariates, lonlat = _split_inputs(fair, loaded, "test")
    if len(labels) < args.n:
        raise UserError(f"chip file {args.chips}: {heldout.describe()}; --n {args.n} asks for more")
    context = baselines.fit_context_model(chips, loaded.legend.n_classes)
    if context is None:
        notes.append(f"chip file {args.chips}: the train split is empty, so there are no context-model samples")
    for note in notes:
        print(f"note: {note}")
    picked = torch.as_tensor(apps.spread_indices(len(labels), args.n))
    labels = labels[picked]
    covariates = covariates[picked] if covariates is not None else None
    lonlat = lonlat[picked] if lonlat is not None else None
    result = apps.sample_realism(
        loaded.model,
        labels.numpy(),
        args.n,
        [None, *args.steps],
        args.temperature,
        covariates,
        lonlat,
        args.batch_size,
        args.seed,
        context,
    )
    result.notes.extend(notes)
    summary = result.summary()
    print(summary["table"])
    for name, setting in summary["settings"].items():
        print(f"{name}: {setting['samples_per_s']:.2f} samples/s")
    _report(apps.write_realism(result, loaded.legend, args.out))
