"""geoloc model and task: timm backbones with any band count, local pretrained weights, losses, schedule."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models import adapt_input_conv

from landformer.core.errors import UserError
from landformer.geoloc.model import ImageRegressor, adapt_pretrained_state, create_backbone
from landformer.geoloc.task import GeolocTask, load_pretrained_backbone


def test_regressor_follows_the_image_bands() -> None:
    torch.manual_seed(0)
    model = ImageRegressor("test_resnet", in_chans=8, n_outputs=2)
    assert model(torch.randn(3, 8, 32, 32)).shape == (3, 2)
    router = ImageRegressor("test_convnext", in_chans=1, n_outputs=6)
    assert router(torch.randn(2, 1, 32, 32)).shape == (2, 6)
    with pytest.raises(ValueError, match="no model named 'not_a_net'"):
        create_backbone("not_a_net", 3)


def test_pretrained_weights_load_with_an_adapted_first_conv(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_backbone("test_resnet", 3)
    state = {f"backbone.{key}": value for key, value in source.state_dict().items()}
    state["fc.weight"] = torch.zeros(10, source.num_features)  # an old classifier the new head does not use
    path = tmp_path / "weights.safetensors"
    save_file(state, str(path))

    task = GeolocTask(backbone="test_resnet", in_chans=5)
    unused = load_pretrained_backbone(task, path)
    assert unused == ["fc.weight"]
    loaded = task.model.backbone.state_dict()
    conv_key = "conv1.0.weight"
    assert loaded[conv_key].shape[1] == 5
    torch.testing.assert_close(loaded[conv_key], adapt_input_conv(5, source.state_dict()[conv_key]))
    for key, value in source.state_dict().items():
        if key != conv_key:
            torch.testing.assert_close(loaded[key], value)

    # A torch file wrapping the weights under "state_dict" loads too (weights_only).
    torch.save({"state_dict": source.state_dict()}, tmp_path / "weights.pth")
    load_pretrained_backbone(GeolocTask(backbone="test_resnet", in_chans=3), tmp_path / "weights.pth")


def test_pretrained_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    other = create_backbone("test_convnext", 3)
    save_file(dict(other.state_dict()), str(tmp_path / "convnext.safetensors"))
    with pytest.raises(UserError, match=r"convnext.safetensors for test_resnet: the weights do not fit this backbone"):
        load_pretrained_backbone(GeolocTask(backbone="test_resnet", in_chans=3), tmp_path / "convnext.safetensors")
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"x": Path("/")}, protocol=2))
    with pytest.raises(UserError, match="cannot be loaded safely"):
        load_pretrained_backbone(GeolocTask(backbone="test_resnet", in_chans=3), tmp_path / "evil.pth")
    with pytest.raises(UserError, match="pretrained weights not found"):
        load_pretrained_backbone(GeolocTask(backbone="test_resnet", in_chans=3), tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="do not fit"):
        adapt_pretrained_state(create_backbone("test_resnet", 3), {})


def test_losses_are_the_plain_mse_and_cross_entropy() -> None:
    torch.manual_seed(0)
    images = torch.randn(4, 3, 16, 16)
    regress = GeolocTask(backbone="test_resnet", in_chans=3).eval()
    target = torch.randn(4, 2)
    losses = regress.compute_loss({"image": images, "target": target})
    prediction = regress(images)
    torch.testing.assert_close(losses["loss"], F.mse_loss(prediction, target))
    torch.testing.assert_close(losses["mse_lat"], F.mse_loss(prediction[:, 0], target[:, 0]))
    route = GeolocTask(backbone="test_resnet", in_chans=3, n_outputs=3, mode="route").eval()
    labels = torch.tensor([0, 2, 1, 2])
    losses = route.compute_loss({"image": images, "region": labels})
    logits = route(images)
    torch.testing.assert_close(losses["loss"], F.cross_entropy(logits, labels))
    assert losses["accuracy"] == (logits.argmax(1) == labels).float().mean()
    with pytest.raises(ValueError, match="mode 'classify'"):
        GeolocTask(mode="classify")


def test_schedule_is_cosine_with_warm_restarts() -> None:
    task = GeolocTask(backbone="test_resnet", in_chans=3, lr=1e-2, t_0=4, t_mult=2, min_lr_ratio=0.1)
    configured = task.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert configured["lr_scheduler"]["interval"] == "step"
    assert isinstance(optimizer, torch.optim.AdamW)
    assert {group["weight_decay"] for group in optimizer.param_groups} == {task.hparams.weight_decay, 0.0}
    rates = []
    for _ in range(13):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(1e-2) and rates[4] == pytest.approx(1e-2) and rates[12] == pytest.approx(1e-2)
    assert rates[2] == pytest.approx(1e-3 + (1e-2 - 1e-3) * 0.5)  # half way through the first 4-step cycle
    assert min(rates) >= 1e-3 and rates[3] < rates[2] < rates[1]
