"""Sparse TopK kernels against autograd of the dense formula, in float64."""

from __future__ import annotations

import torch

from progsae.kernels.prefix_loss import grid_sq_errors, prefix_sq_errors
from progsae.kernels.sparse_topk import sparse_decode, sparse_decode_bags, sparse_t_matmul, topk_encode

TOL = 1e-10
B, D, N, K = 40, 10, 70, 6


def leaf(*shape, gen, scale=1.0):
    return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).requires_grad_(True)


def grads_of(fn, tensors, g_out):
    for t in tensors:
        t.grad = None
    y = fn()
    (y * g_out).sum().backward()
    return y.detach(), [t.grad.clone() for t in tensors]


def test_sparse_t_matmul_matches_dense_product_with_duplicates():
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 30, (200,), generator=gen)
    cols = torch.randint(0, 50, (200,), generator=gen)  # repeated (row, col) pairs must add up
    w = torch.randn(200, generator=gen, dtype=torch.float64)
    X = torch.randn(30, 7, generator=gen, dtype=torch.float64)
    S = torch.zeros(30, 50, dtype=torch.float64).index_put_((rows, cols), w, accumulate=True)
    assert (sparse_t_matmul(rows, cols, w, X, 50) - S.t() @ X).abs().max().item() <= TOL


def test_topk_encode_decode_gradients_match_dense_autograd():
    gen = torch.Generator().manual_seed(1)
    x = leaf(B, D, gen=gen)
    W_enc, b_enc, b_dec, W_dec = leaf(D, N, gen=gen), leaf(N, gen=gen, scale=0.3), leaf(D, gen=gen), leaf(N, D, gen=gen)
    tensors = [x, W_enc, b_enc, b_dec, W_dec]

    def dense():
        pre = (x - b_dec) @ W_enc + b_enc
        vals, idx = pre.relu().topk(K, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, idx, vals) @ W_dec + b_dec

    def sparse():
        vals, idx = topk_encode(x, W_enc, b_enc, b_dec, K)
        return sparse_decode(vals, idx, W_dec, b_dec)

    g_out = torch.randn(B, D, generator=gen, dtype=torch.float64)
    y_ref, g_ref = grads_of(dense, tensors, g_out)
    y, g = grads_of(sparse, tensors, g_out)
    assert (y - y_ref).abs().max().item() <= TOL
    for a, b in zip(g, g_ref):
        assert b.abs().max() > 0
        assert (a - b).abs().max().item() <= TOL


def test_topk_encode_rows_with_fewer_than_k_positive_get_no_gradient_through_zeros():
    gen = torch.Generator().manual_seed(2)
    x = leaf(B, D, gen=gen)
    W_enc, b_enc = leaf(D, N, gen=gen), (torch.full((N,), -4.0, dtype=torch.float64)).requires_grad_(True)
    b_dec = torch.zeros(D, dtype=torch.float64, requires_grad=True)
    vals, idx = topk_encode(x, W_enc, b_enc, b_dec, K)
    assert (vals == 0).any()  # strongly negative bias: many rows have < k positive pre-activations
    (vals.sum()).backward()
    pre = ((x - b_dec) @ W_enc + b_enc).detach()
    expected = (pre > 0).to(torch.float64)
    mask = torch.zeros(B, N, dtype=torch.float64).scatter(1, idx, (vals > 0).to(torch.float64))
    assert torch.equal(mask, torch.minimum(mask, expected))
    assert (b_enc.grad - mask.sum(0)).abs().max().item() <= TOL


def test_bag_decoder_matches_dense_with_empty_bags():
    gen = torch.Generator().manual_seed(3)
    W_dec = leaf(N, D, gen=gen)
    bags = torch.sort(torch.randint(0, 25, (90,), generator=gen)).values  # some of the 30 bags stay empty
    cols = torch.randint(0, N, (90,), generator=gen)
    vals = leaf(90, gen=gen)
    g_out = torch.randn(30, D, generator=gen, dtype=torch.float64)

    def dense():
        S = torch.zeros(30, N, dtype=torch.float64).index_put((bags, cols), vals, accumulate=True)
        return S @ W_dec

    y_ref, g_ref = grads_of(dense, [vals, W_dec], g_out)
    y, g = grads_of(lambda: sparse_decode_bags(vals, cols, bags, W_dec, 30), [vals, W_dec], g_out)
    assert y[25:].abs().max().item() == 0.0
    assert (y - y_ref).abs().max().item() <= TOL
    for a, b in zip(g, g_ref):
        assert (a - b).abs().max().item() <= TOL


def test_prefix_sq_errors_match_autograd_of_running_sum():
    gen = torch.Generator().manual_seed(4)
    x, b_dec, parts = leaf(B, D, gen=gen), leaf(D, gen=gen), leaf(B, 3, D, gen=gen)
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)

    def dense():
        x_hat, errs = b_dec.expand_as(x), []
        for g in range(3):
            x_hat = x_hat + parts[:, g]
            errs.append((x - x_hat).pow(2).sum(-1).mean())
        return torch.stack(errs)

    def fast():
        errs, resid = prefix_sq_errors(x, b_dec, parts)
        assert not resid.requires_grad
        assert (x - resid - b_dec - parts.sum(1)).abs().max().item() <= TOL
        return errs

    e_ref, g_ref = grads_of(dense, [x, b_dec, parts], w)
    e, g = grads_of(fast, [x, b_dec, parts], w)
    assert (e - e_ref).abs().max().item() <= TOL
    for a, b in zip(g, g_ref):
        assert (a - b).abs().max().item() <= TOL


def test_grid_sq_errors_match_autograd_of_two_way_running_sum():
    """Prefix groups p crossed with level groups l: cut (p, l) sums parts[:, :p+1, :l+1]."""
    gen = torch.Generator().manual_seed(5)
    P, L = 3, 4
    x, b_dec, parts = leaf(B, D, gen=gen), leaf(D, gen=gen), leaf(B, P, L, D, gen=gen)
    w = torch.rand(P, L, generator=gen, dtype=torch.float64)

    def dense():
        return torch.stack([
            torch.stack([(x - b_dec - parts[:, : p + 1, : l + 1].sum((1, 2))).pow(2).sum(-1).mean() for l in range(L)])
            for p in range(P)
        ])

    def fast():
        errs, resid = grid_sq_errors(x, b_dec, parts)
        assert (x - resid - b_dec - parts.sum((1, 2))).abs().max().item() <= TOL
        return errs

    e_ref, g_ref = grads_of(dense, [x, b_dec, parts], w)
    e, g = grads_of(fast, [x, b_dec, parts], w)
    assert (e - e_ref).abs().max().item() <= TOL
    for a, b in zip(g, g_ref):
        assert (a - b).abs().max().item() <= TOL
    one_way = grads_of(lambda: grid_sq_errors(x, b_dec, parts[:, :1])[0], [x, b_dec, parts], w[:1])
    ref_one = grads_of(lambda: dense()[:1], [x, b_dec, parts], w[:1])
    assert (one_way[0] - ref_one[0]).abs().max().item() <= TOL
