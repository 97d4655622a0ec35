"""Power-law analysis: recovery of planted exponents, "not supported" on planted non-power-laws, one rank
range for the LS and MLE fits, bootstrap, share curve, record keys, figure."""

import json

import numpy as np
import pytest

from progsae import ProgsaeError
from progsae.progressive import PowerLawSettings, cumulative_share, fit_power_law
from progsae.progressive import power_law as power_law_module
from progsae.progressive.power_law import sorted_live
from progsae.report.figures import power_law_figure

pytestmark = pytest.mark.usefixtures("one_thread")  # small torch ops: a 2nd thread only spins on a busy machine


def planted(alpha: float, n: int = 3000, noise: float = 0.05, dead: int = 0, seed: int = 0) -> np.ndarray:
    """I_(r) = r^-alpha with multiplicative noise, shuffled, plus `dead` zeros."""
    rng = np.random.default_rng(seed)
    v = np.arange(1, n + 1, dtype=float) ** -alpha * np.exp(rng.normal(0, noise, n))
    return rng.permutation(np.concatenate([v, np.zeros(dead)]))


N_RANKS = 10_000
RANKS = np.arange(1, N_RANKS + 1, dtype=float)


def broken_power_law(break_rank: int = 300, head: float = 0.5, tail: float = 2.0) -> np.ndarray:
    """I_r = r^-head up to break_rank, then continuing (no jump) as r^-tail."""
    return np.where(RANKS <= break_rank, RANKS ** -head, break_rank ** -head * (RANKS / break_rank) ** -tail)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_planted_rank_exponent_is_recovered_by_both_fits(alpha):
    fit = fit_power_law(planted(alpha, dead=100), n_boot=50)
    assert fit.n_live == 3000 and fit.n_total == 3100
    assert abs(fit.alpha - alpha) <= 0.03 * alpha and fit.r2 >= 0.99
    assert fit.alpha_ci[0] <= alpha <= fit.alpha_ci[1]
    assert abs(fit.mle.alpha_rank - alpha) <= 0.1 * alpha  # gamma = 1 + 1/alpha
    assert fit.mle.comparisons["exponential"].preferred == "power_law"
    assert "lognormal" not in fit.rejected_for and fit.mle_error is None
    assert fit.supported


# ---- planted laws over 10^4 ranks: the verdict says yes to a power law and no to the rest --------------
@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_exact_power_law_is_supported_with_its_exponent(noise):
    v = RANKS ** -0.8 * np.exp(np.random.default_rng(2).normal(0, noise, N_RANKS))
    fit = fit_power_law(v, n_boot=50)
    assert fit.supported, fit.to_dict()
    assert abs(fit.alpha - 0.8) <= 0.02 and abs(fit.mle.alpha_rank - 0.8) <= 0.02
    assert fit.r2 >= 0.999 and abs(fit.bend) <= 0.02 and fit.rejected_for == []
    assert fit.alpha_ci[0] <= 0.8 <= fit.alpha_ci[1]
    assert all(c.preferred == "power_law" for c in fit.mle.comparisons.values())


@pytest.mark.parametrize("sigma", [0.5, 1.5, 3.0])
def test_lognormal_importance_is_not_supported(sigma):
    """Sorted draws of a log-normal. Its log I = μ + σ·z_(r), so the log-binned R² (≈0.944) and the bend are the
    same for every σ, and both candidate families are closed under x -> c·x^s, so the likelihood ratio is too:
    σ only sets the spread. What makes the verdict decisive is the sample: 10^4 draws put 8901 values in the
    fit range, and the log-normal then wins the likelihood ratio by R ≈ -17 (p ~ 1e-64)."""
    v = np.exp(np.random.default_rng(1).normal(0, sigma, N_RANKS))
    fit = fit_power_law(v, n_boot=0)
    assert not fit.supported
    assert fit.r2 >= fit.settings.min_r2  # R² alone would accept it: the LR test and the bend must say no
    ln = fit.mle.comparisons["lognormal"]
    assert "lognormal" in fit.rejected_for and ln.R < -10 and ln.p < 1e-10
    assert fit.bend > 2 * fit.settings.max_bend  # the log-log rank curve steepens along the range
    assert not fit_power_law(v, n_boot=0, max_bend=10.0).supported  # the likelihood ratio alone says no


