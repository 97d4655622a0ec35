"""The trainer on planted-feature data: dictionary recovery, Matryoshka prefixes, resume, normalisation fold, errors."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures.models import torch_threads
from fixtures.synthetic import MATRYOSHKA_PREFIXES, SYNTH_MEAN_ACTIVE, make_synth_store, train_config

from progsae import ProgsaeError, load_sae
from progsae.cli import main as cli_main
from progsae.data.store import ActivationStore, StoreWriter
from progsae.data.synthetic import feature_recovery
from progsae.train import TrainConfig, train_sae
from progsae.train.metrics import read_metrics
from progsae.train.init import strided_sample
from progsae.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # small torch ops: a 2nd thread only spins on a busy machine


def fvu(sae, x_BD: torch.Tensor, keep: int | None = None) -> float:
    """Held-out fraction of variance unexplained; `keep` masks latents >= keep (mask-mode prefix)."""
    with torch.no_grad():
        z = sae.encode(x_BD)
        if keep is not None:
            z[:, keep:] = 0
        x_hat = sae.decode(z)
    return float((x_BD - x_hat).pow(2).sum() / (x_BD - x_BD.mean(0)).pow(2).sum())


def small_cfg(**changes) -> TrainConfig:
    """A quick run for mechanics tests (not for quality)."""
    base = dict(n_latents=128, k=3, steps=30, batch_size=256, lr=3e-3, checkpoint_every=10, log_every=5, heldout_rows=0,
                keep_checkpoint=True)
    return train_config(**{**base, **changes})


@pytest.mark.parametrize("name", ["trained_topk", "trained_batchtopk", "trained_matryoshka"])
def test_recovers_the_planted_dictionary(name, request, synth_true_features, synth_test_acts):
    """512 latents, k = mean active features: mean best cosine >= 0.9 and held-out FVU <= 0.1."""
    sae = load_sae(request.getfixturevalue(name))
    assert sae.n_latents == 512 and sae.cfg.k == SYNTH_MEAN_ACTIVE
    best = feature_recovery(sae.W_dec.detach(), synth_true_features["features"])
    held_out = fvu(sae, synth_test_acts)
    print(f"{name}: mean best cosine {best.mean():.3f}, held-out FVU {held_out:.4f}")
    assert best.mean() >= 0.9
    assert held_out <= 0.1


def test_matryoshka_prefix_beats_vanilla_prefix(trained_topk, trained_matryoshka, synth_test_acts):
    """Same data and seed: every inner Matryoshka prefix reconstructs better than the vanilla SAE's first m latents."""
    vanilla, mat = load_sae(trained_topk), load_sae(trained_matryoshka)
    assert mat.cfg.prefixes == MATRYOSHKA_PREFIXES and vanilla.cfg.prefixes is None
    assert mat.cfg.provenance["train_config"]["seed"] == vanilla.cfg.provenance["train_config"]["seed"]
    for m in MATRYOSHKA_PREFIXES[:-1]:
        f_mat, f_van = fvu(mat, synth_test_acts, keep=m), fvu(vanilla, synth_test_acts, keep=m)
        print(f"prefix {m}: Matryoshka FVU {f_mat:.3f}, vanilla FVU {f_van:.3f}")
        assert f_mat < f_van


def test_importance_of_recovered_latents_follows_the_planted_power_law(trained_topk, synth_test_acts, synth_store):
    """Magnitudes do not depend on rank, so sorted E[f^2] ~ rank^-beta with the planted beta (within 25%)."""
    planted = json.loads((synth_store / "meta.json").read_text())["synthetic"]["importance_exponent"]
    with torch.no_grad():
        imp = load_sae(trained_topk).encode(synth_test_acts).pow(2).mean(0).sort(descending=True).values
    imp = imp[imp > 0].double()
    ranks = torch.arange(1, imp.numel() + 1, dtype=torch.float64)
    slope = torch.linalg.lstsq(torch.stack([ranks.log(), torch.ones_like(ranks)], 1), imp.log()[:, None]).solution[0, 0]
    print(f"planted exponent {planted}, fitted {-float(slope):.3f}")
    assert abs(-float(slope) / planted - 1) <= 0.25


