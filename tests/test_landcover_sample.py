"""Land-cover sample / animate / inpaint / inpaint-eval / perplexity / info, on a tiny model with sharpened random
weights (so probabilities vary and identities are meaningful), checked against direct computations."""

from __future__ import annotations

import json
import lzma
import math
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window
from test_landcover_model import build
from test_landcover_train import SIZE, TOY_LEGEND, make_chip_file

from landformer.core.errors import UserError
from landformer.core.legend import Legend
from landformer.core.raster import write_geotiff
from landformer.landcover import baselines, decoding, plots
from landformer.landcover.apps import animation, common, inpainting, sampling, scoring
from landformer.landcover.data import class_entropy_bits
from landformer.landcover.export import CovariateStats, load, save
from landformer.landcover.model import LandCoverConfig, LandCoverRandAR

K = 4


def sharpened(seed: int = 0, **overrides: object) -> LandCoverRandAR:
    return build(seed, n_classes=K, chip_size=SIZE, **overrides)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sample")


@pytest.fixture(scope="module")
def chips(folder: Path) -> Path:
    return make_chip_file(folder / "toy.npz", elevation=True)


@pytest.fixture(scope="module")
def model_dir(folder: Path, chips: Path) -> Path:
    save(sharpened(), Legend.from_dict(TOY_LEGEND), folder / "model", {"chips": str(chips)})
    return folder / "model"


@pytest.fixture(scope="module")
def conditional_dir(folder: Path) -> Path:
    """A model conditioned on elevation that records no training chips."""
    stats = CovariateStats(mean=[120.0], std=[10.0])
    model = sharpened(1, covariate_channels=1, covariate_patch=4)
    save(model, Legend.from_dict(TOY_LEGEND), folder / "conditional", {}, ["landcover", "elevation"], stats)
    return folder / "conditional"


@pytest.fixture(scope="module")
def reference(folder: Path) -> Path:
    """A 20x20 one-band DEM in NLCD's Albers grid."""
    dem = np.linspace(100, 140, 400, dtype=np.float32).reshape(20, 20)
    return write_geotiff(folder / "dem.tif", dem, from_origin(-1000, 2000, 30, 30), "EPSG:5070", nodata=np.nan)


def test_samples_are_reproducible_maps_of_the_legend(model_dir: Path, tmp_path: Path) -> None:
    first = sampling.sample_maps(model_dir, tmp_path / "a", n=5, seed=3, batch_size=2)
    again = sampling.sample_maps(model_dir, tmp_path / "b", n=5, seed=3, batch_size=2)
    other = sampling.sample_maps(model_dir, tmp_path / "c", n=5, seed=4, steps=3, top_k=2, top_p=0.9, temperature=0.8)
    arrays = [np.load(summary["npz"]) for summary in (first, again, other)]
    classes = arrays[0]["classes"]
    assert classes.shape == (5, SIZE, SIZE) and classes.min() >= 0 and classes.max() < K
    np.testing.assert_array_equal(arrays[0]["codes"], np.array([1, 2, 3, 4])[classes])
    np.testing.assert_array_equal(classes, arrays[1]["classes"])
    assert not np.array_equal(classes, arrays[2]["classes"])
    assert Path(first["png"]).is_file() and first["geotiffs"] == []


def test_samples_on_a_reference_raster_are_georeferenced(model_dir: Path, reference: Path, tmp_path: Path) -> None:
    summary = sampling.sample_maps(model_dir, tmp_path, n=3, reference=reference, seed=1)
    windows = np.load(summary["npz"])["windows"]
    classes = np.load(summary["npz"])["classes"]
    with rasterio.open(reference) as ref:
        for i, path in enumerate(summary["geotiffs"]):
            with rasterio.open(path) as tif:
                row, col = windows[i]
                assert tif.crs == ref.crs and tif.shape == (SIZE, SIZE)
                assert tif.transform == ref.window_transform(Window(col, row, SIZE, SIZE))
                np.testing.assert_array_equal(tif.read(1), np.array([1, 2, 3, 4])[classes[i]])


