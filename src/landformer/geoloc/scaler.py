"""Coordinate scalers (robust, standard, min-max), fitted per region and stored as JSON, never pickled.

The regression head predicts scaled local coordinates; the scaler maps them back. JSON keeps every float exactly
(Python writes the shortest repr that reads back to the same double), so a saved and reloaded scaler transforms
bit for bit like the fitted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from landformer.core.errors import UserError

ScalerKind = Literal["robust", "standard", "minmax"]
SCALER_KINDS: tuple[str, ...] = ("robust", "standard", "minmax")


@dataclass(frozen=True)
class CoordinateScaler:
    """``scaled = (x - centre) / scale`` per column.

    robust: centre = median, scale = interquartile range (as scikit-learn's RobustScaler);
    standard: centre = mean, scale = standard deviation; minmax: centre = min, scale = max - min (into [0, 1]).
    A zero scale (every value equal) is replaced by 1 so the transform stays finite and invertible.
    """

    kind: str
    centre: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, values: np.ndarray, kind: str = "robust") -> CoordinateScaler:
        values = np.asarray(values, np.float64)
        if values.ndim != 2 or len(values) == 0:
            raise ValueError(f"a scaler is fitted on (N, D) values with N > 0, got shape {values.shape}")
        if kind == "robust":
            q25, median, q75 = np.percentile(values, [25, 50, 75], axis=0)
            centre, scale = median, q75 - q25
        elif kind == "standard":
            centre, scale = values.mean(axis=0), values.std(axis=0)
        elif kind == "minmax":
            centre, scale = values.min(axis=0), values.max(axis=0) - values.min(axis=0)
        else:
            raise UserError(f"unknown scaler {kind!r}; choose one of {', '.join(SCALER_KINDS)}")
        scale = np.where(scale > 0, scale, 1.0)
        return cls(kind, tuple(float(v) for v in centre), tuple(float(v) for v in scale))

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, np.float64) - np.array(self.centre)) / np.array(self.scale)

    def inverse_transform(self, scaled: np.ndarray) -> np.ndarray:
        return np.asarray(scaled, np.float64) * np.array(self.scale) + np.array(self.centre)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "centre": list(self.centre), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "scaler") -> CoordinateScaler:
        try:
            kind, centre, scale = data["kind"], data["centre"], data["scale"]
        except (KeyError, TypeError):
            raise UserError(f"{source}: a scaler needs 'kind', 'centre' and 'scale'") from None
        if kind not in SCALER_KINDS or len(centre) != len(scale):
            raise UserError(f"{source}: not a valid scaler (kind {kind!r}, {len(centre)} centres, {len(scale)} scales)")
        return cls(str(kind), tuple(float(v) for v in centre), tuple(float(v) for v in scale))
