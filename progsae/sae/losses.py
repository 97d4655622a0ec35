"""Loss terms shared by the architectures: reconstruction, Matryoshka prefixes, k levels, AuxK, L1.

This is the dense reference path (plain autograd). The fast sparse path must match it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from progsae.sae.base import SAE, StepOutput, TrainContext
from progsae.sae.batchtopk import batch_topk_dense
from progsae.sae.topk import topk_dense


def sq_error(x_BD: Tensor, x_hat_BD: Tensor) -> Tensor:
    """Mean over rows of ||x - x_hat||^2."""
    return (x_BD - x_hat_BD).pow(2).sum(-1).mean()


def random_prefixes(n: int, num: int, generator: torch.Generator | None) -> list[int]:
    """Sample `num` prefix lengths with P(L <= l) = (l/n)^0.5 (Nabeshima: short prefixes favoured), always including n."""
    u = torch.rand(num - 1, generator=generator)
    lengths = ((u**2) * n).long().clamp(1, n - 1).tolist()
    return sorted(set(lengths)) + [n]


def prefix_sizes(sae: SAE, ctx: TrainContext) -> list[int] | None:
    """The Matryoshka prefixes this step trains (fixed or freshly sampled), or None for vanilla."""
    mat = sae.cfg.provenance.get("matryoshka") or {}
    if mat.get("random"):
        return random_prefixes(sae.n_latents, int(mat["random"]), ctx.generator)
    return sae.cfg.prefixes


def prefix_weights(sae: SAE, prefixes: list[int]) -> list[float]:
    mat = sae.cfg.provenance.get("matryoshka") or {}
    w = mat.get("weights")
    if w is None or mat.get("random"):
        return [1.0 / len(prefixes)] * len(prefixes)
    return [float(v) for v in w]


def k_levels(sae: SAE) -> list[int] | None:
    """The sparsity levels j_1 < ... < j_L = k of a hierarchical (multi-k) SAE's objective, or None."""
    levels = (sae.cfg.provenance.get("k_levels") or {}).get("levels")
    return [int(j) for j in levels] if levels else None


def k_level_weights(sae: SAE, levels: list[int]) -> list[float]:
    """Per-level loss weights (default equal)."""
    w = (sae.cfg.provenance.get("k_levels") or {}).get("weights")
    return [1.0 / len(levels)] * len(levels) if w is None else [float(v) for v in w]


def keep_largest(sae: SAE, z_BN: Tensor, j: int) -> Tensor:
    """The code at level j: the j largest entries of each row (TopK), or the j*B largest of the batch (BatchTopK)."""
    return batch_topk_dense(z_BN, j) if getattr(sae, "batch_topk_training", False) else topk_dense(z_BN, j)


def hierarchical_recon(
    sae: SAE, x_BD: Tensor, z_BN: Tensor, levels: list[int], prefixes: list[int] | None
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """The dense definition of the multi-k objective: sum_j w_j ||x - x_hat_j||^2, where x_hat_j decodes only the
    level-j code (with Matryoshka prefixes, each level's prefix loss); x_hat is the level-k reconstruction."""
    total = x_BD.new_zeros(())
    terms: dict[str, Tensor] = {}
    for j, w in zip(levels, k_level_weights(sae, levels)):
        z_j = keep_largest(sae, z_BN, j)
        if prefixes:
            err, x_hat, sub = matryoshka_recon(sae, x_BD, z_j, prefixes, prefix_weights(sae, prefixes))
            terms.update({f"{name}_k{j}": v for name, v in sub.items()})
        else:
            x_hat = z_j @ sae.W_dec + sae.b_dec
            err = sq_error(x_BD, x_hat)
            terms[f"recon_k{j}"] = err.detach()
        total = total + w * err
    return total, x_hat, terms


def matryoshka_recon(sae: SAE, x_BD: Tensor, z_BN: Tensor, prefixes: list[int], weights: list[float]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Weighted sum of prefix reconstruction errors, built as a running sum over latent groups."""
    x_hat = sae.b_dec.expand_as(x_BD)
    total = x_BD.new_zeros(())
    terms = {}
    start = 0
    for m, w in zip(prefixes, weights):
        x_hat = x_hat + z_BN[:, start:m] @ sae.W_dec[start:m]
        err = sq_error(x_BD, x_hat)
        terms[f"recon_{m}"] = err.detach()
        total = total + w * err
        start = m
    return total, x_hat, terms


def auxk_loss(sae: SAE, x_BD: Tensor, x_hat_BD: Tensor, pre_BN: Tensor, ctx: TrainContext) -> Tensor:
    """Reconstruct the residual with the top k_aux dead latents, normalised by the residual variance."""
    dead = ctx.dead_mask_N
    if dead is None or not bool(dead.any()):
        return x_BD.new_zeros(())
    k_aux = min(ctx.k_aux, int(dead.sum()))
    resid = (x_BD - x_hat_BD).detach()
    masked = torch.where(dead, pre_BN.relu(), pre_BN.new_zeros(()))
    vals, idx = masked.topk(k_aux, dim=-1, sorted=False)
    aux_hat = torch.zeros_like(masked).scatter(-1, idx, vals) @ sae.W_dec
    return sq_error(resid, aux_hat) / residual_variance(resid, ctx)


def residual_variance(resid_BD: Tensor, ctx: TrainContext) -> Tensor:
    """AuxK's normaliser: mean squared distance of the (detached) residual from its batch mean.

    In a data-parallel run both means are over the global batch (ctx.global_mean), so P processes
    compute the same loss as one process on the whole batch.
    """
    mean = ctx.global_mean or (lambda t: t)
    mu_D = mean(resid_BD.mean(0))
    return mean((resid_BD - mu_D).pow(2).sum(-1).mean()).clamp_min(1e-8)


def dense_step(sae: SAE, x_BD: Tensor, ctx: TrainContext) -> StepOutput:
    """Reference training step with dense autograd: recon (+Matryoshka, k levels), AuxK, L1."""
    pre_BN = sae.pre_acts(x_BD)
    z_BN = sae.train_activation(pre_BN)
    losses: dict[str, Tensor] = {}
    prefixes = prefix_sizes(sae, ctx)
    levels = k_levels(sae)
    if levels:
        recon, x_hat, terms = hierarchical_recon(sae, x_BD, z_BN, levels, prefixes)
        losses.update(terms)
    elif prefixes:
        recon, x_hat, terms = matryoshka_recon(sae, x_BD, z_BN, prefixes, prefix_weights(sae, prefixes))
        losses.update(terms)
    else:
        x_hat = sae.decode(z_BN)
        recon = sq_error(x_BD, x_hat)
    losses["recon"] = recon
    loss = recon
    if sae.cfg.k is not None and ctx.aux_coef > 0:
        aux = auxk_loss(sae, x_BD, x_hat, pre_BN, ctx)
        losses["aux"] = aux
        loss = loss + ctx.aux_coef * aux
    if ctx.l1_coef > 0:
        l1 = (z_BN * sae.W_dec.norm(dim=1)).sum(-1).mean()
        losses["l1"] = l1
        loss = loss + ctx.l1_coef * l1
    active = z_BN > 0
    min_active = z_BN[active].min().detach() if bool(active.any()) else z_BN.new_zeros(())
    return StepOutput(
        loss=loss,
        losses=losses,
        x_hat_BD=x_hat,
        fired_N=active.any(0),
        l0=active.sum(-1).float().mean(),
        extras={"z_BN": z_BN, "min_active": min_active},
    )
