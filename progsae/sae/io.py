"""SAE folders: cfg.json + sae.safetensors, written atomically, read with one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from progsae.errors import ProgsaeError
from progsae.outputs import follow_umask, new_temp_file
from progsae.sae.base import SAE
from progsae.sae.config import SAEConfig
from progsae.sae.registry import sae_class
from progsae.validation import check_finite, read_json_object, safetensors_header

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so a crash leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_file(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2) + "\n").encode())


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_file(path)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_sae(sae: SAE, path) -> Path:
    """Write `path/cfg.json` and `path/sae.safetensors` (weights first, so cfg.json marks a complete folder)."""
    path = Path(path)
    tensors = {name: t for name, t in sae.state_dict().items()}
    atomic_save_safetensors(tensors, path / WEIGHTS_FILE, metadata={"format": "progsae-sae"})
    atomic_write_json(path / CFG_FILE, sae.cfg.to_dict())
    return path


def read_cfg(path: Path) -> dict:
    return read_json_object(path / CFG_FILE, "SAE config")


def load_progsae_folder(path: Path, device: str | torch.device = "cpu") -> SAE:
    raw = read_cfg(path)
    if raw.get("format") != "progsae-sae":
        raise ProgsaeError(f"{path / CFG_FILE}: not a progsae SAE config (no \"format\": \"progsae-sae\")")
    cfg = SAEConfig.from_dict(raw, source=str(path / CFG_FILE))
    cls = sae_class(cfg.architecture)
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        raise ProgsaeError(f"{weights}: no such file")
    safetensors_header(weights)  # sizes checked against the file before the library reads it
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ProgsaeError(f"{weights}: unreadable or truncated safetensors file ({str(e).splitlines()[0]})") from None
    sae = cls(cfg, device=device)
    expected = {name: tuple(t.shape) for name, t in sae.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ProgsaeError(f"{weights}: missing tensors {missing}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ProgsaeError(f"{weights}: unexpected tensors {extra}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise ProgsaeError(f"{weights}: tensor {name} has shape {tuple(state[name].shape)}, cfg.json implies {shape}")
    check_finite(state, str(weights))
    sae.load_state_dict({k: v.to(sae.W_enc.dtype) if v.is_floating_point() else v for k, v in state.items()})
    return sae


def load_sae(path, device: str | torch.device = "cpu", revision: str | None = None) -> SAE:
    """Load an SAE folder (progsae's own format, or a foreign one the interop module recognises), or, when no
    such local path exists, the Hugging Face Hub folder 'OWNER/REPO/PATH' (`revision`: a branch, tag or commit)."""
    from progsae.device import resolve_device

    resolve_device(device)
    if not Path(path).exists():
        from progsae.interop.hub import load_from_hub, looks_like_hub_spec

        if looks_like_hub_spec(path):
            return load_from_hub(str(path), device=str(device), revision=revision)
    path = Path(path)
    if not path.exists():
        raise ProgsaeError(f"{path}: no such SAE folder")
    if not path.is_dir():
        raise ProgsaeError(f"{path}: an SAE is a folder holding cfg.json and sae.safetensors, got a file")
    raw = read_cfg(path) if (path / CFG_FILE).exists() else {}
    if raw.get("format") == "progsae-sae":
        return load_progsae_folder(path, device=device)
    try:
        from progsae.interop import load_foreign  # the interoperability module, when present
    except ImportError:
        load_foreign = None
    if load_foreign is None:
        return load_progsae_folder(path, device=device)
    sae = load_foreign(path, device=device)
    check_finite(sae.state_dict(), str(path))
    return sae
