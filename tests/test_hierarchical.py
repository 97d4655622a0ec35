"""Hierarchical (multi-k) SAEs: the --k-levels setting, at_k cuts and their (G, k') families, planted recovery."""

from __future__ import annotations

import pytest
import torch
from fixtures.synthetic import train_config

from progsae import ProgsaeError, load_sae
from progsae.cli import main as cli_main
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
