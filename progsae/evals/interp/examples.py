"""Top-activating and random held-out contexts of chosen latents, read from a text activation store.

A text shard keeps token_ids [C, L]; its activation rows follow the contexts in order, each
context giving positions first_position..L-1, so row r is context r // (L - fp) at position
fp + r % (L - fp). Pass 1 streams whole contexts once and keeps, per latent, the contexts with
the largest maximum activation; pass 2 re-encodes only the short windows that are shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from progsae.data.store import as_tensor
from progsae.errors import ProgsaeError
from progsae.evals.common import sae_input
from progsae.sae.base import SAE


@dataclass
class Example:
    """A window of tokens with one latent's true activation on each."""

    tokens: list[int]
    acts: list[float]
    kind: str = "top"  # "top" or "random"


@dataclass
class LatentExamples:
    """What the explainer sees (`explain`) and what the simulator is scored on (`score`)."""

    latent: int
    max_act: float
    fired_tokens: int
    explain: list[Example] = field(default_factory=list)
    score: list[Example] = field(default_factory=list)


@dataclass
class ContextRef:
    shard: int
    context: int  # index within the shard
    position: int  # the centre position of the window (a position >= first_position)


def _text_shards(store, split: str) -> tuple[int, int, list[int]]:
    """(context length L, first position, contexts per shard); a one-line error for non-text stores."""
    fp = store.first_position
    contexts = []
    length = None
    for i, info in enumerate(store.shards(split)):
        sh = store.shard(split, i)
        if "token_ids" not in sh:
            raise ProgsaeError(f"{store.path}: shard {info.file} has no token_ids; interpretability needs a store collected from text")
        c, L = sh["token_ids"].shape
        length = L if length is None else length
        if L != length or sh["acts"].shape[0] != c * (L - fp):
            raise ProgsaeError(f"{store.path}: shard {info.file} has {sh['acts'].shape[0]} rows, expected {c} contexts x {L - fp} positions")
        contexts.append(c)
    if length is None or not contexts or sum(contexts) == 0:
        raise ProgsaeError(f"{store.path}: the '{split}' split holds no contexts")
    return length, fp, contexts


@torch.no_grad()
def top_contexts(
    store, sae: SAE, latents: Tensor, n_top: int, split: str = "test", batch_contexts: int = 32, max_contexts: int | None = None, progress=None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per latent, the n_top contexts with the largest max activation.

    Returns (values [M, n_top], global context ids [M, n_top], argmax positions [M, n_top],
    firing token counts [M]); a context id is (shard, context) flattened over the split.
    """
    L, fp, per_shard = _text_shards(store, split)
    P = L - fp
    M = latents.numel()
    best_v = torch.full((M, n_top), -float("inf"))
    best_c = torch.full((M, n_top), -1, dtype=torch.long)
    best_p = torch.zeros((M, n_top), dtype=torch.long)
    fired = torch.zeros(M, dtype=torch.long)
    offset = 0
    seen = 0
    for i, c_count in enumerate(per_shard):
        acts = store.shard(split, i)["acts"]
        for c0 in range(0, c_count, batch_contexts):
            if max_contexts is not None and seen >= max_contexts:
                break
            room = c_count if max_contexts is None else max_contexts - seen
            c1 = min(c_count, c0 + batch_contexts, c0 + room)
            x = sae_input(sae, as_tensor(acts[c0 * P : c1 * P]))
            z_CPM = sae.encode(x)[:, latents.to(x.device)].float().cpu().view(c1 - c0, P, M)
            fired += (z_CPM > 0).sum((0, 1))
            v_CM, p_CM = z_CPM.max(1)
            ids = torch.arange(offset + c0, offset + c1)
            all_v = torch.cat([best_v, v_CM.T], 1)
            all_c = torch.cat([best_c, ids.expand(M, -1)], 1)
            all_p = torch.cat([best_p, p_CM.T + fp], 1)
            best_v, order = all_v.topk(n_top, dim=1)
            best_c, best_p = all_c.gather(1, order), all_p.gather(1, order)
            seen += c1 - c0
            if progress is not None:
                progress((c1 - c0) * P)
        offset += c_count
    return best_v, best_c, best_p, fired


def _locate(global_context: int, per_shard: list[int]) -> tuple[int, int]:
    bounds = np.cumsum([0, *per_shard])
    shard = int(np.searchsorted(bounds, global_context, side="right") - 1)
    return shard, int(global_context - bounds[shard])


def random_refs(store, n: int, seed: int, split: str = "test", max_contexts: int | None = None) -> list[tuple[int, int]]:
    """n seeded random (global context id, position) pairs."""
    L, fp, per_shard = _text_shards(store, split)
    total = sum(per_shard) if max_contexts is None else min(max_contexts, sum(per_shard))
    rng = np.random.default_rng(seed)
    ctx = rng.choice(total, size=min(n, total), replace=False)
    pos = rng.integers(fp, L, size=ctx.size)
    return [(int(c), int(p)) for c, p in zip(ctx, pos)]


@torch.no_grad()
def window_examples(
    store, sae: SAE, requests: list[tuple[int, int, int, str]], left: int, right: int, split: str = "test", chunk: int = 2048
) -> list[Example]:
    """Examples for (latent, global context, centre position, kind) requests, windows clipped to fp..L-1."""
    L, fp, per_shard = _text_shards(store, split)
    P = L - fp
    out: list[Example] = [None] * len(requests)  # type: ignore[list-item]
    by_shard: dict[int, list[int]] = {}
    for j, (_, gc, _, _) in enumerate(requests):
        by_shard.setdefault(_locate(gc, per_shard)[0], []).append(j)
    for shard, js in by_shard.items():
        sh = store.shard(split, shard)
        rows, row_latent, spans = [], [], []
        for j in js:
            latent, gc, pos, _ = requests[j]
            c = _locate(gc, per_shard)[1]
            lo, hi = max(fp, pos - left), min(L, pos + right + 1)
            spans.append((j, c, lo, hi))
            rows.append(np.arange(c * P + lo - fp, c * P + hi - fp))
            row_latent.append(np.full(hi - lo, latent))
        row_ids, lat = np.concatenate(rows), torch.from_numpy(np.concatenate(row_latent))
        vals = torch.empty(len(row_ids))
        for s in range(0, len(row_ids), chunk):  # only each row's own latent is kept: memory stays [chunk, N]
            x = sae_input(sae, as_tensor(sh["acts"][row_ids[s : s + chunk]]))
            z = sae.encode(x)
            vals[s : s + chunk] = z[torch.arange(z.shape[0], device=z.device), lat[s : s + chunk].to(z.device)].float().cpu()
        a = 0
        for j, c, lo, hi in spans:
            toks = np.asarray(sh["token_ids"][c, lo:hi]).tolist()
            out[j] = Example(tokens=[int(t) for t in toks], acts=vals[a : a + hi - lo].tolist(), kind=requests[j][3])
            a += hi - lo
    return out
