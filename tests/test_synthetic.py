"""Synthetic planted-feature stores: layout, determinism, the planted power law, one-line errors."""

import json

import numpy as np
import pytest
import torch

from progsae import ProgsaeError
from progsae.data.store import ActivationStore
from progsae.data.synthetic import load_true_features, make_synthetic

pytestmark = pytest.mark.usefixtures("one_thread")  # small torch ops: a 2nd thread only spins on a busy machine


def test_store_layout_and_planted_record(synth_store, synth_true_features):
    store = ActivationStore(synth_store)
    meta = json.loads((synth_store / "meta.json").read_text())
    rec = meta["synthetic"]
    assert store.d_model == 64 and store.num_tokens("train") == rec["tokens"] and store.num_tokens("test") == rec["test_tokens"]
    assert rec["freq_exponent"] == rec["importance_exponent"] == 0.5
    feats, p = synth_true_features["features"], synth_true_features["frequencies"]
    assert feats.shape == (512, 64) and p.shape == (512,)
    assert torch.allclose(feats.norm(dim=1), torch.ones(512), atol=1e-5)
    assert abs(float(p.sum()) - rec["mean_active"]) < 1e-3
    off = (feats @ feats.T - torch.eye(512)).abs().max()
    assert off < 0.35, f"planted features not spread apart: max |cos| {off:.3f}"


def test_planted_frequencies_follow_the_power_law(synth_true_features):
    """The measured firing rates in the train split follow rank^-beta with the planted beta (within 5%)."""
    emp = synth_true_features["empirical_frequencies"].numpy()
    ranks = np.arange(1, emp.size + 1)
    slope = np.polyfit(np.log(ranks), np.log(emp), 1)[0]
    assert abs(-slope - 0.5) < 0.025, slope


def test_token_energy_is_mean_active_times_magnitude_second_moment(synth_store):
    """E||x||^2 = mean_active * E[a^2] (+ noise^2): each token holds mean_active features, a ~ U(low, high)."""
    rec = json.loads((synth_store / "meta.json").read_text())["synthetic"]
    x = torch.cat(list(ActivationStore(synth_store).iter_batches("train", 20000)))[:50000]
    lo, hi = rec["magnitude_low"], rec["magnitude_high"]
    second_moment = (hi**3 - lo**3) / (3 * (hi - lo))
    expected = rec["mean_active"] * second_moment + rec["noise"] ** 2
    assert abs(float(x.pow(2).sum(1).mean()) / expected - 1) < 0.03


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    a = make_synthetic(tmp_path / "a", d_model=16, n_features=32, tokens=3000, seed=1, mean_active=3)
    b = make_synthetic(tmp_path / "b", d_model=16, n_features=32, tokens=3000, seed=1, mean_active=3)
    c = make_synthetic(tmp_path / "c", d_model=16, n_features=32, tokens=3000, seed=2, mean_active=3)
    xa, xb, xc = (next(ActivationStore(p).iter_batches("train", 3000)) for p in (a, b, c))
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    assert torch.equal(load_true_features(a)["features"], load_true_features(b)["features"])


def test_bernoulli_mode_varies_the_count(tmp_path):
    make_synthetic(tmp_path / "s", d_model=16, n_features=64, tokens=20000, mean_active=4, active_count="bernoulli", spread_steps=0)
    emp = load_true_features(tmp_path / "s")["empirical_frequencies"]
    assert abs(float(emp.sum()) - 4) < 0.1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mean_active=0), "mean_active"),
        (dict(freq_exponent=-1), "freq_exponent"),
        (dict(tokens=0), "tokens"),
        (dict(mean_active=200, n_features=256, freq_exponent=2.0), "p > 1"),
        (dict(active_count="sometimes"), "active_count"),
    ],
)
def test_bad_parameters_are_one_line_errors(tmp_path, kwargs, match):
    with pytest.raises(ProgsaeError, match=match) as e:
        make_synthetic(tmp_path / "s", **{"d_model": 8, "n_features": 16, "tokens": 100, **kwargs})
    assert "\n" not in str(e.value)


def test_refuses_to_overwrite_a_store(tmp_path):
    make_synthetic(tmp_path / "s", d_model=8, n_features=16, tokens=100, mean_active=2)
    with pytest.raises(ProgsaeError, match="already holds"):
        make_synthetic(tmp_path / "s", d_model=8, n_features=16, tokens=100, mean_active=2)
