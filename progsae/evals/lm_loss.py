"""Recaptured LM loss: splice each SAE's reconstruction into the model at its hook and measure next-token CE.

Per batch of contexts the model runs once in full (clean logits, the activation at the site, and
the outputs of every block before the splice point). Each variant then runs only the rest of the
model: the blocks before the splice point are temporarily given a forward that returns their
cached clean output, so the model itself still computes embeddings, positions and masks, and the
site hook swaps in the variant's activation. Position 0 (BOS) is never changed and never scored;
positions whose activation norm exceeds the store's outlier threshold (massive-activation tokens,
see progsae.data.outliers) keep their original activation under every splice, SAE and ablations alike.
Contexts are a seeded random sample of the test split; the mean-ablation vector is the mean of the
validation split (else train), never of the rows scored. Sums are kept per context for bootstrap intervals.

    recaptured vs ablation A = (CE_A − CE_sae) / (CE_A − CE_clean),  A ∈ {zero, mean}
    ΔCE = CE_sae − CE_clean,  KL = mean over scored positions of KL(p_clean ‖ p_sae)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from progsae.data.hooks import HookSite
from progsae.errors import ProgsaeError
from progsae.evals.bootstrap import BootstrapConfig, resample_weights
from progsae.evals.common import Record, Variant
from progsae.splice import constant_splice, spliced


class LMLossConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str = "test"
    contexts: int | None = None  # contexts of the split to score (a seeded random sample); None: every context
    batch_size: int = 8  # contexts per forward
    mean_split: str | None = None  # split of the mean-ablation vector; None: validation, else train
    mean_tokens: int = 100_000  # rows (a seeded sample of whole contexts) for the mean-ablation vector
    shared_prefix: bool = True  # False: one full forward per variant (the slow reference)
    seed: int = 0
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)


class LMLossResult(Record):
    tokens: int  # scored next-token predictions
    contexts: int = 0
    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_mean: float
    ce_recaptured_zero: float | None
    ce_recaptured_mean: float | None
    delta_ce: float
    kl: float


# ---- splicing: progsae.splice; here only the shared prefix ------------------------------------
def prefix_blocks(site: HookSite) -> int:
    """How many leading blocks a variant need not recompute: through block L for resid_post.L, else before L."""
    return site.layer + 1 if site.kind == "resid_post" else site.layer


@contextlib.contextmanager
def cached_prefix(blocks: list[nn.Module], outputs: list) -> Iterator[None]:
    """Make blocks[j] return outputs[j] without computing anything, for the duration of the block."""
    saved = []
    for block, out in zip(blocks, outputs):
        saved.append(block.__dict__.get("forward"))
        block.forward = lambda *args, _out=out, **kwargs: _out
    try:
        yield
    finally:
        for block, old in zip(blocks, saved):
            if old is None:
                del block.forward
            else:
                block.forward = old


def _logits(model: nn.Module, ids_BT: Tensor) -> Tensor:
    return model(input_ids=ids_BT, use_cache=False).logits


class SharedPrefixRunner:
    """Runs the clean model once per batch and each variant's splice through the suffix only."""

    def __init__(self, model: nn.Module, site: HookSite, shared_prefix: bool = True):
        self.model, self.site, self.shared = model, site, shared_prefix
        self.k = prefix_blocks(site) if shared_prefix else 0
        self._outputs: list = []

    @torch.no_grad()
    def clean(self, ids_BT: Tensor) -> Tensor:
        """Clean logits; remembers the outputs of the prefix blocks for the variants that follow."""
        self._outputs = [None] * self.k
        handles = [
            self.site.blocks[j].register_forward_hook(lambda m, a, out, j=j: self._outputs.__setitem__(j, out)) for j in range(self.k)
        ]
        try:
            return _logits(self.model, ids_BT)
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def variant(self, ids_BT: Tensor, replacement, max_norm: float | None = None) -> Tensor:
        """Logits with an SAE's reconstruction (or a Splice's output) at the site, after clean() on the same ids."""
        with spliced(self.model, self.site, replacement, max_norm=max_norm), cached_prefix(list(self.site.blocks)[: self.k], self._outputs):
            return _logits(self.model, ids_BT)


