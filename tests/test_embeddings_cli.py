"""The embeddings commands end to end on a tiny synthetic-world dataset, bad input on the command line, PCA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_train_images import tensorboard_images

from landformer.cli import main
from landformer.embeddings import export
from landformer.embeddings.evaluate import predict, regression_metrics
from landformer.embeddings.pca import PCA3, fit_pca, load_pca, save_pca
from landformer.embeddings.tiles import TileSource, load_dataset, quantize_int8, resolve_source

TRAIN_STAGE = ["embeddings", "train", "--stage"]  # then pretrain, sft or dpo
TINY = [
    "--set", "encoder.dim=32", "--set", "encoder.depth=1", "--set", "encoder.heads=2", "--set", "encoder.patch_size=4",
    "--set", "mae.decoder_dim=32", "--set", "mae.decoder_depth=1", "--set", "mae.decoder_heads=2",
    "--set", "data.batch_size=16", "--set", "sft.head_hidden=16", "--set", "sft.freeze_epochs=1",
    "--set", "dpo.pairs_per_tile=2",
]  # fmt: skip


def steps(stage: str, count: int) -> list[str]:
    return ["--set", f"train_{stage}.max_steps={count}", "--set", f"train_{stage}.val_every_steps={count}",
            "--set", f"train_{stage}.progress_bar=false"]  # fmt: skip


@pytest.fixture(scope="module")
def world_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("emb") / "data"
    assert main(["embeddings", "make-dataset", "--source", "world", "--world-size", "64", "--tile-size", "8",
                 "--seed", "2", "--out", str(folder)]) == 0  # fmt: skip
    return folder


def test_make_dataset_world_writes_a_loadable_dataset(world_dataset: Path) -> None:
    meta = json.loads((world_dataset / "dataset.json").read_text())
    assert meta["count"] == 64 and meta["tile_size"] == 8
    data = load_dataset(resolve_source(world_dataset), progress=False)
    assert data.tiles.shape == (64, 2, 64, 8, 8)
    assert set(data.split) == {"train", "val", "test"}


@pytest.mark.slow
def test_stages_chain_and_evaluate_agrees_with_its_predictions(world_dataset: Path, tmp_path: Path) -> None:
    data = ["--dataset", str(world_dataset)]
    assert main([*TRAIN_STAGE, "pretrain", "--out", str(tmp_path / "pre"), *data, *TINY, *steps("pretrain", 4)]) == 0
    assert (tmp_path / "pre" / "encoder.safetensors").is_file()
    assert (tmp_path / "pre" / "reconstructions.png").is_file()
    assert tensorboard_images(tmp_path / "pre" / "logs") == {"mae/reconstructions": [4]}  # every val_every_steps
    sft = [*TRAIN_STAGE, "sft", "--out", str(tmp_path / "sft"), "--init", str(tmp_path / "pre"), *data, *TINY]
    assert main([*sft, *steps("sft", 6)]) == 0
    summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert set(summary["metrics"]) == {"ridge", "knn", "sft"}
    assert main([*TRAIN_STAGE, "dpo", "--out", str(tmp_path / "dpo"), "--sft", str(tmp_path / "sft"), *data, *TINY,
                 *steps("dpo", 4)]) == 0  # fmt: skip
    dpo = json.loads((tmp_path / "dpo" / "summary.json").read_text())
    assert dpo["n_pairs"] == 2 * summary["metrics"]["sft"]["train"]["n"]
    assert dpo["sft_vs_dpo"]["test"]["sft_r2"] == pytest.approx(summary["metrics"]["sft"]["test"]["r2"], abs=1e-6)
    text_route = ["--set", "dpo.route=text", "--set", "dpo.decimals=3", "--set", "data.batch_size=4",
                  "--set", "train_dpo.checkpoint_every_steps=3"]  # fmt: skip
    text_dpo = [*TRAIN_STAGE, "dpo", "--out", str(tmp_path / "text"), "--sft", str(tmp_path / "sft"), *data, *TINY]
    assert main([*text_dpo, *steps("dpo", 3), *text_route]) == 0
    text = json.loads((tmp_path / "text" / "summary.json").read_text())
    assert text["global_step"] == 3 and (tmp_path / "text" / "text_model" / "model.safetensors").is_file()
    assert text["generated_after"]["test"]["n"] == summary["metrics"]["sft"]["test"]["n"]
    assert main([*text_dpo, *steps("dpo", 5), *text_route]) == 2  # a fresh run into a used folder is refused
    assert main([*text_dpo, *steps("dpo", 5), *text_route, "--resume"]) == 0
    resumed = json.loads((tmp_path / "text" / "summary.json").read_text())
    assert resumed["global_step"] == 5 and resumed["resumed_from"].endswith("checkpoint-3")
    out = tmp_path / "eval"
    assert main(["embeddings", "evaluate", "--runs", str(tmp_path / "sft"), str(tmp_path / "dpo"),
                 "--out", str(out)]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    predictions = pd.read_csv(out / "predictions.csv")
    test = predictions[predictions["split"] == "test"]
    for name, values in metrics.items():
        direct = regression_metrics(test["true"].to_numpy(), test[f"pred_{name}"].to_numpy())
        assert values["test"]["r2"] == pytest.approx(direct["r2"])
    assert metrics["sft:sft"]["test"]["r2"] == pytest.approx(summary["metrics"]["sft"]["test"]["r2"], abs=1e-6)
    assert (out / "scatter.png").is_file() and (out / "comparison.md").read_text().startswith("| model")


def test_second_fresh_run_into_the_same_folder_is_refused(world_dataset: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert main([*TRAIN_STAGE, "pretrain", "--out", str(tmp_path / "run"), "--dataset", str(world_dataset)]) == 2
    assert "already holds a training run" in capsys.readouterr().err


def test_tiles_without_labels_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert main([*TRAIN_STAGE, "sft", "--out", str(tmp_path / "r"), "--tiles", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("landformer: error: --tiles and --labels go together") and err.count("\n") == 1


def test_rgb_tiles_name_the_file_and_channel_count(tmp_path: Path, capsys) -> None:
    (tmp_path / "tiles").mkdir()
    for index in range(4):
        np.save(tmp_path / "tiles" / f"c{index}.npy", np.zeros((3, 8, 8), dtype=np.float32))
    pd.DataFrame({"id": [f"c{i}" for i in range(4)], "target": [1, 2, 3, 4], "group": list("abcd")}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    args = [*TRAIN_STAGE, "pretrain", "--out", str(tmp_path / "r"), "--tiles", str(tmp_path / "tiles"),
            "--labels", str(tmp_path / "labels.csv")]  # fmt: skip
    assert main(args) == 2
    assert "c0.npy has 3 channels, expected 64" in capsys.readouterr().err


def test_xlsx_with_other_columns_on_the_command_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "tiles").mkdir()
    values = np.random.default_rng(0).normal(size=(64, 8, 8))
    np.save(tmp_path / "tiles" / "a.npy", quantize_int8(values / np.linalg.norm(values, axis=0)))
    pd.DataFrame({"city": ["a"], "growth": [0.1]}).to_excel(tmp_path / "labels.xlsx", index=False)
    args = [*TRAIN_STAGE, "sft", "--out", str(tmp_path / "r"), "--tiles", str(tmp_path / "tiles"),
            "--labels", str(tmp_path / "labels.xlsx")]  # fmt: skip
    assert main(args) == 2
    assert "has no column 'id' (columns: city, growth)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- PCA


def test_pca_is_fitted_on_training_pixels_and_round_trips(world_dataset: Path, tmp_path: Path) -> None:
    data = load_dataset(resolve_source(world_dataset), progress=False)
    pca = fit_pca(data, max_pixels=10_000, seed=0)
    train = data.indices("train")
    pixels = np.moveaxis(data.tiles[train], 2, -1)[
        np.broadcast_to(data.valid[train][:, None], data.tiles[train].shape[:2] + data.valid.shape[1:])
    ]
    if len(pixels) > 10_000:
        pixels = pixels[np.random.default_rng(0).choice(len(pixels), 10_000, replace=False)]
    covariance = np.cov(pixels.T.astype(np.float64))
    _, eigenvectors = np.linalg.eigh(covariance)
    top = eigenvectors[:, ::-1][:, :3].T
    assert np.allclose(np.abs(np.sum(top * pca.components, axis=1)), 1.0, atol=1e-6)
    assert np.allclose(pca.components @ pca.components.T, np.eye(3), atol=1e-9)
    json_path, npz_path = save_pca(pca, tmp_path / "pca.json")
    loaded = load_pca(json_path)
    assert isinstance(loaded, PCA3) and np.allclose(loaded.components, pca.components)
    assert set(np.load(npz_path).files) >= {"mean", "components", "low", "high"}
    rgb = pca.project(data.tiles[:2], data.valid[:2, None])
    assert rgb.shape == (2, 2, 3, 8, 8) and rgb.min() >= 0 and rgb.max() <= 1


def test_pca_command_writes_a_3_channel_dataset(world_dataset: Path, tmp_path: Path) -> None:
    assert main(["embeddings", "pca", "--out", str(tmp_path / "pca"), "--dataset", str(world_dataset)]) == 0
    source = resolve_source(tmp_path / "pca" / "data")
    assert source.channels == 3 and source.next_tiles is not None
    converted = load_dataset(source, progress=False)
    original = load_dataset(resolve_source(world_dataset), progress=False)
    assert converted.tiles.shape == (64, 2, 3, 8, 8)
    pca = load_pca(tmp_path / "pca" / "pca.json")
    np.testing.assert_allclose(converted.tiles[5], pca.project(original.tiles[5], original.valid[5][None]), atol=1e-6)
    np.testing.assert_array_equal(converted.split, original.split)
    assert (tmp_path / "pca" / "data" / "preview.png").is_file()


def test_pca_dataset_trains_with_a_3_channel_encoder_on_the_same_split(world_dataset: Path, tmp_path: Path) -> None:
    assert main(["embeddings", "pca", "--out", str(tmp_path / "pca"), "--dataset", str(world_dataset)]) == 0
    sft = [*TRAIN_STAGE, "sft", "--out", str(tmp_path / "sft3"), "--dataset", str(tmp_path / "pca" / "data"), *TINY]
    assert main([*sft, "--set", "encoder.in_channels=3", *steps("sft", 4)]) == 0
    model = json.loads((tmp_path / "sft3" / "model.json").read_text())
    assert model["encoder"]["in_channels"] == 3 and model["global_step"] == 4
    summary = json.loads((tmp_path / "sft3" / "summary.json").read_text())
    original = load_dataset(resolve_source(world_dataset), progress=False)
    for split in ("train", "val", "test"):
        assert summary["metrics"]["sft"][split]["n"] == len(original.indices(split))
    converted = load_dataset(resolve_source(tmp_path / "pca" / "data"), progress=False)
    np.testing.assert_array_equal(converted.split, original.split)
    network, meta = export.load(tmp_path / "sft3")
    test = converted.indices("test")
    mean, _ = predict(network, meta, converted, test)
    r2 = regression_metrics(converted.targets[test], mean)["r2"]
    assert r2 == pytest.approx(summary["metrics"]["sft"]["test"]["r2"], abs=1e-5)


def test_three_channel_tiles_are_read_with_the_encoders_channel_count(tmp_path: Path) -> None:
    (tmp_path / "tiles").mkdir()
    for index in range(3):
        np.save(tmp_path / "tiles" / f"c{index}.npy", np.full((3, 4, 4), 0.5, dtype=np.float32))
    pd.DataFrame({"id": ["c0", "c1", "c2"], "target": [1, 2, 3], "group": list("abc")}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    data = load_dataset(TileSource(tmp_path / "tiles", tmp_path / "labels.csv", channels=3), progress=False)
    assert data.tiles.shape == (3, 1, 3, 4, 4)


def test_tiny_recipe_is_the_built_in_default_and_references_load() -> None:
    from landformer.core.config import load_config, to_dict
    from landformer.embeddings.config import EmbeddingsConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    assert to_dict(load_config(EmbeddingsConfig, root / "embeddings_tiny.yaml")) == to_dict(EmbeddingsConfig())
    for kind in ("qwen2_vl", "qwen2_5_vl"):
        config = load_config(EmbeddingsConfig, root / f"embeddings_{kind}_7b.yaml")
        config.validate()
        assert config.encoder.kind == kind and config.sft.lora and config.train_sft.precision == "bf16-mixed"


@pytest.mark.slow
def test_demo_step_writes_its_pictures_and_scores(tmp_path: Path) -> None:
    from landformer.embeddings.demo import run_demo_step
    from landformer.synth.world import make_world

    world = make_world(tmp_path / "world", size=128, seed=0)
    result = run_demo_step(tmp_path / "emb", world.folder, seed=0)
    assert Path(result["scatter"]).is_file() and Path(result["reconstructions"]).is_file()
    assert set(result["test_r2"]) == {"ridge", "knn", "sft"} and result["n_test_tiles"] > 0


@pytest.mark.slow
def test_demo_step_fine_tuned_model_reaches_the_better_probe(tmp_path: Path) -> None:
    """The demo's own world (256 px, seed 0): the fine-tuned model is at or above both probes on the test tiles."""
    from landformer.embeddings.demo import run_demo_step
    from landformer.synth.world import make_world

    world = make_world(tmp_path / "world", size=256, seed=0)
    result = run_demo_step(tmp_path / "emb", world.folder, seed=0)
    r2 = result["test_r2"]
    assert r2["sft"] >= max(r2["ridge"], r2["knn"]) - 1e-4, r2
    if result["kept_probe_start"]:  # the model is the ridge probe: equal up to the rounding of test_r2
        assert r2["sft"] == pytest.approx(r2["ridge"], abs=1e-4)


