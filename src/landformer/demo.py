"""``landformer demo``: the whole toolkit end to end on the embedded default data, into one run folder.

Each pipeline adds one short step. The run folder collects every picture and number, and ``summary.json``
lists what each step wrote and how long it took.
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from landformer import __version__
from landformer.core.errors import UserError
from landformer.core.io import write_json, write_text


def step_world(run: Path, size: int, seed: int) -> dict[str, Any]:
    from landformer.synth.world import make_world, render_world

    world = make_world(run / "world", size=size, seed=seed)
    preview = render_world(world, run / "world.png")
    return {"folder": str(world.folder), "preview": str(preview)}


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


def _pictures(value: Any) -> list[str]:
    """Every PNG/GIF path named in a step's result (strings, lists and dicts of them, at any depth)."""
    if isinstance(value, str):
        return [value] if value.lower().endswith(PICTURE_SUFFIXES) and Path(value).is_file() else []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [path for item in value for path in _pictures(item)]
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


def write_index(out: Path, summary: dict[str, Any]) -> Path:
    """``index.html``: every step's numbers and pictures on one page, with paths relative to the run folder."""

    def show(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, list):
            return ", ".join(show(item) for item in value)
        if isinstance(value, dict):
            return ", ".join(f"{key}: {show(item)}" for key, item in value.items())
        return "n/a" if value is None else str(value)

    parts = [
        "<!doctype html><meta charset='utf-8'><title>landformer demo</title>",
        "<style>body{font-family:sans-serif;margin:2em}img{max-width:480px;margin:4px;border:1px solid #ccc}"
        "td{padding:2px 12px 2px 0}</style>",
        f"<h1>landformer {html.escape(str(summary['landformer']))} demo (seed {summary['seed']})</h1>",
    ]
    for name, result in summary["steps"].items():
        parts.append(f"<h2>{html.escape(name)}</h2><table>")
        for key, value in _numbers(result).items():
            parts.append(f"<tr><td>{html.escape(key)}</td><td>{html.escape(show(value))}</td></tr>")
        parts.append("</table>")
        for picture in dict.fromkeys(_pictures(result)):
            relative = os.path.relpath(picture, out)
            parts.append(f"<a href='{html.escape(relative)}'><img src='{html.escape(relative)}' alt=''></a>")
    return write_text(out / "index.html", "\n".join(parts) + "\n")


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
    summary: dict[str, Any] = {"landformer": __version__, "seed": seed, "threads": torch.get_num_threads(), "steps": {}}
    for name, step in steps:
        print(f"[demo] {name} ...", flush=True)
        start = time.perf_counter()
        result = step()
        result["seconds"] = round(time.perf_counter() - start, 2)
        summary["steps"][name] = result
        print(f"[demo] {name} done in {result['seconds']} s", flush=True)
    write_json(out / "summary.json", summary)
    index = write_index(out, summary)
    print(f"[demo] everything is in {out}: open {index} for the pictures and numbers (summary.json lists it all)")
    return summary


def _cli(args: argparse.Namespace) -> None:
    run_demo(Path(args.out), size=args.size, seed=args.seed, threads=args.threads)


def register(subparsers: argparse._SubParsersAction) -> None:
    from landformer.cli import add_command

    parser = add_command(subparsers, "demo", "run every pipeline end to end on the embedded default data", _cli)
    parser.add_argument("--out", default="runs/demo", help="run folder for every output")
    parser.add_argument("--size", type=int, default=256, help="side of the synthetic world in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed for every step")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads for every step, 0 for torch's default"
    )
