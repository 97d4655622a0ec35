"""Explain-then-simulate (Bills et al. 2023): Pearson score per latent, averaged per importance band.

Leakage-free by construction:
  * the explainer sees top-activating windows of the *explain* contexts (`explain_split`, default
    validation) and the simulator is scored on windows of the *score* contexts (`score_split`,
    default test). A store without the explain split (or asked to explain on the score split) is cut
    into two seeded halves of the score split's contexts; the result says which (`explain_on`,
    `score_on`). No context is ever both shown and scored.
  * scoring windows are the latent's top-activating windows in the score contexts plus random
    windows drawn per latent (seeded by (seed, latent)) from the score contexts only.
  * rows the store drops as outliers (massive-activation tokens) are not present: they never make a
    top context and their activation is neither shown (0) nor scored (the token is left out of the
    correlation). See `progsae.evals.interp.examples`.

By default every latent of a band is a candidate (`latents_per_band=None`); with a number,
`latents_per_band × candidate_factor` candidates are sampled (seeded) and the first
`latents_per_band` eligible ones are scored. A candidate is *eligible* when it fires in at least
`min_explain_contexts` explain contexts: eligibility reads only the explain side, so which latents
are scored never depends on the contexts they are scored on. The score is the Pearson correlation of
predicted and true activations over all scored tokens of a latent together. A band with fewer than
`min_scored` scored latents is *not measured*: no mean, no interval, and it enters no average.
Bands are latent-index ranges of an importance-sorted SAE (or a Matryoshka SAE's groups); band
means come with percentile bootstrap intervals over latents.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from progsae.errors import ProgsaeError
from progsae.evals.common import Record, Variant
from progsae.evals.interp.base import Explainer, Simulator
from progsae.evals.interp.examples import LatentExamples, Side, SideScan, context_sides, random_refs, scan_side, window_examples


class InterpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    explain_split: str = "validation"  # explanations are written from this split's contexts
    # scores come from this split's contexts; `split` is accepted as its old name (and read back as .split)
    score_split: str = Field("test", validation_alias=AliasChoices("score_split", "split"))
    bands: list[tuple[int, int]] | None = None  # [lo, hi) latent-index ranges; None: Matryoshka groups or quarters
    band_names: list[str] | None = None
    latents_per_band: int | None = Field(None, ge=1)  # None: every eligible latent of the band is scored
    candidate_factor: int = 4  # with latents_per_band: candidates sampled per wanted latent
    explain_top: int = 10  # top windows shown to the explainer (from the explain contexts)
    score_top: int = 5  # top windows scored (from the score contexts)
    score_random: int = 5  # random windows scored per latent (from the score contexts)
    min_explain_contexts: int = Field(5, ge=1)  # eligible: fires in at least this many explain contexts
    min_scored: int = Field(5, ge=1)  # a band with fewer scored latents is not measured
    window_left: int = 15
    window_right: int = 4
    max_contexts: int | None = None  # contexts read per side, the first in store order (None: all)
    batch_contexts: int = 32
    n_bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0

    @property
    def split(self) -> str:
        """The score split (the old name of the field)."""
        return self.score_split


class LatentScore(BaseModel):
    latent: int
    band: str
    score: float | None
    max_act: float
    explanation: str
    firing_frequency: float | None = None  # fraction of score-split tokens where it fires


class BandScore(BaseModel):
    """Scores of a band of latents [start, end): mean with its bootstrap interval [lo, hi] when measured.

    sampled: candidates drawn from the band; eligible: candidates firing in enough explain and score
    contexts; scored (= latents): eligible latents that got a score; firing_frequency: their mean
    fraction of score-split tokens where they fire; scores: the per-latent scores. measured is False
    (mean, lo, hi None) when fewer than `min_scored` latents were scored."""

    band: str
    start: int
    end: int
    latents: int
    mean: float | None
    lo: float | None
    hi: float | None
    sampled: int = 0
    eligible: int = 0
    scored: int = 0
    firing_frequency: float | None = None
    measured: bool = False
    scores: list[float] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data):
        """Results written before these fields existed: scored = latents, measured when there is a mean."""
        if isinstance(data, dict):
            data = dict(data)
            data.setdefault("scored", data.get("latents", 0))
            data.setdefault("measured", data.get("mean") is not None)
        return data


class InterpResult(Record):
    explainer: str
    simulator: str
    mean: float | None  # over the scored latents of measured bands only
    bands: list[BandScore]
    latents: list[LatentScore]
    explainer_description: str = ""
    explain_on: str = ""  # "validation", or "test:half-1" for a seeded half of the score split
    score_on: str = ""  # "test", or "test:half-2"
    explain_contexts: int = 0
    score_contexts: int = 0
    score_tokens: int = 0  # kept rows of the score contexts (the firing-frequency denominator)

    def scores_below(self, size: int | None = None) -> list[float]:
        """Per-latent scores of the measured bands, of latents < size (all when None): what an average may use."""
        measured = {b.band for b in self.bands if b.measured}
        return [ls.score for ls in self.latents if ls.score is not None and ls.band in measured and (size is None or ls.latent < size)]


def pearson(pred: list[float] | np.ndarray, true: list[float] | np.ndarray) -> float | None:
    """Correlation of predicted and true activations; 0 when the prediction is constant, None when the truth is."""
    p, t = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if p.size == 0:
        return None
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


def interp_rows(store, cfg: InterpConfig) -> int:
    """Rows pass 1 streams (explain and score contexts together): the total for a progress bar."""
    explain, score = context_sides(store, cfg.explain_split, cfg.score_split, cfg.seed, cfg.max_contexts)
    return store.rows_per_context * (explain.contexts.size + score.contexts.size)


class Scan:
    """Pass 1 over both sides for a list of latents, and which of them are eligible."""

    def __init__(self, store, sae, latents: list[int], cfg: InterpConfig, sides: tuple[Side, Side] | None = None, progress=None):
        self.latents = list(latents)
        self.explain_side, self.score_side = sides or context_sides(store, cfg.explain_split, cfg.score_split, cfg.seed, cfg.max_contexts)
        idx = torch.tensor(self.latents, dtype=torch.long)
        self.explain: SideScan = scan_side(store, sae, idx, max(1, cfg.explain_top), self.explain_side, cfg.batch_contexts, progress)
        self.score: SideScan = scan_side(store, sae, idx, max(1, cfg.score_top), self.score_side, cfg.batch_contexts, progress)
        ok = self.explain.fired_contexts >= cfg.min_explain_contexts  # explain side only: no selection on scored contexts
        self.eligible = {lat for lat, e in zip(self.latents, ok.tolist()) if e}
        self.row = {lat: m for m, lat in enumerate(self.latents)}


@torch.no_grad()
def latent_examples(store, sae, scan: Scan, latents: list[int], cfg: InterpConfig) -> list[LatentExamples]:
    """Explain windows (explain-side top contexts) and score windows (score-side top + per-latent random) of scanned latents."""
    ex_side, sc_side = scan.explain_side, scan.score_side
    explain_req, score_req, plan = [], [], []
    for lat in latents:
        m = scan.row[lat]
        e0, s0 = len(explain_req), len(score_req)
        for v, c, p in zip(scan.explain.values[m, : cfg.explain_top].tolist(), scan.explain.contexts[m].tolist(), scan.explain.positions[m].tolist()):
            if v > 0:
                explain_req.append((lat, c, p, "top"))
        for v, c, p in zip(scan.score.values[m, : cfg.score_top].tolist(), scan.score.contexts[m].tolist(), scan.score.positions[m].tolist()):
            if v > 0:
                score_req.append((lat, c, p, "top"))
        for c, p in random_refs(sc_side, cfg.score_random, cfg.seed, lat):
            score_req.append((lat, c, p, "random"))
        plan.append((m, lat, e0, len(explain_req), s0, len(score_req)))
    w = (cfg.window_left, cfg.window_right)
    ex = window_examples(store, sae, explain_req, *w, split=ex_side.split) if explain_req else []
    sc = window_examples(store, sae, score_req, *w, split=sc_side.split) if score_req else []
    rows = max(scan.score.rows, 1)
    return [
        LatentExamples(
            latent=lat, max_act=max(float(scan.explain.values[m, 0]), 0.0), fired_tokens=int(scan.score.fired_tokens[m]),
            explain=ex[e0:e1], score=sc[s0:s1], firing_frequency=int(scan.score.fired_tokens[m]) / rows,
            explain_contexts=int(scan.explain.fired_contexts[m]), score_contexts=int(scan.score.fired_contexts[m]),
        )
        for m, lat, e0, e1, s0, s1 in plan
    ]


def collect_latent_examples(store, sae, latents: list[int], cfg: InterpConfig, progress=None) -> tuple[list[LatentExamples], list[int]]:
    """Examples of the eligible latents among `latents`; returns them and the latents kept."""
    scan = Scan(store, sae, latents, cfg, progress=progress)
    kept = [lat for lat in latents if lat in scan.eligible]
    return latent_examples(store, sae, scan, kept, cfg), kept


def score_latent(explainer: Explainer, simulator: Simulator, le: LatentExamples):
    """(explanation, Pearson score) of one latent over its score windows, outlier rows left out."""
    expl = explainer.explain(le.latent, le.explain, le.max_act)
    pred, true = [], []
    for ex in le.score:
        sim = simulator.simulate(expl, ex.tokens)
        if len(sim) != len(ex.tokens):
            raise ProgsaeError(f"simulator {simulator.name} returned {len(sim)} values for {len(ex.tokens)} tokens")
        for i, (p, t) in enumerate(zip(sim, ex.acts)):
            if ex.kept(i):
                pred.append(p)
                true.append(t)
    return expl, pearson(pred, true)


def evaluate_interp(
    store, variant: Variant, explainer: Explainer, simulator: Simulator, cfg: InterpConfig | None = None, progress=None
) -> InterpResult:
    """Explain-then-simulate scores of latents sampled per band of one SAE (see the module docstring)."""
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
        if cfg.latents_per_band is None:
            candidates.append(list(range(lo, hi)))
        else:
            k = min(hi - lo, cfg.latents_per_band * cfg.candidate_factor)
            candidates.append((lo + rng.choice(hi - lo, size=k, replace=False)).tolist())
    scan = Scan(store, sae, sorted({c for cs in candidates for c in cs}), cfg, progress=progress)
    chosen = [[c for c in cands if c in scan.eligible][: cfg.latents_per_band] for cands in candidates]
    by_latent = {le.latent: le for le in latent_examples(store, sae, scan, sorted({c for cs in chosen for c in cs}), cfg)}
    latent_scores: list[LatentScore] = []
    band_scores: list[BandScore] = []
    measured_scores: list[float] = []
    for b, ((lo, hi), name, cands, picked) in enumerate(zip(bands, names, candidates, chosen)):
        scores, freqs = [], []
        for lat in picked:
            le = by_latent[lat]
            expl, s = score_latent(explainer, simulator, le)
            if s is not None:
                scores.append(s)
                freqs.append(le.firing_frequency)
            latent_scores.append(LatentScore(latent=lat, band=name, score=s, max_act=le.max_act, explanation=expl.text,
                                             firing_frequency=le.firing_frequency))
        measured = len(scores) >= cfg.min_scored
        mean, low, high = bootstrap_mean(scores, cfg.n_bootstrap, cfg.confidence, cfg.seed + b) if measured else (None, None, None)
        if measured:
            measured_scores += scores
        band_scores.append(BandScore(
            band=name, start=lo, end=hi, latents=len(scores), mean=mean, lo=low, hi=high, sampled=len(cands),
            eligible=sum(c in scan.eligible for c in cands), scored=len(scores),
            firing_frequency=float(np.mean(freqs)) if freqs else None, measured=measured, scores=scores,
        ))
    return InterpResult(
        **Record.header(variant),
        explainer=explainer.name,
        simulator=simulator.name,
        explainer_description=str(getattr(explainer, "description", "")),
        mean=float(np.mean(measured_scores)) if measured_scores else None,
        bands=band_scores,
        latents=latent_scores,
        explain_on=scan.explain_side.label,
        score_on=scan.score_side.label,
        explain_contexts=int(scan.explain_side.contexts.size),
        score_contexts=int(scan.score_side.contexts.size),
        score_tokens=scan.score.rows,
    )
