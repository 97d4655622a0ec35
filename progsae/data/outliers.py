"""Massive-activation rows: the norm rule every reader of a store applies, and what it drops.

LLM residual streams hold rare tokens (often the first positions after BOS) whose norms are 10-100x
the median; a handful of them can carry most of a split's variance and so decide FVU and E[f²].
A row is an outlier when ‖x‖ > factor × (median row norm of the reference split: train, else
validation, else test). The default factor 5 is read off the embedded model (SmolLM2-135M, resid_post.14,
the 200,025 train rows of the embedded preset's store): past position 2 no row exceeds 1.92x the median
norm (the 99.9th percentile of all rows is 1.64x), while 58 rows lie above 2.5x, 54 of them above 5x (all
at position 1) and up to 181x. 5 leaves a margin for models whose ordinary rows spread wider. `--keep-outliers` (factor
None) keeps every row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import torch

DEFAULT_OUTLIER_FACTOR = 5.0


@dataclass(frozen=True)
class OutlierRule:
    """Rows with ‖x‖ > factor × median_norm are dropped."""

    factor: float
    median_norm: float
    reference_split: str

    @property
    def threshold(self) -> float:
        return self.factor * self.median_norm

    def to_dict(self) -> dict:
        return {**asdict(self), "threshold": self.threshold}

    def keep(self, norms_T):
        """Which rows survive [T] bool (numpy or torch, like norms_T); non-finite norms are kept so that readers refuse them by name."""
        return ~(norms_T > self.threshold)


def row_norms(x_TD: torch.Tensor) -> torch.Tensor:
    """‖x‖ of each row [T] in float32, summed in float64: the one norm a store's readers and the stream both apply the rule to."""
    return x_TD.double().pow(2).sum(-1).sqrt().float()


def outlier_summary(store, split: str) -> dict:
    """Count, context positions, norms and variance share of the rows the store's rule drops from `split`.

    The variance share is Σ_dropped ‖x − x̄‖² / Σ_all ‖x − x̄‖² with x̄ the mean of every stored row,
    i.e. how much of the split's total variance the dropped rows held (float64, one pass)."""
    rule = store.outlier_rule
    rows = store.stored_tokens(split)
    out = {"split": split, "rows": rows, "dropped": 0, "rule": None if rule is None else rule.to_dict(),
           "positions": {}, "variance_share": 0.0, "max_norm": None}
    if rows == 0:
        return out
    rpc, fp = store.rows_per_context, store.first_position
    sum_D = np.zeros(store.d_model)
    sum_sq = 0.0
    drop_sum_D = np.zeros(store.d_model)
    drop_sq = 0.0
    n_drop = 0
    positions: Counter = Counter()
    max_norm = 0.0
    for i in range(len(store.shards(split))):
        norms = store.row_norms(split, i).astype(np.float64)
        max_norm = max(max_norm, float(np.nanmax(norms, initial=0.0)))
        sum_sq += float((norms**2).sum())
        for _, part in store.read_chunks(split, i, store.summary_rows()):
            sum_D += part.sum(0, dtype=np.float64)
        if rule is None:
            continue
        idx = np.flatnonzero(norms > rule.threshold)
        if idx.size:
            drop_sum_D += np.asarray(store.shard(split, i)["acts"][idx], dtype=np.float64).sum(0)
            drop_sq += float((norms[idx] ** 2).sum())
            n_drop += idx.size
            positions.update((idx % rpc + fp).tolist())
    mean_D = sum_D / rows
    total_var = sum_sq - rows * float(mean_D @ mean_D)
    drop_var = drop_sq - 2 * float(mean_D @ drop_sum_D) + n_drop * float(mean_D @ mean_D)
    out.update(dropped=n_drop, positions={str(k): v for k, v in sorted(positions.items())},
               variance_share=drop_var / total_var if total_var > 0 else 0.0, max_norm=max_norm)
    return out


def describe(summary: dict) -> str:
    """One line for a verb's output: how many rows of a split the rule dropped."""
    rule = summary["rule"]
    if rule is None:
        return f"{summary['split']}: kept all {summary['rows']} rows (--keep-outliers)"
    pos = ", ".join(f"{p}" for p in list(summary["positions"])[:6])
    where = f" at positions {pos}" if summary["dropped"] else ""
    return (f"{summary['split']}: dropped {summary['dropped']} of {summary['rows']} rows with norm > "
            f"{rule['factor']:g} x median {rule['median_norm']:.4g}{where} "
            f"({100 * summary['variance_share']:.1f}% of the split's variance)")
