"""Check a device name before anything is loaded onto it: a one-line error instead of a torch traceback."""

from __future__ import annotations

import torch

from progsae.errors import ProgsaeError


def resolve_device(name: str | torch.device) -> torch.device:
    """The torch device `name` (cpu, cuda, cuda:N, mps) if this machine has it; ProgsaeError otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ProgsaeError(f"unknown device '{name}' (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ProgsaeError(f"device '{name}': no CUDA GPU is available here (torch {torch.__version__} is {build})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ProgsaeError(f"device '{name}': this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ProgsaeError(f"device '{name}': MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ProgsaeError(f"device '{name}' is not supported (use cpu, cuda or cuda:N)")
    return device
