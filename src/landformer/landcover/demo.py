"""The land-cover step of ``landformer demo``: real IGBP land cover, a short training run of its own, and
pictures and scores from the packaged IGBP model.

Everything lands in ``out``:

- ``chips.npz``: 16x16 chips of MODIS IGBP land cover (every land region but Antarctica, at most half water);
- ``model/``: a short training run on them, to show that training works (its held-out bits per pixel are in
  the summary; :data:`DEMO_STEPS` steps are far too few for good maps);
- ``samples.png`` (samples of the packaged ``igbp`` model beside real held-out chips, one legend),
  ``inpaint.png`` and ``info.json`` + ``info.png`` (its held-out bits per pixel against the causal-context
  model, the class entropy and general-purpose compressors);
- ``animation/animation.gif``: a grid of maps of the packaged model generated pixel by pixel in random order;
- ``change/``: land change on the demo's synthetic world, its land cover 2000 -> 2010:
  ``change/eval/change_eval.png`` + ``.json``, the packaged ``change`` model's Figure of Merit, disagreement and
  bits on the world's test blocks beside persistence and Markov-CA (the model was trained on other worlds; the
  world is cut into its own blocks, see ``change_model.evaluate_change``), and a change model trained for
  :data:`DEMO_CHANGE_STEPS` steps on the same pair (``change/model``) to show that training works.

The packaged model's held-out chips are those of its own training split, cut again from the same seed, so the
pictures and scores never show it a chip it was trained on.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from landformer.core.io import read_npz
from landformer.core.train import clear_earlier_run
from landformer.landcover.config import CHANGE_DRAWS, LandCoverRecipe

DEMO_STEPS = 70  # enough to show the loss falling and checkpoints being written, in well under a minute
PACKAGED_MODEL = "igbp"
SAMPLE_TEMPERATURE = 0.97  # sequential, at the temperature chosen on validation chips (bench_landcover_realism)
FILL_TEMPERATURE = 0.5  # inpainting fills, chosen on validation chips (bench_landcover_quality): no speckle
SCORED_CHIPS = 64  # held-out chips scored for bits per pixel (and used for the validation loss)
ANIMATION_GRID = (3, 3)  # rows and columns of maps in the GIF: 9 chips of 16x16 pixels, 256 frames, a few seconds
DEMO_CHANGE_STEPS = 20  # a change model that runs end to end in about half a minute, not a good one
PACKAGED_CHANGE_MODEL = "change"  # trained on other synthetic worlds (configs/landcover_change_packaged.yaml)
# p(t2 | t1) as the shares of CHANGE_DRAWS draws per window in 16 parallel steps: on the validation worlds of
# bench_landcover_change_worlds.py draws placed change better than each pixel's one-pass marginal (pooled FoM 0.072
# against 0.051 for the 1,200-step candidate, 8 draws), which the random-order model is rarely trained to give.
CHANGE_METHOD, CHANGE_SAMPLES, CHANGE_DECODING_STEPS = "samples", CHANGE_DRAWS, 16


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
    recipe.images.steps = 16
    return recipe


def change_step(out: Path, world_folder: Path, seed: int) -> dict[str, Any]:
    """Evaluate the packaged change model on the world's land cover 2000 -> 2010, a pair it never trained on (its
    own train / validation / test blocks: the Markov matrix counted on the train blocks, settings chosen on the
    validation blocks, scores on the test blocks), and train a change model for :data:`DEMO_CHANGE_STEPS` steps on
    the same pair to show that training runs (a smoke run, not a model to compare)."""
    from landformer.landcover.change_model import ChangeRecipe, evaluate_change, train_change
    from landformer.synth.world import load_world

    recipe = ChangeRecipe()
    recipe.data.world = world_folder
    recipe.train.seed = seed
    recipe.train.max_steps = recipe.train.val_every_steps = recipe.train.checkpoint_every_steps = DEMO_CHANGE_STEPS
    recipe.train.progress_bar = False
    recipe.task.warmup_steps = 10
    recipe.images.every_steps = DEMO_CHANGE_STEPS
    run_dir = out / "model"
    clear_earlier_run(run_dir, "landcover")  # the demo always starts afresh (change runs are named so too)
    trained = train_change(recipe, run_dir)
    world = load_world(world_folder)
    evaluation = evaluate_change(
        PACKAGED_CHANGE_MODEL,
        out / "eval",
        t1=world.landcover_of(recipe.pair.t1_year),
        t2=world.landcover_of(recipe.pair.t2_year),
        method=CHANGE_METHOD,
        n_samples=CHANGE_SAMPLES,
        steps=CHANGE_DECODING_STEPS,
        seed=seed,
    ).summary
    scores = evaluation["scores"]
    return {
        "change_model": PACKAGED_CHANGE_MODEL,
        "change_test_blocks": evaluation["test_blocks"],
        "change_observed_share": evaluation["observed_change"],
        "change_model_figure_of_merit": scores["model"]["figure_of_merit"],
        "change_markov_ca_figure_of_merit": scores["markov_ca"]["figure_of_merit"],
        "change_model_bits_given_t1": evaluation["bits_per_pixel"]["model_given_t1"],
        "change_markov_bits": evaluation["bits_per_pixel"]["markov_per_pixel"],
        "change_training_steps": trained["global_step"],
        "change_short_run_val_bits_per_pixel": trained["val_bits_per_pixel"],
        "change_png": evaluation["picture"],
        "change_json": evaluation["json"],
    }


def run_demo_step(out: Path, world_folder: Path, seed: int) -> dict[str, Any]:
    """Cut IGBP chips, train the tiny recipe for ``DEMO_STEPS`` steps into ``out/model``, then draw 16 samples,
    inpaint 8 held-out chips (centre box, half the pixels), score held-out chips and animate the generation of
    ``ANIMATION_GRID`` maps with the packaged model; then the land-change step on ``world_folder`` (the demo's
    synthetic world) into ``out/change``, when that folder holds a world (callers without one skip the step)."""

    from landformer.landcover.apps.animation import animate
    from landformer.landcover.apps.common import open_chips, select_chips
    from landformer.landcover.apps.inpainting import inpaint
    from landformer.landcover.apps.sampling import sample_maps
    from landformer.landcover.apps.scoring import information_content
    from landformer.landcover.export import load
    from landformer.landcover.plots import samples_beside_real
    from landformer.landcover.train import train
    from landformer.synth.packaged import igbp_chips

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / "model"
    clear_earlier_run(run_dir, "landcover")  # the demo always starts afresh
    recipe = LandCoverRecipe()
    chips = igbp_chips(out / "chips.npz", recipe.data.chip_size, recipe.data.stride, recipe.data.test_fraction, seed)
    # Threads: `landformer demo` sets one torch thread for every step (small kernels; see landformer.demo).
    trained = train(demo_recipe(chips, seed), run_dir)
    short_run = information_content(run_dir, chips, out / "short_run", orders=1, n=SCORED_CHIPS, seed=seed)

    packaged = load(PACKAGED_MODEL)
    own_chips, own_path = open_chips(packaged, None)  # its held-out chips, cut again if need be
    sampled = sample_maps(packaged, out / "sample", n=16, temperature=SAMPLE_TEMPERATURE, seed=seed)
    real = select_chips(packaged, own_chips, 16).labels.numpy()
    samples_png = samples_beside_real(
        out / "samples.png", read_npz(sampled["npz"], ("classes",))["classes"], real, packaged.legend, "--model igbp"
    )
    inpainted = inpaint(
        packaged, own_path, out / "inpaint", mask="box", ratio=0.5, n=8, temperature=FILL_TEMPERATURE, seed=seed
    )
    info = information_content(packaged, own_path, out, orders=1, n=SCORED_CHIPS, seed=seed)
    inpaint_png = shutil.copyfile(inpainted["png"], out / "inpaint.png")
    rows, cols = ANIMATION_GRID
    animation = animate(packaged, out / "animation", nrows=rows, ncols=cols, temperature=SAMPLE_TEMPERATURE, seed=seed)
    bits = info["bits_per_pixel"]
    has_world = (Path(world_folder) / "world.json").is_file()
    change = change_step(out / "change", Path(world_folder), seed) if has_world else {}
    return {
        "training_steps": trained["global_step"],
        "train_seconds": trained["seconds"],
        "train_tokens_per_s": trained["train_tokens_per_s"],
        "short_run_heldout_bits_per_pixel": short_run["bits_per_pixel"]["model_random_order"],
        "heldout_bits_per_pixel": bits["model_random_order"],
        "heldout_bits_raster_order": bits["model_raster_order"],
        "context_model_bits_per_pixel": bits.get("context"),
        "ratio_to_context": info.get("ratio_to_context"),
        "bits_per_pixel": bits,
        "inpaint_accuracy_hidden": inpainted["accuracy_hidden"],
        "model": PACKAGED_MODEL,
        "short_run_model": str(Path(trained["model"])),
        "chips": str(chips),
        "samples_png": str(samples_png),
        "inpaint_png": str(inpaint_png),
        "info_json": info["json"],
        "info_png": info["png"],
        "animation_gif": animation["gif"],
        **change,
        "seconds": round(time.perf_counter() - start, 1),
    }
