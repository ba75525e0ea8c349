"""``geoloc evaluate``: how far predictions land from the truth, per region, against a baseline.

Numbers reported per region (the true Region_ID) and over all images:

- MSE of the regressed coordinates in scaled units (the region's scaler over its local frame, as the original
  work printed) and in original units (degrees of latitude / longitude, longitude differences wrapped into
  [-180, 180]); both with the true region's model (oracle);
- great-circle error (median and mean km) and the share of images within 1 / 25 / 200 / 750 / 2500 km, with the
  true region's model (oracle), with the region the router picks (routed), and for a baseline that always answers
  the region's median training coordinate.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from landformer.core.errors import UserError
from landformer.core.io import atomic_path, write_json
from landformer.geoloc.data import LabelTable, read_labels
from landformer.geoloc.plots import save_prediction_map
from landformer.geoloc.predict import PRELOAD_LIMIT, GeolocPredictor
from landformer.synth.places import haversine_km

ACCURACY_KM = (1.0, 25.0, 200.0, 750.0, 2500.0)


def accuracy_within(errors_km: np.ndarray, thresholds_km: Sequence[float] = ACCURACY_KM) -> dict[str, float]:
    """Share of errors at or below each threshold, keyed ``acc_<km>km``; NaN for no errors at all."""
    errors_km = np.asarray(errors_km, np.float64)
    return {
        f"acc_{threshold:g}km": float(np.mean(errors_km <= threshold)) if len(errors_km) else float("nan")
        for threshold in thresholds_km
    }


def error_summary(errors_km: np.ndarray) -> dict[str, float]:
    """Median and mean great-circle error (km) and accuracy within each threshold."""
    errors_km = np.asarray(errors_km, np.float64)
    empty = len(errors_km) == 0
    return {
        "median_km": float("nan") if empty else float(np.median(errors_km)),
        "mean_km": float("nan") if empty else float(np.mean(errors_km)),
        **accuracy_within(errors_km),
    }


def wrapped_longitude_difference(longitude1: np.ndarray, longitude2: np.ndarray) -> np.ndarray:
    """``longitude1 - longitude2`` in degrees, wrapped into [-180, 180)."""
    return (np.asarray(longitude1, np.float64) - np.asarray(longitude2, np.float64) + 180.0) % 360.0 - 180.0


def mse_degrees(
    latitude: np.ndarray, longitude: np.ndarray, true_latitude: np.ndarray, true_longitude: np.ndarray
) -> float:
    """Mean squared error over both coordinates in degrees squared (longitude differences wrapped)."""
    d_lat = np.asarray(latitude, np.float64) - np.asarray(true_latitude, np.float64)
    d_lon = wrapped_longitude_difference(longitude, true_longitude)
    return float(np.mean(np.concatenate([d_lat**2, d_lon**2]))) if len(d_lat) else float("nan")


# ------------------------------------------------------------------------------------------ a trained run


def _summaries(errors: dict[str, np.ndarray], members: np.ndarray) -> dict[str, dict[str, float]]:
    return {name: error_summary(values[members]) for name, values in errors.items()}


def evaluate_run(
    run_dir: str | os.PathLike[str],
    csv_path: str | os.PathLike[str],
    images: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    map_png: bool = True,
) -> dict[str, Any]:
    """Evaluate a trained run on a labelled CSV; writes ``evaluation.json``, ``evaluation_predictions.csv`` and
    ``evaluation_map.png`` into ``out`` (default: the run folder) and returns the numbers.

    Rows of regions the run has no model for are counted and left out (there is no oracle for them).
    """
    table = read_labels(csv_path)
    assert table.latitude is not None and table.longitude is not None and table.regions is not None
    folder = Path(images) if images is not None else Path(csv_path).parent / "images"
    out = Path(out) if out is not None else Path(run_dir)
    predictor = GeolocPredictor(run_dir, device)
    modelled = np.isin(np.asarray(table.regions, dtype=object), predictor.regions)
    unmodelled = sorted(set(np.asarray(table.regions, dtype=object)[~modelled].tolist()))
    table = table.subset(modelled)
    if not len(table):
        raise UserError(f"{csv_path}: no row belongs to a region of {run_dir} ({', '.join(predictor.regions)})")
    assert table.latitude is not None and table.longitude is not None and table.regions is not None
    store = predictor.store(folder, table.filenames, preload=len(table) <= PRELOAD_LIMIT)
    true_region = np.asarray(table.regions, dtype=object)
    n = len(table)

    oracle_lat, oracle_lon = np.zeros(n), np.zeros(n)
    scaled_error = np.zeros((n, 2))
    baseline_lat, baseline_lon = np.zeros(n), np.zeros(n)
    for region in predictor.regions:
        members = np.flatnonzero(true_region == region)
        if not len(members):
            continue
        model = predictor.models[region]
        scaled, oracle_lat[members], oracle_lon[members] = predictor.regress(store, members, region, batch_size)
        true_scaled = model.scaler.transform(model.frame.to_local(table.latitude[members], table.longitude[members]))
        scaled_error[members] = scaled - true_scaled
        baseline_lat[members], baseline_lon[members] = model.median_latitude, model.median_longitude
    routed = (
        predictor.predict(store, None, batch_size)
        if predictor.router is not None or len(predictor.regions) == 1
        else None
    )

    errors = {
        "oracle": haversine_km(oracle_lat, oracle_lon, table.latitude, table.longitude),
        "baseline": haversine_km(baseline_lat, baseline_lon, table.latitude, table.longitude),
    }
    if routed is not None:
        errors["routed"] = haversine_km(routed["latitude"], routed["longitude"], table.latitude, table.longitude)

    def row(members: np.ndarray) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "n": int(members.sum()),
            "mse_scaled": float(np.mean(scaled_error[members] ** 2)),
            "mse_degrees": mse_degrees(
                oracle_lat[members], oracle_lon[members], table.latitude[members], table.longitude[members]
            ),
            **_summaries(errors, members),
        }
        if routed is not None:
            entry["router_accuracy"] = float(np.mean(routed["region"][members] == true_region[members]))
        return entry

    per_region = {region: row(true_region == region) for region in predictor.regions if (true_region == region).any()}
    results: dict[str, Any] = {
        "run": str(run_dir),
        "csv": str(csv_path),
        "images": n,
        "unmodelled_regions": unmodelled,
        "regions": per_region,
        "all": row(np.ones(n, dtype=bool)),
    }
    write_json(out / "evaluation.json", results)
    _write_predictions(out / "evaluation_predictions.csv", table, oracle_lat, oracle_lon, routed, errors)
    if map_png:
        best = routed if routed is not None else {"latitude": oracle_lat, "longitude": oracle_lon}
        kind = "routed" if routed is not None else "oracle"
        median = results["all"][kind]["median_km"]
        results["map"] = str(
            save_prediction_map(
                out / "evaluation_map.png",
                table.latitude,
                table.longitude,
                best["latitude"],
                best["longitude"],
                list(true_region),
                f"{Path(csv_path).name}: {n} images, {kind} median error {median:.0f} km",
            )
        )
    return results


def _write_predictions(
    path: Path,
    table: LabelTable,
    oracle_lat: np.ndarray,
    oracle_lon: np.ndarray,
    routed: dict[str, np.ndarray] | None,
    errors: dict[str, np.ndarray],
) -> None:
    columns = ["filename", "Region_ID", "latitude", "longitude", "oracle_latitude", "oracle_longitude", "oracle_km"]
    if routed is not None:
        columns += ["routed_region", "routed_latitude", "routed_longitude", "routed_km"]
    columns.append("baseline_km")
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for i, filename in enumerate(table.filenames):
            values = [filename, table.regions[i], table.latitude[i], table.longitude[i]]
            values += [f"{oracle_lat[i]:.6f}", f"{oracle_lon[i]:.6f}", f"{errors['oracle'][i]:.3f}"]
            if routed is not None:
                values += [routed["region"][i], f"{routed['latitude'][i]:.6f}", f"{routed['longitude'][i]:.6f}"]
                values.append(f"{errors['routed'][i]:.3f}")
            values.append(f"{errors['baseline'][i]:.3f}")
            writer.writerow(values)


def format_evaluation(results: dict[str, Any]) -> str:
    """The per-region table: MSE (scaled, degrees^2), then median/mean km and acc@km for each way of choosing
    the region and for the baseline."""
    kinds = [kind for kind in ("oracle", "routed", "baseline") if kind in results["all"]]
    acc_keys = [f"acc_{threshold:g}km" for threshold in ACCURACY_KM]
    header = (
        f"{'region':>8} {'n':>5} {'mse_scaled':>10} {'mse_deg2':>10} {'router':>6}  "
        f"{'kind':<8} {'median_km':>9} {'mean_km':>9} " + " ".join(f"{key[4:]:>7}" for key in acc_keys)
    )
    lines = [header]
    for region, entry in [*results["regions"].items(), ("all", results["all"])]:
        router = f"{entry['router_accuracy']:.2f}" if "router_accuracy" in entry else "-"
        for position, kind in enumerate(kinds):
            lead = (
                f"{region:>8} {entry['n']:>5} {entry['mse_scaled']:>10.4g} {entry['mse_degrees']:>10.4g} {router:>6}"
                if position == 0
                else " " * 43
            )
            numbers = entry[kind]
            accuracy = " ".join(f"{numbers[key]:>7.2f}" for key in acc_keys)
            lines.append(f"{lead}  {kind:<8} {numbers['median_km']:>9.1f} {numbers['mean_km']:>9.1f} {accuracy}")
    if results.get("unmodelled_regions"):
        lines.append(f"left out (no model): {', '.join(results['unmodelled_regions'])}")
    return "\n".join(lines)
