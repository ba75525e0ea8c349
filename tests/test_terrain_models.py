"""Terrain models: tokenizer shapes and codes, losses, the MaskGIT mask schedule, masked-only loss, decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landformer.core.errors import UserError
from landformer.terrain.data import normalize_tiles
from landformer.terrain.model import (
    OUTPAINT_SHAPES,
    MaskGIT,
    MaskGITModelConfig,
    PatchDiscriminator,
    TokenizerModelConfig,
    VQTokenizer,
    adaptive_weight,
    cosine_mask_ratio,
    decode,
    decode_one_by_one,
    gan_scale,
    gradient_loss,
    hinge_d_loss,
    mask_within,
    masked_token_loss,
    outpaint_region,
    spectral_loss,
    steps_for,
    training_mask,
)


def tiny_tokenizer(quantizer: str = "vq") -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(TokenizerModelConfig(channels=8, quantizer=quantizer, codebook_size=32, fsq_levels=[4, 3, 2]))


def tiny_maskgit(vocab: int = 32, grid: int = 4, n_condition_classes: int = 0) -> MaskGIT:
    torch.manual_seed(0)
    config = MaskGITModelConfig(
        vocab_size=vocab, grid=grid, dim=32, n_layers=2, n_heads=2, dropout=0.0, n_condition_classes=n_condition_classes
    )
    return MaskGIT(config).eval()


# ------------------------------------------------------------------------------------------------ tokenizer


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_tokenizer_round_trip_shapes_and_codes(quantizer: str) -> None:
    model = tiny_tokenizer(quantizer).eval()
    x = torch.randn(3, 1, 16, 24)
    reconstruction, indices, loss = model(x)
    assert reconstruction.shape == x.shape
    assert indices.shape == (3, 4, 6) and indices.dtype == torch.int64
    assert int(indices.min()) >= 0 and int(indices.max()) < model.vocab_size
    assert model.vocab_size == (32 if quantizer == "vq" else 4 * 3 * 2)
    assert loss.ndim == 0 and float(loss.detach()) >= 0
    # Decoding the indices gives exactly the reconstruction of the forward pass.
    codes, again, _ = model.encode(x)
    assert torch.equal(again, indices)
    assert torch.allclose(model.quantizer.lookup(indices), codes, atol=1e-6)
    assert torch.allclose(model.decode_indices(indices), reconstruction, atol=1e-5)


def test_fsq_tokens_cover_every_level_combination_once() -> None:
    model = tiny_tokenizer("fsq")
    levels = torch.tensor([4, 3, 2])
    # Integer points of the FSQ grid, pushed through the inverse of its bound, land on distinct tokens 0..23.
    grid = torch.cartesian_prod(*(torch.arange(n) - n // 2 for n in levels.tolist())).float()
    codes = model.quantizer.lookup(torch.arange(24).view(1, 4, 6))
    assert codes.shape == (1, 3, 4, 6)
    digits = (codes * (levels // 2).view(1, -1, 1, 1)).round().long().permute(0, 2, 3, 1).reshape(-1, 3)
    assert {tuple(row) for row in digits.tolist()} == {tuple(row) for row in grid.long().tolist()}


def test_tokenizer_refuses_sides_off_the_token_grid() -> None:
    with pytest.raises(ValueError, match="multiple of the downsampling"):
        tiny_tokenizer().encode(torch.zeros(1, 1, 18, 16))


def test_decoding_a_window_with_the_margin_equals_decoding_everything() -> None:
    model = tiny_tokenizer().eval()
    tokens = torch.randint(0, model.vocab_size, (1, 30, 30), generator=torch.Generator().manual_seed(1))
    margin, f = model.decoder_margin(), model.downsample
    with torch.no_grad():
        whole = model.decode_indices(tokens)
        window = model.decode_indices(tokens[:, 12 - margin : 18 + margin, 12 - margin : 18 + margin])
    inner = window[..., margin * f : -margin * f, margin * f : -margin * f]
    assert torch.allclose(inner, whole[..., 12 * f : 18 * f, 12 * f : 18 * f], atol=1e-5)


def test_encoding_a_window_with_the_margin_gives_the_whole_maps_tokens() -> None:
    model = tiny_tokenizer().eval()
    elevation = torch.randn(1, 1, 120, 120, generator=torch.Generator().manual_seed(2))
    margin, f = model.encoder_margin(), model.downsample
    with torch.no_grad():
        _, whole, _ = model.encode(elevation)
        _, window, _ = model.encode(elevation[..., 40:100, 40:100])
    assert torch.equal(
        window[0, margin:-margin, margin:-margin], whole[0, 10 + margin : 25 - margin, 10 + margin : 25 - margin]
    )
    assert margin * f < 60 // 2


def test_normalisation_keeps_absolute_heights() -> None:
    rng = np.random.default_rng(0)
    tiles = rng.normal(size=(5, 8, 8)) * rng.uniform(1, 300, size=(5, 1, 1)) + rng.uniform(-400, 4000, (5, 1, 1))
    normalized, offsets, scales = normalize_tiles(tiles.astype(np.float32))
    assert np.allclose(normalized.mean(axis=(1, 2)), 0, atol=1e-5)
    assert np.allclose(normalized.std(axis=(1, 2)), 1, atol=1e-4)
    assert np.allclose(normalized * scales[:, None, None] + offsets[:, None, None], tiles, atol=1e-2)


def test_flat_or_nodata_tiles_are_refused_in_one_line() -> None:
    flat = np.full((2, 8, 8), 812.0, dtype=np.float32)
    flat[0] += np.arange(8)
    with pytest.raises(UserError, match=r"tile 1 is flat \(all 812 m") as info:
        normalize_tiles(flat, "my.tif")
    assert "\n" not in str(info.value)
    holes = np.ones((1, 8, 8), dtype=np.float32)
    holes[0, 3, 3] = np.nan
    with pytest.raises(UserError, match="tile 0 holds nodata"):
        normalize_tiles(holes, "my.tif")


# ------------------------------------------------------------------------------------------------ losses


def test_gradient_and_spectral_losses_vanish_only_for_equal_inputs() -> None:
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert float(gradient_loss(x, x)) == 0.0
    assert float(spectral_loss(x, x)) == 0.0
    # A constant shift has the same slopes, so the slope loss ignores it; a smoothed copy does not.
    assert float(gradient_loss(x + 3.0, x)) == pytest.approx(0.0, abs=1e-6)
    smooth = F.avg_pool2d(x, 3, stride=1, padding=1)
    assert float(gradient_loss(smooth, x)) > 0.1
    assert float(spectral_loss(smooth, x)) > 0.1


def test_hinge_loss_and_gan_scale() -> None:
    zeros = torch.zeros(4, 1, 3, 3)
    assert float(hinge_d_loss(zeros, zeros)) == 1.0  # a discriminator at chance
    assert float(hinge_d_loss(zeros + 1, zeros - 1)) == 0.0  # one that separates by the margin
    assert gan_scale(1.0, 0.9, 0.6) == 0.0
    assert gan_scale(0.75, 0.9, 0.6) == pytest.approx(0.5)
    assert gan_scale(0.2, 0.9, 0.6) == 1.0


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer() -> None:
    model = tiny_tokenizer()
    discriminator = PatchDiscriminator(8, 2)
    x = torch.randn(2, 1, 16, 16)
    reconstruction, _, _ = model(x)
    rec_loss = (reconstruction - x).abs().mean()
    g_loss = -discriminator(reconstruction).mean()
    weight = adaptive_weight(rec_loss, g_loss, model.last_layer)
    rec_grad = torch.autograd.grad(rec_loss, model.last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, model.last_layer, retain_graph=True)[0]
    assert float(weight) == pytest.approx(float(rec_grad.norm() / (g_grad.norm() + 1e-4)), rel=1e-5)
    assert not weight.requires_grad


# ------------------------------------------------------------------------------------------------ masking


def test_cosine_schedule_counts_and_region() -> None:
    assert float(cosine_mask_ratio(0.0)) == 1.0
    assert float(cosine_mask_ratio(1.0)) == pytest.approx(0.0, abs=1e-12)
    region = torch.zeros(64, 8, 8, dtype=torch.bool)
    region[:, :, 4:] = True
    masks = mask_within(region, torch.Generator().manual_seed(3))
    # The same generator draws r first: the counts follow ceil(cos(pi/2 r) * |region|), at least 1.
    r = torch.rand(64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = torch.ceil(torch.cos(math.pi / 2 * r) * 32).clamp(min=1).long()
    assert torch.equal(masks.sum(dim=(1, 2)), expected)
    assert not masks[:, :, :4].any()


def test_training_masks_use_outpainting_shapes() -> None:
    for shape in OUTPAINT_SHAPES:
        region = outpaint_region(shape, 8, 4)
        assert region.shape == (8, 8)
    assert int(outpaint_region("tile_d", 8, 4).sum()) == 16
    assert int(outpaint_region("tile_c", 8, 4).sum()) == 32
    assert int(outpaint_region("tile_b", 8, 4).sum()) == 48
    assert int(outpaint_region("tile_a", 8, 4).sum()) == 64
    shaped = training_mask(2000, 8, 4, outpaint_prob=1.0, generator=torch.Generator().manual_seed(0))
    plain = training_mask(2000, 8, 4, outpaint_prob=0.0, generator=torch.Generator().manual_seed(0))
    assert shaped.any(dim=(1, 2)).all() and plain.any(dim=(1, 2)).all()
    # Plain MaskGIT masks hide E[cos(pi/2 r)] = 2/pi of a window; outpainting regions are mostly smaller.
    assert float(plain.float().mean()) == pytest.approx(2 / math.pi, abs=0.03)
    assert float(shaped.float().mean()) < 0.5
    # A tile_d-shaped mask never reaches the ring of known neighbours: some masks leave every ring token known.
    ring = ~outpaint_region("tile_d", 8, 4)
    assert (~(shaped & ring).any(dim=(1, 2))).sum() > 100


def test_loss_counts_masked_tokens_only() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 4, 10, generator=generator)
    targets = torch.randint(0, 10, (2, 4, 4), generator=generator)
    mask = torch.rand(2, 4, 4, generator=generator) < 0.5
    loss = masked_token_loss(logits, targets, mask)
    direct = F.cross_entropy(logits.reshape(-1, 10)[mask.reshape(-1)], targets.reshape(-1)[mask.reshape(-1)])
    assert float(loss) == pytest.approx(float(direct))
    changed_logits, changed_targets = logits.clone(), targets.clone()
    changed_logits[~mask] = torch.randn(int((~mask).sum()), 10)
    changed_targets[~mask] = (targets[~mask] + 1) % 10
    assert float(masked_token_loss(changed_logits, changed_targets, mask)) == pytest.approx(float(loss))


def test_maskgit_task_loss_ignores_visible_tokens() -> None:
    from landformer.terrain.task import MaskGITTask

    torch.manual_seed(0)
    task = MaskGITTask(vocab_size=16, grid=4, tile=2, dim=32, n_layers=1, n_heads=2, dropout=0.0, label_smoothing=0.0)
    tokens = torch.randint(0, 16, (8, 4, 4))
    torch.manual_seed(5)
    losses = task.compute_loss({"tokens": tokens})
    # Recompute by hand with the same masks (drawn from the reseeded global generator).
    torch.manual_seed(5)
    mask = training_mask(8, 4, 2, task.hparams.outpaint_mask_prob)
    logits = task.model(tokens.masked_fill(mask, 16))
    expected = masked_token_loss(logits, tokens, mask).detach()
    assert float(losses["loss"].detach()) == pytest.approx(float(expected), rel=1e-6)
    assert float(losses["masked_fraction"]) == pytest.approx(float(mask.float().mean()))


# ------------------------------------------------------------------------------------------------ decoding


class CountingMaskGIT(MaskGIT):
    def forward(self, tokens: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        self.calls = getattr(self, "calls", 0) + 1
        return super().forward(tokens, condition)


def counting_maskgit(vocab: int = 32, grid: int = 4) -> CountingMaskGIT:
    torch.manual_seed(0)
    model = CountingMaskGIT(MaskGITModelConfig(vocab_size=vocab, grid=grid, dim=32, n_layers=2, n_heads=2, dropout=0.0))
    return model.eval()


def test_decoding_keeps_given_tokens_and_fills_every_mask() -> None:
    model = counting_maskgit()
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 32, (3, 4, 4), generator=generator)
    known = torch.zeros(3, 4, 4, dtype=torch.bool)
    known[:, :, :2] = True
    out = decode(model, tokens, known, steps=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[known], tokens[known])
    assert int(out.max()) < 32 and int(out.min()) >= 0
    assert model.calls == 4  # one forward pass per step, not one per token
    again = decode(model, tokens, known, steps=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    other = decode(model, tokens, known, steps=4, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(out, other)


def test_one_by_one_decoding_takes_a_pass_per_token_and_keeps_given_tokens() -> None:
    model = counting_maskgit()
    tokens = torch.randint(0, 32, (2, 4, 4))
    known = torch.rand(2, 4, 4) < 0.3
    known[:, 0, 0] = False
    out = decode_one_by_one(model, tokens, known, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[known], tokens[known])
    assert model.calls == int((~known).any(dim=0).sum())
    assert int(out.max()) < 32


def test_decoding_refuses_batches_with_unequal_unknowns() -> None:
    known = torch.zeros(2, 4, 4, dtype=torch.bool)
    known[0, 0, 0] = True
    with pytest.raises(ValueError, match="same number of unknown tokens"):
        decode(tiny_maskgit(), torch.zeros(2, 4, 4, dtype=torch.long), known, steps=2)


def test_steps_scale_with_unknowns() -> None:
    assert steps_for(64, 64, 10) == 10
    assert steps_for(16, 64, 10) == 3
    assert steps_for(1, 64, 10) == 1
    assert steps_for(3, 64, 10) == 2


def test_conditioning_changes_predictions() -> None:
    model = tiny_maskgit(n_condition_classes=3)
    tokens = torch.full((1, 4, 4), 32)
    with torch.no_grad():
        plain = model(tokens)
        none = model(tokens, torch.full((1, 4, 4), 3))
        forest = model(tokens, torch.zeros(1, 4, 4, dtype=torch.long))
    assert torch.allclose(plain, none)  # no condition map means the "none" class
    assert not torch.allclose(plain, forest)


def test_perceptual_loss_runs_only_from_local_vgg_weights(tmp_path) -> None:
    from torchvision.models.vgg import cfgs, make_layers

    from landformer.core.io import save_safetensors
    from landformer.terrain.export import load_vgg_features
    from landformer.terrain.model import PerceptualLoss

    torch.manual_seed(0)
    features = make_layers(cfgs["D"])[:16]
    path = save_safetensors(
        tmp_path / "vgg16.safetensors", {f"features.{k}": v for k, v in features.state_dict().items()}, {}
    )
    loss = PerceptualLoss(load_vgg_features(path))
    x = torch.randn(2, 1, 16, 16)
    assert float(loss(x, x)) == 0.0
    assert float(loss(x, torch.randn(2, 1, 16, 16))) > 0.0
    assert not any(p.requires_grad for p in loss.parameters())
    save_safetensors(tmp_path / "other.safetensors", {"fc.weight": torch.zeros(2, 2)}, {})
    with pytest.raises(UserError, match="hold no 'features"):
        load_vgg_features(tmp_path / "other.safetensors")


def test_lattice_contrast_finds_a_tile_grid_and_not_plain_terrain() -> None:
    from landformer.terrain.metrics import fractal_noise, lattice_contrast

    terrain = fractal_noise(1, 256, beta=2.5, seed=0)[0]
    assert 0.3 < lattice_contrast(terrain, 16) < 3.0
    rows, cols = np.mgrid[0:256, 0:256]
    bumps = np.exp(-(((rows % 16) - 8) ** 2 + ((cols % 16) - 8) ** 2) / 8.0)  # one blob in every 16 px tile
    assert lattice_contrast(terrain + 0.5 * bumps, 16) > 10 * lattice_contrast(terrain, 16)
    with pytest.raises(ValueError, match="needs a map of at least 32 px"):
        lattice_contrast(terrain[:20, :20], 16)