def test_broken_power_law_is_not_supported():
    """Exponent 0.5 up to rank 300, then 2.0. Over the default ranks 100-9000 the kinked line still has R² ≈ 0.98,
    and in value space the kink is a narrow band of values, so the likelihood ratios favour the power law over
    both alternatives: only the bend (head-half slope ≈ 1.3 against tail-half slope 2.0) says no."""
    fit = fit_power_law(broken_power_law(), n_boot=0)
    assert fit.fit_range == (100, 9000)
    assert not fit.supported
    assert fit.r2 >= fit.settings.min_r2 and fit.rejected_for == []
    head, tail = fit.local_alpha
    assert abs(tail - 2.0) <= 0.02 and head < 1.5 and fit.bend > 2 * fit.settings.max_bend
    assert fit_power_law(broken_power_law(), n_boot=0, max_bend=0.5).supported  # max_bend is the setting that decides
    # over every rank the kink costs R² (0.89 < 0.9): with the bend clause off, min_r2 alone says no
    every = {"fit_lo": 0.0, "fit_hi": 1.0, "n_boot": 0, "max_bend": 10.0}
    fit = fit_power_law(broken_power_law(), **every)
    assert fit.rejected_for == [] and 0.85 < fit.r2 < fit.settings.min_r2 and not fit.supported
    assert fit_power_law(broken_power_law(), min_r2=0.85, **every).supported


def test_log_binned_fit_weighs_each_decade_the_same():
    """On the broken law the slope of an equal-weight-per-log-rank fit over ranks 100-9000 is 1.775 (continuous
    least squares of the kinked line on uniform log r); one point per integer rank would give 1.94 (tail-heavy)."""
    fit = fit_power_law(broken_power_law(), n_boot=0)
    assert fit.n_bins == 20  # 1.95 decades at 10 bins per decade
    assert abs(fit.alpha - 1.775) <= 0.01
    r = np.arange(100, 9001)
    per_rank = -np.polyfit(np.log(r), np.log(broken_power_law()[r - 1]), 1)[0]
    assert per_rank > 1.9  # what the old fit over integer ranks reported
    assert abs(fit_power_law(broken_power_law(), n_boot=0, bins_per_decade=40).alpha - 1.775) <= 0.01


def test_ls_and_mle_fits_use_the_same_rank_range():
    v = broken_power_law()
    for kw, (lo, hi) in [({}, (100, 9000)), ({"fit_lo": 0.04}, (400, 9000)), ({"fit_lo": 0.0, "fit_hi": 0.03}, (1, 300))]:
        fit = fit_power_law(v, n_boot=0, **kw)
        live, _ = sorted_live(v)
        assert fit.fit_range == (lo, hi)
        assert fit.mle.n_tail == hi - lo + 1  # exactly the values of ranks lo..hi
        assert fit.mle.xmin == live[hi - 1] and fit.mle.xmax == live[lo - 1]
        assert fit.to_dict()["fit_range"] == [lo, hi]
    # each side of the break alone is a clean power law, and both fits see only that side: without the xmax
    # cut at rank 400 the MLE would take in the exponent-0.5 head, without the xmin cut at 300 the steep tail
    for kw, alpha in [({"fit_lo": 0.04}, 2.0), ({"fit_lo": 0.0, "fit_hi": 0.03}, 0.5)]:
        fit = fit_power_law(v, n_boot=0, **kw)
        assert abs(fit.alpha - alpha) <= 0.01 and abs(fit.mle.alpha_rank - alpha) <= 0.02 and fit.supported
    # values tied with the range's end values but ranked outside it stay out of the MLE
    tied = np.sort(planted(1.0, n=1000))[::-1].copy()
    lo, hi = fit_power_law(tied, n_boot=0).fit_range
    tied[lo - 6 : lo - 1], tied[hi : hi + 5] = tied[lo - 1], tied[hi - 1]
    assert fit_power_law(tied, n_boot=0).mle.n_tail == hi - lo + 1


