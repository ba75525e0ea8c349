"""Class legends: raw raster codes <-> contiguous class indices, names and colours.

A legend is fixed before any data is seen (NLCD, CORINE, IGBP, or a user's JSON file), so every split, chip file
and checkpoint agrees on the mapping. Pixels whose code is a nodata code become :data:`NODATA_INDEX`.

Legend JSON::

    {"name": "mine", "nodata": [0],
     "classes": [{"code": 1, "name": "water", "color": "#3060c0"}, ...],
     "groups": {"developed": [5, 6]}}
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from landformer.core.errors import UserError
from landformer.core.io import read_json

NODATA_INDEX = -1
BUILTIN_LEGENDS = ("nlcd", "corine", "igbp")
_NOT_IN_LEGEND = -2  # internal marker while encoding
_MAX_TABLE = 1 << 16  # widest code range encoded through a lookup table


@dataclass(frozen=True)
class LegendClass:
    code: int
    name: str
    color: str  # "#rrggbb"


@dataclass(frozen=True)
class Legend:
    name: str
    classes: tuple[LegendClass, ...]
    nodata_codes: tuple[int, ...] = (0,)
    groups: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        codes = self.codes
        if len(set(codes)) != len(codes):
            raise UserError(f"legend '{self.name}' repeats a class code: {codes}")
        clash = sorted(set(codes) & set(self.nodata_codes))
        if clash:
            raise UserError(f"legend '{self.name}': code(s) {clash} are both a class and nodata")
        for group, members in self.groups.items():
            unknown = sorted(set(members) - set(codes))
            if unknown:
                raise UserError(f"legend '{self.name}': group '{group}' names unknown code(s) {unknown}")

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def codes(self) -> list[int]:
        return [c.code for c in self.classes]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def palette(self) -> np.ndarray:
        """(n_classes, 3) uint8 RGB colours in index order."""
        return np.array([[int(c.color[i : i + 2], 16) for i in (1, 3, 5)] for c in self.classes], dtype=np.uint8)

    def group_indices(self, group: str) -> list[int]:
        """Class indices of a named group such as ``"developed"``."""
        if group not in self.groups:
            raise UserError(f"legend '{self.name}' has no group '{group}' (has: {', '.join(self.groups) or 'none'})")
        lookup = {code: index for index, code in enumerate(self.codes)}
        return [lookup[code] for code in self.groups[group]]

    def encode(
        self, raw: np.ndarray, unknown: Literal["error", "nodata"] = "error", source: str = "raster"
    ) -> np.ndarray:
        """Map raw codes to int16 indices 0..n_classes-1; nodata codes (and NaN) become NODATA_INDEX.

        Codes that are neither a class nor nodata raise a UserError listing them, or become nodata when
        ``unknown="nodata"``. Memory is a few bytes per pixel whatever the codes are (a uint32 raster with
        nodata 4294967295, a float raster with nodata -3.4e38).
        """
        raw = np.asarray(raw)
        missing = None  # NaN pixels of a float raster
        if raw.dtype.kind == "f":
            finite = np.isfinite(raw)
            if np.any(finite & (raw != np.round(raw))):
                raise UserError(f"{source}: class raster holds fractional values; is it really categorical?")
            # Finite codes too large for int64 (float nodata such as -3.4e38) can be in no legend.
            representable = finite & (np.abs(raw) < 2.0**62)
            missing = ~finite
            values = np.where(representable, raw, 0).astype(np.int64)
            indices = self._lookup(values)
            indices[finite & ~representable] = _NOT_IN_LEGEND
            indices[missing] = NODATA_INDEX
        else:
            indices = self._lookup(raw.astype(np.int64, copy=False))
        bad = indices == _NOT_IN_LEGEND
        if bad.any():
            if unknown == "nodata":
                indices[bad] = NODATA_INDEX
            else:
                found = np.unique(raw[bad])
                shown = ", ".join(f"{v:g}" if raw.dtype.kind == "f" else str(v) for v in found[:20])
                shown += " ..." if len(found) > 20 else ""
                raise UserError(
                    f"{source}: class code(s) {shown} are not in legend '{self.name}' "
                    f"(use a custom legend JSON, or --unknown nodata to treat them as nodata)"
                )
        return indices

    def _lookup(self, values: np.ndarray) -> np.ndarray:
        """int64 codes -> int16 indices, NODATA_INDEX, or _NOT_IN_LEGEND. A lookup table when the codes span a
        small range (fast), else a binary search over the legend's few codes (no table as wide as the range)."""
        known = np.array(self.codes + list(self.nodata_codes), dtype=np.int64)
        targets = np.array(list(range(self.n_classes)) + [NODATA_INDEX] * len(self.nodata_codes), dtype=np.int16)
        lo = min(int(known.min()), int(values.min(initial=0)))
        hi = max(int(known.max()), int(values.max(initial=0)))
        if hi - lo <= _MAX_TABLE:
            table = np.full(hi - lo + 1, _NOT_IN_LEGEND, dtype=np.int16)
            table[known - lo] = targets
            return table[values - lo]
        order = np.argsort(known)
        known, targets = known[order], targets[order]
        position = np.minimum(np.searchsorted(known, values), len(known) - 1)
        return np.where(known[position] == values, targets[position], _NOT_IN_LEGEND).astype(np.int16)

    def decode(self, indices: np.ndarray, nodata_code: int | None = None) -> np.ndarray:
        """Map indices back to raw codes; negative indices (nodata) become ``nodata_code`` (default: the first
        nodata code of the legend, or 0). Indices past the last class are a UserError listing them."""
        indices = np.asarray(indices)
        too_large = np.unique(indices[indices >= self.n_classes])
        if too_large.size:
            shown = ", ".join(str(v) for v in too_large[:20]) + (" ..." if too_large.size > 20 else "")
            raise UserError(f"class index(es) {shown} are beyond legend '{self.name}' ({self.n_classes} classes)")
        if nodata_code is None:
            nodata_code = self.nodata_codes[0] if self.nodata_codes else 0
        table = np.array(self.codes, dtype=np.int64)
        valid = indices >= 0
        raw = np.full(indices.shape, nodata_code, dtype=np.int64)
        raw[valid] = table[indices[valid]]
        dtype = np.uint8 if raw.min(initial=0) >= 0 and raw.max(initial=0) <= 255 else np.int32
        return raw.astype(dtype)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "nodata": list(self.nodata_codes),
            "classes": [{"code": c.code, "name": c.name, "color": c.color} for c in self.classes],
            "groups": {group: list(codes) for group, codes in self.groups.items()},
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "legend") -> Legend:
        if not isinstance(data, dict) or not isinstance(data.get("classes"), list) or not data["classes"]:
            raise UserError(f"{source}: a legend needs a non-empty 'classes' list")
        classes = []
        for i, item in enumerate(data["classes"]):
            try:
                code, name = _as_code(item["code"]), str(item["name"])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{source}: classes[{i}] needs an integer 'code' and a 'name'") from None
            color = str(item["color"]) if "color" in item else _fallback_color(i)
            if not re.fullmatch(r"#[0-9a-fA-F]{6}", color):
                raise UserError(f"{source}: classes[{i}] colour {color!r} should look like #rrggbb")
            classes.append(LegendClass(code, name, color))
        raw_groups = data.get("groups") or {}
        nodata = data.get("nodata", [0])
        nodata = [nodata] if isinstance(nodata, (int, float, str)) else nodata
        try:
            if not isinstance(raw_groups, dict):
                raise TypeError
            groups = {str(k): tuple(_as_code(c) for c in v) for k, v in raw_groups.items()}
        except (TypeError, ValueError):
            raise UserError(f"{source}: 'groups' should map group names to lists of integer codes") from None
        try:
            nodata_codes = tuple(_as_code(c) for c in nodata)
        except (TypeError, ValueError):
            raise UserError(f"{source}: 'nodata' should be an integer code or a list of them, got {nodata!r}") from None
        return cls(str(data.get("name", source)), tuple(classes), nodata_codes, groups)


def _as_code(value: Any) -> int:
    """An integer class code from JSON: 11, 11.0 or "11"; ValueError for 1.5, true or "x"."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a class code")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{value!r} is not a class code")
        return int(value)
    if isinstance(value, (int, str)):
        return int(value)
    raise TypeError(f"{value!r} is not a class code")


def _fallback_color(index: int) -> str:
    import matplotlib

    r, g, b, _ = matplotlib.colormaps["tab20"](index % 20)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def load_legend(name_or_path: str | os.PathLike[str]) -> Legend:
    """A built-in legend by name (``nlcd``, ``corine``, ``igbp``) or a legend JSON file."""
    key = str(name_or_path)
    if key.lower() in BUILTIN_LEGENDS:
        text = resources.files("landformer.core").joinpath("legends", f"{key.lower()}.json").read_text()

        return Legend.from_dict(json.loads(text), source=f"built-in legend {key}")
    path = Path(key)
    if not path.exists():
        raise UserError(f"legend {key!r} is neither a built-in legend ({', '.join(BUILTIN_LEGENDS)}) nor a file")
    return Legend.from_dict(read_json(path, "legend file"), source=str(path))
