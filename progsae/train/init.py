"""Initialisation: input scale, b_dec at the geometric median, unit random decoder, W_enc = W_dec^T."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from progsae.data.store import ActivationStore
from progsae.errors import ProgsaeError
from progsae.sae.base import SAE


def strided_sample(store: ActivationStore, rows: int, split: str = "train") -> Tensor:
    """Up to `rows` activations [S, D], evenly strided over the kept rows of a split (the init sample, the held-out sample)."""
    total = store.num_tokens(split)
    if total == 0:
        raise ProgsaeError(f"{store.path}: the '{split}' split is empty")
    stride = max(1, total // rows)
    parts, offset = [], 0
    for chunk in store.iter_rows(split, 65536):
        first = (-offset) % stride  # first row of this chunk on the global stride grid
        if first < chunk.shape[0]:
            parts.append(chunk[first::stride].clone())
        offset += chunk.shape[0]
    sample_SD = torch.cat(parts)[:rows]
    if not torch.isfinite(sample_SD).all():
        raise ProgsaeError(f"{store.path}: the {split} split contains NaN or inf activations")
    return sample_SD


def input_scale(sample_SD: Tensor) -> float:
    """The scalar s with E||s x||^2 = d, so one set of hyper-parameters fits every model and layer."""
    mean_sq = float(sample_SD.double().pow(2).sum(-1).mean())
    if not mean_sq > 0:
        raise ProgsaeError("the activations are all zero; nothing to train on")
    return math.sqrt(sample_SD.shape[1] / mean_sq)


def geometric_median(x_SD: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
    """The point minimising the summed Euclidean distance to the rows (Weiszfeld's algorithm), float64 inside."""
    x = x_SD.double()
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(1e-12)
        new = (w[:, None] * x).sum(0) / w.sum()
        done = (new - m).norm() <= tol * max(1.0, float(m.norm()))
        m = new
        if done:
            break
    return m.to(x_SD.dtype)


@torch.no_grad()
def init_sae(sae: SAE, sample_SD: Tensor, generator: torch.Generator) -> None:
    """b_dec = geometric median of the (already scaled) sample; W_dec random unit rows; W_enc = W_dec^T; b_enc = 0."""
    n, d = sae.W_dec.shape
    W_dec_ND = torch.randn(n, d, generator=generator, dtype=torch.float32)
    W_dec_ND /= W_dec_ND.norm(dim=1, keepdim=True)
    sae.W_dec.copy_(W_dec_ND)
    sae.W_enc.copy_(W_dec_ND.T)
    sae.b_enc.zero_()
    sae.b_dec.copy_(geometric_median(sample_SD))
