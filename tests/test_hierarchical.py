"""Hierarchical (multi-k) SAEs: the --k-levels setting, at_k cuts and their (G, k') families, planted recovery."""

from __future__ import annotations

import pytest
import torch
from fixtures.synthetic import make_synth_store, train_config

from progsae import ProgsaeError, SAEConfig, at_k, load_sae
from progsae.cli import main as cli_main
from progsae.data.store import ActivationStore
from progsae.sae import sae_class
from progsae.train import TrainConfig, train_sae

pytestmark = pytest.mark.usefixtures("one_thread")


def small_cfg(**changes) -> TrainConfig:
    base = dict(n_latents=128, k=4, steps=12, batch_size=256, lr=3e-3, checkpoint_every=4, log_every=4, heldout_rows=0,
                keep_checkpoint=True)
    return train_config(**{**base, **changes})


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(k_levels=[1, 2]), "last of --k-levels must equal --k 4"),
        (dict(k_levels=[2, 1, 4]), "strictly increasing"),
        (dict(k_levels=[0, 4]), "positive"),
        (dict(k_levels=[2, 4], k_level_weights=[1.0]), "1 --k-level-weights for 2 --k-levels"),
        (dict(k_level_weights=[1.0]), "without --k-levels"),
        (dict(k_levels=[2, 4], k_level_weights=[-1.0, 1.0]), "non-negative"),
        (dict(arch="relu", k_levels=[2, 4]), "needs --arch topk or batchtopk"),
    ],
)
def test_bad_k_levels_are_one_line_errors(tmp_path, synth_store, changes, match):
    with pytest.raises(ProgsaeError, match=match) as e:
        train_sae(synth_store, tmp_path / "out", small_cfg(**changes), progress=False)
    assert "\n" not in str(e.value)


def test_k_levels_are_recorded_logged_and_guard_resume(tmp_path, synth_store):
    """The levels reach the SAE's provenance and its loss terms; resuming with other levels is refused."""
    out = tmp_path / "run"
    sae = train_sae(synth_store, out, small_cfg(k_levels=[1, 2, 4], matryoshka=[32, 128]), progress=False)
    prov = sae.cfg.provenance
    assert prov["k_levels"] == {"levels": [1, 2, 4], "weights": [pytest.approx(1 / 3)] * 3}
    assert prov["train_config"]["k_levels"] == [1, 2, 4]
    from progsae.train.metrics import read_metrics

    last = read_metrics(out)[-1]
    assert {f"loss_recon_{m}_k{j}" for m in (32, 128) for j in (1, 2, 4)} <= set(last)
    assert last["loss_recon_32_k1"] > last["loss_recon_128_k4"]
    with pytest.raises(ProgsaeError, match=r"k_levels: \[1, 2, 4\] -> \[2, 4\]"):
        train_sae(synth_store, out, small_cfg(k_levels=[2, 4], matryoshka=[32, 128]), resume=True, progress=False)


def test_cli_train_takes_k_levels(tmp_path, synth_store, capsys):
    def argv(out, levels):
        return ["train", "--acts", str(synth_store), "--out", str(out), "--arch", "batchtopk", "--latents", "64",
                "--k", "4", "--k-levels", levels, "--k-level-weights", "0.75,0.25", "--steps", "5", "--batch-size", "256",
                "--quiet"]

    assert cli_main(argv(tmp_path / "sae", "1,4")) == 0
    assert load_sae(tmp_path / "sae").cfg.provenance["k_levels"] == {"levels": [1, 4], "weights": [0.75, 0.25]}
    assert cli_main(argv(tmp_path / "other", "1,3")) == 2
    assert "must equal --k 4" in capsys.readouterr().err


# ---- at_k: the k' member of a family, and (G, k') cuts ------------------------------------------------------
D, N, K = 16, 48, 8


def hand_sae(arch: str, prefixes=None, seed: int = 0):
    """A random SAE with unit-norm decoder rows; BatchTopK gets a threshold giving about K latents per row."""
    g = torch.Generator().manual_seed(seed)
    sae = sae_class(arch)(SAEConfig(architecture=arch, d_in=D, n_latents=N, k=K, prefixes=prefixes))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D, N, generator=g) * torch.logspace(0, -1, N))
        sae.W_dec.copy_(torch.randn(N, D, generator=g))
        sae.b_enc.copy_(torch.randn(N, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(D, generator=g) * 0.1)
        sae.normalize_decoder()
    if arch == "batchtopk":
        sae = at_k(sae, K, rows(4096, seed=9))
    return sae


def rows(n: int = 512, seed: int = 1):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def assert_same_sae(a, b, x):
    """Same class, tensors, config (provenance aside: it records the order of the cuts) and outputs."""
    assert type(a) is type(b)
    assert {**a.cfg.__dict__, "provenance": None} == {**b.cfg.__dict__, "provenance": None}
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a.encode(x), b.encode(x)) and torch.equal(a(x), b(x))


def test_topk_at_k_keeps_each_rows_largest_activations():
    sae, x = hand_sae("topk"), rows()
    with torch.no_grad():
        z, z2 = sae.encode(x), sae.at_k(2).encode(x)
    assert ((z2 > 0).sum(-1) == 2).all()
    expected = torch.zeros_like(z).scatter(-1, z.topk(2, dim=-1).indices, z.topk(2, dim=-1).values)
    assert torch.equal(z2, expected)
    assert sae.at_k(2).cfg.provenance["at_k"] == {"k": 2, "k_parent": K}
    with pytest.raises(ProgsaeError, match=r"k 9 is out of range: this SAE keeps 8 latents per row"):
        sae.at_k(9)


