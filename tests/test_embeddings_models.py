"""MAE (masking, masked-only loss), regression (staged unfreezing, Gaussian head, LoRA, export), DPO, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from landformer.embeddings.augment import TileAugmenter, crop_resize, dihedral
from landformer.embeddings.data import make_pairs
from landformer.embeddings.encoders import ViTEncoder, pool_tokens
from landformer.embeddings.evaluate import fit_baselines, regression_metrics
from landformer.embeddings.model import MaskedAutoencoder, Regressor, add_lora, build_encoder, gaussian_log_prob
from landformer.embeddings.task import DPOTask, RegressionTask, dpo_loss
from landformer.embeddings.tiles import EmbeddingDataset

VIT = {"kind": "vit", "in_channels": 64, "patch_size": 2, "dim": 32, "depth": 1, "heads": 2}


def tiles(batch: int, frames: int = 1, size: int = 8, seed: int = 0) -> torch.Tensor:
    x = torch.randn(batch, frames, 64, size, size, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=2, keepdim=True)


def smooth_tiles(batch: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Tiles whose pixels are a random linear map of (1, row, col): patches are predictable from their neighbours."""
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    basis = torch.stack([torch.ones_like(rows), rows, cols])  # (3, H, W)
    maps = torch.randn(batch, 64, 3, generator=generator)
    x = torch.einsum("bcf,fhw->bchw", maps, basis)[:, None]
    return x / x.norm(dim=2, keepdim=True)


def small_mae(frames: int = 1) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(build_encoder(VIT, frames), 0.75, 32, 1, 2)


# ------------------------------------------------------------------------------------------------- MAE


@pytest.mark.parametrize(("n_patches", "ratio", "hidden"), [(16, 0.75, 12), (64, 0.75, 48), (10, 0.5, 5), (9, 0.6, 6)])
def test_masking_ratio_is_exact(n_patches: int, ratio: float, hidden: int) -> None:
    mae = small_mae()
    mae.mask_ratio = ratio
    keep, mask = mae.random_masking(5, n_patches, torch.device("cpu"))
    assert (mask.sum(dim=1) == hidden).all()
    assert keep.shape == (5, n_patches - hidden)
    assert (mask.gather(1, keep) == 0).all()  # kept patches are exactly the unmasked ones
    assert (keep[:, 1:] > keep[:, :-1]).all()


def test_loss_counts_masked_patches_only_and_equals_direct_computation() -> None:
    mae = small_mae()
    frames = tiles(3)
    patches = mae.patchify(frames)
    keep, mask = mae.random_masking(3, patches.shape[1], torch.device("cpu"))
    prediction = torch.randn_like(patches)
    loss = mae.forward_loss(patches, prediction, mask)
    target = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = ((prediction - target) ** 2).mean(-1)
    assert torch.allclose(loss, per_patch[mask.bool()].mean())
    changed = prediction.clone()
    changed.scatter_(1, keep[..., None].expand(-1, -1, patches.shape[-1]), 100.0)  # wreck the visible ones
    assert torch.allclose(mae.forward_loss(patches, changed, mask), loss)


def test_encoder_sees_only_visible_patches() -> None:
    mae = small_mae()
    frames = tiles(2)
    patches = mae.patchify(frames)
    positions = mae.encoder.patch_positions(8, 8)[None].expand(2, -1, -1)
    keep, mask = mae.random_masking(2, patches.shape[1], torch.device("cpu"))
    altered = torch.where(mask[..., None].bool(), torch.randn_like(patches), patches)
    with torch.no_grad():
        assert torch.equal(mae.forward_encoder(patches, positions, keep), mae.forward_encoder(altered, positions, keep))


def test_vit_patchify_round_trips_two_frames() -> None:
    encoder = ViTEncoder(patch_size=2, dim=32, depth=1, heads=2, frames=2)
    frames = tiles(2, frames=2)
    patches = encoder.patchify(frames)
    assert patches.shape == (2, 16, 2 * 64 * 4)
    assert torch.equal(encoder.unpatchify(patches, 8, 8), frames)
    # patch 5 is row 1, col 1: pixels 2..3 of both years
    assert torch.equal(patches[0, 5].reshape(2, 64, 2, 2), frames[0, :, :, 2:4, 2:4])


