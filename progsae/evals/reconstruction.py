"""Reconstruction quality on held-out activations: MSE, FVU, explained variance, cosine, L0, dead/dense, shrinkage.

One streaming pass over the store serves every variant. Sums are float64 and kept per context, so
FVU's Σ‖x − x̄‖² = Σ‖x‖² − N‖x̄‖² comes from the same pass without losing precision, and every metric
gets a bootstrap interval over contexts (progsae.evals.bootstrap) from the same sums.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from torch import Tensor

from progsae.errors import ProgsaeError
from progsae.evals.bootstrap import BootstrapConfig, resample_weights
from progsae.evals.common import Record, Variant, sae_input


class ReconstructionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str = "test"
    batch_size: int = 4096
    max_tokens: int | None = None  # None: the whole split; else a seeded sample of whole contexts holding about this many rows
    dense_threshold: float = 0.1  # a latent firing on more than this share of tokens is "dense"
    seed: int = 0  # of the context sample and the bootstrap
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)


class ReconstructionResult(Record):
    """Per-variant reconstruction metrics (MSE is per element; FVU uses the eval-set mean x̄); `ci` holds their intervals."""

    tokens: int
    contexts: int
    mse: float
    fvu: float
    explained_variance: float  # 1 − Σ‖r − r̄‖² / Σ‖x − x̄‖² with r = x − x̂ (a constant offset is forgiven)
    cosine: float  # mean over tokens of cos(x, x̂)
    l0: float  # mean number of non-zero latents per token
    dead_fraction: float  # latents (of the live size) that never fire on the eval set
    dense_fraction: float  # latents firing on more than dense_threshold of tokens
    relative_norm: float  # mean over tokens of ‖x̂‖ / ‖x‖ (below 1: shrinkage)
    _firing: np.ndarray | None = PrivateAttr(default=None)  # [live] share of eval tokens each latent fires on (not in the JSON)

    @property
    def firing_frequency(self) -> np.ndarray | None:
        """Per live latent, the share of eval tokens it fires on: the feature-density histogram's data."""
        return self._firing


class _Sums:
    """float64 per-context sums [C, ...] for one variant (or, with no codes, for the data itself)."""

    def __init__(self, n_ctx: int, d: int, n: int | None):
        self.sse_C = np.zeros(n_ctx)
        self.sum_r_CD = np.zeros((n_ctx, d))
        self.cos_C = np.zeros(n_ctx)
        self.rel_C = np.zeros(n_ctx)
        self.l0_C = np.zeros(n_ctx)
        self.fired_CN = np.zeros((n_ctx, n), dtype=np.uint16) if n else None  # rows per context < 2^16

    def add(self, ctx_B: Tensor, x_BD: Tensor, z_BN: Tensor, x_hat_BD: Tensor) -> None:
        C = self.sse_C.shape[0]
        x64, xh64 = x_BD.double(), x_hat_BD.double()
        r = x64 - xh64
        xn, xhn = x64.norm(dim=1), xh64.norm(dim=1)
        per_row = torch.stack([(r * r).sum(1), (x64 * xh64).sum(1) / (xn * xhn).clamp_min(1e-30),
                               xhn / xn.clamp_min(1e-30)], 1).cpu()
        c = ctx_B.cpu()
        sums = torch.zeros(C, 3, dtype=torch.float64).index_add_(0, c, per_row).numpy()
        self.sse_C += sums[:, 0]
        self.cos_C += sums[:, 1]
        self.rel_C += sums[:, 2]
        self.sum_r_CD += torch.zeros(C, r.shape[1], dtype=torch.float64).index_add_(0, c, r.cpu()).numpy()
        rows, cols = z_BN.nonzero(as_tuple=True)
        rows, cols = rows.cpu(), cols.cpu()
        ctx_nz = c[rows]
        self.l0_C += np.bincount(ctx_nz.numpy(), minlength=C)
        flat = np.bincount((ctx_nz * z_BN.shape[1] + cols).numpy(), minlength=C * z_BN.shape[1])
        self.fired_CN += flat.reshape(C, -1).astype(np.uint16)


