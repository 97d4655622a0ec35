"""SAE training: `train_sae(store, out_dir, TrainConfig(...))` with checkpoints, resume and metrics."""

from progsae.train.config import TrainConfig
from progsae.train.trainer import train_sae

__all__ = ["TrainConfig", "train_sae"]
