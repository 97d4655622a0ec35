"""What every evaluation shares: the variant being evaluated and JSON result records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from progsae.errors import ProgsaeError
from progsae.evals.bootstrap import interval
from progsae.sae.base import SAE
from progsae.sae.io import atomic_write_json


@dataclass
class Variant:
    """One SAE to evaluate: a method's SAE (`source`) cut to `size` latents the `mode` way."""

    name: str
    sae: SAE
    source: str = ""
    size: int | None = None
    mode: str | None = None

    @classmethod
    def of(cls, sae: SAE, name: str | None = None) -> "Variant":
        """A variant for an SAE used as it is."""
        return cls(name=name or sae.cfg.architecture, sae=sae, source=name or sae.cfg.architecture, size=sae.n_latents)


class Record(BaseModel):
    """Fields every per-variant result carries, so records from different evals line up."""

    model_config = ConfigDict(extra="forbid")

    variant: str
    source: str = ""
    size: int | None = None
    mode: str | None = None
    ci: dict[str, list[float] | None] = Field(default_factory=dict)  # metric -> 95% bootstrap interval over test contexts
    _replicates: dict = PrivateAttr(default_factory=dict)  # metric -> [R] bootstrap replicates (not in the JSON)

    def with_replicates(self, replicates: dict, level: float = 0.95) -> "Record":
        """Attach replicates per metric and set each metric's interval from them."""
        self._replicates = dict(replicates)
        self.ci = {m: interval(r, level) for m, r in replicates.items()}
        return self

    @classmethod
    def header(cls, v: Variant) -> dict:
        return {"variant": v.name, "source": v.source, "size": v.size, "mode": v.mode}


def write_json(path, model: BaseModel) -> Path:
    """Write a result record (or any pydantic model) as JSON, atomically."""
    path = Path(path)
    atomic_write_json(path, model.model_dump(mode="json"))
    return path


def sae_input(sae: SAE, x_BD: torch.Tensor) -> torch.Tensor:
    """Rows (e.g. read from a store on the CPU) moved to the SAE's device and dtype, ready for `sae.encode`."""
    return x_BD.to(device=sae.W_enc.device, dtype=sae.W_enc.dtype)


def sample_rows(store, n: int, seed: int = 0, split: str = "test") -> tuple[torch.Tensor, np.ndarray]:
    """Kept rows of a seeded random sample of whole contexts (about n rows), and each row's context (0..C-1)."""
    contexts = store.sample_contexts(split, n, seed)
    xs, ctxs = [], []
    for x, ctx, _ in store.iter_context_rows(split, contexts):
        xs.append(x)
        ctxs.append(ctx)
    if not xs:
        raise ProgsaeError(f"{store.path}: the '{split}' split has no rows to sample")
    return torch.cat(xs), np.concatenate(ctxs)


def spread_rows(store, n: int, seed: int = 0, split: str = "test") -> tuple[torch.Tensor, np.ndarray]:
    """About n kept rows spread over every context of the split (a seeded ceil(n / C) rows of each), and each
    row's context (0..C-1): a pairwise statistic then sees every context, and context resamples stay valid."""
    per_context = max(1, -(-n // max(1, store.num_contexts(split))))
    rng = np.random.default_rng([seed, per_context])
    xs, ctxs = [], []
    for x, ctx, _ in store.iter_context_rows(split):
        keys = rng.random(len(ctx))
        order = np.lexsort((keys, ctx))  # by context, then a random order within it
        first = np.searchsorted(ctx[order], ctx[order], side="left")
        take = np.sort(order[np.arange(len(order)) - first < per_context])
        xs.append(x[torch.from_numpy(take)])
        ctxs.append(ctx[take])
    if not xs:
        raise ProgsaeError(f"{store.path}: the '{split}' split has no rows to sample")
    return torch.cat(xs), np.concatenate(ctxs)
