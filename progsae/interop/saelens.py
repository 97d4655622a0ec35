"""SAELens folders (cfg.json + sae_weights.safetensors): read them as progsae SAEs and write progsae SAEs as them.

The conventions mirrored here are SAELens v6's (sae_lens/saes/*.py, loading/pretrained_sae_loaders.py):
`apply_b_dec_to_input` decides whether the encoder centres its input; JumpReLU is `relu(h) * (h > t)`;
TopK may rescale pre-activations by decoder norms; BatchTopK and Matryoshka BatchTopK are saved for
inference as JumpReLU with a uniform threshold and their training details in `metadata`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from progsae.data.hooks import to_progsae_hook
from progsae.errors import ProgsaeError
from progsae.interop.common import (
    build_sae,
    nonneg_threshold,
    read_json,
    read_safetensors,
    take,
    to_transformer_lens_hook,
)
from progsae.sae.base import SAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
FORMAT = "saelens"

SUPPORTED = ("standard", "jumprelu", "topk", "batchtopk", "matryoshka_batchtopk")
# Per-token normalisations SAELens applies at inference; nothing in progsae's encoder can express them.
RUNTIME_NORMALIZATIONS = ("constant_norm_rescale", "layer_norm")
DEFAULT_VERSION = "6.0.0"


def looks_like(path: Path) -> bool:
    return (path / WEIGHTS_FILE).exists()


# ---- import ----------------------------------------------------------------------------------
def _normalize_old_config(raw: dict[str, Any]) -> dict[str, Any]:
    """SAELens < 6 kept model/hook names at the top level and spelled some keys differently."""
    cfg = dict(raw)
    meta = dict(cfg.get("metadata") or {})
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index", "activation_fn_str": "activation_fn"}
    for old, new in renames.items():
        if old in cfg and new not in cfg:
            cfg[new] = cfg.pop(old)
    for key in ("model_name", "hook_name", "hook_head_index", "sae_lens_version", "sae_lens_training_version"):
        if key in cfg and key not in meta:
            meta[key] = cfg[key]
    cfg["metadata"] = meta
    if "architecture" not in cfg:
        kwargs = cfg.get("activation_fn_kwargs") or {}
        cfg["architecture"] = "topk" if cfg.get("activation_fn") == "topk" and kwargs.get("k") else "standard"
        if cfg["architecture"] == "topk":
            cfg["k"] = kwargs["k"]
    if isinstance(cfg.get("normalize_activations"), bool):
        cfg["normalize_activations"] = "expected_average_only_in" if cfg["normalize_activations"] else "none"
    if cfg.get("normalize_activations") is None:
        cfg["normalize_activations"] = "none"
    cfg.setdefault("apply_b_dec_to_input", True)
    return cfg


def _int_k(value: Any, source: Path) -> int:
    k = float(value)
    if k != int(k) or k <= 0:
        raise ProgsaeError(f"{source}: k={value} is not a positive whole number; progsae needs an integer k")
    return int(k)


def _prefixes(cfg: dict[str, Any], n: int) -> list[int] | None:
    """Matryoshka widths from SAELens training details, or the prefixes progsae wrote on export."""
    meta = cfg.get("metadata") or {}
    ours = (meta.get("progsae") or {}).get("prefixes")
    if ours:
        return [int(p) for p in ours]
    widths = cfg.get("matryoshka_widths") or (meta.get("training_architecture_details") or {}).get("matryoshka_widths")
    if not widths:
        return None
    widths = sorted({int(w) for w in widths})
    return widths if widths[-1] == n else widths + [n]  # SAELens appends d_sae itself when missing


def load(path: Path, device: str | torch.device = "cpu") -> SAE:
    """Read a SAELens folder as the progsae SAE that gives the same encode/decode outputs."""
    cfg_path, w_path = path / CFG_FILE, path / WEIGHTS_FILE
    raw = read_json(cfg_path, "SAELens")
    cfg = _normalize_old_config(raw)
    arch = cfg.get("architecture")
    if arch not in SUPPORTED:
        raise ProgsaeError(f"{cfg_path}: SAELens architecture '{arch}' has no progsae equivalent (supported: {', '.join(SUPPORTED)})")
    norm = cfg.get("normalize_activations", "none")
    if norm in RUNTIME_NORMALIZATIONS:
        raise ProgsaeError(f"{cfg_path}: normalize_activations='{norm}' rescales every input at run time, which a progsae SAE cannot express")
    tensors = read_safetensors(w_path)
    W_enc = take(tensors, w_path, "W_enc")
    W_dec = take(tensors, w_path, "W_dec")
    b_dec = take(tensors, w_path, "b_dec")
    n = W_enc.shape[-1]
    b_enc = tensors.get("b_enc", torch.zeros(n, dtype=W_enc.dtype))
    scale = tensors.get("scaling_factor", tensors.get("finetuning_scaling_factor"))
    if scale is not None and not torch.allclose(scale.float(), torch.ones_like(scale.float())):
        raise ProgsaeError(f"{w_path}: a fine-tuning scaling factor that is not all ones is not supported")
    for key, size in (("d_in", W_enc.shape[0]), ("d_sae", W_enc.shape[-1])):
        if key in cfg and int(cfg[key]) != int(size):
            raise ProgsaeError(f"{cfg_path}: {key}={cfg[key]} but W_enc in {WEIGHTS_FILE} has shape {tuple(W_enc.shape)}")
    W_enc, W_dec, b_enc, b_dec = (t.float() for t in (W_enc, W_dec, b_enc, b_dec))
    meta = cfg.get("metadata") or {}
    notes: list[str] = []
    threshold = None
    k = None

    if arch in ("topk", "batchtopk", "matryoshka_batchtopk") and cfg.get("rescale_acts_by_decoder_norm"):
        # SAELens selects on h * |W_dec| and decodes z / |W_dec|: fold the norms so plain TopK matches.
        norms_N = W_dec.norm(dim=-1)
        W_enc, b_enc, W_dec = W_enc * norms_N, b_enc * norms_N, W_dec / norms_N[:, None]
        notes.append("decoder norms folded into the encoder (rescale_acts_by_decoder_norm)")

    if arch == "standard":
        if cfg.get("activation_fn", "relu") not in ("relu", None):
            raise ProgsaeError(f"{cfg_path}: activation_fn '{cfg['activation_fn']}' is not supported (only relu)")
        prog_arch = "relu"
    elif arch == "topk":
        prog_arch, k = "topk", _int_k(cfg.get("k", 100), cfg_path)
    elif arch in ("batchtopk", "matryoshka_batchtopk"):
        # A training folder: per-batch TopK in training, a single learned threshold at inference.
        prog_arch, k = "batchtopk", _int_k(cfg.get("k", 100), cfg_path)
        threshold = take(tensors, w_path, "topk_threshold", "threshold").float().reshape(-1)[:1].reshape(())
        threshold = threshold.clamp_min(0.0)
    else:  # jumprelu, possibly a BatchTopK / Matryoshka saved for inference
        if "threshold" in tensors:
            threshold = tensors["threshold"].float()
        elif "log_threshold" in tensors:
            threshold = tensors["log_threshold"].float().exp()
        else:
            raise ProgsaeError(f"{w_path}: a jumprelu SAE needs a 'threshold' tensor (found {sorted(tensors)})")
        if threshold.numel() == 1:
            threshold = threshold.reshape(()).expand(n).clone()
        threshold = nonneg_threshold(threshold)
        prog_arch = "jumprelu"
        details = meta.get("training_architecture_details") or {}
        uniform = threshold.ndim == 1 and threshold.numel() == n and bool((threshold == threshold[0]).all())
        if meta.get("training_architecture") in ("batchtopk", "matryoshka_batchtopk") and details.get("k") and uniform:
            # SAELens' BatchTopK saved for inference: keep it a BatchTopK SAE (k known) with its global threshold.
            prog_arch, k, threshold = "batchtopk", _int_k(details["k"], cfg_path), threshold[0].clone()

    if norm not in ("none", None):
        notes.append(f"normalize_activations='{norm}' is not applied by SAELens when loading a local folder; nor here")
    if cfg.get("reshape_activations", "none") == "hook_z":
        notes.append("hook_z SAE: flatten [.., n_heads, d_head] inputs to d_in before encoding")
    provenance = {
        "source_format": FORMAT,
        "source_path": str(path),
        "source_architecture": arch,
        "source_dtype": cfg.get("dtype", "float32"),
        "source_hook": meta.get("hook_name"),
        "source_config": raw,
    }
    if notes:
        provenance["notes"] = notes
    # A folder progsae exported: keep its own history (sorting, pruning, Matryoshka settings).
    for key, value in ((meta.get("progsae") or {}).get("provenance") or {}).items():
        if not key.startswith("source_") and key not in provenance:
            provenance[key] = value
    return build_sae(
        path,
        prog_arch,
        W_enc,
        W_dec,
        b_enc,
        b_dec,
        threshold=threshold,
        device=device,
        k=k,
        prefixes=_prefixes(cfg, int(n)),
        subtract_b_dec=bool(cfg.get("apply_b_dec_to_input", True)),
        model=meta.get("model_name"),
        hook=to_progsae_hook(meta.get("hook_name")),
        provenance=provenance,
    )


# ---- export ----------------------------------------------------------------------------------
def _sae_lens_version() -> str:
    """Written into metadata so SAELens does not treat the folder as a pre-6.0 config."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sae-lens")
    except PackageNotFoundError:
        return DEFAULT_VERSION


