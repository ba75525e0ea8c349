"""Land-cover training: chips -> run folder, exact resume after a kill, export round trip, data inputs, bad input.

Chip files are tiny (8x8 chips of a 4-class legend, blocky maps) and the model has 2 layers of width 32, so a
training run takes seconds.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import pytest
import torch

import landformer.landcover.data as data_module
from landformer.core.chips import load_chips, write_chips
from landformer.core.config import load_config
from landformer.core.errors import UserError
from landformer.core.io import load_torch
from landformer.core.legend import Legend
from landformer.landcover.config import LandCoverRecipe
from landformer.landcover.data import (
    ChipDataset,
    ChipTensors,
    RunStream,
    dihedral,
    model_inputs,
    training_chips,
    training_loader,
)
from landformer.landcover.export import CovariateStats, check_chips_match, load, save
from landformer.landcover.model import LandCoverConfig, LandCoverRandAR
from landformer.landcover.train import train

TOY_LEGEND = {
    "name": "toy",
    "nodata": [0],
    "classes": [
        {"code": 1, "name": "water", "color": "#466b9f"},
        {"code": 2, "name": "forest", "color": "#1c5f2c"},
        {"code": 3, "name": "crops", "color": "#dcd939"},
        {"code": 4, "name": "town", "color": "#eb0000"},
    ],
}
SIZE = 8


def toy_maps(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size) blocky maps: a background class with a rectangle of another class and a river row."""
    rng = np.random.default_rng(seed)
    maps = np.empty((n, size, size), dtype=np.int16)
    for i in range(n):
        background, patch = rng.choice(3, 2, replace=False) + 1
        chip = np.full((size, size), background)
        top, left = rng.integers(0, size - 2, 2)
        chip[top : top + rng.integers(2, size // 2 + 2), left : left + rng.integers(2, size // 2 + 2)] = patch
        if rng.random() < 0.5:
            chip[rng.integers(size)] = 0
        maps[i] = chip
    return maps


def make_chip_file(
    path: Path,
    n_train: int = 48,
    n_test: int = 16,
    size: int = SIZE,
    elevation: bool = False,
    legend: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """A chip file in the DESIGN.md contract, with an elevation channel (float32, NaN holes) if asked."""
    maps = toy_maps(n_train + n_test, size, seed)
    channels = [maps.astype(np.float32 if elevation else np.int16)]
    names = ["landcover"]
    if elevation:
        rng = np.random.default_rng(seed + 1)
        dem = (100.0 + 10.0 * maps + rng.normal(0, 1, maps.shape)).astype(np.float32)
        dem[0, 0, 0] = np.nan
        channels.append(dem)
        names.append("elevation")
    data = np.stack(channels, axis=1)
    coords = np.stack([np.linspace(-100, -99, len(data)), np.linspace(40, 41, len(data))], axis=1)
    metadata = {"legend": legend or TOY_LEGEND, "channel_names": names, "chip_size": size}
    return write_chips(path, data[:n_train], data[n_train:], coords[:n_train], coords[n_train:], metadata)


def tiny_recipe(chips: Path, steps: int = 8, **overrides: Any) -> LandCoverRecipe:
    settings = [
        f"data.chips={chips}",
        "data.batch_size=8",
        "data.val_chips=8",
        "model.n_layers=2",
        "model.n_heads=2",
        "model.dim=32",
        "model.covariate_patch=4",
        "task.warmup_steps=2",
        "task.threads=1",
        "images.every_steps=4",
        "images.n=4",
        "images.steps=4",
        f"train.max_steps={steps}",
        "train.val_every_steps=4",
        "train.checkpoint_every_steps=2",
        "train.log_every_steps=1",
        "train.progress_bar=false",
        "train.accelerator=cpu",
    ] + [f"{key}={value}" for key, value in overrides.items()]
    return load_config(LandCoverRecipe, None, settings)


@pytest.fixture(scope="module")
def chips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_chip_file(tmp_path_factory.mktemp("chips") / "toy.npz")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, chips: Path) -> dict[str, Any]:
    return train(tiny_recipe(chips), tmp_path_factory.mktemp("run") / "run")


def test_training_writes_model_pictures_and_validation_loss(trained: dict[str, Any], chips: Path) -> None:
    run = Path(trained["run_dir"])
    assert trained["global_step"] == 8
    for name in ("gen", "gt", "pred"):
        assert sorted(p.name for p in (run / "samples").glob(f"{name}_*.png")) == [
            f"{name}_0000004.png",
            f"{name}_0000008.png",
        ]
    with open(next((run / "logs" / "csv").glob("version_*/metrics.csv"))) as handle:
        rows = list(csv.DictReader(handle))
    val = [float(row["val/loss"]) for row in rows if row.get("val/loss")]
    assert len(val) == 2 and all(0 < v < 10 for v in val)
    bits = [float(row["val/bits_per_pixel"]) for row in rows if row.get("val/bits_per_pixel")]
    assert bits == pytest.approx([v / math.log(2) for v in val], rel=1e-5)
    assert trained["train_tokens_per_s"] > 0
    loaded = load(run)
    assert loaded.legend.codes == [1, 2, 3, 4]
    assert loaded.chip_size == SIZE and loaded.config.n_layers == 2
    assert not loaded.model.training


def test_exported_model_equals_the_best_checkpoint(trained: dict[str, Any]) -> None:
    run = Path(trained["run_dir"])
    loaded = load(run / "model.safetensors")
    state = load_torch(trained["checkpoint"])["state_dict"]
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, state[f"model.{name}"]), name


def test_the_learned_model_beats_uniform_guessing(trained: dict[str, Any]) -> None:
    """Eight steps on blocky maps already move the held-out loss well below log(4) nats (uniform)."""
    assert trained["val_loss_nats"] < math.log(4) - 0.2


def test_a_second_stage_starts_from_the_first_stages_weights(
    trained: dict[str, Any], chips: Path, tmp_path: Path
) -> None:
    """``task.init_from``: with a vanishing learning rate the second stage exports the first stage's weights,
    while a fresh run from the same seed does not; a model of another shape is refused by name."""
    first = load(trained["run_dir"]).model.state_dict()
    stage = train(
        tiny_recipe(chips, steps=2, **{"task.init_from": trained["run_dir"], "task.lr": 1e-12}), tmp_path / "two"
    )
    second = load(stage["run_dir"]).model.state_dict()
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=0, atol=1e-8, msg=name)
    fresh = load(train(tiny_recipe(chips, steps=2, **{"task.lr": 1e-12}), tmp_path / "f")["run_dir"])
    assert not torch.allclose(fresh.model.state_dict()["head.weight"], first["head.weight"])
    refused = r"task.init_from = .* does not fit this recipe's model: dim 32 \(this run 16\)"
    with pytest.raises(UserError, match=refused):
        train(tiny_recipe(chips, steps=2, **{"task.init_from": trained["run_dir"], "model.dim": 16}), tmp_path / "bad")


