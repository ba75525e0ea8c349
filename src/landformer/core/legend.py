"""Class legends: raw raster codes <-> contiguous class indices, names and colours.

A legend is fixed before any data is seen (NLCD, CORINE, or a user's JSON file), so every split, chip file
and checkpoint agrees on the mapping. Pixels whose code is a nodata code become :data:`NODATA_INDEX`.

Legend JSON::

    {"name": "mine", "nodata": [0],
     "classes": [{"code": 1, "name": "water", "color": "#3060c0"}, ...],
     "groups": {"developed": [5, 6]}}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from landformer.core.errors import UserError
from landformer.core.io import read_json

NODATA_INDEX = -1
BUILTIN_LEGENDS = ("nlcd", "corine")


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
        """Map raw codes to int16 indices 0..n_classes-1; nodata codes become NODATA_INDEX.

        Codes that are neither a class nor nodata raise a UserError listing them, or become nodata when
        ``unknown="nodata"``.
        """
        raw = np.asarray(raw)
        if raw.dtype.kind == "f":
            if np.any(np.isfinite(raw) & (raw != np.round(raw))):
                raise UserError(f"{source}: class raster holds fractional values; is it really categorical?")
            raw = np.where(np.isfinite(raw), raw, self.nodata_codes[0] if self.nodata_codes else -1)
        raw = raw.astype(np.int64, copy=False)
        lo = int(min(self.codes + list(self.nodata_codes) + [int(raw.min(initial=0))]))
        hi = int(max(self.codes + list(self.nodata_codes) + [int(raw.max(initial=0))]))
        table = np.full(hi - lo + 1, -2, dtype=np.int16)  # -2 marks "not in the legend"
        for index, code in enumerate(self.codes):
            table[code - lo] = index
        for code in self.nodata_codes:
            table[code - lo] = NODATA_INDEX
        indices = table[raw - lo]
        bad = indices == -2
        if bad.any():
            if unknown == "nodata":
                indices[bad] = NODATA_INDEX
            else:
                found = np.unique(raw[bad])
                shown = ", ".join(str(v) for v in found[:20]) + (" ..." if len(found) > 20 else "")
                raise UserError(
                    f"{source}: class code(s) {shown} are not in legend '{self.name}' "
                    f"(use a custom legend JSON, or --unknown nodata to treat them as nodata)"
                )
        return indices

    def decode(self, indices: np.ndarray, nodata_code: int | None = None) -> np.ndarray:
        """Map indices back to raw codes; NODATA_INDEX becomes the first nodata code."""
        indices = np.asarray(indices)
        fill = self.nodata_codes[0] if nodata_code is None and self.nodata_codes else (nodata_code or 0)
        table = np.array(self.codes, dtype=np.int64)
        valid = indices >= 0
        raw = np.full(indices.shape, fill, dtype=np.int64)
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
                code, name = int(item["code"]), str(item["name"])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{source}: classes[{i}] needs an integer 'code' and a 'name'") from None
            color = str(item.get("color", _fallback_color(i)))
            if len(color) != 7 or not color.startswith("#"):
                raise UserError(f"{source}: classes[{i}] colour {color!r} should look like #rrggbb")
            classes.append(LegendClass(code, name, color))
        groups = {str(k): tuple(int(c) for c in v) for k, v in (data.get("groups") or {}).items()}
        nodata = tuple(int(c) for c in data.get("nodata", [0]))
        return cls(str(data.get("name", source)), tuple(classes), nodata, groups)


def _fallback_color(index: int) -> str:
    import matplotlib

    r, g, b, _ = matplotlib.colormaps["tab20"](index % 20)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def load_legend(name_or_path: str | os.PathLike[str]) -> Legend:
    """A built-in legend by name (``nlcd``, ``corine``) or a legend JSON file."""
    key = str(name_or_path)
    if key.lower() in BUILTIN_LEGENDS:
        text = resources.files("landformer.core").joinpath("legends", f"{key.lower()}.json").read_text()
        import json

        return Legend.from_dict(json.loads(text), source=f"built-in legend {key}")
    path = Path(key)
    if not path.exists():
        raise UserError(f"legend {key!r} is neither a built-in legend ({', '.join(BUILTIN_LEGENDS)}) nor a file")
    return Legend.from_dict(read_json(path, "legend file"), source=str(path))
