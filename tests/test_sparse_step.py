"""The sparse training step equals the dense autograd reference (loss, named losses, stats, every gradient)."""

from __future__ import annotations

import pytest
import torch

from progsae.sae import BatchTopKSAE, SAEConfig, TopKSAE, TrainContext
from progsae.sae.batchtopk import batch_topk_dense
from progsae.sae.losses import dense_step
from progsae.sae.sparse_step import batch_topk_selection, dense_reference, sparse_enabled, sparse_step

B, D, N, K = 48, 12, 96, 4
TOL = 1e-10
PARAMS = ("W_enc", "W_dec", "b_enc", "b_dec")


def make_sae(arch: str, prefixes=None, matryoshka=None, seed=0, k_levels=None):
    cfg = SAEConfig(architecture=arch, d_in=D, n_latents=N, k=K, prefixes=prefixes, dtype="float64")
    if matryoshka:
        cfg.provenance["matryoshka"] = matryoshka
    if k_levels:
        cfg.provenance["k_levels"] = k_levels
    cls = TopKSAE if arch == "topk" else BatchTopKSAE
    sae = cls(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(N, D, generator=g, dtype=torch.float64))
        sae.normalize_decoder()
        sae.W_enc.copy_(sae.W_dec.t() + 0.3 * torch.randn(D, N, generator=g, dtype=torch.float64))
        sae.b_enc.copy_(0.1 * torch.randn(N, generator=g, dtype=torch.float64))
        sae.b_dec.copy_(0.1 * torch.randn(D, generator=g, dtype=torch.float64))
    return sae


