"""The trl text route: number tokenizer, the 64-channel preference collator, a tiny Qwen-VL trained by DPOTrainer."""

from __future__ import annotations

import math

import pytest
import torch

from landformer.embeddings.qwen import qwen_patchify
from landformer.embeddings.trl_route import EmbeddingPreferenceCollator, number_tokenizer, parse_number, tiny_vlm


def unit_tiles(count: int, frames: int = 1, size: int = 8) -> torch.Tensor:
    x = torch.randn(count, frames, 64, size, size, generator=torch.Generator().manual_seed(0))
    return x / x.norm(dim=2, keepdim=True)


def test_number_tokenizer_round_trips_numbers() -> None:
    tokenizer = number_tokenizer()
    ids = tokenizer("-12.5", add_special_tokens=False).input_ids
    assert len(ids) == 5 and tokenizer.decode(ids).replace(" ", "") == "-12.5"
    assert parse_number("11.25<eos>") == 11.25 and parse_number("-3") == -3.0 and math.isnan(parse_number("x.y"))


def test_collator_lays_out_image_tokens_completions_and_pixels() -> None:
    tokenizer = number_tokenizer()
    tiles = unit_tiles(3, frames=2)
    collator = EmbeddingPreferenceCollator(tiles, tokenizer, patch_size=2, frames=2)
    batch = collator(
        [{"tile": 2, "chosen": "1.5", "rejected": "10.25"}, {"tile": 0, "chosen": "3.0", "rejected": "-1"}]
    )
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert batch["input_ids"].shape[0] == 4  # chosen rows, then rejected rows
    assert ((batch["input_ids"] == image_id).sum(dim=1) == 4).all()  # 4 x 4 patches -> 2 x 2 merged tokens
    assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == image_id).long())
    prompt = len(collator.prompt)
    texts = ["1.5", "3.0", "10.25", "-1"]
    for row, text in enumerate(texts):
        completion = batch["input_ids"][row][batch["completion_mask"][row].bool()]
        assert tokenizer.decode(completion[:-1]).replace(" ", "") == text
        assert completion[-1] == tokenizer.eos_token_id
        assert batch["attention_mask"][row, : prompt + len(text) + 1].all()
    assert batch["pixel_values"].shape == (4 * 16, 64 * 2 * 2 * 2)
    expected = qwen_patchify(tiles[2:3], patch_size=2)[0] * 8.0
    assert torch.allclose(batch["pixel_values"][:16], expected)  # row 0 is tile 2, both years
    assert torch.allclose(batch["pixel_values"][32:48], expected)  # and so is its rejected row
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]] * 4


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl"])
def test_tiny_vlm_scores_the_collated_batch(kind: str) -> None:
    tokenizer = number_tokenizer()
    vision = {"in_channels": 64, "patch_size": 2, "dim": 32, "depth": 1, "heads": 2, "mlp_ratio": 2.0,
              "window_size": 8, "fullatt_blocks": [0]}  # fmt: skip
    torch.manual_seed(0)
    model = tiny_vlm(kind, tokenizer, vision)
    collator = EmbeddingPreferenceCollator(unit_tiles(2), tokenizer, patch_size=2, frames=1)
    batch = collator([{"tile": 0, "chosen": "1.5", "rejected": "2.5"}])
    inputs = {key: value for key, value in batch.items() if key != "completion_mask"}
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    loss = model(**inputs, labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0  # the 64-channel tiles reach the loss
