"""Representational similarity of reconstructions: RSA (Spearman of cosine-similarity matrices) and linear CKA.

Each variant's reconstruction of N seeded held-out tokens is compared with the original
activations and with the full-size reconstruction of the same source SAE.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from scipy.stats import rankdata
from torch import Tensor

from progsae.evals.common import Record, Variant, sample_rows, sae_input


class SimilarityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str = "test"
    tokens: int = 1000  # held-out tokens sampled (seeded)
    seed: int = 0


class SimilarityResult(Record):
    """RSA and CKA of a variant's reconstruction against x and against its source's full-size reconstruction."""

    tokens: int
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


@torch.no_grad()
def evaluate_similarity(store, variants: list[Variant], cfg: SimilarityConfig | None = None, progress=None) -> list[SimilarityResult]:
    cfg = cfg or SimilarityConfig()
    x_ND, _ = sample_rows(store, cfg.tokens, cfg.seed, cfg.split)
    ranks_x = rankdata(cosine_similarity_upper(x_ND))
    recon = {v.name: v.sae(sae_input(v.sae, x_ND)).float().cpu() for v in variants}
    full = full_size_of(variants)
    full_ranks = {src: rankdata(cosine_similarity_upper(recon[f.name])) for src, f in full.items()}
    out = []
    for v in variants:
        y = recon[v.name]
        ref = full[v.source]
        is_full = ref.name == v.name
        ranks_y = full_ranks[v.source] if is_full else rankdata(cosine_similarity_upper(y))  # once per variant
        out.append(
            SimilarityResult(
                **Record.header(v),
                tokens=x_ND.shape[0],
                rsa_original=_finite(_pearson(ranks_x, ranks_y)),
                cka_original=_finite(linear_cka(x_ND, y)),
                rsa_full=None if is_full else _finite(_pearson(full_ranks[v.source], ranks_y)),
                cka_full=None if is_full else _finite(linear_cka(recon[ref.name], y)),
                full_variant=None if is_full else ref.name,
            )
        )
        if progress is not None:
            progress(1)
    return out