def test_training_reads_a_mapped_chip_file_chip_by_chip_as_the_tensors_would(tmp_path: Path) -> None:
    """An uncompressed chip file stays memory-mapped while training reads it (no per-rank copy), and every chip
    it gives equals the one ChipTensors makes of the whole split: labels, scaled covariates with NaN as 0, lon/lat."""
    from landformer.landcover.data import ChipSplitReader

    source = load_chips(make_chip_file(tmp_path / "packed.npz", elevation=True))
    path = write_chips(
        tmp_path / "mapped.npz",
        source.train_data,
        source.test_data,
        source.train_coords,
        source.test_coords,
        source.metadata,
        compress=False,
    )
    chips = load_chips(path)
    assert chips.memory_mapped
    stats = CovariateStats.fit(chips.train_data[:, 1:2])
    reader = ChipSplitReader.from_chips(chips, "train", stats, use_lonlat=True)
    assert isinstance(reader.data, np.memmap) and len(reader) == len(chips.train_data) and reader.side == SIZE
    tensors = ChipTensors.from_chips(chips, "train", stats, use_lonlat=True)
    assert torch.isnan(torch.from_numpy(np.asarray(chips.train_data[0, 1]))).any()  # a NaN hole to scale
    for index in range(len(reader)):
        for got, expected in zip(reader.chip(index), tensors.chip(index), strict=True):
            assert got.dtype == expected.dtype and torch.equal(got, expected)


