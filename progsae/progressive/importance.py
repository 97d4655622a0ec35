"""Latent importance in one streaming pass over held-out activations, and the orderings it induces.

Per latent i, over T held-out tokens: E[f_i²]·‖W_dec,i‖² ("ef2", the energy latent i adds to the
reconstruction; the default), the firing frequency E[1{f_i ≠ 0}] ("freq"), and the mean activation
E[f_i]·‖W_dec,i‖ ("mean"). Decoder-norm weighting makes ef2 and mean invariant to rescaling a latent's
code against its decoder row; for unit-norm decoders it changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from progsae.data.store import ActivationStore
from progsae.errors import ProgsaeError
from progsae.validation import read_json_object

IMPORTANCE_FORMAT = "progsae-importance"
STATISTICS = ("ef2", "freq", "mean")  # orderings by importance, most important first
CONTROLS = ("unsorted", "random")  # orderings that ignore importance
ORDERINGS = STATISTICS + CONTROLS
DEFAULT_MAX_MEMORY = 512 << 20  # bytes for one batch of activations plus its dense codes
WORKING_COPIES_OF_N = 4  # dense [B, N] temporaries alive at once in a batch (pre-acts, codes, squares, mask)


def sae_fingerprint(sae) -> str:
    """SHA-256 of the SAE's tensors (first 16 hex digits): ties an importance file to the SAE it measured."""
    h = hashlib.sha256()
    if hasattr(sae, "state_dict"):
        tensors = sae.state_dict()
    else:  # any object with the SAE contract
        tensors = {name: getattr(sae, name) for name in ("W_enc", "W_dec", "b_enc", "b_dec") if hasattr(sae, name)}
    for name, t in sorted(tensors.items()):
        h.update(name.encode())
        arr = t.detach().cpu().contiguous().numpy().reshape(-1)
        if arr.size:
            h.update(memoryview(arr).cast("B"))  # hashes in place: no copy of large matrices
    return h.hexdigest()[:16]


@dataclass
class Importance:
    """Per-latent statistics of one SAE over T held-out tokens, and the orderings they induce."""

    sq_mean_N: Tensor  # E[f²] (float64)
    freq_N: Tensor  # E[1{f ≠ 0}]
    mean_N: Tensor  # E[f]
    dec_norm_N: Tensor  # ‖W_dec,i‖
    n_tokens: int
    seed: int = 0  # of the "random" control ordering
    sae_sha256: str | None = None
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def n_latents(self) -> int:
        return int(self.sq_mean_N.numel())

    def score(self, statistic: str = "ef2") -> Tensor:
        """Importance values [N] for one statistic (larger = more important)."""
        if statistic == "ef2":
            return self.sq_mean_N * self.dec_norm_N.pow(2)
        if statistic == "freq":
            return self.freq_N.clone()
        if statistic == "mean":
            return self.mean_N * self.dec_norm_N
        raise ProgsaeError(f"unknown importance statistic '{statistic}' (use one of {', '.join(STATISTICS)})")

    def ordering(self, order: str = "ef2") -> Tensor:
        """A permutation [N]: new latent j is old latent perm[j]; statistics sort descending, ties by index."""
        n = self.n_latents
        if order == "unsorted":
            return torch.arange(n)
        if order == "random":
            return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        if order not in STATISTICS:
            raise ProgsaeError(f"unknown ordering '{order}' (use one of {', '.join(ORDERINGS)})")
        return torch.sort(self.score(order), descending=True, stable=True).indices

    def orderings(self) -> dict[str, Tensor]:
        return {name: self.ordering(name) for name in ORDERINGS}

    def permuted(self, perm_N: Tensor) -> "Importance":
        """The statistics of the SAE permuted by perm (new latent j = old latent perm[j])."""
        perm_N = torch.as_tensor(perm_N, dtype=torch.long)
        return Importance(
            self.sq_mean_N[perm_N], self.freq_N[perm_N], self.mean_N[perm_N], self.dec_norm_N[perm_N],
            self.n_tokens, self.seed, None, dict(self.source),
        )

    # ---- files -----------------------------------------------------------------------------
    def to_dict(self, power_law: dict | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": IMPORTANCE_FORMAT,
            "version": 1,
            "sae_sha256": self.sae_sha256,
            "n_latents": self.n_latents,
            "n_tokens": self.n_tokens,
            "random_seed": self.seed,
            "source": self.source,
            "statistics": {
                "ef2": self.score("ef2").tolist(),
                "freq": self.freq_N.tolist(),
                "mean": self.score("mean").tolist(),
                "sq_mean": self.sq_mean_N.tolist(),
                "mean_raw": self.mean_N.tolist(),
                "dec_norm": self.dec_norm_N.tolist(),
            },
            "orderings": {name: perm.tolist() for name, perm in self.orderings().items()},
        }
        if power_law is not None:
            out["power_law"] = power_law
        return out

    def save(self, path, power_law: dict | None = None) -> Path:
        from progsae.sae.io import atomic_write_json

        path = Path(path)
        atomic_write_json(path, self.to_dict(power_law))
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "importance.json") -> "Importance":
        if d.get("format") != IMPORTANCE_FORMAT:
            raise ProgsaeError(f"{source}: not a progsae importance file (no \"format\": \"{IMPORTANCE_FORMAT}\")")
        try:
            stats = d["statistics"]
            n = int(d["n_latents"])
            arrays = {k: torch.tensor(stats[k], dtype=torch.float64) for k in ("sq_mean", "freq", "mean_raw", "dec_norm")}
        except (KeyError, TypeError, ValueError) as e:
            raise ProgsaeError(f"{source}: malformed importance file ({type(e).__name__}: {e})") from None
        for k, v in arrays.items():
            if v.shape != (n,):
                raise ProgsaeError(f"{source}: statistic '{k}' has {v.numel()} values, n_latents is {n}")
            if not torch.isfinite(v).all():
                raise ProgsaeError(f"{source}: statistic '{k}' contains NaN or inf")
        return cls(
            arrays["sq_mean"], arrays["freq"], arrays["mean_raw"], arrays["dec_norm"],
            int(d.get("n_tokens", 0)), int(d.get("random_seed", 0)), d.get("sae_sha256"), dict(d.get("source") or {}),
        )

    @classmethod
    def load(cls, path) -> "Importance":
        path = Path(path)
        if not path.exists():
            raise ProgsaeError(f"{path}: no such importance file")
        return cls.from_dict(read_json_object(path, "importance JSON file"), source=str(path))


