"""Checkpoints: one atomically written safetensors file holding tensors and a JSON state (no pickle).

checkpoint/checkpoint.safetensors  tensors "sae/*", "adam/<i>/*", "dead/since_fired_N", "rng/*";
                                   metadata {"state": JSON} with step, tokens, configs, input scale
checkpoint/state.json              a readable copy of the JSON state (informational)
A crash while writing leaves the previous checkpoint intact, because the file is replaced atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from progsae.errors import ProgsaeError
from progsae.sae.io import atomic_save_safetensors, atomic_write_json
from progsae.validation import check_finite, safetensors_header

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "checkpoint.safetensors"
STATE_FILE = "state.json"
FORMAT = "progsae-checkpoint"


@dataclass
class Checkpoint:
    """What a resumed run needs: tensors by name and the JSON state."""

    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under `prefix/`, with the prefix removed."""
        p = prefix + "/"
        return {k[len(p) :]: v for k, v in self.tensors.items() if k.startswith(p)}


def checkpoint_path(out_dir: Path) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / CHECKPOINT_FILE


def save_checkpoint(out_dir: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    state = {"format": FORMAT, "version": 1, **state}
    text = json.dumps(state)
    atomic_save_safetensors(tensors, checkpoint_path(out_dir), metadata={"state": text})
    atomic_write_json(Path(out_dir) / CHECKPOINT_DIR / STATE_FILE, state)


def remove_checkpoint(out_dir: Path) -> None:
    """Delete checkpoint/ of a finished run: the SAE folder holds the result (the optimiser state is ~3x the SAE)."""
    import shutil

    shutil.rmtree(Path(out_dir) / CHECKPOINT_DIR, ignore_errors=True)


def load_checkpoint(out_dir: Path, device: str | torch.device = "cpu") -> Checkpoint:
    path = checkpoint_path(out_dir)
    if not path.exists():
        raise ProgsaeError(f"{path}: no checkpoint to resume from")
    safetensors_header(path)  # sizes checked against the file before the library reads it
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ProgsaeError(f"{path}: unreadable or truncated checkpoint ({str(e).splitlines()[0]})") from None
    try:
        state = json.loads(meta["state"])
    except (KeyError, json.JSONDecodeError, RecursionError):
        raise ProgsaeError(f"{path}: checkpoint has no valid training state") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ProgsaeError(f"{path}: not a progsae training checkpoint")
    check_finite({k: v for k, v in tensors.items() if not k.startswith("rng/")}, str(path))
    return Checkpoint(tensors=tensors, state=state)
