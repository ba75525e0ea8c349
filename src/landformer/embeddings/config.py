"""The embeddings recipe: one YAML with ``data``, ``encoder``, ``mae``, ``sft``, ``dpo`` and one ``train_*`` section
per stage.

Plain dataclasses, no torch, so the CLI can read and check a recipe before importing anything heavy.
``configs/embeddings_tiny.yaml`` is the CPU default (the same values as these defaults);
``configs/embeddings_qwen2_vl_7b.yaml`` and ``configs/embeddings_qwen2_5_vl_7b.yaml`` are the GPU references.
``--set encoder.dim=256`` overrides single keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from landformer.core.config import check_values, option
from landformer.core.errors import UserError
from landformer.core.train import TrainConfig

EncoderKind = Literal["vit", "qwen2_vl", "qwen2_5_vl"]
# The training stages and the recipe section that holds each one's task settings (its train section: train_<stage>).
STAGE_SECTIONS = {"pretrain": "mae", "sft": "sft", "dpo": "dpo"}
STAGES = tuple(STAGE_SECTIONS)


@dataclass
class DataConfig:
    """Which tiles and labels, how they are split and augmented. Give ``dataset`` (a make-dataset folder) or
    ``tiles`` + ``labels``; with neither, the stages build the default city dataset in ``runs/embeddings/data``."""

    dataset: Path | None = None  # folder with dataset.json (written by `landformer embeddings make-dataset`)
    tiles: Path | None = None  # folder of <id>.tif/.tiff/.npy tiles, or a tiles.npz bundle
    labels: Path | None = None  # CSV or XLSX with one row per tile
    next_tiles: Path | None = None  # folder with the following year's tile of each id (a temporal pair)
    id_column: str = option("id", help="label column holding the tile id (default: id)")
    target_column: str = option("target", help="label column holding the target (default: target)")
    # region of each tile, held out as a whole; None: each tile alone
    group_column: str | None = option("group", help="label column of regions held out together")
    lon_column: str | None = "lon"
    lat_column: str | None = "lat"
    tile_degrees: float | None = None  # tiles + labels: tile side in degrees, to drop tiles overlapping across splits
    test_fraction: float = 0.2  # of the tiles, in whole groups
    val_fraction: float = 0.15
    split_seed: int = 0
    max_nodata: float = 0.5  # refuse tiles with more masked pixels than this
    check_unit_length: bool = True  # refuse tiles whose pixels are not unit vectors
    batch_size: int = 64
    num_workers: int = 0
    augment: bool = True  # flips, quarter turns and multi-scale crops of training tiles, drawn afresh each epoch
    crop_scales: list[float] = field(default_factory=lambda: [1.0, 0.8, 0.6])  # crop side / tile side
    crop_centred: bool = True  # crops share the tile's centre (a city-centred label stays centred); else anywhere
    samples_per_tile: int = 4  # augmented samples of each training tile per epoch

    def validate(self) -> None:
        if self.dataset is not None and (self.tiles is not None or self.labels is not None):
            raise UserError("embeddings data: give either dataset or tiles + labels, not both")
        if (self.tiles is None) != (self.labels is None):
            raise UserError("embeddings data: tiles and labels go together; give both")
        checks = [
            (0 < self.test_fraction < 1, f"test_fraction = {self.test_fraction} should lie in (0, 1)"),
            (0 < self.val_fraction < 1, f"val_fraction = {self.val_fraction} should lie in (0, 1)"),
            (self.test_fraction + self.val_fraction < 1, "test_fraction + val_fraction should leave training tiles"),
            (0 <= self.max_nodata <= 1, f"max_nodata = {self.max_nodata} should lie in [0, 1]"),
            (self.tile_degrees is None or self.tile_degrees > 0, f"tile_degrees = {self.tile_degrees} should be > 0"),
            (self.batch_size >= 1, f"batch_size = {self.batch_size} should be at least 1"),
            (self.samples_per_tile >= 1, f"samples_per_tile = {self.samples_per_tile} should be at least 1"),
            (bool(self.crop_scales), "crop_scales should list at least one scale"),
            (all(0 < s <= 1 for s in self.crop_scales), f"crop_scales {self.crop_scales} should lie in (0, 1]"),
        ]
        check_values("embeddings data", checks)


@dataclass
class EncoderConfig:
    """The encoder shared by every stage: the built-in ViT or a Qwen-VL vision tower with a 64-channel patch embed.

    For the Qwen towers, ``pretrained`` is a local folder of a Qwen2-VL / Qwen2.5-VL checkpoint (its vision weights
    are read, the 64-channel patch embedding replaces the RGB one); without it a random tower of the size below is
    built (tests and CPU smoke runs). ``patch_size`` must divide the tile size, and for Qwen towers the tile must
    hold an even number of patches per side (the 2x2 merger).
    """

    kind: EncoderKind = "vit"
    in_channels: int = 64
    patch_size: int = 4
    dim: int = 128  # ViT width / Qwen embed_dim of a random tower
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0  # Qwen random towers: MLP width / dim (the ViT uses SwiGLU of the same size)
    dropout: float = 0.0
    absolute_positions: bool = True  # ViT only: add a fixed sine-cosine embedding of each patch's place in the tile
    pretrained: Path | None = None  # Qwen only: local checkpoint folder (no download is ever attempted)
    patch_init: Literal["normal", "zero", "copy"] = "normal"  # how the new 64-channel patch weights start
    temporal_pair: bool = True  # Qwen only: fill the two temporal slots with two consecutive years when available
    gradient_checkpointing: bool = False  # Qwen only: recompute activations in the backward pass (saves memory)
    window_size: int = 112  # Qwen2.5-VL only: window-attention side in pixels
    fullatt_blocks: list[int] = field(default_factory=lambda: [3])  # Qwen2.5-VL only: full-attention layers

    def validate(self) -> None:
        checks = [
            (self.in_channels >= 1, f"in_channels = {self.in_channels} should be at least 1"),
            (self.patch_size >= 1, f"patch_size = {self.patch_size} should be at least 1"),
            (self.depth >= 1, f"depth = {self.depth} should be at least 1"),
            (self.heads >= 1 and self.dim % self.heads == 0, f"dim {self.dim} should be divisible by heads"),
            (self.pretrained is None or self.kind != "vit", "pretrained weights exist only for the Qwen towers"),
        ]
        if self.kind == "vit":
            checks.append(((self.dim // self.heads) % 4 == 0, "ViT head width (dim / heads) should divide by 4"))
        check_values("embeddings encoder", checks)


@dataclass
class MAEConfig:
    """Masked-autoencoder pretraining (He et al. 2022). The MAE module's own default decoder is the paper's light
    one (4 layers of 512, :class:`~landformer.embeddings.model.MaskedAutoencoder`), which the GPU reference recipes
    use; this CPU recipe halves the depth and quarters the width so a stage fits in a minute or two."""

    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True  # targets are patches normalized to zero mean, unit variance
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1

    def validate(self) -> None:
        if not 0 < self.mask_ratio < 1:
            raise UserError(f"embeddings mae: mask_ratio = {self.mask_ratio} should lie in (0, 1)")
        if self.decoder_dim % self.decoder_heads != 0 or (self.decoder_dim // self.decoder_heads) % 4 != 0:
            raise UserError(
                f"embeddings mae: decoder_dim {self.decoder_dim} / decoder_heads {self.decoder_heads} should be a "
                "whole head width divisible by 4"
            )


@dataclass
class SFTConfig:
    """Supervised fine-tuning of a regression head on pooled encoder features."""

    head_hidden: int = 128
    head_dropout: float = 0.1
    pooling: Literal["mean", "stats"] = "stats"  # stats: mean, centre-mean and spread of the patch tokens
    # LP-FT: add a linear branch on the mean raw embedding, start it at the ridge probe's fit and the deep head's
    # mean output at zero, so fine-tuning starts at the probe's predictions
    start_from_probe: bool = False
    probe_lr_scale: float = 1.0  # the probe branch trains at lr * this (0: it stays the ridge fit, a residual base)
    # the fine-tuned model replaces the step-0 probe only if its mean validation gain in squared error exceeds this
    # many standard errors (paired over validation tiles); 0: any gain
    probe_min_gain_se: float = 2.0
    lr: float = 3e-4
    encoder_lr_scale: float = 0.3  # the encoder trains at lr * this once unfrozen
    freeze_epochs: int = 1  # epochs with the encoder frozen (the head learns first)
    weight_decay: float = 0.05
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05
    lora: bool = False  # train low-rank adapters instead of the full encoder (meant for the 7B towers)
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["qkv", "proj", "fc1", "fc2"])

    def lora_settings(self) -> dict[str, Any] | None:
        """The adapters as the regression task takes them (plain values a checkpoint can hold), None without."""
        if not self.lora:
            return None
        return {
            "rank": self.lora_rank,
            "alpha": self.lora_alpha,
            "dropout": self.lora_dropout,
            "targets": self.lora_targets,
        }

    def validate(self) -> None:
        if self.freeze_epochs < 0:
            raise UserError(f"embeddings sft: freeze_epochs = {self.freeze_epochs} should not be negative")
        if self.probe_lr_scale < 0:
            raise UserError(f"embeddings sft: probe_lr_scale = {self.probe_lr_scale} should not be negative")
        if self.probe_min_gain_se < 0:
            raise UserError(f"embeddings sft: probe_min_gain_se = {self.probe_min_gain_se} should not be negative")
        if not 0 <= self.encoder_lr_scale <= 1:
            raise UserError(f"embeddings sft: encoder_lr_scale = {self.encoder_lr_scale} should lie in [0, 1]")


@dataclass
class DPOConfig:
    """Direct preference optimization of the Gaussian head against the frozen SFT model."""

    beta: float = 0.1
    pairs_per_tile: int = 8  # preference pairs drawn from the SFT model for every training tile
    lr: float = 2e-4
    encoder_lr_scale: float = 0.1
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    sample_scale: float = 1.0  # candidate predictions are drawn from N(mean, (scale * sd) ** 2) of the SFT model
    train_encoder: bool = False  # False: only the head moves (cheaper; the encoder stays the SFT one)
    route: Literal["gaussian", "text"] = "gaussian"  # text: a Qwen-VL writes the number, trained with trl's DPOTrainer
    text_model: Path | None = None  # text route: local Qwen-VL folder; None builds a tiny random one (CPU smoke run)
    decimals: int = 1  # text route: digits after the point in the numbers the model writes
    max_new_tokens: int = 8  # text route: tokens generated per tile when scoring

    def validate(self) -> None:
        if self.beta <= 0:
            raise UserError(f"embeddings dpo: beta = {self.beta} should be positive")
        if self.pairs_per_tile < 1:
            raise UserError(f"embeddings dpo: pairs_per_tile = {self.pairs_per_tile} should be at least 1")
        if self.sample_scale <= 0:
            raise UserError(f"embeddings dpo: sample_scale = {self.sample_scale} should be positive")
        if not 0 <= self.decimals <= 6:
            raise UserError(f"embeddings dpo: decimals = {self.decimals} should lie in 0..6")


def _stage_train(max_steps: int, monitor: str, patience: int | None, val_every: int = 25) -> TrainConfig:
    return TrainConfig(
        max_steps=max_steps,
        val_every_steps=val_every,
        log_every_steps=10,
        checkpoint_every_steps=100,
        monitor=monitor,
        early_stopping_patience=patience,
    )


@dataclass
class StageRecipe:
    """One stage's view of the recipe, in the shape :func:`~landformer.core.task.task_from_recipe` reads: the
    stage's task settings (``mae``, ``sft`` or ``dpo``) and its training section."""

    task: MAEConfig | SFTConfig | DPOConfig
    train: TrainConfig


@dataclass
class EmbeddingsConfig:
    """The whole recipe; each stage reads ``data``, ``encoder`` and its own sections."""

    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    train_pretrain: TrainConfig = field(default_factory=lambda: _stage_train(300, "val/loss", None, 50))
    train_sft: TrainConfig = field(default_factory=lambda: _stage_train(600, "val/r2_deficit", 10, 30))
    train_dpo: TrainConfig = field(default_factory=lambda: _stage_train(150, "val/r2_deficit", None))
    threads: int = 1  # torch CPU threads (small models on a shared CPU run fastest on one); 0: torch default

    def stage(self, name: str) -> StageRecipe:
        """The settings of stage ``name`` (pretrain, sft or dpo), for building its task."""
        return StageRecipe(getattr(self, STAGE_SECTIONS[name]), getattr(self, f"train_{name}"))

    def validate(self) -> None:
        self.data.validate()
        self.encoder.validate()
        self.mae.validate()
        self.sft.validate()
        self.dpo.validate()
