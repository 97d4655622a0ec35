"""JumpReLU SAE (Rajamanoharan et al. 2024), inference only: for SAEs trained elsewhere (e.g. Gemma Scope)."""

from __future__ import annotations

import torch
from torch import Tensor

from progsae.sae.base import SAE, SAEConfig
from progsae.sae.registry import register


@register
class JumpReLUSAE(SAE):
    architecture = "jumprelu"
    extra_tensors = ("threshold",)

    def __init__(self, cfg: SAEConfig, device=None, dtype=None):
        super().__init__(cfg, device=device, dtype=dtype)
        self.register_buffer("threshold", torch.zeros(cfg.n_latents, device=device, dtype=self.W_enc.dtype))

    def activation(self, pre_BN: Tensor) -> Tensor:
        return pre_BN * (pre_BN > self.threshold)

    def training_step(self, x_BD, ctx):
        from progsae.errors import ProgsaeError

        raise ProgsaeError("JumpReLU SAEs are inference-only in progsae (load them from SAELens or Gemma Scope)")
