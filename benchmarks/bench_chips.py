"""Chip extraction speed and memory on a large tiled raster, against plain rasterio windowed reads.

Builds (window by window, in a temporary folder deleted afterwards) a SIZE x SIZE uint8 land-cover GeoTIFF in
NLCD Albers (EPSG:5070, 30 m, tiled 256, deflate) and a float32 DEM in lon/lat (EPSG:4326, 3 arc-seconds,
predictor 3) covering it. Then, each phase in a fresh process so its peak RSS is its own:

- ``plain_class``: ``dataset.read(1, window=...)`` of the class raster for every chip window, in draw order:
                   the least any extractor does (no legend, no DEM);
- ``plain_both``:  the same, plus one plain read of the DEM window under each chip (its own CRS and pixels,
                   not resampled): the same windows of both rasters, which the target compares against;
- ``extract``:     :class:`ChipExtractor` on the same windows: class indices through the legend plus the DEM
                   resampled bilinearly onto the class grid, as (N, 2, 32, 32) float32;
- ``make_chips``:  the whole ``landformer data chips`` job (sampling, split, extraction, compressed .npz).

Windows are planned before each clock starts. They are the first ``count`` random windows ``make_chips``
draws; the run checks that the chip file's coordinates are exactly those windows' centres. Targets: peak RSS
under 1 GB, extraction at least 0.5x the plain-read rate. Writes ``benchmarks/results/bench_chips.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
# LANDFORMER_BENCH_RESULTS: where `run_all.py --quick` sends smoke results, away from the committed ones.
RESULTS = Path(os.environ.get("LANDFORMER_BENCH_RESULTS") or HERE / "results")
NLCD_CODES = np.array([11, 21, 22, 23, 31, 41, 42, 43, 52, 71, 81, 82, 90, 95], dtype=np.uint8)
ALBERS_ORIGIN = (-1_000_000.0, 2_000_000.0)  # top-left corner (x, y) in EPSG:5070, over Colorado/Utah
PIXEL_M = 30.0
DEM_DEG = 1 / 1200  # 3 arc-seconds
STRIP = 256
PHASES = ("plain_class", "plain_both", "extract", "make_chips")


def class_strip(row0: int, height: int, width: int) -> np.ndarray:
    """Land-cover-like codes: 50 px patches of a hashed class plus 3% pixel noise, reproducible per strip."""
    rows = np.arange(row0, row0 + height)[:, None] // 50
    cols = np.arange(width)[None, :] // 50
    patch = (rows * 73856093 ^ cols * 19349663) % len(NLCD_CODES)
    noise_rng = np.random.default_rng(row0)
    noisy = noise_rng.random((height, width)) < 0.03
    patch[noisy] = noise_rng.integers(0, len(NLCD_CODES), int(noisy.sum()))
    return NLCD_CODES[patch]


def dem_strip(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Smooth hills in metres, a function of lon/lat only, so any resampling of it stays smooth."""
    return (1500 + 400 * np.sin(lat * 3.1) * np.cos(lon * 2.3) + 80 * np.sin(lat * 41) * np.sin(lon * 37)).astype(
        np.float32
    )


def generate(workdir: Path, size: int) -> dict[str, float]:
    """Write the class raster and the DEM strip by strip (reusing them if already there); sizes in MB."""
    import rasterio.warp
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from landformer.core.raster import RasterGrid, geotiff_writer, lonlat_bounds

    transform = from_origin(*ALBERS_ORIGIN, PIXEL_M, PIXEL_M)
    class_path, dem_path = workdir / "classes.tif", workdir / "dem.tif"
    if class_path.exists() and dem_path.exists():
        with rasterio.open(class_path) as classes, rasterio.open(dem_path) as dem:
            if classes.width == size:
                return {
                    "class_raster_mb": class_path.stat().st_size / 1e6,
                    "dem_mb": dem_path.stat().st_size / 1e6,
                    "dem_shape": [dem.height, dem.width],
                }
    with geotiff_writer(class_path, size, size, 1, np.uint8, transform, "EPSG:5070", nodata=0) as dst:
        for row0 in range(0, size, STRIP):
            height = min(STRIP, size - row0)
            dst.write(class_strip(row0, height, size)[None], window=Window(0, row0, size, height))
    west, south, east, north = lonlat_bounds(RasterGrid(rasterio.crs.CRS.from_epsg(5070), transform, size, size))
    west, south, east, north = west - 0.05, south - 0.05, east + 0.05, north + 0.05
    dem_width, dem_height = int(np.ceil((east - west) / DEM_DEG)), int(np.ceil((north - south) / DEM_DEG))
    dem_transform = from_origin(west, north, DEM_DEG, DEM_DEG)
    with geotiff_writer(dem_path, dem_width, dem_height, 1, np.float32, dem_transform, "EPSG:4326", -9999.0) as dst:
        lon = west + (np.arange(dem_width) + 0.5) * DEM_DEG
        for row0 in range(0, dem_height, STRIP):
            height = min(STRIP, dem_height - row0)
            lat = north - (np.arange(row0, row0 + height) + 0.5) * DEM_DEG
            dst.write(dem_strip(lat[:, None], lon[None, :])[None], window=Window(0, row0, dem_width, height))
    return {
        "class_raster_mb": class_path.stat().st_size / 1e6,
        "dem_mb": dem_path.stat().st_size / 1e6,
        "dem_shape": [dem_height, dem_width],
        "reused": False,
    }


