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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from landformer.core.errors import UserError
from landformer.core.io import write_json
from landformer.terrain import metrics
from landformer.terrain.config import EXPAND_SCALES

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
    from landformer.terrain.data import normalize_tiles

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
    from landformer.terrain.pipeline import sample_tiles

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
    from landformer.core.raster import open_raster
    from landformer.terrain.data import pixel_size_metres

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

    from landformer.core.io import atomic_path
    from landformer.core.viz import hillshade
    from landformer.terrain.pipeline import elevation_picture

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
) -> dict[str, Any]:
    """Evaluate a terrain model on a held-out DEM (default: the east part of the Jacksboro DEM); see the module
    docstring. Writes ``evaluation.json``, ``expanded.tif``/``.png`` and ``samples.png`` into ``out``."""
    from landformer.synth import packaged
    from landformer.terrain.export import load_generator
    from landformer.terrain.outpaint import expand_map
    from landformer.terrain.pipeline import load_val_tiles

    if amount < 16:
        raise UserError(f"evaluate: amount = {amount} px is too thin a strip to measure; give at least 16")
    if samples < 8:
        raise UserError(f"evaluate: samples = {samples} is too few to compare distributions; give at least 8")
    generator = load_generator(model, tokenizer)
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
    realism, sample_tiles, noise_tiles = sample_realism(generator, reference, samples, seed)

    expand_summary = expand_map(
        generator,
        dem_path,
        out / "expanded.tif",
        {side: amount for side in ("right", "down", "left", "up")},
        seed=seed,
        scales=scales,
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
            ("samples", sample_tiles),
            ("fractal noise", noise_tiles),
        ],
    )
    summary = {
        "model": str(generator.source),
        "dem": str(dem_path),
        "pixel_size_m": pixel_size,
        "amount_px": amount,
        "scales": scales,
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
