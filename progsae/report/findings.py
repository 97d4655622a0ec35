"""The findings table: for each claim of docs/method.md, whether this run's numbers support it.

Every verdict is computed here from results.json (records), the bootstrap replicates, the power-law fits,
the interpretability bands and the timings; nothing in the report's findings is written by hand.

One rule decides every comparison (`outcome`, `aggregate`) and one rule turns counts into a verdict
(`verdict`); VERDICT_RULE states both in words and the report prints it verbatim under the table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from progsae.evals.bootstrap import (DEFAULT_REPLICATES, SIGNIFICANCE, Comparison, bootstrap_p, holm, interval,
                                     minimum_detectable, paired, seed_mean_replicates)

VERDICTS = ("supported", "contradicted", "mixed", "inconclusive")
PRUNED_ORDERS = ("pruned-ef2", "pruned-freq", "pruned-unsorted")
TIME_RATIO_LIMIT = 1.5  # the paper reports ~1.25x; a Matryoshka SAE within 1.5x of vanilla "costs little more"
PAPER_TIME_RATIO = 1.25
MIN_R2 = 0.9
INTERP_SEED = 0
LOWER, HIGHER = -1, 1

VERDICT_RULE = (
    "How the verdicts are reached. A comparison is a paired difference a − b between two SAEs scored on the same "
    "test contexts. Its number is the mean over seeds; its 95% interval and two-sided p-value come from a "
    "hierarchical bootstrap (each replicate draws the seeds with replacement, then uses their paired differences "
    "on one shared resample of the test contexts), so seed-to-seed variation counts as noise: a comparison that wins "
    "in two seeds and ties in one is judged by that interval, and one whose seeds disagree is a tie. Within a "
    "finding the p-values of its counted comparisons are Holm-corrected (the family is the finding); a comparison "
    "is a win (loss) when its corrected p < 0.05 on the side the claim favours (the other side), a tie otherwise, "
    "also when there is no interval or a seed is missing. Counted once: retopk rows (L0 matched to k) decide the "
    "ordering and Matryoshka claims while mask rows, whose L0 differs, are shown but not counted; recaptured CE "
    "votes once (vs mean ablation; vs zero is shown), since both ratios share CE(SAE). The Matryoshka claim is "
    "G < n; the trained Matryoshka-n vs vanilla-n at G = n is a context row of its own. Over a finding's W wins, "
    "T ties and L losses (N = W + T + L): mixed when W > 0 and L > 0; supported when L = 0 and W ≥ N/2; "
    "contradicted when W = 0 and L ≥ N/2; inconclusive otherwise (mostly ties, or nothing measured). "
    "Interpretability has two tests (vanilla − Matryoshka gap > 0 overall, and outer-band gap > inner-band gap; "
    "latents resampled within each seed, then seeds): supported only when both win, contradicted only when both "
    "lose, mixed on one win and one loss, inconclusive otherwise; its minimum detectable gap (80% power) is printed. "
    "The power law is one check per seed (w / t / l count seeds): supported when every seed passes, contradicted "
    "when every seed fails. Training time is one interval (per-step medians over interleaved repeats): supported "
    "when it lies at or below 1.5×, contradicted when above. "
    "Why: a difference inside its noise is a tie, not a loss; seeds share the test contexts, so they are not "
    "independent votes; at least half the comparisons must agree so that a few significant results among many ties "
    "do not decide a claim; one significant result against a claim makes it at best mixed; and a claim whose "
    "comparisons mostly lose is contradicted, so the table can say no."
)


@dataclass
class Finding:
    claim: str
    verdict: str  # one of VERDICTS
    evidence: str
    wins: int = 0
    ties: int = 0
    losses: int = 0
    comparisons: list[dict] = field(default_factory=list)
    key: str = ""  # short stable id: power_law, ordering, matryoshka, matryoshka_vs_matched, interpretability, training_time
    context: bool = False  # reported beside the claims of docs/method.md, not one of them
    per_seed: dict = field(default_factory=dict)  # seed -> the verdict of that seed's comparisons on their own
    seed_dependent: bool = False  # the seeds on their own do not all reach the same verdict

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    return x


# ---- the rule --------------------------------------------------------------------------------------
def aggregate(per_seed: list[str | None]) -> str:
    """Across seeds: win (loss) only when every seed is a win (loss); a missing seed (None) is a tie."""
    if per_seed and all(o == "win" for o in per_seed):
        return "win"
    if per_seed and all(o == "loss" for o in per_seed):
        return "loss"
    return "tie"


def verdict(wins: int, ties: int, losses: int) -> str:
    """Counts of counted comparisons -> a verdict word (see VERDICT_RULE)."""
    n = wins + ties + losses
    if n == 0:
        return "inconclusive"
    if wins and losses:
        return "mixed"
    if losses == 0 and 2 * wins >= n:
        return "supported"
    if wins == 0 and 2 * losses >= n:
        return "contradicted"
    return "inconclusive"


def per_seed_verdict(passes: int, unclear: int, fails: int) -> str:
    """A check made once per seed: supported when every seed passes, contradicted when every seed fails."""
    if passes + fails == 0:
        return "inconclusive"
    if fails == 0 and unclear == 0:
        return "supported"
    if passes == 0 and unclear == 0:
        return "contradicted"
    return "mixed"


def _counts(comparisons: list[dict]) -> tuple[int, int, int]:
    counted = [c["outcome"] for c in comparisons if c.get("counted", True)]
    return counted.count("win"), counted.count("tie"), counted.count("loss")


# ---- formatting -----------------------------------------------------------------------------------
def _g(v, signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+.3g}" if signed else f"{v:.3g}"


def fmt_diff(s: dict | None) -> str:
    """One seed's comparison as 'diff [lo, hi]' (or 'not measured')."""
    if not s:
        return "not measured"
    ci = s.get("ci")
    return _g(s["diff"], True) + (f" [{_g(ci[0], True)}, {_g(ci[1], True)}]" if ci else " [no interval]")


