"""Sparse TopK autograd functions: backward passes touch only the selected (row, latent) entries.

A selection is a flat list of E entries (rows_E, cols_E, vals_E): vals_E[e] = ReLU(pre)[rows_E[e], cols_E[e]],
or 0 for an entry that is carried but switched off. The dense encoder matmul is the only O(B*N*D) work;
gradients of W_enc and W_dec are built as (sparse [B, N])^T @ dense with `embedding_bag`, which on this CPU
beat index_add_ (~25x) and MKL CSR matmul (~10x) at B 4096, N 16384, D 576, k 32. Entries are ordered
with a stable sort of int32 keys (torch's radix path; int64 argsort of 131k keys was ~100x slower here)
on one thread (torch's 2-thread 1-D sort was ~200x slower than one thread here).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

Selection = tuple[Tensor, Tensor, Tensor]  # rows_E, cols_E, vals_E


def bag_offsets(bags_E: Tensor, num_bags: int) -> Tensor:
    """Start offset of each bag in a list of entries sorted by bag (empty bags allowed)."""
    counts = torch.bincount(bags_E, minlength=num_bags)
    return counts.cumsum(0) - counts


def _stable_sort_perm(keys_E: Tensor) -> Tensor:
    """torch.sort(stable) indices, on one thread on CPU."""
    if keys_E.device.type != "cpu" or torch.get_num_threads() == 1:
        return torch.sort(keys_E, stable=True).indices
    # On CPU torch's multi-threaded 1-D sort took ~200 ms for 131k keys here, one thread ~1 ms.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.sort(keys_E, stable=True).indices
    finally:
        torch.set_num_threads(threads)


def sort_perm(keys_E: Tensor, bound: int) -> Tensor:
    """Stable ascending order of non-negative integer keys < bound (int32 keys take torch's fast radix sort)."""
    if bound < 2**31:
        keys_E = keys_E.to(torch.int32)
    return _stable_sort_perm(keys_E)


def descending_ranks(vals_E: Tensor) -> Tensor:
    """Each entry's rank by value, largest first (0 = the largest; ties in entry order)."""
    order = _stable_sort_perm(-vals_E.detach())
    return torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))


def sparse_t_matmul(rows_E: Tensor, cols_E: Tensor, w_E: Tensor, X_RD: Tensor, n: int) -> Tensor:
    """S^T @ X for the sparse [R, n] matrix S with S[rows, cols] = w (duplicates add): out[c] = sum w_e X[rows_e]."""
    perm = sort_perm(cols_E, n)
    return F.embedding_bag(
        rows_E[perm], X_RD.contiguous(), bag_offsets(cols_E, n), mode="sum", per_sample_weights=w_E[perm].to(X_RD.dtype)
    )


@torch.no_grad()
def pre_acts(x_BD: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, subtract_b_dec: bool = True) -> Tensor:
    """Dense encoder pre-activations, the same expression as `SAE.pre_acts` (no autograd graph)."""
    if subtract_b_dec:
        x_BD = x_BD - b_dec
    return x_BD @ W_enc + b_enc


def topk_selection(pre_BN: Tensor, k: int) -> Selection:
    """The k largest ReLU'd entries of each row, entries grouped by row.

    Taking the top k of pre-activations and then the ReLU gives the same values as the top k of ReLU(pre);
    where they differ (rows with fewer than k positive entries) the value is 0 either way.
    """
    vals_BK, idx_BK = pre_BN.topk(k, dim=-1, sorted=False)
    vals_BK.clamp_min_(0)
    B = pre_BN.shape[0]
    rows_E = torch.arange(B, device=idx_BK.device).repeat_interleave(k)
    return rows_E, idx_BK.flatten(), vals_BK.flatten()


