"""ConvLSTM forecaster: shapes, masked loss, roll-out and teacher forcing, and that it learns a trend."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch

from landformer.core.config import from_dict, to_dict
from landformer.core.errors import UserError
from landformer.forecast.config import QUANTILES_95, reference, tiny
from landformer.forecast.metrics import ForecastMetrics
from landformer.forecast.model import (
    CompiledOrEager,
    ConvLSTMForecaster,
    ForecastModelConfig,
    last_observed,
    lstm_gate_update,
    masked_loss,
    point_forecast,
)


def small_config(**changes: object) -> ForecastModelConfig:
    return dataclasses.replace(ForecastModelConfig(hidden_channels=(4, 4)), **changes)


def random_batch(
    batch: int, steps: int, horizons: int, n_series: int, n_covariates: int, size: int = 6, seed: int = 0
) -> dict[str, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(seed)
    series = torch.randn(batch, steps, n_series, size, size, generator=generator)
    target = torch.randn(batch, horizons, n_series, size, size, generator=generator)
    return {
        "series": series,
        "series_mask": torch.rand(series.shape, generator=generator) > 0.2,
        "covariates": torch.randn(batch, n_covariates, size, size, generator=generator) if n_covariates else None,
        "target": target,
        "target_mask": torch.rand(target.shape, generator=generator) > 0.2,
    }


@pytest.mark.parametrize(("steps", "horizons", "n_series", "n_covariates"), [(1, 1, 1, 0), (3, 4, 1, 1), (5, 2, 2, 3)])
@pytest.mark.parametrize("quantiles", [(), QUANTILES_95])
def test_output_shapes(steps: int, horizons: int, n_series: int, n_covariates: int, quantiles: tuple) -> None:
    torch.manual_seed(0)
    config = small_config(n_series_channels=n_series, n_covariate_channels=n_covariates, quantiles=quantiles)
    model = ConvLSTMForecaster(config)
    data = random_batch(2, steps, horizons, n_series, n_covariates)
    pred = model(data["series"], data["series_mask"], data["covariates"], n_horizons=horizons)
    quantile_axis = (len(quantiles),) if quantiles else ()
    assert pred.shape == (2, horizons, n_series, *quantile_axis, 6, 6)
    assert model.point_forecast(pred).shape == (2, horizons, n_series, 6, 6)
    if quantiles:
        # The heads are built so that quantiles cannot cross, trained or not.
        assert (pred.diff(dim=3) > 0).all()
        assert torch.equal(model.point_forecast(pred), pred[:, :, :, 1])
    assert model.loss(pred, data["target"], data["target_mask"]).ndim == 0


def test_default_horizon_count_comes_from_target_then_config() -> None:
    model = ConvLSTMForecaster(small_config(n_horizons=3))
    data = random_batch(1, 3, 5, 1, 1)
    assert model(data["series"], data["series_mask"], data["covariates"]).shape[1] == 3
    assert model(data["series"], data["series_mask"], data["covariates"], target=data["target"]).shape[1] == 5


def test_missing_inputs_are_ignored_whatever_their_value() -> None:
    torch.manual_seed(0)
    model = ConvLSTMForecaster(small_config())
    data = random_batch(2, 3, 4, 1, 1)
    mask = data["series_mask"]
    reference_pred = model(data["series"], mask, data["covariates"])
    for filler in (float("nan"), 0.0, 1e6):
        series = torch.where(mask, data["series"], torch.full_like(data["series"], filler))
        assert torch.equal(model(series, mask, data["covariates"]), reference_pred)
    # ...while the mask itself matters: an observed zero is not a missing value.
    zeros = torch.zeros_like(data["series"])
    all_observed = model(zeros, torch.ones_like(mask), data["covariates"])
    none_observed = model(zeros, torch.zeros_like(mask), data["covariates"])
    assert not torch.allclose(all_observed, none_observed)


def test_last_observed_carries_the_most_recent_valid_value() -> None:
    series = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1, 1).expand(1, 3, 1, 1, 3)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.bool).T.reshape(1, 3, 1, 1, 3)
    value, observed = last_observed(series, mask)
    assert value.flatten().tolist() == [3.0, 2.0, 0.0]
    assert observed.flatten().tolist() == [True, True, False]


def test_masked_mse_and_pinball_equal_hand_values() -> None:
    pred = torch.tensor([1.0, 2.0, 5.0, 7.0])
    target = torch.tensor([2.0, 2.0, 3.0, float("nan")])
    mask = torch.tensor([True, True, True, False])
    assert masked_loss(pred, target, mask).item() == pytest.approx((1 + 0 + 4) / 3)
    # One pixel, three quantile forecasts 0, 1, 4 of a true value 2: pinball 0.025*2, 0.5*1, 0.025*2, averaged.
    quantile_pred = torch.tensor([0.0, 1.0, 4.0]).view(3, 1, 1)
    truth = torch.tensor([[2.0]])
    loss = masked_loss(quantile_pred, truth, torch.tensor([[True]]), quantiles=QUANTILES_95)
    assert loss.item() == pytest.approx((0.025 * 2 + 0.5 * 1 + 0.025 * 2) / 3)


def test_masked_loss_counts_exactly_with_bfloat16_predictions() -> None:
    # Summed in bf16 (8 significant bits) this loss comes out as 3.0156 instead of 3.0015.
    target = torch.linspace(0, 3, 1001)
    loss = masked_loss(torch.zeros(1001, dtype=torch.bfloat16), target, torch.ones(1001, dtype=torch.bool))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx((target**2).mean().item(), rel=1e-6)


@pytest.mark.parametrize("quantiles", [None, QUANTILES_95])
def test_masked_loss_ignores_everything_under_the_mask(quantiles: tuple | None) -> None:
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(2, 4, 1, 5, 5, generator=generator)
    mask = torch.rand(target.shape, generator=generator) > 0.5
    quantile_axis = (3,) if quantiles else ()
    pred = torch.randn(2, 4, 1, *quantile_axis, 5, 5, generator=generator)
    pred_mask = mask.unsqueeze(3).expand_as(pred) if quantiles else mask

    def loss_and_grad(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred = pred.clone().requires_grad_(True)
        loss = masked_loss(pred, target, mask, quantiles)
        loss.backward()
        return loss.detach(), pred.grad

    loss, grad = loss_and_grad(pred, target)
    changed_pred = torch.where(pred_mask, pred, torch.full_like(pred, 123.0))
    changed_target = torch.where(mask, target, torch.full_like(target, float("nan")))
    other_loss, other_grad = loss_and_grad(changed_pred, changed_target)
    assert torch.equal(loss, other_loss)
    assert torch.equal(grad, other_grad)
    assert (grad[~pred_mask] == 0).all() and (grad[pred_mask] != 0).any()


def test_all_missing_batch_gives_zero_loss_and_finite_gradients() -> None:
    pred = torch.randn(2, 4, 1, 3, 3, requires_grad=True)
    target = torch.full((2, 4, 1, 3, 3), float("nan"))
    loss = masked_loss(pred, target, torch.zeros(target.shape, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine the threads of
    concurrent processes fight each other (measured: 78 s with 2 threads vs 4 s with 1 for the training test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("quantiles", [(), QUANTILES_95])
def test_gradients_reach_every_parameter(quantiles: tuple) -> None:
    torch.manual_seed(0)
    model = ConvLSTMForecaster(small_config(quantiles=quantiles))
    data = random_batch(2, 3, 4, 1, 1)
    pred = model(data["series"], data["series_mask"], data["covariates"], data["target"], data["target_mask"], 0.5)
    model.loss(pred, data["target"], data["target_mask"]).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def zero_residual_model(quantiles: tuple = ()) -> ConvLSTMForecaster:
    """A model whose head outputs zero change, so every step repeats the value it was fed."""
    model = ConvLSTMForecaster(small_config(quantiles=quantiles))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    return model


@pytest.mark.parametrize("quantiles", [(), QUANTILES_95])
def test_teacher_forcing_feeds_ground_truth_by_construction(quantiles: tuple) -> None:
    model = zero_residual_model(quantiles)
    data = random_batch(3, 3, 4, 1, 1)
    last, _ = last_observed(data["series"], data["series_mask"])
    args = (data["series"], data["series_mask"], data["covariates"], data["target"], data["target_mask"])

    free = point_forecast(model(*args, teacher_forcing=0.0), quantiles)
    assert torch.equal(free, last.unsqueeze(1).expand_as(free))  # zero change: persistence all the way

    forced = point_forecast(model(*args, teacher_forcing=1.0), quantiles)
    assert torch.equal(forced[:, 0], last)
    for horizon in range(1, 4):
        # The truth of the previous horizon where it exists; elsewhere the model's own (unchanged) forecast.
        expected = torch.where(
            data["target_mask"][:, horizon - 1], data["target"][:, horizon - 1], forced[:, horizon - 1]
        )
        assert torch.equal(forced[:, horizon], expected)


def test_teacher_forcing_only_affects_later_horizons() -> None:
    torch.manual_seed(0)
    model = ConvLSTMForecaster(small_config())
    data = random_batch(2, 3, 4, 1, 1)
    args = (data["series"], data["series_mask"], data["covariates"])
    all_true = torch.ones_like(data["target_mask"])
    forced = model(*args, data["target"], all_true, teacher_forcing=1.0)
    changed_target = data["target"].clone()
    changed_target[:, 1] += 1.0
    forced_changed = model(*args, changed_target, all_true, teacher_forcing=1.0)
    assert torch.equal(forced[:, :2], forced_changed[:, :2])
    assert not torch.allclose(forced[:, 2:], forced_changed[:, 2:])
    free = model(*args, data["target"], all_true, teacher_forcing=0.0)
    assert torch.equal(free, model(*args, changed_target, all_true, teacher_forcing=0.0))


def test_scheduled_sampling_mixes_truth_and_forecast_per_sample() -> None:
    model = zero_residual_model()
    data = random_batch(64, 3, 2, 1, 1, size=3)
    last, _ = last_observed(data["series"], data["series_mask"])
    all_true = torch.ones_like(data["target_mask"])
    torch.manual_seed(0)
    pred = model(data["series"], data["series_mask"], data["covariates"], data["target"], all_true, 0.5)
    fed_truth = (pred[:, 1] == data["target"][:, 0]).flatten(1).all(1)
    fed_forecast = (pred[:, 1] == last).flatten(1).all(1)
    assert torch.equal(fed_truth, ~fed_forecast)
    assert 16 < int(fed_truth.sum()) < 48


def test_tiny_model_learns_linear_growth_and_beats_persistence(one_thread: None) -> None:
    """Values grow linearly at a different rate per pixel; the last input alone cannot tell the rate."""

    def linear_growth(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        base = torch.rand(n, 1, 1, 8, 8, generator=generator)
        rate = 0.2 * torch.rand(n, 1, 1, 8, 8, generator=generator)
        values = base + rate * torch.arange(7.0).view(1, 7, 1, 1, 1)
        return values[:, :3], values[:, 3:], torch.rand(n, 1, 8, 8, generator=generator)

    torch.manual_seed(0)
    model = ConvLSTMForecaster(ForecastModelConfig(hidden_channels=(8,)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    series, target, covariates = linear_growth(32, seed=0)
    series_mask, target_mask = torch.ones_like(series, dtype=torch.bool), torch.ones_like(target, dtype=torch.bool)
    for _ in range(300):
        pred = model(series, series_mask, covariates, target, target_mask, teacher_forcing=0.5)
        loss = model.loss(pred, target, target_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    series, target, covariates = linear_growth(64, seed=1)  # unseen chips from the same process
    model.eval()
    with torch.no_grad():
        pred = model(series, series_mask[:1].expand_as(series), covariates, n_horizons=4)
    metrics = ForecastMetrics(n_horizons=4)
    all_valid = torch.ones_like(target, dtype=torch.bool)
    metrics.update(pred, target, all_valid, series, torch.ones_like(series, dtype=torch.bool))
    skill = metrics.compute()["skill_persistence"][:, 0]
    assert (skill > 0.5).all(), skill


def test_presets_and_config_validation() -> None:
    assert tiny().quantiles == () and tiny().n_input_steps == 3 and tiny().n_horizons == 4
    assert reference().quantiles == QUANTILES_95
    for preset in (tiny(), reference()):
        assert from_dict(ForecastModelConfig, to_dict(preset)) == preset  # survives the YAML config round trip
    big, small = ConvLSTMForecaster(reference()), ConvLSTMForecaster(tiny())
    assert sum(p.numel() for p in big.parameters()) > 20 * sum(p.numel() for p in small.parameters())
    with pytest.raises(UserError, match=r"include 0\.5"):
        ForecastModelConfig(quantiles=(0.1, 0.9))
    with pytest.raises(UserError, match="kernel_size"):
        ForecastModelConfig(kernel_size=4)
    with pytest.raises(ValueError, match="covariates"):
        ConvLSTMForecaster(tiny())(torch.zeros(1, 3, 1, 4, 4), torch.ones(1, 3, 1, 4, 4, dtype=torch.bool))


def reference_cell_update(gates: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The LSTM equations written out on their own, as the cell computed them before inference was sped up."""
    input_gate, forget_gate, output_gate, candidate = gates.chunk(4, dim=1)
    cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(input_gate) * torch.tanh(candidate)
    return torch.sigmoid(output_gate) * torch.tanh(cell), cell


