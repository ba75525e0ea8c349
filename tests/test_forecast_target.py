"""The issue's target, with the tiny default recipe on the default synthetic world (minutes: slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from landformer.forecast.config import ForecastConfig
from landformer.forecast.evaluate import evaluate_forecaster
from landformer.forecast.train import train


@pytest.mark.slow
def test_tiny_recipe_beats_both_baselines_and_its_interval_covers(tmp_path: Path) -> None:
    """On the held-out blocks of a 256 px world: skill > 0 against persistence and linear trend at every
    horizon, and the 95 % interval covers 90-99 % of the valid pixels."""
    threads = torch.get_num_threads()
    try:
        summary = train(ForecastConfig(), tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    result = evaluate_forecaster(summary["run_dir"], tmp_path / "eval")
    rows = result["per_horizon"]
    assert [row["horizon"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        assert row["skill_persistence"] > 0, row
        assert row["skill_trend"] > 0, row
        assert 0.90 <= row["coverage"] <= 0.99, row
    assert result["summary"]["beats_persistence_at_every_horizon"]
    assert result["summary"]["beats_trend_at_every_horizon"]
