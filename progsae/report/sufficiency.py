"""Is the run big enough to judge size? Checks computed from the run folder; a failed one marks the verdicts unreliable.

1. Size-matched vanilla SAEs: held-out FVU falls with n at every step, the paired interval of
   FVU(smaller) − FVU(larger) above zero in every seed. If a bigger dictionary does not help, the
   run is in a regime where size hardly matters and no claim about sizes can be judged.
2. Training has levelled off: from the start of the learning-rate decay to the end of training the
   held-out FVU (on a fixed sample of validation rows, logged by the trainer as heldout_fvu) changes
   by less than MAX_LATE_CHANGE of its value, for every SAE. Inside the decay the learning rate goes
   to 0, so a curve measured there is flat by construction and the check could not fail; what the
   decay still gains is what more training at full rate might have gained. Runs that did not log it
   fall back to training-batch FVU, averaged over windows so batch noise cancels.
The dead and dense fractions of every SAE on the test rows are reported beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from progsae.evals.bootstrap import paired
from progsae.evals.reconstruction import ReconstructionConfig
from progsae.report.figures import save_png

MAX_LATE_CHANGE = 0.02  # relative change of held-out FVU from the start of the learning-rate decay to the end
DEFAULT_DECAY_FRAC = 0.2  # the trainer's decay_frac, for logs without the learning rate
DENSE_THRESHOLD = ReconstructionConfig().dense_threshold  # the recon eval's, whose dense_fraction the table shows
LATE_WINDOW = 0.05  # FVU is averaged over logs in [0.85, 0.90] and [0.95, 1.0] of the tokens: batch noise averages out


@dataclass
class Check:
    name: str
    passed: bool | None  # None: could not be measured
    evidence: str


def size_check(records: list[dict], replicates: dict) -> Check:
    """Size-matched vanilla FVU falls with n at every step, interval apart, in every seed."""
    name = "bigger size-matched vanilla SAEs reconstruct better (FVU falls with n)"
    full = [r for r in records if r["method"] == "vanilla" and r["mode"] == "full" and not r.get("full_size_copy")]
    seeds = sorted({r["seed"] for r in full})
    parts, ok, steps = [], True, 0
    for s in seeds:
        by_size = sorted((r["size"], r) for r in full if r["seed"] == s)
        for (g1, a), (g2, b) in zip(by_size, by_size[1:]):
            c = paired(a["fvu"], b["fvu"], (replicates.get(a["folder"]) or {}).get("fvu"), (replicates.get(b["folder"]) or {}).get("fvu"), better=1)
            holds = c.outcome == "win"  # FVU(smaller) − FVU(larger) > 0
            ok &= holds
            steps += 1
            ci = "no interval" if c.ci is None else f"[{c.ci[0]:+.4f}, {c.ci[1]:+.4f}]"
            parts.append(f"seed {s}: FVU(n={g1}) − FVU(n={g2}) = {c.diff:+.4f} {ci}{'' if holds else ' ✗'}")
    if steps == 0:
        return Check(name, None, "fewer than two size-matched vanilla SAEs")
    return Check(name, ok, "; ".join(parts))


def decay_start(curve: list[dict]) -> float:
    """Tokens at the start of the learning-rate decay: the last log at the peak rate (else 1 − DEFAULT_DECAY_FRAC)."""
    total = curve[-1]["tokens"]
    lrs = [(m["tokens"], m["lr"]) for m in curve if m.get("lr") is not None]
    if not lrs:
        return (1 - DEFAULT_DECAY_FRAC) * total
    peak = max(lr for _, lr in lrs)
    return max(t for t, lr in lrs if lr >= 0.999 * peak)


def late_change(curve: list[dict]) -> tuple[float, float, float] | None:
    """(FVU at the start of the learning-rate decay, FVU at the end, relative fall): held-out FVU at the last log at or
    before the decay starts against the end, else training-batch FVU averaged over LATE_WINDOW before each point."""
    if not curve:
        return None
    total, start = curve[-1]["tokens"], decay_start(curve)
    heldout = [(m["tokens"], m["heldout_fvu"]) for m in curve if m.get("heldout_fvu") is not None]
    if heldout:
        early = [v for t, v in heldout if t <= start]
        end_t, end = heldout[-1]
        if not early or end_t < total or end == 0 or start >= total:
            return None
        return early[-1], end, (early[-1] - end) / end

    def mean_fvu(lo, hi):
        vals = [m["fvu"] for m in curve if lo <= m["tokens"] <= hi and m.get("fvu") is not None]
        return float(np.mean(vals)) if vals else None
    before, after = mean_fvu(start - LATE_WINDOW * total, start), mean_fvu((1.0 - LATE_WINDOW) * total, total)
    if before is None or after is None or after == 0:
        return None
    return before, after, (before - after) / after


def plateau_check(curves: dict[str, list[dict]]) -> Check:
    name = (f"training has levelled off (held-out FVU changes < {MAX_LATE_CHANGE:.0%} from the start of the "
            "learning-rate decay to the end)")
    measured = {f: v for f, v in ((f, late_change(c)) for f, c in curves.items()) if v is not None}
    if not measured:
        return Check(name, None, "no training curves with enough logged steps")
    worst = max(measured, key=lambda f: abs(measured[f][2]))
    failing = sorted(f for f, v in measured.items() if abs(v[2]) >= MAX_LATE_CHANGE)
    a, b, change = measured[worst]
    evidence = (f"largest change {change:+.1%} ({worst}: FVU {a:.4f} at the start of the decay, {b:.4f} at the end) "
                f"over {len(measured)} SAEs")
    if failing:
        evidence += f"; still falling: {', '.join(failing)}"
    return Check(name, not failing, evidence)


def findings_document(findings: list, checks: list[Check]) -> dict:
    """findings.json: whether the run can be judged (every sufficiency check held), the checks that failed, the findings."""
    failed = [{"check": c.name, "evidence": c.evidence} for c in checks if c.passed is False]
    return {"reliable": not failed, "failed_checks": failed,
            "unmeasured_checks": [c.name for c in checks if c.passed is None], "findings": [f.to_dict() for f in findings]}


def density_rows(recon_records: list[dict]) -> list[list]:
    """[SAE, dead fraction, dense fraction, L0] of every full-size or size-matched SAE on the test rows."""
    rows = []
    for r in recon_records:
        if "/saes/" in r["source"] and r.get("mode") is None:
            rows.append([r["source"], r["dead_fraction"], r["dense_fraction"], r["l0"]])
    return sorted(rows)


def density_histograms_figure(firing: dict[str, np.ndarray], path: Path) -> Path | None:
    """Feature density: a histogram of log10 firing frequency on the test rows per trained SAE (one panel per
    SAE name, a line per seed); never-firing latents are counted in the title, since log10 0 has no bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not firing:
        return None
    names = sorted({f.rsplit("/", 1)[-1] for f in firing}, key=lambda n: (n.startswith("matryoshka"), int(n.rsplit("-", 1)[-1]) if n.rsplit("-", 1)[-1].isdigit() else 0, n))
    seeds = sorted({f.split("/", 1)[0] for f in firing})
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), sharey=False, squeeze=False)
    lows = [np.log10(f[f > 0]).min() for f in firing.values() if (f > 0).any()]
    bins = np.linspace(min(lows + [-5.0]), 0, 41)
    for ax, name in zip(axes[0], names):
        dead = []
        for i, seed in enumerate(seeds):
            f = next((v for k, v in firing.items() if k.split("/", 1)[0] == seed and k.rsplit("/", 1)[-1] == name), None)
            if f is None:
                continue
            ax.hist(np.log10(f[f > 0]), bins=bins, histtype="step", lw=1.3, label=seed, color=plt.cm.tab10(i))
            dead.append(int((f == 0).sum()))
        ax.axvline(np.log10(DENSE_THRESHOLD), color="grey", ls=":", lw=1)
        ax.set_title(f"{name} (never fire: {', '.join(map(str, dead))})", fontsize=9)
        ax.set_xlabel("log10 firing frequency on test tokens")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("latents")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Feature density of every trained SAE (dotted: the dense threshold, {DENSE_THRESHOLD:.0%} of tokens)")
    fig.tight_layout()
    return save_png(fig, path)