def test_a_conditioned_model_takes_covariates_from_chips_or_reference(
    conditional_dir: Path, chips: Path, reference: Path, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match="give --chips"):
        sampling.sample_maps(conditional_dir, tmp_path / "none", n=2)
    from_chips = sampling.sample_maps(conditional_dir, tmp_path / "chips", n=2, chips=chips, guidance=1.5)
    assert from_chips["conditioning"] == f"test chips of {chips}"
    from_reference = sampling.sample_maps(conditional_dir, tmp_path / "ref", n=2, reference=reference)
    assert from_reference["conditioning"] == f"reference {reference}" and len(from_reference["geotiffs"]) == 2
    unconditional = sampling.sample_maps(conditional_dir, tmp_path / "null", n=2, unconditional=True)
    assert unconditional["conditioning"] == "none"
    # The reference's covariates are read from its windows and z-scored with the model's statistics.
    loaded = load(conditional_dir)
    conditioning = sampling.sampling_conditioning(loaded, 2, reference=reference, seed=5)
    with rasterio.open(reference) as ref:
        dem = ref.read(1)
    for i, (row, col) in enumerate(conditioning.windows):
        expected = (dem[row : row + SIZE, col : col + SIZE] - 120.0) / 10.0
        np.testing.assert_allclose(conditioning.covariates[i, 0].numpy(), expected, rtol=1e-6)


def test_sampling_bad_input(model_dir: Path, conditional_dir: Path, folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="guidance needs conditioning"):
        sampling.sample_maps(model_dir, tmp_path, n=2, guidance=2.0)
    two_bands = write_geotiff(
        tmp_path / "two.tif", np.zeros((2, 20, 20), np.float32), from_origin(0, 600, 30, 30), "EPSG:5070"
    )
    with pytest.raises(UserError, match="has 2 band"):
        sampling.sample_maps(conditional_dir, tmp_path, n=2, reference=two_bands)
    with pytest.raises(UserError, match="temperature must be > 0"):
        sampling.sample_maps(model_dir, tmp_path, n=2, temperature=0)


def test_animation_adds_one_pixel_per_frame(model_dir: Path, tmp_path: Path) -> None:
    summary = animation.animate(model_dir, tmp_path, nrows=1, ncols=2, fps=4, seed=2)
    frames = iio.imread(summary["gif"], index=None)
    # Blank grid, one frame per decoded pixel; the final frame held for a second merges into the last one.
    assert len(frames) == 1 + SIZE * SIZE
    grid = frames[..., :3]
    assert (grid[0] == 255).all()
    white = (grid == 255).all(axis=-1).sum(axis=(1, 2))
    assert (np.diff(white) < 0).all()  # every frame colours more pixels
    np.testing.assert_array_equal(grid[-1], iio.imread(summary["png"])[..., :3])


def test_conditional_marginals_equal_a_full_forward_with_the_cell_last() -> None:
    model = sharpened(2)
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, K, (3, SIZE, SIZE), generator=generator)
    known = labels.masked_fill(torch.rand(3, SIZE, SIZE, generator=generator) < 0.6, -1)  # unequal counts: padding
    probs = inpainting.conditional_marginals(model, known)
    assert probs.shape == (3, SIZE * SIZE, K)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, SIZE * SIZE))
    flat = known.reshape(3, -1)
    for b in range(3):
        known_cells = torch.nonzero(flat[b] >= 0).flatten()
        for cell in torch.nonzero(flat[b] < 0).flatten()[:4]:
            order = torch.cat([known_cells, cell.view(1)]).unsqueeze(0)
            prefix = model.encode_conditioning(1, SIZE, SIZE)
            with torch.no_grad():
                logits = model.forward_sequence(order, flat[b, known_cells].unsqueeze(0), SIZE, prefix)[0, -1]
            torch.testing.assert_close(probs[b, cell], logits.softmax(-1), atol=1e-5, rtol=1e-4)


def test_masks() -> None:
    box = inpainting.box_mask(2, 8, 0.25)
    assert box.sum(dim=(1, 2)).tolist() == [16, 16] and box[0, 2:6, 2:6].all()
    random = inpainting.random_mask(3, 8, 0.3, torch.Generator().manual_seed(0))
    assert random.sum(dim=(1, 2)).tolist() == [19, 19, 19] and not torch.equal(random[0], random[1])
    with pytest.raises(UserError, match="mask ratio"):
        inpainting.box_mask(1, 8, 1.5)


def test_baselines_on_a_hand_made_chip() -> None:
    known = np.array([[[2, -1, -1, 1], [2, -1, -1, -1], [-1, -1, -1, -1], [-1, -1, -1, 3]]])
    probs = inpainting.majority_baseline(known, 4)
    np.testing.assert_allclose(probs[0], np.array([0.5, 1.5, 2.5, 1.5]) / 6)
    assert probs[0].argmax() == 2
    nearest = inpainting.nearest_known(known)[0]
    assert nearest[0, 1] == 2 and nearest[0, 2] == 1 and nearest[3, 2] == 3 and nearest[2, 0] == 2
    np.testing.assert_array_equal(nearest[known[0] >= 0], known[0][known[0] >= 0])


