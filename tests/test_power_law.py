"""Power-law analysis: recovery of planted exponents, rejection on controls, bootstrap, share curve, figure."""

import json

import numpy as np
import pytest

from progsae import ProgsaeError
from progsae.progressive import PowerLawSettings, cumulative_share, fit_power_law
from progsae.report.figures import power_law_figure

pytestmark = pytest.mark.usefixtures("one_thread")  # small torch ops: a 2nd thread only spins on a busy machine


def planted(alpha: float, n: int = 3000, noise: float = 0.05, dead: int = 0, seed: int = 0) -> np.ndarray:
    """I_(r) = r^-alpha with multiplicative noise, shuffled, plus `dead` zeros."""
    rng = np.random.default_rng(seed)
    v = np.arange(1, n + 1, dtype=float) ** -alpha * np.exp(rng.normal(0, noise, n))
    return rng.permutation(np.concatenate([v, np.zeros(dead)]))


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_planted_rank_exponent_is_recovered_by_both_fits(alpha):
    fit = fit_power_law(planted(alpha, dead=100), n_boot=50)
    assert fit.n_live == 3000 and fit.n_total == 3100
    assert abs(fit.alpha - alpha) <= 0.03 * alpha and fit.r2 >= 0.99
    assert fit.alpha_ci[0] <= alpha <= fit.alpha_ci[1]
    assert abs(fit.mle.alpha_rank - alpha) <= 0.1 * alpha  # gamma = 1 + 1/alpha
    assert fit.mle.comparisons["exponential"].preferred == "power_law"
    assert "lognormal" not in fit.rejected_for and fit.mle_error is None


def test_uniform_importance_rejects_the_power_law_and_fits_worse():
    pl = fit_power_law(planted(0.7, noise=0.2), n_boot=0)
    flat = fit_power_law(np.exp(np.random.default_rng(1).normal(0, 0.2, 3000)), n_boot=0)
    assert set(flat.rejected_for) == {"lognormal", "exponential"}
    assert all(flat.mle.comparisons[a].R < 0 and flat.mle.comparisons[a].p < 1e-3 for a in ("lognormal", "exponential"))
    assert pl.r2 - flat.r2 >= 0.05 and flat.alpha < 0.3


def test_fit_range_is_a_setting_and_the_default_skips_head_and_tail():
    v = planted(1.0, n=1000)
    assert fit_power_law(v, n_boot=0).fit_range == (10, 900)
    assert fit_power_law(v, fit_lo=0.0, fit_hi=1.0, n_boot=0).fit_range == (1, 1000)
    # a bent head is ignored by the default range but spoils a fit over every rank
    bent = np.sort(v)[::-1].copy()
    bent[:10] *= 30
    assert abs(fit_power_law(bent, n_boot=0).alpha - 1.0) < 0.05
    assert abs(fit_power_law(bent, fit_lo=0.0, n_boot=0).alpha - 1.0) > 0.05
    with pytest.raises(ProgsaeError, match="fit range"):
        fit_power_law(v, fit_lo=0.5, fit_hi=0.2)


def test_bootstrap_is_seeded():
    v = planted(1.0, noise=0.3)
    a = fit_power_law(v, n_boot=40, seed=3).alpha_ci
    assert fit_power_law(v, n_boot=40, seed=3).alpha_ci == a
    assert fit_power_law(v, n_boot=40, seed=4).alpha_ci != a
    assert a[0] < a[1]


def test_cumulative_share_curve():
    v = np.array([1.0, 0.0, 4.0, 3.0, 2.0])
    share = cumulative_share(v)
    assert np.allclose(share, [0.4, 0.7, 0.9, 1.0, 1.0])
    fit = fit_power_law(planted(1.0, n=100, dead=20), n_boot=0)
    s = np.asarray(fit.cumulative_share)
    assert s.size == 120 and np.all(np.diff(s) >= 0) and s[-1] == pytest.approx(1.0)
    assert s[fit.size_for_share["0.9"] - 1] >= 0.9 > s[fit.size_for_share["0.9"] - 2]


def test_degenerate_inputs_are_one_line_errors():
    with pytest.raises(ProgsaeError, match="too few"):
        fit_power_law(np.array([1.0, 0.5, 0, 0, 0, 0]))
    with pytest.raises(ProgsaeError, match="NaN or inf"):
        fit_power_law(np.array([1.0, np.nan] * 5))


def test_record_is_json_and_figure_is_written(tmp_path):
    v = planted(1.0, dead=50)
    fit = fit_power_law(v, PowerLawSettings(n_boot=20))
    d = fit.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["settings"]["fit_lo"] == 0.01 and len(d["alpha_ci"]) == 2
    out = power_law_figure(v, tmp_path / "fig" / "pl.png", fit=fit, title="planted alpha=1")
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


# ---- trained SAEs on planted-feature data (shared fixtures) ----------------------------------------
def _trained_fit(store, sae_path):
    from progsae import load_sae
    from progsae.progressive import importance

    return fit_power_law(importance(load_sae(sae_path), store).score("ef2"), n_boot=100)


def test_trained_topk_importance_follows_the_planted_power_law(synth_store, trained_topk):
    from fixtures.synthetic import SYNTH_FREQ_EXPONENT

    fit = _trained_fit(synth_store, trained_topk)
    print(f"planted {SYNTH_FREQ_EXPONENT}: alpha={fit.alpha:.3f} CI {fit.alpha_ci} R2={fit.r2:.4f} ranks {fit.fit_range} "
          f"of {fit.n_live} live; MLE rank alpha {fit.mle.alpha_rank:.3f}; {fit.to_dict()['mle']['comparisons']}")
    assert abs(fit.alpha - SYNTH_FREQ_EXPONENT) <= 0.25 * SYNTH_FREQ_EXPONENT
    assert fit.r2 >= 0.9
    assert "exponential" not in fit.rejected_for


def test_uniform_frequency_control_rejects_the_power_law_and_fits_worse(tmp_path, synth_store, trained_topk):
    """Same data recipe and training recipe with every feature equally frequent (freq_exponent 0)."""
    from fixtures.synthetic import make_synth_store, train_config

    from progsae.train import train_sae

    store = make_synth_store(tmp_path / "uniform", freq_exponent=0.0)
    train_sae(store, tmp_path / "sae", train_config(), progress=False)
    flat = _trained_fit(store, tmp_path / "sae")
    planted_fit = _trained_fit(synth_store, trained_topk)
    print(f"uniform control: alpha={flat.alpha:.3f} R2={flat.r2:.4f} (planted R2={planted_fit.r2:.4f}); "
          f"{flat.to_dict()['mle']['comparisons']}")
    assert set(flat.rejected_for) == {"lognormal", "exponential"}
    for alt in ("lognormal", "exponential"):
        c = flat.mle.comparisons[alt]
        assert c.R < 0 and c.p < 1e-3
        assert c.R < planted_fit.mle.comparisons[alt].R - 3  # far stronger evidence against the power law
    assert planted_fit.r2 - flat.r2 >= 0.05
