"""ConvLSTM encoder-forecaster for raster time series (Shi et al. 2015, "Convolutional LSTM Network").

Plain PyTorch, no I/O, no Lightning. Tensor layout, with B batch, K input steps, H horizons, C series channels,
V covariate channels and (Y, X) pixels:

- ``series``      (B, K, C, Y, X) float, the K most recent steps, normalized; values under the mask are ignored
- ``series_mask`` (B, K, C, Y, X) bool, True where the input is observed (False: nodata or before the series)
- ``covariates``  (B, V, Y, X) float static covariates (e.g. elevation), already filled; None when V = 0
- ``target``      (B, H, C, Y, X) float, the next H steps; ``target_mask`` says where ground truth exists
- prediction      (B, H, C, Y, X), or (B, H, C, Q, Y, X) with Q quantile heads

The encoder reads the K steps, each as [values, validity mask, covariates], so a missing input is never
mistaken for a zero. The forecaster starts from the encoder's state and rolls out H steps autoregressively: each
step sees the previous step's value (the last observation, then its own previous point forecast, or with
probability ``teacher_forcing`` the ground truth - scheduled sampling) plus the covariates.

The network's config, :class:`ForecastModelConfig`, is the recipe's ``model`` section; it lives in the torch-free
``config.py`` so the command line reads recipes without importing torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from landformer.forecast.config import ForecastModelConfig


def last_observed(series: torch.Tensor, series_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel and channel, the most recent observed input value and whether there was any.

    Returns (B, C, Y, X) values (0 where nothing was observed) and a (B, C, Y, X) bool "any observed" mask.
    This is both the persistence forecast and the base the model adds its residual to.
    """
    value = torch.zeros_like(series[:, 0])
    observed = torch.zeros_like(series_mask[:, 0])
    for step in range(series.shape[1]):
        value = torch.where(series_mask[:, step], series[:, step], value)
        observed = observed | series_mask[:, step]
    return value, observed


def median_index(quantiles: Sequence[float]) -> int:
    return list(quantiles).index(0.5)


def point_forecast(pred: torch.Tensor, quantiles: Sequence[float] = ()) -> torch.Tensor:
    """(B, H, C, Y, X) point forecast: the prediction itself, or its median head."""
    return pred.select(-3, median_index(quantiles)) if quantiles else pred


def masked_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, quantiles: Sequence[float] | None = None
) -> torch.Tensor:
    """MSE, or the pinball loss averaged over quantiles, over the pixels where ``mask`` is True only.

    ``pred`` has ``target``'s shape, or one extra quantile axis at -3 when ``quantiles`` is given. Missing ground
    truth (a horizon past the series end, nodata; it may be NaN) contributes nothing to the loss or to the
    gradients, and an all-missing batch gives a zero loss, not NaN.
    """
    # Sum in at least float32: a bf16 sum of the mask stops counting exactly past 256 pixels.
    pred = pred.to(torch.promote_types(pred.dtype, torch.float32))
    mask = mask.bool()
    if target.shape != mask.shape:
        raise ValueError(f"target shape {tuple(target.shape)} differs from mask shape {tuple(mask.shape)}")
    weight = mask.to(pred.dtype)
    # Zero-fill first: NaN * 0 is NaN, and the gradient through a NaN target would be NaN too.
    target = torch.where(mask, target, torch.zeros_like(target)).to(pred.dtype)
    if quantiles:
        if pred.shape[:-3] + pred.shape[-2:] != target.shape or pred.shape[-3] != len(quantiles):
            raise ValueError(f"quantile prediction {tuple(pred.shape)} does not fit target {tuple(target.shape)}")
        taus = torch.tensor(quantiles, dtype=pred.dtype, device=pred.device).view(-1, 1, 1)
        error = target.unsqueeze(-3) - pred
        per_pixel = torch.maximum(taus * error, (taus - 1) * error).mean(dim=-3)
        per_pixel = per_pixel * weight
    else:
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        per_pixel = ((pred - target) * weight) ** 2
    return per_pixel.sum() / weight.sum().clamp(min=1.0)


