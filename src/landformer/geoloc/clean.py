"""Label cleaning, fitted on the training labels only: MAD filtering, then DBSCAN on the sphere.

Region by region:

0. coordinates off the globe (latitude beyond +-90 or longitude beyond +-180, typically latitude and longitude
   swapped) are dropped, whether cleaning is enabled or not: no frame or distance is defined for them;
1. excluded filenames (an optional list) are dropped;
2. Median Absolute Deviation: each coordinate's modified z-score ``0.6745 (x - median) / MAD`` (Iglewicz and
   Hoaglin) is computed in the region's local frame (see :mod:`landformer.geoloc.frames`), so longitudes across
   the antimeridian are not torn apart; a point beyond ``mad_threshold`` in either coordinate is dropped. When
   more than half the points share a value (MAD = 0) the mean absolute deviation times 1.2533 stands in for it;
3. DBSCAN with the haversine metric (``eps_km`` on the sphere, ``min_samples`` neighbours including the point):
   points in no dense cluster ("noise") are dropped as isolated.

The report says, for every dropped row, which step dropped it and the number behind it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.cluster import DBSCAN

from landformer.geoloc.config import CleanConfig
from landformer.geoloc.frames import LocalFrame
from landformer.synth.places import EARTH_RADIUS_KM, haversine_km

MAD_CONSISTENCY = 0.6745  # the 0.75 quantile of the standard normal: makes MAD comparable to a standard deviation
MEAN_AD_CONSISTENCY = 1.253314  # sqrt(pi / 2): the mean absolute deviation's factor for the same purpose


def robust_z_scores(values: np.ndarray) -> np.ndarray:
    """Modified z-scores ``0.6745 (x - median) / MAD`` per column of (N, D) values (see the module docstring
    for MAD = 0); all zeros for a column whose values are all equal."""
    values = np.asarray(values, np.float64)
    deviation = values - np.median(values, axis=0)
    mad = np.median(np.abs(deviation), axis=0)
    mean_ad = np.mean(np.abs(deviation), axis=0)
    scores = np.zeros_like(values)
    for column in range(values.shape[1]):
        if mad[column] > 0:
            scores[:, column] = MAD_CONSISTENCY * deviation[:, column] / mad[column]
        elif mean_ad[column] > 0:
            scores[:, column] = deviation[:, column] / (MEAN_AD_CONSISTENCY * mean_ad[column])
    return scores


def robust_frame(latitude: np.ndarray, longitude: np.ndarray) -> LocalFrame:
    """A frame centred on the coordinate-wise median of the points in their spherical-mean frame: outliers that
    pull the mean barely move the median, and the MAD is then measured around the bulk of the region."""
    first = LocalFrame.centred_on(latitude, longitude)
    median_local = np.median(first.to_local(latitude, longitude), axis=0)
    centre_lat, centre_lon = first.to_global(median_local[None])
    return LocalFrame(float(centre_lat[0]), float(centre_lon[0]))


def mad_outliers(latitude: np.ndarray, longitude: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(outlier mask, largest absolute modified z-score of each point) in the points' robust local frame."""
    if len(latitude) < 3:
        return np.zeros(len(latitude), dtype=bool), np.zeros(len(latitude))
    local = robust_frame(latitude, longitude).to_local(latitude, longitude)
    worst = np.abs(robust_z_scores(local)).max(axis=1)
    return worst > threshold, worst


def dbscan_isolated(latitude: np.ndarray, longitude: np.ndarray, eps_km: float, min_samples: int) -> np.ndarray:
    """Mask of DBSCAN noise points (haversine metric on latitude/longitude in radians, eps in km)."""
    if len(latitude) == 0:
        return np.zeros(0, dtype=bool)
    radians = np.radians(np.stack([latitude, longitude], axis=1))
    labels = DBSCAN(
        eps=eps_km / EARTH_RADIUS_KM, min_samples=min_samples, metric="haversine", algorithm="ball_tree"
    ).fit_predict(radians)
    return labels == -1


def _nearest_km(latitude: float, longitude: float, others_lat: np.ndarray, others_lon: np.ndarray) -> float:
    """Great-circle distance (km) to the nearest of the other points; inf when there are none."""
    if len(others_lat) == 0:
        return float("inf")
    return float(haversine_km(latitude, longitude, others_lat, others_lon).min())


