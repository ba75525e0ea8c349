"""Land change: pairs and their alignment warning, the field's measures against hand counts, the Markov-CA
baseline, and the change model's simulation on a tiny random model (invariants that hold for any weights)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine

from landformer.core.errors import UserError
from landformer.core.legend import Legend, load_legend
from landformer.core.raster import write_geotiff
from landformer.landcover import change, change_model, plots
from landformer.landcover.export import CovariateStats, LoadedModel
from landformer.landcover.model import LandCoverConfig, LandCoverRandAR

SIZE = 8
CRS = "EPSG:5070"


@pytest.fixture(scope="module")
def legend() -> Legend:
    return load_legend("nlcd")


# ------------------------------------------------------------------------------------------------- measures


def test_figure_of_merit_and_components_by_hand() -> None:
    t1 = np.array([[0, 0, 0], [1, 1, 1]])
    observed = np.array([[0, 1, 1], [1, 2, 0]])  # changes at (0,1) 0->1, (0,2) 0->1, (1,1) 1->2, (1,2) 1->0
    predicted = np.array([[1, 1, 2], [1, 1, 0]])  # (0,0) false alarm, (0,1) hit, (0,2) wrong hit, (1,1) miss
    score = change.score_change(t1, observed, predicted, 3)
    assert (score.hits, score.wrong_hits, score.misses, score.false_alarms) == (2, 1, 1, 1)
    assert score.figure_of_merit == pytest.approx(2 / 5)
    values = score.to_dict()
    assert values["hits"] == pytest.approx(2 / 6) and values["false_alarms"] == pytest.approx(1 / 6)


def test_outcome_map_colours_each_kind_of_pixel() -> None:
    t1 = np.array([[0, 0, 0, 0, 1, -1]])
    observed = np.array([[0, 1, 1, 1, 1, 1]])
    predicted = np.array([[2, 1, 2, 0, 1, 1]])
    colours = plots.OUTCOME_COLOURS
    expected = [colours[k] for k in ("false alarm", "hit", "wrong hit", "miss", "persistence")] + [(255, 255, 255)]
    assert [tuple(pixel) for pixel in plots.outcome_rgb(t1, observed, predicted)[0]] == expected


def test_disagreement_by_hand() -> None:
    observed = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    # Predicted shares 2/6, 2/6, 2/6; observed 3/6, 2/6, 1/6: quantity (1 + 0 + 1) / 6 / 2 = 1/6.
    # Two of six pixels differ (2/6 in all), so allocation is 2/6 - 1/6 = 1/6.
    quantity, allocation = change.disagreement(observed, predicted, 3)
    assert quantity == pytest.approx(1 / 6) and allocation == pytest.approx(1 / 6)
    swapped = np.array([1, 0, 0, 0, 1, 2])  # the same classes, two of them swapped: allocation only
    assert change.disagreement(observed, swapped, 3) == pytest.approx((0.0, 2 / 6))


def test_measures_skip_nodata_and_persistence_scores_zero() -> None:
    t1 = np.array([[0, 1], [-1, 1]])
    observed = np.array([[1, 1], [0, -1]])
    score = change.score_change(t1, observed, t1, 2)
    assert score.pixels == 2 and score.misses == 1 and score.figure_of_merit == 0.0


def test_transition_matrix_against_hand_counts() -> None:
    t1 = np.array([[0, 0, 0, 1], [1, 2, -1, 0]])
    t2 = np.array([[0, 1, 1, 1], [0, 2, 2, -1]])
    counts = change.transition_counts(t1, t2, 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[1, 0], expected[2, 2] = 1, 2, 1, 1, 1
    assert (counts == expected).all()
    matrix = change.transition_matrix(counts)
    assert matrix[0].tolist() == pytest.approx([1 / 3, 2 / 3, 0, 0])
    assert matrix[3].tolist() == [0, 0, 0, 1]  # never seen at t1: persists
    assert np.allclose(matrix.sum(axis=1), 1)
    smoothed = change.transition_matrix(counts, 0.5)
    assert smoothed[0, 2] == pytest.approx(0.5 / 5)
    # -log2 p per pixel under the smoothed matrix, by hand for the three pixels of class 0 at t1.
    bits = change.markov_bits(t1[:1, :3], t2[:1, :3], counts)
    assert bits == pytest.approx(-(np.log2(1.5 / 5) + 2 * np.log2(2.5 / 5)) / 3)


def test_allocation_places_expected_quantities_where_scores_are_highest() -> None:
    t1 = np.array([0, 0, 0, 0, 1, 1, -1])
    scores = np.zeros((2, 7))
    scores[1] = [0.1, 0.9, 0.5, 0.8, 0, 0, 1.0]
    scores[0] = [0, 0, 0, 0, 0.2, 0.7, 1.0]
    quantities = np.array([[0, 2], [1, 0]])
    predicted = change.allocate(t1, scores, quantities)
    assert predicted.tolist() == [0, 1, 0, 1, 1, 0, -1]


def test_markov_ca_grows_next_to_its_destination() -> None:
    t1 = np.zeros((9, 9), dtype=np.int64)
    t1[4, 4] = 1  # one developed seed in a field
    matrix = np.array([[0.9, 0.1], [0.0, 1.0]])  # 10% of the field becomes developed: 8 of 80 pixels
    (predicted,) = change.markov_ca([t1], matrix, radius=1)
    grown = np.argwhere((predicted == 1) & (t1 == 0))
    assert len(grown) == 8
    assert (np.abs(grown - 4).max(axis=1) == 1).all()  # exactly the 8 neighbours of the seed


def test_edge_swaps_are_counted() -> None:
    t1 = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    shifted = np.array([[0, 1, 1, 1], [0, 1, 1, 1]])  # the boundary moved one pixel: both changes are swaps
    assert change.change_counts(t1, shifted) == (8, 2, 2)
    far = np.array([[2, 0, 1, 1], [0, 0, 1, 1]])  # class 2 is nowhere near: a real change, not a swap
    assert change.change_counts(t1, far) == (8, 1, 0)


# ---------------------------------------------------------------------------------------------------- pairs


def write_classes(path: Path, codes: np.ndarray, origin: tuple[float, float] = (0.0, 0.0)) -> Path:
    transform = Affine(30.0, 0.0, 1_000_000.0 + origin[0], 0.0, -30.0, 2_000_000.0 + origin[1])
    return write_geotiff(path, codes.astype(np.uint8), transform, CRS, nodata=0)


def stripes(size: int, period: int = 6) -> np.ndarray:
    """NLCD codes in vertical stripes of forest (41) and pasture (81)."""
    cols = np.arange(size)[None, :].repeat(size, axis=0)
    return np.where((cols // period) % 2 == 0, 41, 81)


def test_pair_with_different_grids_is_refused_or_aligned_with_a_warning(tmp_path: Path, legend: Legend) -> None:
    t1 = write_classes(tmp_path / "t1.tif", stripes(40))
    # t2 is the same map on a grid shifted by 0.6 pixel east: nearest resampling moves each edge one pixel.
    t2 = write_classes(tmp_path / "t2.tif", stripes(40), origin=(18.0, 0.0))
    refused = r"t2 raster .*t2.tif does not share t1 raster .*t1.tif's grid: transform"
    with pytest.raises(UserError, match=refused), change.open_pair(t1, t2, legend):
        pass
    warned = r"offset by 0.60 columns, 0.00 rows .* 100% of the changes are one-pixel"
    with pytest.warns(UserWarning, match=warned), change.open_pair(t1, t2, legend, align=True) as (_, _, check):
        pass
    assert check.aligned and check.offset_pixels == pytest.approx((0.6, 0.0))
    assert check.edge_swap_share == 1.0 and 0 < check.changed_share < 0.2


def test_pair_with_unknown_code_is_refused(tmp_path: Path, legend: Legend) -> None:
    t1 = write_classes(tmp_path / "t1.tif", stripes(32))
    bad = stripes(32)
    bad[3, 3] = 200
    t2 = write_classes(tmp_path / "t2.tif", bad)
    with pytest.raises(UserError, match=r"t2\.tif"), change.open_pair(t1, t2, legend):
        pass


def test_pair_chips_hold_t2_and_one_hot_t1_without_test_blocks(tmp_path: Path, legend: Legend) -> None:
    first = stripes(64)
    second = first.copy()
    second[10:20, 10:20] = 22  # some development
    t1 = write_classes(tmp_path / "t1.tif", first)
    t2 = write_classes(tmp_path / "t2.tif", second)
    config = change.PairChipConfig(t1, t2, chip_size=8, stride=8, block_size=16, test_fraction=0.25, val_fraction=0.25)
    chips = change.make_pair_chips(config, tmp_path / "pair.npz")
    from landformer.core.chips import load_chips

    chip_set = load_chips(chips)
    assert chip_set.train_data.shape[1:] == (1 + legend.n_classes, 8, 8)
    roles = np.array(chip_set.metadata["split"]["roles"])
    assert (roles == change.TEST).sum() == 4 and (roles == change.VALIDATION).sum() == 4
    assert len(chip_set.train_data) + len(chip_set.test_data) == 4 * (16 - 4)  # 4 chips per non-test block
    one_hot = chip_set.train_data[:, 1:]
    assert (one_hot.sum(axis=1) == 1).all()
    index = legend.codes.index
    assert set(np.unique(one_hot.argmax(axis=1))) == {index(41), index(81)}
    assert index(22) in np.unique(np.concatenate([chip_set.train_data[:, 0], chip_set.test_data[:, 0]]))


def test_block_roles_keep_the_chip_split_test_blocks() -> None:
    from landformer.core.chips import BlockSplit

    roles = change.block_roles(128, 128, 8, 16, 0.2, 0.1, seed=3, source="x")
    split = BlockSplit.random(128, 128, 8, 16, 0.2, 3, "x")
    assert ((roles == change.TEST) == split.test_blocks).all()
    assert (roles == change.VALIDATION).sum() == round(0.1 * 64)
    with pytest.raises(UserError, match="val_fraction"):
        change.block_roles(128, 128, 8, 16, 0.5, 0.5, seed=3, source="x")


# ----------------------------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def loaded(legend: Legend, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    torch.manual_seed(0)
    n = legend.n_classes
    config = LandCoverConfig(
        n_classes=n, chip_size=SIZE, n_layers=2, n_heads=2, dim=32, covariate_channels=n, covariate_patch=2
    )
    model = LandCoverRandAR(config).eval()
    with torch.no_grad():  # sharper logits than the initialisation, so draws differ from pixel to pixel
        for param in model.parameters():
            if param.dim() >= 1 and param.numel() > 1:
                param.normal_(0, 0.3)
    stats = CovariateStats([0.1] * n, [0.3] * n)
    folder = tmp_path_factory.mktemp("change_model")
    return LoadedModel(model, legend, config, stats, ["landcover"] * (n + 1), {}, folder / "model.safetensors")


def test_simulated_probabilities_sum_to_one(loaded: LoadedModel, legend: Legend) -> None:
    rng = np.random.default_rng(0)
    t1 = rng.integers(0, legend.n_classes, size=(12, 20))
    t1[0, 0] = -1
    generator = torch.Generator().manual_seed(0)
    result = change_model.simulate_region(loaded, t1, n_samples=3, steps=4, batch_size=16, generator=generator)
    sums = result.probabilities.sum(axis=0)
    assert np.allclose(sums[t1 >= 0], 1.0, atol=1e-5) and sums[0, 0] == 0
    assert result.sample[0, 0] == -1 and (result.sample[t1 >= 0] >= 0).all()
    maps = change_model.change_maps(t1, result.probabilities)
    assert ((maps.p_change >= 0) & (maps.p_change <= 1 + 1e-6)).all()
    assert (maps.destination[t1 >= 0] != t1[t1 >= 0]).all()


def test_marginal_probabilities_sum_to_one(loaded: LoadedModel, legend: Legend) -> None:
    rng = np.random.default_rng(2)
    t1 = rng.integers(0, legend.n_classes, size=(SIZE, 13))
    result = change_model.simulate_region(loaded, t1, batch_size=2, method="marginal")
    assert np.allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5) and result.sample is None
    # One window alone: the blend is that window's marginals.
    window = change_model.window_marginals(loaded, t1[None, :, :SIZE])[0]
    alone = change_model.simulate_region(loaded, t1[:, :SIZE], method="marginal")
    assert np.allclose(alone.probabilities, window, atol=1e-6)


@pytest.mark.parametrize("method", ["samples", "marginal"])
def test_kept_pixels_never_change(loaded: LoadedModel, legend: Legend, method: str) -> None:
    rng = np.random.default_rng(1)
    t1 = rng.integers(0, legend.n_classes, size=(SIZE, 12))
    keep = np.zeros(t1.shape, dtype=bool)
    keep[:, :4] = True
    generator = torch.Generator().manual_seed(1)
    result = change_model.simulate_region(loaded, t1, 4, 4, batch_size=8, generator=generator, keep=keep, method=method)
    kept_probability = np.take_along_axis(result.probabilities, t1[None], axis=0)[0]
    assert np.allclose(kept_probability[keep], 1.0)
    if result.sample is not None:
        assert (result.sample[keep] == t1[keep]).all()
    maps = change_model.change_maps(t1, result.probabilities)
    allocation = change_model.QuantityAllocation(legend.n_classes)
    allocation.add(t1, result.probabilities, maps)
    predicted = allocation.apply(t1, maps, allocation.thresholds())
    assert (predicted[keep] == t1[keep]).all()


def test_quantity_allocation_changes_the_expected_number_of_pixels() -> None:
    t1 = np.zeros((1, 10), dtype=np.int64)
    probabilities = np.zeros((2, 1, 10), dtype=np.float32)
    probabilities[1, 0] = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.25]  # sums to 2.5 -> 2 pixels
    probabilities[0] = 1 - probabilities[1]
    maps = change_model.change_maps(t1, probabilities)
    allocation = change_model.QuantityAllocation(2)
    allocation.add(t1, probabilities, maps)
    assert allocation.quantities[0, 1] == 2
    predicted = allocation.apply(t1, maps, allocation.thresholds())
    assert np.flatnonzero(predicted[0]).tolist() == [7, 8]
    markov = allocation.markov_quantities(np.array([[0.7, 0.3], [0.0, 1.0]]))
    assert markov.tolist() == [[0, 3], [0, 0]]
    predicted = allocation.apply(t1, maps, allocation.thresholds(markov))
    assert np.flatnonzero(predicted[0]).tolist() == [6, 7, 8]


def test_model_without_t1_channels_is_refused(legend: Legend, tmp_path: Path) -> None:
    config = LandCoverConfig(n_classes=legend.n_classes, chip_size=SIZE, n_layers=1, n_heads=2, dim=16)
    plain = LoadedModel(LandCoverRandAR(config), legend, config, CovariateStats(), ["landcover"], {}, tmp_path / "m")
    with pytest.raises(UserError, match=r"one-hot t1"):
        change_model.simulate_region(plain, np.zeros((SIZE, SIZE), dtype=np.int64))


CHANGE_SETTINGS = {"block_size": 16, "align": False, "test_fraction": 0.25, "val_fraction": 0.25, "split_seed": 3}


@pytest.fixture(scope="module")
def saved_change_model(loaded: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random change model saved as a file with its land-change settings and no run folder, as the
    packaged model is, plus the absolute paths a run folder's export records."""
    from landformer.landcover.export import save

    folder = tmp_path_factory.mktemp("saved_change_model")
    n = loaded.legend.n_classes
    extra = {
        "checkpoint": str(folder / "best.ckpt"),
        "chips": str(folder / "pair_chips.npz"),
        "change": {**CHANGE_SETTINGS, "training_pairs": [], "train_transitions": np.eye(n, dtype=int).tolist()},
    }
    return save(loaded.model, loaded.legend, folder / "model.safetensors", extra, None, loaded.covariate_stats)