def test_verdict_needs_the_likelihood_ratio_fit(monkeypatch):
    def broken_mle(*args, **kwargs):
        raise RuntimeError("no fit")

    monkeypatch.setattr(power_law_module, "mle_fit", broken_mle)
    fit = fit_power_law(RANKS ** -0.8, n_boot=0)
    assert fit.r2 >= 0.999 and fit.mle is None and fit.mle_error == "RuntimeError: no fit"
    assert not fit.supported and fit.rejected_for == []


def test_uniform_importance_rejects_the_power_law_and_fits_worse():
    pl = fit_power_law(planted(0.7, noise=0.2), n_boot=0)
    flat = fit_power_law(np.exp(np.random.default_rng(1).normal(0, 0.2, 3000)), n_boot=0)
    assert pl.supported and not flat.supported
    ln = flat.mle.comparisons["lognormal"]
    assert "lognormal" in flat.rejected_for and ln.R < 0 and ln.p < 1e-3
    assert pl.r2 - flat.r2 >= 0.03 and flat.alpha < 0.3 and flat.bend > 2 * flat.settings.max_bend


def test_fit_range_is_a_setting_and_the_default_skips_head_and_tail():
    v = planted(1.0, n=1000)
    assert fit_power_law(v, n_boot=0).fit_range == (10, 900)
    assert fit_power_law(v, fit_lo=0.0, fit_hi=1.0, n_boot=0).fit_range == (1, 1000)
    # a bent head (ranks 1-9, before the default range) is ignored by it but spoils a fit over every rank
    bent = np.sort(v)[::-1].copy()
    bent[:9] *= 30
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
    json.loads(json.dumps(d, allow_nan=False))
    assert d["settings"]["fit_lo"] == 0.01 and len(d["alpha_ci"]) == 2
    # the keys the report reads: keep them stable
    assert {"alpha", "alpha_ci", "r2", "fit_range", "n_live", "mle", "rejected_for", "supported", "bend"} <= set(d)
    assert d["supported"] is True and d["rejected_for"] == [] and d["fit_range"] == list(fit.fit_range)
    assert set(d["mle"]["comparisons"]) == {"lognormal", "exponential"}
    assert all(set(c) == {"R", "p", "preferred"} for c in d["mle"]["comparisons"].values())
    assert d["settings"]["min_r2"] == 0.9 and d["settings"]["max_bend"] == 0.2
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
    assert fit.supported


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
    assert planted_fit.supported and not flat.supported
    c = flat.mle.comparisons["lognormal"]
    assert "lognormal" in flat.rejected_for and c.R < 0 and c.p < 1e-3
    assert c.R < planted_fit.mle.comparisons["lognormal"].R - 2  # far stronger evidence against the power law
    assert flat.bend > 2 * flat.settings.max_bend and planted_fit.r2 - flat.r2 >= 0.03


def test_both_rank_exponents_agree_on_zipf_values_and_disagree_off_a_power_law():
    """Log-binned α and the likelihood's γ (α = 1/(γ − 1)) recover a planted Zipf exponent together; on values
    exponential in rank they part, and the power-law finding says so."""
    from progsae.report.findings import power_law_finding, rank_exponents

    for alpha in (0.7, 1.2):
        both = rank_exponents(fit_power_law(np.arange(1, 4001) ** -alpha).to_dict())
        assert abs(both["alpha_binned"] - alpha) < 0.02 and abs(both["alpha_implied"] - alpha) < 0.03
        assert not both["disagree"]
    off = fit_power_law(np.exp(-np.arange(1, 4001) / 400)).to_dict()
    assert rank_exponents(off)["disagree"]
    assert "disagrees with the log-binned α" in power_law_finding({0: off}).evidence
    assert "agrees with the log-binned α" in power_law_finding({0: fit_power_law(np.arange(1, 4001) ** -0.7).to_dict()}).evidence