def test_saved_folder_has_provenance_and_metrics(trained_topk):
    sae = load_sae(trained_topk)
    prov = sae.cfg.provenance
    assert prov["trainer"] == "progsae" and prov["steps"] == prov["train_config"]["steps"] == 500
    assert prov["tokens"] == 500 * prov["train_config"]["batch_size"] and prov["wall_time_s"] > 0
    rows = read_metrics(trained_topk)
    every, heldout_every = prov["train_config"]["log_every"], prov["train_config"]["heldout_every"]
    assert rows[-1]["step"] == 500 and [r["step"] for r in rows] == [s for s in range(1, 501) if s % every == 0 or s % heldout_every == 0]
    for key in ("step", "tokens", "loss", "loss_recon", "fvu", "l0", "dead_frac", "lr", "tokens_per_s"):
        assert key in rows[-1]
    assert rows[-1]["fvu"] < 0.5 * rows[0]["fvu"]
    assert sae.cfg.normalization["kind"] == "scalar" and sae.cfg.normalization["folded"]


def test_input_scale_fold_gives_identical_reconstructions(tmp_path, synth_store, synth_test_acts):
    """The saved SAE acts on raw inputs exactly as the trained one acts on scaled inputs (rescaled back)."""
    trainer = Trainer(ActivationStore(synth_store), tmp_path / "run", small_cfg(steps=20), resume=False, progress=False)
    saved = trainer.run()
    scale = trainer.state.input_scale
    assert abs(scale - 1) > 0.1  # the synthetic data is not already normalised, so the fold matters
    x = synth_test_acts[:2000]
    with torch.no_grad():
        on_scaled = trainer.sae(x * scale) / scale
        on_raw = load_sae(tmp_path / "run")(x)
    assert torch.allclose(on_raw, on_scaled, atol=1e-5, rtol=1e-5)
    assert torch.allclose(saved(x), on_raw, atol=1e-6)


def test_heldout_fvu_is_logged_on_validation_rows(tmp_path, synth_store):
    """heldout_fvu every heldout_every steps and at the end; the last equals the saved SAE's FVU on the sample."""
    store = ActivationStore(synth_store)
    train_sae(store, tmp_path / "run", small_cfg(steps=40, heldout_rows=512, heldout_every=15, log_every=10), progress=False)
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows if "heldout_fvu" in r] == [15, 30, 40]
    assert [r["step"] for r in rows] == [10, 15, 20, 30, 40]
    sample = strided_sample(store, 512, "validation")
    assert sample.shape[0] == 512
    assert rows[-1]["heldout_fvu"] == pytest.approx(fvu(load_sae(tmp_path / "run"), sample), rel=1e-4)
    assert rows[-1]["heldout_fvu"] < rows[1]["heldout_fvu"]
    train_sae(store, tmp_path / "off", small_cfg(steps=20, heldout_rows=0), progress=False)
    assert not any("heldout_fvu" in r for r in read_metrics(tmp_path / "off"))


def test_a_finished_run_deletes_its_checkpoint_unless_asked_to_keep_it(tmp_path, synth_store):
    sae = train_sae(synth_store, tmp_path / "run", small_cfg(steps=10, keep_checkpoint=False), progress=False)
    assert not (tmp_path / "run" / "checkpoint").exists() and (tmp_path / "run" / "cfg.json").exists()
    assert torch.equal(load_sae(tmp_path / "run").W_dec, sae.W_dec)
    again = train_sae(synth_store, tmp_path / "run", small_cfg(steps=10, keep_checkpoint=False), resume=True, progress=False)
    assert torch.equal(again.W_dec, sae.W_dec)  # the same job, finished: resume returns it
    with pytest.raises(ProgsaeError, match=r"another run \(steps differ\)"):
        train_sae(synth_store, tmp_path / "run", small_cfg(steps=12, keep_checkpoint=False), resume=True, progress=False)
    train_sae(synth_store, tmp_path / "kept", small_cfg(steps=10, keep_checkpoint=True), progress=False)
    assert (tmp_path / "kept" / "checkpoint" / "checkpoint.safetensors").exists()


def test_relu_l1_trains(tmp_path, synth_store, synth_test_acts):
    sae = train_sae(synth_store, tmp_path / "relu", small_cfg(arch="relu", k=None, steps=60, batch_size=512), progress=False)
    rows = read_metrics(tmp_path / "relu")
    assert sae.cfg.architecture == "relu" and sae.cfg.k is None
    assert rows[-1]["loss_l1"] > 0 and rows[-1]["l1_coef"] == pytest.approx(1.0)
    assert rows[-1]["fvu"] < 0.6 * rows[0]["fvu"]
    assert fvu(sae, synth_test_acts) < 0.6


