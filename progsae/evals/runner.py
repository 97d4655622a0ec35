"""Run any set of evaluations over any set of SAEs and sizes, and write one results JSON.

Sizes come from the progressive API (`sae.at_size(G, mode)`); the full-size SAE is evaluated once
and reported under every mode. Interpretability runs on each full-size SAE with latent bands cut
at the requested sizes (or its Matryoshka groups), since a latent's band is its rank.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from progsae.errors import ProgsaeError
from progsae.evals.common import Variant, write_json
from progsae.evals.interp.score import InterpConfig, InterpResult, bootstrap_mean, default_bands, evaluate_interp, interp_rows
from progsae.evals.lm_loss import LMLossConfig, LMLossResult, evaluate_lm_loss_from_store, lm_loss_forwards
from progsae.evals.reconstruction import ReconstructionConfig, ReconstructionResult, evaluate_reconstruction
from progsae.evals.similarity import SimilarityConfig, SimilarityResult, evaluate_similarity
from progsae.sae.io import atomic_save_safetensors

METRICS = ("recon", "ce", "rsa", "interp")
RESULTS_FORMAT = "progsae-eval"


class EvalRunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metrics: list[str] = Field(default_factory=lambda: ["recon", "rsa"])
    sizes: list[int] | None = None  # None: each SAE at its own size
    modes: list[Literal["mask", "retopk"]] = Field(default_factory=lambda: ["mask"])
    model: str | None = None  # None: the store's model
    hook: str | None = None  # None: the store's hook
    explainer: Literal["deterministic", "llm"] = "deterministic"
    llm_url: str | None = None
    llm_model: str | None = None
    llm_cache: str | None = None
    recon: ReconstructionConfig = Field(default_factory=ReconstructionConfig)
    ce: LMLossConfig = Field(default_factory=LMLossConfig)
    rsa: SimilarityConfig = Field(default_factory=SimilarityConfig)
    interp: InterpConfig = Field(default_factory=InterpConfig)


class VariantInfo(BaseModel):
    name: str
    source: str
    size: int | None
    mode: str | None


class EvalResults(BaseModel):
    """Everything `progsae eval` writes: per-evaluation records, one flat row per (method, size, mode), bands."""

    format: str = RESULTS_FORMAT
    version: int = 1
    store: str
    model: str | None = None
    hook: str | None = None
    config: EvalRunConfig
    variants: list[VariantInfo]
    reconstruction: list[ReconstructionResult] = Field(default_factory=list)
    lm_loss: list[LMLossResult] = Field(default_factory=list)
    similarity: list[SimilarityResult] = Field(default_factory=list)
    interp: list[InterpResult] = Field(default_factory=list)
    records: list[dict[str, Any]] = Field(default_factory=list)
    bands: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    _replicates: dict = PrivateAttr(default_factory=dict)  # variant -> flat metric -> [R] (see replicates_path)

    @property
    def replicates(self) -> dict[str, dict[str, Any]]:
        """Bootstrap replicates per variant and flat metric name; paired across variants within a metric."""
        return self._replicates

    @property
    def firing(self) -> dict[str, np.ndarray]:
        """Per variant, the share of test tokens each live latent fires on (from the reconstruction eval)."""
        return {r.variant: r.firing_frequency for r in self.reconstruction if r.firing_frequency is not None}


def replicates_path(results_path: str | Path) -> Path:
    """Where the bootstrap replicates of a results file live: beside it, `<name>.replicates.safetensors`."""
    p = Path(results_path)
    return p.with_name(p.stem + ".replicates.safetensors")


def firing_path(results_path: str | Path) -> Path:
    """Where the per-latent firing frequencies of a results file live: beside it, `<name>.firing.safetensors`."""
    p = Path(results_path)
    return p.with_name(p.stem + ".firing.safetensors")


def load_firing(results_path: str | Path) -> dict[str, np.ndarray]:
    """{variant: [live] firing frequency} written beside a results file; empty when there is none."""
    from safetensors.numpy import load_file

    fp = firing_path(results_path)
    return dict(load_file(str(fp))) if fp.exists() else {}


def load_results(path: str | Path) -> EvalResults:
    """A results file with its replicates and firing frequencies (when the files beside it exist)."""
    from progsae.evals.bootstrap import load_replicates

    res = EvalResults.model_validate_json(Path(path).read_text())
    rp = replicates_path(path)
    if rp.exists():
        res._replicates = load_replicates(rp)
    firing = load_firing(path)
    for r in res.reconstruction:
        r._firing = firing.get(r.variant)
    return res


# ---- variants ----------------------------------------------------------------------------------
def build_variants(saes: dict[str, Any], sizes: list[int] | None, modes: list[str]) -> list[Variant]:
    """The SAEs at every requested size: `name@G/mode` via sae.at_size; the full size once, as `name@n`."""
    out = []
    for name, sae in saes.items():
        n = int(sae.cfg.mask_size or sae.n_latents)
        wanted = sorted(set(sizes)) if sizes else [n]
        bad = [g for g in wanted if not 0 < g <= n]
        if bad:
            raise ProgsaeError(f"{name}: sizes {bad} are outside 1..{n}")
        for g in wanted:
            if g == n:
                out.append(Variant(name=f"{name}@{g}", sae=sae, source=name, size=g, mode=None))
                continue
            for mode in modes:
                out.append(Variant(name=f"{name}@{g}/{mode}", sae=sae.at_size(g, mode=mode), source=name, size=g, mode=mode))
    return out


def interp_bands(sae, sizes: list[int] | None) -> list[tuple[int, int]]:
    """Bands cut at the requested sizes, else Matryoshka groups, else quarters."""
    n = sae.n_latents
    if sizes:
        edges = [0, *sorted({g for g in sizes if 0 < g < n}), n]
        return [(a, b) for a, b in zip(edges, edges[1:])]
    return default_bands(n, sae.cfg.prefixes)


# ---- the run -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _bar(desc: str, total: int, enabled: bool, unit: str = "tok") -> Iterator:
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    # leave=True: a finished bar stays on screen with its count, rather than vanishing (often before it was drawn)
    with tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "tok", dynamic_ncols=True, leave=True) as bar:
        yield lambda step: bar.update(min(int(step), max(0, bar.total - bar.n)))  # whole units, never past the total


def _chat_model(cfg: EvalRunConfig, out_path: Path | None):
    """The cached chat model for the LLM explainer: an HTTP endpoint, else a local HF model (default SmolLM2)."""
    from progsae.evals.interp.llm import CachedChat, HFChat, OpenAIChat

    cache = Path(cfg.llm_cache) if cfg.llm_cache else (out_path.parent if out_path else Path(".")) / "llm-cache"
    if cfg.llm_url:
        if not cfg.llm_model:
            raise ProgsaeError("--llm-url needs --llm-model (the model name the endpoint serves)")
        chat = CachedChat(OpenAIChat(cfg.llm_url, cfg.llm_model), cache)
    else:
        from progsae.data.models import load_model

        name = cfg.llm_model or "smollm2"
        model, tok = load_model(name)
        chat = CachedChat(HFChat(model, tok, name=name), cache)
    return chat


def run_evals(
    store,
    saes: dict[str, Any],
    cfg: EvalRunConfig,
    out_path: str | Path | None = None,
    progress: bool = True,
    model_and_tokenizer: tuple | None = None,
) -> EvalResults:
    """Evaluate `saes` (name -> SAE) at cfg.sizes on `store`; writes out_path (JSON) when given."""
    unknown = sorted(set(cfg.metrics) - set(METRICS))
    if unknown:
        raise ProgsaeError(f"unknown metrics {unknown} (known: {', '.join(METRICS)})")
    if not saes:
        raise ProgsaeError("no SAEs to evaluate")
    for name, sae in saes.items():
        store.check_sae(sae, name)
    if any(sae.W_enc.device.type == "cpu" for sae in saes.values()):
        from progsae.allocator import keep_freed_blocks

        keep_freed_blocks()  # every batch makes and frees [B, N] codes: keep them out of mmap/munmap
    out_path = Path(out_path) if out_path else None
    variants = build_variants(saes, cfg.sizes, cfg.modes)
    model_name = cfg.model or store.meta.get("model")
    hook_name = cfg.hook or store.meta.get("hook")
    res = EvalResults(
        store=str(store.path), model=model_name, hook=hook_name, config=cfg,
        variants=[VariantInfo(name=v.name, source=v.source, size=v.size, mode=v.mode) for v in variants],
    )
    if "recon" in cfg.metrics:
        total = store.num_tokens(cfg.recon.split) if cfg.recon.max_tokens is None else min(store.num_tokens(cfg.recon.split), cfg.recon.max_tokens)
        with _bar("reconstruction", total, progress) as upd:
            res.reconstruction = evaluate_reconstruction(store, variants, cfg.recon, upd)
    if "rsa" in cfg.metrics:
        with _bar("similarity", len(variants), progress, unit="variant") as upd:
            res.similarity = evaluate_similarity(store, variants, cfg.rsa, upd)
    tokenizer = None
    if "ce" in cfg.metrics:
        from progsae.data.hooks import resolve_hook

        if not model_name or not hook_name:
            raise ProgsaeError("the LM loss needs --model and --hook (the store's meta.json names neither)")
        if model_and_tokenizer is None:
            from progsae.data.models import load_model

            model_and_tokenizer = load_model(model_name, device=next(iter(saes.values())).W_enc.device)
        model, tokenizer = model_and_tokenizer
        site = resolve_hook(model, hook_name)
        with _bar("lm loss", lm_loss_forwards(store, cfg.ce, len(variants)), progress, unit="forward") as upd:
            res.lm_loss = evaluate_lm_loss_from_store(store, model, site, variants, cfg.ce, upd)
    if "interp" in cfg.metrics:
        res.interp = _run_interp(store, saes, cfg, tokenizer, model_name, out_path, progress)
    res.records = summary_records(res, cfg.modes)
    res.bands = {r.source: {b.band: b.model_dump() for b in r.bands} for r in res.interp}
    if out_path is not None:
        from progsae.evals.bootstrap import save_replicates

        save_replicates(replicates_path(out_path), res.replicates)
        if res.firing:
            atomic_save_safetensors({v: torch.from_numpy(np.ascontiguousarray(f)) for v, f in res.firing.items()}, firing_path(out_path))
        write_json(out_path, res)
    return res


def _run_interp(store, saes, cfg: EvalRunConfig, tokenizer, model_name, out_path, progress) -> list[InterpResult]:
    from progsae.evals.interp.base import default_detokenize, tokenizer_detokenize
    from progsae.evals.interp.deterministic import TokenExplainer, TokenSimulator

    if tokenizer is None and model_name:
        tokenizer = _tokenizer_or_none(model_name)
    detok = tokenizer_detokenize(tokenizer) if tokenizer is not None else default_detokenize
    if cfg.explainer == "llm":
        from progsae.evals.interp.llm import LLMExplainer, LLMSimulator

        chat = _chat_model(cfg, out_path)
        explainer, simulator = LLMExplainer(chat, detok), LLMSimulator(chat, detok)
    else:
        explainer, simulator = TokenExplainer(detokenize=detok), TokenSimulator()
    out = []
    for name, sae in saes.items():
        icfg = cfg.interp if cfg.interp.bands else cfg.interp.model_copy(update={"bands": interp_bands(sae, cfg.sizes)})
        total = interp_rows(store, icfg)
        with _bar(f"interp {name}", total, progress) as upd:
            out.append(evaluate_interp(store, Variant(name=f"{name}@{sae.n_latents}", sae=sae, source=name, size=sae.n_latents), explainer, simulator, icfg, upd))
    return out


def _tokenizer_or_none(model_name: str):
    """The model's tokenizer for readable explanations; None (token ids shown as #id) when it cannot load."""
    try:
        from transformers import AutoTokenizer

        from progsae.data.models import resolve_model_path

        return AutoTokenizer.from_pretrained(resolve_model_path(model_name))
    except Exception:  # noqa: BLE001 - explanations fall back to token ids
        return None


