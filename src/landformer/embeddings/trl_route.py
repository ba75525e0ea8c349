"""Stage 3, text route: DPO of a text-generating Qwen2-VL / Qwen2.5-VL on 64-channel tiles with trl's DPOTrainer.

The vision-language model reads a tile as an image (its vision tower has the 64-channel patch embedding) and
writes the target as text, e.g. ``value: 11.3``. Preference pairs come from the SFT regressor as in the Gaussian
route (two numbers drawn from its predictive distribution, the one closer to the truth chosen), formatted with
``dpo.decimals`` decimals. trl's :class:`~trl.DPOTrainer` computes the DPO loss on the completions' token
log-probabilities against a frozen copy of the starting model.

trl's own vision collator runs the Qwen image processor on RGB pictures; :class:`EmbeddingPreferenceCollator`
replaces it: it patchifies the 64-channel tiles with :func:`~landformer.embeddings.qwen.qwen_patchify` (the
processor's patch order, temporal pair included), writes one ``<|image_pad|>`` token per merged 2x2 block, and
returns the keys trl expects (chosen rows first, then rejected rows; ``mm_token_type_ids`` marks image tokens, as
Qwen2-VL requires whenever ``image_grid_thw`` is passed).

With ``dpo.text_model`` (a local Qwen-VL folder: its tokenizer and weights) the route fine-tunes that model; without
it a tiny random model with a character-level number tokenizer is built, which exercises the route on a CPU but
cannot be expected to produce good numbers. After training the model generates a number for each validation and
test tile (greedy); the summary reports how many parse and their R2, and trl's preference metrics on held-out
validation pairs.
"""

from __future__ import annotations

import copy
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landformer.core.config import to_dict
from landformer.core.errors import UserError
from landformer.core.io import write_json
from landformer.core.train import prepare_run, seed_everything
from landformer.embeddings.config import EmbeddingsConfig
from landformer.embeddings.data import load_data, make_pairs, set_threads
from landformer.embeddings.evaluate import predict, regression_metrics
from landformer.embeddings.export import load
from landformer.embeddings.qwen import MERGE, qwen_patchify, random_vision_config, replace_patch_embedding
from landformer.embeddings.tiles import EmbeddingDataset

# transformers, trl, datasets and tokenizers take seconds to import and are optional extras: each is imported
# inside the function that needs it.
NUMBER_CHARACTERS = list("0123456789.- ")
SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
PROMPT_TEXT = "value:"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def number_tokenizer() -> Any:
    """A character-level tokenizer for numbers plus the Qwen vision tokens (for random test-size models)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, PROMPT_TEXT, *NUMBER_CHARACTERS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        additional_special_tokens=[*SPECIAL_TOKENS[3:], PROMPT_TEXT],
    )


def _model_classes(kind: str) -> tuple[type, type, type]:
    if kind == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

        return Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    if kind == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

        return Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    raise UserError(f"the text route needs a Qwen-VL kind (qwen2_vl or qwen2_5_vl), got {kind!r}")


def tiny_vlm(kind: str, tokenizer: Any, vision: dict[str, Any]) -> Any:
    """A random Qwen-VL with a 64-channel vision tower of the given size and a 1-layer text model."""
    config_class, model_class, _ = _model_classes(kind)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    text = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 64,
        "vocab_size": len(tokenizer),
        "pad_token_id": ids["<pad>"],
        "eos_token_id": ids["<eos>"],
        "bos_token_id": None,
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
    }
    vision_config = random_vision_config(kind, vision).to_dict()
    vision_config["in_channels"] = int(vision["in_channels"])
    if kind == "qwen2_5_vl":
        vision_config["out_hidden_size"] = text["hidden_size"]
    else:
        vision_config["hidden_size"] = text["hidden_size"]
    config = config_class(
        text_config=text,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = model_class(config)
    model.generation_config.pad_token_id = ids["<pad>"]
    model.generation_config.eos_token_id = ids["<eos>"]
    model.generation_config.bos_token_id = None
    return model


def load_vlm(kind: str, folder: Path, patch_init: str) -> tuple[Any, Any]:
    """A local Qwen-VL checkpoint and its tokenizer, with the vision tower's patch embedding made 64-channel."""
    from transformers import AutoTokenizer

    _, model_class, _ = _model_classes(kind)
    if not (folder / "config.json").is_file():
        raise UserError(f"dpo.text_model {folder} is not a local model folder (no config.json)")
    model = model_class.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    replace_patch_embedding(model.model.visual, 64, patch_init)
    return model, tokenizer


