"""Whole-raster forecasting speed and memory: ``forecast predict`` against the model alone on the same tiles.

Builds, window by window in a temporary folder deleted afterwards, a SIZE x SIZE series of three HM-like float32
GeoTIFFs (EPSG:5070, 30 m, tiled 256, deflate) with a DEM, and exports the tiny recipe's forecaster (3 inputs,
4 horizons, 95 % interval heads: 12 output bands) with seeded random weights - speed does not depend on what the
weights learned. Then, each phase in a fresh process so its peak RSS is its own:

- ``predict``: :func:`landformer.forecast.predict.predict_series` with the tiny recipe's predict settings
  (256 px tiles, 32 px overlap, 4096 px panels): reads, forecasts, blends and writes four GeoTIFFs, window
  by window;
- ``model``:   the same network on as many tiles of the same shape, already in memory as tensors (a sample of
  batches, extrapolated to the tile count of ``predict``): what the forecast costs without any raster work.

Reports pixels/s, peak RSS (target: under 2 GB, whatever the raster's size) and the overhead of tiling (predict
time / model time on the same tiles; on a busy machine the two phases see different loads, so the share of
predict's own time spent inside the network is reported too). Writes
``benchmarks/results/bench_forecast_predict.json``; ``--quick`` runs a 1024 px raster (about a minute on an idle
2-core CPU); ``--height`` runs a full-width strip of a big raster, which reaches the same peak memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ORIGIN = (1_469_985.0, 1_849_995.0)
PIXEL_M = 30.0
STRIP = 512
MODEL_SAMPLE_BATCHES = 12


def tiling() -> tuple[int, int, int]:
    """The tiny recipe's predict settings: tile, overlap, batch size."""
    from landformer.forecast.config import ForecastPredictSection

    settings = ForecastPredictSection()
    return settings.tile, settings.overlap, settings.batch_size


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


def generate(workdir: Path, width: int, height: int) -> dict[str, float]:
    """Write the series and the DEM strip by strip, and export a seeded tiny forecaster; sizes in MB."""
    import torch
    from rasterio.transform import from_origin

    from landformer.core.raster import geotiff_writer
    from landformer.forecast.config import ForecastConfig
    from landformer.forecast.export import export_forecaster, model_config_dict
    from landformer.forecast.model import ConvLSTMForecaster, ForecastModelConfig
    from landformer.forecast.normalize import ZScore

    transform = from_origin(*ORIGIN, PIXEL_M, PIXEL_M)
    paths = [workdir / f"hm_{year}.tif" for year in (2010, 2015, 2020)] + [workdir / "dem.tif"]
    for index, path in enumerate(paths):
        with geotiff_writer(path, width, height, 1, np.float32, transform, "EPSG:5070", nodata=float("nan")) as dst:
            for row0 in range(0, height, STRIP):
                rows = min(STRIP, height - row0)
                block = dem_strip(row0, rows, width) if index == 3 else hm_strip(row0, rows, width, index)
                dst.write(block[None], window=((row0, row0 + rows), (0, width)))
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
        "years": [2010, 2015, 2020],
        "cadence": 5,
        "scale": 1.0,
    }
    export_forecaster(workdir / "model", ConvLSTMForecaster(config).state_dict(), meta)
    return {"input_mb": sum(path.stat().st_size for path in paths) / 1e6}


def phase_predict(workdir: Path) -> dict[str, float]:
    from landformer.forecast.data import SeriesSpec
    from landformer.forecast.predict import predict_series

    spec = SeriesSpec.from_lists([workdir / f"hm_{year}.tif" for year in (2010, 2015, 2020)], [2010, 2015, 2020])
    start = time.perf_counter()
    result = predict_series(workdir / "model", spec, [workdir / "dem.tif"], workdir / "out", progress=False)
    seconds = time.perf_counter() - start
    output_mb = sum(Path(path).stat().st_size for path in result["files"]) / 1e6
    return {
        "seconds": seconds,
        "model_seconds_inside": result["model_seconds"],
        "tiles": result["tiles"],
        "tile_pixels": result["tile_pixels"],
        "output_mb": output_mb,
    }


