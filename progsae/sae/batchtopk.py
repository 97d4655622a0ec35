"""BatchTopK SAE (Bussmann et al. 2024): top k*B over the whole batch in training, a global threshold at inference."""

from __future__ import annotations

import torch
from torch import Tensor

from progsae.sae.base import SAE, SAEConfig, StepOutput, TrainContext
from progsae.sae.registry import register

THRESHOLD_MOMENTUM = 0.99


def batch_topk_dense(pre_BN: Tensor, k: int) -> Tensor:
    """Keep the k*B largest ReLU pre-activations of the whole batch."""
    flat = pre_BN.relu().flatten()
    vals, idx = flat.topk(k * pre_BN.shape[0], sorted=False)
    return torch.zeros_like(flat).scatter(0, idx, vals).view_as(pre_BN)


@register
class BatchTopKSAE(SAE):
    architecture = "batchtopk"
    extra_tensors = ("threshold",)
    batch_topk_training = True  # read by progsae.sae.sparse_step
    # What a retopk-pruned copy (progsae.progressive.prune, G < n latents kept) becomes: a TopK SAE of the
    # kept latents with the same k. The global threshold was calibrated for all n latents: within G of them
    # it keeps only their share of the ~k codes per row (the codes of mask mode), while per-row TopK keeps
    # k per row, as retopk means, without needing data to recalibrate a threshold.
    retopk_architecture = "topk"

    def __init__(self, cfg: SAEConfig, device=None, dtype=None):
        super().__init__(cfg, device=device, dtype=dtype)
        self.register_buffer("threshold", torch.full((), -1.0, device=device, dtype=self.W_enc.dtype))

    def activation(self, pre_BN: Tensor) -> Tensor:
        """Inference: a single global threshold (before any training step, fall back to per-row TopK)."""
        if float(self.threshold) < 0:
            from progsae.sae.topk import topk_dense

            return topk_dense(pre_BN, self.cfg.k)
        return pre_BN * (pre_BN > self.threshold)

    def train_activation(self, pre_BN: Tensor) -> Tensor:
        return batch_topk_dense(pre_BN, self.cfg.k)

    def training_step(self, x_BD: Tensor, ctx: TrainContext) -> StepOutput:
        """Sparse-backward step (progsae.sae.sparse_step) unless inside `dense_reference()`."""
        from progsae.sae.sparse_step import sparse_enabled, sparse_step

        return sparse_step(self, x_BD, ctx) if sparse_enabled() else super().training_step(x_BD, ctx)

    @torch.no_grad()
    def after_step(self, out: StepOutput) -> None:
        """Track the threshold as an EMA of the smallest activation kept in each batch."""
        batch_min = out.extras["min_active"]
        if float(self.threshold) < 0:
            self.threshold.copy_(batch_min)
        else:
            self.threshold.mul_(THRESHOLD_MOMENTUM).add_((1 - THRESHOLD_MOMENTUM) * batch_min)
