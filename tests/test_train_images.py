"""Pictures drawn during training reach TensorBoard and W&B through core.train.log_images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning
import numpy as np
import pytest
from test_train import TinyRegression, make_loaders, quick_config

from landformer.core.train import fit, log_image_files
from landformer.core.viz import save_png


class DrawEvery(lightning.Callback):
    """Stands in for a task's sample callback: writes ``gen_<step>.png`` every ``every`` steps and logs it."""

    def __init__(self, folder: Path, every: int) -> None:
        self.folder = folder
        self.every = every

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every == 0:
            picture = np.full((8, 12, 3), step * 20, dtype=np.uint8)
            log_image_files(trainer, [save_png(self.folder / f"gen_{step:07d}.png", picture)], step)


def tensorboard_images(log_dir: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (version,) = (log_dir / "tensorboard").iterdir()
    events = EventAccumulator(str(version), size_guidance={"images": 0})
    events.Reload()
    return {tag: [event.step for event in events.Images(tag)] for tag in events.Tags()["images"]}


def test_images_reach_tensorboard_and_wandb_at_the_image_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.finish()  # Lightning's W&B logger joins a run another test left open instead of starting its own
    train, _ = make_loaders()
    config = quick_config(max_steps=6, loggers=["csv", "tensorboard", "wandb"])
    fit(TinyRegression(), train, config, tmp_path / "run", callbacks=[DrawEvery(tmp_path / "pictures", 2)])
    wandb.finish()

    assert tensorboard_images(tmp_path / "run/logs") == {"images/gen": [2, 4, 6]}
    (wandb_run,) = (tmp_path / "run/logs/wandb").glob("offline-run-*")
    assert len(list((wandb_run / "files/media/images").glob("images/gen_*.png"))) == 3


def test_default_loggers_are_csv_and_tensorboard(tmp_path: Path) -> None:
    train, _ = make_loaders()
    config = quick_config(max_steps=2)
    config.loggers = type(config)().loggers
    fit(TinyRegression(), train, config, tmp_path / "run", callbacks=[DrawEvery(tmp_path / "pictures", 1)])
    assert sorted(path.name for path in (tmp_path / "run/logs").iterdir()) == ["csv", "tensorboard"]
    assert tensorboard_images(tmp_path / "run/logs") == {"images/gen": [1, 2]}


def test_landcover_samples_reach_tensorboard_at_the_image_interval(tmp_path: Path) -> None:
    from test_landcover_train import make_chip_file, tiny_recipe

    from landformer.landcover.train import train

    recipe = tiny_recipe(make_chip_file(tmp_path / "toy.npz"))
    assert recipe.images.every_steps == 4 and recipe.train.max_steps == 8
    run = Path(train(recipe, tmp_path / "run")["run_dir"])
    assert tensorboard_images(run / "logs") == {f"samples/{name}": [4, 8] for name in ("gen", "gt", "pred")}


def test_images_every_draws_in_eval_mode_and_only_for_loggers_that_show_pictures(tmp_path: Path) -> None:
    from landformer.core.task import ImagesEvery

    drawn_in_training_mode: list[bool] = []

    def draw(task: TinyRegression) -> dict[str, np.ndarray]:
        drawn_in_training_mode.append(task.training)
        return {"net/picture": np.zeros((4, 6, 3), dtype=np.uint8)}

    train, _ = make_loaders()
    fit(TinyRegression(), train, quick_config(max_steps=5), tmp_path / "csv", callbacks=[ImagesEvery(draw, 2)])
    assert drawn_in_training_mode == []  # CSV keeps no pictures: nothing is drawn
    config = quick_config(max_steps=5, loggers=["tensorboard"])
    fit(TinyRegression(), train, config, tmp_path / "tb", callbacks=[ImagesEvery(draw, 2)])
    assert drawn_in_training_mode == [False, False, False]
    assert tensorboard_images(tmp_path / "tb/logs") == {"net/picture": [2, 4, 5]}  # and once at the end


def test_terrain_reconstructions_and_samples_reach_tensorboard(tmp_path: Path) -> None:
    from test_terrain import hills, write_dem

    from landformer.core.config import load_config
    from landformer.terrain.config import MaskGITConfig, TokenizerConfig
    from landformer.terrain.train import train as train_stage

    dem = write_dem(tmp_path / "dem.tif", hills(96, 96))
    data = [f"data.dems=[{dem}]", "data.packaged=[]", "data.world_size=0", "data.tile_size=16", "data.stride=8"]
    data += ["data.block_size=32", "data.batch_size=8", "data.max_tiles_per_source=40"]
    train = ["train.max_steps=4", "train.val_every_steps=2", "train.progress_bar=false"]
    train += ["train.loggers=[csv,tensorboard]"]
    tokenizer = ["model.channels=4", "model.codebook_size=16", "model.disc_channels=8"]
    train_stage(load_config(TokenizerConfig, None, [*data, *train, *tokenizer]), tmp_path / "tok")
    images = tensorboard_images(tmp_path / "tok" / "logs")
    assert list(images) == ["tokenizer/reconstructions"] and images["tokenizer/reconstructions"][-1] == 4
    assert len(images["tokenizer/reconstructions"]) >= 2  # at the interval and when training ends
    maskgit = [f"tokenizer={tmp_path / 'tok'}", "model.dim=32", "model.n_layers=1", "model.n_heads=2"]
    maskgit += ["sampling.steps=2", "sampling.bf16=false"]
    train_stage(load_config(MaskGITConfig, None, [*data, *train, *maskgit]), tmp_path / "mg")
    assert tensorboard_images(tmp_path / "mg" / "logs") == {"maskgit/samples": [2, 4]}
