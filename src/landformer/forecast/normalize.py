"""Per-channel affine normalizers, fitted on valid training pixels only and saved as JSON.

The model trains on normalized values, but every number and picture a user sees is in the series' own units,
so the normalizer travels with the checkpoint and ``inverse`` undoes ``transform`` exactly up to float
rounding. Both scalers are affine, ``(x - offset) / scale`` per channel, which keeps masks, persistence and
linear trends meaningful in either space (an affine map preserves "last value" and "straight line").

Arrays may be NumPy arrays or torch tensors of any layout; ``channel_axis`` (default ``-3``) names the channel
axis, which fits (C, H, W), (N, C, H, W) chips and (N, T, C, H, W) series alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from landformer.core.errors import UserError

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)
NormalizerKind = Literal["zscore", "minmax"]


def _valid_values_per_channel(
    values: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor | None, channel_axis: int
) -> list[np.ndarray]:
    """The finite, unmasked values of each channel as float64 vectors (NaN nodata is never counted)."""
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    array = np.moveaxis(array.astype(np.float64, copy=False), channel_axis, 0)
    valid = np.isfinite(array)
    if mask is not None:
        mask_array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if mask_array.shape != np.shape(values):
            raise ValueError(f"mask shape {mask_array.shape} differs from values shape {np.shape(values)}")
        valid &= np.moveaxis(mask_array.astype(bool, copy=False), channel_axis, 0)
    channels = [channel[ok] for channel, ok in zip(array, valid, strict=True)]
    for index, channel in enumerate(channels):
        if channel.size == 0:
            raise UserError(f"cannot fit a normalizer: channel {index} has no valid (unmasked, finite) values")
    return channels


@dataclass(frozen=True)
class AffineNormalizer:
    """``(x - offset) / scale`` per channel; subclasses say how offset and scale are fitted and named."""

    offset: tuple[float, ...]
    scale: tuple[float, ...]

    kind = "affine"

    @property
    def n_channels(self) -> int:
        return len(self.offset)

    def _parameters(self, x: ArrayT, channel_axis: int) -> tuple[ArrayT, ArrayT]:
        """Offset and scale shaped to broadcast along ``channel_axis`` of ``x``, in ``x``'s dtype and device."""
        axis = channel_axis % x.ndim
        if x.shape[axis] != self.n_channels:
            raise ValueError(
                f"{self.kind} normalizer has {self.n_channels} channel(s), got {x.shape[axis]} on axis {axis}"
            )
        shape = [1] * x.ndim
        shape[axis] = self.n_channels
        if isinstance(x, torch.Tensor):
            offset = torch.tensor(self.offset, dtype=x.dtype, device=x.device).reshape(shape)
            scale = torch.tensor(self.scale, dtype=x.dtype, device=x.device).reshape(shape)
            return offset, scale
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        return np.asarray(self.offset, dtype=dtype).reshape(shape), np.asarray(self.scale, dtype=dtype).reshape(shape)

    def transform(self, x: ArrayT, channel_axis: int = -3) -> ArrayT:
        """Physical units -> normalized units."""
        offset, scale = self._parameters(x, channel_axis)
        return (x - offset) / scale

    def inverse(self, x: ArrayT, channel_axis: int = -3) -> ArrayT:
        """Normalized units -> physical units (also right for quantiles: the map is increasing)."""
        offset, scale = self._parameters(x, channel_axis)
        return x * scale + offset

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


def _usable_scale(spread: float) -> float:
    """A constant channel has zero spread; dividing by 1 instead keeps it finite (it maps to a constant)."""
    return spread if spread > 0 and math.isfinite(spread) else 1.0


@dataclass(frozen=True)
class ZScore(AffineNormalizer):
    """Subtract the mean and divide by the standard deviation of the valid training pixels."""

    kind = "zscore"

    @classmethod
    def fit(
        cls,
        values: np.ndarray | torch.Tensor,
        mask: np.ndarray | torch.Tensor | None = None,
        channel_axis: int = -3,
    ) -> ZScore:
        channels = _valid_values_per_channel(values, mask, channel_axis)
        means = [float(channel.mean()) for channel in channels]
        stds = [_usable_scale(float(channel.std())) for channel in channels]
        return cls(offset=tuple(means), scale=tuple(stds))

    @property
    def mean(self) -> tuple[float, ...]:
        return self.offset

    @property
    def std(self) -> tuple[float, ...]:
        return self.scale

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": list(self.offset), "std": list(self.scale)}


@dataclass(frozen=True)
class MinMax(AffineNormalizer):
    """Map the valid training range of each channel onto [0, 1] (later data may fall outside it)."""

    kind = "minmax"

    @classmethod
    def fit(
        cls,
        values: np.ndarray | torch.Tensor,
        mask: np.ndarray | torch.Tensor | None = None,
        channel_axis: int = -3,
    ) -> MinMax:
        channels = _valid_values_per_channel(values, mask, channel_axis)
        lows = [float(channel.min()) for channel in channels]
        spans = [_usable_scale(float(channel.max()) - low) for channel, low in zip(channels, lows, strict=True)]
        return cls(offset=tuple(lows), scale=tuple(spans))

    @property
    def low(self) -> tuple[float, ...]:
        return self.offset

    @property
    def high(self) -> tuple[float, ...]:
        return tuple(low + span for low, span in zip(self.offset, self.scale, strict=True))

    def to_dict(self) -> dict[str, Any]:
        # The span is stored, not the high end, so that from_dict(to_dict()) is bit-exact.
        return {"kind": self.kind, "low": list(self.offset), "span": list(self.scale)}


_KINDS: dict[str, tuple[type[AffineNormalizer], str, str]] = {
    "zscore": (ZScore, "mean", "std"),
    "minmax": (MinMax, "low", "span"),
}


def fit_normalizer(
    kind: NormalizerKind,
    values: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor | None = None,
    channel_axis: int = -3,
) -> ZScore | MinMax:
    """Fit the normalizer named ``kind`` on the valid (mask true and finite) values of each channel."""
    if kind == "zscore":
        return ZScore.fit(values, mask, channel_axis)
    if kind == "minmax":
        return MinMax.fit(values, mask, channel_axis)
    raise UserError(f"unknown normalizer {kind!r} (known: {', '.join(_KINDS)})")


def normalizer_from_dict(data: dict[str, Any], source: str = "normalizer") -> AffineNormalizer:
    """Rebuild a normalizer saved by ``to_dict``; ``source`` (e.g. the JSON path) names the file in errors."""
    if not isinstance(data, dict) or data.get("kind") not in _KINDS:
        kind = data.get("kind") if isinstance(data, dict) else data
        raise UserError(f"{source}: unknown normalizer kind {kind!r} (known: {', '.join(_KINDS)})")
    cls, offset_key, scale_key = _KINDS[data["kind"]]
    offset, scale = data.get(offset_key), data.get(scale_key)
    for key, value in ((offset_key, offset), (scale_key, scale)):
        is_numbers = isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        )
        if not is_numbers or not value:
            raise UserError(f"{source}: normalizer '{key}' should be a non-empty list of numbers, got {value!r}")
    if len(offset) != len(scale):
        raise UserError(f"{source}: normalizer '{offset_key}' and '{scale_key}' have different lengths")
    if not all(math.isfinite(v) and v > 0 for v in scale):
        raise UserError(f"{source}: normalizer '{scale_key}' should be positive and finite, got {scale!r}")
    return cls(offset=tuple(float(v) for v in offset), scale=tuple(float(v) for v in scale))
