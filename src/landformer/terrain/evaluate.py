"""``terrain evaluate``: how real a terrain model's samples and expansions look, on a DEM it never saw.

Three questions, each against a baseline or the real DEM itself (the measures are in ``terrain/metrics.py``):

1. **Codebook use**: the share of the tokenizer's codes that the held-out DEM's tiles use (and the training run's
   validation tiles, when the run folder has them). Codes nothing uses are capacity the generator never learns.
2. **Sample realism**: elevation, slope, spectrum and curvature distances from MaskGIT samples to the held-out
   DEM's tiles, next to fractal noise with the spectrum fitted to those tiles (the classic baseline) and the
   noise floor (one half of the held-out tiles against the other). Samples should beat the noise on all four.
3. **Continuation**: the held-out DEM grown by ``amount`` px on all four sides with ``terrain expand``; seam
   across the original edge, tile/token grid in the new strips, relief at the DEM's scale, valleys crossing the
   edge (D8 drainage) and pits, each against the DEM itself.

Every number has its target beside it (issue 12) and a pass flag; ``evaluation.json`` holds them all, with
``expanded.tif`` (GIS-ready), ``expanded.png`` (hillshade, the original outlined) and ``samples.png`` (held-out
tiles, samples and fractal noise in rows).

The default held-out DEM is the east part of the Jacksboro DEM, which the packaged model and the default recipes
never train on (``synth/packaged.py``).

The tokenizer alone is measured at the end of this file (``terrain reconstruct`` and the end of its training):
tiles through the tokenizer and back, their error in metres and the codebook's use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from landformer.core.errors import UserError
from landformer.core.io import atomic_path, write_json
from landformer.core.raster import open_raster
from landformer.core.viz import hillshade, save_panel
from landformer.synth import packaged
from landformer.terrain import metrics
from landformer.terrain.data import load_val_tiles, normalize_tiles, pixel_size_metres
from landformer.terrain.export import LoadedTokenizer, load
from landformer.terrain.outpaint import expand_map
from landformer.terrain.pictures import elevation_picture, error_picture, hillshade_picture
from landformer.terrain.sample import sample_tiles
from landformer.terrain.scales import EXPAND_SCALES

# Targets of issue 12, as (low, high) bounds on each measure (None: no bound on that side).
TARGETS: dict[str, tuple[float | None, float | None]] = {
    "codebook_usage": (0.90, None),
    "seam_ratio": (None, 1.15),
    "lattice_contrast": (None, 1.2),
    "relief_ratio": (0.7, 1.3),
    "valley_crossing_ratio": (0.7, None),
    "valley_fill_excess": (None, 0.05),
    "pits_ratio": (None, 2.0),
}
CHANNEL_AREA_KM2 = 0.5  # a cell draining at least this area is a channel (valley_continuation)
MAX_EVALUATED_PIXELS = 4096 * 4096  # the held-out DEM is read whole


def within(value: float, bounds: tuple[float | None, float | None]) -> bool:
    low, high = bounds
    return bool(np.isfinite(value) and (low is None or value >= low) and (high is None or value <= high))


def dem_tiles(elevation: np.ndarray, tile: int, stride: int, min_relief: float = 1.0) -> np.ndarray:
    """(N, tile, tile) tiles every ``stride`` px of a DEM, without nodata and with at least ``min_relief`` m std."""
    if min(elevation.shape) < tile:
        raise UserError(
            f"the held-out DEM ({elevation.shape[0]}x{elevation.shape[1]} px) is smaller than a {tile} px tile"
        )
    windows = np.lib.stride_tricks.sliding_window_view(elevation, (tile, tile))[::stride, ::stride]
    tiles = windows.reshape(-1, tile, tile)
    keep = np.isfinite(tiles).all(axis=(1, 2))
    keep[keep] = tiles[keep].std(axis=(1, 2)) >= min_relief
    if not keep.any():
        raise UserError(f"the held-out DEM has no complete {tile} px tile with relief (all nodata or flat)")
    return np.ascontiguousarray(tiles[keep], dtype=np.float32)


def codebook_usage(generator: Any, tiles: np.ndarray) -> dict[str, float]:
    """Share of the codebook used by the tokens of ``tiles`` (metres), and its perplexity."""
    normalized, _, _ = normalize_tiles(tiles, "held-out tiles")
    tokens = generator.tokenizer.encode(normalized)
    counts = np.bincount(tokens.ravel(), minlength=generator.tokenizer.vocab_size)
    probs = counts[counts > 0] / counts.sum()
    return {
        "usage": float((counts > 0).mean()),
        "codes_used": int((counts > 0).sum()),
        "codes": len(counts),
        "perplexity": float(np.exp(-(probs * np.log(probs)).sum())),
        "tiles": len(tiles),
    }


def sample_realism(
    generator: Any, reference: np.ndarray, count: int, seed: int
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Realism distances of samples, fractal noise and the noise floor to the reference tiles, and the ratios to
    noise; with the sample and noise tiles themselves (for pictures)."""
    samples = sample_tiles(generator, count, seed)
    beta = metrics.spectral_exponent(reference)
    noise = metrics.fractal_noise(count, reference.shape[-1], beta, seed)
    order = np.random.default_rng(seed).permutation(len(reference))
    half = len(order) // 2
    model = metrics.realism_distances(samples, reference)
    fractal = metrics.realism_distances(noise, reference)
    floor = metrics.realism_distances(reference[order[:half]], reference[order[half:]])
    ratios = {name: model[name] / fractal[name] for name in model}
    distances = {
        "samples": model,
        "fractal_noise": fractal,
        "noise_floor": floor,
        "ratio_to_fractal_noise": ratios,
        "fractal_beta": beta,
        "beats_fractal_noise": all(ratio < 1.0 for ratio in ratios.values()),
    }
    return distances, samples, noise


