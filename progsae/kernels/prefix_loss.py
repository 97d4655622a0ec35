"""Squared errors of nested (Matryoshka) reconstructions from per-group partial decodes, in O(G) passes over [B, D].

Prefix g reconstructs x with b_dec + parts[:, 0] + ... + parts[:, g]. Plain autograd over that running sum
costs ~6 passes per prefix plus a zero-filled [B, G, D] per slice; this function needs ~3 (two forward, one backward).
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
