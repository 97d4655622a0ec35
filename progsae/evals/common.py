"""What every evaluation shares: the variant being evaluated and JSON result records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

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


def iter_rows(store, split: str = "test", batch_size: int = 4096, max_tokens: int | None = None):
    """Activation rows [B, D] of a split in store order, one batch in memory at a time."""
    from progsae.data.store import as_tensor

    left = store.num_tokens(split) if max_tokens is None else min(max_tokens, store.num_tokens(split))
    for i in range(len(store.shards(split))):
        acts = store.shard(split, i)["acts"]
        for start in range(0, acts.shape[0], batch_size):
            if left <= 0:
                return
            rows = as_tensor(acts[start : start + min(batch_size, left)])
            left -= rows.shape[0]
            yield rows


def sample_rows(store, n: int, seed: int = 0, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded uniform sample of n distinct rows (sorted by store order) and their global row indices."""
    import numpy as np

    from progsae.data.store import as_tensor

    total = store.num_tokens(split)
    n = min(n, total)
    idx = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    parts, start = [], 0
    for i, info in enumerate(store.shards(split)):
        lo, hi = np.searchsorted(idx, [start, start + info.tokens])
        if hi > lo:
            parts.append(as_tensor(store.shard(split, i)["acts"][idx[lo:hi] - start]))
        start += info.tokens
    return torch.cat(parts), torch.from_numpy(idx)
