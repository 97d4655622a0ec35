"""EleutherAI sparsify folders (cfg.json + sae.safetensors) read as progsae TopK SAEs.

sparsify's SparseCoder stores `encoder.weight` [n, d], `encoder.bias` [n], `W_dec` [n, d] and `b_dec` [d];
it encodes TopK(ReLU(encoder(x - b_dec))) and decodes z @ W_dec + b_dec (sparsify/sparse_coder.py).
A training run holds one such folder per hookpoint, named after the module (e.g. `layers.6`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from progsae.errors import ProgsaeError
from progsae.data.hooks import to_progsae_hook
from progsae.interop.common import build_sae, read_json, read_safetensors, take
from progsae.sae.base import SAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
FORMAT = "sparsify"
CFG_KEYS = {"expansion_factor", "num_latents", "normalize_decoder", "multi_topk", "skip_connection", "transcode", "activation"}


def is_sparsify_cfg(cfg: dict[str, Any]) -> bool:
    """sparsify's cfg.json: d_in plus SparseCoderConfig fields, and none of progsae's or SAELens' keys."""
    return "d_in" in cfg and bool(CFG_KEYS & set(cfg)) and "d_sae" not in cfg and "format" not in cfg


def looks_like(path: Path) -> bool:
    if not ((path / CFG_FILE).exists() and (path / WEIGHTS_FILE).exists()):
        return False
    try:
        return is_sparsify_cfg(read_json(path / CFG_FILE, "sparsify"))
    except ProgsaeError:
        return False


def load(path: Path, device: str | torch.device = "cpu") -> SAE:
    """Read a sparsify SparseCoder folder as the progsae TopK SAE with the same outputs."""
    cfg_path, w_path = path / CFG_FILE, path / WEIGHTS_FILE
    cfg = read_json(cfg_path, "sparsify")
    if cfg.get("transcode"):
        raise ProgsaeError(f"{cfg_path}: a sparsify transcoder predicts another module's output; progsae imports autoencoders only")
    if cfg.get("skip_connection"):
        raise ProgsaeError(f"{cfg_path}: a sparsify coder with a skip connection (W_skip) has no progsae equivalent")
    if cfg.get("activation", "topk") != "topk":
        raise ProgsaeError(f"{cfg_path}: sparsify activation '{cfg['activation']}' is not supported (only topk)")
    if cfg.get("signed"):
        raise ProgsaeError(f"{cfg_path}: signed TopK (sparsify 'signed': true) is not supported")
    tensors = read_safetensors(w_path)
    enc_ND = take(tensors, w_path, "encoder.weight").float()
    n, d = enc_ND.shape
    if int(cfg["d_in"]) != d:
        raise ProgsaeError(f"{cfg_path}: d_in={cfg['d_in']} but encoder.weight has shape {tuple(enc_ND.shape)}")
    expected_n = int(cfg.get("num_latents") or 0) or d * int(cfg.get("expansion_factor", 32))
    if expected_n != n:
        raise ProgsaeError(f"{cfg_path}: the config implies {expected_n} latents but encoder.weight has {n}")
    W_dec = take(tensors, w_path, "W_dec").float()
    b_enc = tensors.get("encoder.bias", torch.zeros(n)).float()
    b_dec = take(tensors, w_path, "b_dec").float()
    k = int(cfg.get("k", 32))
    parent = read_json(path.parent / "config.json", "sparsify run") if (path.parent / "config.json").exists() else {}
    provenance = {
        "source_format": FORMAT,
        "source_path": str(path),
        "source_dtype": str(tensors["encoder.weight"].dtype).replace("torch.", ""),
        "source_config": cfg,
        "source_hook": path.name,
    }
    if cfg.get("multi_topk"):
        provenance["notes"] = ["trained with Multi-TopK (a training loss only; inference is plain TopK k)"]
    return build_sae(
        path,
        "topk",
        enc_ND.T.contiguous(),
        W_dec,
        b_enc,
        b_dec,
        device=device,
        k=k,
        model=parent.get("model") if isinstance(parent.get("model"), str) else None,
        hook=to_progsae_hook(path.name),
        provenance=provenance,
    )
