"""Reconstruction metrics: streaming float64 sums agree with a direct dense computation."""

import pytest
import torch

from progsae.data.store import ActivationStore, StoreWriter
from progsae.evals.common import Variant
from progsae.evals.reconstruction import ReconstructionConfig, evaluate_reconstruction
from progsae.sae import SAEConfig, TopKSAE


def make_store(path, n=3000, d=16, shard_tokens=700, seed=0):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(n, d, generator=g) * torch.linspace(0.5, 3, d) + 5.0  # a large mean: FVU must centre
    w = StoreWriter(path, {"model": "none", "hook": "none", "d_model": d, "context_length": 0}, "test", shard_tokens=shard_tokens)
    for i in range(0, n, 250):
        w.add(acts[i : i + 250])
    w.close()
    return ActivationStore(path), acts


def random_topk(d=16, n=40, k=4, seed=1):
    torch.manual_seed(seed)
    sae = TopKSAE(SAEConfig(architecture="topk", d_in=d, n_latents=n, k=k))
    for p in sae.parameters():
        p.data.normal_(0, 0.3)
    sae.normalize_decoder()
    with torch.no_grad():
        sae.b_dec.fill_(5.0)
        sae.b_enc[0] = -1e6  # a latent that can never fire
    return sae


def test_fvu_and_mse_match_dense_float64(tmp_path):
    store, acts = make_store(tmp_path / "s")
    sae = random_topk()
    [res] = evaluate_reconstruction(store, [Variant.of(sae, "a")], ReconstructionConfig(batch_size=333))
    x = acts.double()
    with torch.no_grad():
        x_hat = sae(acts).double()
    sse = ((x - x_hat) ** 2).sum()
    fvu = sse / ((x - x.mean(0)) ** 2).sum()
    mse = sse / x.numel()
    assert res.tokens == acts.shape[0]
    assert abs(res.fvu - float(fvu)) <= 1e-6 * float(fvu)
    assert abs(res.mse - float(mse)) <= 1e-6 * float(mse)
    r = x - x_hat
    ev = 1 - ((r - r.mean(0)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert abs(res.explained_variance - float(ev)) <= 1e-6
    cos = torch.nn.functional.cosine_similarity(x, x_hat, dim=1).mean()
    assert abs(res.cosine - float(cos)) <= 1e-6
    assert abs(res.relative_norm - float((x_hat.norm(dim=1) / x.norm(dim=1)).mean())) <= 1e-6
    assert res.l0 == pytest.approx(4.0)
    fired = (sae.encode(acts) != 0).double().mean(0)
    assert res.dead_fraction == pytest.approx(float((fired == 0).double().mean()))
    assert res.dead_fraction >= 1 / 40
    assert res.dense_fraction == pytest.approx(float((fired > 0.1).double().mean()))
    assert res.firing_frequency.shape == (40,)
    assert res.firing_frequency == pytest.approx(fired.numpy(), abs=1e-12)
    assert res.firing_frequency.sum() == pytest.approx(res.l0)


def test_mask_mode_counts_only_live_latents_and_max_tokens(tmp_path):
    store, acts = make_store(tmp_path / "s", n=1000)
    sae = random_topk()
    masked = sae.select(torch.arange(40), mask_size=10)
    cfg = ReconstructionConfig(max_tokens=500, batch_size=128)
    [full, m] = evaluate_reconstruction(store, [Variant.of(sae, "full"), Variant.of(masked, "m")], cfg)
    rows = torch.cat([x for x, _, _ in store.iter_context_rows("test", store.sample_contexts("test", 500, cfg.seed))])
    assert full.tokens == m.tokens == rows.shape[0] and 500 <= rows.shape[0] < 500 + 128  # whole blocks of 128 rows
    assert not torch.equal(rows, acts[: rows.shape[0]])  # a random sample, not the first rows
    z = sae.encode(rows)[:, :10]
    assert m.l0 == pytest.approx(float((z != 0).sum(1).double().mean())) and m.l0 < full.l0
    assert m.dead_fraction == pytest.approx(float(((z != 0).sum(0) == 0).double().mean()))
    assert m.firing_frequency.shape == (10,) and m.firing_frequency.sum() == pytest.approx(m.l0)


def test_intervals_cover_the_point_and_shrink_with_more_contexts(tmp_path):
    store, _ = make_store(tmp_path / "s", n=6000)
    sae = random_topk()
    small, = evaluate_reconstruction(store, [Variant.of(sae, "a")], ReconstructionConfig(max_tokens=1000))
    large, = evaluate_reconstruction(store, [Variant.of(sae, "a")], ReconstructionConfig())
    for rec in (small, large):
        for metric in ("fvu", "mse", "cosine", "l0", "explained_variance", "relative_norm"):
            lo, hi = rec.ci[metric]
            assert lo <= getattr(rec, metric) <= hi, metric
    width = lambda r: r.ci["fvu"][1] - r.ci["fvu"][0]  # noqa: E731
    assert width(large) < width(small)
    assert len(large._replicates["fvu"]) == 1000