def comparison_label(c: dict) -> str:
    where = []
    if c.get("metric"):
        where.append(c["metric"])
    if c.get("mode"):
        where.append(c["mode"])
    if c.get("size") is not None:
        where.append(f"G={c['size']}")
    return (c.get("label") or f"{c['a']} − {c['b']}") + (f" ({' '.join(where)})" if where else "")


def _seed_mean_text(c: dict) -> str:
    """'seed mean d [lo, hi], Holm p; ' of a comparison ('' for one without a seed mean)."""
    if "diff" not in c:
        return ""
    text = f"seed mean {fmt_diff(c)}"
    if c.get("p_holm") is not None:
        text += f", Holm p = {c['p_holm']:.2g}"
    return text + "; "


def _summary(comparisons: list[dict], list_max: int = 4) -> str:
    w, t, l_ = _counts(comparisons)
    text = f"{w} win / {t} tie / {l_} loss over {w + t + l_} paired comparisons"
    for word in ("win", "loss"):
        hits = [c for c in comparisons if c.get("counted", True) and c["outcome"] == word]
        if not hits:
            continue
        shown = "; ".join(f"{comparison_label(c)}: {_seed_mean_text(c)}" + ", ".join(f"s{s} {fmt_diff(v)}" for s, v in c["seeds"].items())
                          for c in hits[:list_max])
        more = f"; … {len(hits) - list_max} more (see Comparisons)" if len(hits) > list_max else ""
        text += f". {'Wins' if word == 'win' else 'Losses'}: {shown}{more}"
    return text


# ---- records -> paired comparisons --------------------------------------------------------------
def _index(records: list[dict]) -> dict[tuple, dict]:
    """(seed, method, size, mode) -> record, without the plot-only full_size_copy rows."""
    return {(r.get("seed", 0), r["method"], r["size"], r["mode"]): r for r in records if not r.get("full_size_copy")}


def _seeds(records: list[dict]) -> list:
    return sorted({r.get("seed", 0) for r in records}, key=lambda s: (str(type(s)), s))


def full_size(records: list[dict], timings: dict | None = None) -> int | None:
    """n: the size of the full (trained, mode full) vanilla / Matryoshka SAEs."""
    sizes = [r["size"] for r in records if r["mode"] == "full" and r["method"] in ("vanilla", "matryoshka")
             and not r.get("full_size_copy") and r.get("size") is not None]
    if sizes:
        return max(sizes)
    if timings and timings.get("n_latents"):
        return int(timings["n_latents"])
    sizes = [r["size"] for r in records if r.get("size") is not None]
    return max(sizes) if sizes else None


def _cut_modes(records: list[dict], methods) -> list[str]:
    return sorted({r["mode"] for r in records if r["method"] in methods and r["mode"] != "full" and not r.get("full_size_copy")})


def _sizes(records: list[dict], methods, mode: str, below: int | None) -> list[int]:
    return sorted({r["size"] for r in records if r["method"] in methods and r["mode"] == mode
                   and not r.get("full_size_copy") and r["size"] is not None and (below is None or r["size"] < below)})


