"""Fast training step for TopK and BatchTopK SAEs (with Matryoshka, k levels and AuxK) on the sparse kernels.

It computes exactly what `progsae.sae.losses.dense_step` computes (same loss names and statistics), but
the backward touches only the selected latents. `dense_reference()` switches back to the dense step.
Differences: `x_hat_BD` carries no autograd graph, and `extras` holds the selected entries (rows_E, cols_E,
vals_E) instead of a dense z_BN.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

from progsae.kernels.prefix_loss import grid_sq_errors
from progsae.kernels.sparse_topk import (
    Selection,
    descending_ranks,
    sort_perm,
    sparse_decode_bags,
    sparse_encode,
    topk_selection,
)
from progsae.sae.base import SAE, StepOutput, TrainContext
from progsae.sae.losses import k_level_weights, k_levels, prefix_sizes, prefix_weights, residual_variance, sq_error

_SPARSE_ENABLED = True


def sparse_enabled() -> bool:
    """Whether TopK/BatchTopK training steps take the sparse path (the default)."""
    return _SPARSE_ENABLED


@contextmanager
def dense_reference() -> Iterator[None]:
    """Within this block TopK/BatchTopK `training_step` uses the dense autograd reference (tests, benchmarks)."""
    global _SPARSE_ENABLED
    old, _SPARSE_ENABLED = _SPARSE_ENABLED, False
    try:
        yield
    finally:
        _SPARSE_ENABLED = old


def batch_topk_selection(pre_BN: Tensor, k: int) -> Selection:
    """The k*B largest ReLU'd pre-activations of the whole batch (zeros dropped), grouped by row.

    Each row offers its top candidates; a row whose candidates were all taken (and still positive) may hold
    more winners, so only such rows are re-offered with 4x more candidates until none is saturated.
    """
    B, n = pre_BN.shape
    total = min(k * B, B * n)
    kc0 = min(n, 2 * k)
    kc_B = torch.full((B,), kc0, dtype=torch.long, device=pre_BN.device)
    vals_BC, cols_BC = pre_BN.topk(kc0, dim=-1, sorted=False)
    rows_C = torch.arange(B, device=pre_BN.device).repeat_interleave(cols_BC.shape[1])
    cols_C, vals_C = cols_BC.flatten(), vals_BC.flatten()
    min_B = vals_BC.amin(-1)
    while True:
        pos = vals_C.topk(total, sorted=False).indices
        taken_B = torch.bincount(rows_C[pos], minlength=B)
        sat_B = (taken_B == kc_B) & (min_B > 0) & (kc_B < n)
        if not bool(sat_B.any()):
            break
        sat_rows = sat_B.nonzero().squeeze(1)
        kc = min(n, 4 * int(kc_B[sat_rows].max()))
        v_SC, c_SC = pre_BN.index_select(0, sat_rows).topk(kc, dim=-1, sorted=False)
        keep = ~sat_B[rows_C]
        rows_C = torch.cat([rows_C[keep], sat_rows.repeat_interleave(kc)])
        cols_C = torch.cat([cols_C[keep], c_SC.flatten()])
        vals_C = torch.cat([vals_C[keep], v_SC.flatten()])
        kc_B[sat_rows] = kc
        min_B[sat_rows] = v_SC.amin(-1)
    rows_E, cols_E, vals_E = rows_C[pos], cols_C[pos], vals_C[pos]
    order = sort_perm(rows_E, B)
    order = order[vals_E[order] > 0]
    return rows_E[order], cols_E[order], vals_E[order]


def aux_selection(pre_BN: Tensor, dead_N: Tensor, k_aux: int) -> Selection:
    """Top k_aux dead latents per row (positive entries only), sorted by row."""
    B, n = pre_BN.shape
    dead_idx = dead_N.nonzero().squeeze(1)
    sub_BM = pre_BN if dead_idx.numel() == n else pre_BN.index_select(1, dead_idx)  # ReLU after top-k: same values
    vals_BK, j_BK = sub_BM.topk(k_aux, dim=-1, sorted=False)
    rows_E = torch.arange(B, device=j_BK.device).repeat_interleave(k_aux)
    cols_E, vals_E = dead_idx[j_BK.flatten()], vals_BK.flatten()
    pos_E = vals_E > 0
    return rows_E[pos_E], cols_E[pos_E], vals_E[pos_E]


def level_groups(vals_E: Tensor, levels: list[int], k: int, B: int, batch: bool) -> Tensor:
    """Each entry's sparsity-level group l: its rank r has levels[l-1] <= r < levels[l], so level j's code is the
    entries of groups <= l. TopK ranks within the row (entries come sorted by value, k per row); BatchTopK ranks
    in the whole batch against the budgets j*B."""
    if batch:
        rank_E, scale = descending_ranks(vals_E), B
    else:
        rank_E, scale = torch.arange(vals_E.numel(), device=vals_E.device) % k, 1
    bounds = torch.tensor([j * scale for j in levels[:-1]], dtype=rank_E.dtype, device=rank_E.device)
    return torch.searchsorted(bounds, rank_E, right=True)


def _recon(
    sae: SAE,
    x_BD: Tensor,
    rows_E: Tensor,
    cols_E: Tensor,
    vals_E: Tensor,
    prefixes: list[int] | None,
    levels: list[int] | None,
    level_E: Tensor | None,
    bags_sorted: bool,
) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
    """Reconstruction loss, x_hat and residual (both detached) and the Matryoshka / k-level terms.

    ONE decode gives per-(row, prefix group, level group) partial sums; the nested reconstructions are running
    sums over the groups (progsae/kernels/prefix_loss.py). Vanilla is the one-group case. `bags_sorted`: the
    entries are already in bag order.
    """
    B, D = x_BD.shape
    P = len(prefixes) if prefixes else 1
    L = len(levels) if levels else 1
    bags_E = rows_E  # entries are grouped by row already
    if P > 1:
        bounds_P1 = torch.tensor(prefixes[:-1], dtype=cols_E.dtype, device=cols_E.device)
        bags_E = bags_E * P + torch.searchsorted(bounds_P1, cols_E, right=True)
    if L > 1:
        bags_E = bags_E * L + level_E
    if not bags_sorted:
        order = sort_perm(bags_E, B * P * L)
        cols_E, vals_E, bags_E = cols_E[order], vals_E[order], bags_E[order]
    parts_BPLD = sparse_decode_bags(vals_E, cols_E, bags_E, sae.W_dec, B * P * L).view(B, P, L, D)
    err_PL, resid_BD = grid_sq_errors(x_BD, sae.b_dec, parts_BPLD)
    x_hat = x_BD - resid_BD
    if P == 1 and L == 1:
        return err_PL[0, 0], x_hat, resid_BD, {}
    w_P = prefix_weights(sae, prefixes) if prefixes else [1.0]
    w_L = k_level_weights(sae, levels) if levels else [1.0]
    w_PL = torch.tensor([[a * b for b in w_L] for a in w_P], dtype=err_PL.dtype, device=err_PL.device)
    names_P = [f"_{m}" for m in prefixes] if prefixes else [""]
    names_L = [f"_k{j}" for j in levels] if levels else [""]
    terms = {f"recon{a}{b}": err_PL[p, l].detach() for p, a in enumerate(names_P) for l, b in enumerate(names_L)}
    return (w_PL * err_PL).sum(), x_hat, resid_BD, terms


def sparse_step(sae: SAE, x_BD: Tensor, ctx: TrainContext) -> StepOutput:
    """Training step for TopK / BatchTopK (+Matryoshka, k levels, AuxK, L1) equal to `dense_step`, with sparse backward."""
    B = x_BD.shape[0]
    n = sae.n_latents
    k = int(sae.cfg.k)
    batch = bool(getattr(sae, "batch_topk_training", False))
    prefixes = prefix_sizes(sae, ctx)
    levels = k_levels(sae)
    dead_N = ctx.dead_mask_N
    use_aux = sae.cfg.k is not None and ctx.aux_coef > 0
    k_aux = min(ctx.k_aux, int(dead_N.sum())) if use_aux and dead_N is not None else 0
    n_main: list[int] = []

    def select(pre_BN: Tensor) -> Selection:
        if batch:
            main = batch_topk_selection(pre_BN, k)
        else:
            main = topk_selection(pre_BN, k)
            if levels:  # entries of each row largest first: an entry's rank is its place in the row
                rows_K, cols_K, vals_K = main
                vals_BK, order_BK = vals_K.view(-1, k).sort(dim=-1, descending=True)
                main = rows_K, cols_K.view(-1, k).gather(-1, order_BK).flatten(), vals_BK.flatten()
        n_main.append(main[0].numel())
        if k_aux == 0:
            return main
        aux = aux_selection(pre_BN, dead_N.to(pre_BN.device), k_aux)
        return tuple(torch.cat([a, b]) for a, b in zip(main, aux))  # type: ignore[return-value]

    rows_E, cols_E, vals_E = sparse_encode(x_BD, sae.W_enc, sae.b_enc, sae.b_dec, select, sae.cfg.subtract_b_dec)
    m = n_main[0]
    rows_M, cols_M, vals_M = rows_E[:m], cols_E[:m], vals_E[:m]

    level_M = level_groups(vals_M, levels, k, B, batch) if levels else None
    bags_sorted = not prefixes and not (levels and batch)  # TopK levels: ranks ascend within each row
    recon, x_hat, resid, losses = _recon(sae, x_BD, rows_M, cols_M, vals_M, prefixes, levels, level_M, bags_sorted)
    losses["recon"] = recon
    loss = recon
    if use_aux:
        if k_aux > 0:
            aux_hat = sparse_decode_bags(vals_E[m:], cols_E[m:], rows_E[m:], sae.W_dec, B)
            aux = sq_error(resid, aux_hat) / residual_variance(resid, ctx)  # global-batch statistic under DDP
        else:
            aux = x_BD.new_zeros(())
        losses["aux"] = aux
        loss = loss + ctx.aux_coef * aux
    if ctx.l1_coef > 0:
        l1 = (vals_M * sae.W_dec.norm(dim=1)[cols_M]).sum() / B
        losses["l1"] = l1
        loss = loss + ctx.l1_coef * l1

    active_M = vals_M.detach() > 0
    fired_N = torch.zeros(n, dtype=torch.bool, device=x_BD.device)
    fired_N[cols_M[active_M]] = True
    min_active = vals_M.detach()[active_M].min() if bool(active_M.any()) else x_BD.new_zeros(())
    return StepOutput(
        loss=loss,
        losses=losses,
        x_hat_BD=x_hat,
        fired_N=fired_N,
        l0=torch.bincount(rows_M[active_M], minlength=B).float().mean(),
        extras={"min_active": min_active, "rows_E": rows_M, "cols_E": cols_M, "vals_E": vals_M.detach()},
    )
