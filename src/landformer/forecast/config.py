"""The forecast recipe: one YAML with ``data``, ``model``, ``task``, ``train`` and ``predict`` sections.

Plain dataclasses, no torch, so the CLI can load and check a recipe, and turn the predict section into the flags
of ``forecast predict``, without importing anything heavy. That is also why the network's own config,
:class:`ForecastModelConfig`, lives here rather than in ``model.py``: the recipe's ``model`` section *is* it, and
``model.py`` imports it from here. ``configs/forecast_tiny.yaml`` (the CPU default) and
``configs/forecast_reference.yaml`` (GPU-sized) are instances of :class:`ForecastConfig`; ``--set
data.chip_size=48`` overrides single keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from landformer.core.config import check_values, load_config, option
from landformer.core.errors import UserError
from landformer.core.train import TrainConfig

QUANTILES_95 = (0.025, 0.5, 0.975)  # the heads of a 95 % interval around the median


@dataclass
class ForecastDataConfig:
    """Where the series comes from and how it is cut into training windows (see ``forecast/data.py``).

    Give at most one of ``world`` (a synthetic world folder), ``series`` + ``years``, or ``pattern``; with none,
    training builds a synthetic world of ``world_size`` pixels in the run folder.
    """

    world: Path | None = None  # folder written by `landformer synth world`: its HM series and elevation
    series: list[Path] = field(default_factory=list)  # rasters of the series, oldest first
    years: list[int] = field(default_factory=list)  # one year per raster of `series`, evenly spaced
    pattern: str | None = None  # e.g. "data/hm_{year}.tif": every file matching it, ordered by year
    covariates: list[Path] = field(default_factory=list)  # static rasters (a DEM, ...) on any grid
    world_size: int = 256  # side in pixels of the world built when no data is given
    world_seed: int | None = None  # seed of that world; None: the train seed
    scale: float | None = None  # raw value / scale = series units; None: 10000 if values exceed 1, else 1
    # [low, high] in series units that forecasts are clipped to; None: 0..1 when the training values lie in it
    # (HM), else no clipping
    valid_range: list[float] | None = None
    # Series rasters must share the first one's size, CRS and transform; true resamples those on another grid onto
    # it (bilinear) instead of refusing them.
    align_series: bool = False
    assume_crs: str | None = None  # CRS for rasters that carry none
    n_input_steps: int = 3  # K: steps the model reads
    n_horizons: int = 4  # H: steps it forecasts
    min_input_steps: int = 2  # training windows may start before the series with this many inputs observed
    chip_size: int = 32  # side of training chips in pixels
    chip_stride: int = 16  # step between training chips inside a block
    max_train_chips: int = 4000  # random subset of training chips when a large raster offers more
    block_size: int = 64  # side of the square blocks of the spatial split
    test_fraction: float = 0.25  # blocks held out for `forecast evaluate`
    val_fraction: float = 0.125  # blocks for validation (early stopping, best checkpoint)
    split_seed: int = 0  # which blocks are held out
    max_nodata: float = 0.5  # drop training chips whose inputs or targets miss more than this fraction
    normalizer: Literal["zscore", "minmax"] = "zscore"
    augment: bool = True  # random flips and quarter turns of training chips
    batch_size: int = 16
    num_workers: int = 0

    def validate(self) -> None:
        given = [name for name in ("world", "series", "pattern") if getattr(self, name)]
        if len(given) > 1:
            raise UserError(f"forecast data: give only one of world, series and pattern (got {', '.join(given)})")
        if self.years and not self.series:
            raise UserError("forecast data: years were given without the series rasters they date")
        if self.series and len(self.series) != len(self.years):
            raise UserError(
                f"forecast data: {len(self.series)} series rasters but {len(self.years)} years; give one year each"
            )
        if self.pattern is not None and "{year}" not in self.pattern:
            raise UserError(f"forecast data: pattern {self.pattern!r} should contain {{year}}, e.g. hm_{{year}}.tif")
        checks = [
            (self.n_input_steps >= 1, f"n_input_steps = {self.n_input_steps} should be at least 1"),
            (self.n_horizons >= 1, f"n_horizons = {self.n_horizons} should be at least 1"),
            (
                1 <= self.min_input_steps <= self.n_input_steps,
                f"min_input_steps = {self.min_input_steps} should lie in 1..n_input_steps",
            ),
            (self.chip_size >= 4, f"chip_size = {self.chip_size} should be at least 4"),
            (self.chip_stride >= 1, f"chip_stride = {self.chip_stride} should be at least 1"),
            (self.block_size >= self.chip_size, f"block_size = {self.block_size} is smaller than the chip size"),
            (self.max_train_chips >= 1, f"max_train_chips = {self.max_train_chips} should be at least 1"),
            (0 < self.test_fraction < 1, f"test_fraction = {self.test_fraction} should lie strictly in (0, 1)"),
            (0 < self.val_fraction < 1, f"val_fraction = {self.val_fraction} should lie strictly in (0, 1)"),
            (self.test_fraction + self.val_fraction < 1, "test_fraction + val_fraction should leave training blocks"),
            (0 <= self.max_nodata <= 1, f"max_nodata = {self.max_nodata} should lie in [0, 1]"),
            (self.scale is None or self.scale > 0, f"scale = {self.scale} should be positive"),
            (
                self.valid_range is None or (len(self.valid_range) == 2 and self.valid_range[0] < self.valid_range[1]),
                f"valid_range = {self.valid_range} should be [low, high] with low < high",
            ),
            (self.world_size >= 32, f"world_size = {self.world_size} should be at least 32"),
            (self.batch_size >= 1, f"batch_size = {self.batch_size} should be at least 1"),
        ]
        check_values("forecast data", checks)


@dataclass
class ForecastModelConfig:
    """The ConvLSTM's size (``model.py``). Training takes the four data-shaped fields (channel counts, K and H)
    from the data, whatever the recipe says; an exported model stores them all."""

    n_series_channels: int = 1
    n_covariate_channels: int = 1
    n_input_steps: int = 3  # K, the data pipeline's default; the model itself accepts any K
    n_horizons: int = 4  # H, the default roll-out length
    # one ConvLSTM layer per entry, in encoder and forecaster alike
    hidden_channels: list[int] = field(default_factory=lambda: [16, 16])
    kernel_size: int = 3
    quantiles: tuple[float, ...] = ()  # empty: one point forecast; else pinball-trained heads, 0.5 required

    def __post_init__(self) -> None:
        # One type each whether built from YAML or in Python, so configs compare equal after a YAML round trip.
        self.hidden_channels = list(self.hidden_channels)
        self.quantiles = tuple(self.quantiles)
        checks = [
            (self.n_series_channels >= 1, "n_series_channels should be at least 1"),
            (self.n_covariate_channels >= 0, "n_covariate_channels should be 0 or more"),
            (self.n_input_steps >= 1, "n_input_steps should be at least 1"),
            (self.n_horizons >= 1, "n_horizons should be at least 1"),
            (len(self.hidden_channels) >= 1, "hidden_channels should list at least one layer"),
            (all(width >= 1 for width in self.hidden_channels), "hidden_channels should all be positive"),
            (self.kernel_size >= 1 and self.kernel_size % 2 == 1, "kernel_size should be a positive odd number"),
        ]
        if self.quantiles:
            in_range = all(0.0 < q < 1.0 for q in self.quantiles)
            increasing = all(a < b for a, b in zip(self.quantiles, self.quantiles[1:], strict=False))
            checks.append((in_range and increasing, "quantiles should increase strictly inside (0, 1)"))
            checks.append((0.5 in self.quantiles, "quantiles should include 0.5, the point forecast"))
        check_values("forecast model config", checks)


def tiny_recipe_model() -> ForecastModelConfig:
    """The tiny recipe's network: two 16-channel layers with the 95 % interval heads."""
    return ForecastModelConfig(hidden_channels=[16, 16], kernel_size=3, quantiles=QUANTILES_95)


