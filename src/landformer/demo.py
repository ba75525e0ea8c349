"""``landformer demo``: the whole toolkit end to end on the embedded default data, into one run folder.

Each pipeline adds one short step. The run folder collects every picture and number, ``summary.json`` lists what
each step wrote and how long it took, and ``index.html`` reports each step in words (:data:`STEP_REPORTS`: a
headline, labelled numbers marked against their baselines and targets, captioned pictures). Every path in both is
relative to the run folder, so the folder can be moved or zipped.
"""

from __future__ import annotations

import argparse
import html
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from landformer import __version__
from landformer.core.errors import UserError
from landformer.core.io import write_json, write_text


def step_world(run: Path, size: int, seed: int) -> dict[str, Any]:
    from landformer.synth.world import make_world, render_world

    world = make_world(run / "world", size=size, seed=seed)
    preview = render_world(world, run / "world.png")
    return {"folder": str(world.folder), "preview": str(preview), "size_px": size}


def step_chips(run: Path, seed: int) -> dict[str, Any]:
    from landformer.core.chips import ChipConfig, load_chips, make_chips

    config = ChipConfig(
        class_raster=run / "world" / "landcover.tif",
        covariates=[run / "world" / "elevation.tif"],
        legend="nlcd",
        chip_size=16,
        count=600,
        seed=seed,
    )
    path = make_chips(config, run / "chips.npz")
    chips = load_chips(path)
    return {"file": str(path), "train": len(chips.train_data), "test": len(chips.test_data)}


def step_pipeline(name: str, run: Path, seed: int) -> dict[str, Any]:
    """One pipeline's own demo step (``landformer.<name>.demo.run_demo_step``) into ``run/<name>``."""
    import importlib

    module = importlib.import_module(f"landformer.{name}.demo")
    return module.run_demo_step(run / name, run / "world", seed)


# Pipelines in the order of the demo; each adds one short step over the shared world.
DEMO_PIPELINES = ("landcover", "terrain", "embeddings", "geoloc", "forecast")


PICTURE_SUFFIXES = (".png", ".gif")


