"""Intervals for every reported number: a seeded bootstrap over test contexts, shared by all variants.

Each evaluation reduces its rows to per-context sums (a context is the resampling unit, since tokens of
one context are not independent) and a metric to a function of those sums. One weight matrix W [R, C]
(multinomial counts: how often each of C contexts is drawn in each of R resamples) turns the sums of
every variant into R replicates of its metric. The matrix depends only on (seed, C), so two variants
scored on the same contexts share it and their difference, replicate by replicate, is a paired
bootstrap of the difference. Intervals are percentile intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from pydantic import BaseModel, ConfigDict

DEFAULT_REPLICATES = 1000
LEVEL = 0.95


class BootstrapConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    replicates: int = DEFAULT_REPLICATES
    seed: int = 0
    level: float = LEVEL


def resample_weights(n_units: int, replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> np.ndarray:
    """W [R, C] float64: row r counts how often each unit is drawn in resample r (C draws with replacement)."""
    rng = np.random.default_rng([seed, n_units, 7919])
    return rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=replicates).astype(np.float64)


def interval(replicates_R: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """The percentile interval [lo, hi] of finite replicates (None when there are none)."""
    r = np.asarray(replicates_R, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return None
    a = (1 - level) / 2
    lo, hi = np.quantile(r, [a, 1 - a])
    return [float(lo), float(hi)]


def ratio(W_RC: np.ndarray, num_C: np.ndarray, den_C: np.ndarray) -> np.ndarray:
    """Replicates of Σ num / Σ den."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (W_RC @ num_C) / (W_RC @ den_C)


@dataclass
class Comparison:
    """A paired difference a − b with its interval, and what it means for the claim being tested.

    `better` is the sign that favours a: -1 when lower is better (FVU), +1 when higher is (RSA)."""

    a: float
    b: float
    diff: float
    ci: list[float] | None
    better: int

    @property
    def outcome(self) -> str:
        """win (a better, interval excludes zero), loss (a worse, interval excludes zero), else tie."""
        if self.ci is None:
            return "tie"
        lo, hi = self.ci
        if lo > 0 or hi < 0:
            return "win" if (self.diff * self.better) > 0 else "loss"
        return "tie"

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "diff": self.diff, "ci": self.ci, "outcome": self.outcome}


def paired(a: float, b: float, a_R: np.ndarray | None, b_R: np.ndarray | None, better: int, level: float = LEVEL) -> Comparison:
    """a − b with the percentile interval of the replicate-by-replicate differences (no interval without replicates)."""
    ci = None
    if a_R is not None and b_R is not None and len(a_R) == len(b_R):
        ci = interval(np.asarray(a_R) - np.asarray(b_R), level)
    return Comparison(a=a, b=b, diff=a - b, ci=ci, better=better)


def save_replicates(path, replicates: dict[str, dict[str, np.ndarray]]) -> None:
    """Write {variant: {metric: [R]}} as one safetensors file (tensor names "variant::metric")."""
    import torch

    from progsae.sae.io import atomic_save_safetensors

    tensors = {f"{v}::{m}": torch.from_numpy(np.array(r, dtype=np.float64))  # own copies: shared arrays cannot be saved
               for v, per in replicates.items() for m, r in per.items()}
    atomic_save_safetensors(tensors, path)


def load_replicates(path) -> dict[str, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    out: dict[str, dict[str, np.ndarray]] = {}
    for name, arr in load_file(str(path)).items():
        v, m = name.rsplit("::", 1)
        out.setdefault(v, {})[m] = arr
    return out


SIGNIFICANCE = 0.05  # family-wise, after Holm's correction within a finding


def seed_mean_replicates(diff_SR: np.ndarray, seed: int = 0) -> np.ndarray:
    """Hierarchical bootstrap of a seed-mean difference [R]: replicate r draws S seeds with replacement and averages
    their differences at row r. Every SAE's row r uses the same context resample (`resample_weights` is seeded by the
    eval seed and the context count, and all seeds score the same test contexts), so the draw resamples seeds, then
    contexts. With one seed it is that seed's replicates."""
    diff_SR = np.asarray(diff_SR, dtype=np.float64)
    S, R = diff_SR.shape
    if S == 1:
        return diff_SR[0]
    pick_RS = np.random.default_rng([seed, S, R]).integers(0, S, size=(R, S))
    return diff_SR[pick_RS, np.arange(R)[:, None]].mean(1)


def bootstrap_p(diff_R: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a difference being 0: twice the smaller tail share at 0, with the +1 correction."""
    d = np.asarray(diff_R, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return 1.0
    below, above = (np.sum(d <= 0) + 1) / (d.size + 1), (np.sum(d >= 0) + 1) / (d.size + 1)
    return float(min(1.0, 2 * min(below, above)))


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order."""
    order = np.argsort(p)
    m, out, running = len(p), [1.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def minimum_detectable(se: float, power: float = 0.8, alpha: float = SIGNIFICANCE) -> float:
    """The smallest true difference a two-sided test at `alpha` detects with `power`: (z_{1−α/2} + z_power) × the
    standard error (2.80 × SE at 80% power and α = 0.05)."""
    z = NormalDist().inv_cdf
    return float((z(1 - alpha / 2) + z(power)) * se)
