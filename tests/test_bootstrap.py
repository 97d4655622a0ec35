"""Bootstrap intervals over contexts: coverage of a known mean, and paired comparisons that can say tie or loss."""

import numpy as np
import pytest
import torch

from progsae.data.store import ActivationStore, StoreWriter
from progsae.evals.bootstrap import interval, paired, ratio, resample_weights
from progsae.evals.common import Variant
from progsae.evals.reconstruction import evaluate_reconstruction
from progsae.evals.similarity import SimilarityConfig, evaluate_similarity
from progsae.sae import SAEConfig, TopKSAE


def test_interval_covers_a_known_mean_about_95_percent_of_the_time():
    """A ratio-of-sums metric (like FVU) over 60 clustered contexts: the true ratio is 2.0."""
    rng = np.random.default_rng(0)
    W = resample_weights(60, 1000, seed=1)
    hits, trials = 0, 400
    for _ in range(trials):
        n_C = rng.integers(20, 40, size=60).astype(float)  # rows per context
        effect = rng.normal(0, 0.5, size=60)  # a context-level effect: rows of one context are not independent
        num_C = n_C * (2.0 + effect) + rng.normal(0, 1, size=60) * np.sqrt(n_C)
        lo, hi = interval(ratio(W, num_C, n_C))
        hits += lo <= 2.0 <= hi
    coverage = hits / trials
    assert 0.90 <= coverage <= 0.98, coverage


def test_resample_weights_are_counts_shared_for_the_same_units():
    W = resample_weights(17, 200, seed=3)
    assert W.shape == (200, 17) and np.all(W.sum(1) == 17)
    assert np.array_equal(W, resample_weights(17, 200, seed=3)) and not np.array_equal(W, resample_weights(17, 200, seed=4))


def _store(path, n=4000, d=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g) * torch.linspace(0.5, 2, d)
    w = StoreWriter(path, {"model": "none", "hook": None, "d_model": d, "context_length": None}, "test", shard_tokens=1000)
    w.add(x)
    w.close()
    return ActivationStore(path)


def _sae(d=16, n=64, seed=0):
    torch.manual_seed(seed)
    sae = TopKSAE(SAEConfig(architecture="topk", d_in=d, n_latents=n, k=6))
    for p in sae.parameters():
        p.data.normal_(0, 0.3)
    sae.normalize_decoder()
    return sae


def test_identical_saes_tie_and_a_noisier_decoder_loses(tmp_path):
    store = _store(tmp_path / "s")
    a = _sae()
    b = _sae()
    noisy = _sae()
    with torch.no_grad():
        noisy.W_dec.add_(0.3 * torch.randn_like(noisy.W_dec))
    recs = evaluate_reconstruction(store, [Variant.of(a, "a"), Variant.of(b, "b"), Variant.of(noisy, "noisy")])
    ra, rb, rn = recs
    tie = paired(ra.fvu, rb.fvu, ra._replicates["fvu"], rb._replicates["fvu"], better=-1)
    assert tie.outcome == "tie" and tie.diff == 0
    loss = paired(rn.fvu, ra.fvu, rn._replicates["fvu"], ra._replicates["fvu"], better=-1)
    assert loss.outcome == "loss" and loss.ci[0] > 0
    win = paired(ra.fvu, rn.fvu, ra._replicates["fvu"], rn._replicates["fvu"], better=-1)
    assert win.outcome == "win"
    sims = evaluate_similarity(store, [Variant.of(a, "a"), Variant.of(b, "b"), Variant.of(noisy, "noisy")], SimilarityConfig(tokens=600))
    same = paired(sims[0].rsa_original, sims[1].rsa_original, sims[0]._replicates["rsa_original"], sims[1]._replicates["rsa_original"], better=1)
    assert same.outcome == "tie"
    lo, hi = sims[2].ci["rsa_original"]
    assert lo < sims[2].rsa_original < hi and hi - lo < 0.5


def test_similarity_point_estimates_equal_the_plain_formulas(tmp_path):
    from progsae.evals.common import spread_rows
    from progsae.evals.similarity import linear_cka, rsa

    store = _store(tmp_path / "s")
    sae = _sae()
    [res] = evaluate_similarity(store, [Variant.of(sae, "a")], SimilarityConfig(tokens=500, seed=2))
    x, _ = spread_rows(store, 500, 2)
    with torch.no_grad():
        y = sae(x)
    assert res.rsa_original == pytest.approx(rsa(x, y), abs=1e-9)
    assert res.cka_original == pytest.approx(linear_cka(x, y), abs=1e-9)
    lo, hi = res.ci["rsa_original"]
    assert lo <= res.rsa_original <= hi
