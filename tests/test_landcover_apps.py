"""Land-cover applications on a tiny random model with 8x8 chips: invariants that must hold for any weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine
from test_landcover_model import build

from landformer.core.errors import UserError
from landformer.core.legend import Legend, load_legend
from landformer.landcover import evaluate
from landformer.landcover.apps import common, development, embedding, gibbs, panorama, realism, sampling
from landformer.landcover.baselines import CausalContextModel
from landformer.landcover.model import LandCoverRandAR, random_orders

SIZE = 8


@pytest.fixture(scope="module")
def legend() -> Legend:
    return load_legend("nlcd")


@pytest.fixture(scope="module")
def model(legend: Legend) -> LandCoverRandAR:
    return build(0, n_classes=legend.n_classes, chip_size=SIZE)


def labels_with_nodata(n: int, n_classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=(n, SIZE, SIZE))
    labels[rng.random(labels.shape) < 0.1] = -1
    return labels


def test_window_starts() -> None:
    assert common.window_starts(20, 8, 4) == [0, 4, 8, 12]
    assert common.window_starts(18, 8, 4) == [0, 4, 8, 10]  # the last window ends at the edge
    assert common.window_starts(8, 8, 4) == [0]
    with pytest.raises(UserError, match="does not fit"):
        common.window_starts(6, 8, 4)
    with pytest.raises(UserError, match="overlap"):
        common.window_starts(20, 8, 8)


def test_spread_indices() -> None:
    assert realism.spread_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert realism.spread_indices(5, 5).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(UserError, match="cannot pick 6 of 5"):
        realism.spread_indices(5, 6)


def test_gibbs_stays_in_legend_and_keeps_fixed_cells(model: LandCoverRandAR, legend: Legend, tmp_path) -> None:
    start = labels_with_nodata(3, legend.n_classes, seed=1)
    fixed = np.zeros_like(start, dtype=bool)
    fixed[:, :2, :] = True
    run = gibbs.gibbs_chains(model, start, sweeps=3, block_size=4, fixed=fixed, seed=5)
    assert run.frames.shape == (4, 3, SIZE, SIZE)
    np.testing.assert_array_equal(run.frames[0], start)
    later = run.frames[1:]
    valid = later >= 0
    assert later[valid].max() < legend.n_classes
    np.testing.assert_array_equal(later < 0, np.broadcast_to(start < 0, later.shape))  # nodata never changes
    np.testing.assert_array_equal(later[:, fixed], np.broadcast_to(start[fixed], later[:, fixed].shape))
    assert not np.array_equal(later[-1], start)  # the free cells did move
    for frame, fractions in zip(run.frames, run.class_fractions, strict=True):
        counts = np.bincount(frame[frame >= 0], minlength=legend.n_classes)
        np.testing.assert_allclose(fractions, counts / counts.sum())
    again = gibbs.gibbs_chains(model, start, sweeps=3, block_size=4, fixed=fixed, seed=5)
    np.testing.assert_array_equal(again.frames, run.frames)

    paths = gibbs.write_gibbs(run, legend, tmp_path)
    with np.load(paths["frames"]) as stored:
        np.testing.assert_array_equal(stored["frames"], run.frames)
    assert paths["gif"].stat().st_size > 0 and paths["fractions_png"].stat().st_size > 0


def test_noise_start_keeps_nodata() -> None:
    labels = labels_with_nodata(2, 6, seed=2)
    noise = gibbs.noise_start(labels, 6, seed=0)
    np.testing.assert_array_equal(noise < 0, labels < 0)
    assert noise.max() < 6


def test_development_probability_over_several_windows(model: LandCoverRandAR, legend: Legend, tmp_path) -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, legend.n_classes, size=(12, 20))
    labels[0, :5] = -1
    reimagine = np.zeros_like(labels, dtype=bool)
    reimagine[3:10, 4:17] = True  # spans several 8x8 windows
    result = development.development_probability(
        model, legend, labels, reimagine, n_samples=5, batch_size=2, keep_samples=5, steps=4, seed=1
    )
    probability = result.probability
    assert probability.shape == labels.shape
    developed = np.isin(labels, legend.group_indices("developed"))
    kept = ~reimagine & (labels >= 0)
    np.testing.assert_array_equal(probability[kept], developed[kept].astype(np.float32))
    nodata = (labels < 0) & ~reimagine
    np.testing.assert_array_equal(result.nodata, nodata)
    assert np.isnan(probability[nodata]).all()
    inside = probability[reimagine]
    assert ((inside >= 0) & (inside <= 1)).all()
    # With every sample kept, the probability is the share of developed samples, pixel by pixel.
    assert result.samples.shape == (5, 12, 20)
    share = np.isin(result.samples, legend.group_indices("developed")).mean(axis=0)
    np.testing.assert_allclose(probability[reimagine], share[reimagine], atol=1e-6)
    np.testing.assert_array_equal(result.samples[:, kept], np.broadcast_to(labels[kept], (5, int(kept.sum()))))
    assert (result.samples[:, nodata] == -1).all()  # nodata stays nodata in every sample
    assert (result.samples[:, reimagine] >= 0).all()
    assert result.windows == [(r, c) for r in (0, 4) for c in (0, 4, 8, 12)]  # windows with nothing new skipped

    transform = Affine(30.0, 0, 500_000.0, 0, -30.0, 4_000_000.0)
    paths = development.write_development_probability(
        result, legend, labels, reimagine, tmp_path, transform, "EPSG:5070"
    )
    import rasterio

    with rasterio.open(paths["geotiff"]) as dataset:
        assert dataset.transform == transform
        assert dataset.crs.to_epsg() == 5070
        assert dataset.nodata == development.NODATA_PROBABILITY
        stored = dataset.read(1, masked=True)
    np.testing.assert_array_equal(stored.mask, nodata)
    np.testing.assert_array_equal(stored.data[~nodata], probability[~nodata])
    assert paths["panel"].stat().st_size > 0

    # Gap filling: without keep_nodata the same cells are drawn and get a probability like the region.
    filled = development.development_probability(
        model, legend, labels, reimagine, n_samples=3, batch_size=3, keep_samples=3, steps=4, keep_nodata=False
    )
    assert not filled.nodata.any()
    assert (filled.samples >= 0).all()
    assert ((filled.probability >= 0) & (filled.probability <= 1)).all()


def test_development_probability_bad_input(model: LandCoverRandAR, legend: Legend) -> None:
    labels = np.zeros((SIZE, SIZE), dtype=np.int64)
    with pytest.raises(UserError, match="empty"):
        development.development_probability(model, legend, labels, np.zeros_like(labels, dtype=bool))
    with pytest.raises(UserError, match="at least the model's 8x8 chip"):
        development.development_probability(model, legend, labels[:4], np.ones((4, SIZE), dtype=bool))


def test_panorama_keeps_drawn_cells_and_has_the_asked_size(model: LandCoverRandAR, legend: Legend, tmp_path) -> None:
    result = panorama.panorama(model, width=22, height=12, n=2, steps=4, seed=2)
    assert result.maps.shape == (2, 12, 22)
    assert result.maps.min() >= 0 and result.maps.max() < legend.n_classes
    assert result.windows == [(r, c) for r in (0, 4) for c in (0, 4, 8, 12, 14)]
    # Once a cell is drawn, no later window changes it: the overlap is kept exactly.
    for before, after in zip(result.frames, result.frames[1:], strict=False):
        drawn = before >= 0
        np.testing.assert_array_equal(after[drawn], before[drawn])
    np.testing.assert_array_equal(result.frames[-1], result.maps)
    again = panorama.panorama(model, width=22, height=12, n=2, steps=4, seed=2)
    np.testing.assert_array_equal(again.maps, result.maps)
    paths = panorama.write_panorama(result, legend, tmp_path)
    assert paths["gif"].stat().st_size > 0
    with pytest.raises(UserError, match="at least"):
        panorama.panorama(model, width=6)


def test_chip_representations_are_what_the_head_reads(model: LandCoverRandAR) -> None:
    labels = torch.as_tensor(labels_with_nodata(3, model.config.n_classes, seed=4))
    representation = embedding.chip_representations(model, labels, seed=7)
    assert representation.shape == (3, model.config.dim)
    order = random_orders(3, SIZE * SIZE, torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits, _ = model(labels, order)
        # The head is linear without bias, so it maps the mean hidden state to the mean of the logits.
        torch.testing.assert_close(model.head(representation), logits.mean(dim=1), rtol=1e-4, atol=1e-5)


def test_embedding_points_and_pca_plot(model: LandCoverRandAR, legend: Legend, tmp_path) -> None:
    classes = embedding.embedding_points(model, legend, "classes")
    np.testing.assert_array_equal(classes.vectors, model.class_embedding.weight[: legend.n_classes].detach().numpy())
    positions = embedding.embedding_points(model, legend, "positions")
    assert positions.vectors.shape == (SIZE * SIZE, model.config.dim)
    result = embedding.embed_plot(model, legend, "classes", tmp_path)
    assert result.method == "pca" and "too few" in result.note  # 20 classes: PCA stands in for UMAP
    assert result.coords.shape == (legend.n_classes, 2)
    centred = classes.vectors - classes.vectors.mean(axis=0)
    top = np.linalg.svd(centred, full_matrices=False)[2][:2]
    np.testing.assert_allclose(np.abs(result.coords), np.abs(centred @ top.T), rtol=1e-4, atol=1e-5)
    assert result.paths["png"].stat().st_size > 0
    with pytest.raises(UserError, match="needs chips"):
        embedding.embedding_points(model, legend, "chips")
    labels = np.full((3, SIZE, SIZE), 7)
    labels[1, :5] = 2  # 40 of 64 cells: class 2 is the most common
    chips = embedding.embedding_points(model, legend, "chips", labels=torch.as_tensor(labels))
    np.testing.assert_array_equal(chips.colours, legend.palette()[[7, 2, 7]])
    assert [name for name, _ in chips.key] == [legend.names[2], legend.names[7]]


@pytest.mark.slow
def test_embed_plot_umap_on_positions(model: LandCoverRandAR, legend: Legend, tmp_path) -> None:
    result = embedding.embed_plot(model, legend, "positions", tmp_path, method="auto")
    assert result.method == "umap" and result.coords.shape == (SIZE * SIZE, 2)
    assert np.isfinite(result.coords).all()


def test_sample_realism_report(model: LandCoverRandAR, legend: Legend, tmp_path) -> None:
    reference = labels_with_nodata(6, legend.n_classes, seed=5)
    result = realism.sample_realism(model, reference, n=4, steps_list=[None, 4], batch_size=3, seed=0)
    assert set(result.report) == {"sequential", "parallel_4", "shuffled_baseline", "noise_floor"}
    assert result.report["noise_floor"] == evaluate.noise_floor(reference[:4], legend.n_classes)
    for name, samples in result.samples.items():
        assert samples.shape == (4, SIZE, SIZE) and samples.min() >= 0 and samples.max() < legend.n_classes
        means = evaluate.mean_landscape_metrics(samples, legend.n_classes)
        for metric in evaluate.LANDSCAPE_METRICS:
            assert result.report[name][metric]["value"] == pytest.approx(means[metric], nan_ok=True)
    summary = result.summary()
    assert summary["settings"]["sequential"]["max_gap_to_sequential"] == 0
    seq, par = (sampling.generate_samples(model, 4, steps, batch_size=3, seed=0)[0] for steps in (None, 4))
    np.testing.assert_array_equal(seq, result.samples["sequential"])  # a seed reproduces the samples
    np.testing.assert_array_equal(par, result.samples["parallel_4"])
    paths = realism.write_realism(result, legend, tmp_path, columns=2)
    assert paths["panel"].stat().st_size > 0
    assert set(summary["gaps_to_test"]) == set(result.report)


def test_sample_realism_parallel_temperature(model: LandCoverRandAR, legend: Legend) -> None:
    reference = labels_with_nodata(6, legend.n_classes, seed=5)
    result = realism.sample_realism(
        model, reference, n=4, steps_list=[None, 4], temperature=0.95, batch_size=3, seed=0, parallel_temperature=0.5
    )
    assert result.temperatures == {"sequential": 0.95, "parallel_4": 0.5}
    seq, par = (
        sampling.generate_samples(model, 4, steps, t, batch_size=3, seed=0)[0] for steps, t in ((None, 0.95), (4, 0.5))
    )
    np.testing.assert_array_equal(seq, result.samples["sequential"])  # each mode drew at its own temperature
    np.testing.assert_array_equal(par, result.samples["parallel_4"])
    same = realism.sample_realism(model, reference, n=4, steps_list=[None, 4], temperature=0.95, batch_size=3, seed=0)
    assert same.temperatures == {"sequential": 0.95, "parallel_4": 0.95}  # default: one temperature for both
    np.testing.assert_array_equal(same.samples["sequential"], result.samples["sequential"])
    assert not np.array_equal(same.samples["parallel_4"], result.samples["parallel_4"])


def test_sample_realism_beside_the_context_model(model: LandCoverRandAR, legend: Legend, tmp_path) -> None:
    reference = labels_with_nodata(6, legend.n_classes, seed=5)
    context = CausalContextModel.fit(labels_with_nodata(10, legend.n_classes, seed=6), legend.n_classes)
    result = realism.sample_realism(model, reference, n=4, steps_list=[None], seed=2, context=context)
    expected = context.sample(4, SIZE, SIZE, np.random.default_rng(2))
    np.testing.assert_array_equal(result.baselines["context_model"], expected)
    assert result.report["context_model"] == evaluate.compare_to_reference(expected, reference[:4], legend.n_classes)
    summary = result.summary()
    assert set(summary["settings"]) == {"sequential"}  # a baseline is not a decoding setting
    gaps = summary["gaps_to_test"]["context_model"]
    single = result.report["context_model"]["single_pixel_share"]
    assert gaps["single_pixel_ratio"] == pytest.approx(single["value"] / single["reference"])
    assert gaps["patch_density"] == result.report["context_model"]["patch_density"]["relative_difference"]
    assert realism.write_realism(result, legend, tmp_path, columns=2)["panel"].stat().st_size > 0


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def cli_files(model: LandCoverRandAR, legend: Legend, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A saved tiny model, a chip file in its legend and a 24x24 NLCD GeoTIFF."""
    from landformer.core.chips import write_chips
    from landformer.core.raster import write_geotiff
    from landformer.landcover.export import save

    folder = tmp_path_factory.mktemp("cli")
    save(model, legend, folder / "run")
    rng = np.random.default_rng(0)
    train, test = (
        labels_with_nodata(n, legend.n_classes, seed)[:, None].astype(np.int16) for n, seed in ((4, 1), (6, 2))
    )
    coords = np.tile([[-100.0, 40.0]], (10, 1))
    metadata = {"legend": legend.to_dict(), "channel_names": ["landcover"], "chip_size": SIZE}
    write_chips(folder / "chips.npz", train, test, coords[:4], coords[4:], metadata)
    codes = np.asarray(legend.codes)[rng.integers(0, legend.n_classes, size=(24, 24))].astype(np.uint8)
    codes[2:4, 4:8] = 0  # nodata pixels in the top rows, outside the re-imagined centre of the dev-prob window
    write_geotiff(folder / "landcover.tif", codes, RASTER_TRANSFORM, "EPSG:5070", nodata=0)
    return {"run": folder / "run", "chips": folder / "chips.npz", "raster": folder / "landcover.tif"}


