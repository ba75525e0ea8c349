"""The Lightning task that trains the ConvLSTM (``self.model``): masked loss and scheduled sampling.
``train.py`` runs it from a recipe.

**Loss.** Missing ground truth (past the series end, the held-out last step, nodata) is masked out of every
term. Without quantile heads the loss is the masked MSE. With them, ``point_loss="pinball"`` trains every head
with the pinball loss (the middle head is then the median), while the default ``"mse"`` trains the middle head
with the MSE and only the outer heads with the pinball loss: the middle head then estimates the conditional
*mean*, which is what MSE-based skill scores reward, and matters for a series like HM, where most pixels do
not change in a given step (a median forecast is mostly persistence) but some jump. The outer heads stay the
2.5 % and 97.5 % quantiles either way, so the 95 % interval keeps its meaning.

**Scheduled sampling.** During training each roll-out step is fed the ground truth instead of the model's own
previous forecast with a probability that starts at ``teacher_forcing`` and decays linearly to 0 at
``max_steps`` (Bengio et al. 2015); validation and inference always feed the model its own forecasts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from landformer.core.task import BaseTask, task_from_recipe
from landformer.forecast.config import ForecastConfig, ForecastModelConfig
from landformer.forecast.data import ForecastData
from landformer.forecast.model import ConvLSTMForecaster, masked_loss, median_index


class ForecastTask(BaseTask):
    """ConvLSTM forecaster trained on masked windows; see the module docstring for the loss."""

    def __init__(
        self,
        n_series_channels: int = 1,
        n_covariate_channels: int = 1,
        n_input_steps: int = 3,
        n_horizons: int = 4,
        hidden_channels: Sequence[int] = (16, 16),
        kernel_size: int = 3,
        quantiles: Sequence[float] = (),
        teacher_forcing: float = 0.5,
        point_loss: str = "mse",
        lr: float = 3e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 20,
        max_steps: int = 200,
        min_lr_ratio: float = 0.1,
    ) -> None:
        if point_loss not in ("mse", "pinball"):
            raise ValueError(f"point_loss should be 'mse' or 'pinball', got {point_loss!r}")
        super().__init__(
            lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio
        )

    def model_config(self) -> ForecastModelConfig:
        hp = self.hparams
        return ForecastModelConfig(
            n_series_channels=hp.n_series_channels,
            n_covariate_channels=hp.n_covariate_channels,
            n_input_steps=hp.n_input_steps,
            n_horizons=hp.n_horizons,
            hidden_channels=tuple(hp.hidden_channels),
            kernel_size=hp.kernel_size,
            quantiles=tuple(hp.quantiles),
        )

    def configure_models(self) -> None:
        self.model = ConvLSTMForecaster(self.model_config())

    def teacher_forcing_now(self) -> float:
        """The scheduled-sampling probability at the current step (0 outside training)."""
        if not self.training:
            return 0.0
        progress = min(1.0, self.global_step / max(1, self.hparams.max_steps))
        return float(self.hparams.teacher_forcing) * (1.0 - progress)

    def forecast_loss(self, pred: Tensor, target: Tensor, target_mask: Tensor) -> Tensor:
        quantiles = tuple(self.hparams.quantiles)
        if not quantiles:
            return masked_loss(pred, target, target_mask)
        if self.hparams.point_loss == "pinball":
            return masked_loss(pred, target, target_mask, quantiles)
        middle = median_index(quantiles)
        outer = [index for index in range(len(quantiles)) if index != middle]
        point_loss = masked_loss(pred.select(-3, middle), target, target_mask)
        outer_heads = pred.index_select(-3, torch.tensor(outer, device=pred.device))
        return point_loss + masked_loss(outer_heads, target, target_mask, [quantiles[i] for i in outer])

    def compute_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        covariates = batch["covariates"] if self.hparams.n_covariate_channels else None
        pred = self.model(
            batch["series"],
            batch["series_mask"],
            covariates,
            batch["target"],
            batch["target_mask"],
            teacher_forcing=self.teacher_forcing_now(),
            n_horizons=self.hparams.n_horizons,
        )
        point = self.model.point_forecast(pred).detach()
        return {
            "loss": self.forecast_loss(pred, batch["target"], batch["target_mask"]),
            "mse": masked_loss(point, batch["target"], batch["target_mask"]),
        }


def build_task(config: ForecastConfig, data: ForecastData) -> ForecastTask:
    """The task of ``config``'s model, task and train sections, shaped by the data: its channel counts, and the
    K and H of the data section (the model section's own values of these four are not used)."""
    return task_from_recipe(
        ForecastTask,
        config,
        n_series_channels=len(data.channel_names),
        n_covariate_channels=len(data.covariate_names),
        n_input_steps=config.data.n_input_steps,
        n_horizons=config.data.n_horizons,
    )
