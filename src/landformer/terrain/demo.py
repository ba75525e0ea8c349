"""The terrain step of ``landformer demo``: a short training run on real DEMs, then pictures and numbers from the
packaged ``real`` model on the part of the Jacksboro DEM it never saw.

The short run (both stages, a few dozen steps on Jacksboro's west part) shows that training works end to end; it
is far too short to draw good terrain, so the pictures come from the packaged model (``make terrain-model``):
samples, an endless map, and the held-out Jacksboro east grown on every side, measured by ``terrain evaluate``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from landformer.core.train import TrainConfig, last_checkpoint
from landformer.terrain.config import (
    MaskGITConfig,
    MaskGITModelConfig,
    SamplingSection,
    TerrainDataConfig,
    TokenizerConfig,
    TokenizerModelConfig,
    TokenizerTaskSection,
)
from landformer.terrain.evaluate import evaluate
from landformer.terrain.export import load
from landformer.terrain.outpaint import write_world
from landformer.terrain.pictures import save_hillshade_grid
from landformer.terrain.sample import sample_tiles
from landformer.terrain.train import train

TOKENIZER_STEPS = 60
MASKGIT_STEPS = 60
PACKAGED_MODEL = "real"
GROW_PX = 32  # held-out Jacksboro grown by this much on every side
SAMPLES = 32


def _train_config(steps: int, seed: int) -> TrainConfig:
    return TrainConfig(
        max_steps=steps,
        val_every_steps=steps,
        checkpoint_every_steps=steps,
        log_every_steps=10,
        loggers=["csv"],
        progress_bar=False,
        seed=seed,
    )


def train_briefly(out: Path, seed: int) -> dict[str, Any]:
    """Both stages for a few dozen steps on Jacksboro's west part; reused when run again on the same folder."""
    data = TerrainDataConfig(packaged=["jacksboro_west"], max_tiles_per_source=300, batch_size=16)
    tokenizer_config = TokenizerConfig(
        data=data,
        model=TokenizerModelConfig(
            channels=16, disc_channels=16, quantizer="fsq", fsq_levels=[8, 6, 5], upsample="bilinear"
        ),
        task=TokenizerTaskSection(disc_start=TOKENIZER_STEPS // 2, warmup_steps=10),
        train=_train_config(TOKENIZER_STEPS, seed),
    )
    tokenizer_dir = out / "terrain_tokenizer"
    tokenizer = train(tokenizer_config, tokenizer_dir, resume=last_checkpoint(tokenizer_dir) is not None)
    maskgit_config = MaskGITConfig(
        tokenizer=tokenizer_dir,
        data=dataclasses.replace(data, batch_size=32),
        model=MaskGITModelConfig(),
        sampling=SamplingSection(steps=8),
        train=_train_config(MASKGIT_STEPS, seed),
    )
    maskgit_dir = out / "terrain_maskgit"
    maskgit = train(maskgit_config, maskgit_dir, resume=last_checkpoint(maskgit_dir) is not None)
    return {
        "tokenizer": tokenizer["tokenizer"],
        "maskgit": maskgit["maskgit"],
        "tokenizer_mae_m": round(tokenizer["evaluation"]["mae_m"], 2),
        "maskgit_val_loss": maskgit["metrics"].get("val/loss"),
    }


def run_demo_step(out: Path, world_folder: Path, seed: int) -> dict[str, Any]:
    """Train briefly, then write ``terrain_samples.png``, ``terrain_world.png`` (an endless-field map) and the
    held-out expansion (``evaluate/expanded.png``, ``evaluate/samples.png``) with the packaged model; returns
    paths and key numbers. The synthetic world (``world_folder``) is not used: terrain trains on real DEMs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    trained = train_briefly(out, seed)
    generator = load(PACKAGED_MODEL)
    samples = save_hillshade_grid(
        out / "terrain_samples.png", sample_tiles(generator, 8, seed), generator.reference_pixel_size_m, ncols=4
    )
    world = write_world(generator, out / "terrain_world.tif", 192, seed=seed, block=192)
    evaluation = evaluate(PACKAGED_MODEL, out / "evaluate", amount=GROW_PX, samples=SAMPLES, seed=seed)
    return {
        "short_run": trained,
        "model": PACKAGED_MODEL,
        "samples": str(samples),
        "world": world["preview"],
        "heldout_expanded": evaluation["expanded_png"],
        "heldout_samples": evaluation["samples_png"],
        "evaluation": {name: round(value, 3) for name, value in evaluation["headline"].items()},
        "passed": evaluation["passed"],
        "realism_ratio_to_fractal_noise": {
            name: round(value, 3) for name, value in evaluation["realism"]["ratio_to_fractal_noise"].items()
        },
        "seconds": round(time.perf_counter() - start, 1),
    }
