"""Hook sites resolve to the right activations on Llama, GPT-2, GPT-NeoX, Gemma and Gemma2 trees."""

import pytest
import torch

from fixtures.models import TINY_ARCHS, TINY_LAYERS
from progsae.data.collect import CollectConfig
from progsae.data.hooks import SITE_KINDS, capture, resolve_hook
from progsae.data.models import load_model
from progsae.errors import ProgsaeError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_models(tiny_model_dirs):
    return {arch: load_model(str(path))[0] for arch, path in tiny_model_dirs.items()}


def _ids(vocab: int, seed: int = 0, shape=(2, 16)) -> torch.Tensor:
    return torch.randint(4, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_residual_sites_match_output_hidden_states(tiny_models, arch):
    model = tiny_models[arch]
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    assert len(hs) == TINY_LAYERS + 1
    for layer in range(TINY_LAYERS):
        pre = capture(model, resolve_hook(model, f"resid_pre.{layer}"), ids)
        post = capture(model, resolve_hook(model, f"resid_post.{layer}"), ids)
        assert (pre - hs[layer]).abs().max() <= 1e-5
        if layer < TINY_LAYERS - 1:
            assert (post - hs[layer + 1]).abs().max() <= 1e-5
    # The last hidden state includes the final norm; resid_post of the last layer never does.
    site = resolve_hook(model, f"resid_post.{TINY_LAYERS - 1}")
    assert (post - hs[-1]).abs().max() > 1e-2
    with torch.no_grad():
        assert (site.final_norm(post) - hs[-1]).abs().max() <= 1e-5


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_sublayer_sites_sum_to_the_residual_update(tiny_models, arch):
    """attn_out.L + mlp_out.L == resid_post.L - resid_pre.L, in every family (parallel or sequential)."""
    model = tiny_models[arch]
    ids = _ids(model.config.vocab_size, seed=1)
    for layer in range(TINY_LAYERS):
        acts = {k: capture(model, resolve_hook(model, f"{k}.{layer}"), ids) for k in SITE_KINDS}
        update = acts["resid_post"] - acts["resid_pre"]
        assert (acts["attn_out"] + acts["mlp_out"] - update).abs().max() <= 1e-4
        assert acts["attn_out"].abs().mean() > 1e-3 and acts["mlp_out"].abs().mean() > 1e-3


@pytest.mark.parametrize("kind", SITE_KINDS)
def test_capture_equals_a_plain_forward_hook(tiny_models, kind):
    model = tiny_models["llama"]
    ids = _ids(model.config.vocab_size, seed=2)
    site = resolve_hook(model, f"{kind}.1")
    seen = []
    if site.reads_input:
        handle = site.module.register_forward_pre_hook(lambda m, args, kw: seen.append(args[0] if args else kw["hidden_states"]), with_kwargs=True)
    else:
        handle = site.module.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        model(ids)
    handle.remove()
    assert (capture(model, site, ids) - seen[0]).abs().max() <= 1e-6


@pytest.mark.parametrize("hook", ["resid_pre.1", "resid_post.0", "attn_out.1", "mlp_out.0"])
def test_capture_stops_the_forward_at_the_site(tiny_models, hook):
    model = tiny_models["gpt2"]
    site = resolve_hook(model, hook)
    later = []
    handles = [b.register_forward_pre_hook(lambda *a, i=i: later.append(i)) for i, b in enumerate(site.blocks)]
    handles.append(site.final_norm.register_forward_pre_hook(lambda *a: later.append("norm")))
    try:
        capture(model, site, _ids(model.config.vocab_size))
    finally:
        for h in handles:
            h.remove()
    assert later == list(range(site.layer + 1))


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gemma2"])
def test_replacing_an_activation_changes_the_forward_consistently(tiny_models, arch):
    model = tiny_models[arch]
    ids = _ids(model.config.vocab_size, seed=3)
    with torch.no_grad():
        base = model(ids).logits
    post0 = capture(model, resolve_hook(model, "resid_post.0"), ids)
    noise = 0.5 * torch.randn(post0.shape, generator=torch.Generator().manual_seed(0))

    def run_with(hook, fn):
        handle = resolve_hook(model, hook).add_hook(fn)
        try:
            with torch.no_grad():
                return model(ids).logits
        finally:
            handle.remove()

    assert (run_with("resid_post.0", lambda a: a.clone()) - base).abs().max() <= 1e-5
    assert (run_with("resid_post.0", lambda a: None) - base).abs().max() <= 1e-5
    via_post = run_with("resid_post.0", lambda a: post0 + noise)
    via_pre = run_with("resid_pre.1", lambda a: post0 + noise)
    assert (via_post - base).abs().max() > 1e-2
    assert (via_post - via_pre).abs().max() <= 1e-4
    # Removing the attention output of layer 0 shifts resid_post.0 by exactly that output.
    attn0 = capture(model, resolve_hook(model, "attn_out.0"), ids)
    handle = resolve_hook(model, "attn_out.0").add_hook(torch.zeros_like)
    try:
        shifted = capture(model, resolve_hook(model, "resid_post.0"), ids)
    finally:
        handle.remove()
    if arch == "gpt_neox":  # parallel residual: the MLP does not see the attention output
        assert (shifted - (post0 - attn0)).abs().max() <= 1e-4
    else:
        assert (shifted - post0).abs().max() > 1e-3


def test_unknown_site_kind_lists_the_valid_ones(tiny_models):
    with pytest.raises(ProgsaeError) as e:
        resolve_hook(tiny_models["llama"], "resid_mid.1")
    msg = str(e.value)
    assert "\n" not in msg and all(k in msg for k in SITE_KINDS)
    with pytest.raises(ProgsaeError):
        resolve_hook(tiny_models["llama"], "resid_post")


@pytest.mark.parametrize("alias, ours", [
    ("blocks.1.hook_resid_post", "resid_post.1"),   # TransformerLens / SAELens
    ("blocks.0.hook_mlp_out", "mlp_out.0"),
    ("layers.1", "resid_post.1"),                   # sparsify / HF module paths
    ("model.layers.0.mlp", "mlp_out.0"),
    ("resid_pre_layer_1", "resid_pre.1"),           # dictionary_learning
])
def test_other_tools_names_resolve_to_the_same_site(tiny_models, alias, ours):
    model = tiny_models["llama"]
    a, b = resolve_hook(model, alias), resolve_hook(model, ours)
    assert (a.kind, a.layer) == (b.kind, b.layer)
    ids = _ids(model.config.vocab_size)
    assert torch.equal(capture(model, a, ids), capture(model, b, ids))
    cfg = CollectConfig(hook=alias)
    cfg.validate()
    assert cfg.hook == ours  # the store records progsae's name


@pytest.mark.parametrize("arch, alias, ours", [
    ("gpt2", "transformer.h.1", "resid_post.1"),         # GPT-2 module path
    ("gpt2", "transformer.h.0.mlp", "mlp_out.0"),
    ("gpt_neox", "gpt_neox.layers.1", "resid_post.1"),   # GPT-NeoX / Pythia module path
    ("gpt_neox", "blocks.1.hook_resid_pre", "resid_pre.1"),
    ("llama", "blocks.1.hook_attn_out", "attn_out.1"),
])
def test_gpt2_and_neox_module_paths_and_every_transformerlens_site(tiny_models, arch, alias, ours):
    model = tiny_models[arch]
    ids = _ids(model.config.vocab_size)
    assert torch.equal(capture(model, resolve_hook(model, alias), ids), capture(model, resolve_hook(model, ours), ids))


def test_layer_out_of_range_names_the_valid_range(tiny_models):
    with pytest.raises(ProgsaeError) as e:
        resolve_hook(tiny_models["gpt_neox"], f"mlp_out.{TINY_LAYERS}")
    msg = str(e.value)
    assert "\n" not in msg and f"{TINY_LAYERS} layers" in msg and f"mlp_out.{TINY_LAYERS - 1}" in msg
