"""Explain-then-simulate: a latent planted on one token scores high, a random latent scores near 0."""

import numpy as np
import pytest
import torch

from progsae.data.store import ActivationStore, StoreWriter
from progsae.evals.common import Variant
from progsae.evals.interp.deterministic import TokenExplainer, TokenSimulator
from progsae.evals.interp.score import InterpConfig, evaluate_interp, pearson
from progsae.sae import ReLUSAE, SAEConfig

VOCAB, NOISE, CTX, L, FP = 40, 8, 120, 33, 1


def make_text_store(path, seed=0):
    """Activations = 2·onehot(token) (+ small noise) followed by NOISE dims of pure noise."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (CTX, L), generator=g, dtype=torch.int32)
    meta = {"model": "hand", "hook": "none", "d_model": VOCAB + NOISE, "context_length": L, "first_position": FP}
    w = StoreWriter(path, meta, "test", shard_tokens=10**9)
    for c0 in range(0, CTX, 60):
        tok = ids[c0 : c0 + 60, FP:].reshape(-1).long()
        acts = torch.cat([2 * torch.nn.functional.one_hot(tok, VOCAB).float() + 0.05 * torch.randn(tok.numel(), VOCAB, generator=g),
                          torch.randn(tok.numel(), NOISE, generator=g)], 1)
        w.add(acts, ids[c0 : c0 + 60])
        w.flush()
    w.close()
    return ActivationStore(path), ids


def planted_sae():
    """Latents 0..7 fire on tokens 1..8 only; latents 8..15 read a pure-noise dimension each."""
    sae = ReLUSAE(SAEConfig(architecture="relu", d_in=VOCAB + NOISE, n_latents=16))
    with torch.no_grad():
        for i in range(8):
            sae.W_enc[i + 1, i] = 1.0
            sae.b_enc[i] = -0.5
            sae.W_enc[VOCAB + i, 8 + i] = 1.0
    return sae


@pytest.fixture(scope="module")
def text_store(tmp_path_factory):
    return make_text_store(tmp_path_factory.mktemp("text") / "store")


CFG = InterpConfig(bands=[(0, 8), (8, 16)], band_names=["planted", "random"], latents_per_band=8, n_bootstrap=200)


def test_planted_token_latent_scores_high_and_random_latent_near_zero(text_store):
    store, _ = text_store
    res = evaluate_interp(store, Variant.of(planted_sae(), "planted"), TokenExplainer(), TokenSimulator(), CFG)
    planted, rnd = res.bands
    assert planted.latents == 8 and rnd.latents == 8
    assert planted.mean > 0.95
    assert abs(rnd.mean) < 0.15
    assert planted.lo <= planted.mean <= planted.hi
    assert rnd.lo <= rnd.mean <= rnd.hi and rnd.hi - rnd.lo > 0
    ex = {ls.latent: ls.explanation for ls in res.latents}
    assert "#1" in ex[0] and "#8" in ex[7]  # the explanation names the planted token


def test_examples_map_rows_back_to_their_tokens(text_store):
    """The top windows of a planted latent are centred on its token, read from token_ids."""
    from progsae.evals.interp.score import collect_latent_examples

    store, _ = text_store
    [le], _ = collect_latent_examples(store, planted_sae(), [2], CFG)
    for ex in le.explain:
        centre = int(np.argmax(ex.acts))
        assert ex.tokens[centre] == 3 and ex.acts[centre] > 1.0
        assert all((a > 0) == (t == 3) for t, a in zip(ex.tokens, ex.acts))
    assert {e.kind for e in le.score} == {"top", "random"}


def test_pearson_edge_cases():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([0, 0, 0], [1, 2, 3]) == 0.0
    assert pearson([1, 2, 3], [1, 1, 1]) is None


def test_max_contexts_limits_the_contexts_read(text_store):
    """Given contexts, top windows come only from them."""
    from progsae.evals.interp.examples import top_contexts

    store, ids = text_store
    vals, ctx, pos, fired = top_contexts(store, planted_sae(), torch.tensor([0, 9]), 4, contexts=np.arange(50), batch_contexts=7)
    assert int(ctx.max()) < 50
    planted_count = int((ids[:50, FP:] == 1).sum())
    assert int(fired[0]) == planted_count  # latent 0 fires exactly on token 1
    for c, p in zip(ctx[0].tolist(), pos[0].tolist()):
        assert int(ids[c, p]) == 1