class SparseEncoder(torch.autograd.Function):
    """vals_E = ReLU(W_enc^T (x - b_dec) + b_enc)[rows_E, cols_E] for entries chosen by `select(pre)`.

    `select` receives the dense pre-activations [B, N] (it may modify them) and returns a Selection whose
    values are the ReLU'd pre-activations at the chosen entries.
    Backward builds gradients of x, W_enc, b_enc, b_dec from the E chosen entries only; entries whose value
    is 0 get no gradient (ReLU's derivative at 0 is 0, as in dense autograd).
    """

    @staticmethod
    def forward(ctx, x_BD, W_enc, b_enc, b_dec, select: Callable[[Tensor], Selection], subtract_b_dec: bool):
        xc_BD = x_BD - b_dec if subtract_b_dec else x_BD
        pre_BN = torch.addmm(b_enc, xc_BD, W_enc)
        rows_E, cols_E, vals_E = select(pre_BN)
        del pre_BN
        ctx.save_for_backward(xc_BD, W_enc, rows_E, cols_E, vals_E)
        ctx.subtract_b_dec = subtract_b_dec
        ctx.mark_non_differentiable(rows_E, cols_E)
        return vals_E, rows_E, cols_E

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_vals_E, _grad_rows, _grad_cols):
        xc_BD, W_enc, rows_E, cols_E, vals_E = ctx.saved_tensors
        n = W_enc.shape[1]
        gp_E = torch.where(vals_E > 0, grad_vals_E, 0.0)
        grad_x = grad_W = grad_b_enc = grad_b_dec = None
        need_x, need_W, need_be, need_bd = ctx.needs_input_grad[:4]
        if need_W:  # built one row per latent ([N, D] memory); autograd copies it into W_enc's [D, N] layout
            grad_W = sparse_t_matmul(rows_E, cols_E, gp_E, xc_BD, n).t()
        colsum_N = torch.zeros(n, dtype=gp_E.dtype, device=gp_E.device).index_add_(0, cols_E, gp_E)
        if need_be:
            grad_b_enc = colsum_N
        if need_x:
            contrib_ED = gp_E[:, None] * W_enc.t().index_select(0, cols_E)
            grad_x = torch.zeros_like(xc_BD).index_add_(0, rows_E, contrib_ED)
        if need_bd and ctx.subtract_b_dec:
            grad_b_dec = -(W_enc @ colsum_N)
        return grad_x, grad_W, grad_b_enc, grad_b_dec, None, None


class SparseDecoder(torch.autograd.Function):
    """out[g] = sum over entries e in bag g of vals_E[e] * W_dec[cols_E[e]] (entries sorted by bag).

    Backward: grad vals by one dot product per entry; grad W_dec touches only rows cols_E.
    """

    @staticmethod
    def forward(ctx, vals_E, cols_E, bags_E, W_dec, num_bags: int):
        offsets = bag_offsets(bags_E, num_bags)
        out = F.embedding_bag(cols_E, W_dec, offsets, mode="sum", per_sample_weights=vals_E)
        ctx.save_for_backward(vals_E, cols_E, bags_E, W_dec, offsets)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_GD):
        vals_E, cols_E, bags_E, W_dec, offsets = ctx.saved_tensors
        grad_GD = grad_GD.contiguous()
        grad_vals = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_vals = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad_GD, W_dec, cols_E, offsets, bags_E, 0, -1
            )
        if ctx.needs_input_grad[3]:
            grad_W = sparse_t_matmul(bags_E, cols_E, vals_E, grad_GD, W_dec.shape[0])
        return grad_vals, None, None, grad_W, None


def sparse_encode(
    x_BD: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    b_dec: Tensor,
    select: Callable[[Tensor], Selection],
    subtract_b_dec: bool = True,
) -> Selection:
    """Differentiable (rows_E, cols_E, vals_E) of the entries `select` picks from ReLU(pre-activations)."""
    vals_E, rows_E, cols_E = SparseEncoder.apply(x_BD, W_enc, b_enc, b_dec, select, subtract_b_dec)
    return rows_E, cols_E, vals_E


def sparse_decode_bags(vals_E: Tensor, cols_E: Tensor, bags_E: Tensor, W_dec: Tensor, num_bags: int) -> Tensor:
    """[num_bags, D] sums of vals-weighted decoder rows, one sum per bag (entries must be sorted by bag)."""
    return SparseDecoder.apply(vals_E, cols_E, bags_E, W_dec, num_bags)


def topk_encode(
    x_BD: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int, subtract_b_dec: bool = True
) -> tuple[Tensor, Tensor]:
    """Per-row TopK codes as (vals_BK, idx_BK), with the sparse backward."""
    B = x_BD.shape[0]
    _, cols_E, vals_E = sparse_encode(x_BD, W_enc, b_enc, b_dec, lambda r: topk_selection(r, k), subtract_b_dec)
    return vals_E.view(B, k), cols_E.view(B, k)


def sparse_decode(vals_BK: Tensor, idx_BK: Tensor, W_dec: Tensor, b_dec: Tensor | None = None) -> Tensor:
    """x_hat_BD = sum_k vals[b, k] W_dec[idx[b, k]] (+ b_dec), with the sparse backward."""
    B, K = idx_BK.shape
    bags_E = torch.arange(B, device=idx_BK.device).repeat_interleave(K)
    out = sparse_decode_bags(vals_BK.reshape(-1), idx_BK.reshape(-1), bags_E, W_dec, B)
    return out if b_dec is None else out + b_dec
