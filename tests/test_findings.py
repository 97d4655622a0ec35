"""Verdicts follow paired bootstrap comparisons: ties inside the noise, losses outside it, all seeds must agree."""

import json
import zlib

import numpy as np
import pytest

from progsae.evals.bootstrap import interval
from progsae.report.findings import (VERDICT_RULE, VERDICTS, aggregate, compute_findings, interpretability_finding,
                                     matched_vanilla_finding, matryoshka_finding, matryoshka_full_size_finding, ordering_finding, power_law_finding,
                                     training_time_finding, verdict)

N = 256
GS = (64, 128)
MODES = ("mask", "retopk")
CUT = ("matryoshka", "pruned-ef2", "pruned-freq", "pruned-unsorted", "pruned-random")
METRICS = ("fvu", "mse", "l0", "ce_recaptured_zero", "ce_recaptured_mean", "delta_ce", "kl", "rsa", "rsa_full", "cka", "interp")
R = 400


def default_fvu(method, size, mode, seed):
    return 0.2


def build_study(fvu=default_fvu, seeds=(0,), common=0.02, own=0.0):
    """Records and replicates of a whole study. Every metric is a function of FVU (rsa = ce = 1 − fvu), so lower
    FVU is better everywhere. Replicates = value + noise shared by every folder of a seed (the paired part) +
    `own` noise per folder; with own = 0 two SAEs with the same value have identical replicates."""
    records, replicates = [], {}

    def value(m, v):
        return v if m in ("fvu", "mse", "delta_ce", "kl") else 32.0 if m == "l0" else 1 - v

    def add(seed, method, size, mode, folder):
        v = float(fvu(method, size, mode, seed))
        shared = np.random.default_rng([seed, 1]).normal(0, common, R)
        mine = np.random.default_rng([seed, zlib.crc32(folder.encode())]).normal(0, own, R) if own else 0.0
        rec = {"seed": seed, "folder": folder, "method": method, "size": size, "mode": mode}
        replicates[folder] = {}
        for m in METRICS:
            sign = 1 if m in ("fvu", "mse", "delta_ce", "kl") else 0 if m == "l0" else -1
            replicates[folder][m] = value(m, v) + sign * (shared + mine)
            rec[m], rec[f"{m}_ci"] = value(m, v), interval(replicates[folder][m])
        records.append(rec)
        return rec

    for seed in seeds:
        for g in (*GS, N):
            vanilla_n = add(seed, "vanilla", g, "full", f"seed-{seed}/vanilla-{g}")
        matryoshka_n = add(seed, "matryoshka", N, "full", f"seed-{seed}/matryoshka-{N}")
        for mode in MODES:
            for g in GS:
                for method in CUT:
                    add(seed, method, g, mode, f"seed-{seed}/{method}-{g}-{mode}")
            for method in CUT:  # the G = n row again under each mode, for plotting only
                src = matryoshka_n if method == "matryoshka" else vanilla_n
                records.append({**src, "method": method, "mode": mode, "full_size_copy": True})
    return records, replicates


def planted(**by_method):
    """FVU 0.2 except where by_method says otherwise: {method: value or f(size, mode, seed)}."""
    def f(method, size, mode, seed):
        v = by_method.get(method.replace("-", "_"), 0.2)
        return v(size, mode, seed) if callable(v) else v
    return f


def counted(f):
    return [c for c in f.comparisons if c.get("counted", True)]


# ---- the rule -----------------------------------------------------------------------------------
def test_verdict_rule_can_say_every_word():
    assert verdict(0, 0, 0) == "inconclusive"
    assert verdict(3, 1, 0) == "supported" and verdict(2, 2, 0) == "supported"
    assert verdict(1, 3, 0) == "inconclusive"  # mostly ties
    assert verdict(0, 1, 3) == "contradicted" and verdict(0, 2, 2) == "contradicted"
    assert verdict(5, 0, 1) == "mixed"
    assert aggregate(["win", "win"]) == "win" and aggregate(["win", "tie"]) == "tie" and aggregate(["loss", None]) == "tie"
    assert all(word in VERDICT_RULE for word in VERDICTS)


def test_identical_saes_tie_everywhere_and_are_inconclusive():
    records, reps = build_study()
    for f in (ordering_finding(records, reps), matryoshka_finding(records, reps), matched_vanilla_finding(records, reps)):
        assert f.comparisons and all(c["outcome"] == "tie" for c in f.comparisons), f.key
        assert (f.wins, f.losses) == (0, 0) and f.ties == len(counted(f)) > 0
        assert f.verdict == "inconclusive"