@pytest.mark.parametrize("mask", ["box", "random", "raster"])
def test_inpainting_returns_known_pixels_unchanged(model_dir: Path, chips: Path, tmp_path: Path, mask: str) -> None:
    if mask == "raster":
        pattern = np.zeros((SIZE, SIZE), np.uint8)
        pattern[:, :3] = 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(tmp_path / "mask.tif", "w", driver="GTiff", height=SIZE, width=SIZE, count=1,
                               dtype="uint8") as dst:  # fmt: skip
                dst.write(pattern, 1)
        mask = str(tmp_path / "mask.tif")
    summary = inpainting.inpaint(model_dir, chips, tmp_path / "out", mask=mask, ratio=0.4, n=5, seed=1)
    arrays = np.load(summary["npz"])
    truth, hidden, result = arrays["truth"], arrays["mask"], arrays["result"]
    assert truth.shape == result.shape == hidden.shape == (5, SIZE, SIZE)
    np.testing.assert_array_equal(result[~hidden], truth[~hidden])
    assert result[hidden].min() >= 0 and result[hidden].max() < K
    expected_hidden = {"box": 25 / 64, "random": 26 / 64}.get(summary["mask"], 24 / 64)
    assert summary["hidden_fraction"] == pytest.approx(expected_hidden)
    assert summary["accuracy_hidden"] == pytest.approx((result == truth)[hidden].mean())
    assert Path(summary["png"]).is_file()


def test_inpainting_keeps_nodata_or_fills_it(model_dir: Path, chips: Path, tmp_path: Path) -> None:
    """Nodata pixels that are not hidden stay nodata by default, and are drawn with keep_nodata=False."""
    from landformer.core.chips import load_chips, write_chips

    source = load_chips(chips)
    test = source.test_data[:, :1].astype(np.int16)
    test[:, 0, 0, :4] = -1  # a nodata stripe along the top edge, outside the centred box
    holes = write_chips(
        tmp_path / "holes.npz",
        source.train_data[:, :1].astype(np.int16),
        test,
        source.train_coords,
        source.test_coords,
        {"legend": TOY_LEGEND, "channel_names": ["landcover"], "chip_size": SIZE},
    )
    results = {}
    for keep in (True, False):
        summary = inpainting.inpaint(
            model_dir, holes, tmp_path / str(keep), mask="box", ratio=0.4, n=4, keep_nodata=keep
        )
        arrays = np.load(summary["npz"])
        truth, hidden, results[keep] = arrays["truth"], arrays["mask"], arrays["result"]
        given = ~hidden & (truth >= 0)
        np.testing.assert_array_equal(results[keep][given], truth[given])
        assert (results[keep][hidden] >= 0).all()
    nodata = truth < 0
    assert nodata.sum() == 4 * 4
    assert (results[True][nodata] == -1).all()
    assert (results[False][nodata] >= 0).all()


def test_a_mask_of_the_wrong_shape_is_refused(model_dir: Path, chips: Path, tmp_path: Path) -> None:
    wrong = write_geotiff(tmp_path / "m.tif", np.ones((5, 5), np.uint8), from_origin(0, 150, 30, 30), "EPSG:5070")
    with pytest.raises(UserError, match=r"m\.tif is 5x5 pixels; the chips are 8x8"):
        inpainting.inpaint(model_dir, chips, tmp_path / "out", mask=str(wrong))
    with pytest.raises(UserError, match="neither 'box', 'random' nor an existing mask raster"):
        inpainting.inpaint(model_dir, chips, tmp_path / "out", mask="boxx")


