"""Cutting an SAE to fewer active latents per row: the k' < k member of a family over sparsity (docs/method.md).

- TopK (and anything that encodes per row with cfg.k: Matryoshka, mask- or retopk-pruned): keep the k' largest
  activations of each row, i.e. the same weights with cfg.k = k'.
- BatchTopK: inference uses one global threshold, so k' means a threshold: the one that gives mean L0 k'
  over held-out rows (validation by default, never test), measured on the full code of all n latents before
  any mask. cfg.k becomes k' too, so a retopk cut of the result is per-row TopK_k' (progsae.progressive.prune).
Both rules only change how latents are chosen after the encoder, and a mask (at_size "mask") acts after them,
so at_k and at_size commute: at_k(k') then at_size(G) is the same SAE as at_size(G) then at_k(k').
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from progsae.data.store import ActivationStore
from progsae.errors import ProgsaeError
from progsae.progressive.importance import iter_activation_rows, rows_per_batch

DEFAULT_CALIBRATION_ROWS = 65536
CALIBRATION_MEMORY = 1 << 28


def check_k(sae, k) -> int:
    """k' must be an integer in 1..k for an SAE that has a k."""
    if sae.cfg.k is None:
        raise ProgsaeError(f"at_k needs a TopK or BatchTopK SAE; this one is {sae.cfg.architecture} (no k)")
    try:
        kk = int(k)
    except (TypeError, ValueError):
        raise ProgsaeError(f"k must be an integer, got {k!r}") from None
    if kk != k or not 1 <= kk <= sae.cfg.k:
        raise ProgsaeError(f"k {k} is out of range: this SAE keeps {sae.cfg.k} latents per row (use a k in 1..{sae.cfg.k})")
    return kk


@torch.no_grad()
def threshold_for_l0(sae, k: int, acts, split: str | None = None, max_rows: int = DEFAULT_CALIBRATION_ROWS) -> tuple[float, dict[str, Any]]:
    """The global threshold under which the full code's mean L0 is k on up to `max_rows` held-out rows.

    Streams the rows, keeping the T = k * rows largest pre-activations seen; the threshold is the (T+1)-th
    largest (so exactly T entries exceed it, ties aside), at least 0. Returns it and a calibration record.
    """
    if acts is None:
        raise ProgsaeError("a BatchTopK SAE's k is a global threshold: at_k needs held-out rows to calibrate it (--acts)")
    if not isinstance(acts, (Tensor, ActivationStore)):
        acts = ActivationStore(acts)
    if isinstance(acts, ActivationStore):
        acts.check_sae(sae)
        split = split or acts.choice_split()
    n = sae.n_latents
    chunks, total, source = iter_activation_rows(acts, split, rows_per_batch(sae.d_in, n, CALIBRATION_MEMORY))
    top = torch.empty(0, dtype=torch.float64)
    rows = 0
    for x_BD in chunks:
        x_BD = x_BD[: max_rows - rows]
        if x_BD.shape[0] == 0:
            break
        rows += x_BD.shape[0]
        pre = sae.pre_acts(x_BD.to(device=sae.W_enc.device, dtype=sae.W_enc.dtype)).flatten().double().cpu()
        keep = min(k * rows + 1, pre.numel() + top.numel())
        top = torch.cat([top, pre]).topk(keep, sorted=False).values
    if rows == 0:
        raise ProgsaeError("no held-out rows to calibrate the BatchTopK threshold on (0 tokens)")
    target = k * rows
    ordered = top.sort(descending=True).values
    theta = max(float(ordered[target]) if ordered.numel() > target else 0.0, 0.0)
    mean_l0 = float((ordered > theta).sum()) / rows
    return theta, {"rows": rows, "split": split, "source": source.get("path", source["kind"]), "mean_l0": mean_l0}


@torch.no_grad()
def at_k(sae, k: int, acts=None, *, split: str | None = None, max_rows: int = DEFAULT_CALIBRATION_ROWS):
    """The SAE that keeps the k largest activations per row (BatchTopK: the threshold giving mean L0 k on
    held-out `acts`); cuts by size (mask, prefixes) and provenance carry over, the cut is recorded."""
    kk = check_k(sae, k)
    cfg = sae.cfg
    record: dict[str, Any] = {"k": kk, "k_parent": cfg.k}
    out = sae.select(torch.arange(sae.n_latents), k=kk, prefixes=cfg.prefixes, mask_size=cfg.mask_size)
    if "threshold" in sae.extra_tensors:
        theta, calibration = threshold_for_l0(sae, kk, acts, split, max_rows)
        out.threshold.fill_(theta)
        record.update({"threshold": theta, "threshold_parent": float(sae.threshold), "calibration": calibration})
    prov = copy.deepcopy(cfg.provenance)
    if "at_k" in prov:
        record["previous"] = prov["at_k"]
    prov["at_k"] = record
    out.cfg.provenance = prov
    return out


__all__ = ["at_k", "check_k", "threshold_for_l0"]
