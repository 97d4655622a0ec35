"""Reconstruction quality on held-out activations: MSE, FVU, explained variance, cosine, L0, dead/dense, shrinkage.

One streaming pass over the store serves every variant; sums are float64 so FVU's
Σ‖x − x̄‖² = Σ‖x‖² − N‖x̄‖² can be taken in the same pass without losing precision.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from progsae.errors import ProgsaeError
from progsae.evals.common import Record, Variant, iter_rows, sae_input


class ReconstructionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str = "test"
    batch_size: int = 4096
    max_tokens: int | None = None  # None: the whole split
    dense_threshold: float = 0.1  # a latent firing on more than this share of tokens is "dense"


class ReconstructionResult(Record):
    """Per-variant reconstruction metrics (MSE is per element; FVU uses the eval-set mean x̄)."""

    tokens: int
    mse: float
    fvu: float
    explained_variance: float  # 1 − Σ‖r − r̄‖² / Σ‖x − x̄‖² with r = x − x̂ (a constant offset is forgiven)
    cosine: float  # mean over tokens of cos(x, x̂)
    l0: float  # mean number of non-zero latents per token
    dead_fraction: float  # latents (of the live size) that never fire on the eval set
    dense_fraction: float  # latents firing on more than dense_threshold of tokens
    relative_norm: float  # mean over tokens of ‖x̂‖ / ‖x‖ (below 1: shrinkage)


class _Acc:
    """float64 running sums for one variant."""

    def __init__(self, d: int, n: int, device: torch.device):
        self.sse = 0.0
        self.sum_r_D = torch.zeros(d, dtype=torch.float64, device=device)
        self.cos = 0.0
        self.rel = 0.0
        self.l0 = 0.0
        self.fired_N = torch.zeros(n, dtype=torch.int64, device=device)

    def add(self, x_BD: Tensor, z_BN: Tensor, x_hat_BD: Tensor) -> None:
        x64, xh64 = x_BD.double(), x_hat_BD.double()
        r = x64 - xh64
        self.sse += float((r * r).sum())
        self.sum_r_D += r.sum(0)
        xn, xhn = x64.norm(dim=1), xh64.norm(dim=1)
        self.cos += float(((x64 * xh64).sum(1) / (xn * xhn).clamp_min(1e-30)).sum())
        self.rel += float((xhn / xn.clamp_min(1e-30)).sum())
        # counted from the nonzero entries: count_nonzero(dim=0) made an int64 copy of z here (4x slower)
        fired_N = torch.bincount(z_BN.nonzero(as_tuple=True)[-1], minlength=z_BN.shape[-1])
        self.l0 += float(fired_N.sum())
        self.fired_N += fired_N


def live_size(v: Variant) -> int:
    """Latents a variant can use: its mask size in mask mode, else all of them."""
    return v.sae.cfg.mask_size or v.sae.n_latents


@torch.no_grad()
def evaluate_reconstruction(store, variants: list[Variant], cfg: ReconstructionConfig | None = None, progress=None) -> list[ReconstructionResult]:
    """Stream the split once and score every variant on the same rows."""
    cfg = cfg or ReconstructionConfig()
    d = store.d_model
    for v in variants:
        if v.sae.d_in != d:
            raise ProgsaeError(f"{v.name}: SAE d_in={v.sae.d_in} but the store has d_model={d}")
    accs = [_Acc(d, v.sae.n_latents, v.sae.W_enc.device) for v in variants]
    n_tok = 0
    sum_x_D = torch.zeros(d, dtype=torch.float64)
    sum_xx = 0.0
    for x_BD in iter_rows(store, cfg.split, cfg.batch_size, cfg.max_tokens):
        x64 = x_BD.double()
        n_tok += x_BD.shape[0]
        sum_x_D += x64.sum(0)
        sum_xx += float((x64 * x64).sum())
        for v, acc in zip(variants, accs):
            z_BN = v.sae.encode(sae_input(v.sae, x_BD))
            acc.add(x_BD.to(z_BN.device), z_BN, v.sae.decode(z_BN))
        if progress is not None:
            progress(x_BD.shape[0])
    if n_tok == 0:
        raise ProgsaeError(f"{store.path}: the '{cfg.split}' split is empty")
    total_var = sum_xx - float(sum_x_D @ sum_x_D) / n_tok
    if total_var <= 0:
        raise ProgsaeError(f"{store.path}: activations are constant; FVU is undefined")
    out = []
    for v, acc in zip(variants, accs):
        live = live_size(v)
        fired = acc.fired_N[:live]
        resid_var = acc.sse - float(acc.sum_r_D @ acc.sum_r_D) / n_tok
        out.append(
            ReconstructionResult(
                **Record.header(v),
                tokens=n_tok,
                mse=acc.sse / (n_tok * d),
                fvu=acc.sse / total_var,
                explained_variance=1.0 - resid_var / total_var,
                cosine=acc.cos / n_tok,
                l0=acc.l0 / n_tok,
                dead_fraction=float((fired == 0).double().mean()),
                dense_fraction=float((fired.double() / n_tok > cfg.dense_threshold).double().mean()),
                relative_norm=acc.rel / n_tok,
            )
        )
    return out