def _max_diff(a, b) -> float:
    return max(float((a.state_dict()[k] - b.state_dict()[k]).abs().max()) for k in a.state_dict())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, synth_store):
    out = tmp_path_factory.mktemp("resume") / "full"
    with torch_threads(1):  # the same thread count as the interrupted runs (one_thread), so results match bit for bit
        return train_sae(synth_store, out, small_cfg(matryoshka_random=3), progress=False), out


def test_ctrl_c_then_resume_equals_uninterrupted(tmp_path, synth_store, uninterrupted):
    """Ctrl-C mid-run checkpoints the last finished step; --resume then ends on the same weights."""
    out = tmp_path / "run"
    trainer = Trainer(ActivationStore(synth_store), out, small_cfg(matryoshka_random=3), resume=False, progress=False)

    def interrupt(step):
        if step == 13:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        trainer.run(on_step=interrupt)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 14 and not (out / "cfg.json").exists()
    resumed = train_sae(synth_store, out, small_cfg(matryoshka_random=3), resume=True, progress=False)
    full, full_dir = uninterrupted
    assert _max_diff(resumed, full) <= 1e-6
    assert [r["step"] for r in read_metrics(out)] == [r["step"] for r in read_metrics(full_dir)]


KILL_SCRIPT = """
import os, signal, sys, torch
torch.set_num_threads(int(sys.argv[3]))
sys.path.insert(0, sys.argv[4])
from fixtures.synthetic import train_config
from progsae.data.store import ActivationStore
from progsae.train.trainer import Trainer
cfg = train_config(n_latents=128, k=3, steps=30, batch_size=256, lr=3e-3, checkpoint_every=10, log_every=5, matryoshka_random=3,
                   heldout_rows=0)
t = Trainer(ActivationStore(sys.argv[1]), sys.argv[2], cfg, resume=False, progress=False)
t.run(on_step=lambda s: os.kill(os.getpid(), signal.SIGKILL) if s == 26 else None)
"""


def test_kill_then_resume_equals_uninterrupted(tmp_path, synth_store, uninterrupted):
    """SIGKILL (no chance to clean up) at step 26: resume from the step-20 checkpoint gives the same weights."""
    out = tmp_path / "run"
    tests_dir = str(Path(__file__).parent)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(synth_store), str(out), str(torch.get_num_threads()), tests_dir],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 20
    assert read_metrics(out)[-1]["step"] == 25  # logged after the last checkpoint: redone on resume
    resumed = train_sae(synth_store, out, small_cfg(matryoshka_random=3), resume=True, progress=False)
    full, full_dir = uninterrupted
    assert _max_diff(resumed, full) <= 1e-6
    assert read_metrics(out) != [] and [r["step"] for r in read_metrics(out)] == [r["step"] for r in read_metrics(full_dir)]


def test_resume_refuses_a_different_config_or_store(tmp_path, synth_store):
    out = tmp_path / "run"
    train_sae(synth_store, out, small_cfg(steps=10), progress=False)
    with pytest.raises(ProgsaeError, match="already holds a training run"):
        train_sae(synth_store, out, small_cfg(steps=10), progress=False)
    with pytest.raises(ProgsaeError, match=r"different configuration \(lr: 0.003 -> 0.001\)"):
        train_sae(synth_store, out, small_cfg(steps=10, lr=1e-3), resume=True, progress=False)
    (out / "checkpoint" / "checkpoint.safetensors").unlink()
    with pytest.raises(ProgsaeError, match=r"another run \(lr differ\) and no checkpoint/ to resume from"):
        train_sae(synth_store, out, small_cfg(steps=10, lr=1e-3), resume=True, progress=False)
    train_sae(synth_store, tmp_path / "run2", small_cfg(steps=10), progress=False)
    out = tmp_path / "run2"
    other = make_synth_store(tmp_path / "d32", d_model=32, n_features=64, tokens=3000, test_tokens=0)
    with pytest.raises(ProgsaeError, match="d_model=32 but the checkpoint was trained on d_model=64"):
        train_sae(other, out, small_cfg(steps=10), resume=True, progress=False)


