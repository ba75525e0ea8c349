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
from typing import Any, Literal, Self, TypeVar

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
    """``(x - offset) / scale`` per channel; subclasses say how one channel's offset and scale are fitted and
    under which names they are saved."""

    offset: tuple[float, ...]
    scale: tuple[float, ...]

    kind = "affine"
    offset_key = "offset"
    scale_key = "scale"

    @classmethod
    def fit_channel(cls, values: np.ndarray) -> tuple[float, float]:
        """(offset, spread) of one channel's valid float64 values."""
        raise NotImplementedError

    @classmethod
    def fit(
        cls,
        values: np.ndarray | torch.Tensor,
        mask: np.ndarray | torch.Tensor | None = None,
        channel_axis: int = -3,
    ) -> Self:
        """Fit on the valid (mask true and finite) values of each channel."""
        fitted = [cls.fit_channel(channel) for channel in _valid_values_per_channel(values, mask, channel_axis)]
        return cls(
            offset=tuple(offset for offset, _ in fitted), scale=tuple(_usable_scale(spread) for _, spread in fitted)
        )

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
        # Offset and scale are stored as they are (a span, not a high end), so from_dict(to_dict()) is bit-exact.
        return {"kind": self.kind, self.offset_key: list(self.offset), self.scale_key: list(self.scale)}


def _usable_scale(spread: float) -> float:
    """A constant channel has zero spread; dividing by 1 instead keeps it finite (it maps to a constant)."""
    return spread if spread > 0 and math.isfinite(spread) else 1.0


@dataclass(frozen=True)
class ZScore(AffineNormalizer):
    """Subtract the mean and divide by the standard deviation of the valid training pixels."""

    kind = "zscore"
    offset_key = "mean"
    scale_key = "std"

    @classmethod
    def fit_channel(cls, values: np.ndarray) -> tuple[float, float]:
        return float(values.mean()), float(values.std())

    @property
    def mean(self) -> tuple[float, ...]:
        return self.offset

    @property
    def std(self) -> tuple[float, ...]:
        return self.scale


@dataclass(frozen=True)
class MinMax(AffineNormalizer):
    """Map the valid training range of each channel onto [0, 1] (later data may fall outside it)."""

    kind = "minmax"
    offset_key = "low"
    scale_key = "span"

    @classmethod
    def fit_channel(cls, values: np.ndarray) -> tuple[float, float]:
        low = float(values.min())
        return low, float(values.max()) - low

    @property
    def low(self) -> tuple[float, ...]:
        return self.offset

    @property
    def high(self) -> tuple[float, ...]:
        return tuple(low + span for low, span in zip(self.offset, self.scale, strict=True))


_KINDS: dict[str, type[AffineNormalizer]] = {"zscore": ZScore, "minmax": MinMax}


def fit_normalizer(
    kind: NormalizerKind,
    values: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor | None = None,
    channel_axis: int = -3,
) -> AffineNormalizer:
    """Fit the normalizer named ``kind`` on the valid (mask true and finite) values of each channel."""
    if kind not in _KINDS:
        raise UserError(f"unknown normalizer {kind!r} (known: {', '.join(_KINDS)})")
    return _KINDS[kind].fit(values, mask, channel_axis)


def normalizer_from_dict(data: dict[str, Any], source: str = "normalizer") -> AffineNormalizer:
    """Rebuild a normalizer saved by ``to_dict``; ``source`` (e.g. the JSON path) names the file in errors."""
    if not isinstance(data, dict) or data.get("kind") not in _KINDS:
        kind = data.get("kind") if isinstance(data, dict) else data
        raise UserError(f"{source}: unknown normalizer kind {kind!r} (known: {', '.join(_KINDS)})")
    cls = _KINDS[data["kind"]]
    offset_key, scale_key = cls.offset_key, cls.scale_key
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
