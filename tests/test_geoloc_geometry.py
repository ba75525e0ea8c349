"""geoloc geometry: great-circle distances, accuracy within km, local frames, coordinate scalers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from landformer.core.errors import UserError
from landformer.geoloc.evaluate import (
    accuracy_within,
    error_summary,
    mse_degrees,
    wrapped_longitude_difference,
)
from landformer.geoloc.frames import LocalFrame
from landformer.geoloc.scaler import CoordinateScaler
from landformer.synth.places import EARTH_RADIUS_KM, haversine_km

# (from, to, published great-circle distance in km; sphere of radius 6371 km, e.g. movable-type.co.uk)
CITY_DISTANCES = [
    ((51.5074, -0.1278), (48.8566, 2.3522), 343.5),  # London - Paris
    ((40.7128, -74.0060), (34.0522, -118.2437), 3936.0),  # New York - Los Angeles
    ((-33.8688, 151.2093), (-37.8136, 144.9631), 713.4),  # Sydney - Melbourne
]


@pytest.mark.parametrize(("start", "end", "km"), CITY_DISTANCES)
def test_haversine_matches_known_city_distances(start: tuple, end: tuple, km: float) -> None:
    assert haversine_km(*start, *end) == pytest.approx(km, rel=3e-3)
    assert haversine_km(*end, *start) == pytest.approx(haversine_km(*start, *end), rel=1e-12)


def test_haversine_exact_cases_and_antimeridian() -> None:
    half_circumference = np.pi * EARTH_RADIUS_KM
    assert haversine_km(0, 0, 0, 180) == pytest.approx(half_circumference, rel=1e-12)
    assert haversine_km(90, 0, 0, 77) == pytest.approx(half_circumference / 2, rel=1e-12)
    assert haversine_km(12.5, 33.0, 12.5, 33.0) == 0.0
    # One degree of longitude at the equator, across the antimeridian: 111.2 km, not 359 degrees' worth.
    assert haversine_km(0, 179.5, 0, -179.5) == pytest.approx(half_circumference / 180, rel=1e-12)
    distances = haversine_km(np.zeros(3), np.zeros(3), np.array([0.0, 1.0, 2.0]), np.zeros(3))
    np.testing.assert_allclose(distances, [0.0, half_circumference / 180, 2 * half_circumference / 180])


def test_accuracy_within_km_on_a_hand_made_example() -> None:
    errors = np.array([0.5, 1.0, 10.0, 25.0, 199.0, 500.0, 1000.0, 3000.0])
    accuracy = accuracy_within(errors)
    # Thresholds are inclusive: 1.0 km is within 1 km, 25.0 within 25 km.
    assert accuracy == {
        "acc_1km": 2 / 8,
        "acc_25km": 4 / 8,
        "acc_200km": 5 / 8,
        "acc_750km": 6 / 8,
        "acc_2500km": 7 / 8,
    }
    summary = error_summary(errors)
    assert summary["median_km"] == (25.0 + 199.0) / 2
    assert summary["mean_km"] == pytest.approx(errors.mean())
    assert np.isnan(accuracy_within(np.array([]))["acc_1km"])


def test_mse_in_degrees_wraps_longitude() -> None:
    assert wrapped_longitude_difference(np.array([179.0]), np.array([-179.0]))[0] == pytest.approx(-2.0)
    assert mse_degrees(np.array([10.0]), np.array([179.0]), np.array([12.0]), np.array([-179.0])) == pytest.approx(4.0)


def test_local_frame_round_trip_and_centre() -> None:
    rng = np.random.default_rng(0)
    latitude, longitude = rng.uniform(-80, 80, 500), rng.uniform(-180, 180, 500)
    frame = LocalFrame(37.5, -122.0)
    local = frame.to_local(latitude, longitude)
    back_lat, back_lon = frame.to_global(local)
    np.testing.assert_allclose(back_lat, latitude, atol=1e-9)
    np.testing.assert_allclose(wrapped_longitude_difference(back_lon, longitude), 0.0, atol=1e-9)
    np.testing.assert_allclose(frame.to_local(np.array([37.5]), np.array([-122.0])), [[0.0, 0.0]], atol=1e-12)
    # A rotation keeps great-circle distances.
    np.testing.assert_allclose(
        haversine_km(local[:-1, 0], local[:-1, 1], local[1:, 0], local[1:, 1]),
        haversine_km(latitude[:-1], longitude[:-1], latitude[1:], longitude[1:]),
        rtol=1e-9,
        atol=1e-6,
    )


def test_pacific_region_never_averages_across_the_antimeridian() -> None:
    latitude = np.array([-17.0, -18.0, -16.5, -17.5])
    longitude = np.array([178.5, 179.5, -179.5, -178.5])  # Fiji-like: both sides of 180
    frame = LocalFrame.centred_on(latitude, longitude)
    assert abs(abs(frame.centre_longitude) - 180.0) < 0.01
    local = frame.to_local(latitude, longitude)
    assert np.abs(local).max() < 2.0  # a few degrees from the centre, whichever side of 180
    mean_lat, mean_lon = frame.to_global(local.mean(axis=0)[None])
    assert abs(abs(mean_lon[0]) - 180.0) < 0.01  # the average place is near 180, not near 0 (raw mean lon is 0)
    assert np.mean(longitude) == 0.0
    assert mean_lat[0] == pytest.approx(-17.25, abs=0.01)


@pytest.mark.parametrize("kind", ["robust", "standard", "minmax"])
def test_scaler_round_trips_exactly_through_json(kind: str) -> None:
    rng = np.random.default_rng(1)
    values = rng.normal([10.0, -40.0], [3.0, 7.0], size=(200, 2))
    scaler = CoordinateScaler.fit(values, kind)
    reloaded = CoordinateScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert reloaded == scaler
    np.testing.assert_array_equal(reloaded.transform(values), scaler.transform(values))
    np.testing.assert_allclose(scaler.inverse_transform(scaler.transform(values)), values, rtol=0, atol=1e-12)


def test_scaler_statistics_equal_direct_computation() -> None:
    values = np.array([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0], [10.0, 5.0]])
    robust = CoordinateScaler.fit(values, "robust")
    q25, median, q75 = np.percentile(values[:, 0], [25, 50, 75])
    assert robust.centre == (median, 5.0)
    assert robust.scale == (q75 - q25, 1.0)  # a constant column keeps scale 1
    standard = CoordinateScaler.fit(values, "standard")
    assert standard.centre[0] == pytest.approx(3.25) and standard.scale[0] == pytest.approx(values[:, 0].std())
    minmax = CoordinateScaler.fit(values, "minmax").transform(values)
    np.testing.assert_allclose(minmax[:, 0], [0.0, 0.1, 0.2, 1.0])
    with pytest.raises(UserError, match="unknown scaler"):
        CoordinateScaler.fit(values, "quantile")
    with pytest.raises(UserError, match="not a valid scaler"):
        CoordinateScaler.from_dict({"kind": "robust", "centre": [0.0], "scale": [1.0, 2.0]})


def test_prediction_map_draws_land_grey_and_sea_blue(tmp_path) -> None:
    import imageio.v3 as iio

    from landformer.geoloc.plots import map_extent, save_prediction_map

    assert map_extent([np.array([10.0, 20.0])], [np.array([170.0, 179.0])]) == (169.1, 9.0, 179.9, 21.0)
    # A window inside Virginia is all land: grey everywhere away from the points, never the sea's blue.
    lat, lon = np.array([38.40, 38.48]), np.array([-78.90, -78.80])
    path = save_prediction_map(tmp_path / "land.png", lat, lon, lat[::-1], lon, ["A", "A"], "land")
    pixels = iio.imread(path)[..., :3].reshape(-1, 3)
    grey = (pixels == [212, 212, 212]).all(axis=1).mean()
    blue = (pixels == [220, 235, 245]).all(axis=1).mean()
    assert grey > 0.4 and blue == 0.0
    # Mid-Pacific to Hawaii: mostly sea.
    lat, lon = np.array([0.0, 21.3]), np.array([-175.0, -157.8])
    path = save_prediction_map(tmp_path / "sea.png", lat, lon, lat, lon, ["A", "B"], "sea")
    pixels = iio.imread(path)[..., :3].reshape(-1, 3)
    assert (pixels == [220, 235, 245]).all(axis=1).mean() > 0.4
