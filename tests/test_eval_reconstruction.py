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


def test_mask_mode_counts_only_live_latents_and_max_tokens(tmp_path):
    store, acts = make_store(tmp_path / "s", n=1000)
    sae = random_topk()
    masked = sae.select(torch.arange(40), mask_size=10)
    [full, m] = evaluate_reconstruction(store, [Variant.of(sae, "full"), Variant.of(masked, "m")], ReconstructionConfig(max_tokens=500, batch_size=128))
    assert full.tokens == m.tokens == 500
    z = sae.encode(acts[:500])[:, :10]
    assert m.l0 == pytest.approx(float((z != 0).sum(1).double().mean())) and m.l0 < full.l0
    assert m.dead_fraction == pytest.approx(float(((z != 0).sum(0) == 0).double().mean()))
