"""Online augmentation of embedding tiles (the training loader of :mod:`~landformer.embeddings.data` applies it).

Small labelled sets (a few hundred cities) overfit fast, so every training tile is seen as ``samples_per_tile``
different views per epoch: one of the 8 flips/quarter turns (the 90, 180 and 270 degree rotations, with and
without a mirror) and a square crop of ``crop_scales`` times the side, resized back to the tile size. Crops are
centred by default: when the label belongs to the tile's centre (a city), a crop elsewhere would move it. Resizing
interpolates neighbouring unit vectors, which shortens them, so pixels are scaled back to unit length (masked
pixels stay zero). The views are drawn afresh every time a sample is read, so each epoch differs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def dihedral(x: Tensor, turns: int, mirror: bool) -> Tensor:
    """Rotate the last two axes by ``turns`` quarter turns (counter-clockwise), mirrored left-right first."""
    if mirror:
        x = x.flip(-1)
    return torch.rot90(x, turns, dims=(-2, -1))


def crop_resize(frames: Tensor, valid: Tensor, top: int, left: int, side: int) -> tuple[Tensor, Tensor]:
    """Crop a ``side`` square at (top, left) from (F, C, H, W) frames and their (H, W) mask, resize to H x W."""
    size = frames.shape[-1]
    frames = frames[..., top : top + side, left : left + side]
    valid = valid[top : top + side, left : left + side]
    if side == size:
        return frames, valid
    count, channels = frames.shape[:2]
    resized = (
        F.interpolate(
            frames.reshape(count * channels, 1, side, side).transpose(0, 1),
            size=(size, size),
            mode="bilinear",
            align_corners=False,
        )
        .transpose(0, 1)
        .reshape(count, channels, size, size)
    )
    # A resized pixel counts as observed only if every source pixel it blends was observed.
    coverage = F.interpolate(valid[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)
    resized_valid = coverage[0, 0] > 0.999
    length = resized.norm(dim=1, keepdim=True).clamp_min(1e-6)
    resized = torch.where(resized_valid, resized / length, torch.zeros_like(resized))
    return resized, resized_valid


class TileAugmenter:
    """Random dihedral transform plus multi-scale crop; draws from torch's global generator (seeded per worker)."""

    def __init__(self, crop_scales: Sequence[float] = (1.0, 0.8, 0.6), centred: bool = True) -> None:
        self.crop_scales = list(crop_scales)
        self.centred = centred

    def __call__(self, frames: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        size = frames.shape[-1]
        scale = self.crop_scales[int(torch.randint(len(self.crop_scales), ()).item())]
        side = max(1, round(scale * size))
        if self.centred:
            top = left = (size - side) // 2
        else:
            top = int(torch.randint(size - side + 1, ()).item())
            left = int(torch.randint(size - side + 1, ()).item())
        frames, valid = crop_resize(frames, valid, top, left, side)
        turns = int(torch.randint(4, ()).item())
        mirror = bool(torch.randint(2, ()).item())
        return dihedral(frames, turns, mirror), dihedral(valid, turns, mirror)