def test_evaluation_on_an_unseen_pair_uses_its_own_blocks(
    saved_change_model: Path, legend: Legend, tmp_path: Path
) -> None:
    """A pair the model never saw is cut into its own blocks, and its Markov matrix is counted on its train
    blocks only: here forest turns into pasture in the train blocks and into development in the test blocks, so
    a matrix counted anywhere else would give other bits on the test blocks."""
    size, block = 64, CHANGE_SETTINGS["block_size"]
    roles = change.block_roles(size, size, SIZE, block, 0.25, 0.25, seed=3, source="t1")
    first = np.full((size, size), 41)
    second = first.copy()
    rng = np.random.default_rng(0)
    for (i, j), role in np.ndenumerate(roles):
        view = (slice(i * block, (i + 1) * block), slice(j * block, (j + 1) * block))
        turned = rng.random((block, block)) < 0.3
        second[view] = np.where(turned, 81 if role == change.TRAIN else 22, 41)
    t1 = write_classes(tmp_path / "t1.tif", first)
    t2 = write_classes(tmp_path / "t2.tif", second)
    summary = change_model.evaluate_change(
        saved_change_model, tmp_path / "eval", t1=t1, t2=t2, method="marginal", orders=1
    ).summary
    assert summary["blocks"] == {"train": 8, "validation": 4, "test": 4}
    assert summary["split"].startswith("a pair the model did not train on")
    index = legend.codes.index
    first_index = np.full((size, size), index(41))
    second_index = np.vectorize(index)(second)
    train = roles.repeat(block, 0).repeat(block, 1) == change.TRAIN
    counts = change.transition_counts(first_index[train], second_index[train], legend.n_classes)
    blocks = change.role_blocks(roles, change.TEST, block, size, size)
    test_t1 = [first_index[r : r + h, c : c + w] for r, c, h, w in blocks]
    test_t2 = [second_index[r : r + h, c : c + w] for r, c, h, w in blocks]
    chips = change_model.heldout_chips(test_t1, test_t2, SIZE)
    assert summary["bits_per_pixel"]["markov_per_pixel"] == pytest.approx(change.markov_bits(*chips, counts))
    everywhere = change.transition_counts(first_index, second_index, legend.n_classes)
    assert change.markov_bits(*chips, everywhere) < summary["bits_per_pixel"]["markov_per_pixel"] - 1
    with pytest.raises(UserError, match="no run folder with its training pair: give --t1 and --t2"):
        change_model.evaluate_change(saved_change_model, tmp_path / "again")
    with pytest.raises(UserError, match="--t1 and --t2 together"):
        change_model.evaluate_change(saved_change_model, tmp_path / "again", t1=t1)


