"""Model-independent hook sites (`resid_post.L`, `resid_pre.L`, `mlp_out.L`, `attn_out.L`).

A site resolves to one nn.Module of a Hugging Face causal LM and to whether the activation is that
module's input or output, for Llama-, Gemma(2)-, GPT-2- and GPT-NeoX-style module trees. Definitions:

- resid_pre.L   the residual stream entering decoder block L (== output_hidden_states[L]);
- resid_post.L  the residual stream leaving block L (== output_hidden_states[L+1] for every L but the
                last: transformers puts the final norm into the last hidden state, this site never does);
- attn_out.L    what block L's attention sublayer adds to the residual stream;
- mlp_out.L     what block L's MLP adds to the residual stream. Where a norm follows the sublayer
                (Gemma2/3, OLMo2: `post_feedforward_layernorm`), the site is that norm's output.

`HookSite.add_hook(fn)` lets callers read or replace the activation; `capture` runs the model only as
far as the site and returns the activation, `capture_many` does so for several sites in one forward.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from progsae.data.models import model_autocast
from progsae.errors import ProgsaeError

SITE_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out")
# (path to the decoder blocks, path to the final norm) per module-tree family
_BLOCK_PATHS = (
    ("model.layers", "model.norm"),  # Llama, Mistral, Qwen, Gemma, Gemma2, OLMo, Phi3 ...
    ("model.language_model.layers", "model.language_model.norm"),  # Gemma3 multimodal wrappers
    ("transformer.h", "transformer.ln_f"),  # GPT-2, GPT-J, GPT-Neo
    ("gpt_neox.layers", "gpt_neox.final_layer_norm"),  # Pythia / GPT-NeoX
    ("model.decoder.layers", "model.decoder.final_layer_norm"),  # OPT
    ("layers", "norm"),  # a bare base model
    ("h", "ln_f"),
)
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")

ActFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def _get(root: nn.Module, path: str) -> nn.Module | None:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.Module) else None


def decoder_blocks(model: nn.Module) -> tuple[nn.ModuleList, nn.Module | None]:
    """(the ModuleList of decoder blocks, the final norm or None) of a causal LM."""
    for blocks_path, norm_path in _BLOCK_PATHS:
        blocks = _get(model, blocks_path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return blocks, _get(model, norm_path)
    raise ProgsaeError(
        f"cannot find the decoder blocks of {type(model).__name__} (supported: Llama-, Gemma-, GPT-2- and GPT-NeoX-style models)"
    )


# the names other tools give the same sites: TransformerLens/SAELens, HF module paths (sparsify), dictionary_learning
_TL_HOOK = re.compile(r"blocks\.(\d+)\.hook_(resid_pre|resid_post|attn_out|mlp_out)")
_MODULE_HOOK = re.compile(r"(?:[\w.]*\.)?(?:layers|h|blocks)\.(\d+)(\.mlp)?")
_DL_HOOK = re.compile(r"(resid_pre|resid_post|attn_out|mlp_out)_layer_(\d+)")


def to_progsae_hook(name: str | None) -> str | None:
    """The progsae site ('resid_post.14') for another tool's name of it ('blocks.14.hook_resid_post',
    'model.layers.14', 'resid_post_layer_14'); any other name is returned unchanged."""
    if not name:
        return name
    name = name.strip()
    if m := _TL_HOOK.fullmatch(name):
        return f"{m.group(2)}.{m.group(1)}"
    if m := _DL_HOOK.fullmatch(name):
        return f"{m.group(1)}.{m.group(2)}"
    if m := _MODULE_HOOK.fullmatch(name):  # a decoder block's output is the residual stream after it
        return f"{'mlp_out' if m.group(2) else 'resid_post'}.{m.group(1)}"
    return name


def parse_hook_name(name: str) -> tuple[str, int]:
    """('resid_post', 14) from 'resid_post.14' or another tool's name of it; a one-line error for anything else."""
    m = re.fullmatch(r"([a-z_]+)\.(\d+)", to_progsae_hook(name.strip()))
    if not m or m.group(1) not in SITE_KINDS:
        raise ProgsaeError(f"unknown hook site '{name}'; valid sites are {', '.join(k + '.L' for k in SITE_KINDS)}")
    return m.group(1), int(m.group(2))