class KillAt(lightning.Callback):
    """Stands for a killed process: raises after the optimiser step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("killed")


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_a_killed_run_resumes_to_the_same_weights(tmp_path: Path, chips: Path, monkeypatch) -> None:
    """Data order, augmentation, visiting orders and conditioning dropout depend only on the step, so a run
    killed after step 5 and resumed from its step-4 checkpoint ends exactly where an uninterrupted run ends."""
    elevation_chips = make_chip_file(tmp_path / "elev.npz", elevation=True)
    overrides = {"data.covariates": "true", "model.cond_dropout": 0.5}
    whole = train(tiny_recipe(elevation_chips, **overrides), tmp_path / "whole")

    import landformer.landcover.train as train_module

    original_fit = train_module.fit

    def fit_killed_at_5(*args: Any, **kwargs: Any) -> Any:
        kwargs["callbacks"] = [*kwargs["callbacks"], KillAt(5)]
        return original_fit(*args, **kwargs)

    monkeypatch.setattr(train_module, "fit", fit_killed_at_5)
    with pytest.raises(RuntimeError, match="killed"):
        train(tiny_recipe(elevation_chips, **overrides), tmp_path / "killed")
    monkeypatch.setattr(train_module, "fit", original_fit)
    assert load_torch(tmp_path / "killed" / "checkpoints" / "last.ckpt")["global_step"] == 4
    with pytest.raises(UserError, match="already holds a training run"):
        train(tiny_recipe(elevation_chips, **overrides), tmp_path / "killed")
    resumed = train(tiny_recipe(elevation_chips, **overrides), tmp_path / "killed", resume=True)
    assert resumed["global_step"] == 8
    final_whole = load_torch(Path(whole["run_dir"]) / "checkpoints" / "last.ckpt")["state_dict"]
    final_resumed = load_torch(Path(resumed["run_dir"]) / "checkpoints" / "last.ckpt")["state_dict"]
    assert final_whole.keys() == final_resumed.keys()
    for name in final_whole:
        assert torch.equal(final_whole[name], final_resumed[name]), name
    loaded = load(tmp_path / "killed")
    assert loaded.config.covariate_channels == 1 and loaded.covariate_names == ["elevation"]


def test_resume_refuses_chips_of_another_legend(tmp_path: Path, chips: Path) -> None:
    train(tiny_recipe(chips, steps=2), tmp_path / "run")
    other = dict(TOY_LEGEND, classes=[dict(c, code=c["code"] + 10) for c in TOY_LEGEND["classes"]])
    other_chips = make_chip_file(tmp_path / "other.npz", legend=other)
    with pytest.raises(UserError, match=r"legend codes \[1, 2, 3, 4\]"):
        train(tiny_recipe(other_chips, steps=4), tmp_path / "run", resume=True)


def test_run_stream_sees_every_chip_once_per_epoch_and_splits_over_processes(monkeypatch) -> None:
    tensors = ChipTensors(torch.arange(10).view(10, 1, 1).expand(10, 2, 2).clone(), None, None)
    dataset = ChipDataset(tensors, seed=3, augment=False)
    numbers = [n for batch in range(8) for n in RunStream(dataset, 4, 8, seed=3).sample_numbers(batch)]
    epochs = [sorted(i % 10 for i in numbers[e * 10 : (e + 1) * 10]) for e in range(3)]
    assert all(epoch == list(range(10)) for epoch in epochs)
    whole = [int(item["labels"][0, 0]) for item in RunStream(dataset, 4, 8, seed=3)]
    assert whole == [n % 10 for n in numbers]
    assert [int(item["labels"][0, 0]) for item in RunStream(dataset, 4, 8, seed=3, start_batch=5)] == whole[20:]
    # Two DDP ranks: rank r takes global batches r, r + 2, ...; together they cover the single-process stream.
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(data_module, "_process_share", lambda rank=rank: (rank, 2))
        shares.append([int(item["labels"][0, 0]) for item in RunStream(dataset, 4, 4, seed=3)])
    interleaved = [x for j in range(4) for rank in (0, 1) for x in shares[rank][4 * j : 4 * j + 4]]
    assert interleaved == whole


def test_training_batches_depend_only_on_the_step(chips: Path) -> None:
    loaded_chips = load_chips(chips)
    tensors = ChipTensors.from_chips(loaded_chips, "train", None, use_lonlat=False)
    full = list(training_loader(tensors, 4, total_steps=6, seed=1))
    assert full[0]["labels"].shape == (4, SIZE, SIZE)
    with_workers = list(training_loader(tensors, 4, total_steps=6, seed=1, num_workers=2))
    assert all(torch.equal(a["order"], b["order"]) for a, b in zip(full, with_workers, strict=True))
    tail = list(training_loader(tensors, 4, total_steps=6, seed=1, start_step=4))
    assert len(full) == 6 and len(tail) == 2
    for a, b in zip(full[4:], tail, strict=True):
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["order"], b["order"])
    # Each item is a symmetry of a real chip, and each order a permutation.
    chip_set = {tuple(m.flatten().tolist()) for m in tensors.labels}
    symmetries = {tuple(dihedral(full[0]["labels"][0], k).flatten().tolist()) for k in range(8)}
    assert chip_set & symmetries
    assert torch.equal(full[0]["order"].sort(dim=1).values, torch.arange(SIZE * SIZE).expand(4, -1))


def test_model_inputs_scale_covariates_and_fill_holes(tmp_path: Path) -> None:
    chip_set = load_chips(make_chip_file(tmp_path / "elev.npz", elevation=True))
    stats = CovariateStats.fit(chip_set.train_data[:, 1:])
    elevation = chip_set.train_data[:, 1].astype(np.float64)
    assert stats.mean[0] == pytest.approx(np.nanmean(elevation))
    assert stats.std[0] == pytest.approx(np.nanstd(elevation))
    labels, covariates = model_inputs(chip_set.train_data, stats)
    assert labels.dtype == torch.int64 and torch.equal(labels, torch.from_numpy(chip_set.train_data[:, 0]).long())
    expected = (chip_set.train_data[:, 1:] - stats.mean[0]) / stats.std[0]
    assert covariates is not None and covariates[0, 0, 0, 0] == 0.0  # the NaN hole reads as the mean
    np.testing.assert_allclose(covariates.numpy()[:, :, 1:], expected[:, :, 1:], rtol=1e-5, atol=1e-5)
    assert model_inputs(chip_set.train_data, None)[1] is None


def _saved_model(tmp_path: Path, legend: dict[str, Any] = TOY_LEGEND) -> Path:
    torch.manual_seed(0)
    model = LandCoverRandAR(LandCoverConfig(n_classes=4, chip_size=SIZE, n_layers=1, n_heads=2, dim=16))
    return save(model, Legend.from_dict(legend), tmp_path / "model", {"note": "test"})


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = _saved_model(tmp_path)
    loaded = load(path.parent)
    assert loaded.path == path and loaded.metadata["extra"] == {"note": "test"}
    assert (path.parent / "model.json").is_file()
    torch.manual_seed(0)
    original = LandCoverRandAR(LandCoverConfig(n_classes=4, chip_size=SIZE, n_layers=1, n_heads=2, dim=16)).eval()
    labels = torch.randint(0, 4, (2, SIZE, SIZE))
    order = torch.arange(SIZE * SIZE).expand(2, -1)
    assert torch.equal(original(labels, order)[0], loaded.model(labels, order)[0])


def test_load_model_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"holds no model\.safetensors"):
        load(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load(tmp_path / "nothing")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a readable safetensors"):
        load(broken)


def test_chips_that_do_not_fit_the_model_are_refused(tmp_path: Path) -> None:
    loaded = load(_saved_model(tmp_path))
    other = dict(TOY_LEGEND, name="other", classes=[dict(c, code=c["code"] + 10) for c in TOY_LEGEND["classes"]])
    cases = {
        "another legend": (make_chip_file(tmp_path / "other.npz", legend=other), "uses legend 'other'"),
        "another size": (make_chip_file(tmp_path / "big.npz", size=16), "16x16 chips"),
    }
    for path, message in cases.values():
        with pytest.raises(UserError, match=message):
            check_chips_match(loaded, load_chips(path), str(path))
    # A file in the original 4-array format (no legend) whose classes exceed the model's legend.
    data = np.full((4, 1, SIZE, SIZE), 7, dtype=np.int16)
    coords = np.zeros((4, 2))
    raw = tmp_path / "raw.npz"
    np.savez(raw, train_data=data, test_data=data, train_coords=coords, test_coords=coords)
    with pytest.raises(UserError, match=r"class values \[7\] that are not indices"):
        check_chips_match(loaded, load_chips(raw), str(raw))


def test_a_chip_file_without_a_legend_needs_data_legend(tmp_path: Path) -> None:
    data = toy_maps(8, SIZE, 0)[:, None] - 1
    coords = np.zeros((4, 2))
    raw = tmp_path / "raw.npz"
    np.savez(raw, train_data=data[:4], test_data=data[4:], train_coords=coords, test_coords=coords)
    with pytest.raises(UserError, match=r"records no legend: set data\.legend"):
        train(tiny_recipe(raw, steps=1), tmp_path / "run")


def test_legend_less_raw_corine_codes_need_data_class_values(tmp_path: Path, monkeypatch) -> None:
    """Raw CORINE codes 1..41 are valid indices of its 44 classes too: unset, training refuses to guess; raw maps
    code c to index c - 1; indices takes the values as they are."""
    import landformer.landcover.train as train_module

    codes = (toy_maps(8, SIZE, 0)[:, None] * 10 + 1).astype(np.int16)  # codes 1, 11, 21, 31, 41 of CORINE
    coords = np.zeros((4, 2))
    raw = tmp_path / "clc.npz"
    np.savez(raw, train_data=codes[:4], test_data=codes[4:], train_coords=coords, test_coords=coords)
    with pytest.raises(UserError, match=r"clc\.npz records no legend .* set data\.class_values=raw or"):
        train(tiny_recipe(raw, steps=1, **{"data.legend": "corine"}), tmp_path / "unset")
    seen = {}
    original = train_module.check_training_chips

    def spy(chips: Any, n_classes: int, source: Path, covariates: bool) -> None:
        seen["train"] = chips.train_data
        original(chips, n_classes, source, covariates)

    monkeypatch.setattr(train_module, "check_training_chips", spy)
    for reading, expected in (("raw", codes[:4] - 1), ("indices", codes[:4])):
        settings = {"data.legend": "corine", "data.class_values": reading}
        run = train(tiny_recipe(raw, steps=1, **settings), tmp_path / reading)
        np.testing.assert_array_equal(seen["train"], expected)
        assert load(run["run_dir"]).legend.name == "corine"


def training_without_data(*settings: str) -> LandCoverRecipe:
    """The tiny test model with no chips and no world given: the recipe's data source decides."""
    return load_config(
        LandCoverRecipe,
        None,
        [
            "data.batch_size=8",
            "data.val_chips=8",
            "model.n_layers=1",
            "model.n_heads=2",
            "model.dim=16",
            "task.threads=1",
            "images.n=2",
            "images.steps=2",
            "train.max_steps=1",
            "train.val_every_steps=1",
            "train.progress_bar=false",
            "train.accelerator=cpu",
            *settings,
        ],
    )


