"""Sorting and pruning: permutations change no output, mask/retopk semantics, prefixes, files and errors."""

import json

import pytest
import torch

from progsae import ProgsaeError, SAEConfig, load_sae
from progsae.cli import main
from progsae.progressive import importance, prune, sort_sae
from progsae.progressive.importance import ORDERINGS
from progsae.sae import REGISTRY, sae_class

pytestmark = pytest.mark.usefixtures("one_thread")  # small torch ops: a 2nd thread only spins on a busy machine

D, N, K = 16, 48, 6


def hand_sae(arch: str = "topk", n: int = N, k: int = K, prefixes=None, seed: int = 0):
    """A random SAE with unit-norm decoder rows and varied latent scales (so importance orders differ)."""
    g = torch.Generator().manual_seed(seed)
    sae = sae_class(arch)(SAEConfig(architecture=arch, d_in=D, n_latents=n, k=k, prefixes=prefixes))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D, n, generator=g) * torch.logspace(0, -1.5, n)[torch.randperm(n, generator=g)])
        sae.W_dec.copy_(torch.randn(n, D, generator=g))
        sae.b_enc.copy_(torch.randn(n, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(D, generator=g) * 0.1)
        sae.normalize_decoder()
        for name in sae.extra_tensors:
            getattr(sae, name).uniform_(0.01, 0.1, generator=g)
    return sae


def data(rows: int = 256, seed: int = 1):
    return torch.randn(rows, D, generator=torch.Generator().manual_seed(seed))


ARCHS = sorted(REGISTRY)


@pytest.mark.parametrize("arch", ARCHS + ["matryoshka"])
def test_every_ordering_changes_no_output_and_reloads_exactly(arch, tmp_path):
    sae = hand_sae("topk", prefixes=[8, 24, N]) if arch == "matryoshka" else hand_sae(arch)
    x = data()
    imp = importance(sae, x)
    for order in ORDERINGS:
        sorted_sae = sort_sae(sae, order, importance=imp)
        assert (sorted_sae(x) - sae(x)).abs().max() <= 1e-5, order
        perm = imp.ordering(order)
        assert torch.equal(sorted_sae.encode(x), sae.encode(x)[:, perm]), order
        sorted_sae.save(tmp_path / order)
        again = load_sae(tmp_path / order)
        assert again.cfg == sorted_sae.cfg
        for name, t in sorted_sae.state_dict().items():
            assert torch.equal(again.state_dict()[name], t), (order, name)
        assert torch.equal(again(x), sorted_sae(x))
    ef2 = sort_sae(sae, "ef2", importance=imp)
    assert ef2.cfg.provenance["sorted_by"]["order"] == "ef2"
    assert (importance(ef2, x).score("ef2").diff() <= 1e-12).all()  # now non-increasing in index


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("order", ["unsorted", "ef2", "random"])
def test_retopk_at_full_size_returns_the_original_outputs(arch, order):
    sae, x = hand_sae(arch), data()
    out = prune(sae, N, order=order, mode="retopk", importance=importance(sae, x))
    assert out.n_latents == N and out.cfg.k == K
    assert (out(x) - sae(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("order", ["ef2", "random"])
def test_mask_at_every_size_equals_full_encode_with_dropped_latents_zeroed(arch, order):
    n = 24
    sae, x = hand_sae(arch, n=n), data()
    imp = importance(sae, x)
    perm = imp.ordering(order)
    z_full = sae.encode(x)
    for g in range(1, n + 1):
        out = prune(sae, g, order=order, mode="mask", importance=imp)
        expected = torch.zeros_like(z_full)
        expected[:, perm[:g]] = z_full[:, perm[:g]]
        assert torch.equal(out.encode(x), expected[:, perm]), g  # kept latents first, in importance order
        assert torch.allclose(out(x), sae.decode(expected), atol=1e-5), g
        assert out.cfg.mask_size == g and out.n_latents == n


def test_retopk_takes_topk_within_the_kept_set_and_keeps_per_latent_thresholds():
    x = data()
    sae = hand_sae("topk")
    imp = importance(sae, x)
    keep = imp.ordering("ef2")[:20]
    out = prune(sae, 20, order="ef2", mode="retopk", importance=imp)
    assert out.W_enc.shape == (D, 20) and out.W_dec.shape == (20, D) and out.cfg.k == K
    pre = sae.pre_acts(x)[:, keep].relu()
    vals, idx = pre.topk(K, dim=-1)
    assert torch.equal(out.encode(x), torch.zeros_like(pre).scatter(-1, idx, vals))
    l0 = (out.encode(x) != 0).sum(-1)
    assert (l0 <= K).all() and l0.float().mean() > K - 0.5  # L0 stays k (fewer only where ReLU zeros a pick)
    jr = hand_sae("jumprelu")
    jr_imp = importance(jr, x)
    jr_out = prune(jr, 10, order="ef2", mode="retopk", importance=jr_imp)
    assert torch.equal(jr_out.threshold, jr.threshold[jr_imp.ordering("ef2")[:10]])
    bt = hand_sae("batchtopk")  # its global threshold does not survive retopk: see tests/test_batchtopk_retopk.py
    bt_imp = importance(bt, x)
    bt_out = prune(bt, 10, order="freq", mode="retopk", importance=bt_imp)
    assert bt_out.cfg.architecture == "topk" and "threshold" not in bt_out.state_dict()
    assert torch.allclose(bt_out.pre_acts(x), bt.pre_acts(x)[:, bt_imp.ordering("freq")[:10]], atol=1e-5)
    bt_pre = bt_out.pre_acts(x).relu()  # its own (a 10-column matmul rounds differently from the parent's)
    vals, idx = bt_pre.topk(K, dim=-1)
    assert torch.equal(bt_out.encode(x), torch.zeros_like(bt_pre).scatter(-1, idx, vals))


def test_retopk_with_k_larger_than_size_clamps_k_and_says_so(tmp_path):
    sae, x = hand_sae("topk"), data()
    out = prune(sae, 4, order="ef2", mode="retopk", acts=x)
    assert out.cfg.k == 4 and out.cfg.provenance["prune"]["k_clamped_from"] == K
    out.save(tmp_path / "s")
    assert load_sae(tmp_path / "s").cfg.k == 4
    assert ((out.encode(x) != 0).sum(-1) <= 4).all()


def test_matryoshka_prefix_and_at_size():
    x = data()
    sae = hand_sae("topk", prefixes=[8, 24, N])
    z_full = sae.encode(x)
    for g in (1, 8, 13, 24, N):
        m = sae.at_size(g)  # mask by default: the Matryoshka training-time prefix
        assert torch.equal(m.encode(x)[:, :g], z_full[:, :g]) and not m.encode(x)[:, g:].any()
        assert m.cfg.prefixes == [8, 24, N] and m.cfg.mask_size == g
        r = sae.at_size(g, mode="retopk")
        assert r.n_latents == g and r.cfg.prefixes == [p for p in (8, 24) if p < g] + [g]
        assert r.cfg.provenance["prune"]["order"] == "prefix"
    full = sae.at_size(N, mode="retopk")
    assert (full(x) - sae(x)).abs().max() <= 1e-5


def test_at_size_on_sorted_vanilla_sae_and_clear_error_when_unsorted():
    sae, x = hand_sae("topk"), data()
    with pytest.raises(ProgsaeError, match="sort it first"):
        sae.at_size(8)
    with pytest.raises(ProgsaeError, match="neither"):
        prune(sae, 8, order="prefix")
    imp = importance(sae, x)
    s = sort_sae(sae, "ef2", importance=imp)
    for g in (1, 6, 12, 24, N):
        a = s.at_size(g, mode="retopk")
        b = prune(sae, g, order="ef2", mode="retopk", importance=imp)
        assert torch.equal(a.encode(x), b.encode(x)) and torch.equal(a(x), b(x))
        assert torch.equal(s.at_size(g).encode(x), prune(sae, g, order="ef2", mode="mask", importance=imp).encode(x))
    # a pruned-by-ef2 SAE is itself sorted, so its prefixes are the smaller family members
    p24 = prune(sae, 24, order="ef2", mode="retopk", importance=imp)
    assert torch.equal(p24.at_size(12, mode="retopk")(x), s.at_size(12, mode="retopk")(x))


@pytest.mark.parametrize("size", [0, -3, N + 1])
def test_sizes_out_of_range_are_one_line_errors(size):
    with pytest.raises(ProgsaeError, match=r"out of range.*1\.\.48") as e:
        prune(hand_sae(), size, order="unsorted")
    assert "\n" not in str(e.value)


def test_bad_order_mode_and_mismatched_importance_are_refused():
    sae, x = hand_sae(), data()
    with pytest.raises(ProgsaeError, match="unknown order"):
        prune(sae, 4, order="loudest")
    with pytest.raises(ProgsaeError, match="unknown mode"):
        prune(sae, 4, order="unsorted", mode="crop")
    with pytest.raises(ProgsaeError, match="needs importance"):
        prune(sae, 4, order="ef2")
    other = importance(hand_sae(seed=5), x)
    with pytest.raises(ProgsaeError, match="different SAE"):
        prune(sae, 4, order="ef2", importance=other)


def test_cli_prune_writes_a_standalone_folder_with_provenance(tmp_path, capsys):
    sae, x = hand_sae(), data()
    sae.save(tmp_path / "parent")
    importance(sae, x).save(tmp_path / "imp.json")
    for mode in ("mask", "retopk"):
        out = tmp_path / f"p-{mode}"
        rc = main(["prune", str(tmp_path / "parent"), "--size", "12", "--order", "ef2", "--mode", mode,
                   "--importance", str(tmp_path / "imp.json"), "--out", str(out)])
        assert rc == 0
        cfg = json.loads((out / "cfg.json").read_text())
        rec = cfg["provenance"]["prune"]
        assert (rec["parent"], rec["order"], rec["size"], rec["mode"]) == (str(tmp_path / "parent"), "ef2", 12, mode)
        loaded = load_sae(out)
        expected = prune(sae, 12, order="ef2", mode=mode, importance=tmp_path / "imp.json")
        assert torch.equal(loaded(x), expected(x))
        assert loaded.cfg.provenance["sorted_by"]["order"] == "ef2"  # a reloaded pruned SAE is still progressive
        assert torch.equal(loaded.at_size(5, mode="retopk")(x), prune(sae, 5, order="ef2", mode="retopk", importance=tmp_path / "imp.json")(x))
    rc = main(["prune", str(tmp_path / "parent"), "--size", "99", "--order", "unsorted", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "size 99 is out of range" in err
    rc = main(["prune", str(tmp_path / "parent"), "--size", "8", "--order", "ef2", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "needs importance" in capsys.readouterr().err


def test_pruning_by_ef2_beats_unsorted_and_random_on_held_out_fvu(synth_store, trained_topk):
    """A TopK SAE trained on planted power-law features, pruned to n/8, n/4, n/2 both ways."""
    from progsae.data.store import ActivationStore
    from progsae.evals.common import Variant
    from progsae.evals.reconstruction import evaluate_reconstruction

    sae = load_sae(trained_topk)
    imp = importance(sae, synth_store)  # the store's held-out test split
    n = sae.n_latents
    variants = [
        Variant(f"{order}/{mode}/{g}", prune(sae, g, order=order, mode=mode, importance=imp), size=g, mode=mode)
        for g in (n // 8, n // 4, n // 2) for mode in ("mask", "retopk") for order in ("ef2", "unsorted", "random")
    ]
    fvu = {r.variant: r.fvu for r in evaluate_reconstruction(ActivationStore(synth_store), variants)}
    print(" ".join(f"{k}={v:.3f}" for k, v in fvu.items()))
    for g in (n // 8, n // 4, n // 2):
        for mode in ("mask", "retopk"):
            assert fvu[f"ef2/{mode}/{g}"] < min(fvu[f"unsorted/{mode}/{g}"], fvu[f"random/{mode}/{g}"]), (g, mode)