def _child(block: nn.Module, names: tuple[str, ...], what: str) -> nn.Module:
    for n in names:
        mod = getattr(block, n, None)
        if isinstance(mod, nn.Module):
            return mod
    raise ProgsaeError(f"{type(block).__name__} has no {what} submodule (looked for {', '.join(names)})")


@dataclass
class HookSite:
    """Where an activation lives: `module`'s output (or, when `reads_input`, its first input)."""

    name: str
    kind: str
    layer: int
    blocks: nn.ModuleList
    module: nn.Module
    reads_input: bool
    final_norm: nn.Module | None = None

    @property
    def block(self) -> nn.Module:
        return self.blocks[self.layer]

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def add_hook(self, fn: ActFn) -> RemovableHandle:
        """Call fn(acts [B, L, D]) at the site during every forward; a tensor it returns replaces the activation."""
        if self.reads_input:

            def pre_hook(module, args, kwargs):
                if args:
                    new = fn(args[0])
                    return None if new is None else ((new, *args[1:]), kwargs)
                new = fn(kwargs["hidden_states"])
                return None if new is None else (args, {**kwargs, "hidden_states": new})

            return self.module.register_forward_pre_hook(pre_hook, with_kwargs=True)

        def hook(module, args, output):
            acts = output[0] if isinstance(output, tuple) else output
            new = fn(acts)
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return self.module.register_forward_hook(hook)


def resolve_hook(model: nn.Module, name: str) -> HookSite:
    """The HookSite of `name` (e.g. 'resid_post.14') in `model`; one-line errors list the valid sites."""
    kind, layer = parse_hook_name(name)
    blocks, final_norm = decoder_blocks(model)
    if not 0 <= layer < len(blocks):
        raise ProgsaeError(
            f"layer {layer} out of range in hook '{name}': {type(model).__name__} has {len(blocks)} layers, use {kind}.0 .. {kind}.{len(blocks) - 1}"
        )
    block = blocks[layer]
    post_norms = hasattr(block, "post_feedforward_layernorm") and hasattr(block, "post_attention_layernorm")
    if kind == "resid_pre":
        module, reads_input = block, True
    elif kind == "resid_post":
        module, reads_input = block, False
    elif kind == "attn_out":
        module = block.post_attention_layernorm if post_norms else _child(block, _ATTN_NAMES, "attention")
        reads_input = False
    else:
        module = block.post_feedforward_layernorm if post_norms else _child(block, _MLP_NAMES, "MLP")
        reads_input = False
    return HookSite(name, kind, layer, blocks, module, reads_input, final_norm)


class _StopForward(Exception):
    """Raised from a hook to end the forward pass once the wanted activation is in hand."""


def capture(
    model: nn.Module, site: HookSite, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Activations [B, L, D] at `site`, running the model only as far as the site."""
    return capture_many(model, [site], input_ids, attention_mask)[site.name]


def capture_many(
    model: nn.Module, sites: list[HookSite], input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Activations [B, L, D] at every site (by name) from one forward that stops once the last of them is reached."""
    captured: dict[str, torch.Tensor] = {}
    wanted = {s.name for s in sites}

    def grabber(name: str) -> ActFn:
        def grab(acts: torch.Tensor):
            captured[name] = acts
            if wanted <= captured.keys():  # the deepest site: nothing after it is needed
                raise _StopForward

        return grab

    handles = [s.add_hook(grabber(s.name)) for s in sites]
    try:
        with torch.no_grad(), model_autocast(input_ids.device):  # bf16 on CUDA
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = sorted(wanted - captured.keys())
    if missing:
        raise ProgsaeError(f"hook site {missing[0]} was never reached in the forward of {type(model).__name__}")
    return captured