def phase_model(workdir: Path, n_tiles: int) -> dict[str, float]:
    """The network alone on ``n_tiles`` tiles of predict's shape (timed on a sample of batches, extrapolated)."""
    import torch

    from landformer.forecast.export import load_forecaster

    forecaster = load_forecaster(workdir / "model")
    tile, overlap, batch_size = tiling()
    side = tile + overlap
    generator = torch.Generator().manual_seed(0)
    series = torch.rand(batch_size, 3, 1, side, side, generator=generator)
    mask = torch.ones_like(series, dtype=torch.bool)
    covariates = torch.rand(batch_size, 1, side, side, generator=generator)
    n_batches = -(-n_tiles // batch_size)
    sample = min(n_batches, MODEL_SAMPLE_BATCHES)
    with torch.inference_mode():
        forecaster.model(series, mask, covariates)  # warm-up
        start = time.perf_counter()
        for _ in range(sample):
            forecaster.model(series, mask, covariates)
        seconds = time.perf_counter() - start
    return {"seconds": seconds * n_batches / sample, "sampled_batches": sample, "batches": n_batches}


def run_phase(phase: str, workdir: Path, extra: list[str]) -> dict[str, float]:
    command = [sys.executable, __file__, "--phase", phase, "--workdir", str(workdir), *extra]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 1024 px raster: a smoke run of about a minute")
    parser.add_argument("--size", type=int, default=None, help="raster width in pixels (default 10000, quick 1024)")
    parser.add_argument(
        "--height",
        type=int,
        default=None,
        help="raster height (default: the width). A short, full-width strip peaks at the memory of the full "
        "raster, which depends on the width up to the panel width, never on the height",
    )
    parser.add_argument("--phase", choices=["predict", "model"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tiles", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "predict":
        print(json.dumps(phase_predict(args.workdir) | {"peak_rss_mb": peak_rss_mb()}))
        return 0
    if args.phase == "model":
        print(json.dumps(phase_model(args.workdir, args.tiles) | {"peak_rss_mb": peak_rss_mb()}))
        return 0

    size = args.size or (1024 if args.quick else 10000)
    height = args.height or size
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the temporary folder is still removed
    workdir = Path(tempfile.mkdtemp(prefix="bench_forecast_"))
    try:
        start = time.perf_counter()
        generated = generate(workdir, size, height)
        generate_seconds = time.perf_counter() - start
        print(f"generated {height}x{size} series + DEM in {generate_seconds:.1f} s", flush=True)
        predict = run_phase("predict", workdir, [])
        print(f"predict: {predict['seconds']:.1f} s, peak RSS {predict['peak_rss_mb']:.0f} MB", flush=True)
        model = run_phase("model", workdir, ["--tiles", str(predict["tiles"])])
        print(f"model alone on the same tiles: {model['seconds']:.1f} s", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    tile, overlap, batch_size = tiling()
    pixels = size * height
    throughput = pixels / predict["seconds"]
    model_throughput = pixels / model["seconds"]
    overhead = predict["seconds"] / model["seconds"]
    summary = [
        {
            "metric": "predict throughput",
            "value": throughput,
            "unit": "pixels/s",
            "baseline": model_throughput,
            "ratio": throughput / model_throughput,
            "target": "",
        },
        {
            "metric": "predict peak RSS",
            "value": predict["peak_rss_mb"],
            "unit": "MB",
            "baseline": model["peak_rss_mb"],
            "ratio": predict["peak_rss_mb"] / model["peak_rss_mb"],
            "target": "< 2048 MB",
        },
        {
            "metric": "tiling overhead (predict time / model time, same tiles)",
            "value": overhead,
            "unit": "x",
            "baseline": 1.0,
            "ratio": overhead,
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
        "tile": tile,
        "overlap": overlap,
        "batch_size": batch_size,
        "machine": {
            "cpu_count": psutil.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "generate_seconds": generate_seconds,
        "input_mb": generated["input_mb"],
        "predict": predict,
        "model": model,
        "summary": summary,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_forecast_predict.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{height}x{size} px, tiles {tile}+{overlap} px, batch {batch_size}")
    print(f"{'metric':<58} {'value':>12} {'unit':<9} {'baseline':>12} {'ratio':>7}  target")
    for row in summary:
        baseline = "" if row["baseline"] is None else f"{row['baseline']:.4g}"
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
        print(f"{row['metric']:<58} {row['value']:>12.4g} {row['unit']:<9} {baseline:>12} {ratio:>7}  {row['target']}")
    print(f"wrote {RESULTS / 'bench_forecast_predict.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
