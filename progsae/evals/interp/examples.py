"""Explanation and scoring windows of chosen latents, read from a text activation store, with no leakage.

Two disjoint sets of contexts are used (`context_sides`): the explainer sees windows from the
*explain* contexts (by default the validation split) and the simulator is scored on windows from the
*score* contexts (by default the test split). A store without the explain split (an older or
foreign store) is cut into two seeded halves of the score split's contexts instead; the two halves
never share a context.

A text shard keeps token_ids [C, L]; its activation rows follow the contexts in order, each
context giving positions first_position..L-1. Rows the store drops as outliers (massive-activation
tokens, `ActivationStore.keep_mask`) are treated as not present: they never count as firing, never
make a latent's top context, and in a window their true activation is not used (it is shown as 0
and `Example.keep` marks it False, so the score leaves the token out). Their tokens stay in the window
text, so a simulator still sees the context around them.

Pass 1 (`scan_latents`) streams the kept rows of both sides once and keeps, per latent, the contexts
with the largest maximum activation and how many contexts/tokens it fires on. Pass 2
(`window_examples`) re-encodes only the short windows that are shown or scored.
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
    """A window of tokens with one latent's true activation on each.

    `split`/`context` name the window's context (a context index over the whole split) and `position`
    its centre; `keep[i]` is False where the store drops the row as an outlier (its act is then 0 and
    it is left out of explanations and scores). None means every row is kept."""

    tokens: list[int]
    acts: list[float]
    kind: str = "top"  # "top" or "random"
    split: str = ""
    context: int = -1
    position: int = -1
    keep: list[bool] | None = None

    def kept(self, i: int) -> bool:
        return self.keep is None or self.keep[i]


@dataclass
class LatentExamples:
    """What the explainer sees (`explain`) and what the simulator is scored on (`score`).

    max_act is the largest activation over the explain contexts; fired_tokens and firing_frequency
    are counted over the score contexts (kept rows only); *_contexts count contexts where it fires."""

    latent: int
    max_act: float
    fired_tokens: int
    explain: list[Example] = field(default_factory=list)
    score: list[Example] = field(default_factory=list)
    firing_frequency: float = 0.0
    explain_contexts: int = 0
    score_contexts: int = 0


@dataclass
class Side:
    """One side of the evaluation: sorted global context indices of a split, and how to name them."""

    split: str
    contexts: np.ndarray
    label: str  # e.g. "validation", or "test:half-1" for the seeded half of a store without validation
    length: int  # context length L
    first_position: int
    per_shard: list[int]

    @property
    def positions(self) -> int:
        return self.length - self.first_position


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


def context_sides(store, explain_split: str = "validation", score_split: str = "test", seed: int = 0,
                  max_contexts: int | None = None) -> tuple[Side, Side]:
    """The explain and score contexts: two splits, or two seeded halves of the score split.

    Halves are used when the store lacks `explain_split` or it names the score split itself; the
    permutation is seeded by (seed, number of contexts). `max_contexts` keeps the first contexts (in
    store order) of each side."""
    if not store.has_split(score_split):
        raise ProgsaeError(f"{store.path}: store has no '{score_split}' split to score interpretability on")
    L, fp, per_shard = _text_shards(store, score_split)
    total = sum(per_shard)
    if explain_split != score_split and store.has_split(explain_split):
        Le, fpe, per_shard_e = _text_shards(store, explain_split)
        explain = Side(explain_split, np.arange(sum(per_shard_e)), explain_split, Le, fpe, per_shard_e)
        score = Side(score_split, np.arange(total), score_split, L, fp, per_shard)
    else:
        if total < 2:
            raise ProgsaeError(f"{store.path}: the '{score_split}' split has {total} context; halves need at least 2")
        perm = np.random.default_rng([seed, total, 2]).permutation(total)
        half = total // 2
        explain = Side(score_split, np.sort(perm[:half]), f"{score_split}:half-1", L, fp, per_shard)
        score = Side(score_split, np.sort(perm[half:]), f"{score_split}:half-2", L, fp, per_shard)
    if max_contexts is not None:
        explain.contexts, score.contexts = explain.contexts[:max_contexts], score.contexts[:max_contexts]
    return explain, score


@dataclass
class SideScan:
    """Pass-1 statistics of M latents over one side's contexts."""

    values: Tensor  # [M, k] largest per-context max activations (-inf: fewer contexts)
    contexts: Tensor  # [M, k] their global context ids in the side's split (-1: none)
    positions: Tensor  # [M, k] the argmax position in each (a kept row)
    fired_tokens: Tensor  # [M] kept rows where the latent is > 0
    fired_contexts: Tensor  # [M] contexts where it is > 0 on some kept row
    rows: int  # kept rows streamed