def lstm_gate_update(gates: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The LSTM update from the (B, 4n, Y, X) gate pre-activations [input, forget, output, candidate]: returns
    the new hidden map (in the gates' dtype, ready for the next convolution) and cell (float32 or wider).

    The arithmetic runs in float32 even when the convolution ran in bf16, so a long roll-out does not accumulate
    bf16 rounding in the cell. Training calls it as it is; fast inference fuses it into one compiled kernel
    (:meth:`ConvLSTMForecaster.compile_gates`), because on a large tile these element-wise passes are
    memory-bound and cost more than a bf16 convolution.
    """
    input_gate, forget_gate, output_gate, candidate = gates.float().chunk(4, dim=1)
    cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(input_gate) * torch.tanh(candidate)
    hidden = torch.sigmoid(output_gate) * torch.tanh(cell)
    return hidden.to(gates.dtype), cell


class CompiledOrEager:
    """``torch.compile(function)``, falling back to ``function`` itself (with one warning) if compiling fails.

    Inductor on CPU needs a C++ compiler at run time; a machine without one must still forecast, only slower.
    """

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.compiled: Callable[..., Any] | None = torch.compile(function, dynamic=False)

    def __call__(self, *args: torch.Tensor) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as error:  # any compiler failure: the eager function computes the same numbers
                warnings.warn(f"torch.compile failed, running uncompiled: {str(error).splitlines()[0]}", stacklevel=2)
                self.compiled = None
        return self.function(*args)


class ConvLSTMCell(nn.Module):
    """One ConvLSTM layer without peepholes: a single convolution over [x, h] gives all four gates."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(
            in_channels + hidden_channels, 4 * hidden_channels, kernel_size, padding=kernel_size // 2
        )
        self.gate_update: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = lstm_gate_update
        with torch.no_grad():
            # A forget-gate bias of 1 keeps memory by default early in training (Jozefowicz et al. 2015).
            self.gates.bias[hidden_channels : 2 * hidden_channels].fill_(1.0)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, cell = state
        # x in the hidden map's dtype: under bf16 autocast the concatenation is then already in bf16.
        return self.gate_update(self.gates(torch.cat([x.to(hidden.dtype), hidden], dim=1)), cell)


State = list[tuple[torch.Tensor, torch.Tensor]]


def _memory_format(tensor: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if tensor.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


class ConvLSTMStack(nn.Module):
    """Stacked ConvLSTM layers, each reading the hidden map of the one below, advanced one time step per call."""

    def __init__(self, in_channels: int, hidden_channels: Sequence[int], kernel_size: int) -> None:
        super().__init__()
        widths = [in_channels, *hidden_channels]
        self.layers = nn.ModuleList(
            ConvLSTMCell(widths[i], widths[i + 1], kernel_size) for i in range(len(hidden_channels))
        )

    def initial_state(self, like: torch.Tensor) -> State:
        """Zero hidden and cell maps in ``like``'s dtype, device and memory format."""
        batch, _, height, width = like.shape
        shapes = [(batch, layer.hidden_channels, height, width) for layer in self.layers]
        layout = _memory_format(like)

        def zeros(shape: tuple[int, ...]) -> torch.Tensor:
            return like.new_zeros(shape).contiguous(memory_format=layout)

        return [(zeros(shape), zeros(shape)) for shape in shapes]

    def forward(self, x: torch.Tensor, state: State) -> State:
        new_state = []
        for layer, layer_state in zip(self.layers, state, strict=True):
            hidden, cell = layer(x, layer_state)
            new_state.append((hidden, cell))
            x = hidden
        return new_state


class ConvLSTMForecaster(nn.Module):
    def __init__(self, config: ForecastModelConfig) -> None:
        super().__init__()
        self.config = config
        n_series, n_covariates = config.n_series_channels, config.n_covariate_channels
        self.n_outputs = len(config.quantiles) or 1
        self.encoder = ConvLSTMStack(2 * n_series + n_covariates, config.hidden_channels, config.kernel_size)
        self.forecaster = ConvLSTMStack(n_series + n_covariates, config.hidden_channels, config.kernel_size)
        # The head reads every forecaster layer (as in Shi et al.), giving lower layers a short gradient path.
        self.head = nn.Conv2d(sum(config.hidden_channels), n_series * self.n_outputs, kernel_size=1)
        self.channels_last = False
        self.gates_compiled = False

    def _check_inputs(self, series: torch.Tensor, series_mask: torch.Tensor, covariates: torch.Tensor | None) -> None:
        config = self.config
        if series.ndim != 5 or series.shape[2] != config.n_series_channels:
            raise ValueError(f"series should be (B, K, {config.n_series_channels}, Y, X), got {tuple(series.shape)}")
        if series_mask.shape != series.shape:
            raise ValueError(f"series_mask {tuple(series_mask.shape)} should match series {tuple(series.shape)}")
        if config.n_covariate_channels == 0:
            if covariates is not None:
                raise ValueError("covariates given to a model configured with n_covariate_channels = 0")
        elif covariates is None or covariates.shape != (
            series.shape[0],
            config.n_covariate_channels,
            *series.shape[-2:],
        ):
            got = None if covariates is None else tuple(covariates.shape)
            raise ValueError(f"covariates should be (B, {config.n_covariate_channels}, Y, X) like series, got {got}")

    def use_channels_last(self) -> None:
        """Run in channels-last memory: weights, states and every layer input. oneDNN's bf16 convolutions want
        it; fed NCHW they reorder each input, and a concatenation of mixed layouts copies element by element."""
        self.to(memory_format=torch.channels_last)
        self.channels_last = True

    def _with_covariates(self, x: torch.Tensor, covariates: torch.Tensor | None) -> torch.Tensor:
        x = x if covariates is None else torch.cat([x, covariates.to(x.dtype)], dim=1)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward_encoder(
        self, series: torch.Tensor, series_mask: torch.Tensor, covariates: torch.Tensor | None
    ) -> State:
        """Read the K input steps, oldest first, into the stacked ConvLSTM state."""
        mask = series_mask.bool()
        # Zero-filled values plus the mask channel: the mask, not the value, tells the network what is missing,
        # and NaN nodata cannot leak into the state.
        values = torch.where(mask, series, torch.zeros_like(series))
        state: State | None = None
        for step in range(series.shape[1]):
            x = self._with_covariates(torch.cat([values[:, step], mask[:, step].to(values.dtype)], dim=1), covariates)
            state = self.encoder(x, self.encoder.initial_state(x) if state is None else state)
        return state

    def _ordered_quantiles(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, C, Q, Y, X) raw head outputs -> quantiles that cannot cross.

        The median is free; each further quantile sits a softplus (positive) step beyond its neighbour toward the
        median, so intervals always have positive width and coverage stays meaningful.
        """
        middle = median_index(self.config.quantiles)
        median = raw[:, :, middle : middle + 1]
        below = F.softplus(raw[:, :, :middle]).flip(2).cumsum(2).flip(2)
        above = F.softplus(raw[:, :, middle + 1 :]).cumsum(2)
        return torch.cat([median - below, median, median + above], dim=2)

    def forward_forecaster(
        self,
        state: State,
        start: torch.Tensor,
        covariates: torch.Tensor | None,
        n_horizons: int,
        target: torch.Tensor | None = None,
        target_mask: torch.Tensor | None = None,
        teacher_forcing: float = 0.0,
    ) -> torch.Tensor:
        """Roll out ``n_horizons`` steps from the encoder ``state``, starting from the value map ``start``."""
        if teacher_forcing > 0 and (target is None or target_mask is None):
            raise ValueError("teacher_forcing > 0 needs target and target_mask")
        n_series = self.config.n_series_channels
        previous = start
        predictions = []
        for horizon in range(n_horizons):
            state = self.forecaster(self._with_covariates(previous, covariates), state)
            raw = self.head(torch.cat([hidden for hidden, _ in state], dim=1))
            # The head predicts the change from the step it was fed, not the level: "no change" is then the
            # zero output, so an untrained or unsure model falls back to persistence - a strong baseline for
            # slowly changing rasters like HM - and the network spends its capacity on where change happens.
            if self.config.quantiles:
                raw = raw.unflatten(1, (n_series, self.n_outputs))
                prediction = previous.unsqueeze(2) + self._ordered_quantiles(raw)
                point = point_forecast(prediction, self.config.quantiles)
            else:
                prediction = previous + raw
                point = prediction
            predictions.append(prediction)
            if horizon + 1 < n_horizons:
                previous = point
                if teacher_forcing > 0:
                    # Scheduled sampling (Bengio et al. 2015): per sample, feed the truth with this probability;
                    # where the truth is missing the model's own forecast stands in.
                    use_truth = torch.rand(point.shape[0], device=point.device) < teacher_forcing
                    use_truth = use_truth.view(-1, 1, 1, 1) & target_mask[:, horizon].bool()
                    previous = torch.where(use_truth, target[:, horizon].to(point.dtype), point)
        return torch.stack(predictions, dim=1)

    def forward(
        self,
        series: torch.Tensor,
        series_mask: torch.Tensor,
        covariates: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        target_mask: torch.Tensor | None = None,
        teacher_forcing: float = 0.0,
        n_horizons: int | None = None,
    ) -> torch.Tensor:
        """Forecast (B, H, C, Y, X), or (B, H, C, Q, Y, X) with quantile heads, in the normalized units.

        ``teacher_forcing`` is the scheduled-sampling probability; the training task sets it, evaluation and
        prediction leave it at 0. ``n_horizons`` defaults to the target's length, else to the config's.
        """
        self._check_inputs(series, series_mask, covariates)
        if n_horizons is None:
            n_horizons = target.shape[1] if target is not None else self.config.n_horizons
        if target is not None and target.shape[1] < n_horizons:
            raise ValueError(f"target has {target.shape[1]} horizons, fewer than the {n_horizons} requested")
        state = self.forward_encoder(series, series_mask, covariates)
        start, _ = last_observed(series, series_mask.bool())
        return self.forward_forecaster(state, start, covariates, n_horizons, target, target_mask, teacher_forcing)

    def point_forecast(self, pred: torch.Tensor) -> torch.Tensor:
        return point_forecast(pred, self.config.quantiles)

    def receptive_radius(self, n_input_steps: int, n_horizons: int) -> int:
        """How many pixels away an input can still change an output pixel (an upper bound). Each convolution
        widens it by ``kernel_size // 2``, and a chain of dependencies passes each (step, layer) convolution at
        most once, over the K encoder and H forecaster steps; the 1x1 head and the gates add nothing. Tiled
        predict uses it to forecast narrow strips, not whole tiles, where it only needs a tile's edge."""
        n_convolutions = len(self.config.hidden_channels) * (n_input_steps + n_horizons)
        return self.config.kernel_size // 2 * n_convolutions

    def compile_gates(self) -> None:
        """Fuse every cell's element-wise gate arithmetic into one compiled kernel (inference only: compiled once
        per input shape, and whole-raster prediction uses few: its tile and, on rasters wider than a panel, the
        narrow strip at panel edges). The same function runs, so the numbers match the eager model to float
        rounding."""
        fused = CompiledOrEager(lstm_gate_update)
        for module in self.modules():
            if isinstance(module, ConvLSTMCell):
                module.gate_update = fused
        self.gates_compiled = True

    def loss(self, pred: torch.Tensor, target: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        return masked_loss(pred, target, target_mask, self.config.quantiles or None)