def test_close_numbers_inside_the_noise_are_ties_not_losses():
    # 0.9915 vs 0.9924 style: a difference far smaller than the per-SAE noise
    records, reps = build_study(planted(matryoshka=0.2009), own=0.01)
    f = matryoshka_finding(records, reps)
    fvu = [c for c in f.comparisons if c["metric"] == "fvu" and c["mode"] != "full"]
    assert fvu and all(c["outcome"] == "tie" for c in fvu)


def test_planted_extra_error_is_a_loss_and_contradicts():
    records, reps = build_study(planted(matryoshka=0.3), own=0.005)
    f = matryoshka_finding(records, reps)
    assert f.verdict == "contradicted" and f.wins == 0 and f.losses == len(counted(f)) > 0
    for c in f.comparisons:
        s = c["seeds"]["0"]
        lo, hi = s["ci"]
        assert c["outcome"] == "loss" and (lo > 0 or hi < 0)
        assert (s["diff"] > 0) == (c["metric"] == "fvu")  # Matryoshka has the higher FVU and the lower RSA / CE
    assert "Losses:" in f.evidence and "fvu retopk G=64" in f.evidence and "fvu mask G=64" not in f.evidence
    assert {c["mode"] for c in counted(f)} == {"retopk"}  # mask rows: shown, not counted (their L0 differs)
    assert {c["metric"] for c in counted(f)} == {"fvu", "rsa", "ce_recaptured_mean"}  # CE votes once


def test_planted_claimed_winner_supports():
    records, reps = build_study(planted(matryoshka=0.1), own=0.005)
    assert matryoshka_finding(records, reps).verdict == "supported"
    records, reps = build_study(planted(pruned_ef2=0.1, pruned_freq=0.2, pruned_unsorted=0.3), own=0.005)
    f = ordering_finding(records, reps)
    assert f.verdict == "supported" and (f.wins, f.ties, f.losses) == (2 * len(GS), 0, 0)  # retopk counted


def test_ordering_with_ef2_worse_than_frequency_is_contradicted():
    records, reps = build_study(planted(pruned_ef2=0.3), own=0.005)
    f = ordering_finding(records, reps)
    # ef2 vs freq loses at every (G, mode); freq vs unsorted ties: no wins, half losses
    assert (f.wins, f.ties, f.losses) == (0, 2, 2) and f.verdict == "contradicted"


def test_win_in_one_seed_and_tie_in_the_other_counts_as_tie():
    records, reps = build_study(planted(matryoshka=lambda size, mode, seed: 0.1 if seed == 0 else 0.2), seeds=(0, 1))
    f = matryoshka_finding(records, reps)
    cut = [c for c in f.comparisons if c["mode"] != "full"]
    assert cut and all(c["seeds"]["0"]["outcome"] == "win" and c["seeds"]["1"]["outcome"] == "tie" for c in cut)
    assert all(c["outcome"] == "tie" for c in cut) and f.wins == 0 and f.verdict == "inconclusive"
    records, reps = build_study(planted(matryoshka=0.1), seeds=(0, 1))
    assert matryoshka_finding(records, reps).verdict == "supported"  # winning in both seeds does count


def test_g_equals_n_is_its_own_context_row_and_cannot_turn_g_below_n_wins_mixed():
    """Planted: Matryoshka prefixes beat pruned vanilla at every G < n, the trained Matryoshka-n loses to vanilla-n."""
    records, reps = build_study(planted(matryoshka=lambda size, mode, seed: 0.3 if size == N else 0.1), own=0.005)
    f = matryoshka_finding(records, reps)
    assert f.verdict == "supported" and f.losses == 0 and all(c["size"] < N for c in f.comparisons)
    full = matryoshka_full_size_finding(records, reps)
    assert full.context and full.verdict == "contradicted" and full.losses == len(counted(full)) == 3
    assert {c["mode"] for c in full.comparisons} == {"full"} and {c["b"] for c in full.comparisons} == {"vanilla"}
    assert all(c["size"] < N for c in ordering_finding(records, reps).comparisons)