def test_mae_learns_to_reconstruct_a_few_tiles() -> None:
    mae = small_mae()
    frames = smooth_tiles(8)
    optimizer = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(60):
        loss, _, _ = mae(frames, generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])


# ------------------------------------------------------------------------------------------ augmentation


def test_crop_resize_keeps_unit_length_and_marks_masked_neighbourhoods() -> None:
    frames = tiles(1)[0]
    valid = torch.ones(8, 8, dtype=torch.bool)
    valid[0, 0] = False
    frames[:, :, 0, 0] = 0
    resized, resized_valid = crop_resize(frames, valid, 0, 0, 6)
    assert resized.shape == frames.shape and resized_valid.shape == (8, 8)
    assert not resized_valid[0, 0] and (resized[:, :, 0, 0] == 0).all()
    lengths = resized.norm(dim=1)[0][resized_valid]
    assert torch.allclose(lengths, torch.ones_like(lengths), atol=1e-5)


def test_dihedral_views_are_the_eight_symmetries_and_centred_crops_stay_centred() -> None:
    grid = torch.arange(16.0).reshape(1, 4, 4)
    views = {tuple(dihedral(grid, turns, mirror).flatten().tolist()) for turns in range(4) for mirror in (False, True)}
    assert len(views) == 8
    torch.manual_seed(0)
    frames = tiles(1)[0]
    augmenter = TileAugmenter([0.5], centred=True)
    for _ in range(5):
        out, _ = augmenter(frames, torch.ones(8, 8, dtype=torch.bool))
        centre = crop_resize(frames, torch.ones(8, 8, dtype=torch.bool), 2, 2, 4)[0]
        assert any(torch.allclose(out, dihedral(centre, t, m)) for t in range(4) for m in (False, True))


# ------------------------------------------------------------------------------------------- regression


def regression_task(freeze_steps: int = 3, lora: dict | None = None) -> RegressionTask:
    torch.manual_seed(0)
    return RegressionTask(encoder=VIT, frames=1, head_hidden=16, freeze_steps=freeze_steps, lora=lora, max_steps=20)


def test_encoder_is_frozen_first_then_trains_at_a_lower_rate() -> None:
    task = regression_task(freeze_steps=3)
    task.train()
    batch = {"frames": tiles(4), "target": torch.randn(4)}
    task.compute_loss(batch)["loss"].backward()
    assert all(p.grad is None for p in task.model.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.model.head.parameters())
    optimizers = task.configure_optimizers()
    scheduler = optimizers["lr_scheduler"]["scheduler"]
    encoder_ids = {id(p) for p in task.model.encoder.parameters()}
    rates = []
    for _ in range(5):
        groups = optimizers["optimizer"].param_groups
        rates.append([(g["lr"], id(g["params"][0]) in encoder_ids) for g in groups])
        optimizers["optimizer"].step()
        scheduler.step()
    for step, groups in enumerate(rates):
        for lr, is_encoder in groups:
            assert (lr == 0.0) == (is_encoder and step < 3), (step, lr, is_encoder)
    head_lr = max(lr for lr, is_encoder in rates[4] if not is_encoder)
    encoder_lr = max(lr for lr, is_encoder in rates[4] if is_encoder)
    assert encoder_lr < head_lr


def test_variance_loss_does_not_pull_the_mean() -> None:
    task = regression_task(freeze_steps=0)
    task.train()
    losses = task.compute_loss({"frames": tiles(4), "target": torch.randn(4) * 3})
    losses["nll"].backward()
    last = task.model.head.net[-1]
    assert last.weight.grad[0].abs().sum() == 0 and last.bias.grad[0] == 0  # row 0 is the mean
    assert last.weight.grad[1].abs().sum() > 0


def test_lora_trains_adapters_patch_embedding_and_head_only() -> None:
    lora = {"rank": 2, "alpha": 4, "dropout": 0.0, "targets": ["qkv", "proj", "w1", "w2", "w3"]}
    plain = regression_task(freeze_steps=0)
    adapted = regression_task(freeze_steps=0, lora=lora)
    adapted.load_state_dict(plain.state_dict(), strict=False)
    frames = tiles(2)
    plain.eval()
    adapted.eval()
    with torch.no_grad():
        assert torch.allclose(plain.model(frames)[0], adapted.model(frames)[0], atol=1e-6)  # B starts at zero
    trainable = {name for name, p in adapted.model.encoder.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or "patch_embed" in name for name in trainable)
    assert any("lora_A" in name for name in trainable) and "patch_embed.weight" in trainable


