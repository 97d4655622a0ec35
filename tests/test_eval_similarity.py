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