def build_processor(kind: str, tokenizer: Any) -> Any:
    """The processor trl needs to recognise a vision-language model (its image part is never used here)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    _, _, processor_class = _model_classes(kind)
    return processor_class(
        image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor()
    )


def format_number(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def parse_number(text: str) -> float:
    """The first number in generated text, NaN if there is none."""
    match = NUMBER.search(text)
    return float(match.group(0)) if match else math.nan


class EmbeddingPreferenceCollator:
    """Batches ``{"tile", "chosen", "rejected"}`` records into the inputs of trl's DPO loss for a Qwen-VL model."""

    def __init__(self, tiles: Tensor, tokenizer: Any, patch_size: int, frames: int) -> None:
        self.tiles = tiles  # (N, F, 64, H, W)
        self.tokenizer = tokenizer
        self.patch_size = patch_size
        self.frames = frames
        size = tiles.shape[-1]
        if size % (patch_size * MERGE):
            raise UserError(f"tiles of {size} px are not whole {MERGE}x{MERGE} blocks of {patch_size}-pixel patches")
        self.grid = size // patch_size
        image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.image_token_id = image_pad
        self.prompt = [
            tokenizer.convert_tokens_to_ids("<|vision_start|>"),
            *[image_pad] * (self.grid * self.grid // MERGE**2),
            tokenizer.convert_tokens_to_ids("<|vision_end|>"),
            *tokenizer(PROMPT_TEXT, add_special_tokens=False).input_ids,
        ]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def pixels(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        frames = self.tiles[indices][:, : self.frames]
        patches = qwen_patchify(frames, self.patch_size) * math.sqrt(frames.shape[2])
        grid = torch.tensor([[1, self.grid, self.grid]] * len(indices))
        return patches.reshape(-1, patches.shape[-1]), grid

    def prompt_inputs(self, indices: list[int]) -> dict[str, Tensor]:
        """Prompts only (for generation)."""
        input_ids = torch.tensor([self.prompt] * len(indices))
        pixel_values, grid = self.pixels(indices)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": pixel_values,
            "image_grid_thw": grid,
            "mm_token_type_ids": (input_ids == self.image_token_id).long(),
        }

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        texts = [example["chosen"] for example in examples] + [example["rejected"] for example in examples]
        indices = [int(example["tile"]) for example in examples] * 2
        completions = [
            [*self.tokenizer(text, add_special_tokens=False).input_ids, self.tokenizer.eos_token_id] for text in texts
        ]
        length = len(self.prompt) + max(len(ids) for ids in completions)
        input_ids = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        completion_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(completions):
            end = len(self.prompt) + len(ids)
            input_ids[row, :end] = torch.tensor(self.prompt + ids)
            attention[row, :end] = 1
            completion_mask[row, len(self.prompt) : end] = 1
        pixel_values, grid = self.pixels(indices)
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "completion_mask": completion_mask,
            "pixel_values": pixel_values,
            "image_grid_thw": grid,
            "mm_token_type_ids": (input_ids == self.image_token_id).long(),
        }