def _elementwise(sae: SAE) -> bool:
    """True when each latent's activation depends only on its own pre-activation (truncation == masking)."""
    if sae.cfg.architecture in ("relu", "jumprelu"):
        return True
    return sae.cfg.architecture == "batchtopk" and float(sae.threshold) >= 0


def _resolve_mask(sae: SAE, allow_retopk: bool) -> tuple[SAE, dict[str, Any]]:
    """A mask-mode SAE (latents >= mask_size zeroed after encoding) as a plain SAE holding the kept latents."""
    g = sae.cfg.mask_size
    if g is None:
        return sae, {}
    kept = torch.arange(g)
    nested = {"prefixes": [p for p in sae.cfg.prefixes if p < g] + [g]} if sae.cfg.prefixes else {}
    if _elementwise(sae):
        return sae.select(kept, **nested), {"mask_size": g, "mask_export": "exact (elementwise activation: masking == truncation)"}
    if not allow_retopk:
        raise ProgsaeError(
            f"a mask-mode {sae.cfg.architecture} SAE (mask_size={g}) picks its top k among all {sae.n_latents} latents, "
            "which SAELens cannot express; pass --allow-retopk to export its retopk equivalent instead"
        )
    changes = {"k": min(sae.cfg.k, g), **nested} if sae.cfg.k is not None else nested
    return sae.select(kept, **changes), {"mask_size": g, "mask_export": "retopk equivalent (not exact: TopK re-selected among the kept latents)"}


