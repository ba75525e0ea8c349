"""The terrain pipeline's Python API: train each stage, reconstruct DEMs, sample tiles.

Every function writes under one run folder and returns a plain dict of what it wrote and measured; the CLI
(``terrain/cli.py``) is a thin shell over these. Endless terrain (``expand``, ``world``) is in
``terrain/outpaint.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landformer.core.errors import UserError
from landformer.core.io import load_torch, read_npz, write_json, write_npz
from landformer.core.task import ImagesEvery
from landformer.core.train import fit, prepare_run, seed_everything
from landformer.terrain.config import MaskGITConfig, TokenizerConfig
from landformer.terrain.data import (
    ElevationTiles,
    TileSet,
    TokenGrids,
    condition_tokens,
    dihedral,
    normalize_tiles,
    prepare_tiles,
)
from landformer.terrain.export import (
    LoadedTokenizer,
    TerrainGenerator,
    export_maskgit,
    export_tokenizer,
    load_generator,
    load_tokenizer,
)
from landformer.terrain.tasks import MaskGITTask, TokenizerTask

log = logging.getLogger(__name__)

VAL_TILES_FILE = "val_tiles.npz"


# ------------------------------------------------------------------------------------------------ pictures


def elevation_picture(
    elevation: np.ndarray, pixel_size: float, scale: int = 4, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """A shaded-relief RGB picture of one DEM tile, upscaled for the eye; ``value_range`` fixes the colours
    (so a reconstruction is coloured like its input)."""
    from landformer.core.viz import elevation_rgb, upscale

    vmin, vmax = value_range if value_range is not None else (None, None)
    return upscale(elevation_rgb(elevation, pixel_size, vmin=vmin, vmax=vmax), scale)


def hillshade_picture(elevation: np.ndarray, pixel_size: float, scale: int = 4) -> np.ndarray:
    from landformer.core.viz import hillshade, upscale

    return upscale(np.round(hillshade(elevation, pixel_size) * 255).astype(np.uint8), scale)


def error_picture(error: np.ndarray, limit: float, scale: int = 4) -> np.ndarray:
    """|error| in grey: black 0, white ``limit`` metres or more."""
    from landformer.core.viz import upscale

    grey = np.clip(np.abs(error) / max(limit, 1e-9), 0.0, 1.0)
    return upscale(np.round(grey * 255).astype(np.uint8), scale)


def save_hillshade_grid(path: Path, tiles: np.ndarray, pixel_size: float, ncols: int | None = None) -> Path:
    """Several DEM tiles as one PNG of shaded-relief pictures."""
    from landformer.core.viz import image_grid, save_png

    pictures = [elevation_picture(tile, pixel_size) for tile in tiles]
    return save_png(path, image_grid(pictures, ncols=ncols))


# ------------------------------------------------------------------------------------------------ stage 1


def _loader(dataset: Any, batch_size: int, shuffle: bool) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_size=min(batch_size, len(dataset)), shuffle=shuffle, drop_last=shuffle, num_workers=0
    )


def _save_val_tiles(run_dir: Path, tiles: TileSet) -> Path:
    arrays = {"val": tiles.val, "val_pixel_sizes": tiles.val_pixel_sizes}
    if tiles.val_conditions is not None:
        arrays["val_conditions"] = tiles.val_conditions
    return write_npz(run_dir / VAL_TILES_FILE, arrays)


def load_val_tiles(run_dir: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """The held-out tiles (metres) a training run wrote and their pixel sizes (m), for evaluation and benchmarks."""
    arrays = read_npz(Path(run_dir) / VAL_TILES_FILE, required=("val", "val_pixel_sizes"), what="validation tiles")
    return arrays["val"], arrays["val_pixel_sizes"]


def best_weights(network: torch.nn.Module, best_checkpoint: Path | None, prefix: str) -> tuple[torch.nn.Module, str]:
    """``network`` with the weights of the best validation checkpoint (its ``prefix``-ed part of the task), and
    where they came from; the final weights when there was no validation (so no best checkpoint)."""
    if best_checkpoint is None:
        return network, "final weights (no validation)"
    checkpoint = load_torch(best_checkpoint)
    state = {k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    best = copy.deepcopy(network)
    best.load_state_dict(state)
    return best, f"{best_checkpoint.name} (step {checkpoint['global_step']})"


def fit_tokenizer(
    config: TokenizerConfig, run_dir: str | os.PathLike[str], resume: bool | str = False
) -> dict[str, Any]:
    """Train the tokenizer, export ``tokenizer.safetensors``, draw reconstructions of held-out tiles."""
    precision = config.train.precision
    if precision.startswith("16"):
        raise UserError(f"train config: precision {precision!r} is not supported by the tokenizer GAN; use bf16 or 32")
    run_dir = Path(run_dir)
    config.data.validate()
    prepare_run(run_dir, config, "terrain-tokenizer")
    seed_everything(config.train.seed)
    tiles = prepare_tiles(config.data, run_dir / "data", config.train.seed)
    if tiles.tile_size % config.model.downsample:
        raise UserError(f"tile_size {tiles.tile_size} is not a multiple of the downsampling {config.model.downsample}")
    write_json(run_dir / "tiles.json", tiles.summary())
    _save_val_tiles(run_dir, tiles)
    train_loader = _loader(
        ElevationTiles(tiles.train, config.data.augment, "training tiles"), config.data.batch_size, True
    )
    val_loader = _loader(ElevationTiles(tiles.val, False, "validation tiles"), 256, False) if len(tiles.val) else None
    model, task = config.model, config.task
    tokenizer_task = TokenizerTask(
        channels=model.channels,
        downsample=model.downsample,
        res_blocks=model.res_blocks,
        quantizer=model.quantizer,
        codebook_size=model.codebook_size,
        code_dim=model.code_dim,
        fsq_levels=list(model.fsq_levels),
        commitment=model.commitment,
        upsample=model.upsample,
        disc_channels=model.disc_channels,
        disc_layers=model.disc_layers,
        l1_weight=task.l1_weight,
        gradient_weight=task.gradient_weight,
        spectral_weight=task.spectral_weight,
        perceptual_weights=str(task.perceptual_weights) if task.perceptual_weights else None,
        perceptual_weight=task.perceptual_weight,
        disc_start=task.disc_start,
        disc_weight=task.disc_weight,
        disc_high_loss=task.disc_high_loss,
        disc_low_loss=task.disc_low_loss,
        gradient_clip=task.gradient_clip,
        disc_lr=task.disc_lr,
        lr=task.lr,
        weight_decay=task.weight_decay,
        warmup_steps=task.warmup_steps,
        max_steps=config.train.max_steps,
        min_lr_ratio=task.min_lr_ratio,
    )
    # The task clips its own gradients (manual optimisation); Lightning's clipping must stay off.
    train_config = dataclasses.replace(config.train, gradient_clip=0.0)
    with warnings.catch_warnings():
        # Lightning warns that manual optimisation checkpoints hold the weights after the step: that is the state
        # a resumed run needs.
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        pictures = ImagesEvery(reconstruction_drawer(tiles.val[:4]), config.train.val_every_steps)
        result = fit(tokenizer_task, (train_loader, val_loader), train_config, run_dir, resume, callbacks=[pictures])
    network, exported_from = best_weights(tokenizer_task.tokenizer, result.best_checkpoint, "tokenizer.")
    weights = export_tokenizer(run_dir, network.cpu(), tiles.summary())
    tokenizer = load_tokenizer(weights)
    evaluation = evaluate_tokenizer(tokenizer, tiles.val if len(tiles.val) else tiles.train[:256])
    panel = reconstruction_panel(run_dir / "reconstructions.png", tokenizer, tiles.val[:6], tiles.val_pixel_sizes[:6])
    summary = {
        "run_dir": str(run_dir),
        "tokenizer": str(weights),
        "identity": tokenizer.identity,
        "global_step": result.global_step,
        "exported_from": exported_from,
        "seconds": round(result.seconds, 1),
        "tiles": {"train": len(tiles.train), "val": len(tiles.val)},
        "evaluation": evaluation,
        "reconstructions": str(panel) if panel else None,
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def reconstruction_drawer(tiles: np.ndarray) -> Callable[[Any], dict[str, np.ndarray]]:
    """For TensorBoard and W&B while the tokenizer trains: hillshades of ``tiles`` (top row) over the task's
    reconstructions of them (bottom row), shaded in normalised units so that only the shapes are compared."""
    from landformer.core.viz import image_grid

    normalized = normalize_tiles(tiles, "validation tiles")[0] if len(tiles) else tiles

    def draw(task: Any) -> dict[str, np.ndarray]:
        if len(normalized) == 0:
            return {}
        device = next(task.tokenizer.parameters()).device
        inputs = torch.from_numpy(np.ascontiguousarray(normalized[:, None], dtype=np.float32)).to(device)
        reconstructions = task.tokenizer(inputs)[0][:, 0].float().cpu().numpy()
        shaded = [hillshade_picture(tile, 1.0) for tile in (*normalized, *reconstructions)]
        return {"tokenizer/reconstructions": image_grid(shaded, nrows=2)}

    return draw


def evaluate_tokenizer(tokenizer: LoadedTokenizer, tiles: np.ndarray) -> dict[str, float]:
    """Reconstruction error in metres and codebook usage over all of ``tiles`` (metres)."""
    normalized, offsets, scales = normalize_tiles(tiles, "evaluation tiles")
    tokens = tokenizer.encode(normalized)
    reconstruction = tokenizer.decode(tokens) * scales[:, None, None] + offsets[:, None, None]
    error = reconstruction - tiles
    counts = np.bincount(tokens.ravel(), minlength=tokenizer.vocab_size)
    probs = counts / counts.sum()
    nonzero = probs[probs > 0]
    return {
        "mae_m": float(np.abs(error).mean()),
        "rmse_m": float(np.sqrt((error**2).mean())),
        "relative_mae": float((np.abs(error).mean(axis=(1, 2)) / scales).mean()),
        "codes_used": int((counts > 0).sum()),
        "codebook_usage": float((counts > 0).mean()),
        "perplexity": float(np.exp(-(nonzero * np.log(nonzero)).sum())),
    }


def reconstruction_panel(
    path: Path, tokenizer: LoadedTokenizer, tiles: np.ndarray, pixel_sizes: np.ndarray | float
) -> Path | None:
    """PNG with one row per tile: input, reconstruction, |error|, input hillshade, reconstruction hillshade.
    ``pixel_sizes`` (metres, one per tile or one for all) set the slopes of the hillshades."""
    from landformer.core.viz import save_panel

    if len(tiles) == 0:
        return None
    normalized, offsets, scales = normalize_tiles(tiles, "tiles to reconstruct")
    reconstruction = tokenizer.decode(tokenizer.encode(normalized)) * scales[:, None, None] + offsets[:, None, None]
    images, titles = [], []
    pixel_sizes = np.broadcast_to(np.asarray(pixel_sizes, dtype=np.float64), (len(tiles),))
    for tile, rec, pixel_size in zip(tiles, reconstruction, pixel_sizes, strict=True):
        error = rec - tile
        value_range = (float(tile.min()), float(tile.max()))
        images += [
            elevation_picture(tile, pixel_size, value_range=value_range),
            elevation_picture(rec, pixel_size, value_range=value_range),
            error_picture(error, float(np.ptp(tile)) / 4 or 1.0),
            hillshade_picture(tile, pixel_size),
            hillshade_picture(rec, pixel_size),
        ]
        titles += [
            f"input {tile.min():.0f}-{tile.max():.0f} m",
            "reconstruction",
            f"|error| mean {np.abs(error).mean():.1f} m",
            "input hillshade",
            "reconstruction hillshade",
        ]
    return save_panel(path, images, titles, nrows=len(tiles), ncols=5, panel_px=160)


def dem_tiles_for_reconstruction(dem: str | os.PathLike[str], tile_size: int, count: int, seed: int) -> np.ndarray:
    """Up to ``count`` non-overlapping tiles of a DEM (metres), skipping tiles with nodata or no relief; a DEM
    with no usable tile is a UserError saying why."""
    from landformer.core.raster import open_raster

    with open_raster(dem) as dataset:
        if dataset.height < tile_size or dataset.width < tile_size:
            raise UserError(f"DEM {dem} ({dataset.height}x{dataset.width} px) is smaller than one {tile_size} px tile")
        data = dataset.read(1).astype(np.float32)
        if dataset.nodata is not None and not np.isnan(dataset.nodata):
            data[data == np.float32(dataset.nodata)] = np.nan
    rows, cols = data.shape[0] // tile_size, data.shape[1] // tile_size
    tiles = data[: rows * tile_size, : cols * tile_size].reshape(rows, tile_size, cols, tile_size).swapaxes(1, 2)
    tiles = tiles.reshape(-1, tile_size, tile_size)
    complete = np.isfinite(tiles).all(axis=(1, 2))
    if not complete.any():
        raise UserError(f"DEM {dem} is full of nodata: none of its {len(tiles)} tiles of {tile_size} px is complete")
    relief = np.zeros(len(tiles), dtype=bool)
    relief[complete] = tiles[complete].reshape(int(complete.sum()), -1).std(axis=1) > 1e-6
    if not relief.any():
        value = float(tiles[complete][0, 0, 0])
        raise UserError(f"DEM {dem} is flat (every complete tile holds a single height, e.g. {value:g} m)")
    usable = np.flatnonzero(complete & relief)
    chosen = np.random.default_rng(seed).permutation(usable)[:count]
    return tiles[np.sort(chosen)]


def reconstruct(
    tokenizer_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    dem: str | os.PathLike[str] | None = None,
    count: int = 6,
    seed: int = 0,
) -> dict[str, Any]:
    """Reconstruct tiles of a DEM (or the tokenizer run's held-out tiles) and draw them as a PNG panel."""
    if count < 1:
        raise UserError(f"reconstruct count must be at least 1, got {count}")
    tokenizer = load_tokenizer(tokenizer_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tile_size = tokenizer.tile_size
    if dem is not None:
        from landformer.core.raster import open_raster
        from landformer.terrain.data import pixel_size_metres

        tiles = dem_tiles_for_reconstruction(dem, tile_size, count, seed)
        with open_raster(dem) as dataset:
            pixel_size = pixel_size_metres(dataset)
    else:
        run_dir = tokenizer.source.parent
        tiles, pixel_sizes = load_val_tiles(run_dir)
        tiles, pixel_size = tiles[:count], pixel_sizes[:count]
        if len(tiles) == 0:
            raise UserError(f"{run_dir} holds no held-out tiles; pass --dem")
    panel = reconstruction_panel(out / "reconstructions.png", tokenizer, tiles, pixel_size)
    evaluation = evaluate_tokenizer(tokenizer, tiles)
    summary = {"panel": str(panel), "tiles": len(tiles), **evaluation}
    write_json(out / "reconstruction.json", summary)
    return summary


# ------------------------------------------------------------------------------------------------ stage 2


def token_dataset(
    tokenizer: LoadedTokenizer, tiles: np.ndarray, conditions: np.ndarray | None, n_classes: int, augment: bool
) -> TokenGrids:
    """Token grids of tiles (all 8 flips and turns when ``augment``: tokens are not rotation-equivariant, so
    the augmentation happens in pixels, before encoding), with condition maps on the token grid."""
    normalized, _, _ = normalize_tiles(tiles, "training tiles")
    variants = range(8) if augment else range(1)
    token_sets, condition_sets = [], []
    for k in variants:
        turned = dihedral(torch.from_numpy(normalized), k).numpy()
        token_sets.append(tokenizer.encode(turned))
        if conditions is not None:
            turned_conditions = dihedral(torch.from_numpy(conditions), k).numpy()
            condition_sets.append(condition_tokens(turned_conditions, tokenizer.downsample, n_classes))
    return TokenGrids(np.concatenate(token_sets), np.concatenate(condition_sets) if condition_sets else None)


def fit_maskgit(config: MaskGITConfig, run_dir: str | os.PathLike[str], resume: bool | str = False) -> dict[str, Any]:
    """Train MaskGIT on the token grids of the recipe's tiles, export ``maskgit.safetensors``, draw samples."""
    run_dir = Path(run_dir)
    config.data.validate()
    tokenizer = load_tokenizer(config.tokenizer)
    downsample = tokenizer.downsample
    if config.data.tile_size % (2 * downsample):
        raise UserError(
            f"tile_size {config.data.tile_size} should be a multiple of twice the tokenizer's downsampling "
            f"({downsample}): outpainting tiles are half a window"
        )
    grid = config.data.tile_size // downsample
    prepare_run(run_dir, config, "terrain-maskgit")
    seed_everything(config.train.seed)
    tiles = prepare_tiles(config.data, run_dir / "data", config.train.seed)
    write_json(run_dir / "tiles.json", tiles.summary())
    _save_val_tiles(run_dir, tiles)
    if config.data.scale_classes:
        n_classes = len(config.data.scale_classes) + 1
    else:
        n_classes = tiles.legend.n_classes if tiles.legend is not None else 0
    train_set = token_dataset(tokenizer, tiles.train, tiles.train_conditions, n_classes, config.data.augment)
    train_loader = _loader(train_set, config.data.batch_size, True)
    val_loader = None
    if len(tiles.val):
        val_set = token_dataset(tokenizer, tiles.val, tiles.val_conditions, n_classes, False)
        val_loader = _loader(val_set, 256, False)
    model, task = config.model, config.task
    maskgit_task = MaskGITTask(
        vocab_size=tokenizer.vocab_size,
        grid=grid,
        tile=grid // 2,
        dim=model.dim,
        n_layers=model.n_layers,
        n_heads=model.n_heads,
        dropout=model.dropout,
        rope_base=model.rope_base,
        n_condition_classes=n_classes,
        outpaint_mask_prob=task.outpaint_mask_prob,
        condition_dropout=task.condition_dropout,
        label_smoothing=task.label_smoothing,
        lr=task.lr,
        weight_decay=task.weight_decay,
        warmup_steps=task.warmup_steps,
        max_steps=config.train.max_steps,
        min_lr_ratio=task.min_lr_ratio,
    )
    start = time.perf_counter()
    condition = None
    if n_classes and tiles.val_conditions is not None and len(tiles.val_conditions):
        condition = condition_tokens(tiles.val_conditions[:1], downsample, n_classes)  # a validation tile's classes
    pictures = ImagesEvery(sample_drawer(tokenizer, grid, config, condition), config.train.val_every_steps)
    result = fit(maskgit_task, (train_loader, val_loader), config.train, run_dir, resume, callbacks=[pictures])
    tokens_per_second = result.global_step * train_loader.batch_size * grid * grid / max(result.seconds, 1e-9)
    network, exported_from = best_weights(maskgit_task.model, result.best_checkpoint, "model.")
    weights = export_maskgit(
        run_dir,
        network.cpu(),
        tokenizer,
        tile=grid // 2,
        sampling=dataclasses.asdict(config.sampling),
        data_summary=tiles.summary(),
        legend=tiles.legend.to_dict() if tiles.legend is not None else None,
        scale_classes=[float(edge) for edge in config.data.scale_classes] or None,
    )
    generator = load_generator(weights)
    samples = sample_tiles(generator, 8, seed=config.train.seed)
    preview = save_hillshade_grid(run_dir / "samples.png", samples, tiles.pixel_size_m, ncols=4)
    summary = {
        "run_dir": str(run_dir),
        "maskgit": str(weights),
        "tokenizer_identity": tokenizer.identity,
        "global_step": result.global_step,
        "exported_from": exported_from,
        "seconds": round(time.perf_counter() - start, 1),
        "train_tokens_per_second": round(tokens_per_second, 1),
        "token_grids": {"train": len(train_set), "val": len(val_loader.dataset) if val_loader else 0},
        "metrics": {name: round(value, 5) for name, value in result.metrics.items()},
        "samples": str(preview),
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def sample_drawer(
    tokenizer: LoadedTokenizer, grid: int, config: MaskGITConfig, condition: np.ndarray | None, count: int = 4
) -> Callable[[Any], dict[str, np.ndarray]]:
    """For TensorBoard and W&B while MaskGIT trains: hillshades of ``count`` tiles sampled from scratch with the
    recipe's sampling settings and a fixed seed (so successive pictures differ only by training), in normalised
    units."""
    from landformer.core.viz import image_grid
    from landformer.terrain.maskgit import decode

    sampling = config.sampling

    def draw(task: Any) -> dict[str, np.ndarray]:
        device = next(task.model.parameters()).device
        tokens = torch.zeros((count, grid, grid), dtype=torch.long, device=device)
        known = torch.zeros_like(tokens, dtype=torch.bool)
        classes = None if condition is None else torch.from_numpy(condition).to(device).expand(count, -1, -1)
        rng = torch.Generator().manual_seed(config.train.seed)
        sampled = decode(
            task.model, tokens, known, sampling.steps, rng, sampling.temperature, sampling.choice_temperature, classes
        )
        heights = tokenizer.decode(sampled.cpu().numpy())
        return {"maskgit/samples": image_grid([hillshade_picture(tile, 1.0) for tile in heights], nrows=1)}

    return draw


# ------------------------------------------------------------------------------------------------ sampling


def sample_tiles(
    generator: TerrainGenerator,
    count: int,
    seed: int,
    offset: float | None = None,
    scale: float | None = None,
    condition_class: int | None = None,
) -> np.ndarray:
    """(count, S, S) elevation tiles in metres; heights follow the training tiles' medians unless given.

    ``condition_class`` (a class index of the model's legend) conditions every token on that one class.
    """
    for name, value in (("offset", offset), ("scale", scale)):
        if value is not None and not math.isfinite(value):
            raise UserError(f"--{name} {value}: heights need a finite number of metres")
    if scale is not None and scale <= 0:
        raise UserError(f"--scale {scale}: the relief (standard deviation, m) must be positive")
    condition = None
    if condition_class is None:
        condition_class = generator.scale_class()  # a scale-conditioned model draws its reference DEM's style
    if condition_class is not None:
        if not 0 <= condition_class < generator.n_condition_classes:
            raise UserError(
                f"condition class {condition_class} is not one of the model's {generator.n_condition_classes} classes"
            )
        condition = np.full((count, generator.grid, generator.grid), condition_class, dtype=np.int64)
    tokens = generator.sample_tokens(count, seed, condition)
    default_offset, default_scale = generator.default_offset_scale()
    normalized = generator.tokenizer.decode(tokens)
    return generator.to_metres(
        normalized, default_offset if offset is None else offset, default_scale if scale is None else scale
    )


def sample_mosaic(tiles: np.ndarray, gutter: int) -> np.ndarray:
    """(N, S, S) tiles laid out on a square-ish grid, ``gutter`` px of NaN between them: one map of all samples."""
    count, size = len(tiles), tiles.shape[-1]
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    step = size + gutter
    mosaic = np.full((rows * step - gutter, columns * step - gutter), np.nan, dtype=np.float32)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        mosaic[row * step : row * step + size, column * step : column * step + size] = tile
    return mosaic


def sample(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    count: int = 16,
    seed: int = 0,
    pixel_size: float | None = None,
    crs: str | None = None,
    origin: tuple[float, float] | None = None,
    offset: float | None = None,
    scale: float | None = None,
    condition_code: int | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Sample tiles: ``samples.png`` (hillshade grid) and ``samples.tif`` (a mosaic of the samples with nodata
    gutters between them) in ``out``.

    The GeoTIFF is on the grid of the training DEM the model records as reference (its CRS, pixel size and data
    type: int16 stays int16) with its top-left corner at that DEM's, unless ``crs``, ``pixel_size`` (in CRS units)
    or ``origin`` say otherwise; heights follow that DEM's tiles unless ``offset``/``scale`` are given.
    """
    from landformer.core.legend import Legend
    from landformer.core.raster import parse_crs, write_geotiff

    if count < 1:
        raise UserError(f"sample count must be at least 1, got {count}")
    if pixel_size is not None and not pixel_size > 0:
        raise UserError(f"pixel size must be positive, got {pixel_size}")
    generator = load_generator(model, tokenizer)
    grid = generator.map_grid(pixel_size, crs, origin)
    condition_class = None
    if condition_code is not None:
        legend_data = generator.meta.get("condition_legend")
        if legend_data is None:
            raise UserError(f"{generator.source} was trained without condition maps; drop --condition-code")
        legend = Legend.from_dict(legend_data)
        condition_class = int(legend.encode(np.array([condition_code]), source="--condition-code")[0])
    tiles = sample_tiles(generator, count, seed, offset, scale, condition_class)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png = save_hillshade_grid(out / "samples.png", tiles, generator.reference_pixel_size_m)
    values, nodata = grid.cast(sample_mosaic(tiles, gutter=max(tiles.shape[-1] // 4, 1)))
    tif = write_geotiff(
        out / "samples.tif",
        values,
        grid.transform(),
        parse_crs(grid.crs, "--crs"),
        nodata=nodata,
        band_names=["elevation_m"],
        tags={"generator": "landformer.terrain", "seed": seed, "model": str(generator.source), "samples": count},
        units=["m"],
    )
    summary = {
        "png": str(png),
        "geotiff": str(tif),
        "count": count,
        "seed": seed,
        "pixel_size": list(grid.pixel),
        "origin": list(grid.origin),
        "dtype": grid.dtype,
        "crs": grid.crs if len(grid.crs) < 40 else "the training DEM's (WKT in the GeoTIFF)",
    }
    write_json(out / "samples.json", summary)
    return summary