RASTER_TRANSFORM = Affine(30.0, 0, 500_000.0, 0, -30.0, 4_000_000.0)


def test_cli_gibbs_panorama_embed_evaluate(cli_files: dict[str, Path], legend: Legend, tmp_path) -> None:
    from landformer.cli import main

    run, chips = str(cli_files["run"]), str(cli_files["chips"])
    argv = ["landcover", "gibbs", "--model", run, "--chips", chips, "--chains", "3", "--sweeps", "2"]
    assert main([*argv, "--block-size", "8", "--out", str(tmp_path / "gibbs")]) == 0
    with np.load(tmp_path / "gibbs" / "gibbs_frames.npz") as stored:
        frames = stored["frames"]
    assert frames.shape == (3, 3, SIZE, SIZE)
    np.testing.assert_array_equal(frames[0], labels_with_nodata(6, legend.n_classes, 2)[:3])
    np.testing.assert_array_equal(frames[1:] < 0, np.broadcast_to(frames[0] < 0, frames[1:].shape))
    assert frames.max() < legend.n_classes
    assert main([*argv, "--out", str(tmp_path / "gibbs_default")]) == 0  # grouped single-site updates
    with np.load(tmp_path / "gibbs_default" / "gibbs_frames.npz") as stored:
        default_frames = stored["frames"]
    assert default_frames.shape == frames.shape and default_frames.max() < legend.n_classes
    np.testing.assert_array_equal(default_frames[1:] < 0, np.broadcast_to(frames[0] < 0, frames[1:].shape))

    argv = ["landcover", "panorama", "--model", run, "--width", "20", "--height", "8", "--steps", "4"]
    assert main([*argv, "--out", str(tmp_path / "pano")]) == 0
    with np.load(tmp_path / "pano" / "panorama.npz") as stored:
        assert stored["maps"].shape == (1, 8, 20)

    argv = ["landcover", "embed-plot", "--model", run, "--chips", chips, "--what", "chips", "--method", "pca"]
    assert main([*argv, "--out", str(tmp_path / "embed")]) == 0
    with np.load(tmp_path / "embed" / "embed_chips.npz") as stored:
        assert stored["coords"].shape == (6, 2)

    argv = ["landcover", "evaluate", "--model", run, "--chips", chips, "--n", "3", "--steps", "4"]
    assert main([*argv, "--temperature", "0.95", "--parallel-temperature", "0.9", "--out", str(tmp_path / "eval")]) == 0
    from landformer.core.io import read_json

    record = read_json(tmp_path / "eval" / "realism.json")
    assert set(record["settings"]) == {"sequential", "parallel_4"}
    assert record["settings"]["sequential"]["temperature"] == 0.95
    assert record["settings"]["parallel_4"]["temperature"] == 0.9
    baselines = {"context_model", "shuffled_baseline", "noise_floor"}
    assert set(record["report"]) == {"sequential", "parallel_4", *baselines}
    assert any("6 of 6 test chips kept" in note for note in record["notes"])
    assert (tmp_path / "eval" / "realism_panel.png").exists()