@dataclass
class ForecastTaskSection:
    """Optimisation and loss."""

    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    teacher_forcing: float = 0.5  # scheduled-sampling probability at step 0, decaying linearly to 0
    point_loss: Literal["mse", "pinball"] = "mse"  # how the point (0.5) head is trained; see task.py
    threads: int = 1  # torch CPU threads while training; 0: torch's default. Small convolutions: 1 is fastest


FROM_RUN = " (default: the run's recipe, predict section)"


@dataclass
class ForecastPredictSection:
    """Whole-raster inference (``forecast predict``); each option is also a flag of that command."""

    # a multiple of the GeoTIFF block so every write fills whole blocks
    tile: int = option(
        512, help="output block side in pixels (a multiple of 256 writes whole GeoTIFF blocks)" + FROM_RUN
    )
    # cross-faded linearly; 1.13 px forecast per px
    overlap: int = option(32, help="pixels shared by neighbouring tiles (even)" + FROM_RUN)
    # one 544 px tile of the tiny model needs about 0.4 GB
    batch_size: int = option(1, help="tiles per forward pass" + FROM_RUN)
    # bounds memory on huge rasters
    panel_width: int = option(4096, help="widest strip processed at once" + FROM_RUN)
    device: str = option("cpu", help="torch device: cpu, cuda, cuda:1, mps" + FROM_RUN)
    # on a busy CPU, 1 can be faster
    threads: int = option(0, help="torch CPU threads, 0 for torch's default" + FROM_RUN)
    precision: Literal["auto", "fp32", "bf16"] = option(
        "auto", help="arithmetic of the convolutions: auto is bf16 where native" + FROM_RUN
    )
    # fuse the LSTM gate arithmetic into one compiled kernel (needs a C++ compiler); None: on rasters of 16 Mpx
    # or more, where its 10-40 s of compiling pay off. Its --compile/--no-compile flag is declared in cli.py, as a
    # three-way switch is not an option() flag.
    compile: bool | None = None