def test_batchtopk_at_k_threshold_gives_mean_l0_on_held_out_rows():
    sae = hand_sae("batchtopk")
    with pytest.raises(ProgsaeError, match="needs held-out rows to calibrate"):
        sae.at_k(2)
    cut = sae.at_k(2, rows(4096, seed=2))
    rec = cut.cfg.provenance["at_k"]
    assert rec["calibration"]["rows"] == 4096 and rec["calibration"]["mean_l0"] == pytest.approx(2.0, abs=1e-3)
    assert 0 < float(cut.threshold) and float(cut.threshold) > float(sae.threshold)
    with torch.no_grad():
        l0_fresh = (cut.encode(rows(4096, seed=3)) > 0).sum(-1).float().mean().item()
        l0_parent = (sae.encode(rows(4096, seed=3)) > 0).sum(-1).float().mean().item()
    assert abs(l0_fresh - 2) < 0.1 and abs(l0_parent - K) < 0.3  # a threshold generalises to other rows


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
@pytest.mark.parametrize("mode", ["mask", "retopk"])
def test_at_k_and_at_size_commute_and_reload(arch, mode, tmp_path):
    """(G, k') cuts of a Matryoshka SAE: either order gives the same SAE, and its folder reloads with the same outputs."""
    sae, x, calib = hand_sae(arch, prefixes=[12, 24, N]), rows(), rows(2048, seed=5)
    for g, kk in [(12, 2), (24, 5), (N, 3)]:
        a = sae.at_k(kk, calib).at_size(g, mode=mode)
        b = sae.at_size(g, mode=mode).at_k(kk, calib)
        assert_same_sae(a, b, x)
        a.save(tmp_path / f"{g}-{kk}")
        again = load_sae(tmp_path / f"{g}-{kk}")
        assert_same_sae(again, a, x)
        assert again.cfg.provenance == a.cfg.provenance and again.cfg.provenance["at_k"]["k"] == kk


def test_cli_prune_k_alone_and_with_size(tmp_path, capsys):
    store = make_synth_store(tmp_path / "store", d_model=D, n_features=32, tokens=6000, test_tokens=2000, mean_active=2)
    parent = hand_sae("batchtopk", prefixes=[12, N])
    parent.save(tmp_path / "parent")
    x = rows()
    assert cli_main(["prune", str(tmp_path / "parent"), "--k", "3", "--acts", str(store), "--out", str(tmp_path / "k3")]) == 0
    out = capsys.readouterr().out
    assert "k 3 (parent k 8)" in out and "validation rows" in out
    k3 = load_sae(tmp_path / "k3")
    assert k3.cfg.k == 3 and k3.cfg.provenance["at_k"]["calibration"]["split"] == "validation"
    assert torch.equal(k3(x), at_k(parent, 3, ActivationStore(store), split="validation")(x))
    argv = ["prune", str(tmp_path / "parent"), "--k", "3", "--acts", str(store), "--size", "12", "--order", "prefix",
            "--mode", "retopk", "--out", str(tmp_path / "g12k3")]
    assert cli_main(argv) == 0
    both = load_sae(tmp_path / "g12k3")
    assert both.cfg.architecture == "topk" and both.n_latents == 12 and both.cfg.k == 3
    assert torch.equal(both(x), parent.at_size(12, mode="retopk").at_k(3)(x))
    capsys.readouterr()
    assert cli_main(["prune", str(tmp_path / "parent"), "--k", "3", "--out", str(tmp_path / "bad")]) == 2
    assert "calibrate" in capsys.readouterr().err
    assert cli_main(["prune", str(tmp_path / "parent"), "--out", str(tmp_path / "bad")]) == 2
    assert "give --size G, --k K or both" in capsys.readouterr().err


# ---- planted features: one hierarchical SAE serves every k ---------------------------------------------------
def test_hierarchical_sae_beats_plain_topk_cut_to_fewer_latents(tmp_path):
    """d 32, 128 planted features, ~8 active per token (Bernoulli): both SAEs have k 8, same data, seed and steps.

    At k' = k/4 the hierarchical SAE (levels 2, 4, 8) has lower held-out FVU than the plain TopK SAE cut to k/4
    (paired bootstrap interval over test contexts below zero); at k' = k it is within 5% of it."""
    from progsae.data.synthetic import make_synthetic
    from progsae.evals.bootstrap import paired
    from progsae.evals.common import Variant
    from progsae.evals.reconstruction import evaluate_reconstruction

    store = make_synthetic(tmp_path / "store", d_model=32, n_features=128, tokens=40_000, test_tokens=8_000,
                           mean_active=8, active_count="bernoulli", seed=0)
    recipe = dict(n_latents=128, k=8, steps=500, batch_size=1024, lr=1e-2, dead_window=10_000, heldout_rows=0)
    plain = train_sae(store, tmp_path / "plain", train_config(**recipe), progress=False)
    hier = train_sae(store, tmp_path / "hier", train_config(**recipe, k_levels=[2, 4, 8]), progress=False)
    variants = [Variant(f"{name}@k{kk}", sae.at_k(kk)) for kk in (2, 8) for name, sae in (("plain", plain), ("hier", hier))]
    res = {r.variant: r for r in evaluate_reconstruction(ActivationStore(store), variants)}
    quarter = paired(res["hier@k2"].fvu, res["plain@k2"].fvu, res["hier@k2"]._replicates["fvu"],
                     res["plain@k2"]._replicates["fvu"], better=-1)
    print(f"k'=2: hierarchical {quarter.a:.4f} plain {quarter.b:.4f} diff CI {quarter.ci}; "
          f"k'=8: hierarchical {res['hier@k8'].fvu:.4f} plain {res['plain@k8'].fvu:.4f}")
    assert quarter.outcome == "win" and quarter.ci[1] < 0
    assert res["hier@k8"].fvu <= 1.05 * res["plain@k8"].fvu
