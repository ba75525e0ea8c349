"""The terrain step of ``landformer demo``: both stages trained briefly, samples, an endless map, an expansion.

Small on purpose (about 36 s of single-thread CPU time, imports included): the pictures show the pipeline working
end to end, not the quality of a properly trained model (see the tiny recipes and the benchmarks for that).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from landformer.core.train import TrainConfig, last_checkpoint
from landformer.terrain.config import (
    MaskGITConfig,
    MaskGITModelSection,
    SamplingSection,
    TerrainDataConfig,
    TokenizerConfig,
    TokenizerModelSection,
    TokenizerTaskSection,
)

TOKENIZER_STEPS = 60
MASKGIT_STEPS = 60


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


def run_demo_step(out: Path, world_folder: Path, seed: int) -> dict[str, Any]:
    """Train the tokenizer and MaskGIT briefly on the world's elevation and the Jacksboro DEM, then write
    ``terrain_samples.png``, ``terrain_world.png`` (an endless-field map) and ``terrain_expanded.png`` into
    ``out``; returns paths and key numbers. Run again on the same folder, it reuses the trained stages."""
    from landformer.terrain.export import load_generator
    from landformer.terrain.outpaint import expand_map, write_world
    from landformer.terrain.pipeline import fit_maskgit, fit_tokenizer, sample_tiles, save_hillshade_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = TerrainDataConfig(
        world=Path(world_folder), world_size=0, packaged=["jacksboro"], max_tiles_per_source=300, batch_size=16
    )
    tokenizer_config = TokenizerConfig(
        data=data,
        model=TokenizerModelSection(channels=16, disc_channels=16),
        task=TokenizerTaskSection(disc_start=TOKENIZER_STEPS // 2, warmup_steps=10),
        train=_train_config(TOKENIZER_STEPS, seed),
    )
    tokenizer_dir = out / "terrain_tokenizer"
    tokenizer = fit_tokenizer(tokenizer_config, tokenizer_dir, resume=last_checkpoint(tokenizer_dir) is not None)
    maskgit_config = MaskGITConfig(
        tokenizer=tokenizer_dir,
        data=dataclasses.replace(data, batch_size=32),
        model=MaskGITModelSection(),
        sampling=SamplingSection(steps=8),
        train=_train_config(MASKGIT_STEPS, seed),
    )
    maskgit_dir = out / "terrain_maskgit"
    maskgit = fit_maskgit(maskgit_config, maskgit_dir, resume=last_checkpoint(maskgit_dir) is not None)
    generator = load_generator(maskgit_dir)
    pixel_size = float(generator.meta["data"]["pixel_size_m"])
    samples = save_hillshade_grid(out / "terrain_samples.png", sample_tiles(generator, 8, seed), pixel_size, ncols=4)
    world = write_world(generator, out / "terrain_world.tif", 128, seed=seed, block=128)
    expanded = expand_map(generator, world["geotiff"], out / "terrain_expanded.tif", {"right": 32, "down": 32}, seed)
    return {
        "tokenizer": tokenizer["tokenizer"],
        "maskgit": maskgit["maskgit"],
        "tokenizer_mae_m": round(tokenizer["evaluation"]["mae_m"], 2),
        "codebook_usage": round(tokenizer["evaluation"]["codebook_usage"], 3),
        "maskgit_val_loss": maskgit["metrics"].get("val/loss"),
        "reconstructions": tokenizer["reconstructions"],
        "samples": str(samples),
        "world": world["preview"],
        "expanded": expanded["preview"],
        "seconds": round(time.perf_counter() - start, 1),
    }