def make_x(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    x[:3] *= 8.0  # high-norm rows: BatchTopK gives them many more than k latents
    return x


def run(step, sae, x, ctx_kwargs, gen_seed=None):
    for p in sae.parameters():
        p.grad = None
    ctx = TrainContext(**ctx_kwargs)
    if gen_seed is not None:
        ctx.generator = torch.Generator().manual_seed(gen_seed)
    out = step(sae, x, ctx)
    out.loss.backward()
    grads = {name: getattr(sae, name).grad.clone() for name in PARAMS}
    return out, grads


def assert_steps_equal(sae, x, gen_seed=None, **ctx_kwargs):
    ref, g_ref = run(dense_step, sae, x, ctx_kwargs, gen_seed)
    out, g_out = run(sparse_step, sae, x, ctx_kwargs, gen_seed)
    assert (out.loss - ref.loss).abs().item() <= TOL
    assert sorted(out.losses) == sorted(ref.losses)
    for name in ref.losses:
        assert (out.losses[name] - ref.losses[name]).abs().item() <= TOL, name
    for name in PARAMS:
        assert g_ref[name].abs().max() > 0, name  # the case really exercises this gradient
        assert (g_out[name] - g_ref[name]).abs().max().item() <= TOL, name
    assert (out.x_hat_BD - ref.x_hat_BD).abs().max().item() <= TOL
    assert torch.equal(out.fired_N, ref.fired_N)
    assert out.l0.item() == ref.l0.item()
    assert (out.extras["min_active"] - ref.extras["min_active"]).abs().item() <= TOL
    return ref, out


def dead_mask(frac=0.5, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(N, generator=g) < frac


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_plain_step_matches_dense(arch):
    ref, out = assert_steps_equal(make_sae(arch), make_x(), aux_coef=1 / 32)
    assert out.losses["aux"].item() == 0.0  # no dead latents: AuxK is off
    if arch == "topk":
        assert out.l0.item() == K
    else:
        counts = torch.bincount(out.extras["rows_E"], minlength=B)
        assert counts.sum().item() == K * B and counts.max().item() > 2 * K  # rows get different counts


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_auxk_with_dead_latents_matches_dense(arch):
    sae = make_sae(arch)
    ref, out = assert_steps_equal(sae, make_x(), dead_mask_N=dead_mask(), k_aux=10, aux_coef=0.5)
    assert out.losses["aux"].item() > 0
    # fewer dead latents than k_aux
    few = torch.zeros(N, dtype=torch.bool)
    few[[3, 40, 77]] = True
    assert_steps_equal(sae, make_x(2), dead_mask_N=few, k_aux=10, aux_coef=0.5)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_matryoshka_fixed_unequal_weights_matches_dense(arch):
    sae = make_sae(arch, prefixes=[8, 30, N], matryoshka={"weights": [0.5, 0.3, 0.2]})
    ref, out = assert_steps_equal(sae, make_x(), dead_mask_N=dead_mask(0.3), k_aux=6)
    assert {"recon_8", "recon_30", f"recon_{N}"} <= set(out.losses)
    weighted = 0.5 * out.losses["recon_8"] + 0.3 * out.losses["recon_30"] + 0.2 * out.losses[f"recon_{N}"]
    assert (out.losses["recon"] - weighted).abs().item() <= TOL
    assert len({round(out.losses[f"recon_{m}"].item(), 6) for m in (8, 30, N)}) == 3


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_matryoshka_random_prefixes_matches_dense(arch):
    sae = make_sae(arch, matryoshka={"random": 5})
    ref, out = assert_steps_equal(sae, make_x(), gen_seed=123, dead_mask_N=dead_mask(), k_aux=6)
    assert len([name for name in out.losses if name.startswith("recon_")]) >= 3


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_k_levels_match_dense_definition(arch):
    """The multi-k objective: sparse (one decode into rank groups) equals autograd on sum_j w_j ||x - x_hat_j||^2."""
    sae = make_sae(arch, k_levels={"levels": [1, 2, K], "weights": [0.5, 0.3, 0.2]})
    ref, out = assert_steps_equal(sae, make_x(), dead_mask_N=dead_mask(0.3), k_aux=6)
    errs = [out.losses[f"recon_k{j}"].item() for j in (1, 2, K)]
    assert len({round(e, 6) for e in errs}) == 3  # the levels really decode different codes
    assert abs(out.losses["recon"].item() - (0.5 * errs[0] + 0.3 * errs[1] + 0.2 * errs[2])) <= TOL
    with torch.no_grad():  # the last level is the SAE's own reconstruction
        z = sae.train_activation(sae.pre_acts(make_x()))
        assert (out.losses[f"recon_k{K}"] - (make_x() - sae.decode(z)).pow(2).sum(-1).mean()).abs().item() <= TOL


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_k_levels_with_matryoshka_match_dense_definition(arch):
    """Every (prefix, level) cut has its own term; equal level weights by default."""
    sae = make_sae(arch, prefixes=[8, 30, N], matryoshka={"weights": [0.5, 0.3, 0.2]}, k_levels={"levels": [2, K]})
    ref, out = assert_steps_equal(sae, make_x(), dead_mask_N=dead_mask(0.3), k_aux=6)
    grid = {(m, j): out.losses[f"recon_{m}_k{j}"].item() for m in (8, 30, N) for j in (2, K)}
    expected = sum(w * 0.5 * (grid[(m, 2)] + grid[(m, K)]) for m, w in zip((8, 30, N), (0.5, 0.3, 0.2)))
    assert abs(out.losses["recon"].item() - expected) <= TOL
    assert len({round(e, 6) for e in grid.values()}) == len(grid)


def test_k_levels_with_random_prefixes_match_dense():
    sae = make_sae("topk", matryoshka={"random": 4}, k_levels={"levels": [1, 3, K]})
    assert_steps_equal(sae, make_x(), gen_seed=7)


def test_l1_term_matches_dense():
    assert_steps_equal(make_sae("topk"), make_x(), l1_coef=0.01)


def test_batch_topk_selection_equals_dense_top_kB():
    """The candidate-growing selection finds exactly the batch top k*B, even when a row takes far more than 2k."""
    g = torch.Generator().manual_seed(5)
    pre = torch.randn(64, 500, generator=g, dtype=torch.float64)
    pre[7] += 6.0  # one row holds nearly all winners
    rows, cols, vals = batch_topk_selection(pre.clone(), 8)
    z = torch.zeros_like(pre)
    z[rows, cols] = vals
    assert torch.equal(z, batch_topk_dense(pre, 8))
    assert (rows == 7).sum().item() > 100
    assert torch.all(rows[1:] >= rows[:-1])
    few = pre - 3.0  # fewer than k*B positive entries: all of them are kept, zeros are not carried
    few[7] -= 6.0
    rows, cols, vals = batch_topk_selection(few.clone(), 8)
    z = torch.zeros_like(pre)
    z[rows, cols] = vals
    assert 0 < vals.numel() < 8 * 64 and bool((vals > 0).all())
    assert torch.equal(z, batch_topk_dense(few, 8))


def test_training_step_uses_sparse_path_by_default():
    sae, x = make_sae("topk"), make_x()
    assert sparse_enabled()
    assert "rows_E" in sae.training_step(x, TrainContext()).extras
    with dense_reference():
        assert not sparse_enabled()
        assert "z_BN" in sae.training_step(x, TrainContext()).extras
    assert sparse_enabled()
