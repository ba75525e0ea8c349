"""Training the two terrain stages: :func:`train` runs a tokenizer recipe (stage 1) or a MaskGIT recipe (stage 2)
into one run folder, exports the best weights there and draws what the stage learnt.

Each stage writes ``config.yaml``, its tiles' summary (``tiles.json``) and held-out tiles (``val_tiles.npz``),
Lightning checkpoints, the exported ``tokenizer.safetensors`` or ``maskgit.safetensors`` (``terrain/export.py``),
pictures (``reconstructions.png`` or ``samples.png``) and ``summary.json``, whose contents :func:`train` returns.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landformer.core.errors import UserError
from landformer.core.io import load_torch, write_json
from landformer.core.task import ImagesEvery, task_from_recipe
from landformer.core.train import fit, prepare_run, seed_everything
from landformer.core.viz import image_grid
from landformer.terrain.config import MaskGITConfig, MaskGITModelConfig, TokenizerConfig
from landformer.terrain.data import (
    ElevationTiles,
    TokenGrids,
    condition_tokens,
    dihedral,
    normalize_tiles,
    prepare_tiles,
    save_val_tiles,
)
from landformer.terrain.evaluate import evaluate_tokenizer, reconstruction_panel
from landformer.terrain.export import LoadedTokenizer, load, save
from landformer.terrain.model import decode
from landformer.terrain.pictures import hillshade_picture, save_hillshade_grid
from landformer.terrain.sample import sample_tiles
from landformer.terrain.task import MaskGITTask, TokenizerTask


def train(
    recipe: TokenizerConfig | MaskGITConfig, run_dir: str | os.PathLike[str], resume: bool | str = False
) -> dict[str, Any]:
    """Train the stage the recipe is for into ``run_dir`` (``resume``: True for its last checkpoint, or a
    checkpoint path) and return its summary."""
    if isinstance(recipe, TokenizerConfig):
        return _train_tokenizer(recipe, run_dir, resume)
    return _train_maskgit(recipe, run_dir, resume)


def _loader(dataset: Any, batch_size: int, shuffle: bool) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_size=min(batch_size, len(dataset)), shuffle=shuffle, drop_last=shuffle, num_workers=0
    )


def best_weights(task: TokenizerTask | MaskGITTask, best_checkpoint: Path | None) -> tuple[torch.nn.Module, str]:
    """The task's network (``task.model``) with the weights of the best validation checkpoint, and where they came
    from; the final weights when there was no validation (so no best checkpoint)."""
    if best_checkpoint is None:
        return task.model, "final weights (no validation)"
    checkpoint = load_torch(best_checkpoint)
    task.on_load_checkpoint(checkpoint)  # the names the task gives its weights in checkpoints, to its own
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    best = copy.deepcopy(task.model)
    best.load_state_dict(state)
    return best, f"{best_checkpoint.name} (step {checkpoint['global_step']})"


def _train_tokenizer(config: TokenizerConfig, run_dir: str | os.PathLike[str], resume: bool | str) -> dict[str, Any]:
    """Train the tokenizer, export ``tokenizer.safetensors``, draw reconstructions of held-out tiles."""
    precision = config.train.precision
    if precision.startswith("16"):
        raise UserError(f"train config: precision {precision!r} is not supported by the tokenizer GAN; use bf16 or 32")
    run_dir = Path(run_dir)
    config.data.validate()
    prepare_run(run_dir, config, "terrain-tokenizer")
    seed_everything(config.train.seed)
    tiles = prepare_tiles(config.data, run_dir / "data", config.train.seed)
    if tiles.tile_size % config.model.downsample:
        raise UserError(f"tile_size {tiles.tile_size} is not a multiple of the downsampling {config.model.downsample}")
    write_json(run_dir / "tiles.json", tiles.summary())
    save_val_tiles(run_dir, tiles)
    train_loader = _loader(
        ElevationTiles(tiles.train, config.data.augment, "training tiles"), config.data.batch_size, True
    )
    val_loader = _loader(ElevationTiles(tiles.val, False, "validation tiles"), 256, False) if len(tiles.val) else None
    tokenizer_task = task_from_recipe(TokenizerTask, config)
    # The task clips its own gradients (manual optimisation); Lightning's clipping must stay off.
    train_config = dataclasses.replace(config.train, gradient_clip=0.0)
    with warnings.catch_warnings():
        # Lightning warns that manual optimisation checkpoints hold the weights after the step: that is the state
        # a resumed run needs.
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        pictures = ImagesEvery(reconstruction_drawer(tiles.val[:4]), config.train.val_every_steps)
        result = fit(tokenizer_task, (train_loader, val_loader), train_config, run_dir, resume, callbacks=[pictures])
    network, exported_from = best_weights(tokenizer_task, result.best_checkpoint)
    weights = save(run_dir, network.cpu(), tiles.summary())
    tokenizer = LoadedTokenizer.load(weights)
    evaluation = evaluate_tokenizer(tokenizer, tiles.val if len(tiles.val) else tiles.train[:256])
    panel = reconstruction_panel(run_dir / "reconstructions.png", tokenizer, tiles.val[:6], tiles.val_pixel_sizes[:6])
    summary = {
        "run_dir": str(run_dir),
        "tokenizer": str(weights),
        "identity": tokenizer.identity,
        "global_step": result.global_step,
        "exported_from": exported_from,
        "seconds": round(result.seconds, 1),
        "tiles": {"train": len(tiles.train), "val": len(tiles.val)},
        "evaluation": evaluation,
        "reconstructions": str(panel) if panel else None,
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def reconstruction_drawer(tiles: np.ndarray) -> Callable[[Any], dict[str, np.ndarray]]:
    """For TensorBoard and W&B while the tokenizer trains: hillshades of ``tiles`` (top row) over the task's
    reconstructions of them (bottom row), shaded in normalised units so that only the shapes are compared."""
    normalized = normalize_tiles(tiles, "validation tiles")[0] if len(tiles) else tiles

    def draw(task: Any) -> dict[str, np.ndarray]:
        if len(normalized) == 0:
            return {}
        device = next(task.model.parameters()).device
        inputs = torch.from_numpy(np.ascontiguousarray(normalized[:, None], dtype=np.float32)).to(device)
        reconstructions = task.model(inputs)[0][:, 0].float().cpu().numpy()
        shaded = [hillshade_picture(tile, 1.0) for tile in (*normalized, *reconstructions)]
        return {"tokenizer/reconstructions": image_grid(shaded, nrows=2)}

    return draw


def token_dataset(
    tokenizer: LoadedTokenizer, tiles: np.ndarray, conditions: np.ndarray | None, n_classes: int, augment: bool
) -> TokenGrids:
    """Token grids of tiles (all 8 flips and turns when ``augment``: tokens are not rotation-equivariant, so
    the augmentation happens in pixels, before encoding), with condition maps on the token grid."""
    normalized, _, _ = normalize_tiles(tiles, "training tiles")
    variants = range(8) if augment else range(1)
    token_sets, condition_sets = [], []
    for k in variants:
        turned = dihedral(torch.from_numpy(normalized), k).numpy()
        token_sets.append(tokenizer.encode(turned))
        if conditions is not None:
            turned_conditions = dihedral(torch.from_numpy(conditions), k).numpy()
            condition_sets.append(condition_tokens(turned_conditions, tokenizer.downsample, n_classes))
    return TokenGrids(np.concatenate(token_sets), np.concatenate(condition_sets) if condition_sets else None)


def refuse_derived_fields(model: MaskGITModelConfig, **derived: int) -> None:
    """MaskGIT's vocabulary, window and condition classes come from the tokenizer and the data, not the recipe; a
    recipe value that is neither the default nor theirs would be silently overridden, so it is a UserError."""
    defaults = MaskGITModelConfig()
    for name, value in derived.items():
        given = getattr(model, name)
        if given not in (getattr(defaults, name), value):
            raise UserError(
                f"maskgit recipe: model.{name} = {given}, but the tokenizer and the data make it {value}; leave it out"
            )


def _train_maskgit(config: MaskGITConfig, run_dir: str | os.PathLike[str], resume: bool | str) -> dict[str, Any]:
    """Train MaskGIT on the token grids of the recipe's tiles, export ``maskgit.safetensors``, draw samples."""
    run_dir = Path(run_dir)
    config.data.validate()
    tokenizer = LoadedTokenizer.load(config.tokenizer)
    downsample = tokenizer.downsample
    if config.data.tile_size % (2 * downsample):
        raise UserError(
            f"tile_size {config.data.tile_size} should be a multiple of twice the tokenizer's downsampling "
            f"({downsample}): outpainting tiles are half a window"
        )
    grid = config.data.tile_size // downsample
    refuse_derived_fields(config.model, vocab_size=tokenizer.vocab_size, grid=grid)
    prepare_run(run_dir, config, "terrain-maskgit")
    seed_everything(config.train.seed)
    tiles = prepare_tiles(config.data, run_dir / "data", config.train.seed)
    write_json(run_dir / "tiles.json", tiles.summary())
    save_val_tiles(run_dir, tiles)
    if config.data.scale_classes:
        n_classes = len(config.data.scale_classes) + 1
    else:
        n_classes = tiles.legend.n_classes if tiles.legend is not None else 0
    refuse_derived_fields(config.model, n_condition_classes=n_classes)
    train_set = token_dataset(tokenizer, tiles.train, tiles.train_conditions, n_classes, config.data.augment)
    train_loader = _loader(train_set, config.data.batch_size, True)
    val_loader = None
    if len(tiles.val):
        val_set = token_dataset(tokenizer, tiles.val, tiles.val_conditions, n_classes, False)
        val_loader = _loader(val_set, 256, False)
    maskgit_task = task_from_recipe(
        MaskGITTask, config, vocab_size=tokenizer.vocab_size, grid=grid, tile=grid // 2, n_condition_classes=n_classes
    )
    start = time.perf_counter()
    condition = None
    if n_classes and tiles.val_conditions is not None and len(tiles.val_conditions):
        condition = condition_tokens(tiles.val_conditions[:1], downsample, n_classes)  # a validation tile's classes
    pictures = ImagesEvery(sample_drawer(tokenizer, grid, config, condition), config.train.val_every_steps)
    result = fit(maskgit_task, (train_loader, val_loader), config.train, run_dir, resume, callbacks=[pictures])
    tokens_per_second = result.global_step * train_loader.batch_size * grid * grid / max(result.seconds, 1e-9)
    network, exported_from = best_weights(maskgit_task, result.best_checkpoint)
    weights = save(
        run_dir,
        network.cpu(),
        tokenizer,
        tile=grid // 2,
        sampling=dataclasses.asdict(config.sampling),
        data_summary=tiles.summary(),
        legend=tiles.legend.to_dict() if tiles.legend is not None else None,
        scale_classes=[float(edge) for edge in config.data.scale_classes] or None,
    )
    generator = load(weights)
    samples = sample_tiles(generator, 8, seed=config.train.seed)
    preview = save_hillshade_grid(run_dir / "samples.png", samples, tiles.pixel_size_m, ncols=4)
    summary = {
        "run_dir": str(run_dir),
        "maskgit": str(weights),
        "tokenizer_identity": tokenizer.identity,
        "global_step": result.global_step,
        "exported_from": exported_from,
        "seconds": round(time.perf_counter() - start, 1),
        "train_tokens_per_second": round(tokens_per_second, 1),
        "token_grids": {"train": len(train_set), "val": len(val_loader.dataset) if val_loader else 0},
        "metrics": {name: round(value, 5) for name, value in result.metrics.items()},
        "samples": str(preview),
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def sample_drawer(
    tokenizer: LoadedTokenizer, grid: int, config: MaskGITConfig, condition: np.ndarray | None, count: int = 4
) -> Callable[[Any], dict[str, np.ndarray]]:
    """For TensorBoard and W&B while MaskGIT trains: hillshades of ``count`` tiles sampled from scratch with the
    recipe's sampling settings and a fixed seed (so successive pictures differ only by training), in normalised
    units."""
    sampling = config.sampling

    def draw(task: Any) -> dict[str, np.ndarray]:
        device = next(task.model.parameters()).device
        tokens = torch.zeros((count, grid, grid), dtype=torch.long, device=device)
        known = torch.zeros_like(tokens, dtype=torch.bool)
        classes = None if condition is None else torch.from_numpy(condition).to(device).expand(count, -1, -1)
        rng = torch.Generator().manual_seed(config.train.seed)
        sampled = decode(
            task.model, tokens, known, sampling.steps, rng, sampling.temperature, sampling.choice_temperature, classes
        )
        heights = tokenizer.decode(sampled.cpu().numpy())
        return {"maskgit/samples": image_grid([hillshade_picture(tile, 1.0) for tile in heights], nrows=1)}

    return draw