def test_unknown_lora_targets_are_a_clear_error() -> None:
    from landformer.core.errors import UserError

    with pytest.raises(UserError, match="match no linear layer"):
        add_lora(build_encoder(VIT, 1), 2, 4, 0.0, ["q_proj"])


def test_gaussian_log_prob_matches_torch() -> None:
    values, mean, log_var = torch.randn(5), torch.randn(5), torch.randn(5)
    expected = torch.distributions.Normal(mean, torch.exp(0.5 * log_var)).log_prob(values)
    assert torch.allclose(gaussian_log_prob(values, mean, log_var), expected, atol=1e-6)


# ------------------------------------------------------------------------------------------------- DPO


def test_dpo_loss_has_zero_gradient_when_chosen_equals_rejected() -> None:
    torch.manual_seed(0)
    task = DPOTask(encoder=VIT, frames=1, head_hidden=16, head_dropout=0.0, beta=0.5)
    features, values, reference = torch.randn(6, 32), torch.randn(6), torch.randn(6, 1).repeat(1, 2)

    def gradient_size(rejected: torch.Tensor) -> float:
        task.model.zero_grad()
        batch = {"inputs": features, "chosen": values, "rejected": rejected, "reference": reference}
        task.compute_loss(batch)["loss"].backward()
        return max(p.grad.abs().max().item() for p in task.model.head.parameters())

    loss = task.compute_loss({"inputs": features, "chosen": values, "rejected": values.clone(), "reference": reference})
    assert torch.isclose(loss["loss"], torch.tensor(math.log(2.0)))
    assert gradient_size(values.clone()) < 1e-8  # zero up to float rounding
    assert gradient_size(values + 1.0) > 1e-3  # while a real preference pulls


def test_dpo_loss_formula() -> None:
    pc, pr, rc, rr = torch.tensor([1.0]), torch.tensor([-1.0]), torch.tensor([0.5]), torch.tensor([0.0])
    loss, logits = dpo_loss(pc, pr, rc, rr, beta=0.2)
    assert torch.isclose(logits, torch.tensor([0.2 * ((1.0 - 0.5) - (-1.0 - 0.0))])).all()
    assert torch.isclose(loss, -torch.nn.functional.logsigmoid(logits).mean())


def test_pairs_prefer_the_value_closer_to_the_truth() -> None:
    mean, sd, truth = np.array([0.0, 2.0]), np.array([1.0, 0.5]), np.array([1.0, 1.0])
    tiles_of, chosen, rejected = make_pairs(mean, sd, truth, 2000, 1.0, seed=0)
    assert (np.abs(chosen - truth[tiles_of]) <= np.abs(rejected - truth[tiles_of])).all()
    both = np.concatenate([chosen[tiles_of == 1], rejected[tiles_of == 1]])
    assert abs(both.mean() - 2.0) < 0.05 and abs(both.std() - 0.5) < 0.05


def test_dpo_moves_the_predicted_mean_towards_the_truth() -> None:
    torch.manual_seed(0)
    task = DPOTask(encoder=VIT, frames=1, head_hidden=16, head_dropout=0.0, beta=1.0)
    task.train()
    features = torch.randn(32, 32)
    with torch.no_grad():
        ref_mean, ref_log_var = task.model.head(features)
    truth = ref_mean + 1.0  # every tile's truth lies above the reference prediction
    tiles_of, chosen, rejected = make_pairs(
        ref_mean.numpy().astype(float), np.exp(0.5 * ref_log_var.numpy()).astype(float), truth.numpy(), 8, 1.0, 0
    )
    chosen_t, rejected_t = torch.tensor(chosen).float(), torch.tensor(rejected).float()
    reference = torch.stack(
        [
            gaussian_log_prob(chosen_t, ref_mean[tiles_of], ref_log_var[tiles_of]),
            gaussian_log_prob(rejected_t, ref_mean[tiles_of], ref_log_var[tiles_of]),
        ],
        dim=1,
    )
    optimizer = torch.optim.Adam(task.model.head.parameters(), lr=1e-3)
    batch = {"inputs": features[tiles_of], "chosen": chosen_t, "rejected": rejected_t, "reference": reference}
    for _ in range(30):
        optimizer.zero_grad()
        task.compute_loss(batch)["loss"].backward()
        optimizer.step()
    with torch.no_grad():
        new_mean, _ = task.model.head(features)
    assert ((truth - new_mean).abs().mean() < (truth - ref_mean).abs().mean() - 0.2).item()


