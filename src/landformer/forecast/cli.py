"""``landformer forecast ...``: the forecast pipeline's sub-commands (thin shells over its Python API).

- ``forecast train``    recipe + data -> run folder (checkpoints, model.safetensors + model.json, panel)
- ``forecast evaluate`` run folder -> metrics.json + error_vs_horizon.png on the held-out blocks
- ``forecast predict``  run folder + series -> one GeoTIFF per horizon, for a raster of any size
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from landformer.core.commands import (
    add_command,
    add_config_flags,
    add_group,
    add_recipe_arguments,
    add_training_flags,
    recipe_overrides,
    recipe_printed,
)
from landformer.core.config import load_config
from landformer.core.errors import UserError
from landformer.core.train import add_resume_argument, check_device
from landformer.forecast.config import ForecastConfig, ForecastDataConfig, ForecastPredictSection

DEFAULT_CONFIG_NOTE = "built-in defaults, the same as configs/forecast_tiny.yaml"
MODEL_HELP = "run folder of `forecast train`, or its model.safetensors"


def register(subparsers: argparse._SubParsersAction) -> None:
    group = add_group(subparsers, "forecast", "ConvLSTM multi-horizon forecasting of a raster time series")

    train = add_command(group, "train", "train a forecaster (on a synthetic world when no data is given)", run_train)
    add_recipe_arguments(train, DEFAULT_CONFIG_NOTE)
    add_training_flags(train)
    _add_data_arguments(train)
    train.add_argument("--out", type=Path, required=True, help="run folder for checkpoints, model and pictures")
    add_resume_argument(train)

    evaluate = add_command(
        group, "evaluate", "score a trained model on held-out blocks against persistence and trend", run_evaluate
    )
    evaluate.add_argument("--model", type=Path, required=True, help=MODEL_HELP)
    evaluate.add_argument("--out", type=Path, required=True, help="folder for metrics.json and error_vs_horizon.png")
    evaluate.add_argument(
        "--change-threshold",
        type=float,
        default=0.0,
        help="a pixel 'changed' when it moved more than this (series units) since the last input",
    )
    evaluate.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="fp32",
        help="arithmetic of the convolutions (bf16 scores what a bf16 `forecast predict` writes)",
    )
    _add_data_arguments(evaluate, note=" (default: the data the model was trained on)")

    predict = add_command(group, "predict", "forecast a whole raster into one GeoTIFF per horizon", run_predict)
    predict.add_argument("--model", type=Path, required=True, help=MODEL_HELP)
    _add_data_arguments(predict, note=" (the last K steps are used)")
    predict.add_argument("--out", type=Path, required=True, help="folder for forecast_<year>.tif files")
    _add_predict_settings(predict)
    predict.add_argument("--prefix", default="forecast", help="output files are PREFIX_<year>.tif")


def _add_predict_settings(parser: argparse.ArgumentParser) -> None:
    """The recipe's predict section as flags (:class:`ForecastPredictSection`'s options), plus ``--compile``."""
    add_config_flags(parser, ForecastPredictSection, section="predict")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile the LSTM gate arithmetic (a C++ compiler; 10-40 s once; left out: on 16 Mpx or more)",
    )


def _add_data_arguments(parser: argparse.ArgumentParser, note: str = "") -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--world", type=Path, default=None, help="synthetic world folder: its HM series" + note)
    source.add_argument(
        "--series", type=Path, nargs="+", default=None, help="series rasters, oldest first (GDAL formats)" + note
    )
    source.add_argument("--pattern", default=None, help="series file pattern with {year}, e.g. 'hm_{year}.tif'" + note)
    parser.add_argument(
        "--years",
        type=int,
        nargs="+",
        default=None,
        help="year of each --series raster; left out, read from the file names",
    )
    parser.add_argument(
        "--covariate",
        dest="covariates",
        action="append",
        type=Path,
        default=None,
        help="static covariate raster, e.g. a DEM, on any grid (repeatable; a world adds its elevation)",
    )
    parser.add_argument("--scale", type=float, default=None, help="raw value / scale = series units (default: detect)")
    parser.add_argument(
        "--align-series",
        action="store_true",
        default=None,
        help="resample series rasters on another grid than the first onto it (bilinear) instead of refusing them",
    )
    parser.add_argument("--assume-crs", default=None, help="CRS for rasters that carry none, e.g. EPSG:5070")


def years_from_names(paths: list[Path]) -> list[int]:
    """The last 4-digit number in each file name, e.g. hm_2015.tif -> 2015."""
    years = []
    for path in paths:
        found = re.findall(r"(?<!\d)(\d{4})(?!\d)", path.stem)
        if not found:
            raise UserError(f"cannot read a year from the name {path.name}; give --years, one per --series raster")
        years.append(int(found[-1]))
    return years


def _data_given(args: argparse.Namespace) -> bool:
    return any(value is not None for value in (args.world, args.series, args.pattern))


def _apply_data_arguments(data: Any, args: argparse.Namespace) -> None:
    """Put the command line's data options into a ForecastDataConfig (a given source replaces the recipe's)."""
    if args.years is not None and args.series is None:
        raise UserError("--years dates the --series rasters; give --series too")
    if _data_given(args):
        data.world, data.series, data.years, data.pattern = None, [], [], None
    if args.world is not None:
        data.world = args.world
    if args.series is not None:
        data.series = list(args.series)
        data.years = list(args.years) if args.years is not None else years_from_names(data.series)
    if args.pattern is not None:
        data.pattern = args.pattern
    if args.covariates is not None:
        data.covariates = list(args.covariates)
    if args.scale is not None:
        data.scale = args.scale
    if args.assume_crs is not None:
        data.assume_crs = args.assume_crs
    if args.align_series:
        data.align_series = True


def run_train(args: argparse.Namespace) -> None:
    from landformer.forecast.train import train

    config = load_config(ForecastConfig, args.config, recipe_overrides(args))
    _apply_data_arguments(config.data, args)
    if recipe_printed(args, config):
        return
    summary = train(config, args.out, resume=args.resume)
    print(f"trained {summary['global_step']} steps in {summary['fit_seconds']} s; run folder {summary['run_dir']}")
    print(f"model: {summary['model']} (+ {Path(summary['model_json']).name})")
    print(f"forecast panel: {summary['panel']}")


def run_evaluate(args: argparse.Namespace) -> None:
    from landformer.forecast.evaluate import evaluate_forecaster, format_table

    data = None
    if _data_given(args):
        data = ForecastDataConfig()
        _apply_data_arguments(data, args)
    elif args.covariates is not None or args.scale is not None or args.align_series:
        raise UserError(
            "--covariate, --scale and --align-series go with the data they describe: give --world, --series or "
            "--pattern"
        )
    result = evaluate_forecaster(
        args.model, args.out, data=data, change_threshold=args.change_threshold, precision=args.precision
    )
    print(format_table(result))
    print(f"metrics: {result['files']['metrics']}")
    print(f"plot: {result['files']['plot']}")


def predict_settings(model: Path, args: argparse.Namespace) -> ForecastPredictSection:
    """The predict section of the run's recipe (built-in defaults for a bare model file), with the command
    line's values on top."""
    recipe = (model if model.is_dir() else model.parent) / "config.yaml"
    overrides = recipe_overrides(args)
    if args.compile is not None:
        overrides.append(f"predict.compile={json.dumps(args.compile)}")
    return load_config(ForecastConfig, recipe if recipe.is_file() else None, overrides).predict


def run_predict(args: argparse.Namespace) -> None:
    from landformer.forecast.data import resolve_series
    from landformer.forecast.predict import predict_series

    if not _data_given(args):
        raise UserError("forecast predict needs the series to forecast from: --series, --pattern or --world")
    data = ForecastDataConfig()
    _apply_data_arguments(data, args)
    spec, covariates = resolve_series(data, None, seed=0)
    settings = predict_settings(args.model, args)
    check_device(settings.device)
    if settings.threads < 0:
        raise UserError(f"forecast predict: threads = {settings.threads} should be 0 (torch's default) or more")
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    result = predict_series(
        args.model,
        spec,
        covariates,
        args.out,
        scale=args.scale,
        align_series=data.align_series,
        assume_crs=args.assume_crs,
        prefix=args.prefix,
        compile_gates=settings.compile,
        tile=settings.tile,
        overlap=settings.overlap,
        batch_size=settings.batch_size,
        panel_width=settings.panel_width,
        device=settings.device,
        precision=settings.precision,
    )
    print(f"forecast {result['height']}x{result['width']} px from {', '.join(Path(p).name for p in result['inputs'])}")
    for path in result["files"]:
        print(f"wrote {path}")