# ---- losses ------------------------------------------------------------------------------------
# Only positions 1..T-2 are scored (position 0 is never scored; T-1 has no next token). Per scored
# position a run needs its log-partition lse, its target logit and, for KL, the dot product of the
# clean distribution with its logits:  CE = lse − logit[target],  KL(p_c ‖ p) = (p_c·x_c − lse_c) − (p_c·x − lse).
# Working through the logits in small row chunks keeps the temporaries in cache (no full log-softmax).
def position_stats(logits_BTV: Tensor, ids_BT: Tensor, p_clean_BTV: Tensor | None = None, chunk: int = 32) -> tuple[Tensor, Tensor, Tensor | None]:
    """(lse, target logit, p_clean·logits or None), each [B, T-2] float64, for positions 1..T-2."""
    B, T, _ = logits_BTV.shape
    lse = torch.empty(B, T - 2, dtype=torch.float64, device=logits_BTV.device)
    dot = torch.empty(B, T - 2, dtype=torch.float64, device=logits_BTV.device) if p_clean_BTV is not None else None
    tgt = logits_BTV[:, 1:-1].gather(-1, ids_BT[:, 2:].unsqueeze(-1)).squeeze(-1).double()
    for b in range(B):
        rows = logits_BTV[b, 1:-1]
        for s in range(0, T - 2, chunk):
            x = rows[s : s + chunk].float()
            lse[b, s : s + chunk] = torch.logsumexp(x, -1).double()
            if dot is not None:
                dot[b, s : s + chunk] = (p_clean_BTV[b, s : s + chunk] * x).sum(-1).double()
    return lse, tgt, dot


def _ratio_or_none(num, den):
    return num / den if den != 0 else None


@torch.no_grad()
def evaluate_lm_loss(
    model: nn.Module,
    site: HookSite,
    batches: Iterable[Tensor],
    variants: list[Variant],
    mean_D: Tensor,
    shared_prefix: bool = True,
    progress=None,
    max_norm: float | None = None,
    bootstrap: BootstrapConfig | None = None,
) -> list[LMLossResult]:
    """CE_clean, CE_zero, CE_mean and per-variant CE/KL on the same token batches [B, T] (T >= 3).

    Rows of the activation with norm > max_norm keep their original value under every splice.
    Each context is a bootstrap unit: every result carries intervals from resampled contexts."""
    runner = SharedPrefixRunner(model, site, shared_prefix)
    zero = torch.zeros_like(mean_D)
    n_C: list[float] = []
    clean_C: list[float] = []
    zero_C: list[float] = []
    mean_C: list[float] = []
    sae_VC: list[list[float]] = [[] for _ in variants]
    kl_VC: list[list[float]] = [[] for _ in variants]
    device = next(model.parameters()).device
    per_ctx = lambda t: t.sum(1).cpu().tolist()  # noqa: E731 - [B, T-2] -> B sums

    def advance(ids_BT: Tensor) -> None:  # one forward done (clean, zero, mean, each variant): whole units
        if progress is not None:
            progress(1)
    for ids_BT in batches:
        if ids_BT.shape[1] < 3:
            raise ProgsaeError(f"contexts of {ids_BT.shape[1]} tokens are too short to score (need >= 3)")
        ids_BT = ids_BT.to(device)
        logits = runner.clean(ids_BT)
        advance(ids_BT)
        p_c = logits[:, 1:-1].float().softmax(-1)
        lse_c, tgt_c, dot_c = position_stats(logits, ids_BT, p_c)
        del logits
        neg_entropy = dot_c - lse_c  # p_c log p_c per scored position
        n_C += [float(lse_c.shape[1])] * lse_c.shape[0]
        clean_C += per_ctx(lse_c - tgt_c)
        lse, tgt, _ = position_stats(runner.variant(ids_BT, constant_splice(zero, max_norm)), ids_BT)
        zero_C += per_ctx(lse - tgt)
        advance(ids_BT)
        lse, tgt, _ = position_stats(runner.variant(ids_BT, constant_splice(mean_D, max_norm)), ids_BT)
        mean_C += per_ctx(lse - tgt)
        advance(ids_BT)
        for i, v in enumerate(variants):
            lse, tgt, dot = position_stats(runner.variant(ids_BT, v.sae, max_norm), ids_BT, p_c)
            sae_VC[i] += per_ctx(lse - tgt)
            kl_VC[i] += per_ctx(neg_entropy - (dot - lse))
            advance(ids_BT)
        del p_c
    if not n_C:
        raise ProgsaeError("no tokens to score for the LM loss")
    bootstrap = bootstrap or BootstrapConfig()
    W = np.vstack([np.ones(len(n_C)), resample_weights(len(n_C), bootstrap.replicates, bootstrap.seed)])
    n = W @ np.asarray(n_C)
    c, z, m = (W @ np.asarray(a) / n for a in (clean_C, zero_C, mean_C))
    out = []
    for v, sae_C, kl_C in zip(variants, sae_VC, kl_VC):
        s_ = W @ np.asarray(sae_C) / n
        kl = W @ np.asarray(kl_C) / n
        with np.errstate(divide="ignore", invalid="ignore"):
            reps = {"ce_clean": c, "ce_sae": s_, "ce_zero": z, "ce_mean": m, "ce_recaptured_zero": (z - s_) / (z - c),
                    "ce_recaptured_mean": (m - s_) / (m - c), "delta_ce": s_ - c, "kl": kl}
        rec = LMLossResult(
            **Record.header(v), tokens=int(n[0]), contexts=len(n_C),
            ce_clean=float(c[0]), ce_sae=float(s_[0]), ce_zero=float(z[0]), ce_mean=float(m[0]),
            ce_recaptured_zero=_ratio_or_none(float(z[0] - s_[0]), float(z[0] - c[0])),
            ce_recaptured_mean=_ratio_or_none(float(m[0] - s_[0]), float(m[0] - c[0])),
            delta_ce=float(s_[0] - c[0]), kl=float(kl[0]),
        )
        out.append(rec.with_replicates({k: r[1:] for k, r in reps.items()}, bootstrap.level))
    return out


