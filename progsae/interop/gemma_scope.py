"""Gemma Scope's raw release files (params.npz) read as progsae JumpReLU SAEs.

Each folder of google/gemma-scope-* holds `params.npz` with W_enc [d,n], W_dec [n,d], b_enc, b_dec and
threshold. The encoder does not subtract b_dec (SAELens loads them with apply_b_dec_to_input=False).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from progsae.errors import ProgsaeError
from progsae.interop.common import build_sae, nonneg_threshold, take
from progsae.sae.base import SAE

WEIGHTS_FILE = "params.npz"
FORMAT = "gemma_scope"


def looks_like(path: Path) -> bool:
    return (path / WEIGHTS_FILE).exists()


def load(path: Path, device: str | torch.device = "cpu") -> SAE:
    w_path = path / WEIGHTS_FILE
    try:
        with np.load(w_path, allow_pickle=False) as data:
            tensors = {("W_" + k[2:] if k.startswith("w_") else k): torch.from_numpy(np.asarray(data[k], dtype=np.float32)) for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise ProgsaeError(f"{w_path}: unreadable npz file or one that needs pickle ({str(e).splitlines()[0][:160]})") from None
    W_enc, W_dec, b_enc, b_dec = (take(tensors, w_path, n) for n in ("W_enc", "W_dec", "b_enc", "b_dec"))
    threshold = nonneg_threshold(take(tensors, w_path, "threshold"))
    provenance = {"source_format": FORMAT, "source_path": str(path)}
    return build_sae(path, "jumprelu", W_enc, W_dec, b_enc, b_dec, threshold=threshold, device=device, subtract_b_dec=False, provenance=provenance)
