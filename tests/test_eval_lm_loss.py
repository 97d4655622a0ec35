"""Recaptured LM loss: identity and zero reconstructions hit the exact end points; shared-prefix == full forwards."""

import pytest
import torch

from fixtures.models import TINY_ARCHS
from progsae.data.hooks import resolve_hook
from progsae.data.models import load_model
from progsae.evals.common import Variant
from progsae.evals.lm_loss import evaluate_lm_loss
from progsae.sae import ReLUSAE, SAEConfig, TopKSAE


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny matmuls: a 2nd thread only spin-waits


@pytest.fixture(scope="module")
def tiny_models(tiny_model_dirs):
    return {arch: load_model(str(path))[0] for arch, path in tiny_model_dirs.items()}


def batches(vocab, n=2, shape=(3, 20), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, shape, generator=g) for _ in range(n)]


def identity_sae(d):
    """x̂ = relu(x) − relu(−x) = x exactly."""
    sae = ReLUSAE(SAEConfig(architecture="relu", d_in=d, n_latents=2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


def zero_sae(d):
    return ReLUSAE(SAEConfig(architecture="relu", d_in=d, n_latents=4))  # all weights zero: x̂ = 0


def random_topk(d, n=96, k=8, seed=0):
    torch.manual_seed(seed)
    sae = TopKSAE(SAEConfig(architecture="topk", d_in=d, n_latents=n, k=k))
    for p in sae.parameters():
        p.data.normal_(0, 0.2)
    sae.normalize_decoder()
    return sae


def test_identity_recaptures_everything_and_zero_recaptures_nothing(tiny_models):
    model = tiny_models["llama"]
    d = model.config.hidden_size
    site = resolve_hook(model, "resid_post.1")
    mean = torch.randn(d)
    ident, zero = Variant.of(identity_sae(d), "identity"), Variant.of(zero_sae(d), "zero")
    attn_calls = []
    handle = site.blocks[0].self_attn.register_forward_hook(lambda *a: attn_calls.append(1))
    r_id, r_zero = evaluate_lm_loss(model, site, batches(model.config.vocab_size), [ident, zero], mean)
    handle.remove()
    assert len(attn_calls) == 2  # block 0 ran once per batch (the clean pass), never per variant or ablation
    assert r_id.ce_clean != r_id.ce_zero
    assert abs(r_id.ce_recaptured_zero - 1.0) <= 1e-4 and abs(r_id.ce_recaptured_mean - 1.0) <= 1e-4
    assert abs(r_id.delta_ce) <= 1e-4 and abs(r_id.kl) <= 1e-5
    assert abs(r_zero.ce_recaptured_zero) <= 1e-4
    assert abs(r_zero.ce_sae - r_zero.ce_zero) <= 1e-4
    assert r_zero.kl > 1e-3
    assert r_id.tokens == 2 * 3 * 18  # positions 1..T-2 of every context


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("hook", ["resid_post.1", "resid_pre.2", "mlp_out.1", "attn_out.0"])
def test_shared_prefix_equals_full_forward_per_variant(tiny_models, arch, hook):
    model = tiny_models[arch]
    d = model.config.hidden_size
    site = resolve_hook(model, hook)
    variants = [Variant.of(random_topk(d, seed=s), f"v{s}") for s in range(2)]
    mean = torch.randn(d) * 0.1
    data = batches(model.config.vocab_size, seed=1)
    shared = evaluate_lm_loss(model, site, data, variants, mean, shared_prefix=True)
    full = evaluate_lm_loss(model, site, data, variants, mean, shared_prefix=False)
    for a, b in zip(shared, full):
        for key in ("ce_clean", "ce_sae", "ce_zero", "ce_mean", "ce_recaptured_zero", "ce_recaptured_mean", "delta_ce", "kl"):
            assert abs(getattr(a, key) - getattr(b, key)) <= 1e-4, (key, getattr(a, key), getattr(b, key))
    assert shared[0].ce_sae != shared[1].ce_sae  # variants really differ
    assert abs(shared[0].ce_sae - shared[0].ce_clean) > 1e-3
