"""The findings table: for each claim of PAPER.md §7, whether this run's numbers support it.

Every verdict is computed here from results.json, power_law.json, interp bands and timings;
nothing in the report's findings is written by hand.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

PRUNED_ORDERS = ("pruned-ef2", "pruned-freq", "pruned-unsorted")


@dataclass
class Finding:
    claim: str
    verdict: str  # "supported", "not supported", "mixed", "not measured"
    evidence: str


def _by(records: list[dict], method: str, mode: str) -> dict[int, dict]:
    return {r["size"]: r for r in records if r["method"] == method and r["mode"] == mode}


def _verdict(passed: int, total: int) -> str:
    if total == 0:
        return "not measured"
    return "supported" if passed == total else ("not supported" if passed == 0 else "mixed")


def power_law_finding(power_law: dict[str, Any] | None, min_r2: float = 0.9) -> Finding:
    """Supported when the least-squares fit has R² >= min_r2 and no alternative is significantly preferred."""
    claim = "Latent importance (E[f²]) in the vanilla SAE follows a power law in rank"
    if not power_law:
        return Finding(claim, "not measured", "no power-law fit")
    alpha, r2, (lo, hi) = power_law["alpha"], power_law["r2"], power_law["fit_range"]
    ci = power_law.get("alpha_ci") or [None, None]
    evidence = f"least-squares α = {alpha:.3f}"
    if None not in ci:
        evidence += f" (95% bootstrap CI {ci[0]:.3f}–{ci[1]:.3f})"
    evidence += f", R² = {r2:.3f} over ranks {lo}–{hi}"
    comps = (power_law.get("mle") or {}).get("comparisons", {})
    if comps:
        evidence += "; MLE likelihood ratio vs " + ", ".join(
            f"{name}: R = {c['R']:.2f}, p = {c['p']:.2g} ({c['preferred']})" for name, c in comps.items()
        )
    rejected = power_law.get("rejected_for") or []
    if rejected:
        evidence += f"; {' and '.join(rejected)} significantly preferred"
    ok = r2 >= min_r2
    return Finding(claim, "supported" if ok and not rejected else ("mixed" if ok else "not supported"), evidence)


def ordering_finding(records: list[dict], metric: str = "fvu") -> Finding:
    """E[f²] < frequency < unsorted in FVU at every pruned size below n, in each mode."""
    claim = "Pruning by E[f²] beats pruning by frequency, which beats no ordering (FVU)"
    passed = total = 0
    parts = []
    for mode in sorted({r["mode"] for r in records if r["method"] in PRUNED_ORDERS}):
        series = [_by(records, m, mode) for m in PRUNED_ORDERS]
        n_max = max((s for ser in series for s in ser), default=0)
        for size in sorted(set.intersection(*(set(s) for s in series)) - {n_max}):
            vals = [ser[size][metric] for ser in series]
            total += 1
            ok = vals[0] < vals[1] < vals[2]
            passed += ok
            parts.append(f"{mode} G={size}: " + " / ".join(f"{v:.3f}" for v in vals) + ("" if ok else " ✗"))
    evidence = f"{passed}/{total} sizes ordered as claimed (FVU ef2 / freq / unsorted): " + "; ".join(parts)
    return Finding(claim, _verdict(passed, total), evidence)


def matryoshka_finding(records: list[dict]) -> Finding:
    """Matryoshka beats the best pruned vanilla SAE on FVU, recaptured CE and RSA at every size and mode."""
    claim = "Matryoshka SAEs have lower FVU, better recaptured CE and higher RSA than pruned vanilla SAEs at every size"
    checks = [("fvu", -1), ("ce_recaptured_zero", 1), ("rsa", 1)]
    passed = total = 0
    failures = defaultdict(list)
    for mode in sorted({r["mode"] for r in records if r["method"] == "matryoshka"}):
        mat, pru = _by(records, "matryoshka", mode), _by(records, "pruned-ef2", mode)
        for size in sorted(set(mat) & set(pru)):
            for metric, sign in checks:
                a, b = mat[size].get(metric), pru[size].get(metric)
                if a is None or b is None:
                    continue
                total += 1
                if sign * (a - b) > 0:
                    passed += 1
                else:
                    failures[metric].append(f"{mode} G={size}")
    evidence = f"{passed}/{total} (size, mode, metric) comparisons favour Matryoshka over pruned-ef2"
    if failures:
        evidence += "; not at " + "; ".join(f"{m}: {', '.join(v)}" for m, v in failures.items())
    return Finding(claim, _verdict(passed, total), evidence)


def interpretability_finding(bands: dict[str, dict[str, dict]] | None) -> Finding:
    """Pruned vanilla latents score higher than Matryoshka's, and Matryoshka's outer band scores lowest.

    Bands where no sampled latent fired on the held-out data have no score; they are named and skipped.
    """
    claim = "Pruned vanilla SAEs are more interpretable; Matryoshka latents score lower, most of all in outer groups"
    if not bands or "matryoshka" not in bands or "pruned-ef2" not in bands:
        return Finding(claim, "not measured", "interpretability was not evaluated")
    scored = {m: {b: r["mean"] for b, r in bands[m].items() if r.get("mean") is not None} for m in ("pruned-ef2", "matryoshka")}
    empty = [f"{m} {b}" for m in scored for b in bands[m] if b not in scored[m]]
    if not scored["pruned-ef2"] or len(scored["matryoshka"]) < 2:
        return Finding(claim, "not measured", "too few bands with scored latents" + (f" (none in {', '.join(empty)})" if empty else ""))
    van = sum(scored["pruned-ef2"].values()) / len(scored["pruned-ef2"])
    mat = sum(scored["matryoshka"].values()) / len(scored["matryoshka"])
    names = list(scored["matryoshka"])
    inner, outer = scored["matryoshka"][names[0]], scored["matryoshka"][names[-1]]
    checks = [van > mat, outer < inner]
    evidence = (
        f"mean Pearson over scored bands: pruned-ef2 {van:.3f} vs Matryoshka {mat:.3f}; Matryoshka inner band ({names[0]}) "
        f"{inner:.3f} vs outer band ({names[-1]}) {outer:.3f}"
    )
    if empty:
        evidence += f"; no sampled latent fired on the held-out data in {', '.join(empty)}"
    return Finding(claim, _verdict(sum(checks), len(checks)), evidence)


def training_time_finding(timings: dict[str, Any] | None) -> Finding:
    claim = "A Matryoshka SAE costs little more to train than a vanilla SAE of the same size (paper: ~1.25×)"
    per_sae = (timings or {}).get("train", {})
    mat = next((v for k, v in per_sae.items() if k.startswith("matryoshka")), None)
    van = per_sae.get(f"vanilla-{(timings or {}).get('n_latents')}")
    if mat is None or van is None:
        return Finding(claim, "not measured", "training times missing")
    ratio = mat / van
    return Finding(claim, "supported" if ratio <= 1.5 else "not supported", f"Matryoshka {mat:.1f} s / vanilla {van:.1f} s = {ratio:.2f}×")


def compute_findings(records: list[dict], power_law: dict | None, bands: dict | None, timings: dict | None) -> list[Finding]:
    return [
        power_law_finding(power_law),
        ordering_finding(records),
        matryoshka_finding(records),
        interpretability_finding(bands),
        training_time_finding(timings),
    ]
