"""Strong baselines: the causal-context model against a hand-computed table, the compressors, fair test chips."""

from __future__ import annotations

import bz2
import gzip
import lzma
import math

import numpy as np
import pytest

from landformer.core.chips import ChipSet
from landformer.core.errors import UserError
from landformer.landcover import baselines
from landformer.landcover.baselines import CausalContextModel

# Two 2x3 training chips of 2 classes. Contexts are (W, N, NW, NE) with "o" for outside the chip:
#   chip A  0 0 1    (0,0) oooo->0  (0,1) 0ooo->0  (0,2) 0ooo->1
#           0 1 1    (1,0) o0o0->0  (1,1) 0001->1  (1,2) 110o->1
#   chip B  0 0 0    (0,0) oooo->0  (0,1) 0ooo->0  (0,2) 0ooo->0
#           1 1 1    (1,0) o0o0->1  (1,1) 1000->1  (1,2) 100o->1
# Counts [class 0, class 1]: oooo [2, 0], 0ooo [3, 1], o0o0 [1, 1], 0001 [0, 1], 110o [0, 1], 1000 [0, 1], 100o [0, 1].
TRAIN = np.array([[[0, 0, 1], [0, 1, 1]], [[0, 0, 0], [1, 1, 1]]])
# Test chips; -1 is nodata, which is not scored and reads as "outside" when it is a neighbour.
#   chip 1  0 0   (0,0) oooo: 2.5/3   (0,1) 0ooo: 3.5/5   (1,0) o0o0: 1.5/3   (1,1) 000o unseen: 1/2
#           0 0
#   chip 2  1 -1  (0,0) oooo: 0.5/3   (0,1) nodata        (1,0) o1oo unseen: 1/2   (1,1) 1o1o unseen: 1/2
#           1 0
TEST = np.array([[[0, 0], [0, 0]], [[1, -1], [1, 0]]])
TEST_PROBABILITIES = [2.5 / 3, 3.5 / 5, 1.5 / 3, 0.5, 0.5 / 3, 0.5, 0.5]


def test_context_model_equals_the_hand_computed_table() -> None:
    model = CausalContextModel.fit(TRAIN, n_classes=2)
    assert len(model.contexts) == 7 and model.n_training_pixels == 12
    expected = -sum(math.log2(p) for p in TEST_PROBABILITIES) / len(TEST_PROBABILITIES)
    assert abs(model.bits_per_pixel(TEST) - expected) < 1e-12
    log2_p = model.log2_prob(TEST)
    assert np.isnan(log2_p[1, 0, 1]) and np.isfinite(log2_p).sum() == 7
    np.testing.assert_allclose(log2_p[0].ravel(), np.log2(TEST_PROBABILITIES[:4]), rtol=0, atol=1e-12)


def test_context_model_fits_the_same_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = CausalContextModel.fit(TRAIN, n_classes=2)
    monkeypatch.setattr(baselines, "CHUNK_CHIPS", 1)
    chunked = CausalContextModel.fit(TRAIN, n_classes=2)
    np.testing.assert_array_equal(chunked.contexts, whole.contexts)
    np.testing.assert_array_equal(chunked.counts, whole.counts)


def test_probabilities_sum_to_one_in_every_context() -> None:
    rng = np.random.default_rng(0)
    model = CausalContextModel.fit(rng.integers(-1, 3, size=(5, 6, 6)), n_classes=3)
    every_context = np.arange(4**4)  # base K + 1 = 4, four neighbours
    probabilities = model.probabilities(every_context)
    assert probabilities.shape == (256, 3) and (probabilities > 0).all()
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=0, atol=1e-12)
    unseen = np.setdiff1d(every_context, model.contexts)
    np.testing.assert_allclose(model.probabilities(unseen), 1 / 3)


def test_sampling_reproduces_a_deterministic_table() -> None:
    model = CausalContextModel.fit(np.full((5, 8, 8), 2), n_classes=4)
    samples = model.sample(10, 8, 12, np.random.default_rng(0))
    assert samples.shape == (10, 8, 12) and samples.dtype == np.int64
    # Sampling reads the raw counts, not the smoothed table: class 2 everywhere, even where the wider map
    # meets contexts never seen (the last 4 columns back off to shorter contexts, all class 2).
    assert (samples == 2).all()
    rng = np.random.default_rng(3)
    maps = rng.integers(0, 3, size=(4, 6, 6))
    mixed = CausalContextModel.fit(maps, n_classes=3)
    np.testing.assert_array_equal(
        mixed.sample(5, 6, 6, np.random.default_rng(1)), mixed.sample(5, 6, 6, np.random.default_rng(1))
    )
    assert np.isin(mixed.sample(5, 6, 6, np.random.default_rng(1), temperature=0.01), [0, 1, 2]).all()


