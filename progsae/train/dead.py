"""Dead-latent tracking: tokens since each latent last fired, and the mask AuxK trains on."""

from __future__ import annotations

import torch
from torch import Tensor


class DeadTracker:
    """A latent is dead once it has not fired for `window` tokens."""

    def __init__(self, n_latents: int, window: int, device: torch.device | str = "cpu"):
        self.window = int(window)
        self.since_fired_N = torch.zeros(n_latents, dtype=torch.long, device=device)

    def update(self, fired_N: Tensor, tokens: int) -> None:
        """Record one step over `tokens` tokens in which the latents in `fired_N` (bool) fired."""
        self.since_fired_N += tokens
        self.since_fired_N[fired_N] = 0

    def dead_mask(self) -> Tensor:
        return self.since_fired_N >= self.window

    def dead_fraction(self) -> float:
        return float(self.dead_mask().float().mean())
