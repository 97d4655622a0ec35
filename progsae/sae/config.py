"""The SAE configuration stored as cfg.json beside the weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from progsae.errors import ProgsaeError
from progsae.validation import from_json_dict

FORMAT = "progsae-sae"
FORMAT_VERSION = 1


@dataclass
class SAEConfig:
    """Everything needed to rebuild an SAE from its weights.

    `prefixes` marks a Matryoshka SAE (nested prefix sizes, last one == n_latents).
    `mask_size` makes a mask-mode SAE: encode with all latents, then zero latents >= mask_size.
    `subtract_b_dec` is False for SAEs (e.g. Gemma Scope) whose encoder does not centre the input.
    """

    architecture: str
    d_in: int
    n_latents: int
    k: int | None = None
    prefixes: list[int] | None = None
    mask_size: int | None = None
    subtract_b_dec: bool = True
    dtype: str = "float32"
    model: str | None = None
    hook: str | None = None
    normalization: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "cfg.json") -> "SAEConfig":
        d = {k: v for k, v in d.items() if k not in ("format", "format_version")}
        cfg = from_json_dict(cls, d, source)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        if self.d_in <= 0 or self.n_latents <= 0:
            raise ProgsaeError(f"{source}: d_in and n_latents must be positive, got {self.d_in}, {self.n_latents}")
        if self.k is not None and not (0 < self.k <= self.n_latents):
            raise ProgsaeError(f"{source}: k={self.k} must be in 1..n_latents={self.n_latents}")
        if self.prefixes is not None:
            check_prefixes(self.prefixes, self.n_latents)
        if self.mask_size is not None and not (0 < self.mask_size <= self.n_latents):
            raise ProgsaeError(f"{source}: mask_size={self.mask_size} must be in 1..{self.n_latents}")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def check_prefixes(prefixes: list[int], n_latents: int) -> list[int]:
    """Refuse Matryoshka prefix sizes that do not strictly nest inside the dictionary; returns them."""
    if not prefixes:
        raise ProgsaeError("Matryoshka prefix list is empty")
    if any(int(p) <= 0 for p in prefixes):
        raise ProgsaeError(f"Matryoshka prefixes must be positive, got {prefixes}")
    if any(b <= a for a, b in zip(prefixes, prefixes[1:])):
        raise ProgsaeError(f"Matryoshka prefixes must strictly increase (nest), got {prefixes}")
    if prefixes[-1] > n_latents:
        raise ProgsaeError(f"Matryoshka prefix {prefixes[-1]} exceeds the dictionary size {n_latents}")
    if prefixes[-1] != n_latents:
        raise ProgsaeError(f"the last Matryoshka prefix must equal the dictionary size {n_latents}, got {prefixes}")
    return [int(p) for p in prefixes]