@torch.no_grad()
def generate_numbers(model: Any, collator: EmbeddingPreferenceCollator, indices: np.ndarray, max_new_tokens: int,
                     batch_size: int = 16) -> np.ndarray:  # fmt: skip
    """Greedy completion of the prompt for each tile, parsed as a number (NaN when the text holds none)."""
    model.eval()
    values = []
    for start in range(0, len(indices), batch_size):
        chosen = [int(i) for i in indices[start : start + batch_size]]
        inputs = collator.prompt_inputs(chosen)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        texts = collator.tokenizer.batch_decode(output[:, len(collator.prompt) :], skip_special_tokens=True)
        values.extend(parse_number(text.replace(" ", "")) for text in texts)
    return np.array(values, dtype=np.float64)


def _generated_scores(dataset: EmbeddingDataset, indices: np.ndarray, values: np.ndarray) -> dict[str, Any]:
    parsed = np.isfinite(values)
    scores: dict[str, Any] = {"n": len(indices), "parsed": int(parsed.sum())}
    if parsed.sum() >= 2:
        scores.update(regression_metrics(dataset.targets[indices][parsed], values[parsed]))
    return scores


def _pair_records(dataset: EmbeddingDataset, split: str, mean: np.ndarray, sd: np.ndarray, config: EmbeddingsConfig,
                  seed: int) -> list[dict[str, Any]]:  # fmt: skip
    indices = dataset.indices(split)
    tiles, chosen, rejected = make_pairs(
        mean[indices], sd[indices], dataset.targets[indices], config.dpo.pairs_per_tile, config.dpo.sample_scale, seed
    )
    decimals = config.dpo.decimals
    records = []
    for tile, good, bad in zip(indices[tiles], chosen, rejected, strict=True):
        good_text, bad_text = format_number(good, decimals), format_number(bad, decimals)
        if good_text != bad_text:  # pairs that read the same carry no preference
            records.append({"tile": int(tile), "images": [int(tile)], "prompt": "", "chosen": good_text,
                            "rejected": bad_text})  # fmt: skip
    return records


