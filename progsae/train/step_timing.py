"""Training cost measured, not sampled once: per-step times of two SAEs over interleaved, order-randomised repeats.

One step is the trainer's core update (loss forward and backward, decoder-gradient projection, Adam, decoder
renorm). Each repeat runs `steps` steps of every SAE back to back in a seeded random order, on the same batches,
after a warm-up step each, so load from other processes and thermal drift hit all of them alike. The ratio of
per-step medians comes with a percentile bootstrap interval over repeats.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from progsae.sae import SAE, TrainContext
from progsae.train.optimizer import LayoutAdam


def train_step(sae: SAE, opt: torch.optim.Optimizer, x_BD: torch.Tensor, ctx: TrainContext) -> None:
    """The trainer's core update on one batch, without its logging, schedule and multi-process sync."""
    opt.zero_grad()
    out = sae.training_step(x_BD, ctx)
    out.loss.backward()
    sae.remove_parallel_decoder_grad()
    opt.step()
    sae.normalize_decoder()
    sae.after_step(out)


def hardware(device: torch.device | str) -> str:
    """The machine a timing ran on, in words: the accelerator or CPU model, torch threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda), torch {torch.__version__}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} torch threads (cpu), torch {torch.__version__}"


@dataclass
class StepTiming:
    """Per-step seconds [repeat][step] of a numerator and a denominator SAE, their medians and the ratio."""

    numerator: str
    denominator: str
    seconds_num_RS: list[list[float]]
    seconds_den_RS: list[list[float]]
    median_num: float
    median_den: float
    ratio: float
    ratio_ci: list[float]
    repeats: int
    steps: int
    batch_size: int
    hardware: str
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return asdict(self)


def ratio_of_medians(num_RS: np.ndarray, den_RS: np.ndarray, replicates: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, list[float]]:
    """median(num) / median(den) over all steps, with a percentile interval from resampling whole repeats (paired:
    a repeat's two SAEs ran side by side, so they are drawn together)."""
    num_RS, den_RS = np.asarray(num_RS, np.float64), np.asarray(den_RS, np.float64)
    ratio = float(np.median(num_RS) / np.median(den_RS))
    draws = np.random.default_rng(seed).integers(0, num_RS.shape[0], size=(replicates, num_RS.shape[0]))
    reps = np.array([np.median(num_RS[d]) / np.median(den_RS[d]) for d in draws])
    a = (1 - level) / 2
    return ratio, [float(np.quantile(reps, a)), float(np.quantile(reps, 1 - a))]


def time_steps(saes: dict[str, SAE], batches: Sequence[torch.Tensor], repeats: int = 8, steps: int = 6,
               seed: int = 0, lr: float = 1e-4) -> dict[str, np.ndarray]:
    """Seconds [repeats, steps] per SAE: each repeat runs `steps` steps of every SAE in a seeded random order."""
    opts = {name: LayoutAdam(sae.parameters(), lr=lr) for name, sae in saes.items()}
    ctx = TrainContext()
    sync = torch.cuda.synchronize if batches[0].is_cuda else (lambda: None)
    for name, sae in saes.items():  # warm-up: first-call allocations and kernel selection
        train_step(sae, opts[name], batches[0], ctx)
    sync()
    out = {name: np.zeros((repeats, steps)) for name in saes}
    names = list(saes)
    rng = np.random.default_rng(seed)
    for r in range(repeats):
        for name in [names[i] for i in rng.permutation(len(names))]:
            for s in range(steps):
                t0 = time.perf_counter()
                train_step(saes[name], opts[name], batches[(r * steps + s) % len(batches)], ctx)
                sync()
                out[name][r, s] = time.perf_counter() - t0
    return out


def measure_ratio(num: tuple[str, SAE], den: tuple[str, SAE], batches: Sequence[torch.Tensor], repeats: int = 8,
                  steps: int = 6, seed: int = 0) -> StepTiming:
    """Per-step time of `num` over `den` (e.g. Matryoshka-n over vanilla-n) on the same batches, interleaved."""
    times = time_steps({num[0]: num[1], den[0]: den[1]}, batches, repeats, steps, seed)
    a, b = times[num[0]], times[den[0]]
    ratio, ci = ratio_of_medians(a, b, seed=seed)
    return StepTiming(num[0], den[0], a.tolist(), b.tolist(), float(np.median(a)), float(np.median(b)), ratio, ci,
                      repeats, steps, int(batches[0].shape[0]), hardware(batches[0].device),
                      str(batches[0].dtype).removeprefix("torch."))