def test_training_without_data_cuts_real_igbp_chips(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LANDFORMER_CACHE", str(tmp_path / "cache"))
    recipe = training_without_data("data.igbp_region=[0, 40, 20, 50]")  # Europe: 400 x 200 px
    assert recipe.data.source == "igbp" and recipe.data.igbp_max_water == 0.5
    summary = train(recipe, tmp_path / "run")
    assert "chips of real IGBP land cover (MODIS MCD12C1 2019)" in capsys.readouterr().out
    run = tmp_path / "run"
    chips = load_chips(run / "chips.npz")
    assert chips.legend.name == "igbp" and chips.chip_size == 16 and chips.metadata["sampling"]["stride"] == 8
    assert chips.metadata["sources"]["class_raster"] == str(run / "chips_igbp.tif")
    assert chips.metadata["sampling"]["max_class_fraction"] == {"0": 0.5}
    water = np.concatenate([chips.train_data, chips.test_data])[:, 0] == 0
    assert water.mean(axis=(1, 2)).max() <= 0.5 and chips.metadata["counts"]["dropped_class_fraction"] > 0
    carved = training_chips(chips, deduplicate=True, seed=0)  # validation blocks set aside, copies dropped
    assert summary["n_train_chips"] == len(carved.train) > 100 and len(chips.test_data) > 10
    assert load(run).legend.name == "igbp" and not (run / "world").exists()


def test_data_source_synthetic_is_the_former_default(tmp_path: Path) -> None:
    from landformer.landcover.train import chips_from_world

    recipe = training_without_data("data.source=synthetic", "data.world_size=128", "data.chip_size=8")
    train(recipe, tmp_path / "run")
    run = tmp_path / "run"
    assert (run / "world" / "world.json").is_file() and not (run / "chips_igbp.tif").exists()
    built = load_chips(run / "chips.npz")
    assert built.legend.name == "nlcd"
    again = load_chips(chips_from_world(run / "world", tmp_path / "again.npz", 8, 8, 0.2, False, 0))
    np.testing.assert_array_equal(built.train_data, again.train_data)
    np.testing.assert_array_equal(built.test_coords, again.test_coords)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("data.covariates=true", "the IGBP chips have no elevation channel"),
        ("data.igbp_max_water=1.5", "igbp_max_water = 1.5 should lie in"),
        ("data.igbp_region=[10, 0, 5, 5]", "igbp_region .* must satisfy"),
        ("data.class_values=codes", "is not one of 'raw', 'indices', None"),
        ("data.source=nlcd", "is not one of 'igbp', 'synthetic'"),
    ],
)
def test_bad_data_settings_are_refused_before_anything_is_written(tmp_path: Path, setting: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        train(training_without_data(setting), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_covariates_asked_for_but_absent(tmp_path: Path, chips: Path) -> None:
    with pytest.raises(UserError, match="has only the class channel"):
        train(tiny_recipe(chips, steps=1, **{"data.covariates": "true"}), tmp_path / "run")


def test_tiny_config_file_equals_the_built_in_defaults() -> None:
    from landformer.core.config import to_dict

    root = Path(__file__).resolve().parents[1]
    assert to_dict(load_config(LandCoverRecipe, root / "configs" / "landcover_tiny.yaml")) == to_dict(LandCoverRecipe())
    reference = load_config(LandCoverRecipe, root / "configs" / "landcover_reference.yaml")
    assert (reference.model.n_layers, reference.model.n_heads, reference.model.dim) == (16, 16, 256)
    assert (reference.data.chip_size, reference.data.batch_size, reference.task.lr) == (32, 64, 5e-4)
    assert (reference.train.max_steps, reference.train.precision) == (100_000, "auto")
    partial = load_config(LandCoverRecipe, None, ["train.progress_bar=false"]).train
    assert (partial.max_steps, partial.progress_bar, partial.loggers) == (300, False, ["csv", "tensorboard"])


@pytest.mark.slow
def test_tiny_preset_meets_the_quality_targets_on_the_synthetic_world(tmp_path: Path) -> None:
    """The issue's targets (about 10 minutes on 2 shared cores): on held-out chips of the synthetic world, bits per
    pixel below lzma, PNG and the class entropy, and inpainting accuracy above both baselines at every ratio."""
    from landformer.landcover.apps.inpainting import inpaint_eval
    from landformer.landcover.apps.scoring import information_content
    from landformer.landcover.train import chips_from_world

    recipe = load_config(LandCoverRecipe, None, ["train.progress_bar=false", "data.source=synthetic"])
    run = Path(train(recipe, tmp_path / "run")["run_dir"])
    size = recipe.data.chip_size
    heldout = chips_from_world(run / "world", tmp_path / "heldout.npz", size, size, 0.2, False, recipe.train.seed)
    info = information_content(run, heldout, tmp_path / "info", orders=4)
    assert all(info["model_below"][name] for name in ("lzma", "png", "class_entropy")), info["bits_per_pixel"]
    sweep = inpaint_eval(run, heldout, tmp_path / "inpaint", ratios=(0.1, 0.3, 0.5, 0.7, 0.9), n=64, steps=16)
    assert sweep["model_beats_baselines"], sweep["rows"]


def test_second_stage_on_another_igbp_split_is_refused() -> None:
    """A second stage that cuts IGBP chips with another seed would test on the first stage's training chips."""
    from landformer.core.legend import load_legend
    from landformer.core.task import task_from_recipe
    from landformer.landcover.task import LandCoverTask
    from landformer.landcover.train import igbp_chip_settings, load_initial_weights

    other = load_config(LandCoverRecipe, "landcover_igbp", ["train.seed=1"])
    same = load_config(LandCoverRecipe, "landcover_igbp")
    assert other.data.builds_igbp and same.data.builds_igbp
    config = dataclasses.replace(same.model, n_classes=17, chip_size=16)
    task = task_from_recipe(LandCoverTask, same, model_config=dataclasses.asdict(config))
    legend = load_legend("igbp")
    with pytest.raises(UserError, match=r"another split of the IGBP chips: seed 0 \(this run 1\)"):
        load_initial_weights(task, "igbp", config, legend, igbp_chip_settings(other))
    load_initial_weights(task, "igbp", config, legend, igbp_chip_settings(same))
    packaged = load("igbp").model.state_dict()
    assert all(torch.equal(value, packaged[name]) for name, value in task.model.state_dict().items())


def carve_chip_set(tmp_path: Path, metadata: dict[str, Any], copies: int = 0) -> Any:
    """16 x 16 chips of 4 px every 2 px on a grid of 0.01 degree pixels, their centres in 4 x 4 blocks of 8 px;
    each chip distinct unless ``copies`` of them repeat chip 0."""
    side, stride, size = 16, 2, 4
    rows, cols = (axis.ravel() * stride for axis in np.meshgrid(np.arange(side), np.arange(side), indexing="ij"))
    # Centres half a pixel past each chip's offset, so no centre falls on a block edge.
    coords = np.stack([10.0 + (cols + 0.5) * 0.01, 50.0 - (rows + 0.5) * 0.01], axis=1)
    data = np.zeros((len(rows), 1, size, size), dtype=np.int16)
    data[:, 0, 0] = (np.arange(len(rows))[:, None] // 4 ** np.arange(size)) % 4  # chip i: i's base-4 digits
    data[1 : 1 + copies] = data[0]
    metadata = {"legend": TOY_LEGEND, "chip_size": size, **metadata}
    path = write_chips(tmp_path / "carve.npz", data, data[:2], coords, coords[:2], metadata)
    return load_chips(path), rows, cols


def test_validation_is_carved_from_train_blocks_that_training_never_touches(tmp_path: Path) -> None:
    metadata = {"crs": "EPSG:4326", "pixel_size": [0.01, 0.01], "split": {"block_size": 8}}
    chips, rows, cols = carve_chip_set(tmp_path, metadata, copies=5)
    carved = training_chips(chips, deduplicate=False, seed=0)
    assert carved.validation is not None and len(carved.validation) > 0
    # One block of 16 is set aside (5 %, at least one): every validation chip's centre lies in it.
    centre_blocks = {(rows[i] // 8, cols[i] // 8) for i in carved.validation}
    assert len(centre_blocks) == 1
    # No training chip shares a pixel with a validation chip (4 px chips: offsets under 4 px in both axes).
    for v in carved.validation:
        overlap = (np.abs(rows[carved.train] - rows[v]) < 4) & (np.abs(cols[carved.train] - cols[v]) < 4)
        assert not overlap.any()
    # Validation chips are distinct and do not overlap one another; the carve leaves most chips to train on.
    val_rows, val_cols = rows[carved.validation], cols[carved.validation]
    for a in range(len(carved.validation)):
        for b in range(a):
            assert abs(val_rows[a] - val_rows[b]) >= 4 or abs(val_cols[a] - val_cols[b]) >= 4
    assert 150 < len(carved.train) < 256 and "1 of 16 blocks" in carved.note
    assert carved.describe(256).startswith(f"{len(carved.train)} of 256 train-split chips train")
    # Another seed sets aside another block; de-duplication drops exactly the copies that training would see.
    other = training_chips(chips, deduplicate=False, seed=1)
    assert not np.array_equal(other.validation, carved.validation)
    deduplicated = training_chips(chips, deduplicate=True, seed=0)
    kept_copies = np.isin(np.arange(6), carved.train).sum()
    assert len(carved.train) - len(deduplicated.train) == max(kept_copies - 1, 0)
    flat = chips.train_data[deduplicated.train].reshape(len(deduplicated.train), -1)
    assert len(np.unique(flat, axis=0)) == len(flat)


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({}, "no CRS and pixel size"),
        ({"crs": "EPSG:4326", "pixel_size": [0.01, 0.01], "split": {"block_size": 1000}}, "only 1 block of"),
        ({"crs": "EPSG:4326", "pixel_size": [0.01, 0.01], "change_pair": {}}, "pair's validation blocks"),
    ],
)
def test_validation_falls_back_to_the_test_split_and_says_why(tmp_path: Path, metadata: dict, reason: str) -> None:
    chips, _, _ = carve_chip_set(tmp_path, metadata)
    carved = training_chips(chips, deduplicate=False, seed=0)
    assert carved.validation is None and reason in carved.note and "test split" in carved.note
    np.testing.assert_array_equal(carved.train, np.arange(256))


def test_a_reader_of_some_chips_gives_what_the_tensors_of_those_chips_give(tmp_path: Path) -> None:
    from landformer.landcover.data import ChipSplitReader

    chips = load_chips(make_chip_file(tmp_path / "chips.npz", elevation=True))
    stats = CovariateStats.fit(chips.train_data[:, 1:2])
    subset = np.array([5, 0, 17, 3])
    reader = ChipSplitReader.from_chips(chips, "train", stats, use_lonlat=True, indices=subset)
    tensors = ChipTensors.from_chips(chips, "train", stats, use_lonlat=True, indices=subset)
    whole = ChipTensors.from_chips(chips, "train", stats, use_lonlat=True)
    assert len(reader) == len(tensors) == 4
    for index, row in enumerate(subset):
        for got, expected, direct in zip(reader.chip(index), tensors.chip(index), whole.chip(int(row)), strict=True):
            assert torch.equal(got, expected) and torch.equal(got, direct)


def test_validation_chips_are_written_as_a_chip_file_from_the_cli(tmp_path: Path, capsys) -> None:
    from landformer.cli import main

    metadata = {"crs": "EPSG:4326", "pixel_size": [0.01, 0.01], "split": {"block_size": 8}}
    chips, _, _ = carve_chip_set(tmp_path, metadata, copies=5)
    carve = training_chips(chips, deduplicate=False, seed=3)
    out = tmp_path / "val.npz"
    assert main(["landcover", "validation-chips", "--chips", str(chips.source), "--seed", "3", "--out", str(out)]) == 0
    written = load_chips(out)
    np.testing.assert_array_equal(written.test_data, chips.train_data[carve.validation])
    np.testing.assert_array_equal(written.train_data, chips.train_data[carve.train])
    np.testing.assert_array_equal(written.test_coords, chips.train_coords[carve.validation])
    assert written.metadata["validation_of"]["seed"] == 3 and written.legend.name == "toy"
    assert f"{len(carve.validation)} validation chips" in capsys.readouterr().out
    # A file that cannot be carved is one clear line and nothing written.
    bare, _, _ = carve_chip_set(tmp_path / "bare", {})
    refused = tmp_path / "refused.npz"
    assert main(["landcover", "validation-chips", "--chips", str(bare.source), "--out", str(refused)]) != 0
    error = capsys.readouterr().err.strip()
    assert "no validation blocks" in error and "\n" not in error and not refused.exists()