def test_sampling_backs_off_to_the_longest_seen_context() -> None:
    """Counts of TRAIN (see the table at the top), o = outside, base 3."""
    model = CausalContextModel.fit(TRAIN, n_classes=2)
    o = 2

    def context(west: int, north: int, north_west: int, north_east: int) -> int:
        return ((west * 3 + north) * 3 + north_west) * 3 + north_east

    ids = [
        context(0, o, o, o),  # seen: [3, 1]
        context(0, o, o, 0),  # unseen; (0, o, o) seen as 0ooo: [3, 1]
        context(1, 0, 0, 1),  # unseen; (1, 0, 0) seen as 1000 and 100o: [0, 2]
        context(1, 1, 1, 1),  # unseen, (1, 1, 1) too; (1, 1) seen as 110o: [0, 1]
        context(o, 1, 0, 0),  # only W = o seen, as oooo and o0o0: [3, 1]
    ]
    np.testing.assert_array_equal(model.sampling_weights(np.array(ids)), [[3, 1], [3, 1], [0, 2], [0, 1], [3, 1]])
    lone = CausalContextModel.fit(np.array([[[1]]]), n_classes=3)
    np.testing.assert_array_equal(lone.sampling_weights(np.array([context(0, 0, 0, 0)])), [[0, 1, 0]])


def test_samples_follow_a_stripe_table() -> None:
    """Training maps of vertical stripes 0 1 0 1 ...: each cell is determined by its west and north neighbours."""
    stripes = np.tile(np.arange(8) % 2, (30, 8, 1))
    model = CausalContextModel.fit(stripes, n_classes=2)
    np.testing.assert_array_equal(model.sample(3, 8, 8, np.random.default_rng(0)), stripes[:3])
    wider = model.sample(3, 8, 12, np.random.default_rng(0))
    np.testing.assert_array_equal(wider, np.tile(np.arange(12) % 2, (3, 8, 1)))
    assert model.bits_per_pixel(stripes) < 0.1 < model.bits_per_pixel(np.tile(np.arange(8) // 4 % 2, (30, 8, 1)))


def test_context_model_bad_input() -> None:
    with pytest.raises(UserError, match=r"classes 0\.\.1"):
        CausalContextModel.fit(np.array([[[0, 2]]]), n_classes=2)
    with pytest.raises(UserError, match="no valid pixel"):
        CausalContextModel.fit(np.full((1, 2, 2), -1), n_classes=2)
    model = CausalContextModel.fit(TRAIN, n_classes=2)
    with pytest.raises(UserError, match="temperature"):
        model.sample(1, 2, 2, np.random.default_rng(0), temperature=0)
    with pytest.raises(UserError, match=">= 1"):
        model.sample(0, 2, 2, np.random.default_rng(0))


def test_compressors_pooled_and_per_chip() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.repeat(rng.integers(0, 5, size=(6, 4, 4)), 4, axis=1), 4, axis=2)
    labels[0, 0, :3] = -1
    bits = baselines.compressed_bits(labels)
    assert set(bits) == {*baselines.CODECS, *(f"{codec}_per_chip" for codec in baselines.CODECS)}
    pixels = np.where(labels >= 0, labels, 255).astype(np.uint8)
    n = labels.size
    assert bits["gzip"] == 8 * len(gzip.compress(pixels.tobytes(), compresslevel=9, mtime=0)) / n
    assert bits["bz2_per_chip"] == 8 * sum(len(bz2.compress(chip.tobytes(), 9)) for chip in pixels) / n
    # The small dictionary changes nothing but speed: the stream is as long as preset 9's.
    assert bits["lzma"] == 8 * len(lzma.compress(pixels.tobytes(), preset=9 | lzma.PRESET_EXTREME)) / n
    for codec in baselines.CODECS:
        assert bits[f"{codec}_per_chip"] > bits[codec] > 0  # headers paid per chip
    with pytest.raises(UserError, match="byte"):
        baselines.compressed_bits(np.full((1, 2, 2), 300))


def test_mosaics_stay_within_the_webp_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(baselines, "WEBP_MAX_SIDE", 9)
    pixels = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4)
    mosaics = baselines._mosaics(pixels)
    assert [m.shape for m in mosaics] == [(8, 8), (4, 4)]
    np.testing.assert_array_equal(mosaics[0][4:, :4], pixels[2])
    np.testing.assert_array_equal(mosaics[1], pixels[4])


def chip_set(data: np.ndarray, coords: np.ndarray, metadata: dict) -> ChipSet:
    empty = np.empty((0, *data.shape[1:]), dtype=data.dtype)
    return ChipSet(empty, data, np.empty((0, 2)), coords, metadata)


