"""The demo's report: summary.json and index.html with paths relative to the run folder, a headline for every step
and a green or red mark for every number compared with a baseline or target."""

from __future__ import annotations

import copy
import html
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from landformer.cli import main
from landformer.demo import _numbers, _pictures, number, report_step, write_index, write_report

# The shape of a demo summary's steps (numbers from a real `landformer demo` run), paths left out.
DEMO_STEPS: dict[str, dict[str, Any]] = {
    "world": {"size_px": 256, "seconds": 2.0},
    "chips": {"train": 480, "test": 120, "seconds": 0.1},
    "landcover": {
        "training_steps": 70,
        "train_seconds": 20.5,
        "train_tokens_per_s": 3100.0,
        "short_run_heldout_bits_per_pixel": 1.9,
        "heldout_bits_per_pixel": 0.72,
        "heldout_bits_raster_order": 0.75,
        "context_model_bits_per_pixel": 0.83,
        "ratio_to_context": 0.867,
        "bits_per_pixel": {"model_random_order": 0.72, "class_entropy": 1.6, "lzma": 0.77, "png": 0.9},
        "inpaint_accuracy_hidden": 0.61,
        "change_model": "change",
        "change_test_blocks": 3,
        "change_observed_share": 0.012,
        "change_training_steps": 20,
        "change_short_run_val_bits_per_pixel": 1.2,
        "change_model_figure_of_merit": 0.06,
        "change_markov_ca_figure_of_merit": 0.05,
        "change_model_bits_given_t1": 0.05,
        "change_markov_bits": 0.1,
        "model": "igbp",
        "seconds": 50.0,
    },
    "terrain": {
        "short_run": {"tokenizer_mae_m": 4.1, "maskgit_val_loss": 5.2},
        "model": "real",
        "evaluation": {"codebook_usage": 0.95, "seam_ratio": 0.86, "lattice_contrast": 1.32, "pits_ratio": 1.27},
        "passed": {
            "codebook_usage": True,
            "seam_ratio": True,
            "lattice_contrast": False,
            "pits_ratio": True,
            "samples_beat_fractal_noise": False,
        },
        "realism_ratio_to_fractal_noise": {"elevation_w1": 0.3, "slope_w1": 1.18, "spectrum_log10": 0.19},
        "seconds": 36.0,
    },
    "embeddings": {
        "mae_val_loss": 0.41,
        "test_r2": {"ridge": 0.321, "knn": 0.25, "sft": 0.153},
        "test_rmse": {"ridge": 0.011, "knn": 0.012, "sft": 0.013},
        "n_test_tiles": 64,
        "seconds": 10.0,
    },
    "geoloc": {
        "test_images": 180,
        "routed_median_km": 1200.0,
        "oracle_median_km": 900.0,
        "baseline_median_km": 1500.0,
        "router_accuracy": 0.8,
        "seconds": 58.0,
    },
    "forecast": {
        "skill_persistence": [0.3, 0.2, -0.1],
        "skill_trend": [0.1, -0.05, 0.2],
        "coverage": [0.95, 0.985, 0.88],
        "coverage_in_target": [True, True, False],
        "mae": [0.01, 0.02, 0.03],
        "horizons": ["+5 y", "+10 y", "+20 y"],
        "seconds": 27.0,
    },
}


