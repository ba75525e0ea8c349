"""Qwen2-VL and Qwen2.5-VL vision towers (from transformers) as 64-channel patch encoders.

The towers read a flat sequence of patches, each ``C x T x P x P`` values (channels, the temporal pair, a P x P
pixel block) in the order the Qwen image processor writes them: 2x2 blocks of neighbouring patches one after the
other, so the tower's 2x2 patch merger concatenates true neighbours. :func:`qwen_patchify` reproduces that order
for any number of channels (tests compare it with ``Qwen2VLImageProcessor`` on 3-channel images) and fills the
temporal pair with two consecutive years when the data has them, else with the same year twice (what the
processor does for a still image).

The RGB patch embedding (a Conv3d) is replaced by a 64-channel one, initialised ``normal`` (N(0, 0.02), the
towers' own init), ``zero`` or ``copy`` (the RGB kernels tiled over the 64 channels and scaled by 3/64, so a
pretrained tower sees inputs of the usual magnitude). Real weights load from a local checkpoint folder (the
vision part of the safetensors shards only; nothing is downloaded); without one a random tower of the configured
size is built, which is what the tests and CPU smoke runs use.

Masked subsets: the towers take precomputed ``position_ids`` and ``cu_seqlens`` (and for Qwen2.5-VL the window
partition), so :meth:`QwenVisionEncoder.encode` can run on the visible 2x2 blocks of an MAE-masked tile, every
sample of a batch its own attention segment, exactly like the built-in ViT.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from landformer.core.errors import UserError
from landformer.embeddings.encoders import PatchEncoder, take_frames

QWEN_KINDS = ("qwen2_vl", "qwen2_5_vl")
TEMPORAL_PATCH = 2
MERGE = 2
VISION_PREFIXES = ("model.visual.", "visual.")  # transformers 5 save_pretrained / the published checkpoints
PATCH_INITS = ("normal", "zero", "copy")


def qwen_patchify(frames: Tensor, patch_size: int, merge_size: int = MERGE, temporal: int = TEMPORAL_PATCH) -> Tensor:
    """(B, F, C, H, W) -> (B, L, C * temporal * P * P) in the Qwen processor's patch order.

    Tokens run over 2x2 merge blocks row by row and, inside a block, over its patches row by row; each patch
    flattens as (channel, time, row, col). With one frame it is repeated ``temporal`` times.
    """
    x = take_frames(frames, temporal)
    batch, _, channels, height, width = x.shape
    block = patch_size * merge_size
    if height % block or width % block:
        raise ValueError(
            f"tile {height}x{width} is not a whole number of {merge_size}x{merge_size} blocks of "
            f"{patch_size}-pixel patches"
        )
    grid_h, grid_w = height // patch_size, width // patch_size
    x = x.reshape(
        batch,
        temporal,
        channels,
        grid_h // merge_size,
        merge_size,
        patch_size,
        grid_w // merge_size,
        merge_size,
        patch_size,
    )
    # (B, T, C, bh, mh, ph, bw, mw, pw) -> (B, bh, bw, mh, mw, C, T, ph, pw)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(batch, grid_h * grid_w, channels * temporal * patch_size * patch_size)


def qwen_patch_positions(grid_h: int, grid_w: int, merge_size: int = MERGE) -> Tensor:
    """(L, 2) (row, col) of every patch in :func:`qwen_patchify` order (the towers' own position ids)."""
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    shape = (grid_h // merge_size, merge_size, grid_w // merge_size, merge_size)
    rows = rows.reshape(shape).transpose(1, 2).flatten()
    cols = cols.reshape(shape).transpose(1, 2).flatten()
    return torch.stack([rows, cols], dim=-1)


def _classes(kind: str) -> tuple[type, type]:
    # transformers takes seconds to import and is an optional extra: it is imported where a Qwen tower is built.
    if kind == "qwen2_vl":
        from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

        return Qwen2VLVisionConfig, Qwen2VisionTransformerPretrainedModel
    if kind == "qwen2_5_vl":
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

        return Qwen2_5_VLVisionConfig, Qwen2_5_VisionTransformerPretrainedModel
    raise UserError(f"unknown Qwen tower {kind!r}; choose one of {', '.join(QWEN_KINDS)}")


def random_vision_config(kind: str, values: dict[str, Any]) -> Any:
    """A vision config of the size ``values`` asks for (dim, depth, heads, patch_size, ...), with RGB input."""
    config_class, _ = _classes(kind)
    dim, heads = int(values["dim"]), int(values["heads"])
    common = {
        "depth": int(values["depth"]),
        "num_heads": heads,
        "in_channels": 3,
        "patch_size": int(values["patch_size"]),
        "spatial_merge_size": MERGE,
        "temporal_patch_size": TEMPORAL_PATCH,
    }
    if kind == "qwen2_vl":
        ratio = float(values.get("mlp_ratio", 4.0))
        if not ratio.is_integer():
            raise UserError(f"encoder.mlp_ratio = {ratio} must be a whole number for a Qwen2-VL tower")
        return config_class(embed_dim=dim, hidden_size=dim, mlp_ratio=int(ratio), **common)
    return config_class(
        hidden_size=dim,
        intermediate_size=int(dim * float(values.get("mlp_ratio", 4.0))),
        out_hidden_size=dim,
        window_size=int(values.get("window_size", 112)),
        fullatt_block_indexes=list(values.get("fullatt_blocks", [])),
        **common,
    )


def pretrained_vision_config(kind: str, folder: Path) -> Any:
    """The vision config of a local Qwen-VL checkpoint folder; the folder's model type must match ``kind``."""
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise UserError(f"pretrained Qwen checkpoint {folder} has no config.json (give a local checkpoint folder)")
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if config.model_type != kind:
        raise UserError(f"pretrained checkpoint {folder} is a {config.model_type!r} model, not {kind!r}")
    return config.vision_config


def load_vision_weights(tower: nn.Module, folder: Path) -> int:
    """Copy the vision-tower tensors of the checkpoint's safetensors shards into ``tower``; returns their count.

    Only the tower's keys are read from each shard, so a 7B checkpoint costs the memory of its vision part.
    """
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise UserError(f"pretrained Qwen checkpoint {folder} holds no .safetensors weights")
    state: dict[str, Tensor] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                for prefix in VISION_PREFIXES:
                    if key.startswith(prefix):
                        state[key[len(prefix) :]] = handle.get_tensor(key)
                        break
    expected = set(tower.state_dict())
    missing = sorted(expected - set(state))
    if missing:
        raise UserError(f"pretrained checkpoint {folder} lacks vision weights such as {missing[0]!r}")
    tower.load_state_dict({key: value for key, value in state.items() if key in expected})
    return len(expected)


def replace_patch_embedding(tower: nn.Module, in_channels: int, init: str, std: float = 0.02) -> None:
    """Swap the tower's RGB Conv3d patch embedding for one reading ``in_channels`` channels, initialised by ``init``."""
    if init not in PATCH_INITS:
        raise UserError(f"patch_init {init!r} is not one of {', '.join(PATCH_INITS)}")
    embed = tower.patch_embed
    old = embed.proj
    new = nn.Conv3d(in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride, bias=False)
    with torch.no_grad():
        if init == "normal":
            nn.init.normal_(new.weight, std=std)
        elif init == "zero":
            nn.init.zeros_(new.weight)
        else:
            source = old.weight.detach().float()
            repeats = math.ceil(in_channels / source.shape[1])
            tiled = source.repeat(1, repeats, 1, 1, 1)[:, :in_channels]
            new.weight.copy_(tiled * (source.shape[1] / in_channels))
    new.to(dtype=old.weight.dtype, device=old.weight.device)
    embed.proj = new
    embed.in_channels = in_channels
    tower.config.in_channels = in_channels


def build_tower(kind: str, values: dict[str, Any]) -> nn.Module:
    """A Qwen vision tower with a ``values["in_channels"]``-channel patch embedding (random or from a checkpoint).

    ``values["tower_config"]`` (written into exported models by :meth:`QwenVisionEncoder.plain_config`) rebuilds
    the exact architecture without reading any checkpoint: the exported weights are loaded afterwards.
    """
    config_class, model_class = _classes(kind)
    pretrained = values.get("pretrained")
    if values.get("tower_config"):
        config = config_class(**values["tower_config"])
        config._attn_implementation = "sdpa"
        tower = model_class._from_config(config)
        if values.get("gradient_checkpointing"):
            _enable_checkpointing(tower)
        return tower
    if pretrained:
        folder = Path(pretrained)
        config = pretrained_vision_config(kind, folder)
    else:
        config = random_vision_config(kind, values)
    config._attn_implementation = "sdpa"
    tower = model_class._from_config(config)
    if pretrained:
        load_vision_weights(tower, Path(pretrained))
    if int(values["in_channels"]) != int(config.in_channels):  # 3-channel (PCA) input keeps the RGB embedding
        replace_patch_embedding(tower, int(values["in_channels"]), str(values.get("patch_init", "normal")))
    if values.get("gradient_checkpointing"):
        _enable_checkpointing(tower)
    return tower


def _enable_checkpointing(tower: nn.Module) -> None:
    """Recompute the tower's activations in the backward pass (transformers 5 renamed the switch)."""
    enable = getattr(tower, "activation_checkpointing_enable", None) or tower.gradient_checkpointing_enable
    enable()


class QwenVisionEncoder(PatchEncoder):
    """A Qwen2-VL / Qwen2.5-VL vision tower behind the :class:`PatchEncoder` interface.

    Tokens are the tower's last hidden states (before the 2x2 merger), ``width`` = its embedding width. The MAE
    masks whole 2x2 blocks (``group_size`` = 4), which keeps the merger's input whole.
    """

    def __init__(self, kind: str, tower: nn.Module, frames: int) -> None:
        super().__init__()
        self.kind = kind
        self.tower = tower
        config = tower.config
        self.in_channels = int(config.in_channels)
        self.patch_size = int(config.patch_size)
        self.frames = frames
        self.temporal = int(config.temporal_patch_size)
        self.merge = int(config.spatial_merge_size)
        self.patch_dim = self.in_channels * self.temporal * self.patch_size**2
        self.width = int(config.embed_dim if kind == "qwen2_vl" else config.hidden_size)
        self.group_size = self.merge**2
        self.input_scale = math.sqrt(self.in_channels)  # unit-length pixels -> components of about unit variance
        if kind == "qwen2_5_vl":
            self.window = max(1, int(config.window_size) // self.merge // self.patch_size)

    def plain_config(self) -> dict[str, Any]:
        """The tower's config as plain values (for hyperparameters and exported models)."""
        keep = (
            "depth",
            "embed_dim",
            "hidden_size",
            "hidden_act",
            "mlp_ratio",
            "intermediate_size",
            "num_heads",
            "in_channels",
            "patch_size",
            "spatial_merge_size",
            "temporal_patch_size",
            "window_size",
            "out_hidden_size",
            "fullatt_block_indexes",
            "initializer_range",
            "rope_parameters",
        )
        values = self.tower.config.to_dict()
        return {
            key: (list(values[key]) if isinstance(values[key], tuple) else values[key]) for key in keep if key in values
        }

    @classmethod
    def from_config(cls, values: dict[str, Any], frames: int) -> QwenVisionEncoder:
        kind = str(values["kind"])
        return cls(kind, build_tower(kind, values), frames)

    def patchify(self, frames: Tensor) -> Tensor:
        if self.frames == 1:
            frames = frames[:, :1]
        return qwen_patchify(frames, self.patch_size, self.merge, self.temporal)

    def patch_positions(self, height: int, width: int) -> Tensor:
        self.check_tile(height, width)
        return qwen_patch_positions(height // self.patch_size, width // self.patch_size, self.merge)

    def check_tile(self, height: int, width: int) -> None:
        block = self.patch_size * self.merge
        if height % block or width % block:
            raise ValueError(f"tile {height}x{width} is not a whole number of {block}-pixel blocks (2x2 patches)")

    def encode(self, patches: Tensor, positions: Tensor) -> Tensor:
        """(B, L', patch_dim) patches in whole 2x2 blocks at (B, L', 2) positions -> (B, L', width)."""
        batch, length, _ = patches.shape
        if length % self.group_size:
            raise ValueError(f"{length} patches are not whole {self.merge}x{self.merge} blocks")
        order = None
        kwargs: dict[str, Any] = {}
        if self.kind == "qwen2_5_vl":
            order, kwargs = self._window_partition(positions)
            patches = patches.gather(1, order[..., None].expand(-1, -1, patches.shape[-1]))
            positions = positions.gather(1, order[..., None].expand(-1, -1, 2))
        flat = patches.reshape(batch * length, -1) * self.input_scale
        kwargs["position_ids"] = positions.reshape(batch * length, 2).long()
        kwargs["cu_seqlens"] = torch.arange(batch + 1, device=patches.device, dtype=torch.int32) * length
        grid = torch.tensor([[1, self.merge, length // self.merge]] * batch, device=patches.device)
        hidden = self.tower(flat.to(self.tower.dtype), grid_thw=grid, **kwargs).last_hidden_state
        tokens = hidden.reshape(batch, length, -1).float()
        if order is not None:
            tokens = torch.empty_like(tokens).scatter_(1, order[..., None].expand(-1, -1, tokens.shape[-1]), tokens)
        return tokens

    def _window_partition(self, positions: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Order each sample's blocks by Qwen2.5-VL attention window and the matching window boundaries.

        Returns the patch order (B, L') and the tower's ``window_index`` (identity: the patches are already in
        window order) and ``cu_window_seqlens``.
        """
        batch, length, _ = positions.shape
        groups = length // self.group_size
        first = positions[:, :: self.group_size]  # top-left patch of each block
        block_rows, block_cols = first[..., 0] // self.merge, first[..., 1] // self.merge
        n_window_cols = int(block_cols.max().item()) // self.window + 1
        window_id = (block_rows // self.window) * n_window_cols + block_cols // self.window
        block_order = torch.sort(window_id * groups + torch.arange(groups, device=positions.device), dim=1).indices
        patch_order = block_order[..., None] * self.group_size + torch.arange(self.group_size, device=positions.device)
        sorted_ids = window_id.gather(1, block_order)
        cuts = [0]
        for sample in range(batch):
            _, counts = torch.unique_consecutive(sorted_ids[sample], return_counts=True)
            for count in counts.tolist():
                cuts.append(cuts[-1] + count * self.group_size)
        kwargs = {
            "window_index": torch.arange(batch * groups, device=positions.device),
            "cu_window_seqlens": torch.tensor(cuts, device=positions.device, dtype=torch.int32),
        }
        return patch_order.reshape(batch, length), kwargs