def continuation(
    expanded: np.ndarray, amount: int, original_shape: tuple[int, int], pixel_size_m: float, generator: Any
) -> dict[str, Any]:
    """Seam, grid, relief, valley and pit measures of a DEM grown by ``amount`` px on every side."""
    height, width = original_shape
    r0 = c0 = amount
    tile_px = generator.grid * generator.downsample
    seam = metrics.edge_seam(expanded, r0, c0, height, width, depth=8)
    periods = sorted({generator.downsample, generator.tile * generator.downsample, tile_px})
    lattice = metrics.strip_lattice_contrast(expanded, r0, c0, height, width, periods)
    # The same measure on real terrain in the same geometry: the DEM's own outer bands, as wide as the strips.
    # Narrow strips of real terrain read above 1 too (Jacksboro's 64 px bands: 1.25 at 4 px).
    original = expanded[r0 : r0 + height, c0 : c0 + width]
    inner = (height - 2 * amount, width - 2 * amount)
    lattice["real_strips"] = (
        metrics.strip_lattice_contrast(original, amount, amount, *inner, periods)["contrast"]
        if min(inner) > 0
        else float("nan")
    )
    relief = metrics.relief_ratio(expanded, r0, c0, height, width, window=min(amount, tile_px * 2))
    channel_cells = max(16.0, CHANNEL_AREA_KM2 * 1e6 / pixel_size_m**2)
    valleys = metrics.valley_continuation(
        expanded,
        r0,
        c0,
        height,
        width,
        channel_cells=channel_cells,
        depth=8,
        pixel_size_m=pixel_size_m,
        reference_margin=amount,
    )
    strip_pits, strip_area = 0.0, 0.0
    for box in metrics.expansion_strips(expanded.shape, r0, c0, height, width).values():
        strip = expanded[box]
        if min(strip.shape) >= 3:
            area = (strip.shape[0] - 2) * (strip.shape[1] - 2)
            strip_pits += metrics.pits_per_km2(strip, pixel_size_m) * area
            strip_area += area
    real_pits = metrics.pits_per_km2(original, pixel_size_m)
    new_pits = strip_pits / strip_area if strip_area else float("nan")
    return {
        "seam": seam,
        "lattice": lattice,
        "relief": relief,
        "valleys": {**valleys, "channel_cells": channel_cells},
        "pits_per_km2": {"strips": new_pits, "original": real_pits},
        "headline": {
            "seam_ratio": seam["ratio"],
            "lattice_contrast": lattice["contrast"],
            "relief_ratio": relief["ratio"],
            "valley_crossing_ratio": valleys["crossing_ratio"],
            "valley_fill_excess": valleys["fill_excess"],
            "pits_ratio": new_pits / real_pits if real_pits > 0 else float("nan"),
        },
    }


def read_dem(path: Path) -> tuple[np.ndarray, float]:
    with open_raster(path) as dataset:
        if dataset.height * dataset.width > MAX_EVALUATED_PIXELS:
            raise UserError(
                f"{path} is {dataset.height}x{dataset.width} px; terrain evaluate reads the DEM whole, so give a "
                f"crop of at most {MAX_EVALUATED_PIXELS} px"
            )
        values = dataset.read(1).astype(np.float64)
        if dataset.nodata is not None and not np.isnan(dataset.nodata):
            values[values == dataset.nodata] = np.nan
        return values, pixel_size_metres(dataset)


def _pictures(out: Path, expanded: np.ndarray, amount: int, shape: tuple[int, int], pixel: float, rows: list) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = shape
    figure, axis = plt.subplots(figsize=(8, 8 * expanded.shape[0] / expanded.shape[1] + 0.6))
    axis.imshow(hillshade(np.nan_to_num(expanded, nan=float(np.nanmean(expanded))), pixel), cmap="gray")
    axis.add_patch(
        plt.Rectangle((amount - 0.5, amount - 0.5), width, height, fill=False, ec="tab:red", lw=0.8, ls="--")
    )
    axis.set_title(f"held-out DEM (inside the dashed line) grown by {amount} px on every side")
    axis.axis("off")
    figure.tight_layout()
    expanded_png = out / "expanded.png"
    with atomic_path(expanded_png) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)

    count = min(len(tiles) for _, tiles in rows)
    columns = min(count, 8)
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns, 1.8 * len(rows)), squeeze=False)
    for row, (title, tiles) in enumerate(rows):
        for column in range(columns):
            axes[row][column].imshow(elevation_picture(tiles[column], pixel, scale=1))
            axes[row][column].axis("off")
        axes[row][0].set_title(title, loc="left", fontsize=9)
    figure.tight_layout()
    samples_png = out / "samples.png"
    with atomic_path(samples_png) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)
    return {"expanded_png": str(expanded_png), "samples_png": str(samples_png)}


