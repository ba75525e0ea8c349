"""Label cleaning: MAD and DBSCAN drop planted outliers and keep the inliers; the report says why."""

from __future__ import annotations

import numpy as np
import pytest

from landformer.core.errors import UserError
from landformer.geoloc.clean import clean_labels, dbscan_isolated, mad_outliers, robust_z_scores
from landformer.geoloc.config import CleanConfig


def _cluster(rng: np.random.Generator, lat: float, lon: float, n: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    return lat + rng.normal(0, spread, n), lon + rng.normal(0, spread, n)


def test_robust_z_scores_equal_the_textbook_formula() -> None:
    values = np.array([[1.0], [2.0], [3.0], [4.0], [100.0]])
    median, mad = 3.0, 1.0  # |x - 3| = 2, 1, 0, 1, 97 -> median 1
    np.testing.assert_allclose(robust_z_scores(values)[:, 0], 0.6745 * (values[:, 0] - median) / mad)
    # More than half the values equal: MAD = 0, the mean absolute deviation (x 1.2533) stands in.
    tied = np.array([[5.0], [5.0], [5.0], [5.0], [9.0]])
    np.testing.assert_allclose(robust_z_scores(tied)[:, 0], [0, 0, 0, 0, 4.0 / (1.253314 * 0.8)])
    assert not robust_z_scores(np.full((4, 1), 2.0)).any()


def test_mad_drops_planted_outliers_and_keeps_inliers() -> None:
    rng = np.random.default_rng(0)
    lat, lon = _cluster(rng, 48.0, 10.0, 200, 2.0)
    planted_lat = np.array([-33.9, 40.7, 48.0])  # Cape Town, New York, and a latitude/longitude mix-up (10, 48)
    planted_lon = np.array([18.4, -74.0, 100.0])
    outliers, scores = mad_outliers(np.concatenate([lat, planted_lat]), np.concatenate([lon, planted_lon]), 3.5)
    assert outliers[200:].all()
    assert outliers[:200].sum() <= 2  # a normal sample has almost nothing beyond 3.5 robust sigmas
    assert scores[200:].min() > 10


def test_mad_works_across_the_antimeridian() -> None:
    rng = np.random.default_rng(1)
    lat, lon = _cluster(rng, -17.0, 180.0, 120, 1.0)
    lon = (lon + 180.0) % 360.0 - 180.0  # half the points near +179, half near -179
    assert (lon > 0).any() and (lon < 0).any()
    outliers, _ = mad_outliers(np.append(lat, -17.0), np.append(lon, 150.0), 3.5)
    assert outliers[-1]  # 30 degrees west of the cluster
    assert not outliers[:-1].any()  # raw longitudes would put the bulk at +-179 and flag half of it


def test_dbscan_drops_isolated_points_and_keeps_clusters() -> None:
    rng = np.random.default_rng(2)
    lat1, lon1 = _cluster(rng, 50.0, 8.0, 60, 0.5)
    lat2, lon2 = _cluster(rng, 45.0, 20.0, 40, 0.5)
    lat = np.concatenate([lat1, lat2, [60.0, 35.0]])
    lon = np.concatenate([lon1, lon2, [-5.0, 30.0]])  # two lone points more than 1000 km from any cluster
    isolated = dbscan_isolated(lat, lon, eps_km=200.0, min_samples=3)
    assert isolated[-2:].all()
    assert not isolated[:-2].any()
    # A pair is not a cluster of 3, but is one of 2.
    pair_lat, pair_lon = np.array([0.0, 0.1]), np.array([0.0, 0.1])
    assert dbscan_isolated(pair_lat, pair_lon, 200.0, 3).all()
    assert not dbscan_isolated(pair_lat, pair_lon, 200.0, 2).any()


def test_clean_labels_reports_every_drop_with_its_reason() -> None:
    rng = np.random.default_rng(3)
    west_lat, west_lon = _cluster(rng, 48.0, 6.0, 50, 0.3)
    east_lat, east_lon = _cluster(rng, 48.0, 14.0, 50, 0.3)
    lat_b, lon_b = _cluster(rng, -15.0, -60.0, 100, 2.0)
    # Region A is two towns 600 km apart, plus one MAD outlier (in Australia) and one point half way between
    # the towns: central for MAD (z near 0) but 300 km from anyone, so isolated for DBSCAN.
    lat = np.concatenate([west_lat, east_lat, [-25.0, 48.0], lat_b])
    lon = np.concatenate([west_lon, east_lon, [135.0, 10.0], lon_b])
    regions = ["A"] * 102 + ["B"] * 100
    filenames = [f"img{i}.png" for i in range(len(lat))]
    config = CleanConfig(mad_threshold=3.5, dbscan_eps_km=200.0, dbscan_min_samples=3, exclude=["img150.png"])
    keep, report = clean_labels(filenames, lat, lon, regions, config, excluded={"img3.png", "nothere.png"})

    reasons = {row["filename"]: row["reason"] for row in report["dropped"]}
    assert reasons["img100.png"] == "mad"
    assert reasons["img101.png"] == "dbscan"
    assert reasons["img3.png"] == "excluded" and reasons["img150.png"] == "excluded"
    assert not keep[[3, 100, 101, 150]].any()
    assert keep.sum() == len(lat) - len(report["dropped"])
    assert report["regions"]["A"] == {"rows": 102, "off_globe": 0, "excluded": 1, "mad": 1, "dbscan": 1, "kept": 99}
    assert report["regions"]["B"]["excluded"] == 1
    assert report["total"]["kept"] == int(keep.sum())
    assert report["excluded_not_found"] == ["nothere.png"]
    mad_row = next(row for row in report["dropped"] if row["filename"] == "img100.png")
    assert mad_row["Region_ID"] == "A" and "z-score" in mad_row["detail"]
    dbscan_row = next(row for row in report["dropped"] if row["filename"] == "img101.png")
    assert "nearest" in dbscan_row["detail"]

    # Disabled cleaning still honours the exclusion list, and nothing else is dropped.
    keep_all, report_off = clean_labels(filenames, lat, lon, regions, CleanConfig(enabled=False, exclude=["img0.png"]))
    assert not keep_all[0] and keep_all[1:].all()
    assert [row["reason"] for row in report_off["dropped"]] == ["excluded"]


def test_clean_config_rejects_bad_values() -> None:
    with pytest.raises(UserError, match="mad_threshold"):
        CleanConfig(mad_threshold=0.0)
    with pytest.raises(UserError, match="dbscan_eps_km"):
        CleanConfig(dbscan_eps_km=-1.0)
    with pytest.raises(UserError, match="dbscan_min_samples"):
        CleanConfig(dbscan_min_samples=0)
