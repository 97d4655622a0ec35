"""The classic ReLU SAE trained with a decoder-norm-weighted L1 penalty."""

from __future__ import annotations

from torch import Tensor

from progsae.sae.base import SAE
from progsae.sae.registry import register


@register
class ReLUSAE(SAE):
    architecture = "relu"

    def activation(self, pre_BN: Tensor) -> Tensor:
        return pre_BN.relu()