def test_cli_dev_prob_geotiff_is_georeferenced_like_the_window(cli_files: dict[str, Path], legend: Legend, tmp_path):
    import rasterio

    from landformer.cli import main

    argv = ["landcover", "dev-prob", "--model", str(cli_files["run"]), "--raster", str(cli_files["raster"])]
    argv += ["--window", "4", "2", "16", "12", "--samples", "3", "--steps", "4", "--out", str(tmp_path)]
    assert main(argv) == 0
    with rasterio.open(cli_files["raster"]) as source:
        window_codes = source.read(1)[2:14, 4:20]
    with rasterio.open(tmp_path / "dev_prob.tif") as result:
        assert result.transform == RASTER_TRANSFORM @ Affine.translation(4, 2)
        assert result.crs.to_epsg() == 5070
        probability = result.read(1)
    assert probability.shape == (12, 16)
    reimagine = np.zeros((12, 16), dtype=bool)
    reimagine[3:9, 4:12] = True  # the central half of the window
    classes = legend.encode(window_codes, unknown="nodata")
    nodata = classes < 0
    assert nodata[0:2, 0:4].all() and nodata.sum() == 8  # the raster's nodata pixels inside the window
    with rasterio.open(tmp_path / "dev_prob.tif") as result:
        assert result.nodata == -1.0
        np.testing.assert_array_equal(result.read_masks(1) == 0, nodata)
    developed = np.isin(classes, legend.group_indices("developed"))
    outside = ~reimagine & ~nodata
    np.testing.assert_array_equal(probability[outside], developed[outside].astype(np.float32))
    np.testing.assert_array_equal(probability[nodata], -1.0)
    assert ((probability[reimagine] >= 0) & (probability[reimagine] <= 1)).all()
    with np.load(tmp_path / "dev_prob.npz") as stored:
        assert (stored["samples"][:, nodata] == -1).all()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--window", "20", "0", "16", "16"], "leaves the"),
        (["--window", "0", "0", "4", "4"], "smaller than the model's 8x8 chip"),
        (["--window", "0", "0", "16", "16", "--region", "10", "0", "8", "8"], "does not lie inside"),
        ([], "needs --window"),
    ],
)
def test_cli_dev_prob_bad_window(cli_files: dict[str, Path], tmp_path, capsys, extra: list[str], message: str) -> None:
    from landformer.cli import main

    argv = ["landcover", "dev-prob", "--model", str(cli_files["run"]), "--raster", str(cli_files["raster"])]
    assert main([*argv, *extra, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("landformer: error:") and message in err and "\n" not in err
    assert not any(tmp_path.iterdir())


def test_cli_missing_model_and_bad_numbers(cli_files: dict[str, Path], tmp_path, capsys) -> None:
    from landformer.cli import main

    assert main(["landcover", "panorama", "--model", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope" in err and "\n" not in err
    argv = ["landcover", "gibbs", "--model", str(cli_files["run"]), "--chains", "0", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "--chains must be at least 1" in capsys.readouterr().err
    argv = ["landcover", "evaluate", "--model", str(cli_files["run"]), "--chips", str(cli_files["chips"])]
    assert main([*argv, "--n", "50", "--out", str(tmp_path)]) == 2
    assert "6 test chips" in capsys.readouterr().err