def clean_labels(
    filenames: list[str],
    latitude: np.ndarray,
    longitude: np.ndarray,
    regions: list[str],
    config: CleanConfig,
    excluded: set[str] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Which rows to keep (bool mask) and a report of what was dropped, why, and the counts per region.

    ``excluded`` adds filenames (read from ``config.exclude_file`` by the caller) to ``config.exclude``.
    """
    latitude, longitude = np.asarray(latitude, np.float64), np.asarray(longitude, np.float64)
    region_array = np.asarray(regions, dtype=object)
    keep = np.ones(len(filenames), dtype=bool)
    dropped: list[dict[str, Any]] = []
    per_region: dict[str, dict[str, int]] = {}
    excluded_names = set(config.exclude) | (excluded or set())

    def drop(index: int, reason: str, detail: str) -> None:
        keep[index] = False
        dropped.append(
            {
                "filename": filenames[index],
                "latitude": float(latitude[index]),
                "longitude": float(longitude[index]),
                "Region_ID": str(region_array[index]),
                "reason": reason,
                "detail": detail,
            }
        )

    for region in sorted(set(region_array.tolist())):
        members = np.flatnonzero(region_array == region)
        counts = {"rows": len(members), "off_globe": 0, "excluded": 0, "mad": 0, "dbscan": 0}
        for index in members:
            lat, lon = latitude[index], longitude[index]
            if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
                drop(int(index), "off_globe", f"latitude {lat:g}, longitude {lon:g} outside [-90, 90] x [-180, 180]")
                counts["off_globe"] += 1
            elif filenames[index] in excluded_names:
                drop(int(index), "excluded", "listed in clean.exclude")
                counts["excluded"] += 1
        if config.enabled and config.mad_threshold is not None:
            members = members[keep[members]]
            outliers, scores = mad_outliers(latitude[members], longitude[members], config.mad_threshold)
            for index, score in zip(members[outliers], scores[outliers], strict=True):
                drop(int(index), "mad", f"modified z-score {score:.2f} > {config.mad_threshold:g}")
            counts["mad"] = int(outliers.sum())
        if config.enabled and config.dbscan_eps_km is not None:
            members = members[keep[members]]
            isolated = dbscan_isolated(
                latitude[members], longitude[members], config.dbscan_eps_km, config.dbscan_min_samples
            )
            for position in np.flatnonzero(isolated):
                index = members[position]
                others = np.delete(members, position)
                nearest = _nearest_km(latitude[index], longitude[index], latitude[others], longitude[others])
                detail = (
                    f"fewer than {config.dbscan_min_samples} points within {config.dbscan_eps_km:g} km "
                    f"(nearest {nearest:.0f} km)"
                )
                drop(int(index), "dbscan", detail)
            counts["dbscan"] = int(isolated.sum())
        counts["kept"] = int(keep[region_array == region].sum())
        per_region[region] = counts
    unknown = sorted(excluded_names - set(filenames))
    report = {
        "fitted_on": "training labels",
        "config": {
            "enabled": config.enabled,
            "exclude_file": str(config.exclude_file) if config.exclude_file else None,
            "mad_threshold": config.mad_threshold,
            "dbscan_eps_km": config.dbscan_eps_km,
            "dbscan_min_samples": config.dbscan_min_samples,
            "excluded_filenames": len(excluded_names),
        },
        "regions": per_region,
        "total": {
            key: sum(counts[key] for counts in per_region.values())
            for key in ("rows", "off_globe", "excluded", "mad", "dbscan", "kept")
        },
        "excluded_not_found": unknown,
        "dropped": dropped,
    }
    return keep, report


def format_report(report: dict[str, Any]) -> str:
    """A small table: rows, off the globe, excluded, MAD outliers, DBSCAN-isolated and kept per region."""
    lines = [f"{'region':>8} {'rows':>6} {'off_globe':>9} {'excluded':>8} {'mad':>5} {'dbscan':>6} {'kept':>6}"]
    for region, counts in [*report["regions"].items(), ("all", report["total"])]:
        lines.append(
            f"{region:>8} {counts['rows']:>6} {counts['off_globe']:>9} {counts['excluded']:>8} {counts['mad']:>5} "
            f"{counts['dbscan']:>6} {counts['kept']:>6}"
        )
    return "\n".join(lines)