@torch.no_grad()
def scan_side(store, sae: SAE, latents: Tensor, n_top: int, side: Side, batch_contexts: int = 32, progress=None) -> SideScan:
    """Per latent, the n_top contexts of `side` with the largest max activation over kept rows, and firing counts."""
    M, P, fp = latents.numel(), side.positions, side.first_position
    best_v = torch.full((M, n_top), -float("inf"))
    best_c = torch.full((M, n_top), -1, dtype=torch.long)
    best_p = torch.zeros((M, n_top), dtype=torch.long)
    fired = torch.zeros(M, dtype=torch.long)
    fired_ctx = torch.zeros(M, dtype=torch.long)
    rows = 0
    lat = latents.to(sae.W_enc.device)
    for x, ci, pos in store.iter_context_rows(side.split, side.contexts, max_rows=max(1, batch_contexts) * store.rows_per_context):
        z_BM = sae.encode(sae_input(sae, x))[:, lat].float().cpu()
        fired += (z_BM > 0).sum(0)
        rows += z_BM.shape[0]
        u, inv = np.unique(ci, return_inverse=True)
        dense = torch.full((u.size, P, M), -float("inf"))  # dropped rows stay -inf: never a max, never firing
        dense[torch.from_numpy(inv), torch.from_numpy(pos - fp)] = z_BM
        v_UM, p_UM = dense.max(1)
        fired_ctx += (v_UM > 0).sum(0)
        ids = torch.from_numpy(side.contexts[u]).long()
        all_v = torch.cat([best_v, v_UM.T], 1)
        all_c = torch.cat([best_c, ids.expand(M, -1)], 1)
        all_p = torch.cat([best_p, p_UM.T + fp], 1)
        best_v, order = all_v.topk(n_top, dim=1)
        best_c, best_p = all_c.gather(1, order), all_p.gather(1, order)
        if progress is not None:
            progress(z_BM.shape[0])
    return SideScan(best_v, best_c, best_p, fired, fired_ctx, rows)


def top_contexts(store, sae: SAE, latents: Tensor, n_top: int, split: str = "test", batch_contexts: int = 32,
                 contexts: np.ndarray | None = None, progress=None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per latent, the n_top contexts (of `contexts`, default all of the split) with the largest max activation.

    Returns (values [M, n_top], global context ids [M, n_top], argmax positions [M, n_top], firing
    token counts [M]); outlier rows are not read."""
    L, fp, per_shard = _text_shards(store, split)
    ctx = np.arange(sum(per_shard)) if contexts is None else np.sort(np.asarray(contexts))
    s = scan_side(store, sae, latents, n_top, Side(split, ctx, split, L, fp, per_shard), batch_contexts, progress)
    return s.values, s.contexts, s.positions, s.fired_tokens


def _locate(global_context: int, per_shard: list[int]) -> tuple[int, int]:
    bounds = np.cumsum([0, *per_shard])
    shard = int(np.searchsorted(bounds, global_context, side="right") - 1)
    return shard, int(global_context - bounds[shard])


def random_refs(side: Side, n: int, seed: int, latent: int) -> list[tuple[int, int]]:
    """n random (global context id, centre position) pairs of one latent, from the side's contexts only.

    Seeded by (seed, latent): every latent gets its own windows."""
    rng = np.random.default_rng([seed, latent, 1])
    ctx = rng.choice(side.contexts, size=min(n, side.contexts.size), replace=False)
    pos = rng.integers(side.first_position, side.length, size=ctx.size)
    return [(int(c), int(p)) for c, p in zip(ctx, pos)]


@torch.no_grad()
def window_examples(
    store, sae: SAE, requests: list[tuple[int, int, int, str]], left: int, right: int, split: str = "test", chunk: int = 2048
) -> list[Example]:
    """Examples for (latent, global context, centre position, kind) requests, windows clipped to fp..L-1.

    Rows the store drops are not encoded: their act is 0 and keep False."""
    L, fp, per_shard = _text_shards(store, split)
    P = L - fp
    out: list[Example] = [None] * len(requests)  # type: ignore[list-item]
    by_shard: dict[int, list[int]] = {}
    for j, (_, gc, _, _) in enumerate(requests):
        by_shard.setdefault(_locate(gc, per_shard)[0], []).append(j)
    for shard, js in by_shard.items():
        sh = store.shard(split, shard)
        keep_rows = store.keep_mask(split, shard)
        rows, row_latent, spans = [], [], []
        for j in js:
            latent, gc, pos, _ = requests[j]
            c = _locate(gc, per_shard)[1]
            lo, hi = max(fp, pos - left), min(L, pos + right + 1)
            spans.append((j, gc, c, lo, hi))
            rows.append(np.arange(c * P + lo - fp, c * P + hi - fp))
            row_latent.append(np.full(hi - lo, latent))
        row_ids, lat = np.concatenate(rows), torch.from_numpy(np.concatenate(row_latent))
        kept = np.ones(row_ids.size, bool) if keep_rows is None else keep_rows[row_ids]
        vals = torch.zeros(len(row_ids))
        live = np.flatnonzero(kept)
        for s in range(0, live.size, chunk):  # only each row's own latent is kept: memory stays [chunk, N]
            idx = live[s : s + chunk]
            z = sae.encode(sae_input(sae, as_tensor(sh["acts"][row_ids[idx]])))
            vals[torch.from_numpy(idx)] = z[torch.arange(z.shape[0], device=z.device), lat[idx].to(z.device)].float().cpu()
        a = 0
        for j, gc, c, lo, hi in spans:
            toks = np.asarray(sh["token_ids"][c, lo:hi]).tolist()
            k = kept[a : a + hi - lo]
            out[j] = Example(tokens=[int(t) for t in toks], acts=vals[a : a + hi - lo].tolist(), kind=requests[j][3], split=split,
                             context=gc, position=requests[j][2], keep=None if k.all() else k.tolist())
            a += hi - lo
    return out
