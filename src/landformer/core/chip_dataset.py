"""A chip file's split as a torch Dataset, sharing a memory-mapped file between processes.

Kept apart from :mod:`landformer.core.chips` so that cutting chips (``landformer data chips``) never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from landformer.core.chips import ChipSet, load_chips
from landformer.core.errors import UserError
from landformer.core.legend import NODATA_INDEX


class ChipSplit(Dataset):
    """One split of a chip set; item ``i`` is a torchgeo-style sample of chip ``i``: ``mask`` its class indices
    (H, W) int64 (nodata -1), ``image`` its covariate channels (C-1, H, W) float32 when it has any, and
    ``lonlat`` its centre (2,) float32.

    Items are copied out of the split one chip at a time. Over a memory-mapped chip file (written with
    ``compress=False``) data-loader workers and DDP ranks on one machine therefore share the page cache instead
    of each holding the arrays; pickled (spawned workers), the set carries the file's path, not its arrays, and
    maps the file again where it is unpickled.
    """

    def __init__(self, chips: ChipSet, split: Literal["train", "test"] = "train") -> None:
        if split not in ("train", "test"):
            raise UserError(f"chip split must be 'train' or 'test', got {split!r}")
        self.chips, self.split = chips, split
        self.data = chips.train_data if split == "train" else chips.test_data
        self.coords = chips.train_coords if split == "train" else chips.test_coords

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        chip = np.array(self.data[index])  # one chip, copied out of the file's pages
        classes = chip[0]
        if classes.dtype.kind == "f":  # chips with covariates are float32, their class nodata possibly NaN
            classes = np.where(np.isnan(classes), NODATA_INDEX, classes)
        item = {
            "mask": torch.from_numpy(classes.astype(np.int64)),
            "lonlat": torch.from_numpy(np.asarray(self.coords[index], dtype=np.float32)),
        }
        if chip.shape[0] > 1:
            item["image"] = torch.from_numpy(chip[1:].astype(np.float32))
        return item

    def __getstate__(self) -> dict[str, Any]:
        if not self.chips.memory_mapped or self.chips.source is None:
            return self.__dict__
        return {"source": self.chips.source, "split": self.split}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "source" in state:
            self.__init__(load_chips(Path(state["source"])), state["split"])  # type: ignore[misc]
        else:
            self.__dict__.update(state)
