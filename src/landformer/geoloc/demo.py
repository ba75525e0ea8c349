"""The geoloc step of ``landformer demo``: a small real data set, brief training, evaluation and a map.

Cities from 6 continents (8-band chips of elevation, coast and climate cut from packaged global layers), a
router and one regressor per continent trained for a few dozen steps, evaluated on held-out cities and drawn
over the Natural Earth continents. The synthetic world's imagery is cut into RGB "photos" too, so the demo shows
both kinds of input (PNG photos and multi-band GeoTIFF chips); only the cities are trained on, to stay within
about a minute and a half on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from landformer.core.config import from_dict
from landformer.core.train import clear_earlier_run
from landformer.geoloc.config import DatasetConfig, GeolocConfig
from landformer.geoloc.evaluate import evaluate_run, format_evaluation
from landformer.geoloc.make_dataset import make_dataset
from landformer.geoloc.train import train

DEMO_CITIES_PER_REGION = 150
DEMO_REGION_STEPS = 150
DEMO_ROUTER_STEPS = 500


def run_demo_step(out: Path, world_folder: Path, seed: int) -> dict[str, Any]:
    """Build, train, evaluate and draw into ``out``; returns the key numbers and the paths written."""
    out = Path(out)
    folders = make_dataset(
        DatasetConfig(
            out=out / "data",
            per_region=DEMO_CITIES_PER_REGION,
            world=Path(world_folder),
            world_chips_per_region=20,
            seed=seed,
        ),
        progress=False,
    )
    cities = folders["cities"]
    config = from_dict(
        GeolocConfig,
        {
            "data": {
                "train_csv": str(cities / "train.csv"),
                "val_csv": str(cities / "val.csv"),
                "images": str(cities / "images"),
                "batch_size": 32,
            },
            "clean": {"mad_threshold": 8.0},
            "model": {"backbone": "test_resnet"},
            "optim": {"lr": 0.002, "t_0": DEMO_REGION_STEPS},
            "regions": {"min_samples": 10},
            "router": {"max_steps": DEMO_ROUTER_STEPS},
            "train": {
                "max_steps": DEMO_REGION_STEPS,
                "val_every_steps": DEMO_REGION_STEPS,
                "checkpoint_every_steps": DEMO_ROUTER_STEPS,
                "loggers": ["csv"],
                "progress_bar": False,
                "seed": seed,
            },
        },
        source="geoloc demo",
    )
    clear_earlier_run(out / "run", "geoloc")  # the demo always starts afresh
    train(config, out / "run")
    results = evaluate_run(out / "run", cities / "test.csv", out=out)
    print(format_evaluation(results), flush=True)
    overall = results["all"]
    return {
        "data": str(cities),
        "world_photos": str(folders["world"]),
        "run": str(out / "run"),
        "map": results["map"],
        "evaluation": str(out / "evaluation.json"),
        "test_images": results["images"],
        "routed_median_km": overall["routed"]["median_km"],
        "oracle_median_km": overall["oracle"]["median_km"],
        "baseline_median_km": overall["baseline"]["median_km"],
        "router_accuracy": overall["router_accuracy"],
    }
