"""Fused Adam over the SAE's parameters, with its state checkpointed as flat named tensors.

Every parameter (W_enc included) is a contiguous tensor, so torch's fused CPU Adam steps it in place with
no layout copies. Checkpoints hold Adam's state in the parameters' own shapes, `i/key` per tensor.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from progsae.errors import ProgsaeError


class LayoutAdam:
    """`torch.optim.Adam(fused=True)` whose state saves to and loads from flat named tensors."""

    def __init__(self, params: Iterable[nn.Parameter], **adam_kwargs):
        self.params = list(params)
        bad = [tuple(p.shape) for p in self.params if not p.is_contiguous()]
        if bad:  # fused Adam would copy such a tensor to contiguous memory and back every step
            raise ValueError(f"parameters of shapes {bad} are not contiguous")
        self.adam = torch.optim.Adam(self.params, fused=True, **adam_kwargs)

    @property
    def param_groups(self) -> list[dict]:
        return self.adam.param_groups

    def step(self) -> None:
        self.adam.step()

    def zero_grad(self) -> None:
        self.adam.zero_grad(set_to_none=True)

    def state_tensors(self) -> dict[str, Tensor]:
        """Adam's per-parameter state as flat named tensors `i/key`, in each parameter's own shape."""
        return {f"{i}/{key}": torch.as_tensor(t) for i, p in enumerate(self.params) for key, t in self.adam.state.get(p, {}).items()}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Restore what `state_tensors` wrote (refusing state that does not fit these parameters)."""
        state: dict[int, dict[str, Tensor]] = {}
        for name, t in tensors.items():
            i, key = name.split("/", 1)
            i = int(i)
            if not 0 <= i < len(self.params):
                raise ProgsaeError(f"the checkpoint's Adam state names parameter {i}; this SAE has {len(self.params)}")
            p = self.params[i]
            if t.dim() == 2 and tuple(t.shape) != tuple(p.shape):
                raise ProgsaeError(f"the checkpoint's Adam state {name} has shape {tuple(t.shape)}, the parameter {tuple(p.shape)}")
            state.setdefault(i, {})[key] = t.contiguous()
        self.adam.load_state_dict({"state": state, "param_groups": self.adam.state_dict()["param_groups"]})