def test_gate_update_equals_the_lstm_equations_in_float32_even_from_bf16_gates() -> None:
    generator = torch.Generator().manual_seed(0)
    gates, cell = torch.randn(2, 12, 5, 5, generator=generator), torch.randn(2, 3, 5, 5, generator=generator)
    hidden, new_cell = lstm_gate_update(gates, cell)
    expected_hidden, expected_cell = reference_cell_update(gates, cell)
    torch.testing.assert_close(hidden, expected_hidden, rtol=0, atol=0)
    torch.testing.assert_close(new_cell, expected_cell, rtol=0, atol=0)
    # bf16 gates (from a bf16 convolution): the cell is computed and kept in float32, the hidden map is bf16.
    hidden16, cell16 = lstm_gate_update(gates.bfloat16(), cell)
    assert hidden16.dtype == torch.bfloat16 and cell16.dtype == torch.float32
    torch.testing.assert_close(cell16, reference_cell_update(gates.bfloat16().float(), cell)[1], rtol=0, atol=0)


def fast_path_inputs(size: int = 24) -> tuple[ConvLSTMForecaster, dict[str, torch.Tensor | None]]:
    torch.manual_seed(0)
    model = ConvLSTMForecaster(small_config(hidden_channels=(8, 8), quantiles=QUANTILES_95)).eval()
    batch = random_batch(2, 3, 4, 1, 1, size=size)
    return model, {key: batch[key] for key in ("series", "series_mask", "covariates")}