def compare(index: dict, seeds: list, replicates: dict | None, a: tuple, b: tuple, metric: str, better: int,
            label: str | None = None, size=None, mode=None, margin: float = 0.0) -> dict | None:
    """Paired comparison of a = (method, size, mode) against b per seed, aggregated over seeds.

    `margin` > 0 tests "a is no worse than b by more than that fraction": a is compared against b moved by the
    margin in the direction the claim tolerates ((1 + margin)·b when lower is better, (1 − margin)·b when higher is).
    None when the metric is missing on either side in every seed (nothing to compare)."""
    per_seed: dict[str, dict | None] = {}
    scale = 1.0 - better * margin
    diffs, diffs_R = [], []
    for s in seeds:
        ra, rb = index.get((s, *a)), index.get((s, *b))
        if ra is None or rb is None or ra.get(metric) is None or rb.get(metric) is None:
            per_seed[str(s)] = None
            continue
        a_R, b_R = _rep(replicates, ra, metric), _rep(replicates, rb, metric)
        c = paired(float(ra[metric]), scale * float(rb[metric]), a_R, None if b_R is None else scale * b_R, better)
        per_seed[str(s)] = c.to_dict()
        diffs.append(c.diff)
        diffs_R.append(None if a_R is None or b_R is None or len(a_R) != len(b_R) else a_R - scale * b_R)
    if all(v is None for v in per_seed.values()):
        return None
    out = {"label": label or f"{a[0]} − {b[0]}", "a": a[0], "b": b[0], "metric": metric, "size": size, "mode": mode,
           "better": "lower" if better < 0 else "higher", "seeds": per_seed, "counted": True,
           "missing_seeds": [s for s, v in per_seed.items() if v is None]}
    out.update(seed_mean(diffs, diffs_R, better, n_seeds=len(seeds)))
    return out


def seed_mean(diffs: list[float], diffs_R: list, better: int, n_seeds: int) -> dict:
    """The seed-mean difference with its hierarchical-bootstrap interval and two-sided p (seeds, then contexts).

    Its outcome before multiple-comparison correction: win/loss when p < SIGNIFICANCE on the claim's/other side; a tie
    without replicates for every measured seed, or when a seed is missing."""
    mean = float(np.mean(diffs))
    if not diffs_R or any(r is None for r in diffs_R) or len({len(r) for r in diffs_R}) != 1:
        return {"diff": mean, "ci": None, "p": None, "outcome": "tie", "seed_count": len(diffs)}
    mean_R = seed_mean_replicates(np.stack(diffs_R))
    p = bootstrap_p(mean_R)
    outcome = "tie" if p >= SIGNIFICANCE or len(diffs) < n_seeds else ("win" if mean * better > 0 else "loss")
    return {"diff": mean, "ci": interval(mean_R), "p": p, "outcome": outcome, "seed_count": len(diffs),
            "se": float(np.std(mean_R, ddof=1))}


def apply_holm(comparisons: list[dict]) -> list[dict]:
    """Holm-correct the p-values of a finding's counted comparisons (the family); outcomes follow the adjusted p."""
    counted = [c for c in comparisons if c.get("counted", True) and c.get("p") is not None]
    for c, adj in zip(counted, holm([c["p"] for c in counted])):
        c["p_holm"] = adj
        if adj >= SIGNIFICANCE:
            c["outcome"] = "tie"
    return comparisons


def _rep(replicates: dict | None, record: dict, metric: str):
    r = ((replicates or {}).get(record.get("folder")) or {}).get(metric)
    return None if r is None else np.asarray(r, dtype=np.float64)


def comparisons_finding(key: str, claim: str, comparisons: list[dict], note: str = "", context: bool = False, rule=verdict) -> Finding:
    """A finding from its paired comparisons: counts, the verdict by `rule`, and evidence naming the wins and losses."""
    apply_holm(comparisons)
    w, t, l_ = _counts(comparisons)
    evidence = _summary(comparisons) if comparisons else "nothing to compare (no matching records)"
    if note:
        evidence += f". {note}"
    return Finding(claim, rule(w, t, l_), evidence, w, t, l_, comparisons, key, context)


# ---- (a) power law --------------------------------------------------------------------------------
def _power_law_check(fit: dict) -> tuple[str, str]:
    """One seed: win (supported), loss (an alternative significantly better, or R² < 0.9), tie (neither)."""
    rejected = fit.get("rejected_for") or []
    r2 = fit.get("r2")
    supported = fit.get("supported")
    if supported is None:
        supported = r2 is not None and r2 >= MIN_R2 and not rejected
    if supported:
        return "win", "power law supported"
    reasons = []
    if rejected:
        reasons.append(f"{' and '.join(rejected)} significantly better")
    if r2 is not None and r2 < MIN_R2:
        reasons.append(f"R² {r2:.3f} < {MIN_R2}")
    bend, max_bend = fit.get("bend"), (fit.get("settings") or {}).get("max_bend")
    if bend is not None and max_bend is not None and abs(bend) > max_bend:
        head, tail = fit.get("local_alpha") or [None, None]
        reasons.append(f"the exponent bends: head α {_g(head)} vs tail α {_g(tail)} (bend {bend:+.2f}, beyond ±{max_bend})")
    if fit.get("mle_error"):
        reasons.append(f"no likelihood fit ({fit['mle_error']}), so the alternatives are not ruled out")
    if reasons:
        return "loss", "; ".join(reasons)
    return "tie", "not supported, for no reason this report knows"