def test_matryoshka_vs_size_matched_vanilla_is_context():
    records, reps = build_study(planted(vanilla=lambda size, mode, seed: 0.1 if size < N else 0.2), own=0.005)
    f = matched_vanilla_finding(records, reps)
    assert f.context and len(f.comparisons) == len(GS) * len(MODES) and f.verdict == "contradicted"
    assert {c["b"] for c in f.comparisons} == {"vanilla"}


def test_missing_replicates_give_ties():
    records, _ = build_study(planted(matryoshka=0.3))
    f = matryoshka_finding(records, {})
    assert all(c["outcome"] == "tie" and c["seeds"]["0"]["ci"] is None for c in f.comparisons)
    assert f.verdict == "inconclusive"


# ---- interpretability ---------------------------------------------------------------------------
BAND_NAMES = ("0-64", "64-128", "128-256")


def band_set(means, n=40, spread=0.05, seed=0, measured=None):
    rng = np.random.default_rng(seed)
    out = {}
    for i, (name, m) in enumerate(zip(BAND_NAMES, means)):
        scores = (m + spread * rng.standard_normal(n)).tolist()
        ok = measured is None or measured[i]
        out[name] = {"band": name, "start": 0, "end": 0, "sampled": n, "eligible": n, "scored": n if ok else 0,
                     "latents": n if ok else 0, "mean": float(np.mean(scores)) if ok else None, "lo": None, "hi": None,
                     "firing_frequency": 0.01, "measured": ok, "scores": scores if ok else []}
    return out


def test_interpretability_vanilla_ahead_most_in_outer_bands_is_supported():
    bands = {s: {"pruned-ef2": band_set((0.7, 0.7, 0.7), seed=s), "matryoshka": band_set((0.65, 0.5, 0.3), seed=10 + s)}
             for s in (0, 1)}
    f = interpretability_finding(bands)
    assert f.verdict == "supported" and (f.wins, f.ties, f.losses) == (2, 0, 0)
    per_band = [c for c in f.comparisons if not c["counted"]]
    assert [c["band"] for c in per_band] == list(BAND_NAMES)
    outer = per_band[-1]["seeds"]["0"]
    assert outer["diff"] == pytest.approx(0.4, abs=0.05) and outer["ci"][0] > 0


def test_interpretability_reversed_is_contradicted():
    bands = {0: {"pruned-ef2": band_set((0.65, 0.5, 0.3)), "matryoshka": band_set((0.7, 0.7, 0.7), seed=10)}}
    f = interpretability_finding(bands)
    assert f.verdict == "contradicted" and (f.wins, f.losses) == (0, 2)


def test_interpretability_gap_largest_inner_is_mixed_and_unmeasured_bands_are_named():
    bands = {0: {"pruned-ef2": band_set((0.9, 0.7, 0.7)), "matryoshka": band_set((0.5, 0.6, 0.65), seed=10)}}
    assert interpretability_finding(bands).verdict == "mixed"  # ahead overall, but the gap shrinks outward
    bands = {0: {"pruned-ef2": band_set((0.7, 0.7, 0.7), measured=(True, True, False)),
                 "matryoshka": band_set((0.65, 0.3, 0.3), seed=10)}}
    f = interpretability_finding(bands)
    assert "128-256 (pruned-ef2 not measured)" in f.evidence
    assert [c["band"] for c in f.comparisons if not c["counted"]] == ["0-64", "64-128"]  # outer = last measured pair
    assert f.verdict == "supported"


def test_interpretability_equal_scores_are_inconclusive():
    same = band_set((0.6, 0.6, 0.6))
    f = interpretability_finding({0: {"pruned-ef2": same, "matryoshka": same}})
    assert f.verdict == "inconclusive" and f.wins == f.losses == 0
    assert interpretability_finding(None).verdict == "inconclusive"


# ---- power law and training time ------------------------------------------------------------------
def fit(supported=True, r2=0.97, rejected=()):
    return {"alpha": 1.9, "alpha_ci": [1.85, 1.95], "r2": r2, "fit_range": [10, 200], "n_live": 250,
            "mle": {"comparisons": {"lognormal": {"R": -3.0, "p": 0.001, "preferred": "lognormal" if rejected else "inconclusive"},
                                    "exponential": {"R": 30.0, "p": 0.001, "preferred": "power_law"}}},
            "rejected_for": list(rejected), "supported": supported}


