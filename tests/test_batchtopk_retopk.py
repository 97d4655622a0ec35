"""BatchTopK pruned in retopk mode: per-row TopK_k within the kept latents (L0 stays k), unlike mask mode.

A BatchTopK SAE encodes with one global threshold calibrated for all n latents; kept as is on G < n latents it
would give mask mode's codes (L0 shrinks). Its retopk prune is a TopK SAE of the G latents with the same k.
"""

import pytest
import torch

from progsae import SAEConfig, load_sae
from progsae.progressive import importance, prune
from test_prune import hand_sae

pytestmark = pytest.mark.usefixtures("one_thread")

D, N, K = 16, 256, 8
G = N // 4


def calibrated_batchtopk(prefixes=None, seed: int = 0):
    """A random BatchTopK SAE whose threshold gives full-size mean L0 = k on random rows (as training would)."""
    sae = hand_sae("batchtopk", n=N, k=K, prefixes=prefixes, seed=seed)  # the threshold it draws is replaced below
    with torch.no_grad():
        cal = rows(4096, seed=seed + 100)
        sae.threshold.copy_(sae.pre_acts(cal).relu().flatten().topk(K * cal.shape[0]).values[-1])
    return sae


def rows(n: int = 2048, seed: int = 1):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def mean_l0(sae, x) -> float:
    with torch.no_grad():
        return float((sae.encode(x) != 0).sum(-1).float().mean())


def is_topk_within(pruned, parent, x, keep, k) -> bool:
    """The pruned SAE's codes are per-row TopK_k of the parent's ReLU pre-activations restricted to `keep`.

    Its pre-activations equal the parent's kept columns up to rounding (a narrower matmul sums differently),
    so the TopK is checked exactly on its own pre-activations."""
    with torch.no_grad():
        pre = pruned.pre_acts(x)
        if not torch.allclose(pre, parent.pre_acts(x)[:, keep], atol=1e-5):
            return False
        vals, idx = pre.relu().topk(k, dim=-1)
        return torch.equal(pruned.encode(x), torch.zeros_like(pre).scatter(-1, idx, vals))


@pytest.mark.parametrize("order", ["random", "unsorted", "ef2"])
def test_retopk_keeps_l0_k_while_mask_l0_shrinks(order, tmp_path):
    sae = calibrated_batchtopk()
    x, held_out = rows(seed=1), rows(seed=2)
    assert abs(mean_l0(sae, held_out) - K) <= 0.05 * K  # the threshold is calibrated at full size
    imp = importance(sae, x)
    keep = imp.ordering(order)[:G]
    mask = prune(sae, G, order=order, mode="mask", importance=imp)
    ret = prune(sae, G, order=order, mode="retopk", importance=imp)

    # mask mode is unchanged: the full BatchTopK encoder, threshold kept, dropped latents zeroed
    assert mask.cfg.architecture == "batchtopk" and mask.cfg.mask_size == G and mask.n_latents == N
    assert torch.equal(mask.threshold, sae.threshold)
    expected = torch.zeros_like(sae.encode(held_out))
    expected[:, keep] = sae.encode(held_out)[:, keep]
    assert torch.equal(mask.encode(held_out), expected[:, imp.ordering(order)])
    if order != "ef2":  # ef2 keeps the high-scale latents that carry most codes; any G/n share shrinks L0
        assert mean_l0(mask, held_out) < 0.5 * K

    # retopk: a TopK SAE of the G kept latents with the same k
    assert ret.cfg.architecture == "topk" and ret.n_latents == G and ret.cfg.k == K and ret.cfg.mask_size is None
    assert "threshold" not in ret.state_dict()
    assert abs(mean_l0(ret, held_out) - K) <= 0.05 * K
    assert is_topk_within(ret, sae, held_out, keep, K)
    assert not torch.allclose(ret(held_out), mask(held_out), atol=1e-3)
    rec = ret.cfg.provenance["prune"]
    assert (rec["mode"], rec["architecture_parent"], rec["k"], rec["size"]) == ("retopk", "batchtopk", K, G)
    assert "per-row top-k" in rec["inference"]

    ret.save(tmp_path / "r")
    again = load_sae(tmp_path / "r")
    assert again.cfg == ret.cfg and type(again) is type(ret)
    assert torch.equal(again.encode(held_out), ret.encode(held_out)) and torch.equal(again(held_out), ret(held_out))