def rank_exponents(fit: dict) -> dict | None:
    """Both estimates of the rank exponent: log-binned least squares α (with its interval) and the one the likelihood's
    density exponent γ implies, α = 1/(γ − 1) (interval by the delta method from γ's σ); they disagree when the two
    95% intervals do not overlap."""
    mle, alpha, ci = fit.get("mle") or {}, fit.get("alpha"), fit.get("alpha_ci") or [None, None]
    gamma, sigma = mle.get("gamma"), mle.get("sigma")
    if alpha is None or gamma is None or gamma <= 1.0:
        return None
    implied = 1.0 / (gamma - 1.0)
    half = 1.96 * (sigma or 0.0) / (gamma - 1.0) ** 2
    implied_ci = [implied - half, implied + half]
    lo, hi = (ci if None not in ci else [alpha, alpha])
    disagree = implied_ci[1] < lo or implied_ci[0] > hi
    return {"alpha_binned": alpha, "alpha_binned_ci": [lo, hi], "gamma": gamma, "gamma_sigma": sigma,
            "alpha_implied": implied, "alpha_implied_ci": implied_ci, "disagree": bool(disagree)}


def power_law_finding(power_laws: dict | None) -> Finding:
    """Supported if every seed's fit is `supported` (progsae.progressive.power_law: log-binned R² >= 0.9, no
    alternative significantly better over the same ranks, an exponent that does not bend); contradicted if every
    seed fails one of those; else mixed."""
    claim = "Latent importance (E[f²]) in the vanilla SAE follows a power law in rank"
    if power_laws and "alpha" in power_laws:  # one fit, not per seed
        power_laws = {0: power_laws}
    fits = {str(s): f for s, f in (power_laws or {}).items() if f}
    if not fits:
        return Finding(claim, "inconclusive", "no power-law fit", key="power_law")
    comps, parts = [], []
    for s, fit in sorted(fits.items()):
        outcome, why = _power_law_check(fit)
        alpha, r2 = fit.get("alpha"), fit.get("r2")
        ci = fit.get("alpha_ci") or [None, None]
        rng = fit.get("fit_range") or [None, None]
        lr = {name: {"R": c.get("R"), "p": c.get("p"), "preferred": c.get("preferred")}
              for name, c in ((fit.get("mle") or {}).get("comparisons") or {}).items()}
        text = f"seed {s}: α = {_g(alpha)}"
        if None not in ci:
            text += f" [{_g(ci[0])}, {_g(ci[1])}]"
        text += f", R² = {_g(r2)} over ranks {rng[0]}–{rng[1]}"
        if fit.get("n_live") is not None:
            text += f" ({fit['n_live']} live latents)"
        both = rank_exponents(fit)
        if both:
            text += (f"; likelihood γ = {_g(both['gamma'])} ± {_g(both['gamma_sigma'])} implies rank α = 1/(γ − 1) = "
                     f"{_g(both['alpha_implied'])} [{_g(both['alpha_implied_ci'][0])}, {_g(both['alpha_implied_ci'][1])}], "
                     + ("which disagrees with the log-binned α (intervals apart: the values are not one power law over "
                        "these ranks)" if both["disagree"] else "which agrees with the log-binned α"))
        if lr:
            text += "; likelihood ratio vs " + ", ".join(
                f"{n}: R = {_g(c['R'])}, p = {_g(c['p'])} ({c['preferred']})" for n, c in lr.items())
        parts.append(f"{text} → {outcome} ({why})")
        comps.append({"label": "power-law fit", "seed": s, "metric": "power law", "alpha": alpha, "alpha_ci": ci,
                      "r2": r2, "fit_range": rng, "n_live": fit.get("n_live"), "lr_tests": lr, "rank_exponents": both,
                      "rejected_for": fit.get("rejected_for") or [], "outcome": outcome, "why": why, "counted": True})
    w, t, l_ = _counts(comps)
    return Finding(claim, per_seed_verdict(w, t, l_), "; ".join(parts), w, t, l_, comps, "power_law")


def primary_mode(modes: list[str]) -> str | None:
    """The counted cut mode: retopk (L0 matched to the parent's k) when measured, else the first there is."""
    return "retopk" if "retopk" in modes else (modes[0] if modes else None)


def _secondary(c: dict | None, why: str) -> dict | None:
    if c is not None:
        c["counted"], c["secondary"] = False, why
    return c