def test_inference_fast_path_equals_the_training_path_in_float32() -> None:
    """Without autograd, channels-last: the same forecast as the training (autograd, NCHW) path."""
    model, inputs = fast_path_inputs()
    with torch.enable_grad():
        reference_pred = model(**inputs).detach()
    fast = ConvLSTMForecaster(model.config).eval()
    fast.load_state_dict(model.state_dict())
    fast.use_channels_last()
    with torch.inference_mode():
        fast_pred = fast(**inputs)
    torch.testing.assert_close(fast_pred, reference_pred, rtol=1e-5, atol=1e-5)


def test_bf16_inference_stays_within_a_hundredth_of_float32() -> None:
    """bf16 convolutions (8-bit mantissa) with a float32 cell and roll-out: forecasts in normalized units move
    by at most a few thousandths - about a thousandth of HM's 0..1 range at a z-score std of 0.2."""
    model, inputs = fast_path_inputs()
    with torch.inference_mode():
        exact = model(**inputs)
        model.use_channels_last()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model(**inputs).float()
    difference = (fast - exact).abs()
    assert difference.max() < 0.02 and difference.mean() < 0.003
    assert difference.max() > 0  # bf16 really ran


@pytest.mark.slow
def test_compiled_gates_equal_the_eager_model() -> None:
    model, inputs = fast_path_inputs()
    with torch.inference_mode():
        eager = model(**inputs)
        model.compile_gates()
        compiled = model(**inputs)
    assert model.gates_compiled
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_a_failing_compiler_falls_back_to_the_eager_gate_update_with_one_warning() -> None:
    fused = CompiledOrEager(lstm_gate_update)

    def broken(*args: torch.Tensor) -> None:
        raise RuntimeError("InductorError: no C++ compiler found\nlong trace")

    fused.compiled = broken
    gates, cell = torch.randn(1, 8, 3, 3), torch.randn(1, 2, 3, 3)
    with pytest.warns(UserWarning, match="torch.compile failed, running uncompiled: InductorError: no C"):
        hidden, new_cell = fused(gates, cell)
    expected_hidden, expected_cell = lstm_gate_update(gates, cell)
    assert torch.equal(hidden, expected_hidden) and torch.equal(new_cell, expected_cell)
    assert fused.compiled is None  # later calls go straight to the eager function
