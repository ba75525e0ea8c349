"""A timm backbone with a small head: 2 outputs for coordinate regression, K for the region router.

Plain PyTorch, no I/O: weights files are read by the caller (see :func:`landformer.geoloc.task.read_weights`)
and handed to :func:`adapt_pretrained_state`, which fits them to a backbone whose input bands may differ.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


def create_backbone(name: str, in_chans: int) -> nn.Module:
    """``timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0)``: pooled features out,
    random initial weights (nothing is ever downloaded). An unknown name raises ValueError."""
    # timm is imported here, not at the top: importing it registers every architecture it has (about 10 s on a
    # busy 2-core CPU), which a command that stops at a bad input before building a backbone need not pay.
    import timm

    try:
        return timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"timm has no model named {name!r} (see timm.list_models())") from None
        raise


class ImageRegressor(nn.Module):
    """backbone -> dropout -> linear head with ``n_outputs`` outputs."""

    def __init__(self, backbone: str, in_chans: int, n_outputs: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.backbone = create_backbone(backbone, in_chans)
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.backbone.num_features, n_outputs)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.dropout(self.backbone(images)))


def first_conv_weight_key(backbone: nn.Module) -> str | None:
    """State-dict key of the first convolution's weight, from timm's ``pretrained_cfg["first_conv"]``."""
    first_conv = (getattr(backbone, "pretrained_cfg", None) or {}).get("first_conv")
    if isinstance(first_conv, (list, tuple)):
        first_conv = first_conv[0]
    return f"{first_conv}.weight" if first_conv else None


def adapt_pretrained_state(backbone: nn.Module, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Fit a pretrained state dict to ``backbone``: strip ``module.``/``backbone.`` prefixes, drop the keys the
    backbone lacks (the old classifier) and adapt the first convolution to the backbone's number of input bands
    (timm's ``adapt_input_conv``: RGB weights summed to one band, or tiled and rescaled to more bands).

    Returns the adapted dict and the keys that were dropped; a ValueError names backbone keys the file lacks or
    whose shapes differ, since loading half a backbone would silently train from a random start.
    """
    from timm.models import adapt_input_conv  # lazy for the reason create_backbone gives

    own = backbone.state_dict()
    cleaned: dict[str, Tensor] = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    conv_key = first_conv_weight_key(backbone)
    if conv_key and conv_key in cleaned and conv_key in own and cleaned[conv_key].shape[1] != own[conv_key].shape[1]:
        cleaned[conv_key] = adapt_input_conv(own[conv_key].shape[1], cleaned[conv_key])
    dropped = sorted(key for key in cleaned if key not in own)
    missing = sorted(key for key in own if key not in cleaned)
    mismatched = sorted(key for key in own if key in cleaned and cleaned[key].shape != own[key].shape)
    if missing or mismatched:
        detail = (
            f"{len(missing)} missing (e.g. {missing[0]})"
            if missing
            else f"{len(mismatched)} of other shape (e.g. {mismatched[0]}: {tuple(cleaned[mismatched[0]].shape)} "
            f"vs {tuple(own[mismatched[0]].shape)})"
        )
        raise ValueError(f"the weights do not fit this backbone: {detail}")
    return {key: value for key, value in cleaned.items() if key in own}, dropped


def count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def plain_state(module: nn.Module) -> dict[str, Any]:
    """Detached CPU copies of a module's tensors (what safetensors files store)."""
    return {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}
