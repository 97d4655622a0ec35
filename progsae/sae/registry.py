"""Architecture registry keyed by the `architecture` string in cfg.json."""

from __future__ import annotations

from progsae.errors import ProgsaeError

REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make an SAE class loadable by its `architecture` name."""
    REGISTRY[cls.architecture] = cls
    return cls


def sae_class(architecture: str) -> type:
    if architecture not in REGISTRY:
        raise ProgsaeError(f"unknown SAE architecture '{architecture}' (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[architecture]