def flipped(steps: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The same steps with every comparison turned round: what was better is now worse and the other way."""
    steps = copy.deepcopy(steps)
    land = steps["landcover"]
    land["heldout_bits_per_pixel"], land["context_model_bits_per_pixel"] = 0.9, 0.7
    land["heldout_bits_raster_order"] = 0.6
    land["bits_per_pixel"] = {"class_entropy": 0.5, "lzma": 1.2, "png": 0.8}
    land["change_model_figure_of_merit"], land["change_model_bits_given_t1"] = 0.04, 0.2
    terrain = steps["terrain"]
    terrain["passed"] = {name: not passed for name, passed in terrain["passed"].items()}
    terrain["realism_ratio_to_fractal_noise"] = {
        name: 2 - ratio for name, ratio in terrain["realism_ratio_to_fractal_noise"].items()
    }
    steps["embeddings"]["test_r2"] = {"ridge": 0.1, "knn": 0.3, "sft": 0.2}
    steps["embeddings"]["test_rmse"] = {"ridge": 0.02, "knn": 0.01, "sft": 0.015}
    steps["geoloc"]["routed_median_km"], steps["geoloc"]["oracle_median_km"] = 1800.0, 1400.0
    forecast = steps["forecast"]
    forecast["skill_persistence"] = [-value for value in forecast["skill_persistence"]]
    forecast["skill_trend"] = [-value for value in forecast["skill_trend"]]
    forecast["coverage"] = [0.85, 0.995, 0.93]
    return steps


def expected_marks(steps: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """Row label -> green (True) or red (False), worked out from the raw numbers independently of the report."""
    land, terrain = steps["landcover"], steps["terrain"]
    r2, rmse = steps["embeddings"]["test_r2"], steps["embeddings"]["test_rmse"]
    bits, context = land["heldout_bits_per_pixel"], land["context_model_bits_per_pixel"]
    geoloc = steps["geoloc"]
    marks = {
        "bits per held-out pixel, random pixel order": bits < context,
        "bits per held-out pixel, raster order": land["heldout_bits_raster_order"] < context,
        "bits per held-out pixel vs class frequencies alone": bits < land["bits_per_pixel"]["class_entropy"],
        "bits per held-out pixel vs compressors": bits < min(land["bits_per_pixel"][name] for name in ("lzma", "png")),
        "land change 2000 -> 2010, the packaged change model (trained on other worlds): Figure of Merit on the "
        "demo world's test blocks": (land["change_model_figure_of_merit"] > land["change_markov_ca_figure_of_merit"]),
        "land change: bits per pixel of the 2010 map given 2000's": (
            land["change_model_bits_given_t1"] < land["change_markov_bits"]
        ),
        "median error, continent picked by the router": geoloc["routed_median_km"] < geoloc["baseline_median_km"],
        "median error, true continent's model": geoloc["oracle_median_km"] < geoloc["baseline_median_km"],
    }
    for name, passed in terrain["passed"].items():
        if name in terrain["evaluation"]:
            marks[name] = passed
    for name, ratio in terrain["realism_ratio_to_fractal_noise"].items():
        marks[name] = ratio < 1
    for probe in ("ridge", "knn"):  # "at or above the better probe": level counts
        marks[f"R2 vs {probe}"] = r2["sft"] >= r2[probe]
        marks[f"RMSE vs {probe}"] = rmse["sft"] <= rmse[probe]
    forecast = steps["forecast"]
    for i, horizon in enumerate(forecast["horizons"]):
        marks[f"{horizon}: squared error removed vs persistence"] = forecast["skill_persistence"][i] > 0
        marks[f"{horizon}: squared error removed vs the linear trend"] = forecast["skill_trend"][i] > 0
        marks[f"{horizon}: held-out pixels inside the 95 % interval"] = 0.9 <= forecast["coverage"][i] <= 0.99
    return marks


ROW = re.compile(r"<tr class='(better|worse|)'><td>(.*?)</td><td class='value'>(.*?)</td><td>(.*?)</td>")


def rows(index: Path) -> list[tuple[str, str, str, str]]:
    """(mark class, label, value, compared with) of every table row of index.html."""
    return [tuple(html.unescape(part) for part in row) for row in ROW.findall(index.read_text())]


def row_key(label: str, compared_with: str) -> str:
    """The key of :func:`expected_marks` for a row (terrain and embedding rows are named by measure and probe)."""
    terrain = {
        "share of the tokenizer's codes the held-out tiles use": "codebook_usage",
        "seam across the original edge, relative to the DEM's own": "seam_ratio",
        "tile-grid pattern in the new strips": "lattice_contrast",
        "pits per km2 in the new strips, relative to the DEM's": "pits_ratio",
        "samples' distance to real tiles, elevation distribution": "elevation_w1",
        "samples' distance to real tiles, slope distribution": "slope_w1",
        "samples' distance to real tiles, spectrum": "spectrum_log10",
    }
    if label in terrain:
        return terrain[label]
    if label.startswith("fine-tuned model's"):
        probe = "knn" if "nearest-neighbour" in compared_with else "ridge"
        return f"{label.split()[-1]} vs {probe}"
    return label


@pytest.mark.parametrize("steps", [DEMO_STEPS, flipped(DEMO_STEPS)], ids=["demo", "flipped"])
def test_every_step_has_a_headline_and_every_comparison_a_mark_of_its_sign(steps: dict, tmp_path: Path) -> None:
    index = write_index(tmp_path, {"landformer": "0.1", "seed": 0, "steps": steps})
    text = index.read_text()
    for name, result in steps.items():
        headline = re.search(rf"<section id='{name}'>.*?<p class='headline'>(.*?)</p>", text, re.S)
        assert headline is not None, name
        assert re.search(r"\d", headline.group(1)), (name, headline.group(1))  # built from the step's numbers
        assert report_step(name, result).headline == html.unescape(headline.group(1))
    expected = expected_marks(steps)
    shown = {row_key(label, compared): mark for mark, label, _, compared in rows(index) if compared}
    assert shown == {key: "better" if green else "worse" for key, green in expected.items()}
    assert "_" not in "".join(label for _, label, _, _ in rows(index))  # readable labels, no snake_case keys


def test_headlines_and_units_say_what_the_numbers_mean() -> None:
    land = report_step("landcover", DEMO_STEPS["landcover"])
    assert land.headline.startswith(
        "On held-out real IGBP land-cover chips the packaged model needs 0.72 bits per pixel, "
        "13 % less than a four-neighbour context model (0.83)"
    )
    flipped_land = report_step("landcover", flipped(DEMO_STEPS)["landcover"])
    assert "29 % more than a four-neighbour context model (0.7)" in flipped_land.headline
    embeddings = report_step("embeddings", DEMO_STEPS["embeddings"]).headline
    assert "R2 0.153, below the better probe on the same embeddings (ridge probe, 0.321)" in embeddings
    terrain = report_step("terrain", DEMO_STEPS["terrain"]).headline
    assert "meets 3 of 4 targets for a seamless, realistic continuation (missed: tile-grid pattern" in terrain
    assert "fractal noise on 2 of 3 measures" in terrain
    forecast = report_step("forecast", DEMO_STEPS["forecast"]).headline
    assert "beats persistence at 2 of 3 horizons and the linear trend at 2 of 3" in forecast
    assert "at 2 of 3" in forecast.split("interval")[1]
    geoloc = report_step("geoloc", DEMO_STEPS["geoloc"]).headline
    assert "1,200 km, 20 % less than answering each continent's median training city (1,500 km)" in geoloc
    assert number(0.6123, "%") == "0.612%" and number(1234.5, "km") == "1,234 km" and number(None, "s") == "n/a"
    assert number(float("nan")) == "n/a" and number(70) == "70"


def test_a_fine_tuned_model_that_kept_the_probe_is_level_with_it(tmp_path: Path) -> None:
    result = copy.deepcopy(DEMO_STEPS["embeddings"])
    result["test_r2"] = {"ridge": 0.3206, "knn": 0.2502, "sft": 0.3206}
    result["test_rmse"] = {"ridge": 0.011, "knn": 0.012, "sft": 0.011}
    result["kept_probe_start"] = True
    report = report_step("embeddings", result)
    assert "R2 0.321, level with the better probe on the same embeddings (ridge probe, 0.321)" in report.headline
    assert "so the model kept the probe's fit" in report.headline
    assert [measure.better for measure in report.measures if measure.compared_with] == [True] * 4
    # Level with ridge (R2 and RMSE) is marked "level", not "better"; ahead of kNN is "better".
    assert [measure.level for measure in report.measures if measure.compared_with] == [True, False, True, False]
    text = write_index(tmp_path, {"landformer": "0.1", "seed": 0, "steps": {"embeddings": result}}).read_text()
    assert text.count("&#10004; level</td>") == 2 and text.count("&#10004; better</td>") == 2
    result["test_r2"]["sft"] = 0.3205  # a real loss, however small, stays a loss
    assert "below the better probe" in report_step("embeddings", result).headline


def test_a_step_without_its_own_report_shows_its_numbers_under_readable_names(tmp_path: Path) -> None:
    report = report_step("new_pipeline", {"val_loss": 0.5, "skill": [0.1, None], "seconds": 3.0})
    assert report.headline == "The new pipeline step ran in 3 s."
    assert [(m.label, m.value) for m in report.measures] == [
        ("val loss", 0.5),
        ("skill 1", 0.1),
        ("skill 2", None),
        ("seconds", 3.0),
    ]


def write_run(folder: Path) -> dict[str, Any]:
    """A run folder with pictures at several depths and a summary naming them by absolute path, as steps do."""
    pictures = [folder / "world.png", folder / "landcover" / "samples.png", folder / "terrain" / "evaluate" / "a.gif"]
    for picture in pictures:
        picture.parent.mkdir(parents=True, exist_ok=True)
        picture.write_bytes(b"picture")
    steps = copy.deepcopy(DEMO_STEPS)
    steps["world"] |= {"preview": str(pictures[0]), "folder": str(folder / "world")}
    steps["landcover"] |= {
        "samples_png": str(pictures[1]),
        "gone_png": str(folder / "gone.png"),
        "pictures": [{"again": str(pictures[1])}],
    }
    steps["terrain"] |= {"pictures": [str(pictures[2])]}
    return {"landformer": "0.1", "seed": 0, "steps": steps}


def test_the_run_folder_can_move_and_every_picture_still_resolves(tmp_path: Path) -> None:
    summary = write_run(tmp_path / "run")
    write_report(tmp_path / "run", summary)
    moved = Path(shutil.move(tmp_path / "run", tmp_path / "elsewhere" / "renamed"))
    saved = json.loads((moved / "summary.json").read_text())
    named = [path for name, result in saved["steps"].items() for path in _pictures(result, moved)]
    assert sorted(set(named)) == ["landcover/samples.png", "terrain/evaluate/a.gif", "world.png"]
    assert saved["steps"]["world"]["folder"] == "world" and saved["steps"]["landcover"]["model"] == "igbp"
    text = (moved / "index.html").read_text()
    links = re.findall(r"(?:src|href)='([^'#][^']*)'", text)  # in-page anchors (#step) left out
    assert sorted(set(links)) == ["landcover/samples.png", "terrain/evaluate/a.gif", "world.png"]
    assert all((moved / html.unescape(link)).is_file() for link in links)
    assert text.count("<img src='landcover/samples.png'") == 1  # shown once although named twice
    assert "gone.png" not in text  # named but never written: no broken picture
    assert str(tmp_path) not in text and str(tmp_path) not in (moved / "summary.json").read_text()
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", text)
    assert "A grid of maps" not in text and len(captions) == 3
    assert html.unescape(captions[0]).startswith("The synthetic world")


def test_numbers_leave_paths_out() -> None:
    result = {"bits": 0.6681, "skill": [0.1, None], "r2": {"ridge": 0.02}, "png": "a.png", "enabled": True}
    assert _numbers(result) == {"bits": 0.6681, "skill": [0.1, None], "r2": {"ridge": 0.02}}


def test_bad_thread_count_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--threads", "-1", "--out", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert err == "landformer: error: demo: --threads -1 should be 0 (torch's default) or a positive count\n"
    assert not (tmp_path / "demo").exists()  # refused before anything is written


@pytest.mark.slow
def test_change_step_scores_the_packaged_model_on_the_world_and_reports_its_smoke_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The land-change step on a small world with a 2-step smoke run: every number the report reads is there, the
    packaged model (not the smoke run) is the one marked against the baselines."""
    from landformer.landcover import demo
    from landformer.synth.world import make_world

    monkeypatch.setattr(demo, "DEMO_CHANGE_STEPS", 2)
    world = make_world(tmp_path / "world", size=128, seed=1)
    result = demo.change_step(tmp_path / "change", world.folder, seed=1)
    assert result["change_model"] == "change" and result["change_training_steps"] == 2
    assert result["change_test_blocks"] >= 1 and 0 <= result["change_observed_share"] <= 1
    evaluation = json.loads(Path(result["change_json"]).read_text())
    assert evaluation["split"].startswith("a pair the model did not train on")
    assert Path(evaluation["model"]).name == "change.safetensors"
    land = report_step("landcover", {**DEMO_STEPS["landcover"], **result})
    compared = {measure.label: measure for measure in land.measures if measure.better is not None}
    fom = [label for label in compared if "Figure of Merit" in label]
    assert fom and "packaged change model" in fom[0]
    assert not [label for label in compared if "short training run" in label]
