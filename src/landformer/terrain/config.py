"""The terrain recipes: one YAML per stage (tokenizer, generator), each with ``data``, ``model``, ``task``, ``train``.

Each ``model`` section is the network's own config dataclass (``terrain/model.py``), so a hyperparameter is
spelled once, and the tasks are built from the recipe by :func:`~landformer.core.task.task_from_recipe`.
``configs/terrain_tokenizer_tiny.yaml`` / ``configs/terrain_maskgit_tiny.yaml`` are the CPU defaults and the
``*_reference.yaml`` files beside them the GPU-sized recipes; ``--set model.channels=64`` overrides single keys.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from landformer.core.config import check_values
from landformer.core.errors import UserError
from landformer.core.train import TrainConfig

# jacksboro_west: the Jacksboro DEM but its east part, which stays unseen for evaluation (synth/packaged.py).
PACKAGED_DEMS = ("jacksboro_west", "jacksboro", "topobathy", "pvlib")
DEFAULT_PACKAGED_DEMS = ("jacksboro_west", "topobathy", "pvlib")
# pvlib's global 5' grid over all land but Antarctica (west, south, east, north); its flat tiles are dropped
# (see PVLIB_MIN_RELIEF_M in data.py), which leaves about 3,400 tiles of hill and mountain country at stride 16.
DEFAULT_PVLIB_BOXES = [[-180.0, -56.0, 180.0, 84.0]]


DISCRIMINATOR_FIELDS = ("disc_channels", "disc_layers")


@dataclass
class TokenizerModelConfig:
    """The tokenizer's architecture (every field but the discriminator's enters its identity hash) and the size
    of the PatchGAN discriminator that trains beside it; the ``model`` section of a tokenizer recipe."""

    channels: int = 32  # width at full resolution; doubles at each downsampling
    downsample: int = 4  # pixels per token side: 2 ** number of downsamplings
    res_blocks: int = 1  # residual blocks per resolution
    quantizer: Literal["vq", "fsq"] = "vq"  # l2-normalised low-dimensional codebook, or finite scalar quantization
    codebook_size: int = 512  # codes of the "vq" quantizer
    code_dim: int = 8  # dimension of the l2-normalised codes ("vq")
    fsq_levels: list[int] = field(default_factory=lambda: [8, 8, 8])  # levels per dimension ("fsq"): 512 codes
    commitment: float = 0.25  # weight of the commitment term of "vq"
    # How the decoder doubles its resolution. "nearest" copies each pixel into a 2x2 block, and the convolutions
    # after it never quite smooth the copies away: decoded terrain carries a token-sized lattice (its power at
    # the 4 px lattice frequencies 1.5-2x that beside them). "bilinear" interpolates instead.
    upsample: Literal["nearest", "bilinear"] = "nearest"
    # The discriminator is only trained against, never exported: these two stay out of the tokenizer's file.
    disc_channels: int = 32  # PatchGAN discriminator width
    disc_layers: int = 2  # stride-2 layers of the discriminator

    def __post_init__(self) -> None:
        if self.downsample < 1 or self.downsample & (self.downsample - 1):
            raise ValueError(f"downsample must be a power of two, got {self.downsample}")
        if self.quantizer not in ("vq", "fsq"):
            raise ValueError(f"quantizer must be 'vq' or 'fsq', got {self.quantizer!r}")
        if self.upsample not in ("nearest", "bilinear"):
            raise ValueError(f"upsample must be 'nearest' or 'bilinear', got {self.upsample!r}")

    def architecture(self) -> dict[str, Any]:
        """The fields that fix the exported tokenizer (all but the discriminator's), as plain values."""
        return {name: value for name, value in asdict(self).items() if name not in DISCRIMINATOR_FIELDS}

    @property
    def n_down(self) -> int:
        return int(math.log2(self.downsample))

    @property
    def vocab_size(self) -> int:
        return self.codebook_size if self.quantizer == "vq" else math.prod(self.fsq_levels)

    @property
    def latent_dim(self) -> int:
        return self.code_dim if self.quantizer == "vq" else len(self.fsq_levels)

    def level_channels(self, level: int) -> int:
        """Width at resolution level ``level`` (0 = full resolution): doubles once, then twice, then stays."""
        return self.channels * min(2**level, 4)


@dataclass
class MaskGITModelConfig:
    """MaskGIT's architecture; the ``model`` section of a generator recipe (training takes ``vocab_size``,
    ``grid`` and ``n_condition_classes`` from the tokenizer and the data instead of the recipe)."""

    vocab_size: int = 512  # codes of the tokenizer; the [MASK] token is index vocab_size
    grid: int = 8  # side of the training window in tokens
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    dropout: float = 0.1
    rope_base: float = 100.0
    n_condition_classes: int = 0  # 0: unconditional

    @property
    def mask_id(self) -> int:
        return self.vocab_size


@dataclass
class TerrainDataConfig:
    """Where elevation tiles come from and how they are cut (see ``terrain/data.py``).

    Sources add up: user DEMs (``dems``), chip files with an elevation channel (``chips``), DEMs that ship in
    installed packages (``packaged``) and a synthetic world (``world`` folder, or one of ``world_size`` pixels
    built in the run folder; 0 for none).
    """

    dems: list[Path] = field(default_factory=list)  # GeoTIFF (any GDAL raster) DEMs in metres, any size
    chips: list[Path] = field(default_factory=list)  # chip files (core/chips.py) holding an elevation channel
    chip_channel: str | None = None  # that channel's name; None: the first named like "elevation" or "dem"
    packaged: list[str] = field(default_factory=lambda: list(DEFAULT_PACKAGED_DEMS))  # any of PACKAGED_DEMS
    pvlib_boxes: list[list[float]] = field(default_factory=lambda: [list(box) for box in DEFAULT_PVLIB_BOXES])
    world: Path | None = None  # folder of `landformer synth world`; its elevation.tif is used
    world_size: int = 0  # side of a synthetic world built in the run folder when `world` is not given; 0: none
    world_seed: int | None = None  # seed of that world; None: the train seed
    conditions: list[Path] = field(default_factory=list)  # one categorical raster per DEM in `dems`
    condition_legend: str | None = None  # legend of the condition rasters (nlcd, corine or a JSON path); None: off
    # Pixel-size classes (edges in metres) that MaskGIT is conditioned on, e.g. [500, 5000]: under 500 m, 500 m to
    # 5 km, coarser. Tiles from 84 m and 9 km DEMs look different, and unconditioned samples drew the mix; with
    # classes, a map is continued (and sampled) in the style of DEMs of its own pixel size. Empty: no classes.
    scale_classes: list[float] = field(default_factory=list)
    tile_size: int = 32  # side of the training tiles in pixels
    stride: int = 16  # step between tiles inside a split block
    block_size: int = 128  # side of the square blocks of the spatial train/validation split
    val_fraction: float = 0.2  # fraction of blocks held out for validation (and the realism benchmark)
    split_seed: int = 0  # which blocks are held out
    max_tiles_per_source: int = 4000  # random subset of a source's training tiles when it offers more
    min_relief: float = 1.0  # drop tiles whose standard deviation (m) is below this: per-tile scaling needs relief
    augment: bool = True  # random flips and quarter turns (terrain has no preferred orientation)
    batch_size: int = 32
    assume_crs: str | None = None  # CRS for DEMs that carry none

    def validate(self) -> None:
        unknown = [name for name in self.packaged if name not in PACKAGED_DEMS]
        if unknown:
            raise UserError(f"terrain data: unknown packaged DEM(s) {unknown} (choose from {', '.join(PACKAGED_DEMS)})")
        for box in self.pvlib_boxes:
            if len(box) != 4:
                raise UserError(f"terrain data: pvlib box {box} should be [west, south, east, north]")
        if self.conditions and self.condition_legend is None:
            raise UserError("terrain data: condition rasters were given without a condition_legend (e.g. nlcd)")
        if self.scale_classes:
            edges = [float(edge) for edge in self.scale_classes]
            if any(edge <= 0 for edge in edges) or edges != sorted(set(edges)):
                raise UserError(f"terrain data: scale_classes {self.scale_classes} should rise, in positive metres")
            if self.condition_legend is not None:
                raise UserError("terrain data: condition on scale_classes or on condition rasters, not both")
        if self.condition_legend is not None:
            if len(self.conditions) != len(self.dems):
                raise UserError(
                    f"terrain data: {len(self.conditions)} condition raster(s) for {len(self.dems)} DEM(s); "
                    "give one per DEM"
                )
            if self.packaged or self.chips:
                raise UserError(
                    "terrain data: packaged DEMs and chip files carry no condition map; set packaged: [] and "
                    "chips: [] when training with condition_legend"
                )
        checks = [
            (self.tile_size >= 8 and self.tile_size % 4 == 0, f"tile_size = {self.tile_size} should be >= 8, a x4"),
            (self.stride >= 1, f"stride = {self.stride} should be at least 1"),
            (self.block_size >= self.tile_size, f"block_size = {self.block_size} is smaller than the tile size"),
            (0 < self.val_fraction < 1, f"val_fraction = {self.val_fraction} should lie strictly in (0, 1)"),
            (self.max_tiles_per_source >= 1, f"max_tiles_per_source = {self.max_tiles_per_source} should be >= 1"),
            (self.min_relief >= 0, f"min_relief = {self.min_relief} should not be negative"),
            (self.world_size == 0 or self.world_size >= 32, f"world_size = {self.world_size}: 0 or at least 32"),
            (self.batch_size >= 1, f"batch_size = {self.batch_size} should be at least 1"),
        ]
        check_values("terrain data", checks)


@dataclass
class TokenizerTaskSection:
    """Optimisation and losses of the tokenizer."""

    lr: float = 2e-3
    disc_lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    l1_weight: float = 1.0
    gradient_weight: float = 1.0  # L1 between slopes (finite differences)
    spectral_weight: float = 0.1  # L1 between log power spectra at several scales
    perceptual_weights: Path | None = None  # local torchvision VGG16 weights; None: no perceptual loss
    perceptual_weight: float = 0.1
    disc_start: int = 100  # generator steps before the adversarial loss is switched on
    disc_weight: float = 0.1  # scale of the adaptive adversarial weight
    disc_high_loss: float = 0.9  # hinge loss of the discriminator at which its weight on the generator reaches 0
    disc_low_loss: float = 0.6  # ... and below which it is in full force
    gradient_clip: float = 1.0  # clip each network's gradient norm (manual optimisation clips itself)


@dataclass
class TokenizerConfig:
    data: TerrainDataConfig = field(default_factory=TerrainDataConfig)
    # Recipes decode with bilinear upsampling unless told otherwise (nearest leaves a token lattice); a tokenizer
    # built without a recipe keeps the network's own default.
    model: TokenizerModelConfig = field(default_factory=lambda: TokenizerModelConfig(upsample="bilinear"))
    task: TokenizerTaskSection = field(default_factory=TokenizerTaskSection)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class MaskGITTaskSection:
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    outpaint_mask_prob: float = 0.5  # share of training masks shaped like the outpainting windows
    condition_dropout: float = 0.1  # share of samples trained without their condition map
    label_smoothing: float = 0.1


@dataclass
class SamplingSection:
    """How tokens are decoded (``terrain sample``, ``expand``, ``world``)."""

    steps: int = 10  # MaskGIT decoding steps for a fully masked window (fewer for fewer masked tokens)
    temperature: float = 1.0  # softmax temperature of the token samples
    choice_temperature: float = 10.0  # Gumbel noise on the confidences, annealed to 0 over the steps
    bf16: bool = True  # run the transformer under bfloat16 autocast while sampling (about 2x faster on CPUs)


@dataclass
class MaskGITConfig:
    tokenizer: Path = Path("runs/terrain/tokenizer")  # run folder (or .safetensors) of the trained tokenizer
    data: TerrainDataConfig = field(default_factory=TerrainDataConfig)
    model: MaskGITModelConfig = field(
        default_factory=MaskGITModelConfig
    )  # vocab_size, grid, classes: from tokenizer, data
    task: MaskGITTaskSection = field(default_factory=MaskGITTaskSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    train: TrainConfig = field(default_factory=TrainConfig)