def test_inpaint_eval_numbers_equal_direct_computations(model_dir: Path, chips: Path, tmp_path: Path) -> None:
    summary = inpainting.inpaint_eval(
        model_dir, chips, tmp_path, ratios=(0.25, 0.75), n=6, steps=4, batch_size=4, seed=2
    )
    assert [row["ratio"] for row in summary["rows"]] == [0.25, 0.75]
    loaded = load(model_dir)
    chip_set, _ = common.open_chips(loaded, chips)
    tensors = common.select_chips(loaded, chip_set, 6)
    hidden = inpainting.random_mask(6, SIZE, 0.75, torch.Generator().manual_seed(2)).reshape(6, -1)
    known = tensors.labels.reshape(6, -1).masked_fill(hidden, -1)
    probs = inpainting.conditional_marginals(loaded.model, known.reshape(6, SIZE, SIZE))
    target = tensors.labels.reshape(6, -1)[hidden]
    row = summary["rows"][1]
    assert row["hidden_pixels"] == 6 * 48
    assert row["model_accuracy"] == pytest.approx(float((probs.argmax(-1)[hidden] == target).float().mean()))
    expected_loss = float(-probs[hidden].gather(1, target.unsqueeze(1)).log().mean())
    assert row["model_log_loss"] == pytest.approx(expected_loss, rel=1e-5)
    majority = inpainting.majority_baseline(known.reshape(6, SIZE, SIZE).numpy(), K).argmax(-1)
    majority_per_pixel = np.repeat(majority[:, None], SIZE * SIZE, axis=1)[hidden.numpy()]
    assert row["majority_accuracy"] == pytest.approx(float(np.mean(majority_per_pixel == target.numpy())))
    nearest = inpainting.nearest_known(known.reshape(6, SIZE, SIZE).numpy()).reshape(6, -1)[hidden.numpy()]
    assert row["nearest_accuracy"] == pytest.approx(float(np.mean(nearest == target.numpy())))
    assert 0 <= row["model_sample_accuracy"] <= 1
    assert summary["model_beats_baselines"] == all(
        r["model_accuracy"] > max(r["majority_accuracy"], r["nearest_accuracy"]) for r in summary["rows"]
    )
    assert Path(summary["png"]).is_file()


def test_perplexity_equals_the_mean_log_likelihood(model_dir: Path, chips: Path, tmp_path: Path) -> None:
    summary = scoring.heldout_perplexity(model_dir, chips, tmp_path, orders=3, n=10, batch_size=4, seed=7)
    loaded = load(model_dir)
    labels = common.select_chips(loaded, common.open_chips(loaded, chips)[0], 10).labels
    raster = decoding.log_likelihood(loaded.model, labels, "raster")
    assert summary["raster_nats"] == pytest.approx(float(-raster.nanmean()), rel=1e-5)
    assert summary["raster_bits"] == pytest.approx(summary["raster_nats"] / math.log(2))
    assert summary["pixels"] == int((labels >= 0).sum()) and len(summary["random_nats_per_order"]) == 3
    assert summary["random_nats"] == pytest.approx(np.mean(summary["random_nats_per_order"]))
    assert summary["random_perplexity"] == pytest.approx(math.exp(summary["random_nats"]))
    again = scoring.heldout_perplexity(model_dir, chips, tmp_path / "again", orders=3, n=10, batch_size=10, seed=7)
    assert again["random_nats_per_order"][0] != summary["random_nats_per_order"][1]
    assert Path(summary["json"]).is_file()


def test_information_content_against_compressors(model_dir: Path, chips: Path, tmp_path: Path) -> None:
    summary = scoring.information_content(model_dir, chips, tmp_path, orders=2)
    loaded = load(model_dir)
    chip_set = common.open_chips(loaded, chips)[0]
    fair, heldout = baselines.fair_test_split(chip_set)
    labels = common.select_chips(loaded, fair, None).labels.numpy()
    assert summary["n_chips"] == len(heldout.indices) == len(labels)
    assert summary["heldout"] == heldout.to_dict()
    bits = summary["bits_per_pixel"]
    expected_lzma = 8 * len(lzma.compress(labels.astype(np.uint8).tobytes(), preset=9 | lzma.PRESET_EXTREME))
    assert bits["lzma"] == pytest.approx(expected_lzma / labels.size)
    assert bits["class_entropy"] == pytest.approx(class_entropy_bits(labels, K))
    context = baselines.CausalContextModel.fit(baselines.chip_labels(chip_set.train_data), K)
    assert bits["context"] == pytest.approx(context.bits_per_pixel(labels))
    assert summary["ratio_to_context"] == pytest.approx(bits["model_random_order"] / bits["context"])
    codecs = {*baselines.CODECS, *(f"{codec}_per_chip" for codec in baselines.CODECS)}
    assert set(bits) == {"model_random_order", "model_raster_order", "context", "class_entropy", *codecs}
    assert set(summary["baselines"]) == set(bits) - {"model_random_order", "model_raster_order"}
    assert summary["model_below"]["png"] == (bits["model_random_order"] < bits["png"])
    assert Path(summary["png"]).is_file()