def chips_config(workdir: Path, count: int, chip_size: int):
    from landformer.core.chips import ChipConfig

    return ChipConfig(
        class_raster=workdir / "classes.tif", covariates=[workdir / "dem.tif"], chip_size=chip_size, count=count
    )


def chip_windows(workdir: Path, count: int, chip_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` windows make_chips draws (same split, offsets and seed)."""
    from landformer.core.chips import BlockSplit, RandomWindows
    from landformer.core.raster import open_raster

    config = chips_config(workdir, count, chip_size)
    with open_raster(config.class_raster) as dataset:
        height, width = dataset.height, dataset.width
    split = BlockSplit.random(
        height, width, chip_size, config.resolved_block_size, config.test_fraction, config.seed, source="bench"
    )
    sampler = RandomWindows(
        split.axis_offsets(height, chip_size), split.axis_offsets(width, chip_size), config.seed, expected=count
    )
    return sampler.draw(count)


def dem_windows(workdir: Path, rows: np.ndarray, cols: np.ndarray, chip_size: int) -> list[tuple[int, int, int, int]]:
    """(row, col, height, width) of the DEM pixels under each chip, plus the one-pixel rim bilinear needs."""
    from landformer.core.raster import AlignedCovariate, RasterGrid, open_raster

    with open_raster(workdir / "classes.tif") as classes, open_raster(workdir / "dem.tif") as dem:
        covariate = AlignedCovariate(dem, RasterGrid.of(classes))
        corner_rows = rows[:, None] + np.array([0, 0, chip_size, chip_size])[None]
        corner_cols = cols[:, None] + np.array([0, chip_size, 0, chip_size])[None]
        src_rows, src_cols = covariate.source_positions(corner_rows, corner_cols)
        top = np.clip(np.floor(src_rows.min(axis=1) - 0.5).astype(int), 0, dem.height - 1)
        left = np.clip(np.floor(src_cols.min(axis=1) - 0.5).astype(int), 0, dem.width - 1)
        bottom = np.clip(np.floor(src_rows.max(axis=1) + 0.5).astype(int), 0, dem.height - 1)
        right = np.clip(np.floor(src_cols.max(axis=1) + 0.5).astype(int), 0, dem.width - 1)
    return list(zip(top.tolist(), left.tolist(), (bottom - top + 1).tolist(), (right - left + 1).tolist(), strict=True))


def run_phase(phase: str, workdir: Path, count: int, chip_size: int) -> dict[str, float]:
    """One measured phase, in this (fresh) process; imports and window planning happen before the clock starts."""
    from rasterio.windows import Window

    from landformer.core.chips import ChipExtractor, load_chips, make_chips
    from landformer.core.legend import load_legend
    from landformer.core.raster import RasterGrid, chip_centre_lonlat, open_raster

    rows, cols = chip_windows(workdir, count, chip_size)
    under_chips = dem_windows(workdir, rows, cols, chip_size) if phase == "plain_both" else []
    legend = load_legend("nlcd")
    start = time.perf_counter()
    if phase in ("plain_class", "plain_both"):
        with open_raster(workdir / "classes.tif") as classes, open_raster(workdir / "dem.tif") as dem:
            for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
                classes.read(1, window=Window(col, row, chip_size, chip_size))
            for row, col, height, width in under_chips:
                dem.read(1, window=Window(col, row, width, height))
    elif phase == "extract":
        with (
            open_raster(workdir / "classes.tif") as classes,
            open_raster(workdir / "dem.tif") as dem,
            ChipExtractor(classes, [dem], legend, chip_size) as extractor,
        ):
            chips = extractor.read(rows, cols)
        assert chips.shape == (count, 2, chip_size, chip_size) and not np.isnan(chips).any()
    elif phase == "make_chips":
        out = make_chips(chips_config(workdir, count, chip_size), workdir / "chips.npz")
        elapsed = time.perf_counter() - start
        loaded = load_chips(out)
        with open_raster(workdir / "classes.tif") as dataset:
            lon, lat = chip_centre_lonlat(RasterGrid.of(dataset), rows, cols, chip_size)
        got = np.concatenate([loaded.train_coords, loaded.test_coords])
        expected = np.stack([lon, lat], axis=1)
        assert len(got) == count and np.array_equal(np.unique(got, axis=0), np.unique(expected, axis=0))
        return {"seconds": elapsed, "peak_rss_mb": peak_rss_mb(), "file_mb": out.stat().st_size / 1e6}
    else:
        raise ValueError(f"unknown phase {phase}")
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def child(phase: str, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "--phase", phase, "--workdir", str(workdir)]
    command += ["--size", str(args.size), "--count", str(args.count), "--chip-size", str(args.chip_size)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_results(payload: dict) -> Path:
    from landformer.core.io import write_json

    return write_json(RESULTS / "bench_chips.json", payload)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=20000, help="side of the class raster in pixels")
    parser.add_argument("--count", type=int, default=10000, help="number of chips")
    parser.add_argument("--chip-size", type=int, default=32, help="chip side in pixels")
    parser.add_argument("--quick", action="store_true", help="a 10000 px raster and 5000 chips (well under a minute)")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help="build the rasters here and keep them (default: a temp folder)")
    args = parser.parse_args()
    if args.quick:
        args.size, args.count = 10000, 5000
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.workdir, args.count, args.chip_size)))
        return 0

    workdir = args.data_dir or Path(tempfile.mkdtemp(prefix="bench_chips_"))
    try:
        start = time.perf_counter()
        generated = generate(workdir, args.size)
        generate_s = time.perf_counter() - start
        phases = {phase: child(phase, args, workdir) for phase in PHASES}
    finally:
        if args.data_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    rate = {phase: args.count / result["seconds"] for phase, result in phases.items()}
    peak = max(phases[phase]["peak_rss_mb"] for phase in ("extract", "make_chips"))  # ours, not the baselines'
    print(
        f"class raster {args.size}x{args.size} uint8 ({generated['class_raster_mb']:.0f} MB), "
        f"DEM {generated['dem_shape'][0]}x{generated['dem_shape'][1]} float32 EPSG:4326 "
        f"({generated['dem_mb']:.0f} MB), {'reused' if generated['reused'] else f'generated in {generate_s:.1f} s'}; "
        f"{args.count} chips of {args.chip_size} px"
    )
    print(f"{'phase':<12} {'seconds':>8} {'chips/s':>9} {'/plain_class':>13} {'/plain_both':>12} {'peak RSS MB':>12}")
    for phase, result in phases.items():
        print(
            f"{phase:<12} {result['seconds']:>8.2f} {rate[phase]:>9.0f} {rate[phase] / rate['plain_class']:>12.2f}x "
            f"{rate[phase] / rate['plain_both']:>11.2f}x {result['peak_rss_mb']:>12.0f}"
        )
    ratio = rate["extract"] / rate["plain_both"]
    payload = {
        "benchmark": "bench_chips",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": psutil.cpu_count(),
            "python": platform.python_version(),
        },
        "params": {"size": args.size, "count": args.count, "chip_size": args.chip_size, "quick": args.quick},
        "generated": generated | {"seconds": generate_s},
        "phases": {phase: result | {"chips_per_s": rate[phase]} for phase, result in phases.items()},
        "summary": [
            {
                "metric": "chips with aligned DEM",
                "value": rate["extract"],
                "unit": "chips/s",
                "baseline": rate["plain_both"],
                "ratio": ratio,
                "target": ">= 0.5x plain reads of the same class + DEM windows",
            },
            {
                "metric": "chips with aligned DEM vs class-only reads",
                "value": rate["extract"],
                "unit": "chips/s",
                "baseline": rate["plain_class"],
                "ratio": rate["extract"] / rate["plain_class"],
                "target": "",
            },
            {
                "metric": "make_chips end to end (incl. .npz)",
                "value": rate["make_chips"],
                "unit": "chips/s",
                "baseline": rate["plain_both"],
                "ratio": rate["make_chips"] / rate["plain_both"],
                "target": "",
            },
            {
                "metric": "peak RSS (extract, make_chips)",
                "value": peak,
                "unit": "MB",
                "baseline": None,
                "ratio": None,
                "target": "< 1000 MB",
            },
        ],
        "targets_met": bool(ratio >= 0.5 and peak < 1000),
    }
    print(f"wrote {write_results(payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
