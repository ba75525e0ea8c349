"""Whole-raster forecasting speed and memory: ``forecast predict`` against the model alone on the same tiles.

Builds, window by window in a temporary folder deleted afterwards, a SIZE x SIZE series of three HM-like float32
GeoTIFFs (EPSG:5070, 30 m, tiled 256, deflate) with a DEM, and exports the tiny recipe's forecaster (3 inputs,
4 horizons, 95 % interval heads: 12 output bands) with seeded random weights - speed does not depend on what the
weights learned. Everything runs on ``--threads`` torch threads (default 1) with the tiny recipe's predict
settings (512 px tiles, 32 px overlap, 4096 px panels, precision auto - bf16 on a CPU with native bf16 -, the
gate arithmetic compiled). Two phases, each in a fresh process so its peak RSS is its own:

- ``predict``:  :func:`landformer.forecast.predict.predict_series` on the whole raster: reads, forecasts, blends
  and writes four GeoTIFFs window by window. Gives pixels/s and peak RSS (target: under 2 GB whatever the
  raster's size).
- ``overhead``: the overhead of tiling, timed on a CROP x CROP corner of the same series: ``predict`` on it
  against the network alone on as many tiles of the same shape held in memory as tensors, alternated
  ``--repeats`` times in one process (so both see the same load) after a warm-up of each; the median of the
  per-repeat ratios is reported. Its peak RSS after the network alone's warm-up is the model's own memory.

Writes ``benchmarks/results/bench_forecast_predict.json``; ``--quick`` runs a 1024 px raster (a smoke run of
under a minute); ``--height`` runs a full-width strip of a big raster, which reaches the same peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
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
ORIGIN = (1_469_985.0, 1_849_995.0)
PIXEL_M = 30.0
STRIP = 512
YEARS = (2010, 2015, 2020)


def predict_settings() -> dict[str, object]:
    """The tiny recipe's predict settings, as keyword arguments of ``predict_series``."""
    from landformer.forecast.config import ForecastPredictSection

    settings = ForecastPredictSection()
    return {
        "tile": settings.tile,
        "overlap": settings.overlap,
        "batch_size": settings.batch_size,
        "panel_width": settings.panel_width,
        "precision": settings.precision,
        # What the recipe does on the full raster (16 Mpx or more), here on the crop of the overhead phase too.
        "compile_gates": True,
    }


def hm_strip(row0: int, height: int, width: int, step: int) -> np.ndarray:
    """HM-like values: smooth towns that grow a little every step, in [0, 1]."""
    rows = (np.arange(row0, row0 + height, dtype=np.float32)[:, None]) / 97.0
    cols = np.arange(width, dtype=np.float32)[None, :] / 83.0
    town = 0.5 + 0.5 * np.sin(rows) * np.cos(cols) * np.sin(rows * 0.37 + cols * 0.21)
    return np.clip(town * 0.6 + 0.05 * step * (town > 0.6), 0.0, 1.0).astype(np.float32)