def test_heldout_chips_drop_duplicates_and_overlaps() -> None:
    """Chips of 4 px at 1/100 degree: centres less than 4 px apart in both axes share a pixel."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 3, size=(6, 1, 4, 4)).astype(np.int16)
    data[3] = data[1]  # an exact copy somewhere else
    offsets_px = np.array([[0, 0], [3, 0], [4, 0], [20, 20], [23, 23], [24, 20]])  # (lon, lat) in pixels
    coords = np.array([10.0, 50.0]) + offsets_px * 0.01
    metadata = {"crs": "EPSG:4326", "pixel_size": [0.01, 0.01]}
    heldout = baselines.heldout_chips(chip_set(data, coords, metadata))
    # 3 is a copy of 1; 1 overlaps 0 (3 px apart), 2 does not (4 px); 5 overlaps 4 (1 and 3 px apart).
    np.testing.assert_array_equal(heldout.indices, [0, 2, 4])
    assert (heldout.duplicates, heldout.overlapping, heldout.total) == (1, 2, 6)
    assert "3 of 6 test chips kept" in heldout.describe()
    fair, same = baselines.fair_test_split(chip_set(data, coords, metadata))
    np.testing.assert_array_equal(fair.test_data, data[[0, 2, 4]])
    np.testing.assert_array_equal(fair.test_coords, coords[[0, 2, 4]])
    np.testing.assert_array_equal(same.indices, heldout.indices)


def test_heldout_chips_in_a_projected_crs() -> None:
    """Centres 30 m pixels apart in EPSG:5070 (NLCD's grid), written as lon/lat the way chip files store them."""
    from affine import Affine

    from landformer.core.raster import pixel_to_lonlat

    transform = Affine(30.0, 0, 500_000.0, 0, -30.0, 4_000_000.0)
    rows = np.array([0, 7, 8, 8])
    cols = np.array([0, 7, 0, 8])
    lon, lat = pixel_to_lonlat(transform, "EPSG:5070", rows + 4, cols + 4)
    data = np.arange(4 * 64, dtype=np.int16).reshape(4, 1, 8, 8)
    metadata = {"crs": "EPSG:5070", "pixel_size": [30.0, 30.0]}
    heldout = baselines.heldout_chips(chip_set(data, np.stack([lon, lat], axis=1), metadata))
    np.testing.assert_array_equal(heldout.indices, [0, 2, 3])  # chip 1 shares pixel (7, 7) with chip 0


def test_heldout_chips_without_metadata_only_deduplicate() -> None:
    data = np.zeros((3, 1, 2, 2), dtype=np.int16)
    data[1, 0, 0, 0] = 1
    heldout = baselines.heldout_chips(chip_set(data, np.zeros((3, 2)), {}))
    np.testing.assert_array_equal(heldout.indices, [0, 1])
    assert heldout.overlapping is None and "overlap not checked" in heldout.describe()
    assert heldout.to_dict()["duplicates_dropped"] == 1


def test_fit_context_model_needs_a_train_split() -> None:
    data = TRAIN[:, None].astype(np.int16)
    assert baselines.fit_context_model(chip_set(data, np.zeros((2, 2)), {}), 2) is None
    with_train = ChipSet(data, data, np.zeros((2, 2)), np.zeros((2, 2)), {})
    model = baselines.fit_context_model(with_train, 2)
    assert model is not None and model.n_training_pixels == 12


def test_strongest_context_bits_is_the_better_of_the_two_fits() -> None:
    """Three copies of chip A and one of chip B: the fit on every chip weighs A three times, the fit on distinct
    chips once; the baseline reports whichever scores the test chips in fewer bits, and says which."""
    train = np.stack([TRAIN[0], TRAIN[0], TRAIN[0], TRAIN[1]])[:, None].astype(np.int16)
    with_train = ChipSet(train, TEST[:, None].astype(np.int16), np.zeros((4, 2)), np.zeros((2, 2)), {})
    every = baselines.fit_context_model(with_train, 2)
    distinct = baselines.fit_context_model(with_train, 2, deduplicate=True)
    assert every is not None and distinct is not None
    assert (every.n_training_pixels, distinct.n_training_pixels) == (24, 12)
    # The distinct fit is the hand-computed table above.
    expected_distinct = -np.mean(np.log2(TEST_PROBABILITIES))
    assert distinct.bits_per_pixel(TEST) == pytest.approx(expected_distinct)
    scores = {"every train chip": every.bits_per_pixel(TEST), "one copy of each distinct train chip": expected_distinct}
    assert scores["every train chip"] != pytest.approx(expected_distinct)
    bits, fit = baselines.strongest_context_bits(with_train, TEST, 2)
    assert bits == pytest.approx(min(scores.values())) and fit == min(scores, key=scores.get)
    empty = ChipSet(train[:0], train, np.zeros((0, 2)), np.zeros((4, 2)), {})
    assert baselines.strongest_context_bits(empty, TEST, 2) is None