def test_packaging_drops_the_run_folders_absolute_paths(saved_change_model: Path, tmp_path: Path) -> None:
    packaged = change_model.package_change_model(saved_change_model, tmp_path / "change.safetensors")
    extra = json.loads((tmp_path / "change.json").read_text())["extra"]
    assert "checkpoint" not in extra and "chips" not in extra
    assert extra["change"]["block_size"] == CHANGE_SETTINGS["block_size"]
    assert packaged == tmp_path / "change.safetensors"


def strings(value: object) -> list[str]:
    """Every string anywhere in a JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in strings(item)]
    return []


def test_packaged_change_model_loads_by_name_without_absolute_paths() -> None:
    from landformer.landcover.export import load

    packaged = load("change")
    change_model.check_change_model(packaged)
    assert packaged.path.name == "change.safetensors" and packaged.legend.name == "nlcd"
    settings = packaged.metadata["extra"]["change"]
    assert {"block_size", "align", "test_fraction", "val_fraction", "split_seed", "train_transitions"} <= set(settings)
    assert not [text for text in strings(packaged.metadata) if Path(text).is_absolute() or "runs/" in text]
    assert {int(name.split("/")[0].removeprefix("world_")) for name, _ in settings["training_pairs"]}.isdisjoint({0})


def test_transition_targets(legend: Legend) -> None:
    assert change_model.transition_targets(legend, "developed") == legend.group_indices("developed")
    assert change_model.transition_targets(legend, "82") == [legend.codes.index(82)]
    with pytest.raises(UserError, match="--to 'nowhere'"):
        change_model.transition_targets(legend, "nowhere")


# ------------------------------------------------------------------------------------------ synthetic epochs


def test_world_grows_land_cover_epoch_by_epoch(tmp_path: Path) -> None:
    import rasterio

    from landformer.synth.world import DEVELOPED, load_world, make_world

    world = make_world(tmp_path / "world", size=96, seed=2)
    assert [path.name for path in world.landcover_series] == [f"landcover_{year}.tif" for year in world.hm_years]
    assert load_world(world.folder).landcover_series == world.landcover_series
    epochs = []
    for path in world.landcover_series:
        with rasterio.open(path) as dataset:
            epochs.append(dataset.read(1))
    with rasterio.open(world.landcover) as dataset:
        assert (epochs[-1] == dataset.read(1)).all()
    developed = [np.isin(epoch, DEVELOPED) for epoch in epochs]
    for earlier, later, built_before, built_after in zip(epochs, epochs[1:], developed, developed[1:], strict=False):
        assert (built_after | ~built_before).all()  # built land is never undone
        assert built_after[earlier != later].all()  # every change is development or intensification
    assert world.landcover_of(2020) == world.landcover_series[-1]
    with pytest.raises(UserError, match="not 2003"):
        world.landcover_of(2003)


@pytest.mark.slow
def test_change_commands_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import rasterio

    from landformer.cli import main
    from landformer.synth.world import make_world

    world = make_world(tmp_path / "world", size=128, seed=1)
    run, out = tmp_path / "run", tmp_path / "sim"
    common = ["--threads", "1", "--seed", "0"]
    train = ["landcover", "change-train", "--world", str(world.folder), "--out", str(run), "--max-steps", "3"]
    assert main([*train, "--set", "train.val_every_steps=3", "--set", "images.every_steps=3"]) == 0
    evaluate = ["landcover", "change-evaluate", "--model", str(run), "--out", str(tmp_path / "eval")]
    assert main([*evaluate, "--method", "marginal", *common]) == 0
    assert "| markov_ca |" in capsys.readouterr().out
    t1 = world.landcover_of(2010)
    simulate = ["landcover", "change-simulate", "--model", str(run), "--t1", str(t1), "--out", str(out)]
    assert main([*simulate, "--samples", "1", "--steps", "4", "--tile", "64", "--keep", "11", *common]) == 0
    with rasterio.open(out / "t2_map.tif") as simulated, rasterio.open(t1) as first:
        predicted, before = simulated.read(1), first.read(1)
        assert simulated.colormap(1)[41][:3] != (0, 0, 0)  # the legend's colours
    assert (predicted[before == 11] == 11).all()  # water was kept
    with rasterio.open(out / "p_change.tif") as probability:
        values = probability.read(1)
    assert values.min() >= 0 and values.max() <= 1
