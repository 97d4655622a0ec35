"""TopK SAE (Gao et al. 2024): keep the k largest ReLU pre-activations per token."""

from __future__ import annotations

import torch
from torch import Tensor

from progsae.sae.base import SAE, StepOutput, TrainContext
from progsae.sae.registry import register


def topk_dense(pre_BN: Tensor, k: int) -> Tensor:
    """Dense codes with all but the k largest (ReLU'd) entries per row set to zero.

    The top k of the pre-activations, ReLU'd afterwards, give the same codes as the top k of ReLU(pre)
    without a ReLU'd [B, N] copy (2.2x faster at B 2048, N 16384 here).
    """
    vals, idx = pre_BN.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre_BN).scatter_(-1, idx, vals.clamp_min(0))


@register
class TopKSAE(SAE):
    architecture = "topk"

    def activation(self, pre_BN: Tensor) -> Tensor:
        return topk_dense(pre_BN, self.cfg.k)

    def training_step(self, x_BD: Tensor, ctx: TrainContext) -> StepOutput:
        """Sparse-backward step (progsae.sae.sparse_step) unless inside `dense_reference()`."""
        from progsae.sae.sparse_step import sparse_enabled, sparse_step

        return sparse_step(self, x_BD, ctx) if sparse_enabled() else super().training_step(x_BD, ctx)