def tiny_train_config() -> TrainConfig:
    """The tiny recipe's training schedule: a few hundred steps, validation every 25, early stopping."""
    return TrainConfig(
        max_steps=300,
        val_every_steps=25,
        checkpoint_every_steps=100,
        log_every_steps=10,
        early_stopping_patience=4,
    )


@dataclass
class ForecastConfig:
    """The whole recipe; the defaults are the tiny CPU recipe (``configs/forecast_tiny.yaml``)."""

    data: ForecastDataConfig = field(default_factory=ForecastDataConfig)
    model: ForecastModelConfig = field(default_factory=tiny_recipe_model)
    task: ForecastTaskSection = field(default_factory=ForecastTaskSection)
    train: TrainConfig = field(default_factory=tiny_train_config)
    predict: ForecastPredictSection = field(default_factory=ForecastPredictSection)


def recipe_model(recipe: str) -> ForecastModelConfig:
    """The network of the packaged recipe ``recipe`` (its ``model:`` section): the size presets live in the
    recipes, and :func:`tiny` and :func:`reference` only read them."""
    return load_config(ForecastConfig, recipe).model


def tiny() -> ForecastModelConfig:
    """The network of ``configs/forecast_tiny.yaml`` with a point head only (no interval heads): trains in minutes
    on a 2-core CPU on 32x32 chips."""
    return dataclasses.replace(recipe_model("forecast_tiny"), quantiles=())


def reference() -> ForecastModelConfig:
    """The network of ``configs/forecast_reference.yaml``: GPU-sized, close to the original ConvLSTM paper's, with
    the 95 % interval heads."""
    return recipe_model("forecast_reference")
