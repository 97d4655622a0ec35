"""Sorting an SAE by importance and pruning it to any size G (docs/method.md), and Matryoshka prefixes.

Two ways to encode with the kept set:
- "mask": the parent's full encoder, permuted so the kept latents come first, with cfg.mask_size = G
  (encode() zeros latents >= G): codes equal the parent's codes with the dropped latents zeroed;
- "retopk": a genuinely smaller SAE holding only the G kept latents; TopK runs within them with the
  same k (clamped to G when k > G, recorded in provenance), so L0 stays k. A BatchTopK SAE (its global
  threshold was calibrated for all n latents, so kept as is it would give mask mode's codes) becomes a
  TopK SAE of the G latents with the same k: per-row TopK within the kept set, cfg.architecture "topk",
  the parent's architecture in provenance["prune"]["architecture_parent"]; at G = n nothing is dropped
  and the SAE keeps its own rule (outputs unchanged). Matryoshka BatchTopK prefixes follow the same rule.
  JumpReLU (per-latent thresholds) and ReLU are elementwise: their retopk codes equal mask mode's.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from progsae.errors import ProgsaeError
from progsae.sae.registry import sae_class
from progsae.progressive.importance import (
    CONTROLS,
    ORDERINGS,
    STATISTICS,
    Importance,
    as_importance,
    importance as measure_importance,
    sae_fingerprint,
)

PRUNE_ORDERS = ORDERINGS + ("prefix",)
MODES = ("mask", "retopk")


def effective_size(sae) -> int:
    """Latents an SAE can actually use: mask_size for a mask-pruned SAE, else n_latents."""
    return int(sae.cfg.mask_size or sae.n_latents)


def is_progressive(sae) -> bool:
    """True when every prefix of the SAE is meaningful: Matryoshka, or sorted by an importance statistic."""
    return bool(sae.cfg.prefixes) or "sorted_by" in sae.cfg.provenance


def check_size(sae, size) -> int:
    n = effective_size(sae)
    try:
        g = int(size)
    except (TypeError, ValueError):
        raise ProgsaeError(f"size must be an integer, got {size!r}") from None
    if g != size or not (1 <= g <= n):
        raise ProgsaeError(f"size {size} is out of range: this SAE has {n} latents (use a size in 1..{n})")
    return g


def ordering_for(
    sae, order: str, importance=None, acts=None, seed: int | None = None, fingerprint: str | None = None
) -> tuple[Tensor, Importance | None]:
    """The permutation of latents (most important first) for `order`, and the importance it used."""
    n = sae.n_latents
    if order not in PRUNE_ORDERS:
        raise ProgsaeError(f"unknown order '{order}' (use one of {', '.join(PRUNE_ORDERS)})")
    if order in ("prefix", "unsorted"):
        return torch.arange(n), None
    if order == "random":
        if seed is None and importance is not None:
            imp = as_importance(importance, sae, fingerprint)
            return imp.ordering("random"), imp
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed or 0)), None
    if importance is None:
        if acts is None:
            raise ProgsaeError(f"order '{order}' needs importance: pass an importance file (--importance) or activations (--acts)")
        importance = measure_importance(sae, acts)
    imp = as_importance(importance, sae, fingerprint)
    return imp.ordering(order), imp


def _provenance(sae) -> dict[str, Any]:
    return copy.deepcopy(sae.cfg.provenance)


def _sort_record(fingerprint: str, order: str, imp: Importance | None) -> dict[str, Any]:
    rec: dict[str, Any] = {"order": order, "parent_sha256": fingerprint}
    if imp is not None:
        rec.update({"importance_sha256": imp.sae_sha256, "importance_tokens": imp.n_tokens, "importance_source": imp.source})
    return rec


def sort_sae(sae, order: str = "ef2", importance=None, acts=None, seed: int | None = None):
    """The same SAE with latents in `order` (most important first); outputs unchanged, sort recorded in cfg.provenance."""
    if order not in ORDERINGS:
        raise ProgsaeError(f"cannot sort by '{order}' (use one of {', '.join(ORDERINGS)})")
    if sae.cfg.mask_size is not None:
        raise ProgsaeError("this SAE is already mask-pruned; sort its parent instead")
    fingerprint = sae_fingerprint(sae)
    perm, imp = ordering_for(sae, order, importance, acts, seed, fingerprint)
    out = sae.permute(perm)
    prov = _provenance(sae)
    if order in STATISTICS:
        prov["sorted_by"] = _sort_record(fingerprint, order, imp)
    elif order == "random":
        prov.pop("sorted_by", None)
    out.cfg.provenance = prov
    return out


def prune(
    sae,
    size: int,
    order: str = "ef2",
    mode: str = "mask",
    importance=None,
    *,
    acts=None,
    seed: int | None = None,
    parent: str | None = None,
):
    """Keep the G most important latents of `sae` (by `order`) as a new SAE; see the module docstring for modes.

    `importance` is an Importance, a path to importance.json, or None (then measured on `acts`).
    `order="prefix"` keeps the first G latents of a Matryoshka or already-sorted SAE.
    """
    if mode not in MODES:
        raise ProgsaeError(f"unknown mode '{mode}' (use mask or retopk)")
    if order not in PRUNE_ORDERS:
        raise ProgsaeError(f"unknown order '{order}' (use one of {', '.join(PRUNE_ORDERS)})")
    g = check_size(sae, size)
    cfg = sae.cfg
    if order == "prefix" and not is_progressive(sae):
        raise ProgsaeError(
            "order 'prefix' needs a Matryoshka SAE or one already sorted by importance; "
            "this one is neither: use --order ef2 (or sort it first with progsae.sort_sae)"
        )
    if cfg.mask_size is not None and order not in ("prefix", "unsorted"):
        raise ProgsaeError(f"this SAE is already mask-pruned to {cfg.mask_size} latents; prune its parent, or use --order prefix")
    fingerprint = sae_fingerprint(sae)
    perm, imp = ordering_for(sae, order, importance, acts, seed, fingerprint)
    keep_prefixes = order in ("prefix", "unsorted") and cfg.prefixes is not None

    prov = _provenance(sae)
    record: dict[str, Any] = {
        "parent": parent,
        "parent_sha256": fingerprint,
        "parent_n_latents": sae.n_latents,
        "order": order,
        "size": g,
        "mode": mode,
        "k_parent": cfg.k,
    }
    if order == "random":
        record["seed"] = imp.seed if imp is not None else (seed or 0)
    if imp is not None:
        record["importance_tokens"] = imp.n_tokens
    if "prune" in prov:
        record["previous"] = prov["prune"]
    if order in STATISTICS:
        prov["sorted_by"] = _sort_record(fingerprint, order, imp)
    elif order == "random":
        prov.pop("sorted_by", None)

    if mode == "mask":
        changes: dict[str, Any] = {"mask_size": g, "prefixes": cfg.prefixes if keep_prefixes else None}
        out = sae.select(perm, **changes)
        record["k"] = cfg.k
    else:
        changes = {}
        if cfg.k is not None:
            changes["k"] = min(cfg.k, g)
            if cfg.k > g:
                record["k_clamped_from"] = cfg.k  # TopK of k > G latents would keep all of them: k becomes G
        if keep_prefixes:
            changes["prefixes"] = [p for p in cfg.prefixes if p < g] + [g]
        retopk_arch = getattr(sae, "retopk_architecture", None)
        if retopk_arch and retopk_arch != cfg.architecture and g < sae.n_latents:
            changes["architecture"] = retopk_arch  # BatchTopK: per-row TopK_k within the kept latents
            record["architecture_parent"] = cfg.architecture
            record["inference"] = f"per-row top-k within the {g} kept latents ({cfg.architecture}'s global threshold dropped)"
        into = sae_class(changes["architecture"]) if "architecture" in changes else None
        out = sae.select(perm[:g], into=into, **changes)
        record["k"] = out.cfg.k
    prov["prune"] = record
    out.cfg.provenance = prov
    return out


def at_size(sae, size: int, mode: str = "mask"):
    """The size-G member of a progressive family: the first G latents of a Matryoshka or importance-sorted SAE."""
    if not is_progressive(sae):
        raise ProgsaeError(
            "this SAE is not progressive (neither Matryoshka nor sorted by importance): sort it first, e.g. "
            "progsae.sort_sae(sae, 'ef2', acts=...) or `progsae prune SAE --order ef2 --size N --acts DIR --out DIR`"
        )
    return prune(sae, size, order="prefix", mode=mode)


__all__ = ["prune", "sort_sae", "at_size", "ordering_for", "is_progressive", "effective_size", "MODES", "PRUNE_ORDERS", "CONTROLS"]