def _relative_paths(value: Any, root: Path) -> Any:
    """Every path string under ``root`` made relative to it, at any depth (other strings unchanged), so that the
    run folder can be moved or zipped and its summary and index still point at its files."""
    if isinstance(value, str):
        resolved, base = Path(value).resolve(), root.resolve()
        return resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else value
    if isinstance(value, dict):
        return {key: _relative_paths(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [_relative_paths(item, root) for item in value]
    return value


def _pictures(value: Any, root: Path) -> list[str]:
    """Every PNG/GIF path named in a step's result (strings, lists and dicts of them, at any depth) that is a file,
    relative paths taken from ``root``."""
    if isinstance(value, str):
        return [value] if value.lower().endswith(PICTURE_SUFFIXES) and (root / value).is_file() else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [path for item in value for path in _pictures(item, root)]
    return []


def _numbers(result: dict[str, Any]) -> dict[str, Any]:
    """The step's measured values: numbers, and lists or dicts holding only numbers (paths left out)."""

    def numeric(value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if isinstance(value, (int, float)) or value is None:
            return True
        if isinstance(value, list):
            return bool(value) and all(numeric(item) for item in value)
        if isinstance(value, dict):
            return bool(value) and all(numeric(item) for item in value.values())
        return False

    return {key: value for key, value in result.items() if numeric(value)}


# ----------------------------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Measure:
    """One number as the report shows it: a label and unit a reader understands and, where a baseline or target
    applies, what it is compared with and whether the model does better (a green mark) or worse (a red one)."""

    label: str
    value: float | int | None
    unit: str = ""
    compared_with: str = ""
    better: bool | None = None
    target: bool = False  # compared with a target (marked met / missed) rather than a baseline (better / worse)
    level: bool = False  # level with the baseline, which meets an "at or above the baseline" target


@dataclass(frozen=True)
class StepReport:
    """What ``index.html`` says about one step: a headline sentence, its measures, and captions for its pictures
    (keyed by file name; a picture without one is captioned with its file name)."""

    title: str
    headline: str
    measures: list[Measure] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)


def number(value: float | int | None, unit: str = "") -> str:
    """A value as a reader wants it: three significant digits, thousands separated, ``n/a`` for a missing one."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    text = f"{value:,.0f}" if isinstance(value, int) or abs(value) >= 100 else f"{value:.3g}"
    if not unit:
        return text
    return f"{text}{unit}" if unit in ("%", "x") else f"{text} {unit}"


def against(
    label: str,
    value: float | None,
    unit: str,
    baseline_label: str,
    baseline: float | None,
    lower_is_better: bool,
) -> Measure:
    """``value`` beside a baseline's; better when lower (or higher) than it, no mark when either is missing."""
    better = None
    if value is not None and baseline is not None:
        better = value < baseline if lower_is_better else value > baseline
    return Measure(label, value, unit, f"{baseline_label}: {number(baseline, unit)}", better)


LEVEL = 5e-5  # values equal to the 4 decimals a step reports are level


def no_worse(
    label: str, value: float | None, unit: str, baseline_label: str, baseline: float | None, lower_is_better: bool
) -> Measure:
    """:func:`against` for an "at or above the baseline" target: a value level with the baseline meets it."""
    measure = against(label, value, unit, baseline_label, baseline, lower_is_better)
    if value is not None and baseline is not None and abs(value - baseline) <= LEVEL:
        return replace(measure, better=True, level=True)
    return measure


def in_bounds(label: str, value: float | None, unit: str, low: float | None, high: float | None) -> Measure:
    """``value`` against a target range (either side may be open); a missing value misses the target."""
    bound = f"at least {number(low, unit)}" if high is None else f"at most {number(high, unit)}"
    if low is not None and high is not None:
        bound = f"{number(low)} to {number(high, unit)}"
    met = (
        value is not None and math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high)
    )
    return Measure(label, value, unit, f"target {bound}", met, target=True)


def percent_less(value: float, baseline: float) -> str:
    """``13 % less than`` / ``4 % more than``: the model's value relative to a baseline's."""
    change = 100 * (1 - value / baseline)
    return f"{abs(change):.0f} % {'less' if change >= 0 else 'more'} than"


def report_world(result: dict[str, Any]) -> StepReport:
    size = result.get("size_px")
    return StepReport(
        "the synthetic world",
        f"A synthetic {number(size)} x {number(size)} pixel world with land cover that follows relief and drainage, "
        "elevation, imagery and a human-modification series from 1990 to 2020, all on one geographic grid: the "
        "data the embeddings and forecast steps learn from.",
        [Measure("side", size, "pixels")],
        {"world.png": "The synthetic world: land cover, shaded elevation, imagery and human modification"},
    )


def report_chips(result: dict[str, Any]) -> StepReport:
    train, test = result["train"], result["test"]
    return StepReport(
        "chips",
        f"{train + test} chips of 16 x 16 pixels cut from the world's land cover and elevation: {train} to train on "
        f"and {test} held out in separate spatial blocks, in the chip-file format every pipeline reads.",
        [Measure("training chips", train, "chips"), Measure("held-out chips", test, "chips")],
    )


# The land-cover step's general-purpose compressors, each compressing all held-out chips in one stream or mosaic.
COMPRESSORS = {"gzip": "gzip", "bz2": "bzip2", "lzma": "lzma", "png": "PNG", "webp": "WebP lossless"}


def report_landcover(result: dict[str, Any]) -> StepReport:
    bits = result["heldout_bits_per_pixel"]
    context = result.get("context_model_bits_per_pixel")
    unit = "bits/pixel"
    headline = f"On held-out real IGBP land-cover chips the packaged model needs {number(bits, 'bits per pixel')}"
    if context is not None:
        headline += f", {percent_less(bits, context)} a four-neighbour context model ({number(context)})"
    all_bits = result.get("bits_per_pixel", {})
    measures = [
        against(
            "bits per held-out pixel, random pixel order", bits, unit, "four-neighbour context model", context, True
        ),
        against(
            "bits per held-out pixel, raster order",
            result.get("heldout_bits_raster_order"),
            unit,
            "four-neighbour context model",
            context,
            True,
        ),
    ]
    if "class_entropy" in all_bits:
        label = "class frequencies alone"
        measures.append(
            against(f"bits per held-out pixel vs {label}", bits, unit, label, all_bits["class_entropy"], True)
        )
    compressors = {name: value for name, value in all_bits.items() if name in COMPRESSORS}
    if compressors:
        best = min(compressors, key=lambda name: compressors[name])
        label = f"best general-purpose compressor ({COMPRESSORS[best]})"
        measures.append(against("bits per held-out pixel vs compressors", bits, unit, label, compressors[best], True))
    accuracy = result.get("inpaint_accuracy_hidden")
    measures += [
        Measure("inpainting: hidden pixels given their true class", _percent(accuracy), "%"),
        Measure("short training run: steps", result.get("training_steps")),
        Measure("short training run: time", result.get("train_seconds"), "s"),
        Measure("short training run: speed", result.get("train_tokens_per_s"), "pixels/s"),
        Measure("short training run: bits per held-out pixel", result.get("short_run_heldout_bits_per_pixel"), unit),
    ]
    if "change_model_figure_of_merit" in result:
        measures += [
            against(
                "land change 2000 -> 2010, the packaged change model (trained on other worlds): Figure of Merit on "
                "the demo world's test blocks",
                result["change_model_figure_of_merit"],
                "",
                "Markov transition matrix with neighbourhood allocation",
                result.get("change_markov_ca_figure_of_merit"),
                False,
            ),
            against(
                "land change: bits per pixel of the 2010 map given 2000's",
                result.get("change_model_bits_given_t1"),
                unit,
                "Markov transition matrix, pixel by pixel",
                result.get("change_markov_bits"),
                True,
            ),
            Measure("land change short training run: steps", result.get("change_training_steps")),
            Measure(
                "land change short training run: validation bits per pixel of 2010 given 2000",
                result.get("change_short_run_val_bits_per_pixel"),
                unit,
            ),
        ]
    return StepReport(
        "land cover",
        headline + ". Lower is better: a model that predicts land cover well is surprised by few pixels.",
        measures,
        {
            "samples.png": "Maps drawn by the packaged model (left) beside real held-out chips (right), one legend",
            "inpaint.png": "Inpainting: held-out chips with a centre box hidden, and the model's fill",
            "info.png": "Bits per pixel on held-out chips: the model against the context model, class entropy and "
            "general-purpose compressors (shorter bars are better)",
            "animation.gif": "A grid of maps generated one pixel at a time in random order",
            "change_eval.png": "Land change on a test block of the synthetic world: real 2010, the packaged change "
            "model's most likely 2010 given 2000, hits / misses / false alarms, the Markov baseline's map and the "
            "probability of change",
        },
    )


TERRAIN_LABELS = {
    "codebook_usage": "share of the tokenizer's codes the held-out tiles use",
    "seam_ratio": "seam across the original edge, relative to the DEM's own",
    "lattice_contrast": "tile-grid pattern in the new strips",
    "relief_ratio": "relief of the new strips, relative to the DEM's",
    "valley_crossing_ratio": "valleys crossing the edge, relative to the DEM's own",
    "valley_fill_excess": "extra ponding in the new strips",
    "pits_ratio": "pits per km2 in the new strips, relative to the DEM's",
}
TERRAIN_REALISM_LABELS = {
    "elevation_w1": "elevation distribution",
    "slope_w1": "slope distribution",
    "spectrum_log10": "spectrum",
    "curvature_w1": "curvature distribution",
}


def report_terrain(result: dict[str, Any]) -> StepReport:
    from landformer.terrain.evaluate import TARGETS

    evaluation, passed = result.get("evaluation", {}), result.get("passed", {})
    measures = []
    for name, value in evaluation.items():
        measure = in_bounds(TERRAIN_LABELS.get(name, _readable(name)), value, "", *TARGETS.get(name, (None, None)))
        measures.append(replace(measure, better=passed.get(name, measure.better)))
    ratios = result.get("realism_ratio_to_fractal_noise", {})
    for name, ratio in ratios.items():
        label = f"samples' distance to real tiles, {TERRAIN_REALISM_LABELS.get(name, _readable(name))}"
        measures.append(against(label, ratio, "x", "fractal noise's distance", 1.0, True))
    short_run = result.get("short_run", {})
    measures += [
        Measure("short training run: tokenizer error", short_run.get("tokenizer_mae_m"), "m"),
        Measure("short training run: MaskGIT validation loss", short_run.get("maskgit_val_loss"), "nats/token"),
    ]
    met = [name for name in evaluation if passed.get(name)]
    missed = [TERRAIN_LABELS.get(name, _readable(name)) for name in evaluation if not passed.get(name)]
    beaten = sum(ratio < 1 for ratio in ratios.values())
    headline = (
        f"Grown on every side by the packaged model, the held-out Jacksboro east DEM (never seen in training) meets "
        f"{len(met)} of {len(evaluation)} targets for a seamless, realistic continuation"
    )
    headline += f" (missed: {', '.join(missed)})" if missed else ""
    headline += (
        f"; its samples are closer to real terrain than fractal noise on {beaten} of {len(ratios)} measures "
        f"({number(min(ratios.values(), default=None))} to {number(max(ratios.values(), default=None))} times "
        "noise's distance; below 1 is better)."
    )
    return StepReport(
        "terrain",
        headline,
        measures,
        {
            "terrain_samples.png": "Terrain tiles sampled by the packaged model (hillshade)",
            "terrain_world.png": "An endless-field map drawn by the packaged model",
            "expanded.png": "The held-out Jacksboro east DEM (outlined) grown on every side by the model",
            "samples.png": "Rows: held-out DEM tiles, the model's samples, fractal noise",
        },
    )


def report_embeddings(result: dict[str, Any]) -> StepReport:
    r2, rmse = result.get("test_r2", {}), result.get("test_rmse", {})
    probe_labels = {"ridge": "ridge probe", "knn": "nearest-neighbour probe"}
    probes = [name for name in probe_labels if name in r2]
    sft = r2.get("sft")
    # The target is "at or above the better probe": a model that kept the probe's own fit is level with it, so
    # equal values (to the 4 decimals the step reports) count as met, and the headline says which it was.
    measures = [
        no_worse("fine-tuned model's R2", sft, "", f"{probe_labels[name]} on the same embeddings", r2[name], False)
        for name in probes
    ]
    measures += [
        no_worse("fine-tuned model's RMSE", rmse.get("sft"), "HM", probe_labels[name], rmse.get(name), True)
        for name in probes
    ]
    measures += [
        Measure("held-out tiles", result.get("n_test_tiles"), "tiles"),
        Measure("MAE pretraining: validation loss", result.get("mae_val_loss")),
    ]
    headline = (
        f"On {result.get('n_test_tiles')} held-out tiles, the encoder (briefly pretrained as a masked autoencoder, "
        "then fine-tuned) predicts each tile's growth in human modification from 1995 to 2020 from its 64-channel "
        f"embeddings with R2 {number(sft)}"
    )
    if probes and sft is not None:
        best = max(probes, key=lambda name: r2[name])
        side = "level with" if abs(sft - r2[best]) <= LEVEL else "above" if sft > r2[best] else "below"
        headline += f", {side} the better probe on the same embeddings ({probe_labels[best]}, {number(r2[best])})"
        if result.get("kept_probe_start"):
            headline += (
                "; fine-tuning started from the ridge probe and its gain on the validation tiles was within noise, "
                "so the model kept the probe's fit"
            )
    return StepReport(
        "satellite embeddings",
        headline + ". Higher R2 is better (1 is perfect).",
        measures,
        {
            "scatter.png": "Predicted against true growth on the held-out tiles, the model and both probes",
            "reconstructions.png": "MAE pretraining: masked embedding tiles and their reconstructions",
        },
    )


def report_geoloc(result: dict[str, Any]) -> StepReport:
    routed, baseline = result.get("routed_median_km"), result.get("baseline_median_km")
    accuracy = result.get("router_accuracy")
    measures = [
        against(
            "median error, continent picked by the router", routed, "km", "each continent's median city", baseline, True
        ),
        against(
            "median error, true continent's model",
            result.get("oracle_median_km"),
            "km",
            "each continent's median city",
            baseline,
            True,
        ),
        Measure("router picks the right continent", _percent(accuracy), "%"),
        Measure("held-out images", result.get("test_images"), "images"),
    ]
    headline = (
        f"Placing {result.get('test_images')} held-out cities on the globe from 8-band chips of their elevation, "
        "coast and climate, the model's median error is "
        f"{number(routed, 'km')}"
    )
    if routed is not None and baseline:
        headline += f", {percent_less(routed, baseline)} answering each continent's median training city"
        headline += f" ({number(baseline, 'km')})"
    if accuracy is not None:
        headline += f"; the router picks the right continent for {number(100 * accuracy, '%')} of them"
    return StepReport(
        "geolocation",
        headline + ". Lower error is better.",
        measures,
        {"evaluation_map.png": "Held-out cities: true places and the model's guesses over the continents"},
    )


def report_forecast(result: dict[str, Any]) -> StepReport:
    horizons = result.get("horizons", [])
    persistence, trend = result.get("skill_persistence", []), result.get("skill_trend", [])
    coverage, mae = result.get("coverage", []), result.get("mae", [])
    measures = []
    for i, horizon in enumerate(horizons):
        measures += [
            against(
                f"{horizon}: squared error removed vs persistence",
                _percent(persistence[i]),
                "%",
                "persistence",
                0,
                False,
            ),
            against(
                f"{horizon}: squared error removed vs the linear trend", _percent(trend[i]), "%", "trend", 0, False
            ),
            in_bounds(f"{horizon}: held-out pixels inside the 95 % interval", _percent(coverage[i]), "%", 90, 99),
            Measure(f"{horizon}: mean absolute error", mae[i], "HM"),
        ]
    beats_persistence = sum(value is not None and value > 0 for value in persistence)
    beats_trend = sum(value is not None and value > 0 for value in trend)
    covered = sum(result.get("coverage_in_target", []))
    headline = (
        f"Forecasting the world's human modification past its last year, the ConvLSTM beats persistence at "
        f"{beats_persistence} of {len(horizons)} horizons and the linear trend at {beats_trend} of {len(horizons)} "
        f"on held-out blocks, and its 95 % interval covers 90 to 99 % of held-out pixels at {covered} of "
        f"{len(horizons)}. Squared error removed is the share of the baseline's mean squared error that the model "
        "avoids: above 0 % is better."
    )
    return StepReport(
        "forecast",
        headline,
        measures,
        {
            "forecast_panel.png": "Held-out blocks per horizon: target, forecast and their difference",
            "error_vs_horizon.png": "Error against horizon: the model, persistence and the trend",
            **{
                f"forecast_{year}.png": f"The whole world's forecast for {year}"
                for year in result.get("forecast_years", [])
            },
        },
    )


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def _readable(key: str) -> str:
    return key.replace("_", " ")


STEP_REPORTS: dict[str, Callable[[dict[str, Any]], StepReport]] = {
    "world": report_world,
    "chips": report_chips,
    "landcover": report_landcover,
    "terrain": report_terrain,
    "embeddings": report_embeddings,
    "geoloc": report_geoloc,
    "forecast": report_forecast,
}


def report_step(name: str, result: dict[str, Any]) -> StepReport:
    """The step's own report, or for a step without one its numbers under readable names."""
    if name in STEP_REPORTS:
        return STEP_REPORTS[name](result)
    measures = []
    for key, value in _numbers(result).items():
        if isinstance(value, dict):
            measures += [Measure(f"{_readable(key)}, {_readable(part)}", item) for part, item in value.items()]
        elif isinstance(value, list):
            measures += [Measure(f"{_readable(key)} {i + 1}", item) for i, item in enumerate(value)]
        else:
            measures.append(Measure(_readable(key), value))
    return StepReport(
        _readable(name), f"The {_readable(name)} step ran in {number(result.get('seconds'), 's')}.", measures
    )


MARKS = {True: ("better", "&#10004;"), False: ("worse", "&#10008;")}
MARK_WORDS = {(True, False): "better", (False, False): "worse", (True, True): "met", (False, True): "missed"}
STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:1600px}"
    "p.headline{font-size:1.15em;max-width:60em}"
    "table{border-collapse:collapse;margin:0.5em 0}td,th{padding:3px 14px 3px 0;text-align:left}"
    "td.value{text-align:right;white-space:nowrap}"
    "tr.better td.mark{color:#1a7f37;font-weight:bold}tr.worse td.mark{color:#cf222e;font-weight:bold}"
    ".pictures{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:1.5em}"
    "figure{margin:0}img{max-width:100%;height:auto;border:1px solid #ccc}figcaption{font-size:0.9em;color:#444}"
    "img[src$='.gif']{width:100%;image-rendering:pixelated}"
)