# --------------------------------------------------------------------------------------------- metrics


def test_metrics_equal_sklearn() -> None:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(0)
    truth, prediction = rng.normal(size=50), rng.normal(size=50)
    metrics = regression_metrics(truth, prediction)
    assert metrics["r2"] == pytest.approx(r2_score(truth, prediction))
    assert metrics["mae"] == pytest.approx(mean_absolute_error(truth, prediction))
    assert metrics["rmse"] == pytest.approx(math.sqrt(mean_squared_error(truth, prediction)))


def test_ridge_probe_recovers_a_linear_target() -> None:
    rng = np.random.default_rng(0)
    count = 120
    raw = rng.normal(size=(count, 1, 64, 2, 2)).astype(np.float32)
    data = EmbeddingDataset(
        ids=[str(i) for i in range(count)],
        tiles=raw,
        valid=np.ones((count, 2, 2), dtype=bool),
        targets=raw[:, 0].mean(axis=(2, 3)) @ rng.normal(size=64),
        groups=[str(i % 10) for i in range(count)],
        split=np.array(["train"] * 80 + ["val"] * 20 + ["test"] * 20),
        lonlat=np.full((count, 2), np.nan),
    )
    baselines = fit_baselines(data)
    test = data.indices("test")
    assert regression_metrics(data.targets[test], baselines["ridge"]["prediction"][test])["r2"] > 0.99
    assert baselines["knn"]["settings"]["k"] in (3, 5, 10, 20, 40)


def test_stats_pooling_is_mean_centre_mean_and_spread_of_the_tokens() -> None:
    tokens = torch.randn(2, 16, 5, generator=torch.Generator().manual_seed(0))
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    positions = torch.stack([rows.flatten(), cols.flatten()], dim=-1)
    pooled = pool_tokens(tokens, positions, "stats")
    centre = [5, 6, 9, 10]  # the middle 2x2 patches of a 4x4 grid
    expected = torch.cat([tokens.mean(1), tokens[:, centre].mean(1), tokens.std(1, unbiased=False)], dim=-1)
    torch.testing.assert_close(pooled, expected)
    torch.testing.assert_close(pool_tokens(tokens, positions, "mean"), tokens.mean(1))
    # The order of the tokens does not matter, only their positions (the Qwen towers list patches block-wise).
    order = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(pool_tokens(tokens[:, order], positions[order], "stats"), pooled)


def test_regressor_export_round_trip(tmp_path) -> None:
    from landformer.embeddings.export import load, save

    torch.manual_seed(0)
    model = Regressor(build_encoder(VIT, 1), 16, 0.1, pooling="stats").eval()
    meta = {
        "stage": "sft",
        "encoder": VIT,
        "frames": 1,
        "tile_size": 8,
        "head_hidden": 16,
        "head_dropout": 0.1,
        "pooling": "stats",
        "lora": None,
        "target_mean": 1.0,
        "target_scale": 2.0,
        "target_name": "t",
    }
    save(tmp_path, model.state_dict(), meta)
    loaded, loaded_meta = load(tmp_path)
    frames = tiles(3)
    with torch.no_grad():
        assert torch.equal(model(frames)[0], loaded(frames)[0])
    assert loaded_meta == meta


def test_dpo_can_move_the_encoder_too() -> None:
    torch.manual_seed(0)
    task = DPOTask(encoder=VIT, frames=1, head_hidden=16, head_dropout=0.0, beta=0.5, train_encoder=True)
    frames = tiles(4)
    batch = {"inputs": frames, "chosen": torch.randn(4), "rejected": torch.randn(4), "reference": torch.randn(4, 2)}
    task.compute_loss(batch)["loss"].backward()
    assert task.model.encoder.patch_embed.weight.grad.abs().sum() > 0
    frozen = DPOTask(encoder=VIT, frames=1, head_hidden=16, head_dropout=0.0, beta=0.5, train_encoder=False)
    assert not any(p.requires_grad for p in frozen.model.encoder.parameters())