def live_size(v: Variant) -> int:
    """Latents a variant can use: its mask size in mask mode, else all of them."""
    return v.sae.cfg.mask_size or v.sae.n_latents


def _metrics(W: np.ndarray, n_C, sx_CD, sxx_C, acc: _Sums, live: int, d: int, dense: float) -> dict[str, np.ndarray]:
    """Every metric for each row of weights W [R, C] (a row of ones gives the point estimate)."""
    n = W @ n_C
    sx = W @ sx_CD
    total_var = W @ sxx_C - (sx * sx).sum(1) / n
    sse = W @ acc.sse_C
    sr = W @ acc.sum_r_CD
    fired = W.astype(np.float32) @ acc.fired_CN[:, :live].astype(np.float32)
    return {
        "mse": sse / (n * d),
        "fvu": sse / total_var,
        "explained_variance": 1.0 - (sse - (sr * sr).sum(1) / n) / total_var,
        "cosine": (W @ acc.cos_C) / n,
        "l0": (W @ acc.l0_C) / n,
        "dead_fraction": (fired == 0).mean(1),
        "dense_fraction": (fired / n[:, None] > dense).mean(1),
        "relative_norm": (W @ acc.rel_C) / n,
    }


@torch.no_grad()
def evaluate_reconstruction(store, variants: list[Variant], cfg: ReconstructionConfig | None = None, progress=None) -> list[ReconstructionResult]:
    """Stream the (sampled) contexts once and score every variant on the same rows, with bootstrap intervals."""
    cfg = cfg or ReconstructionConfig()
    d = store.d_model
    for v in variants:
        if v.sae.d_in != d:
            raise ProgsaeError(f"{v.name}: SAE d_in={v.sae.d_in} but the store has d_model={d}")
    contexts = store.sample_contexts(cfg.split, cfg.max_tokens, cfg.seed)
    C = contexts.shape[0]
    accs = [_Sums(C, d, v.sae.n_latents) for v in variants]
    n_C, sxx_C, sx_CD = np.zeros(C), np.zeros(C), np.zeros((C, d))
    for x_BD, ctx, _ in store.iter_context_rows(cfg.split, contexts, cfg.batch_size):
        c = torch.from_numpy(ctx)
        x64 = x_BD.double()
        n_C += np.bincount(ctx, minlength=C)
        sxx_C += torch.zeros(C, dtype=torch.float64).index_add_(0, c, (x64 * x64).sum(1)).numpy()
        sx_CD += torch.zeros(C, d, dtype=torch.float64).index_add_(0, c, x64).numpy()
        for v, acc in zip(variants, accs):
            z_BN = v.sae.encode(sae_input(v.sae, x_BD))
            acc.add(c, x_BD.to(z_BN.device), z_BN, v.sae.decode(z_BN))
        if progress is not None:
            progress(x_BD.shape[0])
    n_tok = int(n_C.sum())
    if n_tok == 0:
        raise ProgsaeError(f"{store.path}: the '{cfg.split}' split is empty")
    ones = np.ones((1, C))
    if not sxx_C.sum() - (sx_CD.sum(0) ** 2).sum() / n_tok > 0:
        raise ProgsaeError(f"{store.path}: activations are constant; FVU is undefined")
    W = resample_weights(C, cfg.bootstrap.replicates, cfg.bootstrap.seed)
    out = []
    for v, acc in zip(variants, accs):
        live = live_size(v)
        point = {k: float(val[0]) for k, val in _metrics(ones, n_C, sx_CD, sxx_C, acc, live, d, cfg.dense_threshold).items()}
        reps = _metrics(W, n_C, sx_CD, sxx_C, acc, live, d, cfg.dense_threshold)
        rec = ReconstructionResult(**Record.header(v), tokens=n_tok, contexts=C, **point)
        if acc.fired_CN is not None:
            rec._firing = acc.fired_CN[:, :live].sum(0, dtype=np.float64) / n_tok
        out.append(rec.with_replicates(reps, cfg.bootstrap.level))
    return out
