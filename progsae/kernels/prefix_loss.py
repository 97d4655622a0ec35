"""Squared errors of nested (Matryoshka) reconstructions from per-group partial decodes, in O(G) passes over [B, D].

Prefix g reconstructs x with b_dec + parts[:, 0] + ... + parts[:, g]. Plain autograd over that running sum
costs ~6 passes per prefix plus a zero-filled [B, G, D] per slice; this function needs ~3 (two forward, one backward).
The same nesting serves sparsity levels (groups of entries by activation rank); `grid_sq_errors` nests both ways.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class PrefixSqError(torch.autograd.Function):
    """err_G[g] = mean_b ||x - b_dec - sum_{h<=g} parts[b, h]||^2; also returns the last residual (no grad)."""

    @staticmethod
    def forward(ctx, x_BD: Tensor, b_dec_D: Tensor, parts_BGD: Tensor):
        B, G, _ = parts_BGD.shape
        resid_BD = x_BD - b_dec_D
        resids = []
        errs = []
        for g in range(G):
            resid_BD = resid_BD - parts_BGD[:, g]
            resids.append(resid_BD)
            flat = resid_BD.view(-1)
            errs.append(torch.dot(flat, flat) / B)
        ctx.save_for_backward(*resids)
        ctx.mark_non_differentiable(resids[-1])
        return torch.stack(errs), resids[-1]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_err_G: Tensor, _grad_last):
        resids = ctx.saved_tensors
        G = len(resids)
        B, D = resids[0].shape
        coef_G = ((2.0 / B) * grad_err_G).tolist()
        # grad parts[:, g] = -sum_{g' >= g} coef_g' resid_g': a suffix sum, one pass per group
        grad_parts = resids[0].new_empty(B, G, D)
        torch.mul(resids[G - 1], -coef_G[G - 1], out=grad_parts[:, G - 1])
        for g in range(G - 2, -1, -1):
            torch.add(grad_parts[:, g + 1], resids[g], alpha=-coef_G[g], out=grad_parts[:, g])
        grad_x = -grad_parts[:, 0] if ctx.needs_input_grad[0] else None
        grad_b = grad_parts[:, 0].sum(0) if ctx.needs_input_grad[1] else None
        return grad_x, grad_b, grad_parts


def prefix_sq_errors(x_BD: Tensor, b_dec_D: Tensor, parts_BGD: Tensor) -> tuple[Tensor, Tensor]:
    """(err_G, last residual_BD): mean squared error of each nested reconstruction; the residual is detached."""
    return PrefixSqError.apply(x_BD, b_dec_D, parts_BGD)


class GridSqError(torch.autograd.Function):
    """err_PL[p, l] = mean_b ||x - b_dec - sum_{p' <= p, l' <= l} parts[b, p', l']||^2: Matryoshka prefix groups p
    crossed with sparsity-level groups l (progsae.sae.sparse_step); also returns the last residual (no grad)."""

    @staticmethod
    def forward(ctx, x_BD: Tensor, b_dec_D: Tensor, parts_BPLD: Tensor):
        B, P, L, _ = parts_BPLD.shape
        resid_L = [x_BD - b_dec_D] * L  # resid_L[l]: the residual of level l at the prefix reached so far
        resids, errs = [], []
        for p in range(P):
            cum_BD = None
            for l in range(L):
                part = parts_BPLD[:, p, l]
                cum_BD = part if cum_BD is None else cum_BD + part  # prefix group p's top-l contribution
                resid_L[l] = resid_L[l] - cum_BD
                resids.append(resid_L[l])
                flat = resid_L[l].reshape(-1)
                errs.append(torch.dot(flat, flat) / B)
        ctx.save_for_backward(*resids)
        ctx.shape = (P, L)
        ctx.mark_non_differentiable(resids[-1])
        return torch.stack(errs).view(P, L), resids[-1]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_err_PL: Tensor, _grad_last):
        resids = ctx.saved_tensors
        P, L = ctx.shape
        B, D = resids[0].shape
        coef = ((2.0 / B) * grad_err_PL).tolist()
        # grad parts[:, p, l] = -sum_{p' >= p, l' >= l} coef[p', l'] resid[p', l']: a suffix sum along l, then along p
        grad_parts = resids[0].new_empty(B, P, L, D)
        below_L: list[Tensor | None] = [None] * L  # sum over p' > p of the level-suffix sums
        for p in range(P - 1, -1, -1):
            suffix = None
            for l in range(L - 1, -1, -1):
                term = resids[p * L + l] * coef[p][l]
                suffix = term if suffix is None else suffix + term
                below_L[l] = suffix if below_L[l] is None else below_L[l] + suffix
                torch.neg(below_L[l], out=grad_parts[:, p, l])
        grad_x = -grad_parts[:, 0, 0] if ctx.needs_input_grad[0] else None
        grad_b = grad_parts[:, 0, 0].sum(0) if ctx.needs_input_grad[1] else None
        return grad_x, grad_b, grad_parts


def grid_sq_errors(x_BD: Tensor, b_dec_D: Tensor, parts_BPLD: Tensor) -> tuple[Tensor, Tensor]:
    """(err_PL, last residual_BD) of reconstructions nested in two ways (prefix p, level l); one of P, L == 1
    is the one-way case of `prefix_sq_errors`, which this dispatches to."""
    B, P, L, D = parts_BPLD.shape
    if P == 1 or L == 1:
        err, resid = prefix_sq_errors(x_BD, b_dec_D, parts_BPLD.reshape(B, P * L, D))
        return err.view(P, L), resid
    return GridSqError.apply(x_BD, b_dec_D, parts_BPLD)