# ---- from an activation store ------------------------------------------------------------------
def store_mean(store, split: str | None = None, max_tokens: int = 100_000, seed: int = 0) -> Tensor:
    """Mean kept activation [D] over a seeded sample of whole contexts (about max_tokens rows) of `split`.

    Default split: validation, else train (never the test rows the LM loss is scored on); float64 sums."""
    split = split or store.choice_split()
    total = torch.zeros(store.d_model, dtype=torch.float64)
    n = 0
    for x, _, _ in store.iter_context_rows(split, store.sample_contexts(split, max_tokens, seed)):
        total += x.double().sum(0)
        n += x.shape[0]
    return (total / max(n, 1)).float()


def store_token_batches(store, split: str, contexts: int | None, batch_size: int, seed: int = 0) -> Iterator[Tensor]:
    """A seeded random sample of `contexts` token contexts [B, L] of a text store (None: all), in batches (store order)."""
    chosen = store.sample_contexts(split, None if contexts is None else contexts * store.rows_per_context, seed)[:contexts]
    ids = store.context_tokens(split, chosen)
    for c0 in range(0, ids.shape[0], batch_size):
        yield torch.from_numpy(ids[c0 : c0 + batch_size])


def lm_loss_forwards(store, cfg: LMLossConfig, variants: int) -> int:
    """Forwards evaluate_lm_loss_from_store runs (clean, zero, mean and one per variant, per batch): the progress total."""
    contexts = store.num_contexts(cfg.split) if cfg.contexts is None else min(cfg.contexts, store.num_contexts(cfg.split))
    return -(-contexts // cfg.batch_size) * (variants + 3)


def evaluate_lm_loss_from_store(store, model: nn.Module, site: HookSite, variants: list[Variant], cfg: LMLossConfig | None = None, progress=None) -> list[LMLossResult]:
    cfg = cfg or LMLossConfig()
    for v in variants:
        if v.sae.d_in != store.d_model:
            raise ProgsaeError(f"{v.name}: SAE d_in={v.sae.d_in} but the store has d_model={store.d_model}")
    mean_D = store_mean(store, cfg.mean_split, cfg.mean_tokens, cfg.seed)
    batches = store_token_batches(store, cfg.split, cfg.contexts, cfg.batch_size, cfg.seed)
    rule = store.outlier_rule
    return evaluate_lm_loss(model, site, batches, variants, mean_D, cfg.shared_prefix, progress,
                            max_norm=None if rule is None else rule.threshold, bootstrap=cfg.bootstrap)
