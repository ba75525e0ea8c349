"""``landformer landcover ...`` end to end: train a 2-step model on toy chips, then every command on it; user
mistakes are one line on stderr and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_landcover_train import SIZE, TOY_LEGEND, make_chip_file

from landformer.cli import main
from landformer.core.config import load_config
from landformer.core.errors import UserError
from landformer.core.raster import write_geotiff
from landformer.landcover.config import LandCoverRecipe

TINY = [
    "--set=data.batch_size=8",
    "--set=data.val_chips=4",
    "--set=model.n_layers=1",
    "--set=model.n_heads=2",
    "--set=model.dim=16",
    "--set=task.threads=1",
    "--set=images.n=2",
    "--set=images.steps=2",
    "--set=train.max_steps=2",
    "--set=train.progress_bar=false",
    "--set=train.accelerator=cpu",
]


@pytest.fixture(scope="module")
def chips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_chip_file(tmp_path_factory.mktemp("chips") / "toy.npz", n_train=16, n_test=8)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, chips: Path) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["landcover", "train", "--chips", str(chips), "--out", str(out), *TINY]) == 0
    return out


def test_train_prints_the_run_folder(run: Path, chips: Path, capsys) -> None:
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["global_step"] == 2 and Path(summary["model"]) == run / "model.safetensors"
    assert summary["chips"] == str(chips)


def test_every_command_runs_on_the_trained_model(run: Path, chips: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path
    commands = {
        "sample": ["--n", "3", "--steps", "4", "--top-k", "3"],
        "animate": ["--nrows", "1", "--ncols", "2", "--fps", "8"],
        "inpaint": ["--mask", "random", "--ratio", "0.3", "--n", "2"],
        "inpaint-eval": ["--ratios", "0.2", "0.8", "--n", "4", "--steps", "4"],
        "perplexity": ["--orders", "2"],
        "info": ["--orders", "1"],
    }
    for command, options in commands.items():
        assert main(["landcover", command, "--model", str(run), "--out", str(out / command), *options]) == 0, command
        printed = capsys.readouterr().out
        assert str(out / command) in printed, command
    assert np.load(out / "sample" / "samples.npz")["classes"].shape == (3, SIZE, SIZE)
    assert (out / "animate" / "animation.gif").is_file()
    assert json.loads((out / "inpaint" / "inpaint.json").read_text())["n"] == 2
    assert [row["ratio"] for row in json.loads((out / "inpaint-eval" / "inpaint_eval.json").read_text())["rows"]] == [
        0.2,
        0.8,
    ]
    info = json.loads((out / "info" / "info.json").read_text())
    assert info["n_chips"] == 8 and "lzma" in info["bits_per_pixel"]
    assert {"context", "lzma_per_chip", "webp"} <= set(info["bits_per_pixel"]) and info["ratio_to_context"] > 0


def _non_square(path: Path) -> Path:
    data = np.zeros((2, 1, SIZE, SIZE + 1), np.int16)
    np.savez(path, train_data=data, test_data=data, train_coords=np.zeros((2, 2)), test_coords=np.zeros((2, 2)))
    return path


def _other_legend(path: Path) -> Path:
    other = dict(TOY_LEGEND, name="other", classes=[dict(c, code=c["code"] + 20) for c in TOY_LEGEND["classes"]])
    return make_chip_file(path, n_train=4, n_test=4, legend=other)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("non-square", "should be (N, C, H, W) with H == W"),
        ("other legend", "uses legend 'other'"),
        ("mask shape", "is 3x3 pixels; the chips are 8x8"),
        ("no model", "does not exist"),
        ("bad override", "unknown"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run: Path, tmp_path: Path, capsys, case: str, message: str) -> None:
    model = str(run)
    out = str(tmp_path / "out")
    if case == "non-square":
        argv = ["landcover", "perplexity", "--model", model, "--chips", str(_non_square(tmp_path / "ns.npz"))]
    elif case == "other legend":
        argv = ["landcover", "inpaint", "--model", model, "--chips", str(_other_legend(tmp_path / "o.npz"))]
    elif case == "mask shape":
        mask = write_geotiff(tmp_path / "m.tif", np.ones((3, 3), np.uint8), (30, 0, 0, 0, -30, 90), "EPSG:5070")
        argv = ["landcover", "inpaint", "--model", model, "--mask", str(mask)]
    elif case == "no model":
        argv = ["landcover", "sample", "--model", str(tmp_path / "nothing")]
    else:
        argv = ["landcover", "train", "--set", "model.wings=2"]
    assert main([*argv, "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("landformer: error:") and "\n" not in err and message in err, err


def test_help_lists_the_commands(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["landcover", "--help"])
    text = capsys.readouterr().out
    for command in ("train", "sample", "animate", "inpaint", "inpaint-eval", "perplexity", "info"):
        assert command in text


def test_info_help_names_every_baseline(capsys) -> None:
    from landformer.landcover.baselines import CODECS

    with pytest.raises(SystemExit):
        main(["landcover", "info", "--help"])
    text = capsys.readouterr().out
    baselines = text[text.index("baselines:") :]
    for name in ("context", "class_entropy", "per_chip", *CODECS):
        assert name in baselines, name
    assert "W, N, NW, NE" in baselines


def test_demo_step_writes_its_pictures_and_numbers(tmp_path: Path, monkeypatch) -> None:
    """The demo step trained for 2 steps instead of 70 (the pipeline, not the quality); its pictures and scores
    come from the packaged IGBP model, on that model's own held-out chips."""
    from landformer.landcover import demo
    from landformer.landcover.export import load

    monkeypatch.setattr(demo, "DEMO_STEPS", 2)
    monkeypatch.setattr(demo, "SCORED_CHIPS", 8)
    result = demo.run_demo_step(tmp_path / "landcover", tmp_path / "unused_world", seed=1)
    assert result["training_steps"] == 2
    for key in ("samples_png", "inpaint_png", "info_json", "info_png", "animation_gif", "chips", "short_run_model"):
        assert Path(result[key]).is_file(), key
    with Image.open(result["animation_gif"]) as gif:  # one frame per pixel of a 16x16 chip (identical ones merged)
        assert gif.n_frames > 16 * 16 // 2
    assert load(result["short_run_model"]).legend.name == "igbp"
    info = json.loads(Path(result["info_json"]).read_text())
    assert info["model"] == str(load("igbp").path)
    assert result["heldout_bits_per_pixel"] == pytest.approx(info["bits_per_pixel"]["model_random_order"])
    assert result["ratio_to_context"] == pytest.approx(
        info["bits_per_pixel"]["model_random_order"] / info["bits_per_pixel"]["context"]
    )
    assert set(result["bits_per_pixel"]) >= {"model_random_order", "context", "lzma", "png", "class_entropy"}


def test_the_packaged_igbp_model_loads_by_name_and_fits_the_size_limit(tmp_path: Path, monkeypatch) -> None:
    from landformer.landcover.export import load, model_path

    loaded = load("igbp")
    assert loaded.legend.name == "igbp" and loaded.legend.n_classes == 17 and loaded.chip_size == 16
    assert loaded.path.stat().st_size <= 10 * 2**20
    assert loaded.metadata["extra"]["igbp_chips"]["chip_size"] == 16  # its chips can be cut again anywhere
    # `make igbp-model` trains configs/landcover_igbp.yaml: the shipped weights must be that recipe's shape.
    recipe = load_config(LandCoverRecipe, "landcover_igbp", []).model
    shipped = loaded.model.config
    assert (shipped.n_layers, shipped.n_heads, shipped.dim) == (recipe.n_layers, recipe.n_heads, recipe.dim)
    assert shipped.dropout == recipe.dropout and shipped.order == recipe.order
    (tmp_path / "igbp").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"holds no model\.safetensors"):
        model_path("igbp")  # a folder of that name is the user's run folder, never silently the packaged model
