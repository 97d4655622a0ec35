"""Explain-then-simulate (Bills et al. 2023): Pearson score per latent, averaged per importance band.

For latents sampled per band, the explainer sees top-activating windows; the simulator predicts
per-token activations on held-out windows (other top-activating ones and random ones) from the
explanation alone; the score is the Pearson correlation of predicted and true activations over
all held-out tokens together. Bands are latent-index ranges of an importance-sorted SAE (or a
Matryoshka SAE's groups); band means come with percentile bootstrap intervals.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from progsae.errors import ProgsaeError
from progsae.evals.common import Record, Variant
from progsae.evals.interp.base import Explainer, Simulator
from progsae.evals.interp.examples import LatentExamples, random_refs, top_contexts, window_examples


class InterpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str = "test"
    bands: list[tuple[int, int]] | None = None  # [lo, hi) latent-index ranges; None: Matryoshka groups or quarters
    band_names: list[str] | None = None
    latents_per_band: int = 16
    candidate_factor: int = 4  # pass 1 tracks this many candidates per wanted latent, to skip dead ones
    explain_top: int = 10
    score_top: int = 5
    score_random: int = 5
    window_left: int = 15
    window_right: int = 4
    max_contexts: int | None = None  # contexts of the split streamed in pass 1 (None: all)
    batch_contexts: int = 32
    n_bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0


class LatentScore(BaseModel):
    latent: int
    band: str
    score: float | None
    max_act: float
    explanation: str


class BandScore(BaseModel):
    """Mean score of a band of latents [start, end) with its bootstrap interval [lo, hi]."""

    band: str
    start: int
    end: int
    latents: int
    mean: float | None
    lo: float | None
    hi: float | None


class InterpResult(Record):
    explainer: str
    simulator: str
    mean: float | None
    bands: list[BandScore]
    latents: list[LatentScore]


def pearson(pred: list[float] | np.ndarray, true: list[float] | np.ndarray) -> float | None:
    """Correlation of predicted and true activations; 0 when the prediction is constant, None when the truth is."""
    p, t = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    p, t = p - p.mean(), t - t.mean()
    sp, st = math.sqrt(float(p @ p)), math.sqrt(float(t @ t))
    if st == 0:
        return None
    if sp == 0:
        return 0.0
    return float(p @ t) / (sp * st)


def bootstrap_mean(scores: list[float], n_boot: int, confidence: float, seed: int) -> tuple[float | None, float | None, float | None]:
    """(mean, lower, upper) with a percentile bootstrap interval over latents."""
    if not scores:
        return None, None, None
    s = np.asarray(scores, np.float64)
    means = s[np.random.default_rng(seed).integers(0, len(s), size=(n_boot, len(s)))].mean(1)
    a = (1 - confidence) / 2
    return float(s.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def default_bands(n_latents: int, prefixes: list[int] | None = None) -> list[tuple[int, int]]:
    """Matryoshka groups when the SAE has prefixes, else the quarters [0,n/4), [n/4,n/2), [n/2,n)."""
    if prefixes:
        edges = [0, *prefixes]
        return [(a, b) for a, b in zip(edges, edges[1:])]
    return [(0, n_latents // 4), (n_latents // 4, n_latents // 2), (n_latents // 2, n_latents)]


def _split_top(order: list[int], n_explain: int, n_score: int) -> tuple[list[int], list[int]]:
    """Interleave the ranked top contexts so held-out ones span the same range as the shown ones."""
    total = n_explain + n_score
    step = total / max(n_score, 1)
    held = {int(i * step + step / 2) for i in range(n_score)} if n_score else set()
    score = [order[i] for i in range(min(total, len(order))) if i in held]
    explain = [order[i] for i in range(min(total, len(order))) if i not in held]
    return explain, score


@torch.no_grad()
def collect_latent_examples(store, sae, latents: list[int], cfg: InterpConfig, progress=None) -> tuple[list[LatentExamples], list[int]]:
    """Examples for the first live latents of each candidate list; returns them and the latents kept."""
    n_top = cfg.explain_top + cfg.score_top
    idx = torch.tensor(latents, dtype=torch.long)
    vals, ctxs, poss, fired = top_contexts(store, sae, idx, n_top, cfg.split, cfg.batch_contexts, cfg.max_contexts, progress)
    live = [(vals[m] > 0).all().item() for m in range(len(latents))]
    rnd = random_refs(store, cfg.score_random, cfg.seed, cfg.split, cfg.max_contexts)
    requests, plan = [], []
    for m, lat in enumerate(latents):
        if not live[m]:
            continue
        explain, score = _split_top(list(range(n_top)), cfg.explain_top, cfg.score_top)
        first = len(requests)
        for r in explain + score:
            requests.append((lat, int(ctxs[m, r]), int(poss[m, r]), "top"))
        for gc, pos in rnd:
            requests.append((lat, gc, pos, "random"))
        plan.append((m, lat, first, len(explain)))
    examples = window_examples(store, sae, requests, cfg.window_left, cfg.window_right, cfg.split) if requests else []
    out = []
    per = n_top + len(rnd)
    for m, lat, first, n_exp in plan:
        ex = examples[first : first + per]
        out.append(LatentExamples(latent=lat, max_act=float(vals[m, 0]), fired_tokens=int(fired[m]), explain=ex[:n_exp], score=ex[n_exp:]))
    return out, [le.latent for le in out]


def evaluate_interp(
    store, variant: Variant, explainer: Explainer, simulator: Simulator, cfg: InterpConfig | None = None, progress=None
) -> InterpResult:
    """Explain-then-simulate scores of latents sampled per band of one SAE."""
    cfg = cfg or InterpConfig()
    sae = variant.sae
    bands = cfg.bands or default_bands(sae.n_latents, sae.cfg.prefixes)
    names = cfg.band_names or [f"{lo}-{hi}" for lo, hi in bands]
    if len(names) != len(bands):
        raise ProgsaeError(f"{len(names)} band names for {len(bands)} bands")
    for lo, hi in bands:
        if not 0 <= lo < hi <= sae.n_latents:
            raise ProgsaeError(f"band [{lo}, {hi}) is outside the {sae.n_latents} latents of {variant.name}")
    rng = np.random.default_rng(cfg.seed)
    candidates: list[list[int]] = []
    for lo, hi in bands:
        k = min(hi - lo, cfg.latents_per_band * cfg.candidate_factor)
        candidates.append((lo + rng.choice(hi - lo, size=k, replace=False)).tolist())
    flat = sorted({c for cs in candidates for c in cs})
    examples, _ = collect_latent_examples(store, sae, flat, cfg, progress)
    by_latent = {le.latent: le for le in examples}
    latent_scores: list[LatentScore] = []
    band_scores: list[BandScore] = []
    for b, ((lo, hi), name, cands) in enumerate(zip(bands, names, candidates)):
        chosen = [c for c in cands if c in by_latent][: cfg.latents_per_band]
        scores = []
        for lat in chosen:
            le = by_latent[lat]
            expl = explainer.explain(lat, le.explain, le.max_act)
            pred, true = [], []
            for ex in le.score:
                sim = simulator.simulate(expl, ex.tokens)
                if len(sim) != len(ex.tokens):
                    raise ProgsaeError(f"simulator {simulator.name} returned {len(sim)} values for {len(ex.tokens)} tokens")
                pred += sim
                true += ex.acts
            s = pearson(pred, true)
            if s is not None:
                scores.append(s)
            latent_scores.append(LatentScore(latent=lat, band=name, score=s, max_act=le.max_act, explanation=expl.text))
        mean, low, high = bootstrap_mean(scores, cfg.n_bootstrap, cfg.confidence, cfg.seed + b)
        band_scores.append(BandScore(band=name, start=lo, end=hi, latents=len(scores), mean=mean, lo=low, hi=high))
    all_scores = [ls.score for ls in latent_scores if ls.score is not None]
    return InterpResult(
        **Record.header(variant),
        explainer=explainer.name,
        simulator=simulator.name,
        mean=float(np.mean(all_scores)) if all_scores else None,
        bands=band_scores,
        latents=latent_scores,
    )