def test_information_content_scores_fair_chips_and_says_when_there_is_no_context_model(
    model_dir: Path, tmp_path: Path
) -> None:
    """Test chips: two copies of one chip and a chip overlapping another; no train split."""
    from landformer.core.chips import load_chips, write_chips

    original = load_chips(make_chip_file(tmp_path / "toy.npz", elevation=True))
    test = original.test_data[[0, 0, 1, 2]]
    coords = np.array([[-100.0, 40.0], [-100.0, 40.0], [-100.0, 40.0001], [-99.0, 41.0]])  # chip 2 overlaps 0
    metadata = {**original.metadata, "crs": "EPSG:4326", "pixel_size": [0.001, 0.001]}
    empty = original.train_data[:0]
    path = write_chips(tmp_path / "unfair.npz", empty, test, np.empty((0, 2)), coords, metadata)
    summary = scoring.information_content(model_dir, path, tmp_path / "info", orders=1)
    assert summary["n_chips"] == 2
    assert (summary["heldout"]["duplicates_dropped"], summary["heldout"]["overlapping_dropped"]) == (1, 1)
    assert "context" not in summary["bits_per_pixel"] and summary["ratio_to_context"] is None
    assert any("train split is empty" in note for note in summary["notes"])


def test_class_entropy_of_known_distributions() -> None:
    assert class_entropy_bits(np.array([0, 1, 0, 1, -1]), 4) == pytest.approx(1.0)
    assert class_entropy_bits(np.array([2, 2, 2]), 4) == pytest.approx(0.0)
    assert class_entropy_bits(np.arange(4), 4) == pytest.approx(2.0)


def test_a_model_trained_on_igbp_chips_built_on_the_spot_finds_them_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the recorded chip file is gone (the packaged model on a user's machine), the IGBP chips are cut again
    into the data cache with the recorded settings, once, and the held-out split is the same block split."""
    from landformer.core.chips import load_chips
    from landformer.core.legend import load_legend
    from landformer.synth.packaged import igbp_chips

    monkeypatch.setenv("LANDFORMER_CACHE", str(tmp_path / "cache"))
    legend = load_legend("igbp")
    settings = {"chip_size": 8, "stride": 8, "test_fraction": 0.2, "seed": 3, "bbox": [0, 40, 10, 50], "max_water": 0.5}
    model = LandCoverRandAR(LandCoverConfig(n_classes=legend.n_classes, chip_size=8, n_layers=1, n_heads=1, dim=16))
    extra = {"chips": str(tmp_path / "gone.npz"), "igbp_chips": settings}
    loaded = load(save(model, legend, tmp_path / "run", extra))
    chip_set, path = common.open_chips(loaded, None)
    assert path.parent == tmp_path / "cache"
    expected = load_chips(igbp_chips(tmp_path / "direct.npz", **settings))
    np.testing.assert_array_equal(chip_set.test_data, expected.test_data)
    np.testing.assert_array_equal(chip_set.train_data, expected.train_data)
    stamp = path.stat().st_mtime_ns
    assert common.open_chips(loaded, None)[1] == path and path.stat().st_mtime_ns == stamp  # reused, not cut again


def test_samples_beside_real_chips_list_only_classes_present(tmp_path: Path) -> None:
    legend = Legend.from_dict(TOY_LEGEND)
    samples = np.zeros((4, SIZE, SIZE), dtype=np.int64)
    real = np.ones((4, SIZE, SIZE), dtype=np.int64)
    png = plots.samples_beside_real(tmp_path / "side.png", samples, real, legend)
    image = iio.imread(png)
    assert image.ndim == 3 and image.shape[1] > image.shape[0]  # two grids side by side
    palette = legend.palette()
    colours = {tuple(pixel) for pixel in image[..., :3].reshape(-1, 3)}
    assert tuple(palette[0]) in colours and tuple(palette[1]) in colours
    assert not any(tuple(palette[k]) in colours for k in range(2, legend.n_classes))  # absent classes: no swatch


def test_a_cold_sampled_fill_of_one_hidden_pixel_is_the_most_likely_class(
    model_dir: Path, chips: Path, tmp_path: Path
) -> None:
    """With one hidden pixel per chip the sampled fill draws from the same p(x | known) the most-likely fill
    takes the argmax of; near temperature 0 the two agree. The temperature reaches the JSON and leaves the
    most-likely fill alone."""
    ratio = 1 / SIZE**2
    cold = inpainting.inpaint_eval(model_dir, chips, tmp_path / "cold", ratios=(ratio,), n=8, temperature=1e-4, seed=3)
    (row,) = cold["rows"]
    assert cold["temperature"] == 1e-4 and row["hidden_pixels"] == 8
    assert row["model_sample_accuracy"] == row["model_accuracy"]
    warm = inpainting.inpaint_eval(model_dir, chips, tmp_path / "warm", ratios=(ratio,), n=8, temperature=1.0, seed=3)
    assert json.loads((tmp_path / "warm" / "inpaint_eval.json").read_text())["temperature"] == 1.0
    assert warm["rows"][0]["model_accuracy"] == row["model_accuracy"]
