"""``landformer forecast train / evaluate / predict`` end to end on a tiny world, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from landformer.cli import main
from landformer.core.config import load_config
from landformer.core.io import read_json
from landformer.forecast.config import QUANTILES_95, ForecastConfig, ForecastPredictSection
from landformer.forecast.model import masked_loss
from landformer.forecast.task import ForecastTask
from landformer.forecast.train import panel_window
from landformer.synth.world import make_world

REPO = Path(__file__).resolve().parents[1]
# A 64 px world cut into 16 px blocks; one 16 px chip per block; a 4-channel ConvLSTM for 4 steps.
TINY = [
    "data.chip_size=16",
    "data.chip_stride=16",
    "data.block_size=16",
    "model.hidden_channels=[4]",
    "train.max_steps=4",
    "train.val_every_steps=2",
    "train.checkpoint_every_steps=2",
    "train.progress_bar=false",
]


def sets(overrides: list[str]) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("forecast_world")
    make_world(folder, size=64, seed=1)
    return folder


@pytest.fixture(scope="module")
def run(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("forecast_run")
    assert main(["forecast", "train", "--world", str(world), "--out", str(run_dir), *sets(TINY)]) == 0
    return run_dir


def error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run a command that must fail as a user error; return its one-line message."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("landformer: error: ") and "\n" not in err and "Traceback" not in err
    return err


def hm_stack(world: Path) -> np.ndarray:
    years = range(1990, 2021, 5)
    return np.stack([rasterio.open(world / f"hm_{year}.tif").read(1) for year in years]).astype(np.float64)


def test_train_writes_model_normalizer_panel_and_records_the_split(run: Path, world: Path) -> None:
    for name in ("model.safetensors", "model.json", "normalizer.json", "forecast_panel.png", "config.yaml"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    meta = read_json(run / "model.json")
    assert meta["n_input_steps"] == 3 and meta["n_horizons"] == 4 and meta["cadence"] == 5
    assert meta["channel_names"] == ["hm"] and meta["covariate_names"] == ["elevation_m"]
    assert meta["model_config"]["quantiles"] == list(QUANTILES_95)
    assert meta["valid_range"] == [0.0, 1.0]  # HM in 0..1: forecasts are clipped to it
    split = meta["data"]["split"]
    assert (split["n_train_blocks"], split["n_val_blocks"], split["n_test_blocks"]) == (10, 2, 4)
    # One 16 px chip per 16 px training block, so the normalizer's mean is the mean over the training blocks
    # of every step but the held-out last one, computed here straight from the rasters.
    held_out = {tuple(block) for block in split["test_blocks"] + split["val_blocks"]}
    train_blocks = [(i, j) for i in range(4) for j in range(4) if (i, j) not in held_out]
    assert len(train_blocks) == 10
    normalizer = read_json(run / "normalizer.json")
    hm = hm_stack(world)
    held_in = np.concatenate([hm[:6, 16 * i : 16 * i + 16, 16 * j : 16 * j + 16].ravel() for i, j in train_blocks])
    assert normalizer["series"]["mean"][0] == pytest.approx(held_in.mean(), rel=1e-6)
    assert normalizer["series"]["std"][0] == pytest.approx(held_in.std(), rel=1e-5)


def test_training_sends_validation_forecasts_to_tensorboard(run: Path) -> None:
    from test_train_images import tensorboard_images

    assert tensorboard_images(run / "logs") == {"forecast/validation": [2, 4]}
    assert sorted(path.name for path in (run / "images").glob("forecast_val_*.png")) == [
        "forecast_val_0000002.png",
        "forecast_val_0000004.png",
    ]


def test_evaluate_scores_every_window_on_the_held_out_blocks(run: Path, world: Path, tmp_path: Path) -> None:
    assert main(["forecast", "evaluate", "--model", str(run), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert (tmp_path / "error_vs_horizon.png").is_file()
    rows, final = result["per_horizon"], result["final_step"]["per_horizon"]
    pixels = 4 * 16 * 16  # four 16 px test blocks
    # Windows starting 1990..2005 give 4, 3, 2, 1 targets inside the series for horizons 1..4.
    assert [row["n_valid"] for row in rows] == [4 * pixels, 3 * pixels, 2 * pixels, pixels]
    assert [row["n_valid"] for row in final] == [pixels] * 4 and result["final_step"]["year"] == 2020
    assert [row["label"] for row in rows] == ["+5 years", "+10 years", "+15 years", "+20 years"]
    # Persistence errors recomputed straight from the rasters over the test blocks.
    hm = hm_stack(world)
    blocks = result["split"]["test_blocks"]
    for horizon, row in enumerate(rows, start=1):
        errors = []
        for start in range(0, 7 - 3 - horizon + 1):
            last_input, target = hm[start + 2], hm[start + 2 + horizon]
            errors += [
                np.abs(target - last_input)[16 * i : 16 * i + 16, 16 * j : 16 * j + 16].ravel() for i, j in blocks
            ]
        errors_all = np.concatenate(errors)
        assert row["persistence_mae"] == pytest.approx(errors_all.mean(), rel=1e-9, abs=1e-12)
        assert row["persistence_rmse"] == pytest.approx(np.sqrt((errors_all**2).mean()), rel=1e-9, abs=1e-12)
        assert 0.0 <= row["coverage"] <= 1.0
        assert row["skill_persistence"] == pytest.approx(1 - row["rmse"] ** 2 / row["persistence_rmse"] ** 2)
    assert result["summary"]["nominal_coverage"] == pytest.approx(0.95)


def test_predict_writes_geotiffs_on_the_input_grid(run: Path, world: Path, tmp_path: Path) -> None:
    argv = ["forecast", "predict", "--model", str(run), "--world", str(world), "--out", str(tmp_path)]
    assert main([*argv, "--tile", "32", "--overlap", "8"]) == 0
    with rasterio.open(world / "hm_2020.tif") as source:
        grid = (source.crs, source.transform, source.width, source.height)
    for year in (2025, 2030, 2035, 2040):
        with rasterio.open(tmp_path / f"forecast_{year}.tif") as dataset:
            assert (dataset.crs, dataset.transform, dataset.width, dataset.height) == grid
            data = dataset.read()
            assert data.shape == (3, 64, 64) and np.isfinite(data).all()
            assert (data[1] <= data[0]).all() and (data[0] <= data[2]).all()


def test_resume_continues_and_a_fresh_start_over_a_run_is_refused(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["forecast", "train", "--world", str(world), "--out", str(tmp_path), *sets(TINY)]
    assert main([*argv, "--set", "train.max_steps=2"]) == 0
    assert read_json(tmp_path / "model.json")["global_step"] == 2
    assert "already holds a training run" in error_line(capsys, argv)
    assert main([*argv, "--resume"]) == 0
    assert read_json(tmp_path / "model.json")["global_step"] == 4
    assert len(read_json(tmp_path / "run.json")["previous"]) == 1


def test_bad_input_gives_one_line_errors(
    run: Path, world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hm = [str(world / f"hm_{year}.tif") for year in range(1990, 2021, 5)]
    train = ["forecast", "train", "--out", str(tmp_path / "new")]
    assert "7 series rasters but 6 years" in error_line(
        capsys, [*train, "--series", *hm, "--years", *map(str, range(6))]
    )
    swapped = [hm[1], hm[0], *hm[2:]]
    assert "dates out of order: 1990 (hm_1990.tif) follows 1995" in error_line(capsys, [*train, "--series", *swapped])
    message = error_line(capsys, [*train, "--series", *hm[:4]])
    assert "4 step(s) (1990..2005) is fewer than the 5 needed to train with K = 3" in message
    evaluate = ["forecast", "evaluate", "--model", str(run), "--out", str(tmp_path / "eval")]
    message = error_line(capsys, [*evaluate, "--series", *hm[:3], "--covariate", str(world / "elevation.tif")])
    assert "fewer than the 4 needed to evaluate" in message
    predict = ["forecast", "predict", "--model", str(run), "--out", str(tmp_path / "pred")]
    message = error_line(capsys, [*predict, "--series", *hm[-3:]])
    assert "trained with 1 covariate channel(s) (elevation_m) but 0 were given" in message
    far = tmp_path / "far_dem.tif"
    with rasterio.open(world / "elevation.tif") as dem:
        profile = dem.profile | {"transform": dem.transform * dem.transform.translation(10_000, 0)}
        with rasterio.open(far, "w", **profile) as out:
            out.write(dem.read())
    assert "does not overlap" in error_line(capsys, [*predict, "--series", *hm[-3:], "--covariate", str(far)])
    assert "give --years" in error_line(capsys, [*predict, "--series", str(far)])
    assert "unknown key 'model.hiden_channels'" in error_line(capsys, [*train, "--set", "model.hiden_channels=[4]"])
    assert not (tmp_path / "pred").exists() and not (tmp_path / "eval").exists()


def test_recipes_load_and_the_tiny_one_is_the_default() -> None:
    assert load_config(ForecastConfig, REPO / "configs" / "forecast_tiny.yaml") == ForecastConfig()
    reference = load_config(ForecastConfig, REPO / "configs" / "forecast_reference.yaml")
    assert reference.model.hidden_channels == [64, 64, 64] and reference.model.kernel_size == 5
    assert ForecastConfig().predict == ForecastPredictSection()


def test_predict_options_override_the_run_recipe(
    run: Path, world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from landformer.cli import build_parser
    from landformer.forecast.cli import predict_settings

    base = ["forecast", "predict", "--model", str(run), "--world", str(tmp_path), "--out", str(tmp_path)]
    recipe = load_config(ForecastConfig, run / "config.yaml").predict
    assert predict_settings(run, build_parser().parse_args(base)) == recipe
    args = build_parser().parse_args([*base, "--tile", "256", "--precision", "fp32", "--no-compile"])
    settings = predict_settings(run, args)
    assert (settings.tile, settings.precision, settings.compile) == (256, "fp32", False)
    assert (settings.overlap, settings.batch_size, settings.device) == (recipe.overlap, recipe.batch_size, "cpu")
    bad = ["forecast", "predict", "--model", str(run), "--world", str(world), "--out", str(tmp_path / "out")]
    assert main([*bad, "--threads", "-2"]) == 2  # refused before any torch call or output
    assert "forecast predict: threads = -2 should be 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_point_head_learns_the_mean_and_outer_heads_the_quantiles() -> None:
    task = ForecastTask(hidden_channels=(4,), quantiles=QUANTILES_95, point_loss="mse", max_steps=10)
    generator = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 4, 1, 3, 5, 5, generator=generator)
    target = torch.randn(2, 4, 1, 5, 5, generator=generator)
    mask = torch.rand(target.shape, generator=generator) > 0.3
    expected = masked_loss(pred[:, :, :, 1], target, mask) + masked_loss(
        pred[:, :, :, [0, 2]], target, mask, (0.025, 0.975)
    )
    assert torch.allclose(task.forecast_loss(pred, target, mask), expected)
    pinball = ForecastTask(hidden_channels=(4,), quantiles=QUANTILES_95, point_loss="pinball")
    assert torch.allclose(pinball.forecast_loss(pred, target, mask), masked_loss(pred, target, mask, QUANTILES_95))
    task.train()
    assert task.teacher_forcing_now() == pytest.approx(0.5)  # step 0
    task.eval()
    assert task.teacher_forcing_now() == 0.0


def test_panel_window_reaches_one_step_past_the_series_end() -> None:
    assert panel_window(7, 3, 4) == 1  # inputs 1995..2005, targets 2010, 2015, 2020 and 2025 (no truth)
    assert panel_window(5, 3, 4) == 0
    assert panel_window(20, 3, 4) == 14


def test_demo_step_trains_evaluates_predicts_and_reports_its_numbers(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from landformer.forecast import demo

    monkeypatch.setattr(demo, "DEMO_STEPS", 3)
    result = demo.run_demo_step(tmp_path, world, seed=2)
    metrics = read_json(tmp_path / "metrics.json")
    assert result["training_steps"] == 3
    assert result["skill_persistence"] == [row["skill_persistence"] for row in metrics["per_horizon"]]
    assert result["coverage"] == [row["coverage"] for row in metrics["per_horizon"]]
    assert result["coverage_in_target"] == [0.9 <= row["coverage"] <= 0.99 for row in metrics["per_horizon"]]
    assert read_json(tmp_path / "run" / "model.json")["model_config"]["hidden_channels"] == demo.DEMO_HIDDEN_CHANNELS
    assert result["forecast_years"] == [2025, 2030, 2035, 2040]
    for path in [*result["pictures"], *result["geotiffs"], result["model"]]:
        assert Path(path).is_file(), path
    with rasterio.open(result["geotiffs"][-1]) as dataset:
        assert result["forecast_mean"] == pytest.approx(float(np.nanmean(dataset.read(1))))
    again = demo.run_demo_step(tmp_path, world, seed=2)  # a second run into the same folder starts afresh
    assert again["skill_persistence"] == result["skill_persistence"]
