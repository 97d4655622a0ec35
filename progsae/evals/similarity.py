"""Representational similarity of reconstructions: RSA (Spearman of cosine-similarity matrices) and linear CKA.

Each variant's reconstruction of the rows of a seeded sample of whole held-out contexts is compared
with the original activations and with the full-size reconstruction of the same source SAE; the
intervals resample contexts (see `_Blocks`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import rankdata
from torch import Tensor

from progsae.evals.bootstrap import BootstrapConfig, resample_weights
from progsae.evals.common import Record, Variant, spread_rows, sae_input


class SimilarityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str = "test"
    tokens: int = 1000  # held-out rows, spread over every context of the split (about tokens / contexts each)
    seed: int = 0
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)
    # source -> the source whose full-size variant is its reference for rsa_full/cka_full (default: its own largest)
    references: dict[str, str] = Field(default_factory=dict)


class SimilarityResult(Record):
    """RSA and CKA of a variant's reconstruction against x and against its source's full-size reconstruction."""

    tokens: int
    contexts: int = 0
    rsa_original: float | None
    cka_original: float | None
    rsa_full: float | None = None  # None for the full-size variant itself or when there is none
    cka_full: float | None = None
    full_variant: str | None = None


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def cosine_similarity_upper(x_ND: Tensor) -> np.ndarray:
    """Upper triangle (i < j) of the cosine-similarity matrix of mean-centred rows, float64."""
    xc = x_ND.double() - x_ND.double().mean(0)
    xc = xc / xc.norm(dim=1, keepdim=True).clamp_min(1e-30)
    sim = xc @ xc.T
    i, j = torch.triu_indices(sim.shape[0], sim.shape[0], offset=1)
    return sim[i, j].numpy()


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else float("nan")


def rsa(x_ND: Tensor, y_ND: Tensor) -> float:
    """Spearman correlation of the two cosine-similarity upper triangles (NaN if either is constant)."""
    return _pearson(rankdata(cosine_similarity_upper(x_ND)), rankdata(cosine_similarity_upper(y_ND)))


def linear_cka(x_ND: Tensor, y_ND: Tensor) -> float:
    """Linear CKA ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) of column-centred X, Y (feature dims may differ)."""
    x = x_ND.double() - x_ND.double().mean(0)
    y = y_ND.double() - y_ND.double().mean(0)
    den = float((x.T @ x).norm() * (y.T @ y).norm())
    return float((y.T @ x).norm() ** 2) / den if den > 0 else float("nan")


def full_size_of(variants: list[Variant]) -> dict[str, Variant]:
    """Per source, the variant with the most latents (the reference for "vs full size")."""
    best: dict[str, Variant] = {}
    for v in variants:
        size = v.size if v.size is not None else v.sae.n_latents
        cur = best.get(v.source)
        if cur is None or size > (cur.size if cur.size is not None else cur.sae.n_latents):
            best[v.source] = v
    return best


class _Blocks:
    """Context-block sums of pair statistics: the bootstrap of RSA and CKA over contexts.

    A resample weights context c by w_c, so pair (i, j) weighs w_c(i)·w_c(j), and every weighted sum
    over pairs is wᵀ M w for a C×C matrix M of block sums. Ranks and centring are those of the full
    sample (not recomputed per resample); with all weights 1 this gives the plain RSA and CKA exactly."""

    def __init__(self, ctx_N: np.ndarray, n_ctx: int, W_RC: np.ndarray):
        self.P = np.zeros((ctx_N.shape[0], n_ctx))
        self.P[np.arange(ctx_N.shape[0]), ctx_N] = 1.0
        self.W = np.vstack([np.ones((1, n_ctx)), W_RC])  # row 0: the point estimate
        self.iu = np.triu_indices(ctx_N.shape[0], k=1)
        n_C = self.P.sum(0)  # pairs i != j: (Σ_c w_c n_c)² − Σ_c w_c² n_c, no N×N matrix of ones needed
        self.s0 = (self.W @ n_C) ** 2 - (self.W**2) @ n_C

    def quad(self, M_NN: np.ndarray) -> np.ndarray:
        """wᵀ (Pᵀ M P) w for every row w of W: [1 + R]."""
        B = self.P.T @ M_NN @ self.P
        return np.einsum("rc,cd,rd->r", self.W, B, self.W)

    def symmetric(self, upper: np.ndarray) -> np.ndarray:
        """The N×N symmetric matrix with zero diagonal whose upper triangle is `upper`."""
        n = self.P.shape[0]
        M = np.zeros((n, n))
        M[self.iu] = upper
        return M + M.T

    def pearson(self, A: np.ndarray, B: np.ndarray, sA: np.ndarray, sAA: np.ndarray) -> np.ndarray:
        """Weighted Pearson over pairs of two symmetric zero-diagonal matrices (A's sums passed in)."""
        sB, sBB, sAB = self.quad(B), self.quad(B * B), self.quad(A * B)
        mA, mB = sA / self.s0, sB / self.s0
        with np.errstate(divide="ignore", invalid="ignore"):
            return (sAB / self.s0 - mA * mB) / np.sqrt((sAA / self.s0 - mA**2) * (sBB / self.s0 - mB**2))

    def cka(self, Kx: np.ndarray, Ky: np.ndarray, sxx: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.quad(Kx * Ky) / np.sqrt(sxx * self.quad(Ky * Ky))


def _gram(x_ND: Tensor) -> np.ndarray:
    xc = x_ND.double() - x_ND.double().mean(0)
    return (xc @ xc.T).numpy()


@torch.no_grad()
def evaluate_similarity(store, variants: list[Variant], cfg: SimilarityConfig | None = None, progress=None) -> list[SimilarityResult]:
    """RSA and CKA of every variant on the same seeded rows of every test context, with bootstrap intervals.

    The bootstrap resamples contexts and holds each pair's rank from the full sample: re-ranking ~2M pairs
    in each of 1000 resamples per variant costs more than the whole evaluation (see docs/method.md)."""
    cfg = cfg or SimilarityConfig()
    x_ND, ctx_N = spread_rows(store, cfg.tokens, cfg.seed, cfg.split)
    n_ctx = int(ctx_N.max()) + 1
    blk = _Blocks(ctx_N, n_ctx, resample_weights(n_ctx, cfg.bootstrap.replicates, cfg.bootstrap.seed))
    A = blk.symmetric(rankdata(cosine_similarity_upper(x_ND)))
    sA, sAA = blk.quad(A), blk.quad(A * A)
    Kx = _gram(x_ND)
    sKx = blk.quad(Kx * Kx)
    recon = {v.name: v.sae(sae_input(v.sae, x_ND)).float().cpu() for v in variants}
    own = full_size_of(variants)
    full = {src: own.get(cfg.references.get(src, src), own[src]) for src in own}
    by_ref: dict[str, tuple] = {}  # sources sharing a reference rank it once
    for f in {f.name: f for f in full.values()}.values():
        F = blk.symmetric(rankdata(cosine_similarity_upper(recon[f.name])))
        Kf = _gram(recon[f.name])
        by_ref[f.name] = (F, blk.quad(F), blk.quad(F * F), Kf, blk.quad(Kf * Kf))
    full_stats = {src: by_ref[f.name] for src, f in full.items()}
    out = []
    for v in variants:
        ref = full[v.source]
        is_full = ref.name == v.name
        F, sF, sFF, Kf, sKf = full_stats[v.source]
        B = F if is_full else blk.symmetric(rankdata(cosine_similarity_upper(recon[v.name])))  # ranked once per variant
        Ky = Kf if is_full else _gram(recon[v.name])
        reps = {"rsa_original": blk.pearson(A, B, sA, sAA), "cka_original": blk.cka(Kx, Ky, sKx)}
        if not is_full:
            reps["rsa_full"] = blk.pearson(F, B, sF, sFF)
            reps["cka_full"] = blk.cka(Kf, Ky, sKf)
        point = {k: _finite(float(r[0])) for k, r in reps.items()}
        rec = SimilarityResult(**Record.header(v), tokens=x_ND.shape[0], contexts=n_ctx, full_variant=None if is_full else ref.name, **point)
        out.append(rec.with_replicates({k: r[1:] for k, r in reps.items()}, cfg.bootstrap.level))
        if progress is not None:
            progress(1)
    return out
