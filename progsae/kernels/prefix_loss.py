"""Squared errors of nested (Matryoshka) reconstructions from per-group partial decodes, in O(G) passes over [B, D].

Prefix g reconstructs x with b_dec + parts[:, 0] + ... + parts[:, g]. Plain autograd over that running sum
costs ~6 passes per prefix plus a zero-filled [B, G, D] per slice; this function needs ~3.
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
        last = resids[-1].clone()
        ctx.mark_non_differentiable(last)
        return torch.stack(errs), last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_err_G: Tensor, _grad_last):
        resids = ctx.saved_tensors
        G = len(resids)
        B, D = resids[0].shape
        coef_G = (2.0 / B) * grad_err_G
        grad_parts = resids[0].new_empty(B, G, D)
        acc_BD = resids[0].new_zeros(B, D)
        for g in range(G - 1, -1, -1):
            acc_BD.add_(resids[g], alpha=float(coef_G[g]))  # d(sum_{g'>=g} w err_g') / d resid_g
            torch.neg(acc_BD, out=grad_parts[:, g])
        grad_x = acc_BD if ctx.needs_input_grad[0] else None
        grad_b = -acc_BD.sum(0) if ctx.needs_input_grad[1] else None
        return grad_x, grad_b, grad_parts


def prefix_sq_errors(x_BD: Tensor, b_dec_D: Tensor, parts_BGD: Tensor) -> tuple[Tensor, Tensor]:
    """(err_G, last residual_BD): mean squared error of each nested reconstruction; the residual is detached."""
    return PrefixSqError.apply(x_BD, b_dec_D, parts_BGD)