def trl_checkpoint(run_dir: Path, resume: bool | str | os.PathLike[str]) -> str | None:
    """The trainer checkpoint to resume from: None for a fresh run, the latest ``trl/checkpoint-*`` for
    ``resume=True``, or the given folder. A fresh run into a folder that already holds checkpoints is refused."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = run_dir / "trl"
    latest = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    if resume is False:
        if latest is not None:
            raise UserError(f"{run_dir} already holds a text-route run ({latest}): resume it or choose another folder")
        return None
    if resume is True:
        if latest is None:
            raise UserError(f"nothing to resume: {folder} holds no checkpoint-* folder")
        return latest
    if not (Path(resume) / "trainer_state.json").is_file():
        raise UserError(f"{resume} is not a trl checkpoint folder (it has no trainer_state.json)")
    return str(resume)


def text_dpo(
    config: EmbeddingsConfig,
    run_dir: str | os.PathLike[str],
    sft: str | os.PathLike[str],
    resume: bool | str | os.PathLike[str] = False,
) -> dict[str, Any]:
    """Run trl's DPOTrainer on number-as-text preference pairs drawn from the SFT regressor in ``sft``.

    The trainer saves a checkpoint (safetensors weights; optimizer, scheduler and RNG states that transformers reads
    back with ``weights_only=True``) every ``train_dpo.checkpoint_every_steps`` under ``run_dir/trl``; ``resume``
    continues from the latest one (or a given one). The starting model is rebuilt the same way (the same local
    checkpoint, or the same seeded tiny model), so the frozen reference is the same on resume.
    """
    from datasets import Dataset
    from trl import DPOConfig as TrlDPOConfig
    from trl import DPOTrainer

    start = time.perf_counter()
    run_dir = Path(run_dir)
    config.validate()
    checkpoint = trl_checkpoint(run_dir, resume)
    regressor, meta = load(sft)
    prepare_run(run_dir, config, "embeddings dpo (text route)")
    set_threads(config)
    dataset = load_data(config.data, int(meta["encoder"]["in_channels"]))
    mean, sd = predict(regressor, meta, dataset, np.arange(len(dataset)))
    seed = config.train_dpo.seed
    train_records = _pair_records(dataset, "train", mean, sd, config, seed)
    val_records = _pair_records(dataset, "val", mean, sd, config, seed + 1)
    if not train_records:
        raise UserError("every preference pair reads the same at dpo.decimals; use more decimals")

    seed_everything(seed)
    kind = config.encoder.kind if config.encoder.kind != "vit" else "qwen2_vl"
    if config.dpo.text_model is not None:
        model, tokenizer = load_vlm(kind, Path(config.dpo.text_model), config.encoder.patch_init)
    else:
        tokenizer = number_tokenizer()
        # The recipe's encoder section sizes the tower; the tiny model's MLP is half as wide, and it reads 64 channels.
        model = tiny_vlm(kind, tokenizer, {**to_dict(config.encoder), "in_channels": 64, "mlp_ratio": 2.0})
    patch_size = int(model.config.vision_config.patch_size)
    frames = 2 if config.encoder.temporal_pair and dataset.n_frames >= 2 else 1
    collator = EmbeddingPreferenceCollator(torch.from_numpy(dataset.tiles), tokenizer, patch_size, frames)
    generated_before = {
        split: _generated_scores(dataset, dataset.indices(split), generate_numbers(
            model, collator, dataset.indices(split), config.dpo.max_new_tokens))
        for split in ("val", "test") if len(dataset.indices(split))
    }  # fmt: skip
    precision = config.train_dpo.precision
    args = TrlDPOConfig(
        output_dir=str(run_dir / "trl"),
        per_device_train_batch_size=config.data.batch_size,
        per_device_eval_batch_size=config.data.batch_size,
        max_steps=config.train_dpo.max_steps,
        learning_rate=config.dpo.lr,
        weight_decay=config.dpo.weight_decay,
        warmup_steps=config.dpo.warmup_steps,
        beta=config.dpo.beta,
        seed=seed,
        logging_steps=config.train_dpo.log_every_steps,
        eval_strategy="steps" if val_records else "no",
        eval_steps=config.train_dpo.val_every_steps,
        save_strategy="steps",
        save_steps=config.train_dpo.checkpoint_every_steps,
        save_total_limit=2,
        report_to=[],
        remove_unused_columns=False,
        gradient_checkpointing=config.encoder.gradient_checkpointing,
        bf16=precision.startswith("bf16"),
        use_cpu=config.train_dpo.accelerator == "cpu" or not torch.cuda.is_available(),
        disable_tqdm=not config.train_dpo.progress_bar,
        dataloader_num_workers=0,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model).eval(),
        args=args,
        train_dataset=Dataset.from_list(train_records),
        eval_dataset=Dataset.from_list(val_records) if val_records else None,
        processing_class=build_processor(kind, tokenizer),
        data_collator=collator,
    )
    result = trainer.train(resume_from_checkpoint=checkpoint)
    held_out = trainer.evaluate() if val_records else {}
    model = trainer.model
    generated_after = {
        split: _generated_scores(dataset, dataset.indices(split), generate_numbers(
            model, collator, dataset.indices(split), config.dpo.max_new_tokens))
        for split in ("val", "test") if len(dataset.indices(split))
    }  # fmt: skip
    model.save_pretrained(run_dir / "text_model")
    tokenizer.save_pretrained(run_dir / "text_model")
    summary = {
        "run_dir": str(run_dir),
        "text_model": str(run_dir / "text_model"),
        "kind": kind,
        "pretrained": str(config.dpo.text_model) if config.dpo.text_model else None,
        "n_train_pairs": len(train_records),
        "n_val_pairs": len(val_records),
        "global_step": int(result.global_step),
        "resumed_from": checkpoint,
        "train_loss": float(result.training_loss),
        "held_out_pairs": {key: float(value) for key, value in held_out.items() if isinstance(value, int | float)},
        "generated_before": generated_before,
        "generated_after": generated_after,
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(run_dir / "summary.json", summary)
    return summary
