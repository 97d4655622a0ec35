"""Helpers shared by the format converters: reading foreign files with one-line errors, building progsae SAEs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from progsae.errors import ProgsaeError
from progsae.sae.base import SAE
from progsae.sae.config import SAEConfig
from progsae.sae.registry import sae_class
from progsae.validation import read_json_object, safetensors_header


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`, or a one-line error naming the file."""
    if not Path(path).exists():
        raise ProgsaeError(f"{path}: no such file (a {what} folder needs it)")
    return read_json_object(path, f"{what} config")


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """All tensors of a safetensors file on CPU, or a one-line error naming the file."""
    if not Path(path).exists():
        raise ProgsaeError(f"{path}: no such file")
    safetensors_header(path)  # sizes checked against the file before the library reads it
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ProgsaeError(f"{path}: unreadable or truncated safetensors file ({str(e).splitlines()[0]})") from None


def take(tensors: dict[str, Tensor], source: Path, *names: str) -> Tensor:
    """The first tensor present under any of `names` (formats renamed keys over time)."""
    for name in names:
        if name in tensors:
            return tensors[name]
    raise ProgsaeError(f"{source}: missing tensor {' or '.join(repr(n) for n in names)} (found {sorted(tensors)})")


def nonneg_threshold(threshold_N: Tensor) -> Tensor:
    """JumpReLU thresholds as progsae's gate `z * (z > t)` needs them to match `relu(z) * (z > t)`.

    Peers (SAELens, dictionary_learning) apply ReLU before the gate; for t < 0 that equals a gate at 0.
    """
    return threshold_N.clamp_min(0.0)


def build_sae(
    source: Path,
    architecture: str,
    W_enc_DN: Tensor,
    W_dec_ND: Tensor,
    b_enc_N: Tensor,
    b_dec_D: Tensor,
    *,
    threshold: Tensor | None = None,
    device: str | torch.device = "cpu",
    **cfg_fields: Any,
) -> SAE:
    """A progsae SAE (fp32) from foreign weights, after checking every shape against W_enc [d, n]."""
    if W_enc_DN.ndim != 2:
        raise ProgsaeError(f"{source}: encoder weight must be a matrix, got shape {tuple(W_enc_DN.shape)}")
    d, n = W_enc_DN.shape
    expected = {"W_dec": (W_dec_ND, (n, d)), "b_enc": (b_enc_N, (n,)), "b_dec": (b_dec_D, (d,))}
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ProgsaeError(f"{source}: tensor {name} has shape {tuple(t.shape)}, the encoder [{d}, {n}] implies {shape}")
    cfg = SAEConfig(architecture=architecture, d_in=int(d), n_latents=int(n), **cfg_fields)
    cfg.validate(str(source))
    sae = sae_class(architecture)(cfg, device=device)
    state = {"W_enc": W_enc_DN, "W_dec": W_dec_ND, "b_enc": b_enc_N, "b_dec": b_dec_D}
    if "threshold" in sae.extra_tensors:
        want = tuple(sae.threshold.shape)
        if threshold is None:
            raise ProgsaeError(f"{source}: a {architecture} SAE needs a threshold tensor")
        threshold = threshold.reshape(()) if want == () and threshold.numel() == 1 else threshold
        if tuple(threshold.shape) != want:
            raise ProgsaeError(f"{source}: tensor threshold has shape {tuple(threshold.shape)}, expected {want}")
        state["threshold"] = threshold
    with torch.no_grad():
        for name, t in state.items():
            if not torch.isfinite(t).all():
                raise ProgsaeError(f"{source}: tensor {name} holds NaN or infinite values")
            getattr(sae, name).copy_(t.to(device=sae.W_enc.device, dtype=sae.W_enc.dtype))
    return sae


# progsae hook sites -> TransformerLens names (SAELens); the other direction is progsae.data.hooks.to_progsae_hook
_OURS = re.compile(r"(resid_pre|resid_post|attn_out|mlp_out)\.(\d+)")


def to_transformer_lens_hook(name: str | None) -> str | None:
    """SAELens' TransformerLens name ('blocks.14.hook_resid_post') for a progsae hook site."""
    if name and (m := _OURS.fullmatch(name)):
        return f"blocks.{m.group(2)}.hook_{m.group(1)}"
    return name
