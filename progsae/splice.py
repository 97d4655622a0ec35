"""Run a language model with an SAE's reconstruction spliced in at a hook site: `with spliced(model, hook, sae): ...`.

The LM-loss evaluation (progsae.evals.lm_loss) splices every SAE and ablation through `spliced`, so what a
user runs by hand is what the evaluation measures. Position 0 (BOS) keeps its activation by default: progsae
SAEs are never trained on it. Rows whose norm exceeds `max_norm` (massive-activation tokens, see
progsae.data.outliers) keep theirs too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from progsae.data.hooks import HookSite, resolve_hook

Splice = Callable[[Tensor], Tensor]  # activation [B, T, D] -> replacement [B, T, D]


def keep_first(fn: Splice, max_norm: float | None = None, keep_bos: bool = True) -> Splice:
    """A splice that applies fn to positions 1.. (all positions unless keep_bos) and leaves rows with norm > max_norm as they were."""
    start = 1 if keep_bos else 0

    def splice(acts_BTD: Tensor) -> Tensor:
        out = acts_BTD.clone()
        new = fn(acts_BTD[:, start:]).to(acts_BTD.dtype)
        if max_norm is not None:
            keep = acts_BTD[:, start:].float().norm(dim=-1, keepdim=True) > max_norm
            new = torch.where(keep, acts_BTD[:, start:], new)
        out[:, start:] = new
        return out

    return splice


def sae_splice(sae, max_norm: float | None = None, keep_bos: bool = True) -> Splice:
    """Replace the activation by the SAE's reconstruction, computed on the SAE's device and dtype."""

    def recon(a_BTD: Tensor) -> Tensor:
        flat_BD = a_BTD.reshape(-1, a_BTD.shape[-1]).to(device=sae.W_enc.device, dtype=sae.W_enc.dtype)
        return sae(flat_BD).to(a_BTD.device).reshape(a_BTD.shape)

    return keep_first(recon, max_norm, keep_bos)


def constant_splice(value_D: Tensor, max_norm: float | None = None) -> Splice:
    """Replace the activation by one vector at every position (zero- and mean-ablation)."""
    return keep_first(lambda a: value_D.to(device=a.device, dtype=a.dtype).expand_as(a), max_norm)


@contextlib.contextmanager
def spliced(
    model: nn.Module, hook: str | HookSite, sae, max_norm: float | None = None, keep_bos: bool = True
) -> Iterator[HookSite]:
    """Within the block, every forward of `model` carries `sae`'s reconstruction at `hook` instead of the activation.

    `hook` is a site name in any spelling progsae accepts ('resid_post.3', 'blocks.3.hook_resid_post',
    'model.layers.3') or a resolved HookSite; `sae` is an SAE (anything with encode/decode) or a Splice
    function. Yields the site; the hook is removed on exit, also after an error.
    """
    site = hook if isinstance(hook, HookSite) else resolve_hook(model, hook)
    fn = sae_splice(sae, max_norm, keep_bos) if hasattr(sae, "encode") and hasattr(sae, "decode") else sae
    handle = site.add_hook(fn)
    try:
        yield site
    finally:
        handle.remove()