def write_index(out: Path, summary: dict[str, Any]) -> Path:
    """``index.html``: for every step a headline, its numbers with labels, units and marks against baselines and
    targets, and its pictures with captions (full size on click); paths are relative to the run folder."""
    steps = _relative_paths(summary["steps"], out)
    reports = {name: report_step(name, result) for name, result in steps.items()}
    parts = [
        "<!doctype html><meta charset='utf-8'><title>landformer demo</title>",
        f"<style>{STYLE}</style>",
        f"<h1>landformer {html.escape(str(summary['landformer']))} demo (seed {summary['seed']})</h1>",
        "<p>Every pipeline of the toolkit, end to end, on its default data. Green marks: the model does better "
        "than the baseline or meets the target beside it; red marks: it does not. Click a picture for full size.</p>",
        "<table class='overview'><tr><th>step</th><th>green</th><th>red</th><th>seconds</th></tr>",
    ]
    for name, report in reports.items():
        marks = [measure.better for measure in report.measures]
        parts.append(
            f"<tr><td><a href='#{html.escape(name)}'>{html.escape(report.title)}</a></td>"
            f"<td>{marks.count(True)}</td><td>{marks.count(False)}</td>"
            f"<td>{number(steps[name].get('seconds'))}</td></tr>"
        )
    parts.append("</table>")
    for name, result in steps.items():
        report = reports[name]
        seconds = result.get("seconds")
        parts.append(
            f"<section id='{html.escape(name)}'><h2>{html.escape(report.title)}"
            f" <small>({html.escape(name)}, {number(seconds, 's')})</small></h2>"
            f"<p class='headline'>{html.escape(report.headline)}</p>"
        )
        if report.measures:
            parts.append("<table>")
            for measure in report.measures:
                css, symbol = MARKS.get(measure.better, ("", ""))
                word = "level" if measure.level else MARK_WORDS.get((measure.better, measure.target), "")
                parts.append(
                    f"<tr class='{css}'><td>{html.escape(measure.label)}</td>"
                    f"<td class='value'>{html.escape(number(measure.value, measure.unit))}</td>"
                    f"<td>{html.escape(measure.compared_with)}</td><td class='mark'>{symbol} {word}</td></tr>"
                )
            parts.append("</table>")
        pictures = list(dict.fromkeys(_pictures(result, out)))
        if pictures:
            parts.append("<div class='pictures'>")
            for picture in pictures:
                caption = report.captions.get(Path(picture).name, Path(picture).name)
                link = html.escape(Path(picture).as_posix(), quote=True)
                parts.append(
                    f"<figure><a href='{link}'><img src='{link}' alt='{html.escape(caption, quote=True)}'></a>"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
            parts.append("</div>")
        parts.append("</section>")
    return write_text(out / "index.html", "\n".join(parts) + "\n")


def write_report(out: Path, summary: dict[str, Any]) -> Path:
    """``summary.json`` and ``index.html`` in ``out``, every path in them relative to ``out`` (the summary's steps are
    rewritten so); returns the index."""
    summary["steps"] = _relative_paths(summary["steps"], out)
    write_json(out / "summary.json", summary)
    return write_index(out, summary)


def run_demo(out: Path, size: int = 256, seed: int = 0, threads: int = 1) -> dict[str, Any]:
    """Run every demo step in order and write ``summary.json`` and ``index.html``; returns the summary.

    ``threads`` is torch's CPU thread count for every step (0: torch's default). The demo's models are tiny, so
    a second thread buys little, while a thread that has to wait for a busy core stalls every operation: on the
    2-core development machine the terrain step took 34 s of wall time on one thread and over 4 minutes on two
    with one other job running.
    """
    import torch

    if threads < 0:
        raise UserError(f"demo: --threads {threads} should be 0 (torch's default) or a positive count")
    if threads:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    # Lightning's per-run banners (accelerator lines, tips, model summaries) would bury the demo's own lines.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("world", lambda: step_world(out, size, seed)),
        ("chips", lambda: step_chips(out, seed)),
    ]
    steps += [(name, lambda name=name: step_pipeline(name, out, seed)) for name in DEMO_PIPELINES]
    summary: dict[str, Any] = {"landformer": __version__, "seed": seed, "threads": torch.get_num_threads()}
    summary |= {"paths": "relative to the folder holding this file", "steps": {}}
    for name, step in steps:
        print(f"[demo] {name} ...", flush=True)
        start = time.perf_counter()
        result = step()
        result["seconds"] = round(time.perf_counter() - start, 2)
        summary["steps"][name] = result
        print(f"[demo] {name} done in {result['seconds']} s", flush=True)
    index = write_report(out, summary)
    print(f"[demo] everything is in {out}: open {index} for the pictures and numbers (summary.json lists it all)")
    return summary


def _cli(args: argparse.Namespace) -> None:
    run_demo(Path(args.out), size=args.size, seed=args.seed, threads=args.threads)


def register(subparsers: argparse._SubParsersAction) -> None:
    from landformer.core.commands import add_command

    parser = add_command(subparsers, "demo", "run every pipeline end to end on the embedded default data", _cli)
    parser.add_argument("--out", default="runs/demo", help="run folder for every output")
    parser.add_argument("--size", type=int, default=256, help="side of the synthetic world in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed for every step")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads for every step, 0 for torch's default"
    )