# ---- (b) ordering ---------------------------------------------------------------------------------
def ordering_finding(records: list[dict], replicates: dict | None = None, n: int | None = None, metric: str = "fvu") -> Finding:
    """E[f²] beats frequency and frequency beats unsorted on FVU, paired, at every G < n in each cut mode."""
    claim = "Pruning by E[f²] beats pruning by frequency, which beats no ordering (FVU)"
    n = n if n is not None else full_size(records)
    index, seeds = _index(records), _seeds(records)
    comps = []
    modes = _cut_modes(records, PRUNED_ORDERS)
    primary = primary_mode(modes)
    for mode in modes:
        for size in _sizes(records, PRUNED_ORDERS, mode, n):
            for a, b in zip(PRUNED_ORDERS, PRUNED_ORDERS[1:]):
                c = compare(index, seeds, replicates, (a, size, mode), (b, size, mode), metric, LOWER, size=size, mode=mode)
                if c and mode != primary:
                    _secondary(c, f"{mode}: L0 differs between the cuts; {primary} is counted")
                if c:
                    comps.append(c)
    return comparisons_finding("ordering", claim, comps, note=_mode_note(primary, modes))


def _mode_note(primary: str | None, modes: list[str]) -> str:
    if primary is None:
        return ""
    others = [m for m in modes if m != primary]
    return (f"Counted: {primary} rows" + (f"; {', '.join(others)} rows are shown, not counted (their L0 differs)" if others else
            " (the only mode measured)"))


# ---- (c) Matryoshka vs pruned vanilla -----------------------------------------------------------
MATRYOSHKA_METRICS = (("fvu", LOWER), ("rsa", HIGHER), ("ce_recaptured_zero", HIGHER), ("ce_recaptured_mean", HIGHER))
CE_COUNTED, CE_SHOWN = "ce_recaptured_mean", "ce_recaptured_zero"  # one CE vote: the two share CE(SAE), so they move together


def _matryoshka_comparisons(records: list[dict], replicates: dict | None, index: dict, seeds: list, a: tuple, b: tuple,
                            size, mode, label: str | None, missing: set) -> list[dict]:
    """Matryoshka vs one reference on every metric of MATRYOSHKA_METRICS; the second CE ratio is shown, not counted."""
    has_mean = any(r.get(CE_COUNTED) is not None for r in records)
    out = []
    for metric, better in MATRYOSHKA_METRICS:
        c = compare(index, seeds, replicates, a, b, metric, better, label=label, size=size, mode=mode)
        if c is None:
            missing.add(metric)
            continue
        if metric == (CE_SHOWN if has_mean else CE_COUNTED):
            _secondary(c, "the recaptured CE vs zero and vs mean ablation share CE(SAE): one vote")
        out.append(c)
    return out


def matryoshka_finding(records: list[dict], replicates: dict | None = None, n: int | None = None) -> Finding:
    """Matryoshka prefixes vs the E[f²]-pruned vanilla SAE at each G < n (retopk counted, mask shown), on FVU, RSA and
    one recaptured CE."""
    claim = ("Matryoshka prefixes have lower FVU, higher RSA and better recaptured CE than E[f²]-pruned vanilla SAEs "
             "at every G < n")
    n = n if n is not None else full_size(records)
    index, seeds = _index(records), _seeds(records)
    comps, missing = [], set()
    modes = _cut_modes(records, ("matryoshka", "pruned-ef2"))
    primary = primary_mode(modes)
    for mode in modes:
        for size in _sizes(records, ("matryoshka",), mode, n):
            for c in _matryoshka_comparisons(records, replicates, index, seeds, ("matryoshka", size, mode),
                                             ("pruned-ef2", size, mode), size, mode, None, missing):
                if mode != primary:
                    _secondary(c, f"{mode}: L0 differs between the cuts; {primary} is counted")
                comps.append(c)
    note = _mode_note(primary, modes) + "; recaptured CE counted once (vs mean ablation; vs zero shown)"
    if missing:
        note += f". Not measured: {', '.join(sorted(missing))}"
    return comparisons_finding("matryoshka", claim, comps, note)


def matryoshka_full_size_finding(records: list[dict], replicates: dict | None = None, n: int | None = None) -> Finding:
    """Context: the trained Matryoshka-n vs the trained vanilla-n at G = n (no cut), on the Matryoshka metrics."""
    claim = ("Context (not a claim of docs/method.md): at G = n the trained Matryoshka SAE has lower FVU, higher RSA and "
             "better recaptured CE than the trained vanilla SAE")
    n = n if n is not None else full_size(records)
    index, seeds = _index(records), _seeds(records)
    comps, missing = [], set()
    if n is not None:
        comps = _matryoshka_comparisons(records, replicates, index, seeds, ("matryoshka", n, "full"), ("vanilla", n, "full"),
                                        n, "full", "matryoshka − vanilla (G = n, trained)", missing)
    note = f"Not measured: {', '.join(sorted(missing))}" if missing else ""
    return comparisons_finding("matryoshka_full_size", claim, comps, note, context=True)


