"""Interoperability: read SAEs saved by SAELens, sparsify, dictionary_learning and Gemma Scope; write SAELens folders.

`load_sae` falls back to `load_foreign` for any folder that is not progsae's own, so every progsae verb
(importance, prune, eval) accepts foreign SAEs directly. The source format is recorded in
`cfg.provenance["source_format"]`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from progsae.errors import ProgsaeError
from progsae.interop import dictionary_learning, gemma_scope, saelens, sparsify
from progsae.sae.base import SAE

# format name -> module with looks_like(path) and load(path, device); checked in this order
READERS = {
    "dictionary_learning": dictionary_learning,
    "saelens": saelens,
    "sparsify": sparsify,
    "gemma_scope": gemma_scope,
}
EXPORT_FORMATS = ("saelens",)
EXPECTED = (
    "progsae (cfg.json + sae.safetensors), SAELens (cfg.json + sae_weights.safetensors), "
    "sparsify (cfg.json + sae.safetensors), dictionary_learning (config.json + ae.pt), Gemma Scope (params.npz)"
)


def _is_progsae(path: Path) -> bool:
    try:
        return json.loads((path / "cfg.json").read_text()).get("format") == "progsae-sae"
    except (OSError, ValueError, AttributeError):
        return False


def _detect_here(path: Path) -> str | None:
    if _is_progsae(path):
        return "progsae"
    for name, reader in READERS.items():
        if reader.looks_like(path):
            return name
    return None


def detect_format(path) -> str:
    """The format of an SAE folder: progsae, saelens, sparsify, dictionary_learning or gemma_scope."""
    path = Path(path)
    if not path.exists():
        raise ProgsaeError(f"{path}: no such SAE folder")
    if path.is_file():
        raise ProgsaeError(f"{path}: an SAE is a folder, got a file; pass the folder that holds it ({path.parent})")
    fmt = _detect_here(path)
    if fmt is not None:
        return fmt
    subs = sorted(p.name for p in path.iterdir() if p.is_dir() and _detect_here(p) is not None)
    if subs:
        shown = ", ".join(subs[:6]) + (", ..." if len(subs) > 6 else "")
        raise ProgsaeError(f"{path}: holds {len(subs)} SAE folder{'s' if len(subs) > 1 else ''} ({shown}); pass one of them, e.g. {path / subs[0]}")
    if (path / "cfg.json").exists() and (path / "sae.safetensors").exists():
        raise ProgsaeError(f"{path / 'cfg.json'}: neither a progsae config (no \"format\": \"progsae-sae\") nor a sparsify one")
    found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
    raise ProgsaeError(f"{path}: not an SAE folder progsae recognises (found {found}; expected {EXPECTED})")


def load_foreign(path, device: str | torch.device = "cpu") -> SAE:
    """Load an SAE folder in any recognised format as a progsae SAE with the same encode/decode outputs."""
    from progsae.device import resolve_device

    resolve_device(device)
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "progsae":
        from progsae.sae.io import load_progsae_folder

        return load_progsae_folder(path, device=device)
    return READERS[fmt].load(path, device=device)


def import_sae(src, out, device: str | torch.device = "cpu", overwrite: bool = False, provenance: dict | None = None) -> SAE:
    """Read a foreign (or progsae) SAE folder and write it as a progsae SAE folder at `out`.

    `provenance` entries (e.g. the Hub id it came from) are added to the written cfg.json.
    """
    from progsae.sae.io import save_sae

    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise ProgsaeError(f"{out}: the output folder must differ from the source folder")
    if (out / "cfg.json").exists() and not overwrite:
        raise ProgsaeError(f"{out}: already holds an SAE; choose another --out or pass --overwrite")
    sae = load_foreign(src, device=device)
    if provenance:
        sae.cfg.provenance = {**sae.cfg.provenance, **provenance}
    save_sae(sae, out)
    return sae


def export_sae(sae: SAE, to: str, out, allow_retopk: bool = False) -> Path:
    """Write `sae` in another library's folder format (`to` is one of EXPORT_FORMATS)."""
    if to not in EXPORT_FORMATS:
        raise ProgsaeError(f"cannot export to '{to}' (supported: {', '.join(EXPORT_FORMATS)})")
    return saelens.export(sae, Path(out), allow_retopk=allow_retopk)


__all__ = ["detect_format", "load_foreign", "import_sae", "export_sae", "READERS", "EXPORT_FORMATS"]