# ---- reading activations in bounded memory --------------------------------------------------
def iter_activation_rows(acts, split: str, max_rows: int) -> tuple[Iterator[Tensor], int, dict[str, Any]]:
    """(chunks of rows, total rows, description) for a store folder, an ActivationStore or a [T, D] tensor."""
    from progsae.data.store import ActivationStore

    if isinstance(acts, np.ndarray):
        acts = torch.from_numpy(acts)
    if isinstance(acts, Tensor):
        if acts.ndim != 2:
            raise ProgsaeError(f"activations must be a [tokens, d_in] matrix, got shape {tuple(acts.shape)}")
        chunks = (acts[s : s + max_rows].to(torch.float32) for s in range(0, acts.shape[0], max_rows))
        return chunks, int(acts.shape[0]), {"kind": "tensor", "tokens": int(acts.shape[0])}
    store = acts if isinstance(acts, ActivationStore) else ActivationStore(acts)
    total = store.num_tokens(split)
    source = {"kind": "store", "path": str(store.path), "split": split, "tokens": total, "outliers": store.outliers(split)}
    return store.iter_rows(split, max_rows), total, source


def rows_per_batch(d_in: int, n_latents: int, max_memory_bytes: int, batch_size: int | None = None) -> int:
    """Rows whose activations and dense codes fit in `max_memory_bytes` (fp32), capped by batch_size."""
    per_row = 4 * (d_in + WORKING_COPIES_OF_N * n_latents)
    rows = max(1, max_memory_bytes // per_row)
    return min(rows, batch_size) if batch_size else rows


@torch.no_grad()
def importance(
    sae,
    acts,
    *,
    split: str | None = None,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Importance:
    """Measure every latent's importance over held-out activations in one pass and bounded memory.

    `acts` is an activation store folder (its `split`; by default validation, else train: an ordering
    must not be chosen on the test rows it is then scored on), an ActivationStore (outlier rows dropped by its rule),
    or a [T, d_in] tensor. Works for any SAE with the contract (encode, W_dec, cfg), Matryoshka included.
    """
    d, n = sae.W_dec.shape[1], sae.W_dec.shape[0]
    if isinstance(acts, (str, Path, ActivationStore)):
        acts = acts if isinstance(acts, ActivationStore) else ActivationStore(acts)
        if hasattr(sae, "cfg"):
            acts.check_sae(sae)
        split = split or acts.choice_split()
    rows = rows_per_batch(d, n, max_memory_bytes, batch_size)
    chunks, total, source = iter_activation_rows(acts, split, rows)
    if total == 0:
        raise ProgsaeError("no activations to measure importance on (0 tokens)")
    device = sae.W_dec.device
    sum_sq = torch.zeros(n, dtype=torch.float64, device=device)
    sum_fired = torch.zeros(n, dtype=torch.float64, device=device)
    sum_z = torch.zeros(n, dtype=torch.float64, device=device)
    seen = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="tok", desc="importance", leave=False, disable=None)  # silent when not a terminal
    for x_BD in chunks:
        if x_BD.shape[1] != d:
            raise ProgsaeError(f"activations have width {x_BD.shape[1]}, the SAE expects d_in={d}")
        z_BN = sae.encode(x_BD.to(device=device, dtype=sae.W_dec.dtype))
        sum_sq += z_BN.square().sum(0, dtype=torch.float64)
        sum_fired += (z_BN != 0).sum(0, dtype=torch.float64)
        sum_z += z_BN.sum(0, dtype=torch.float64)
        seen += x_BD.shape[0]
        del z_BN
        if bar is not None:
            bar.update(x_BD.shape[0])
    if bar is not None:
        bar.close()
    dec_norm = sae.W_dec.detach().to(torch.float64).norm(dim=1).cpu()
    source.update({"rows_per_batch": rows, "max_memory_bytes": int(max_memory_bytes)})
    return Importance(
        (sum_sq / seen).cpu(), (sum_fired / seen).cpu(), (sum_z / seen).cpu(), dec_norm, seen, seed, sae_fingerprint(sae), source
    )


def as_importance(importance_or_path, sae=None, fingerprint: str | None = None) -> Importance:
    """An Importance from an object or a JSON path, checked against the SAE it is applied to."""
    imp = importance_or_path if isinstance(importance_or_path, Importance) else Importance.load(importance_or_path)
    if sae is not None:
        if imp.n_latents != sae.n_latents:
            raise ProgsaeError(f"importance has {imp.n_latents} latents, the SAE has {sae.n_latents}")
        if imp.sae_sha256 is not None and imp.sae_sha256 != (fingerprint or sae_fingerprint(sae)):
            raise ProgsaeError("importance was measured on a different SAE (weights fingerprint differs); re-run `progsae importance`")
    return imp

