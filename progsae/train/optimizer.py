"""Adam over the SAE's parameters in the memory layout they are held in.

`W_enc` is a [D, N] parameter held in [N, D] memory (see `SAE.__init__`): the sparse backward builds its
gradient one row per latent, so the gradient arrives in that layout without a transpose copy. torch's
fused CPU Adam copies a non-contiguous tensor to a contiguous one and back every step, so Adam here
steps a contiguous alias of the same memory, and the gradient is handed over as a free view. Checkpoints
hold Adam's state in the parameters' own (logical) shapes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from progsae.errors import ProgsaeError


def _alias(p: nn.Parameter) -> nn.Parameter:
    """p itself if contiguous, else a contiguous leaf over p's memory (2-D, transposed layout only)."""
    if p.is_contiguous():
        return p
    if p.dim() != 2 or not p.t().is_contiguous():
        raise ValueError(f"no contiguous alias for a parameter of shape {tuple(p.shape)} and strides {p.stride()}")
    return nn.Parameter(p.detach().t(), requires_grad=p.requires_grad)


class LayoutAdam:
    """`torch.optim.Adam(fused=True)` stepping contiguous aliases of `params` (same memory, no layout copies)."""

    def __init__(self, params: Iterable[nn.Parameter], **adam_kwargs):
        self.params = list(params)
        self.aliases = [_alias(p) for p in self.params]
        self.adam = torch.optim.Adam(self.aliases, fused=True, **adam_kwargs)

    @property
    def param_groups(self) -> list[dict]:
        return self.adam.param_groups

    def step(self) -> None:
        for p, a in zip(self.params, self.aliases):
            if a is not p:
                a.grad = None if p.grad is None else p.grad.t()  # contiguous: the grad has p's strides
        self.adam.step()

    def zero_grad(self) -> None:
        for p, a in zip(self.params, self.aliases):
            p.grad = None
            a.grad = None

    def state_tensors(self) -> dict[str, Tensor]:
        """Adam's per-parameter state as flat named tensors `i/key`, in each parameter's own shape."""
        out = {}
        for i, (p, a) in enumerate(zip(self.params, self.aliases)):
            for key, t in self.adam.state.get(a, {}).items():
                t = torch.as_tensor(t)
                out[f"{i}/{key}"] = t.t() if a is not p and t.dim() == 2 else t
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Restore what `state_tensors` wrote (refusing state that does not fit these parameters)."""
        state: dict[int, dict[str, Tensor]] = {}
        for name, t in tensors.items():
            i, key = name.split("/", 1)
            i = int(i)
            if not 0 <= i < len(self.params):
                raise ProgsaeError(f"the checkpoint's Adam state names parameter {i}; this SAE has {len(self.params)}")
            p, a = self.params[i], self.aliases[i]
            if t.dim() == 2:
                if tuple(t.shape) != tuple(p.shape):
                    raise ProgsaeError(f"the checkpoint's Adam state {name} has shape {tuple(t.shape)}, the parameter {tuple(p.shape)}")
                if a is not p:
                    t = t.t().contiguous()
            state.setdefault(i, {})[key] = t
        self.adam.load_state_dict({"state": state, "param_groups": self.adam.state_dict()["param_groups"]})