def matched_vanilla_finding(records: list[dict], replicates: dict | None = None, n: int | None = None) -> Finding:
    """Context: Matryoshka prefixes vs vanilla SAEs trained at the same size G (FVU)."""
    claim = "Context (not a claim of docs/method.md): a Matryoshka prefix of G latents has lower FVU than a vanilla SAE trained with G latents"
    n = n if n is not None else full_size(records)
    index, seeds = _index(records), _seeds(records)
    comps = []
    modes = _cut_modes(records, ("matryoshka",))
    primary = primary_mode(modes)
    for mode in modes:
        for size in _sizes(records, ("matryoshka",), mode, n):
            c = compare(index, seeds, replicates, ("matryoshka", size, mode), ("vanilla", size, "full"), "fvu", LOWER,
                        label="matryoshka − vanilla-G", size=size, mode=mode)
            if c and mode != primary:
                _secondary(c, f"{mode}: the prefix's L0 differs from the vanilla SAE's k; {primary} is counted")
            if c:
                comps.append(c)
    return comparisons_finding("matryoshka_vs_matched", claim, comps, note=_mode_note(primary, modes), context=True)


# ---- (d) interpretability -------------------------------------------------------------------------
def _band_means_R(scores: list[float], rng: np.random.Generator, replicates: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    return s[rng.integers(0, s.size, size=(replicates, s.size))].mean(1)


def _measured(band: dict | None) -> bool:
    return bool(band) and band.get("measured", band.get("mean") is not None) and bool(band.get("scores"))


def _why_unmeasured(band: dict | None) -> str:
    if band and band.get("measured", band.get("mean") is not None) and not band.get("scores"):
        return "has no per-latent scores"
    return "not measured"


def _gap_comparison(a: float, b: float, diff_R: np.ndarray, label: str, seed: str, metric: str, **extra) -> dict:
    c = Comparison(a=a, b=b, diff=a - b, ci=interval(diff_R), better=HIGHER)
    return {"label": label, "metric": metric, "seed": seed, **extra, **c.to_dict(), "_R": diff_R}


def _interp_seed(seed: str, per_method: dict, replicates: int, rng_seed: int) -> tuple[dict, dict | None, dict | None, list[str]]:
    """One seed: per-band gaps, the overall gap and the outer-minus-inner gap (None where not measurable)."""
    van, mat = per_method.get("pruned-ef2") or {}, per_method.get("matryoshka") or {}
    pairs = list(zip(van.items(), mat.items()))
    skipped, bands_out, gaps_R = [], {}, []
    for i, ((vname, vb), (mname, mb)) in enumerate(pairs):
        name = vname if vname == mname else f"{vname} / {mname}"
        absent = [f"{m} {_why_unmeasured(b)}" for m, b in (("pruned-ef2", vb), ("matryoshka", mb)) if not _measured(b)]
        if absent:
            skipped.append(f"seed {seed} band {name} ({' and '.join(absent)})")
            continue
        rng_v = np.random.default_rng([rng_seed, i, 0])
        rng_m = np.random.default_rng([rng_seed, i, 1])
        v_R, m_R = _band_means_R(vb["scores"], rng_v, replicates), _band_means_R(mb["scores"], rng_m, replicates)
        v, m = float(np.mean(vb["scores"])), float(np.mean(mb["scores"]))
        gap_R = v_R - m_R
        bands_out[name] = _gap_comparison(v, m, gap_R, f"band {name}: pruned-ef2 − matryoshka", seed, "interp",
                                          band=name, index=i, n_vanilla=len(vb["scores"]), n_matryoshka=len(mb["scores"]))
        gaps_R.append((name, v - m, gap_R))
    if len(van) != len(mat):
        skipped.append(f"seed {seed}: {len(van)} pruned-ef2 bands vs {len(mat)} Matryoshka bands, unpaired ones skipped")
    overall = outer_inner = None
    if gaps_R:
        mean_gap = float(np.mean([g for _, g, _ in gaps_R]))
        mean_R = np.mean([r for _, _, r in gaps_R], axis=0)
        overall = {"label": "mean gap over bands", "metric": "interp", "seed": seed,
                   **Comparison(a=mean_gap, b=0.0, diff=mean_gap, ci=interval(mean_R), better=HIGHER).to_dict(), "_R": mean_R}
    if len(gaps_R) >= 2:
        (iname, ig, iR), (oname, og, oR) = gaps_R[0], gaps_R[-1]
        outer_inner = _gap_comparison(og, ig, oR - iR, f"gap outer ({oname}) − gap inner ({iname})", seed, "interp",
                                      inner=iname, outer=oname)
    return bands_out, overall, outer_inner, skipped


def _interp_seed_mean(per: dict, n_seeds: int) -> dict:
    """Seed-mean gap of an interpretability test: latents resampled within each seed, then seeds (hierarchical)."""
    got = [x for x in per.values() if x]
    if not got:
        return {"diff": None, "ci": None, "p": None, "outcome": "tie"}
    out = seed_mean([x["diff"] for x in got], [x.get("_R") for x in got], HIGHER, n_seeds)
    if out.get("se") is not None:  # the SE of the same hierarchical replicates that gave the interval
        out["mde"] = minimum_detectable(out["se"])
    return out


def interpretability_finding(bands: dict | None, replicates: int = DEFAULT_REPLICATES, seed: int = INTERP_SEED) -> Finding:
    """Pruned vanilla latents score higher than Matryoshka latents, most of all in the outer bands.

    Per band pair (same index, inner to outer) the gap is mean(pruned-ef2 scores) − mean(Matryoshka scores) with a
    two-sample bootstrap interval (each side's per-latent scores resampled independently, seeded). Two tests, each
    aggregated over seeds by the common rule: the mean gap over measured bands > 0, and the outer band's gap minus the
    inner band's > 0 (same replicates). Bands not measured are skipped and named."""
    claim = "Pruned vanilla SAEs are more interpretable than Matryoshka SAEs, with the largest gap in the outer bands"
    bands = dict(bands or {})
    explainer = bands.pop("explainer", None) or "token-identity baseline"  # runs before the key used the deterministic one
    if "pruned-ef2" in bands or "matryoshka" in bands:  # one seed, not per seed
        bands = {0: bands}
    per_seed = {str(s): b for s, b in bands.items() if isinstance(b, dict) and "pruned-ef2" in b and "matryoshka" in b}
    if not per_seed:
        return Finding(claim, "inconclusive", "interpretability was not evaluated for both pruned-ef2 and matryoshka",
                       key="interpretability")
    overall, outer_inner, band_rows, skipped = {}, {}, [], []
    for s, per_method in sorted(per_seed.items()):
        b_out, o, oi, sk = _interp_seed(s, per_method, replicates, seed)
        overall[s], outer_inner[s] = o, oi
        band_rows.extend(b_out.values())
        skipped += sk
    comps = []
    for label, per in (("pruned-ef2 − matryoshka, mean gap over bands", overall),
                       ("gap outer band − gap inner band", outer_inner)):
        comps.append({"label": label, "a": "pruned-ef2", "b": "matryoshka", "metric": "interp", "size": None, "mode": None,
                      "better": "higher", "seeds": per, "counted": True, **_interp_seed_mean(per, len(per_seed))})
    by_band: dict[str, dict] = {}
    for r in band_rows:
        by_band.setdefault(r["band"], {})[r["seed"]] = r
    for name, per in by_band.items():
        comps.append({"label": f"band {name}: pruned-ef2 − matryoshka", "a": "pruned-ef2", "b": "matryoshka",
                      "metric": "interp", "size": None, "mode": None, "better": "higher", "band": name,
                      "seeds": {s: per.get(s) for s in sorted(per_seed)}, "counted": False,
                      **_interp_seed_mean(per, len(per_seed))})
    apply_holm(comps)
    w, t, l_ = _counts(comps)
    v = ("supported" if w == 2 else "contradicted" if l_ == 2 else "mixed" if w and l_ else "inconclusive")
    for c in comps:
        for x in c["seeds"].values():
            if x:
                x.pop("_R", None)
    mde = "; ".join(f"{c['label']}: {_g(c.get('mde'))}" for c in comps if c.get("mde") is not None)
    evidence = (f"Explainer: {explainer}. " + _summary(comps)
                + (f". Minimum detectable gap (80% power, two-sided 5%; 2.80 × bootstrap SE of the seed-mean gap): {mde}"
                   if mde else ""))
    band_text = "; ".join(f"{c['label']}: " + ", ".join(
        f"s{s} {_g(x['a'])} vs {_g(x['b'])} = {fmt_diff(x)}" for s, x in c["seeds"].items() if x)
        for c in comps if not c["counted"])
    if band_text:
        evidence += f". Per band (mean Pearson, two-sample bootstrap): {band_text}"
    if skipped:
        evidence += f". Skipped: {'; '.join(skipped)}"
    return Finding(claim, v, evidence, w, t, l_, comps, "interpretability")


# ---- (e) training time ----------------------------------------------------------------------------
def _train_times(timings: dict | None) -> dict[str, dict]:
    per = (timings or {}).get("train") or {}
    if per and all(isinstance(v, (int, float)) or v is None for v in per.values()):  # one seed, not per seed
        per = {"0": per}
    return {str(s): v for s, v in per.items() if isinstance(v, dict)}


def training_time_finding(timings: dict | None) -> Finding:
    """Matryoshka-n / vanilla-n per-step time from interleaved repeats (timings["step_timing"]): supported when the
    ratio's interval lies at or below 1.5×, contradicted when it lies above, inconclusive when it straddles 1.5×.
    Runs without that measurement fall back to the single whole-training wall times, reported but not counted."""
    claim = f"A Matryoshka SAE costs little more to train than a vanilla SAE of the same size (paper: ~{PAPER_TIME_RATIO}×)"
    st = (timings or {}).get("step_timing")
    if st:
        lo, hi = st["ratio_ci"]
        outcome = "win" if hi <= TIME_RATIO_LIMIT else "loss" if lo > TIME_RATIO_LIMIT else "tie"
        comp = {"label": f"{st['numerator']} / {st['denominator']} per-step time", "metric": "seconds per step",
                "ratio": st["ratio"], "ci": [lo, hi], "median_num_s": st["median_num"], "median_den_s": st["median_den"],
                "limit": TIME_RATIO_LIMIT, "outcome": outcome, "counted": True, "hardware": st["hardware"]}
        evidence = (f"{st['numerator']} {st['median_num'] * 1e3:.1f} ms / {st['denominator']} {st['median_den'] * 1e3:.1f} ms "
                    f"per step = {st['ratio']:.3f}× [{lo:.3f}, {hi:.3f}] (medians of {st['repeats']} interleaved, "
                    f"order-randomised repeats of {st['steps']} steps, batch {st['batch_size']}, {st.get('dtype', 'float32')}; "
                    f"interval: bootstrap over repeats) on {st['hardware']}; against the paper's ~{PAPER_TIME_RATIO}×: "
                    f"supported when the interval lies at or below {TIME_RATIO_LIMIT}×, contradicted when above")
        w, t, l_ = _counts([comp])
        return Finding(claim, verdict(w, t, l_), evidence, w, t, l_, [comp], "training_time")
    n = (timings or {}).get("n_latents")
    comps = []
    for s, names in sorted(_train_times(timings).items()):
        mat = names.get(f"matryoshka-{n}") or next((v for k, v in names.items() if k.startswith("matryoshka")), None)
        van = names.get(f"vanilla-{n}")
        if mat and van:
            comps.append({"label": "matryoshka / vanilla-n training wall time (one sample)", "seed": s,
                          "metric": "train seconds", "matryoshka_s": mat, "vanilla_s": van, "ratio": mat / van,
                          "limit": TIME_RATIO_LIMIT, "outcome": "tie", "counted": False})
    if not comps:
        return Finding(claim, "inconclusive", "training times missing", key="training_time")
    evidence = ("no per-step measurement in this run (step_timing.json); single whole-training wall times, not counted: "
                + "; ".join(f"seed {c['seed']}: {c['matryoshka_s']:.1f} s / {c['vanilla_s']:.1f} s = {c['ratio']:.2f}×"
                            for c in comps))
    return Finding(claim, "inconclusive", evidence, 0, 0, 0, comps, "training_time")


def seed_verdicts(f: Finding) -> dict[str, str]:
    """The verdict each seed's comparisons reach on their own, by the same rule as the finding's."""
    counted = [c for c in f.comparisons if c.get("counted", True)]
    outcomes: dict[str, list[str]] = {}
    for c in counted:
        if isinstance(c.get("seeds"), dict):
            for s, v in c["seeds"].items():
                outcomes.setdefault(str(s), []).append(v["outcome"] if v else "tie")
        elif "seed" in c:
            outcomes.setdefault(str(c["seed"]), []).append(c["outcome"])
    out = {}
    for s, os_ in outcomes.items():
        w, t, l_ = os_.count("win"), os_.count("tie"), os_.count("loss")
        if f.key in ("power_law", "training_time"):
            out[s] = per_seed_verdict(w, t, l_)
        else:
            v = verdict(w, t, l_)
            out[s] = "inconclusive" if f.key == "interpretability" and v == "supported" and w < 2 else v
    return out


def mark_seed_dependence(f: Finding) -> Finding:
    """Record each seed's own verdict; a claim whose seeds disagree is marked seed-dependent in its evidence."""
    f.per_seed = seed_verdicts(f)
    if len(set(f.per_seed.values())) > 1:
        f.seed_dependent = True
        f.evidence = ("Seed-dependent: " + ", ".join(f"seed {s} {v}" for s, v in sorted(f.per_seed.items())) + ". " + f.evidence)
    return f


def compute_findings(records: list[dict], replicates: dict | None, power_laws: dict | None, bands: dict | None,
                     timings: dict | None) -> list[Finding]:
    """Every finding of the report, in the order of the table, each with its per-seed verdicts."""
    n = full_size(records, timings)
    return [mark_seed_dependence(f) for f in (
        power_law_finding(power_laws),
        ordering_finding(records, replicates, n),
        matryoshka_finding(records, replicates, n),
        matryoshka_full_size_finding(records, replicates, n),
        matched_vanilla_finding(records, replicates, n),
        interpretability_finding(bands),
        training_time_finding(timings),
    )]