def test_nan_batch_is_refused(tmp_path):
    path = tmp_path / "nan"
    w = StoreWriter(path, {"model": "m", "hook": None, "d_model": 8, "context_length": None}, "train", shard_tokens=512)
    w.add(torch.randn(512, 8))
    w.add(torch.randn(512, 8))
    w.close()
    from safetensors.torch import save_file

    bad = torch.randn(512, 8)
    bad[100, 3] = float("nan")
    save_file({"acts": bad}, str(path / "train-00001.safetensors"))
    cfg = small_cfg(n_latents=16, steps=20, batch_size=64, init_sample=64)
    with pytest.raises(ProgsaeError, match=r"train-00001.safetensors: row 100 holds NaN or inf") as e:  # refused as the store is read, not mid-run
        train_sae(path, tmp_path / "out", cfg, progress=False)
    assert "\n" not in str(e.value)



def test_float16_overflow_is_refused_when_collected(tmp_path):
    from progsae.data.store import StoreWriter

    w = StoreWriter(tmp_path / "f16", {"model": "m", "hook": None, "d_model": 8, "context_length": None}, "train",
                    storage_dtype="float16")
    big = torch.randn(16, 8)
    big[3, 2] = 1e5  # finite in float32, inf in float16
    with pytest.raises(ProgsaeError, match=r"overflow float16 \(max \|a\| = 1e\+05\); collect with storage dtype float32"):
        w.add(big)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(arch="gated"), "--arch must be one of"),
        (dict(k=0), "--k must be in"),
        (dict(matryoshka=[64, 32, 128]), "strictly increase"),
        (dict(matryoshka=[32, 64]), "must equal the dictionary size"),
        (dict(matryoshka=[64, 128], matryoshka_random=3), "not both"),
        (dict(steps=None), "exactly one of --steps or --tokens"),
        (dict(batch_size=10**6), "fewer than one batch"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, synth_store, changes, match):
    with pytest.raises(ProgsaeError, match=match) as e:
        train_sae(synth_store, tmp_path / "out", small_cfg(**changes), progress=False)
    assert "\n" not in str(e.value)


def test_cli_synth_and_train_round_trip(tmp_path, capsys):
    acts, out = tmp_path / "acts", tmp_path / "sae"
    assert cli_main(["synth", "--out", str(acts), "--d-model", "16", "--features", "32", "--tokens", "4000", "--seed", "3"]) == 0
    meta = json.loads((acts / "meta.json").read_text())
    assert meta["d_model"] == 16 and meta["synthetic"]["n_features"] == 32 and (acts / "true_features.safetensors").exists()
    argv = ["train", "--acts", str(acts), "--arch", "batchtopk", "--latents", "64", "--k", "3", "--matryoshka", "16,64",
            "--steps", "20", "--batch-size", "256", "--seed", "1", "--quiet", "--out", str(out)]
    assert cli_main(argv) == 0
    sae = load_sae(out)
    assert sae.cfg.architecture == "batchtopk" and sae.cfg.prefixes == [16, 64] and float(sae.threshold) > 0
    assert sae.cfg.provenance["train_config"]["seed"] == 1
    assert "wrote" in capsys.readouterr().out
    assert cli_main(argv) == 2  # out already holds a run
    assert "already holds a training run" in capsys.readouterr().err
    assert cli_main(argv + ["--resume"]) == 0  # finished run: resume just re-exports it
    assert torch.equal(load_sae(out).W_dec, sae.W_dec)
    assert cli_main(["train", "--acts", str(acts), "--latents", "64", "--steps", "5", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "needs --k" in err


def test_cli_train_without_a_length_runs_one_epoch(tmp_path, synth_store, capsys):
    out = tmp_path / "sae"
    assert cli_main(["train", "--acts", str(synth_store), "--out", str(out), "--latents", "64", "--k", "3",
                     "--batch-size", "1024", "--quiet"]) == 0
    kept = ActivationStore(synth_store).num_tokens("train")
    prov = load_sae(out).cfg.provenance
    assert prov["steps"] == -(-kept // 1024) and prov["tokens"] == prov["steps"] * 1024
    assert f"one epoch, {kept} tokens" in capsys.readouterr().err