def test_retopk_at_full_size_keeps_the_threshold_and_outputs():
    sae, x = calibrated_batchtopk(), rows()
    out = prune(sae, N, order="ef2", mode="retopk", importance=importance(sae, x))
    assert out.cfg.architecture == "batchtopk" and torch.equal(out.threshold, sae.threshold)
    assert "architecture_parent" not in out.cfg.provenance["prune"]
    assert (out(x) - sae(x)).abs().max() <= 1e-5


def test_untrained_threshold_retopk_outputs_are_unchanged():
    """Before any step (threshold -1) BatchTopK already encodes with per-row TopK: retopk gives the same codes."""
    sae, x = calibrated_batchtopk(), rows()
    with torch.no_grad():
        sae.threshold.fill_(-1.0)
    imp = importance(sae, x)
    ret = prune(sae, G, order="ef2", mode="retopk", importance=imp)
    old_style = sae.select(imp.ordering("ef2")[:G])  # the previous retopk: same class, threshold kept
    assert torch.equal(ret.encode(x), old_style.encode(x))


def test_matryoshka_batchtopk_prefix_follows_the_same_rule(tmp_path):
    prefixes = [32, 64, 128, N]
    sae, x = calibrated_batchtopk(prefixes=prefixes), rows()
    for g in (32, 48, 64, 128):
        m = sae.at_size(g)  # mask: the prefix as trained, threshold kept
        assert m.cfg.architecture == "batchtopk" and m.cfg.mask_size == g and m.cfg.prefixes == prefixes
        assert torch.equal(m.encode(x)[:, :g], sae.encode(x)[:, :g]) and not m.encode(x)[:, g:].any()
        r = sae.at_size(g, mode="retopk")
        assert r.cfg.architecture == "topk" and r.n_latents == g and r.cfg.k == K
        assert r.cfg.prefixes == [p for p in prefixes if p < g] + [g]
        assert r.cfg.provenance["prune"]["order"] == "prefix"
        assert is_topk_within(r, sae, x, torch.arange(g), K)
        assert abs(mean_l0(r, x) - K) <= 0.05 * K and mean_l0(m, x) < mean_l0(r, x)
    r = sae.at_size(64, mode="retopk")
    r.save(tmp_path / "r64")
    again = load_sae(tmp_path / "r64")
    assert again.cfg == r.cfg and torch.equal(again(x), r(x))
    # a retopk prefix is itself progressive: its own prefixes are the smaller family members
    assert torch.equal(again.at_size(32, mode="retopk")(x), sae.at_size(32, mode="retopk")(x))
    # a mask-mode prefix cut again in retopk mode is the same smaller SAE
    assert torch.equal(sae.at_size(64).at_size(48, mode="retopk")(x), sae.at_size(48, mode="retopk")(x))
    assert (sae.at_size(N, mode="retopk")(x) - sae(x)).abs().max() <= 1e-5


def test_trained_batchtopk_retopk_l0_is_k_on_held_out_data(trained_batchtopk, synth_test_acts, tmp_path):
    sae = load_sae(trained_batchtopk)
    k, n = sae.cfg.k, sae.n_latents
    x = synth_test_acts
    imp = importance(sae, x)
    for order in ("ef2", "random"):
        mask = prune(sae, n // 4, order=order, mode="mask", importance=imp)
        ret = prune(sae, n // 4, order=order, mode="retopk", importance=imp)
        assert mean_l0(mask, x) < 0.7 * k, order
        assert abs(mean_l0(ret, x) - k) <= 0.05 * k, order
        with torch.no_grad():
            assert not torch.allclose(ret(x), mask(x), atol=1e-4), order
        ret.save(tmp_path / order)
        with torch.no_grad():
            assert torch.equal(load_sae(tmp_path / order)(x), ret(x)), order