def dem_strip(row0: int, height: int, width: int) -> np.ndarray:
    rows = np.arange(row0, row0 + height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    return (400.0 + 150.0 * np.sin(rows / 301.0) * np.cos(cols / 257.0) + 0.01 * rows).astype(np.float32)


def write_series(folder: Path, width: int, height: int) -> list[Path]:
    """The three HM rasters and the DEM, strip by strip (memory independent of the size)."""
    from rasterio.transform import from_origin

    from landformer.core.raster import geotiff_writer

    folder.mkdir(parents=True, exist_ok=True)
    transform = from_origin(*ORIGIN, PIXEL_M, PIXEL_M)
    paths = [folder / f"hm_{year}.tif" for year in YEARS] + [folder / "dem.tif"]
    for index, path in enumerate(paths):
        with geotiff_writer(path, width, height, 1, np.float32, transform, "EPSG:5070", nodata=float("nan")) as dst:
            for row0 in range(0, height, STRIP):
                rows = min(STRIP, height - row0)
                block = dem_strip(row0, rows, width) if index == 3 else hm_strip(row0, rows, width, index)
                dst.write(block[None], window=((row0, row0 + rows), (0, width)))
    return paths


def export_model(folder: Path) -> None:
    """The tiny recipe's network with seeded random weights, exported as ``forecast train`` would."""
    import torch

    from landformer.core.normalize import ZScore
    from landformer.forecast.config import ForecastConfig
    from landformer.forecast.export import model_config_dict, save
    from landformer.forecast.model import ConvLSTMForecaster, ForecastModelConfig

    recipe = ForecastConfig()
    torch.manual_seed(0)
    config = ForecastModelConfig(
        hidden_channels=tuple(recipe.model.hidden_channels),
        kernel_size=recipe.model.kernel_size,
        quantiles=tuple(recipe.model.quantiles),
    )
    meta = {
        "model_config": model_config_dict(config),
        "normalizer": ZScore((0.3,), (0.2,)).to_dict(),
        "covariate_normalizer": ZScore((400.0,), (100.0,)).to_dict(),
        "channel_names": ["hm"],
        "covariate_names": ["dem"],
        "years": list(YEARS),
        "cadence": 5,
        "scale": 1.0,
        "valid_range": [0.0, 1.0],
    }
    save(folder, ConvLSTMForecaster(config).state_dict(), meta)


def predict(folder: Path, model: Path, out: Path) -> dict:
    from landformer.forecast.data import SeriesSpec
    from landformer.forecast.predict import predict_series

    spec = SeriesSpec.from_lists([folder / f"hm_{year}.tif" for year in YEARS], list(YEARS))
    return predict_series(model, spec, [folder / "dem.tif"], out, progress=False, **predict_settings())


def phase_predict(workdir: Path) -> dict[str, float]:
    start = time.perf_counter()
    result = predict(workdir / "full", workdir / "model", workdir / "out")
    seconds = time.perf_counter() - start
    output_mb = sum(Path(path).stat().st_size for path in result["files"]) / 1e6
    return {
        "seconds": seconds,
        "model_seconds_inside": result["model_seconds"],
        "precision": result["precision"],
        "tiles": result["tiles"],
        "tile_pixels": result["tile_pixels"],
        "output_mb": output_mb,
        "peak_rss_mb": peak_rss_mb(),
    }


def phase_overhead(workdir: Path, repeats: int) -> dict:
    """Predict on the crop and the network alone on as many tiles of predict's shape, alternated."""
    import torch

    from landformer.forecast.export import load

    settings = predict_settings()
    forecaster = load(workdir / "model", "cpu", settings["precision"], settings["compile_gates"])
    side = settings["tile"] + settings["overlap"]
    generator = torch.Generator().manual_seed(0)
    series = torch.rand(settings["batch_size"], len(YEARS), 1, side, side, generator=generator)
    mask = torch.ones_like(series, dtype=torch.bool)
    covariates = torch.rand(settings["batch_size"], 1, side, side, generator=generator)

    def model_alone(n_tiles: int) -> float:
        start = time.perf_counter()
        for _ in range(-(-n_tiles // settings["batch_size"])):
            forecaster.run_network(series, mask, covariates)
        return time.perf_counter() - start

    model_alone(1)  # warm-up: compiles the gate kernel for this shape
    model_rss = peak_rss_mb()

    def predict_crop() -> tuple[float, int]:
        start = time.perf_counter()
        result = predict(workdir / "crop", workdir / "model", workdir / "crop_out")
        return time.perf_counter() - start, result["tiles"]

    _, n_tiles = predict_crop()  # warm-up
    predict_seconds, model_seconds = [], []
    for _ in range(repeats):
        predict_seconds.append(predict_crop()[0])
        model_seconds.append(model_alone(n_tiles))
    ratios = [p / m for p, m in zip(predict_seconds, model_seconds, strict=True)]
    return {
        "tiles": n_tiles,
        "predict_seconds": predict_seconds,
        "model_seconds": model_seconds,
        "ratios": ratios,
        "median_ratio": statistics.median(ratios),
        "model_peak_rss_mb": model_rss,
    }


def run_phase(phase: str, workdir: Path, extra: list[str]) -> dict:
    command = [sys.executable, __file__, "--phase", phase, "--workdir", str(workdir), *extra]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 1024 px raster: a smoke run of under a minute")
    parser.add_argument("--size", type=int, default=None, help="raster width in pixels (default 10000, quick 1024)")
    parser.add_argument(
        "--height",
        type=int,
        default=None,
        help="raster height (default: the width). A short, full-width strip peaks at the memory of the full "
        "raster, which depends on the width up to the panel width, never on the height",
    )
    parser.add_argument("--crop", type=int, default=1536, help="side of the corner the overhead is timed on")
    parser.add_argument("--repeats", type=int, default=5, help="alternations of predict and the model alone")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--phase", choices=["predict", "overhead"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase is not None:
        import torch

        torch.set_num_threads(args.threads)
        phase = phase_predict(args.workdir) if args.phase == "predict" else phase_overhead(args.workdir, args.repeats)
        print(json.dumps(phase))
        return 0

    size = args.size or (1024 if args.quick else 10000)
    height = args.height or size
    crop = min(args.crop, size, height)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the temporary folder is still removed
    workdir = Path(tempfile.mkdtemp(prefix="bench_forecast_"))
    phase_args = ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    try:
        start = time.perf_counter()
        paths = write_series(workdir / "full", size, height)
        write_series(workdir / "crop", crop, crop)
        export_model(workdir / "model")
        generate_seconds = time.perf_counter() - start
        input_mb = sum(path.stat().st_size for path in paths) / 1e6
        print(f"generated {height}x{size} series + DEM in {generate_seconds:.1f} s", flush=True)
        overhead = run_phase("overhead", workdir, phase_args)
        print(f"overhead on a {crop} px crop: ratios {[round(r, 3) for r in overhead['ratios']]}", flush=True)
        predict = run_phase("predict", workdir, phase_args)
        print(f"predict: {predict['seconds']:.1f} s, peak RSS {predict['peak_rss_mb']:.0f} MB", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    settings = predict_settings()
    pixels = size * height
    throughput = pixels / predict["seconds"]
    summary = [
        {
            "metric": "predict throughput",
            "value": throughput,
            "unit": "pixels/s",
            "baseline": None,
            "ratio": None,
            "target": "",
        },
        {
            "metric": "predict peak RSS",
            "value": predict["peak_rss_mb"],
            "unit": "MB",
            "baseline": overhead["model_peak_rss_mb"],
            "ratio": predict["peak_rss_mb"] / overhead["model_peak_rss_mb"],
            "target": "< 2048 MB",
        },
        {
            "metric": f"tiling overhead (predict / model alone, {crop} px crop, median of {args.repeats})",
            "value": overhead["median_ratio"],
            "unit": "x",
            "baseline": 1.0,
            "ratio": overhead["median_ratio"],
            "target": "",
        },
        {
            "metric": "share of predict time inside the network (same process)",
            "value": predict["model_seconds_inside"] / predict["seconds"],
            "unit": "",
            "baseline": None,
            "ratio": None,
            "target": "",
        },
        {
            "metric": "pixels forecast per raster pixel (overlap)",
            "value": predict["tile_pixels"] / pixels,
            "unit": "x",
            "baseline": 1.0,
            "ratio": predict["tile_pixels"] / pixels,
            "target": "",
        },
    ]
    result = {
        "benchmark": "bench_forecast_predict",
        "width": size,
        "height": height,
        "quick": args.quick,
        "threads": args.threads,
        "settings": settings,
        "machine": {
            "cpu_count": psutil.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "generate_seconds": generate_seconds,
        "input_mb": input_mb,
        "overhead": overhead,
        "predict": predict,
        "summary": summary,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_forecast_predict.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{height}x{size} px, {settings}, {args.threads} thread(s)")
    print(f"{'metric':<72} {'value':>12} {'unit':<9} {'baseline':>12} {'ratio':>7}  target")
    for row in summary:
        baseline = "" if row["baseline"] is None else f"{row['baseline']:.4g}"
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
        print(f"{row['metric']:<72} {row['value']:>12.4g} {row['unit']:<9} {baseline:>12} {ratio:>7}  {row['target']}")
    print(f"wrote {RESULTS / 'bench_forecast_predict.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
