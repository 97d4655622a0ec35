"""TopK SAE (Gao et al. 2024): keep the k largest ReLU pre-activations per token."""

from __future__ import annotations

import torch
from torch import Tensor

from progsae.sae.base import SAE
from progsae.sae.registry import register


def topk_dense(pre_BN: Tensor, k: int) -> Tensor:
    """Dense codes with all but the k largest (ReLU'd) entries per row set to zero."""
    vals, idx = pre_BN.relu().topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre_BN).scatter(-1, idx, vals)


@register
class TopKSAE(SAE):
    architecture = "topk"

    def activation(self, pre_BN: Tensor) -> Tensor:
        return topk_dense(pre_BN, self.cfg.k)
