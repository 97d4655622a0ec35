"""Learning-rate and L1 schedules as pure functions of the step (so resuming needs only the step)."""

from __future__ import annotations


def lr_at(step: int, base_lr: float, total_steps: int, warmup_steps: int, decay_frac: float) -> float:
    """Linear warm-up from ~0 over warmup_steps, constant, then linear decay to 0 over the last decay_frac of steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = int(total_steps * decay_frac)
    decay_start = total_steps - decay_steps
    if decay_steps > 0 and step >= decay_start:
        return base_lr * (total_steps - step) / decay_steps
    return base_lr


def l1_at(step: int, l1_coef: float, warmup_steps: int) -> float:
    """The L1 coefficient ramps linearly from 0 to l1_coef over warmup_steps (avoids early dead latents)."""
    if warmup_steps > 0 and step < warmup_steps:
        return l1_coef * (step + 1) / warmup_steps
    return l1_coef
