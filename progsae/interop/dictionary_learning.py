"""dictionary_learning folders (config.json + ae.pt) read as progsae SAEs.

ae.pt is a torch.save'd state dict. It is opened with `torch.load(weights_only=True)` only, which refuses
anything but tensors and plain containers, so a file that needs arbitrary objects unpickled is rejected.
Key names follow saprmarks/dictionary_learning (dictionary.py, trainers/*.py):
  AutoEncoder            encoder.weight [n,d], encoder.bias [n], decoder.weight [d,n], bias [d]
  AutoEncoderNew         encoder.weight, encoder.bias, decoder.weight, decoder.bias (no input centring)
  AutoEncoderTopK        encoder.weight, encoder.bias, decoder.weight, b_dec, k, threshold  (per-row TopK)
  BatchTopKSAE           same keys; inference gates ReLU codes at the scalar threshold
  MatryoshkaBatchTopKSAE W_enc [d,n], b_enc, W_dec [n,d], b_dec, k, threshold, group_sizes
  JumpReluAutoEncoder    W_enc, b_enc, W_dec, b_dec, threshold [n]  (apply_b_dec_to_input False)
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from progsae.errors import ProgsaeError
from progsae.data.hooks import to_progsae_hook
from progsae.interop.common import build_sae, nonneg_threshold, read_json, take
from progsae.sae.base import SAE

CFG_FILE = "config.json"
WEIGHTS_FILE = "ae.pt"
FORMAT = "dictionary_learning"
SUPPORTED = ("AutoEncoder", "AutoEncoderNew", "AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder")


def looks_like(path: Path) -> bool:
    return (path / WEIGHTS_FILE).exists()


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a torch.save'd state dict, never unpickling arbitrary objects."""
    if not path.exists():
        raise ProgsaeError(f"{path}: no such file")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise ProgsaeError(f"{path}: refused, loading it would unpickle arbitrary Python objects (it needs {found.group(1)})") from None
        detail = re.search(r"Unsupported [^\n]*", str(e))
        raise ProgsaeError(f"{path}: unreadable or truncated torch file, not a plain tensor state dict ({detail.group(0) if detail else 'bad pickle'})") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError) as e:
        msg = str(e).strip().splitlines()
        raise ProgsaeError(f"{path}: unreadable or truncated torch file ({msg[0][:160] if msg else type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise ProgsaeError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    obj = {k: v for k, v in obj.items() if k != "_hub_mixin_config"}  # dictionary_learning's hub-mixin extra
    bad = sorted(k for k, v in obj.items() if not isinstance(v, Tensor))
    if bad:
        raise ProgsaeError(f"{path}: entries {bad[:5]} are not tensors; expected a plain state dict")
    return obj


def _dict_class(trainer: dict[str, Any], sd: dict[str, Tensor], source: Path) -> str:
    cls = trainer.get("dict_class")
    if cls:
        return str(cls)
    if "group_sizes" in sd:
        return "MatryoshkaBatchTopKSAE"
    if "W_enc" in sd and "threshold" in sd and sd["threshold"].ndim == 1:
        return "JumpReluAutoEncoder"
    if "bias" in sd and "encoder.weight" in sd:
        return "AutoEncoder"
    if "decoder.bias" in sd:
        return "AutoEncoderNew"
    if "k" in sd:
        raise ProgsaeError(f"{source}: ae.pt holds k and threshold but config.json is missing, so AutoEncoderTopK and BatchTopKSAE cannot be told apart")
    raise ProgsaeError(f"{source}: cannot tell which dictionary_learning class wrote ae.pt (keys {sorted(sd)[:8]})")


def load(path: Path, device: str | torch.device = "cpu") -> SAE:
    """Read a dictionary_learning folder as the progsae SAE with the same outputs."""
    w_path = path / WEIGHTS_FILE
    config = read_json(path / CFG_FILE, "dictionary_learning") if (path / CFG_FILE).exists() else {}
    trainer = config.get("trainer") or {}
    sd = read_state_dict(w_path)
    cls = _dict_class(trainer, sd, w_path)
    f = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    threshold = None
    k = None
    prefixes = None
    subtract = True
    if cls in ("AutoEncoder", "AutoEncoderNew", "AutoEncoderTopK", "BatchTopKSAE"):
        enc_ND = take(f, w_path, "encoder.weight")
        W_enc, b_enc = enc_ND.T.contiguous(), take(f, w_path, "encoder.bias")
        W_dec = take(f, w_path, "decoder.weight").T.contiguous()
        if cls == "AutoEncoder":
            arch, b_dec = "relu", take(f, w_path, "bias")
        elif cls == "AutoEncoderNew":
            arch, b_dec, subtract = "relu", take(f, w_path, "decoder.bias"), False
        else:
            b_dec, k = take(f, w_path, "b_dec"), int(take(sd, w_path, "k").item())
            arch = "topk" if cls == "AutoEncoderTopK" else "batchtopk"
            if arch == "batchtopk":
                # Its encode gates ReLU codes at the threshold; an untrained -1 keeps every positive code (= gate at 0).
                threshold = take(f, w_path, "threshold").reshape(()).clamp_min(0.0)
    elif cls == "MatryoshkaBatchTopKSAE":
        W_enc, b_enc, W_dec, b_dec = (take(f, w_path, n) for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
        k = int(take(sd, w_path, "k").item())
        threshold = take(f, w_path, "threshold").reshape(()).clamp_min(0.0)
        prefixes = torch.cumsum(take(sd, w_path, "group_sizes").long(), 0).tolist()
        arch = "batchtopk"
    elif cls == "JumpReluAutoEncoder":
        W_enc, b_enc, W_dec, b_dec = (take(f, w_path, n) for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
        threshold = nonneg_threshold(take(f, w_path, "threshold"))
        arch, subtract = "jumprelu", bool(trainer.get("apply_b_dec_to_input", False))
    else:
        raise ProgsaeError(f"{w_path}: dictionary_learning class '{cls}' has no progsae equivalent (supported: {', '.join(SUPPORTED)})")
    if k is not None and trainer.get("k") is not None and int(trainer["k"]) != k:
        raise ProgsaeError(f"{path / CFG_FILE}: k={trainer['k']} but ae.pt stores k={k}")
    lm = trainer.get("lm_name")
    hook = trainer.get("submodule_name")
    provenance = {"source_format": FORMAT, "source_path": str(path), "source_class": cls, "source_config": config, "source_hook": hook}
    if not hook and trainer.get("layer") is not None:
        # dictionary_learning's trainers hook a decoder block's output by default (SAELens assumes the same)
        hook = f"resid_post.{int(trainer['layer'])}"
        provenance["notes"] = [f"hook assumed to be the residual stream after layer {trainer['layer']} (no submodule_name)"]
    return build_sae(
        path,
        arch,
        W_enc,
        W_dec,
        b_enc,
        b_dec,
        threshold=threshold,
        device=device,
        k=k,
        prefixes=prefixes,
        subtract_b_dec=subtract,
        model=lm if isinstance(lm, str) else None,
        hook=to_progsae_hook(str(hook)) if hook else None,
        provenance=provenance,
    )
