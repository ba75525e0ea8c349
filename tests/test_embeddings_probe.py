"""Fine-tuning from the linear probe (``sft.start_from_probe``, LP-FT): the model starts exactly at the ridge
probe, and its probe branch can stay fixed while the deep head learns. The command-line runs (export, reload,
evaluate, DPO, the step-0 weights as a candidate of the validation choice) are in test_embeddings_cli.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landformer.embeddings.data import target_scaling
from landformer.embeddings.evaluate import fit_baselines, fit_ridge_probe, predict
from landformer.embeddings.model import Regressor, build_encoder, mean_embedding
from landformer.embeddings.task import RegressionTask
from landformer.embeddings.tiles import EmbeddingDataset

VIT = {"kind": "vit", "in_channels": 64, "patch_size": 2, "dim": 32, "depth": 1, "heads": 2}


def probe_dataset(count: int = 90, size: int = 4) -> EmbeddingDataset:
    """Unit-vector tiles of two frames with some masked pixels (zero vectors, in either frame), and a target that
    is a noisy linear function of the first frame's mean embedding."""
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(count, 2, 64, size, size)) + rng.normal(size=(count, 1, 64, 1, 1))
    tiles = (raw / np.linalg.norm(raw, axis=2, keepdims=True)).astype(np.float32)
    masked = rng.random((count, 2, size, size)) < 0.15
    tiles[np.broadcast_to(masked[:, :, None], tiles.shape)] = 0.0
    data = EmbeddingDataset(
        ids=[str(i) for i in range(count)],
        tiles=tiles,
        valid=~masked.any(axis=1),
        targets=np.zeros(count),
        groups=[str(i % 9) for i in range(count)],
        split=np.array(["train"] * 60 + ["val"] * 15 + ["test"] * 15),
        lonlat=np.full((count, 2), np.nan),
    )
    data.targets = data.mean_embeddings() @ rng.normal(size=64) + 0.05 * rng.normal(size=count) + 3.0
    return data


def test_mean_embedding_is_the_probes_input() -> None:
    data = probe_dataset()
    expected = torch.from_numpy(data.mean_embeddings())
    torch.testing.assert_close(mean_embedding(torch.from_numpy(data.tiles)).double(), expected, atol=1e-6, rtol=0)


def test_start_from_probe_predicts_the_ridge_probe_and_lets_the_deep_head_learn() -> None:
    data = probe_dataset()
    scaling = target_scaling(data)
    torch.manual_seed(0)
    model = Regressor(build_encoder(VIT, 2), 16, 0.1, pooling="stats", probe=True)
    model.start_from_probe(fit_ridge_probe(data), *scaling)
    meta = {"target_mean": scaling[0], "target_scale": scaling[1]}
    mean, _ = predict(model, meta, data, np.arange(len(data)))
    ridge = fit_baselines(data)["ridge"]["prediction"]
    np.testing.assert_allclose(mean, ridge, rtol=0, atol=1e-5 * np.abs(ridge).max())
    # The deep head's mean output starts at zero but not stuck there: its last layer gets a gradient at once.
    model.train()
    predicted, _ = model(torch.from_numpy(data.tiles[:8]))
    (predicted - 1.0).pow(2).mean().backward()
    assert model.head.net[-1].weight.grad[0].abs().sum() > 0


def test_probe_lr_scale_zero_keeps_the_ridge_fit_while_the_deep_head_learns() -> None:
    data = probe_dataset()
    torch.manual_seed(0)
    task = RegressionTask(
        encoder=VIT, frames=2, head_hidden=16, pooling="stats", probe=True, probe_lr_scale=0.0, warmup_steps=0
    )
    task.model.start_from_probe(fit_ridge_probe(data), *target_scaling(data))
    probe = {name: value.clone() for name, value in task.model.head.probe.state_dict().items()}
    last_layer = task.model.head.net[-1].weight.detach().clone()
    optimizer = task.configure_optimizers()["optimizer"]
    task.train()
    batch = {"frames": torch.from_numpy(data.tiles[:16]), "target": torch.randn(16)}
    for _ in range(3):
        optimizer.zero_grad()
        task.compute_loss(batch)["loss"].backward()
        optimizer.step()
    for name, value in task.model.head.probe.state_dict().items():
        assert torch.equal(value, probe[name]), name
    assert not torch.equal(task.model.head.net[-1].weight, last_layer)


def test_probe_branch_needs_a_probe_model() -> None:
    model = Regressor(build_encoder(VIT, 1), 16, 0.1)
    with pytest.raises(ValueError, match="probe=True"):
        model.start_from_probe(fit_ridge_probe(probe_dataset()), 0.0, 1.0)
