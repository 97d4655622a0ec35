"""Shared fixtures live in tests/fixtures/, one module per data source."""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

pytest_plugins = ["fixtures.models", "fixtures.synthetic"]  # synthetic imports models
