"""``landformer geoloc ...``: the geoloc pipeline's sub-commands (thin shells over its Python API)."""

from __future__ import annotations

import argparse
from pathlib import Path

from landformer.core.commands import add_command, add_group, recipe_printed
from landformer.core.train import add_resume_argument
from landformer.geoloc.config import (
    CleanConfig,
    add_config_arguments,
    add_dataset_arguments,
    config_from_args,
    dataset_config_from_args,
)


def _make_dataset(args: argparse.Namespace) -> None:
    from landformer.geoloc.make_dataset import describe, make_dataset

    config = dataset_config_from_args(args)
    if recipe_printed(args, config):
        return
    for folder in make_dataset(config, progress=not args.no_progress).values():
        print(describe(folder))


def _train(args: argparse.Namespace) -> None:
    from landformer.geoloc.train import train

    config = config_from_args(args)
    if not recipe_printed(args, config):
        train(config, config.out, resume=args.resume)


def _evaluate(args: argparse.Namespace) -> None:
    from landformer.geoloc.evaluate import evaluate_run, format_evaluation

    results = evaluate_run(
        args.run, args.csv, args.images, args.out, args.batch_size, args.device, map_png=not args.no_map
    )
    print(format_evaluation(results))
    out = Path(args.out) if args.out else Path(args.run)
    print(f"written: {out / 'evaluation.json'}, {out / 'evaluation_predictions.csv'}")
    if "map" in results:
        print(f"map: {results['map']}")


def _predict(args: argparse.Namespace) -> None:
    from landformer.geoloc.predict import predict_images

    path = predict_images(args.run, args.out, args.images, args.csv, args.use_regions, args.batch_size, args.device)
    print(path)


def _clean(args: argparse.Namespace) -> None:
    from landformer.core.io import write_json
    from landformer.geoloc.clean import clean_labels, format_report
    from landformer.geoloc.data import read_filename_list, read_labels

    table = read_labels(args.csv, out_of_range=True)  # reported as dropped, like the other outliers
    assert table.latitude is not None and table.longitude is not None and table.regions is not None
    config = CleanConfig(
        mad_threshold=args.mad_threshold, dbscan_eps_km=args.dbscan_eps_km, dbscan_min_samples=args.dbscan_min_samples
    )
    excluded = read_filename_list(args.exclude) if args.exclude else set()
    _, report = clean_labels(table.filenames, table.latitude, table.longitude, table.regions, config, excluded)
    print(format_report(report))
    if args.report:
        write_json(args.report, report)
        print(f"report: {args.report}")


def register(subparsers: argparse._SubParsersAction) -> None:
    group = add_group(subparsers, "geoloc", "per-region latitude/longitude regression from images")

    dataset = add_command(
        group,
        "make-dataset",
        "build the default data: GeoTIFF feature chips around real cities and PNG chips of the synthetic world",
        _make_dataset,
    )
    add_dataset_arguments(dataset)
    dataset.add_argument("--no-progress", action="store_true", help="hide progress bars")

    train = add_command(
        group, "train", "clean the labels, then train a region router and one coordinate regressor per region", _train
    )
    add_config_arguments(train)
    add_resume_argument(train)

    evaluate = add_command(
        group, "evaluate", "per-region errors (oracle and routed region) next to the region-median baseline", _evaluate
    )
    evaluate.add_argument("--run", required=True, help="run folder written by `geoloc train`")
    evaluate.add_argument("--csv", required=True, help="labelled CSV (filename, latitude, longitude, Region_ID)")
    evaluate.add_argument("--images", help="image folder (default: images/ beside the CSV)")
    evaluate.add_argument("--out", help="folder for evaluation.json, the predictions CSV and the map (default: --run)")
    evaluate.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    evaluate.add_argument("--no-map", action="store_true", help="skip the map PNG")

    predict = add_command(
        group,
        "predict",
        "write filename, latitude, longitude, region for images (region picked by the router)",
        _predict,
    )
    predict.add_argument("--run", required=True, help="run folder written by `geoloc train`")
    predict.add_argument("--images", help="image folder (every PNG/JPEG/GeoTIFF in it, or those listed in --csv)")
    predict.add_argument("--csv", help="CSV whose filename column lists the images")
    predict.add_argument("--out", required=True, help="predictions CSV to write")
    predict.add_argument("--use-regions", action="store_true", help="take each image's region from the CSV's Region_ID")
    predict.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    predict.add_argument("--device", default="cpu", help="cpu, cuda, or auto")

    clean = add_command(group, "clean", "report what label cleaning would drop from a CSV, and why", _clean)
    clean.add_argument("--csv", required=True, help="labelled CSV to clean")
    clean.add_argument(
        "--mad-threshold",
        type=float,
        default=CleanConfig.mad_threshold,
        help="modified z-score beyond which a label is dropped",
    )
    clean.add_argument(
        "--dbscan-eps-km", type=float, default=CleanConfig.dbscan_eps_km, help="DBSCAN neighbourhood radius in km"
    )
    clean.add_argument(
        "--dbscan-min-samples",
        type=int,
        default=CleanConfig.dbscan_min_samples,
        help="DBSCAN points that make a cluster core",
    )
    clean.add_argument("--exclude", help="file listing filenames to drop")
    clean.add_argument("--report", help="write the full report (every dropped row) to this JSON file")
