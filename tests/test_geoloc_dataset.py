"""geoloc make-dataset: spatial-block splits, chips that wrap the antimeridian, the world's imagery chips."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from landformer.core.errors import UserError
from landformer.geoloc.config import DatasetConfig
from landformer.geoloc.make_dataset import (
    FEATURE_BANDS,
    FeatureMosaic,
    _coast_distance_km,
    assign_splits,
    make_dataset,
    make_world_dataset,
)
from landformer.synth.places import draw_cities, haversine_km, load_cities, thin_places


def test_splits_keep_blocks_whole_and_give_every_split_data() -> None:
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 10, size=(600, 2))
    regions = np.where(np.arange(600) < 400, "big", "small")
    splits = assign_splits(blocks, regions, val_fraction=0.15, test_fraction=0.2, seed=3)
    for region in ("big", "small"):
        members = regions == region
        for split in ("train", "val", "test"):
            assert (splits[members] == split).any()
        # Every block of a region lies in exactly one split.
        seen: dict[tuple[int, int], str] = {}
        for key, split in zip(map(tuple, blocks[members]), splits[members], strict=True):
            assert seen.setdefault(key, split) == split
        test_share = np.mean(splits[members] == "test")
        assert 0.2 <= test_share < 0.2 + 0.1  # at least the goal, overshooting by less than one block's share
    np.testing.assert_array_equal(splits, assign_splits(blocks, regions, 0.15, 0.2, seed=3))
    assert not np.array_equal(splits, assign_splits(blocks, regions, 0.15, 0.2, seed=4))


def _mosaic(resolution: float = 10.0) -> FeatureMosaic:
    height, width = round(180 / resolution), round(360 / resolution)
    columns = np.broadcast_to(np.arange(width, dtype=np.int16), (height, width))
    rows = np.broadcast_to(np.arange(height, dtype=np.int16)[:, None], (height, width))
    return FeatureMosaic(
        resolution=resolution,
        elevation_m=np.ascontiguousarray(columns),  # elevation = column index, to see where a chip comes from
        land=np.full((height, width), 255, np.uint8),
        coast_km=np.ascontiguousarray(rows),
        koppen=np.zeros((5, height, width), np.uint8),
    )


def test_chips_are_centred_on_the_place_and_wrap_the_antimeridian() -> None:
    mosaic = _mosaic()
    bands, transform = mosaic.chip(latitude=5.0, longitude=175.0, size=4)
    assert bands.shape == (len(FEATURE_BANDS), 4, 4)
    # The place (column 35, row 8) sits in pixel (2, 2); columns run 33, 34, 35, then wrap to 0.
    np.testing.assert_array_equal(bands[0, 0], [33, 34, 35, 0])
    np.testing.assert_array_equal(bands[2, :, 0], [6, 7, 8, 9])
    assert bands[1].min() == 1.0
    west, north = transform @ (2, 2)
    east, south = transform @ (3, 3)
    assert west <= 175.0 < east and south < 5.0 <= north
    # At the pole the edge row repeats instead of leaving the grid.
    polar, _ = mosaic.chip(latitude=89.0, longitude=0.0, size=4)
    np.testing.assert_array_equal(polar[2, :, 0], [0, 0, 0, 1])


def test_coast_distance_is_signed_km() -> None:
    land = np.zeros((5, 9), np.float32)
    land[:, 5:] = 1.0
    distance = _coast_distance_km(land, resolution=1.0)
    np.testing.assert_allclose(distance[2], np.array([-5, -4, -3, -2, -1, 1, 2, 3, 4]) * 111.32)


def test_thinning_keeps_places_apart_and_drops_only_close_ones() -> None:
    rng = np.random.default_rng(0)
    # A metro of 30 suburbs within ~10 km, a high-latitude pair 20 km apart, a pair across the antimeridian
    # 22 km apart, and 40 scattered places.
    latitude = np.concatenate(
        [-33.9 + rng.uniform(-0.05, 0.05, 30), [70.0, 70.18], [0.0, 0.0], rng.uniform(-60, 60, 40)]
    )
    longitude = np.concatenate(
        [151.1 + rng.uniform(-0.05, 0.05, 30), [20.0, 20.0], [179.9, -179.9], rng.uniform(-170, 170, 40)]
    )
    order = rng.permutation(len(latitude))
    taken = thin_places(latitude, longitude, order, min_km=25.0)
    distances = haversine_km(
        latitude[taken, None], longitude[taken, None], latitude[None, taken], longitude[None, taken]
    )
    assert distances[~np.eye(len(taken), dtype=bool)].min() >= 25.0
    assert np.isin(np.arange(30), taken).sum() == 1  # one suburb stands for the metro
    assert np.isin([30, 31], taken).sum() == 1 and np.isin([32, 33], taken).sum() == 1
    # Every dropped place is within 25 km of a taken one (nothing far away is lost).
    dropped = np.setdiff1d(np.arange(len(latitude)), taken)
    nearest = haversine_km(
        latitude[dropped, None], longitude[dropped, None], latitude[None, taken], longitude[None, taken]
    )
    assert nearest.min(axis=1).max() < 25.0
    assert list(taken) == [i for i in order if i in set(taken.tolist())]  # first come, first kept
    np.testing.assert_array_equal(thin_places(latitude, longitude, order, 0.0), order)
    # Dense places across many cell rows and columns at high latitude: still no pair closer than 25 km.
    dense_lat, dense_lon = rng.uniform(58.0, 62.0, 1500), rng.uniform(-2.0, 2.0, 1500)
    kept = thin_places(dense_lat, dense_lon, np.arange(1500), 25.0)
    pairwise = haversine_km(dense_lat[kept, None], dense_lon[kept, None], dense_lat[None, kept], dense_lon[None, kept])
    assert pairwise[~np.eye(len(kept), dtype=bool)].min() >= 25.0


def test_cities_are_drawn_per_continent() -> None:
    cities = load_cities("cities15000")
    assert len(cities) > 30000 and {"AF", "AS", "EU", "NA", "OC", "SA"} <= {c["continent"] for c in cities}
    with pytest.warns(UserWarning, match="continent AN has only"):
        drawn = draw_cities(cities, per_region=25, min_region_cities=20, seed=0)
    counts = {continent: sum(c["continent"] == continent for c in drawn) for continent in ("AF", "EU", "OC")}
    assert counts == {"AF": 25, "EU": 25, "OC": 25}
    with pytest.warns(UserWarning, match="continent AN has only"):
        spread = draw_cities(cities, per_region=1000, min_region_cities=20, seed=0, min_spacing_km=25.0)
    oceania = [c for c in spread if c["continent"] == "OC"]
    assert 100 < len(oceania) < 300  # most of its 438 cities are suburbs of a few metros
    assert sum(c["continent"] == "AS" for c in spread) == 1000
    with pytest.warns(UserWarning, match="continent AN has only"):
        towns = draw_cities(load_cities("cities5000"), per_region=1000, min_region_cities=20, seed=0, min_spacing_km=25)
    assert sum(c["continent"] == "OC" for c in towns) > 1.5 * len(oceania)  # why cities5000 is the default
    with pytest.raises(UserError, match="city list 'villages'"):
        load_cities("villages")
    assert not any(c["continent"] == "AN" for c in drawn)
    paris = next(c for c in cities if c["name"] == "Paris" and c["countrycode"] == "FR")
    assert paris["continent"] == "EU" and paris["latitude"] == pytest.approx(48.85, abs=0.01)


def test_world_chips_are_imagery_windows_labelled_with_their_centres(tmp_path: Path) -> None:
    from landformer.core.raster import open_raster, pixel_to_lonlat
    from landformer.synth.world import make_world

    world = make_world(tmp_path / "world", size=64, seed=0)
    config = DatasetConfig(out=tmp_path / "out", sources=["world"], world=world.folder, world_chips_per_region=6,
                           world_chip_size=16)  # fmt: skip
    folder = make_world_dataset(config, progress=False)
    rows = []
    for split in ("train", "val", "test"):
        with open(folder / f"{split}.csv") as handle:
            rows += list(csv.DictReader(handle))
    assert len(rows) == 24 and {row["Region_ID"] for row in rows} == {"NW", "NE", "SW", "SE"}
    with open_raster(world.imagery) as dataset:
        imagery, transform, crs = dataset.read(), dataset.transform, dataset.crs
    # Find each chip in the imagery and check its label is the lon/lat of the chip's centre.
    for row in rows[:6]:
        chip = np.asarray(Image.open(folder / "images" / row["filename"])).transpose(2, 0, 1)
        matches = [
            (r, c)
            for r in range(64 - 16 + 1)
            for c in range(64 - 16 + 1)
            if np.array_equal(imagery[:, r : r + 16, c : c + 16], chip)
        ]
        assert matches
        lon, lat = pixel_to_lonlat(transform, crs, matches[0][0] + 8, matches[0][1] + 8)
        assert float(row["latitude"]) == pytest.approx(lat[0], abs=1e-9)
        assert float(row["longitude"]) == pytest.approx(lon[0], abs=1e-9)


def test_dataset_config_refuses_bad_values(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="multiple of 1/120"):
        DatasetConfig(resolution=0.013)
    with pytest.raises(UserError, match="leave some data for training"):
        DatasetConfig(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(UserError, match="sources"):
        DatasetConfig(sources=[])
    with pytest.raises(UserError, match=r"world\.json"):
        make_dataset(DatasetConfig(out=tmp_path, sources=["world"], world=tmp_path / "nothing"))