def test_power_law_verdict_from_supported_flags():
    assert power_law_finding({0: fit(), 1: fit()}).verdict == "supported"
    f = power_law_finding({0: fit(False, rejected=["lognormal"]), 1: fit(False, r2=0.5)})
    assert f.verdict == "contradicted" and f.losses == 2
    assert "lognormal significantly better" in f.evidence and "R² 0.500 < 0.9" in f.evidence
    assert power_law_finding({0: fit(), 1: fit(False, rejected=["lognormal"])}).verdict == "mixed"
    assert power_law_finding({}).verdict == "inconclusive"
    ev = power_law_finding({0: fit()}).evidence
    assert "α = 1.9 [1.85, 1.95]" in ev and "R² = 0.97" in ev and "ranks 10–200" in ev and "lognormal: R = -3" in ev


def test_single_wall_times_alone_decide_no_training_time_verdict():
    """One whole-training wall time per seed is a single sample: reported, never counted (tests/test_step_timing.py
    covers the interleaved per-step measurement that decides the verdict)."""
    def t(*pairs):
        return {"n_latents": N, "train": {str(s): {f"vanilla-{N}": v, f"matryoshka-{N}": m, "vanilla-64": 1.0}
                                          for s, (v, m) in enumerate(pairs)}}
    for pairs in (((10, 12), (10, 13)), ((10, 16), (10, 17))):
        f = training_time_finding(t(*pairs))
        assert f.verdict == "inconclusive" and (f.wins, f.ties, f.losses) == (0, 0, 0)
    assert "1.20×" in training_time_finding(t((10, 12))).evidence
    assert training_time_finding({}).verdict == "inconclusive"


def test_compute_findings_is_json_serialisable():
    records, reps = build_study(planted(matryoshka=0.1), seeds=(0, 1), own=0.005)
    bands = {s: {"pruned-ef2": band_set((0.7, 0.7, 0.7)), "matryoshka": band_set((0.65, 0.5, 0.3), seed=10)} for s in (0, 1)}
    timings = {"n_latents": N, "train": {"0": {f"vanilla-{N}": 10.0, f"matryoshka-{N}": 12.0}}}
    findings = compute_findings(records, reps, {0: fit(), 1: fit()}, bands, timings)
    assert [f.key for f in findings] == ["power_law", "ordering", "matryoshka", "matryoshka_full_size", "matryoshka_vs_matched", "interpretability",
                                         "training_time"]
    assert all(f.verdict in VERDICTS for f in findings)
    back = json.loads(json.dumps([f.to_dict() for f in findings]))
    assert back[2]["verdict"] == "supported" and back[2]["wins"] == len(counted(findings[2]))
    assert set(back[2]["comparisons"][0]["seeds"]) == {"0", "1"}


def test_a_claim_whose_seeds_disagree_is_marked_seed_dependent():
    from progsae.report.findings import Finding, mark_seed_dependence

    agree = {"label": "x", "counted": True, "outcome": "win", "seeds": {"0": {"outcome": "win"}, "1": {"outcome": "win"}}}
    split = {"label": "y", "counted": True, "outcome": "tie", "seeds": {"0": {"outcome": "win"}, "1": {"outcome": "loss"}}}
    same = mark_seed_dependence(Finding("c", "supported", "e", 1, 0, 0, [agree], "ordering"))
    assert same.per_seed == {"0": "supported", "1": "supported"} and not same.seed_dependent
    diff = mark_seed_dependence(Finding("c", "supported", "e", 1, 1, 0, [agree, split], "ordering"))
    assert diff.per_seed == {"0": "supported", "1": "mixed"} and diff.seed_dependent
    assert diff.evidence.startswith("Seed-dependent: seed 0 supported, seed 1 mixed")


# ---- seeds as noise, multiple comparisons (issue: verdicts that say exactly what they measured) --------------
def seed_effect_study(effects, context_sd=0.002, seeds=(0, 1, 2), R=1000, seed_sd=None):
    """One comparison (matryoshka − pruned-ef2, FVU retopk G=64) whose per-seed effect is planted; contexts shared."""
    from progsae.evals.bootstrap import resample_weights

    W = resample_weights(200, R, 0)
    base_C = np.random.default_rng(1).normal(0, 1, 200)
    records, reps = [], {}
    for s, eff in zip(seeds, effects):
        sd = (seed_sd or {}).get(s, context_sd)
        for method, v in (("matryoshka", 0.2 - eff), ("pruned-ef2", 0.2)):
            folder = f"seed-{s}/{method}"
            noise_C = base_C * context_sd + np.random.default_rng([s, method == "matryoshka"]).normal(0, sd, 200)
            records.append({"seed": s, "method": method, "size": 64, "mode": "retopk", "folder": folder, "fvu": v})
            reps[folder] = {"fvu": v + (W @ noise_C) / 200 - noise_C.mean()}
    return records, reps


