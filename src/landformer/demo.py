"""``landformer demo``: the whole toolkit end to end on the embedded default data, into one run folder.

Each pipeline adds one short step. The run folder collects every picture and number, and ``summary.json``
lists what each step wrote and how long it took.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from landformer import __version__
from landformer.core.io import write_json


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


def run_demo(out: Path, size: int = 256, seed: int = 0) -> dict[str, Any]:
    """Run every demo step in order and write ``summary.json``; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("world", lambda: step_world(out, size, seed)),
        ("chips", lambda: step_chips(out, seed)),
    ]
    steps += [(name, lambda name=name: step_pipeline(name, out, seed)) for name in DEMO_PIPELINES]
    summary: dict[str, Any] = {"landformer": __version__, "seed": seed, "steps": {}}
    for name, step in steps:
        print(f"[demo] {name} ...", flush=True)
        start = time.perf_counter()
        result = step()
        result["seconds"] = round(time.perf_counter() - start, 2)
        summary["steps"][name] = result
        print(f"[demo] {name} done in {result['seconds']} s", flush=True)
    write_json(out / "summary.json", summary)
    print(f"[demo] everything is in {out} (summary.json lists it)")
    return summary


def _cli(args: argparse.Namespace) -> None:
    run_demo(Path(args.out), size=args.size, seed=args.seed)


def register(subparsers: argparse._SubParsersAction) -> None:
    from landformer.cli import add_command

    parser = add_command(subparsers, "demo", "run every pipeline end to end on the embedded default data", _cli)
    parser.add_argument("--out", default="runs/demo", help="run folder for every output")
    parser.add_argument("--size", type=int, default=256, help="side of the synthetic world in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed for every step")
