"""Qwen2-VL / Qwen2.5-VL towers as 64-channel encoders: patch order, patch-embedding init, masked subsets, weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from landformer.core.errors import UserError
from landformer.embeddings.model import MaskedAutoencoder, build_encoder, exported_encoder_config
from landformer.embeddings.qwen import (
    QwenVisionEncoder,
    build_tower,
    qwen_patch_positions,
    qwen_patchify,
    replace_patch_embedding,
)

TINY = {"in_channels": 64, "patch_size": 2, "dim": 32, "depth": 2, "heads": 2, "mlp_ratio": 2.0}


def tiny(kind: str, **changes: object) -> dict:
    values = {"kind": kind, **TINY, "window_size": 8, "fullatt_blocks": [1], "patch_init": "normal"}
    values.update(changes)
    return values


def test_patch_order_equals_the_qwen_processor_on_rgb() -> None:
    from transformers import Qwen2VLImageProcessor

    processor = Qwen2VLImageProcessor(do_resize=False, do_rescale=False, do_normalize=False)
    image = torch.rand(3, 56, 84)
    expected = processor(images=[image], return_tensors="pt")
    assert expected["image_grid_thw"].tolist() == [[1, 4, 6]]
    ours = qwen_patchify(image[None, None], patch_size=14)
    assert torch.equal(ours[0], expected["pixel_values"])


def test_patch_positions_equal_the_towers_own() -> None:
    from transformers.vision_utils import get_vision_position_ids

    grid = torch.tensor([[1, 6, 8]])
    assert torch.equal(qwen_patch_positions(6, 8), get_vision_position_ids(grid, 2))


def test_temporal_pair_holds_two_years_and_a_single_year_is_repeated() -> None:
    frames = torch.rand(1, 2, 64, 4, 4)
    patches = qwen_patchify(frames, patch_size=2).reshape(1, 4, 64, 2, 2, 2)  # (B, L, C, T, P, P)
    assert torch.equal(patches[0, 0, :, 0], frames[0, 0, :, :2, :2])
    assert torch.equal(patches[0, 0, :, 1], frames[0, 1, :, :2, :2])
    single = qwen_patchify(frames[:, :1], patch_size=2).reshape(1, 4, 64, 2, 2, 2)
    assert torch.equal(single[0, :, :, 0], single[0, :, :, 1])


def test_patch_embedding_inits() -> None:
    tower = build_tower("qwen2_vl", tiny("qwen2_vl", in_channels=3))
    rgb = tower.patch_embed.proj.weight.detach().clone()
    replace_patch_embedding(tower, 64, "copy")
    copied = tower.patch_embed.proj.weight.detach()
    assert copied.shape == (32, 64, 2, 2, 2)
    for channel in (0, 1, 2, 40, 63):
        assert torch.allclose(copied[:, channel], rgb[:, channel % 3] * 3 / 64)
    replace_patch_embedding(tower, 64, "zero")
    assert not tower.patch_embed.proj.weight.any()
    replace_patch_embedding(tower, 64, "normal")
    assert abs(float(tower.patch_embed.proj.weight.detach().std()) - 0.02) < 0.003
    with pytest.raises(UserError, match="patch_init 'ones'"):
        replace_patch_embedding(tower, 64, "ones")


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl"])
def test_encoding_all_patches_equals_the_tower_on_the_processor_layout(kind: str) -> None:
    from transformers.vision_utils import get_vision_window_index

    torch.manual_seed(0)
    encoder = build_encoder(tiny(kind), frames=1)
    assert isinstance(encoder, QwenVisionEncoder)
    frames = torch.randn(1, 1, 64, 16, 16) / 8
    patches = encoder.patchify(frames)
    positions = encoder.patch_positions(16, 16)[None]
    with torch.no_grad():
        ours = encoder.encode(patches, positions)[0]
        grid = torch.tensor([[1, 8, 8]])
        reference = encoder.tower(patches[0] * encoder.input_scale, grid_thw=grid).last_hidden_state
    if kind == "qwen2_5_vl":  # the tower returns its hidden states in window order
        window_index, _ = get_vision_window_index(grid, 2, encoder.tower.config.window_size, 2)
        order = (window_index[:, None] * 4 + torch.arange(4)).flatten()
        reference = reference[torch.argsort(order)]
    assert torch.allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl"])
def test_samples_of_a_batch_do_not_see_each_other(kind: str) -> None:
    torch.manual_seed(0)
    encoder = build_encoder(tiny(kind), frames=1).eval()
    frames = torch.randn(2, 1, 64, 16, 16) / 8
    patches = encoder.patchify(frames)
    positions = encoder.patch_positions(16, 16)[None].expand(2, -1, -1)
    keep = torch.tensor([[0, 1, 2, 3, 12, 13, 14, 15], [20, 21, 22, 23, 40, 41, 42, 43]])
    subset = patches.gather(1, keep[..., None].expand(-1, -1, patches.shape[-1]))
    subset_positions = positions.gather(1, keep[..., None].expand(-1, -1, 2))
    with torch.no_grad():
        together = encoder.encode(subset, subset_positions)
        alone = encoder.encode(subset[1:], subset_positions[1:])
    assert torch.allclose(together[1:], alone, atol=1e-5)


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl"])
def test_mae_masks_whole_merge_blocks_and_trains(kind: str) -> None:
    torch.manual_seed(0)
    mae = MaskedAutoencoder(build_encoder(tiny(kind), frames=2), 0.75, 32, 1, 2)
    _, mask = mae.random_masking(3, 64, torch.device("cpu"))
    blocks = mask.reshape(3, 16, 4)
    assert ((blocks == 0).all(-1) | (blocks == 1).all(-1)).all()  # a block is kept or hidden as a whole
    assert (mask.sum(dim=1) == 64 - 4 * int(16 * 0.25)).all()
    frames = torch.randn(3, 2, 64, 16, 16) / 8
    loss, prediction, _ = mae(frames)
    assert prediction.shape == (3, 64, 64 * 2 * 2 * 2)
    loss.backward()
    assert mae.encoder.tower.patch_embed.proj.weight.grad.abs().sum() > 0


def test_pretrained_vision_weights_load_from_a_local_checkpoint(tmp_path: Path) -> None:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    text = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 64,
        "vocab_size": 256,
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
    }
    vision = {"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "patch_size": 2, "in_channels": 3}
    torch.manual_seed(0)
    full = Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision))
    full.save_pretrained(tmp_path / "ckpt")
    source = full.model.visual.state_dict()
    tower = build_tower("qwen2_vl", {"in_channels": 64, "pretrained": str(tmp_path / "ckpt"), "patch_init": "copy"})
    loaded = tower.state_dict()
    for key, value in source.items():
        if key != "patch_embed.proj.weight":
            assert torch.equal(loaded[key], value), key
    assert torch.allclose(loaded["patch_embed.proj.weight"][:, 4], source["patch_embed.proj.weight"][:, 1] * 3 / 64)
    with pytest.raises(UserError, match="is a 'qwen2_vl' model, not 'qwen2_5_vl'"):
        build_tower("qwen2_5_vl", {"in_channels": 64, "pretrained": str(tmp_path / "ckpt")})
    with pytest.raises(UserError, match=r"has no config\.json"):
        build_tower("qwen2_vl", {"in_channels": 64, "pretrained": str(tmp_path)})


def test_exported_config_rebuilds_the_same_architecture() -> None:
    values = tiny("qwen2_5_vl")
    encoder = build_encoder(values, frames=2)
    rebuilt = build_encoder(exported_encoder_config(values, encoder), frames=2)
    rebuilt.load_state_dict(encoder.state_dict())
    frames = torch.randn(1, 2, 64, 8, 8) / 8
    with torch.no_grad():
        assert torch.allclose(encoder.features(frames), rebuilt.features(frames))