def training_curves_figure(curves: dict[str, list[dict]], path: Path) -> Path | None:
    """FVU, L0 and dead fraction against training tokens for every SAE (one colour per SAE name, a line style per seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    if not curves:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    names = sorted({f.rsplit("/", 1)[-1] for f in curves})
    colours = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    styles = ["-", "--", ":", "-."]
    seeds = sorted({f.split("/", 1)[0] for f in curves})
    for folder, curve in sorted(curves.items()):
        seed, name = folder.split("/", 1)[0], folder.rsplit("/", 1)[-1]
        t = [m["tokens"] for m in curve]
        held = [(m["tokens"], m["heldout_fvu"]) for m in curve if m.get("heldout_fvu") is not None]
        for ax, key in zip(axes, ("fvu", "l0", "dead_frac")):
            ax.plot(t, [m.get(key) for m in curve], color=colours[name], ls=styles[seeds.index(seed) % 4], lw=1.2,
                    alpha=0.35 if (key == "fvu" and held) else 1.0, label=name if (seed == seeds[0] and key != "fvu") else None)
        if held:
            axes[0].plot(*zip(*held), color=colours[name], ls=styles[seeds.index(seed) % 4], marker="o", ms=3, lw=1.5,
                         label=name if seed == seeds[0] else None)
        elif seed == seeds[0]:
            axes[0].plot([], [], color=colours[name], label=name)
    for ax, label in zip(axes, ("FVU (dots: held-out; faint: training batch)", "L0", "dead fraction")):
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}k"))
        ax.set_xlabel("training tokens")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8, title=f"line style: {', '.join(seeds)}", title_fontsize=8)
    fig.suptitle("Training curves of every SAE")
    fig.tight_layout()
    return save_png(fig, path)


def sufficiency_section(checks: list[Check], density: list[list]) -> list[str]:
    """Markdown lines: the checks, what a failure means, and the dead/dense table."""
    failed = [c for c in checks if c.passed is False]
    lines = ["## Is the run big enough to judge?", ""]
    if failed:
        lines += [f"**Every verdict in this report is unreliable** (the findings, and the sparsity grid where there is one): {'; '.join(c.name for c in failed)} did not hold.", ""]
    else:
        lines += ["Every check below held, so the run is in a regime where dictionary size matters.", ""]
    lines += ["| check | result | numbers |", "|---|---|---|"]
    for c in checks:
        word = {True: "holds", False: "**fails**", None: "not measured"}[c.passed]
        lines.append(f"| {c.name} | {word} | {c.evidence} |")
    lines += ["", f"Dead and dense latents of each trained SAE on the test rows (dense: fires on more than {DENSE_THRESHOLD:.0%} of tokens):", "",
              "| SAE | dead fraction | dense fraction | L0 |", "|---|---|---|---|"]
    lines += [f"| {s} | {d:.3f} | {e:.4f} | {l0:.1f} |" for s, d, e, l0 in density]
    return lines + [""]