# ---- summary -----------------------------------------------------------------------------------
# flat record name -> (result list, field) for every metric a summary row carries
FLAT_METRICS = {
    "fvu": ("reconstruction", "fvu"), "mse": ("reconstruction", "mse"), "l0": ("reconstruction", "l0"),
    "cosine": ("reconstruction", "cosine"), "dead": ("reconstruction", "dead_fraction"),
    "dense": ("reconstruction", "dense_fraction"), "explained_variance": ("reconstruction", "explained_variance"),
    "ce_clean": ("lm_loss", "ce_clean"), "ce_sae": ("lm_loss", "ce_sae"),
    "ce_recaptured_zero": ("lm_loss", "ce_recaptured_zero"), "ce_recaptured_mean": ("lm_loss", "ce_recaptured_mean"),
    "delta_ce": ("lm_loss", "delta_ce"), "kl": ("lm_loss", "kl"),
    "rsa": ("similarity", "rsa_original"), "cka": ("similarity", "cka_original"),
    "rsa_full": ("similarity", "rsa_full"), "cka_full": ("similarity", "cka_full"),
}


def summary_records(res: EvalResults, modes: list[str]) -> list[dict[str, Any]]:
    """One flat row per (method, size, mode) with `<metric>_ci` beside each metric; the full-size variant
    is repeated under each mode. Fills res.replicates under the same flat names."""
    by_variant: dict[str, dict[str, Any]] = {}
    for flat, (kind, field) in FLAT_METRICS.items():
        for r in getattr(res, kind):
            row = by_variant.setdefault(r.variant, {})
            row[flat] = getattr(r, field)
            row[f"{flat}_ci"] = r.ci.get(field)
            if field in r._replicates:
                res._replicates.setdefault(r.variant, {})[flat] = r._replicates[field]
    interp_by_source = {r.source: r for r in res.interp}
    rows = []
    for v in res.variants:
        vals = by_variant.get(v.name, {})
        ir = interp_by_source.get(v.source)
        if ir is not None and v.size is not None:
            kept = ir.scores_below(v.size)
            mean, lo, hi = bootstrap_mean(kept, 1000, 0.95, 0)
            vals = {**vals, "interp": mean, "interp_ci": None if lo is None else [lo, hi]}
        for mode in [v.mode] if v.mode else modes:
            rows.append({"variant": v.name, "method": v.source, "size": v.size, "mode": mode, **vals})
    return rows


TABLE_COLUMNS = ("variant", "fvu", "l0", "dead", "ce_recaptured_zero", "ce_recaptured_mean", "delta_ce", "kl", "rsa", "cka", "interp")


def format_table(res: EvalResults) -> str:
    """The results as an aligned text table, one line per evaluated variant, each metric with its 95% interval."""
    seen, rows = set(), []
    for r in res.records:
        if r["variant"] in seen:
            continue
        seen.add(r["variant"])
        rows.append(r)
    cols = [c for c in TABLE_COLUMNS if c == "variant" or any(r.get(c) is not None for r in rows)]
    fmt = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731

    def cell(r: dict, c: str) -> str:  # a metric with its interval, when it has one
        ci = r.get(f"{c}_ci")
        return fmt(r.get(c)) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci and None not in ci and r.get(c) is not None else "")

    cells = [[cell(r, c) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(row, widths))) for row in cells]
    for ir in res.interp:
        lines.append(f"interp {ir.source}: " + ", ".join(
            f"{b.band}: {fmt(b.mean)} [{fmt(b.lo)}, {fmt(b.hi)}] (n={b.latents})" if b.measured
            else f"{b.band}: not measured ({b.latents} scored)" for b in ir.bands))
    return "\n".join(lines)