@pytest.mark.slow
def test_reference_recipe_runs_lora_on_a_local_qwen_checkpoint(world_dataset: Path, tmp_path: Path) -> None:
    """The 7B recipe's code path (pretrained tower, copy init, temporal pair, LoRA) on a tiny saved checkpoint."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    text = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 64,
        "vocab_size": 256,
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
    }
    vision = {"depth": 2, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "patch_size": 2, "in_channels": 3}
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision)).save_pretrained(
        tmp_path / "ckpt"
    )
    root = Path(__file__).resolve().parents[1] / "configs"
    cpu = ["--set", "train_sft.accelerator=cpu", "--set", "train_sft.precision=32-true", "--set", "data.num_workers=0",
           "--set", "train_sft.loggers=[csv]", "--set", "data.batch_size=8"]  # fmt: skip
    args = [*TRAIN_STAGE, "sft", "--config", str(root / "embeddings_qwen2_vl_7b.yaml"), "--out", str(tmp_path / "sft"),
            "--dataset", str(world_dataset), "--set", f"encoder.pretrained={tmp_path / 'ckpt'}", *cpu,
            *steps("sft", 3)]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    model, _ = export.load(tmp_path / "sft")
    frozen = sum(
        p.numel() for name, p in model.encoder.named_parameters() if "lora_" not in name and "patch_embed" not in name
    )
    assert frozen > 0 and summary["trainable_parameters"] == summary["parameters"] - frozen  # LoRA: tower frozen
    meta = json.loads((tmp_path / "sft" / "model.json").read_text())
    assert meta["lora"]["rank"] == 16 and meta["encoder"]["tower_config"]["in_channels"] == 64


# ------------------------------------------------------------------------ fine-tuning from the probe


def probe_sft_run(world_dataset: Path, out: Path, *extra: str) -> dict:
    args = [*TRAIN_STAGE, "sft", "--dataset", str(world_dataset), "--out", str(out), *TINY, *steps("sft", 6)]
    assert main([*args, "--set", "train_sft.val_every_steps=3", "--set", "sft.start_from_probe=true", *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def test_sft_that_cannot_move_stays_exactly_the_ridge_probe(world_dataset: Path, tmp_path: Path) -> None:
    summary = probe_sft_run(world_dataset, tmp_path / "sft", "--set", "sft.lr=0", "--set", "sft.probe_min_gain_se=0")
    # Nothing trained, so the step-0 weights tie the best checkpoint on validation and are kept.
    assert summary["kept_probe_start"] and summary["checkpoint"].endswith("probe_start.safetensors")
    assert summary["validation_gain_over_probe"]["mean"] == 0.0
    metrics = summary["metrics"]
    for split in ("train", "val", "test"):
        assert metrics["sft"][split]["r2"] == pytest.approx(metrics["ridge"][split]["r2"], abs=1e-5)


def test_sft_from_probe_is_exported_and_scored_the_same_everywhere(world_dataset: Path, tmp_path: Path) -> None:
    summary = probe_sft_run(world_dataset, tmp_path / "sft", "--set", "sft.lr=3e-3")
    metrics = summary["metrics"]
    # The step-0 weights are the ridge probe and remain a candidate, so validation never ends below the probe, and
    # the fine-tuned weights are kept only with a validation gain of more than 2 standard errors.
    assert metrics["sft"]["val"]["r2"] >= metrics["ridge"]["val"]["r2"] - 1e-6
    gain = summary["validation_gain_over_probe"]
    assert summary["kept_probe_start"] == (gain["mean"] <= 2.0 * gain["standard_error"])
    model, meta = export.load(tmp_path / "sft")
    assert meta["probe"] is True and model.head.probe is not None
    from test_train_images import tensorboard_images

    # Every validation's scatter reaches TensorBoard (and stays as a PNG in the run folder).
    assert tensorboard_images(tmp_path / "sft" / "logs") == {"regression/validation": [3, 6]}
    assert len(list((tmp_path / "sft" / "images").glob("val_scatter_*.png"))) == 2
    out = tmp_path / "eval"
    assert main(["embeddings", "evaluate", "--runs", str(tmp_path / "sft"), "--out", str(out)]) == 0
    evaluated = json.loads((out / "metrics.json").read_text())["metrics"]["sft:sft"]
    for split in ("val", "test"):
        assert evaluated[split]["r2"] == pytest.approx(metrics["sft"][split]["r2"], abs=1e-6)
    # DPO rebuilds the probe branch from model.json and starts from the same predictions.
    dpo = [*TRAIN_STAGE, "dpo", "--dataset", str(world_dataset), "--sft", str(tmp_path / "sft"),
           "--out", str(tmp_path / "dpo"), *TINY, *steps("dpo", 2)]  # fmt: skip
    assert main(dpo) == 0
    sft_vs_dpo = json.loads((tmp_path / "dpo" / "summary.json").read_text())["sft_vs_dpo"]
    assert sft_vs_dpo["test"]["sft_r2"] == pytest.approx(metrics["sft"]["test"]["r2"], abs=1e-6)
