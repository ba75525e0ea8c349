"""The land-cover step of ``landformer demo``: chips from the demo's world, a short training run, then samples,
inpainting and scores.

Everything lands in ``out``: ``chips.npz``, the training run ``model/`` (its ``model.safetensors`` is what the
other land-cover demo steps load), ``samples.png``, ``inpaint.png`` and ``info.json`` + ``info.png`` (held-out
bits per pixel in random and raster order, against the class entropy and general-purpose compressors).
The step is sized to well under a minute of one CPU core: a short training run, samples by parallel decoding.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from landformer.core.io import read_json
from landformer.landcover.config import LandCoverRecipe

DEMO_STEPS = 70  # a quarter of the tiny recipe: patches are visible and bits/pixel is near or below lzma
SAMPLE_STEPS = 16  # parallel decoding steps of the demo's samples (one cell per step takes several times longer)
SCORED_CHIPS = 64  # held-out chips scored for bits per pixel (and used for the validation loss)


def demo_recipe(chips: Path, seed: int) -> LandCoverRecipe:
    recipe = LandCoverRecipe()
    recipe.data.chips = chips
    recipe.train.seed = seed
    recipe.data.val_chips = SCORED_CHIPS
    recipe.train.max_steps = DEMO_STEPS
    recipe.train.val_every_steps = DEMO_STEPS
    recipe.train.checkpoint_every_steps = DEMO_STEPS
    recipe.train.progress_bar = False
    recipe.task.warmup_steps = 10
    recipe.images.every_steps = DEMO_STEPS
    recipe.images.steps = SAMPLE_STEPS
    return recipe


def run_demo_step(out: Path, world_folder: Path, seed: int) -> dict[str, Any]:
    """Cut 16x16 chips from the world in ``world_folder``, train the tiny model for ``DEMO_STEPS`` steps into
    ``out/model``, then sample 16 maps, inpaint 8 held-out chips (centre box, half the pixels) and score held-out
    chips. Returns the key numbers and paths."""

    from landformer.landcover.sample import information_content, inpaint, sample_maps
    from landformer.landcover.train import chips_from_world, train_landcover

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / "model"
    if (run_dir / "run.json").is_file() and read_json(run_dir / "run.json").get("name") == "landcover":
        shutil.rmtree(run_dir)  # the demo's own earlier run: the demo always starts afresh
    recipe = LandCoverRecipe()
    chips = chips_from_world(
        Path(world_folder), out / "chips.npz", recipe.data.chip_size, recipe.data.stride, 0.2, False, seed
    )
    # Threads: `landformer demo` sets one torch thread for every step (small kernels; see landformer.demo).
    trained = train_landcover(demo_recipe(chips, seed), run_dir)
    sampled = sample_maps(run_dir, out / "sample", n=16, steps=SAMPLE_STEPS, seed=seed)
    inpainted = inpaint(run_dir, chips, out / "inpaint", mask="box", ratio=0.5, n=8, seed=seed)
    info = information_content(run_dir, chips, out, orders=1, n=SCORED_CHIPS, seed=seed)
    samples_png = shutil.copyfile(sampled["png"], out / "samples.png")
    inpaint_png = shutil.copyfile(inpainted["png"], out / "inpaint.png")
    return {
        "training_steps": trained["global_step"],
        "train_seconds": trained["seconds"],
        "train_tokens_per_s": trained["train_tokens_per_s"],
        "val_loss_nats": trained["val_loss_nats"],
        "heldout_bits_per_pixel": info["bits_per_pixel"]["model_random_order"],
        "heldout_bits_raster_order": info["bits_per_pixel"]["model_raster_order"],
        "bits_per_pixel": info["bits_per_pixel"],
        "inpaint_accuracy_hidden": inpainted["accuracy_hidden"],
        "model": str(Path(trained["model"])),
        "model_dir": str(run_dir),
        "chips": str(chips),
        "samples_png": str(samples_png),
        "inpaint_png": str(inpaint_png),
        "info_json": info["json"],
        "info_png": info["png"],
        "seconds": round(time.perf_counter() - start, 1),
    }
