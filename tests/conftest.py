"""Shared test setup: offline, headless, deterministic, small."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch

# Tests use tiny tensors, where a second intra-op thread costs more in synchronisation than it gains
# (measured: a 300-step ConvLSTM overfit took 4.3 s on one thread, far longer on two under load).
torch.set_num_threads(1)