def test_two_of_three_seeds_with_a_large_mean_win_under_the_hierarchical_interval():
    from progsae.report.findings import _index, compare

    # seed 2 alone ties: its effect (0.03) lies inside its own, much noisier context interval
    records, reps = seed_effect_study((0.05, 0.05, 0.03), seed_sd={2: 0.25})
    c = compare(_index(records), [0, 1, 2], reps, ("matryoshka", 64, "retopk"), ("pruned-ef2", 64, "retopk"), "fvu", -1)
    assert [v["outcome"] for v in c["seeds"].values()] == ["win", "win", "tie"]
    assert c["outcome"] == "win" and c["ci"][1] < 0 and c["diff"] == pytest.approx(-0.13 / 3)
    assert aggregate([v["outcome"] for v in c["seeds"].values()]) == "tie"  # the old every-seed rule said tie


def test_an_effect_within_seed_noise_is_a_tie():
    from progsae.report.findings import _index, compare

    records, reps = seed_effect_study((0.05, 0.05, -0.045))  # every seed significant, but they disagree
    c = compare(_index(records), [0, 1, 2], reps, ("matryoshka", 64, "retopk"), ("pruned-ef2", 64, "retopk"), "fvu", -1)
    assert [v["outcome"] for v in c["seeds"].values()] == ["win", "win", "loss"]
    assert c["outcome"] == "tie" and c["ci"][0] < 0 < c["ci"][1]


def test_hierarchical_interval_covers_the_true_mean():
    """Seeds drawn around a true effect of −0.01 (seed sd 0.005): the 95% interval covers it in most simulations.
    With three seeds the seed resample under-covers (the percentile bootstrap of a mean of 3), so ≥ 70% is asked."""
    from progsae.report.findings import _index, compare

    covered, sims = 0, 100
    for k in range(sims):
        eff = -(-0.01 + 0.005 * np.random.default_rng(100 + k).standard_normal(3))
        records, reps = seed_effect_study(tuple(eff))
        c = compare(_index(records), [0, 1, 2], reps, ("matryoshka", 64, "retopk"), ("pruned-ef2", 64, "retopk"), "fvu", -1)
        covered += c["ci"][0] <= -0.01 <= c["ci"][1]
    assert covered >= 70


def test_holm_turns_one_marginal_loss_among_twenty_into_a_tie():
    from progsae.evals.bootstrap import holm
    from progsae.report.findings import apply_holm

    comps = [{"p": 0.5, "diff": 0.0, "outcome": "tie", "counted": True} for _ in range(19)]
    comps.append({"p": 0.02, "diff": 0.01, "outcome": "loss", "counted": True})
    assert apply_holm(comps)[-1]["outcome"] == "tie" and comps[-1]["p_holm"] == pytest.approx(0.4)
    strong = [dict(c) for c in comps[:19]] + [{"p": 0.001, "diff": 0.01, "outcome": "loss", "counted": True}]
    assert apply_holm(strong)[-1]["outcome"] == "loss"
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_interpretability_one_loss_and_one_tie_is_inconclusive():
    """Matryoshka ahead overall (loss), the same gap in every band (outer − inner ties): not contradicted."""
    bands = {s: {"pruned-ef2": band_set((0.5, 0.5, 0.5), seed=s), "matryoshka": band_set((0.7, 0.7, 0.7), seed=10 + s)}
             for s in (0, 1, 2)}
    f = interpretability_finding({"explainer": "token-identity baseline", **bands})
    assert (f.wins, f.ties, f.losses) == (0, 1, 1) and f.verdict == "inconclusive"
    assert f.evidence.startswith("Explainer: token-identity baseline") and "Minimum detectable gap" in f.evidence
    mde = counted(f)[0]["mde"]
    assert 0.01 < mde < 0.1  # 2.80 × SE of a mean of 3 × 3 bands × 40 latents with spread 0.05 per side