def evaluate(
    model: str | os.PathLike[str] = "real",
    out: str | os.PathLike[str] = "runs/terrain/evaluate",
    dem: str | os.PathLike[str] | None = None,
    amount: int = 64,
    samples: int = 64,
    seed: int = 0,
    scales: int = EXPAND_SCALES,
    tokenizer: str | os.PathLike[str] | None = None,
    candidates: int = 1,
    drain: bool = True,
) -> dict[str, Any]:
    """Evaluate a terrain model on a held-out DEM (default: the east part of the Jacksboro DEM); see the module
    docstring. Writes ``evaluation.json``, ``expanded.tif``/``.png`` and ``samples.png`` into ``out``."""
    if amount < 16:
        raise UserError(f"evaluate: amount = {amount} px is too thin a strip to measure; give at least 16")
    if samples < 8:
        raise UserError(f"evaluate: samples = {samples} is too few to compare distributions; give at least 8")
    generator = load(model, tokenizer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dem_path = Path(dem) if dem is not None else packaged.jacksboro_dem(out / "jacksboro_east.tif", "east")
    elevation, pixel_size = read_dem(dem_path)
    tile_px = generator.grid * generator.downsample
    reference = dem_tiles(elevation, tile_px, max(tile_px // 4, 1))

    usage = {"heldout_dem": codebook_usage(generator, reference)}
    val_tiles_path = Path(generator.source).parent / "val_tiles.npz"
    if val_tiles_path.is_file():
        usage["validation_tiles"] = codebook_usage(generator, load_val_tiles(val_tiles_path.parent)[0])
    realism, sampled, noise_tiles = sample_realism(generator, reference, samples, seed)

    expand_summary = expand_map(
        generator,
        dem_path,
        out / "expanded.tif",
        {side: amount for side in ("right", "down", "left", "up")},
        seed=seed,
        scales=scales,
        candidates=candidates,
        drain=drain,
    )
    expanded, _ = read_dem(Path(expand_summary["geotiff"]))
    grown = continuation(expanded, amount, elevation.shape, pixel_size, generator)

    headline = {
        "codebook_usage": usage.get("validation_tiles", usage["heldout_dem"])["usage"],
        **grown.pop("headline"),
    }
    checks = {name: within(value, TARGETS[name]) for name, value in headline.items()}
    checks["samples_beat_fractal_noise"] = realism["beats_fractal_noise"]
    pictures = _pictures(
        out,
        expanded,
        amount,
        elevation.shape,
        pixel_size,
        [
            ("held-out DEM tiles", reference[:: max(len(reference) // 8, 1)]),
            ("samples", sampled),
            ("fractal noise", noise_tiles),
        ],
    )
    summary = {
        "model": str(generator.source),
        "dem": str(dem_path),
        "pixel_size_m": pixel_size,
        "amount_px": amount,
        "scales": scales,
        "candidates": candidates,
        "drain": drain,
        "seed": seed,
        "headline": headline,
        "targets": {name: list(bounds) for name, bounds in TARGETS.items()},
        "passed": checks,
        "codebook": usage,
        "realism": realism,
        "continuation": grown,
        "expanded": expand_summary["geotiff"],
        **pictures,
    }
    write_json(out / "evaluation.json", summary)
    return summary


def format_report(summary: dict[str, Any]) -> str:
    """The headline numbers with targets and pass marks, as lines for a terminal."""
    lines = [f"terrain evaluate: {summary['model']} on {summary['dem']} ({summary['pixel_size_m']:.0f} m pixels)"]
    for name, value in summary["headline"].items():
        low, high = summary["targets"][name]
        bound = f">= {low}" if high is None else f"<= {high}" if low is None else f"{low}..{high}"
        mark = "ok " if summary["passed"][name] else "MISS"
        note = ""
        if name == "lattice_contrast":
            note = f"   (the DEM's own outer bands: {summary['continuation']['lattice']['real_strips']:.3f})"
        lines.append(f"  {mark} {name:<24} {value:8.3f}   target {bound}{note}")
    ratios = summary["realism"]["ratio_to_fractal_noise"]
    mark = "ok " if summary["passed"]["samples_beat_fractal_noise"] else "MISS"
    text = " / ".join(f"{ratios[name]:.2f}" for name in ratios)
    lines.append(f"  {mark} samples vs fractal noise   {text}   (elevation / slope / spectrum / curvature; < 1)")
    lines.append(f"  pictures: {summary['expanded_png']}, {summary['samples_png']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the tokenizer


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
    tokenizer = LoadedTokenizer.load(tokenizer_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tile_size = tokenizer.tile_size
    if dem is not None:
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