def _fold_unfolded_scale(sae: SAE) -> tuple[SAE, dict[str, Any]]:
    norm = sae.cfg.normalization or {"kind": "none"}
    if norm.get("kind", "none") == "none" or norm.get("folded"):
        return sae, {}
    if norm.get("kind") != "scalar":
        raise ProgsaeError(f"normalization {norm} cannot be expressed in SAELens' format")
    import copy

    folded = copy.deepcopy(sae)
    folded.fold_input_scale(float(norm["scale"]))
    return folded, {"folded_input_scale": float(norm["scale"])}


def to_files(sae: SAE, allow_retopk: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The SAELens cfg.json dict and weights for `sae` (also usable without writing files)."""
    sae, mask_info = _resolve_mask(sae, allow_retopk)
    sae, scale_info = _fold_unfolded_scale(sae)
    cfg = sae.cfg
    arch = cfg.architecture
    tensors = {
        "W_enc": sae.W_enc.detach().float().cpu(),
        "W_dec": sae.W_dec.detach().float().cpu(),
        "b_enc": sae.b_enc.detach().float().cpu(),
        "b_dec": sae.b_dec.detach().float().cpu(),
    }
    prov = {k: v for k, v in cfg.provenance.items() if k != "source_config"}
    src = cfg.provenance.get("source_config") if cfg.provenance.get("source_format") == FORMAT else None
    src_meta = dict((src or {}).get("metadata") or {})
    metadata: dict[str, Any] = {k: v for k, v in src_meta.items() if k not in ("progsae", "training_architecture", "training_architecture_details")}
    metadata.update(
        {
            "sae_lens_version": _sae_lens_version(),
            "sae_lens_training_version": src_meta.get("sae_lens_training_version"),
            "model_name": cfg.model,
            "hook_name": to_transformer_lens_hook(cfg.hook),
            "progsae": {
                "architecture": arch,
                "k": cfg.k,
                "prefixes": cfg.prefixes,
                "provenance": prov,
                **mask_info,
                **scale_info,
            },
        }
    )
    out: dict[str, Any] = {
        "d_in": cfg.d_in,
        "d_sae": cfg.n_latents,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.subtract_b_dec),
        "normalize_activations": "none",
        "reshape_activations": (src or {}).get("reshape_activations", "none") if str(cfg.hook or "").endswith("_z") else "none",
    }
    if arch == "relu":
        out["architecture"] = "standard"
    elif arch == "topk" or (arch == "batchtopk" and float(sae.threshold) < 0):
        # A BatchTopK SAE that never learned its threshold encodes with per-row TopK in progsae.
        out.update(architecture="topk", k=int(cfg.k), rescale_acts_by_decoder_norm=False)
    elif arch in ("jumprelu", "batchtopk"):
        threshold = sae.threshold.detach().float().cpu()
        if arch == "batchtopk":
            threshold = threshold.expand(cfg.n_latents).clone()
            trained = "matryoshka_batchtopk" if cfg.prefixes else "batchtopk"
            details: dict[str, Any] = {"k": cfg.k}
            if cfg.prefixes:
                details["matryoshka_widths"] = list(cfg.prefixes)
            metadata["training_architecture"], metadata["training_architecture_details"] = trained, details
        elif bool((threshold < 0).any()):
            raise ProgsaeError("this JumpReLU SAE has negative thresholds, which pass negative codes; SAELens' JumpReLU (ReLU, then gate) cannot express them")
        tensors["threshold"] = threshold
        out["architecture"] = "jumprelu"
    else:
        raise ProgsaeError(f"no SAELens equivalent for progsae architecture '{arch}'")
    if cfg.prefixes and "training_architecture" not in metadata:
        metadata["training_architecture_details"] = {"matryoshka_widths": list(cfg.prefixes), "k": cfg.k}
    out["metadata"] = metadata
    return out, tensors


def export(sae: SAE, out: Path, allow_retopk: bool = False) -> Path:
    """Write `out/cfg.json` + `out/sae_weights.safetensors` that `sae_lens.SAE.load_from_disk` reads."""
    from progsae.sae.io import atomic_save_safetensors, atomic_write_json

    cfg, tensors = to_files(sae, allow_retopk=allow_retopk)
    out = Path(out)
    atomic_save_safetensors(tensors, out / WEIGHTS_FILE)
    atomic_write_json(out / CFG_FILE, cfg)
    return out
