"""RSA and CKA: invariances that must hold exactly, and chance level for unrelated rows."""

import torch

from progsae.evals.similarity import linear_cka, rsa


def data(n=300, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + 3.0


def test_rsa_of_x_with_itself_is_one():
    x = data()
    assert abs(rsa(x, x) - 1.0) <= 1e-12
    assert abs(linear_cka(x, x) - 1.0) <= 1e-12


def test_rsa_is_invariant_to_rotation():
    x = data()
    q, _ = torch.linalg.qr(torch.randn(24, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    y = (x.double() @ q).float()
    assert abs(rsa(x, y) - 1.0) <= 1e-6
    assert abs(linear_cka(x, y) - 1.0) <= 1e-6


def test_rsa_with_shuffled_rows_is_near_zero():
    x = data()
    y = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(2))]
    assert abs(rsa(x, y)) <= 0.05
    assert rsa(x, x + 0.3 * torch.randn_like(x)) > 0.5  # a noisy copy stays well above chance


def test_rsa_rows_come_from_every_context(tmp_path):
    """spread_rows takes about n / C rows of each of the C contexts (seeded), not n rows of a few contexts."""
    import numpy as np

    from progsae.data.store import ActivationStore, StoreWriter
    from progsae.evals.common import spread_rows

    meta = {"model": "hand", "hook": "none", "d_model": 4, "context_length": 32, "first_position": 0}
    w = StoreWriter(tmp_path / "s", meta, "test", shard_tokens=10**9)
    for _ in range(2):  # two shards of 25 contexts
        w.add(torch.randn(25 * 32, 4), torch.zeros(25, 32, dtype=torch.int32))
        w.flush()
    w.close()
    store = ActivationStore(tmp_path / "s")
    x, ctx = spread_rows(store, 200, seed=3)
    assert sorted(set(ctx.tolist())) == list(range(50))
    assert np.bincount(ctx).tolist() == [4] * 50 and x.shape == (200, 4)
    x2, ctx2 = spread_rows(store, 200, seed=3)
    assert torch.equal(x, x2) and not torch.equal(x, spread_rows(store, 200, seed=4)[0])
