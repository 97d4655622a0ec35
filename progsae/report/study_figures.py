"""Study figures beyond metric-vs-size: paired differences of Matryoshka against its baselines, and the L0–FVU frontier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from progsae.evals.bootstrap import interval
from progsae.report.figures import save_png
from progsae.report.size_plots import MAIN_METHODS, METHOD_LABEL, METHOD_STYLE, METRIC_LABEL, _size_axis

MODE_MARKER = {"mask": ("o", True), "retopk": ("s", False), "full": ("D", True)}  # (marker, filled)
BETTER = {"fvu": -1, "ce_recaptured_zero": +1, "ce_recaptured_mean": +1, "delta_ce": -1, "kl": -1,
          "rsa": +1, "cka": +1}
COMPARISONS = (("pruned-ef2", "Matryoshka − pruned-ef2"), ("vanilla", "Matryoshka − size-matched vanilla"))


def load_run_replicates(run_dir) -> dict[str, dict[str, np.ndarray]]:
    """folder -> metric -> replicates [R] from every <run_dir>/evals/*.replicates.safetensors (what
    progsae.study.pipeline.load_replicates(ctx) returns, without a RunContext)."""
    from progsae.evals.bootstrap import load_replicates

    out: dict[str, dict] = {}
    for path in sorted(Path(run_dir, "evals").glob("*.replicates.safetensors")):
        for variant, per in load_replicates(path).items():
            out.setdefault(variant.split("@", 1)[0], {}).update(per)
    return out


def _by_folder(replicates: dict) -> dict[str, dict]:
    """Accept keys "folder" or "folder@size"."""
    out: dict[str, dict] = {}
    for k, per in (replicates or {}).items():
        out.setdefault(str(k).split("@", 1)[0], {}).update(per)
    return out


def _find(records: list[dict], seed, method: str, size: int, mode: str | None) -> dict | None:
    """The record of (seed, method, size) in `mode` (None: any mode, a mode-full row first)."""
    hits = [r for r in records if r.get("seed", 0) == seed and r["method"] == method and r.get("size") == size
            and (mode is None or r["mode"] == mode)]
    hits.sort(key=lambda r: r["mode"] != "full")
    return hits[0] if hits else None


def paired_difference_points(records: list[dict], replicates: dict, metric: str, baseline: str, level: float = 0.95):
    """[(seed, mode, size, diff, lo, hi)] of matryoshka − baseline per seed, mode and size. The baseline is taken in
    the same mode (pruned-*) or, for vanilla, its trained SAE of size G. lo/hi are the percentile interval of the
    replicate-by-replicate difference (None without replicates); diff is the difference of the point estimates."""
    reps = _by_folder(replicates)
    out = []
    for a in records:
        if a["method"] != "matryoshka" or a["mode"] == "full" or a.get(metric) is None or a.get("size") is None:
            continue
        seed = a.get("seed", 0)
        b = _find(records, seed, baseline, a["size"], None if baseline == "vanilla" else a["mode"])
        if b is None or b.get(metric) is None:
            continue
        a_R, b_R = reps.get(a.get("folder"), {}).get(metric), reps.get(b.get("folder"), {}).get(metric)
        ci = interval(np.asarray(a_R) - np.asarray(b_R), level) if a_R is not None and b_R is not None and len(a_R) == len(b_R) else None
        lo, hi = ci if ci else (None, None)
        out.append((seed, a["mode"], a["size"], float(a[metric] - b[metric]), lo, hi))
    return sorted(out, key=lambda p: (p[2], p[1], str(p[0])))


def paired_differences_figure(records: list[dict], replicates: dict, metrics=("fvu", "ce_recaptured_zero")) -> Figure | None:
    """The figure of `plot_paired_differences`, unsaved (None without any difference). Rows: metrics; columns:
    the comparisons (vs pruned-ef2, vs size-matched vanilla)."""
    metrics = [m for m in metrics if any(r.get(m) is not None for r in records)]
    panels = {(m, b): paired_difference_points(records, replicates, m, b) for m in metrics for b, _ in COMPARISONS}
    if not any(panels.values()):
        return None
    seeds = sorted({p[0] for pts in panels.values() for p in pts}, key=str)
    modes = [m for m in ("mask", "retopk") if any(p[1] == m for pts in panels.values() for p in pts)]
    slots = [(s, m) for m in modes for s in seeds]  # one x-offset per (mode, seed)
    offset = {slot: (i - (len(slots) - 1) / 2) * 0.07 for i, slot in enumerate(slots)}  # in log2 units
    seed_color = dict(zip(seeds, ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown")))
    fig = Figure(figsize=(11, 0.8 + 3.3 * len(metrics)))
    axes = fig.subplots(len(metrics), len(COMPARISONS), squeeze=False)
    for row, metric in zip(axes, metrics):
        for ax, (baseline, name) in zip(row, COMPARISONS):
            pts = panels[(metric, baseline)]
            for seed, mode, size, d, lo, hi in pts:
                marker, filled = MODE_MARKER.get(mode, ("o", True))
                c = seed_color.get(seed, "black")
                x = size * 2 ** offset[(seed, mode)]
                err = [[d - lo], [hi - d]] if lo is not None else None
                ax.errorbar([x], [d], yerr=err, fmt=marker, color=c, mfc=c if filled else "white", ms=5, capsize=2.5,
                            lw=1, label=f"seed {seed}, {mode}")
            ax.axhline(0, color="black", lw=0.8)
            _size_axis(ax, {p[2] for p in pts})
            better = BETTER.get(metric)
            hint = f" ({'below' if better < 0 else 'above'} 0: Matryoshka better)" if better else ""
            ax.set_title(name + hint, fontsize=10)
            ax.set_ylabel(f"Δ {METRIC_LABEL.get(metric, metric).split(' (')[0]}", fontsize=9)
            ax.metric, ax.baseline = metric, baseline
    handles, labels = axes[0][0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    if uniq:
        fig.legend(list(uniq.values()), list(uniq), fontsize=7.5, loc="lower center", ncol=min(len(uniq), 6), frameon=False)
    fig.suptitle("Paired differences (same test contexts) with 95% bootstrap intervals, per seed")
    fig.tight_layout(rect=(0, 0.045 if uniq else 0, 1, 1))
    return fig


def plot_paired_differences(records: list[dict], replicates: dict, path: Path,
                            metrics=("fvu", "ce_recaptured_zero")) -> Path | None:
    """Matryoshka − pruned-ef2 (same mode) and Matryoshka − size-matched vanilla against G, one panel row per metric;
    one point per (seed, mode), slightly offset, with the 95% interval of the paired bootstrap difference as error
    bars; a zero line. `replicates` is folder (or "folder@size") -> metric -> replicates [R], e.g.
    progsae.study.pipeline.load_replicates(ctx). None if nothing to compare."""
    fig = paired_differences_figure(records, replicates, metrics)
    return None if fig is None else save_png(fig, path, dpi=110)


def _env(rs: list[dict], key: str):
    cis = [r.get(f"{key}_ci") for r in rs]
    cis = [c for c in cis if c and None not in c]
    return (min(c[0] for c in cis), max(c[1] for c in cis)) if cis else (None, None)


def frontier_points(records: list[dict], methods=MAIN_METHODS, x: str = "l0", y: str = "fvu"):
    """{(method, mode): [(size, x, y, (xlo, xhi), (ylo, yhi))]}: means over seeds and the envelope of the seeds'
    intervals. The G = n copies (full_size_copy) are left out: they repeat a trained SAE's row."""
    groups: dict[tuple, dict[int, list]] = {}
    for r in records:
        if r["method"] not in methods or r.get("full_size_copy") or r.get(x) is None or r.get(y) is None:
            continue
        groups.setdefault((r["method"], r["mode"]), {}).setdefault(r["size"], []).append(r)
    return {k: [(size, float(np.mean([r[x] for r in rs])), float(np.mean([r[y] for r in rs])), _env(rs, x), _env(rs, y))
                for size, rs in sorted(per.items())] for k, per in groups.items()}


def l0_fvu_frontier_figure(records: list[dict], methods=MAIN_METHODS) -> Figure | None:
    pts = frontier_points(records, methods)
    if not pts:
        return None
    fig = Figure(figsize=(8, 5.2))
    ax = fig.subplots()
    order = sorted(pts, key=lambda k: (methods.index(k[0]) if k[0] in methods else len(methods), k[1]))
    # groups whose points all sit at one L0 (retopk and trained SAEs: L0 = k) would overlap: dodge them sideways
    all_x = [p[1] for ps in pts.values() for p in ps]
    span = (max(all_x) - min(all_x)) or 1.0
    flat = [k for k in order if np.ptp([p[1] for p in pts[k]]) < 1e-9]
    dodge = {k: (i - (len(flat) - 1) / 2) * 0.035 * span for i, k in enumerate(flat)} if len(flat) > 1 else {}
    for method, mode in order:
        ps = pts[(method, mode)]
        color = METHOD_STYLE.get(method, ("tab:orange",))[0]
        marker, filled = MODE_MARKER.get(mode, ("o", True))
        sizes, xs, ys, xe, ye = zip(*ps)
        d = dodge.get((method, mode), 0.0)
        xe = [(lo + d if lo is not None else None, hi + d if hi is not None else None) for lo, hi in xe]
        xs = tuple(v + d for v in xs)
        xerr = np.array([[v - lo if lo is not None else 0, hi - v if hi is not None else 0] for v, (lo, hi) in zip(xs, xe)]).T
        yerr = np.array([[v - lo if lo is not None else 0, hi - v if hi is not None else 0] for v, (lo, hi) in zip(ys, ye)]).T
        label = f"{METHOD_LABEL.get(method, method)}" + ("" if mode == "full" else f", {mode}")
        if mode == "full" and method == "matryoshka":
            label = "matryoshka (trained, G = n)"
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt=marker + ("-" if len(xs) > 1 else ""), color=color,
                    mfc=color if filled else "white", ms=6, lw=1, capsize=2.5, alpha=0.9, label=label)
        for g, xv, yv in zip(sizes, xs, ys):
            ax.annotate(f"{g}", (xv, yv), textcoords="offset points", xytext=(5, 3), fontsize=6.5, color=color)
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel(METRIC_LABEL["fvu"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="best")
    note = "; points at one L0 (= k) dodged sideways" if dodge else ""
    ax.set_title("L0–FVU frontier of the main methods: mean over seeds, bars: envelope of the seeds' 95% intervals,\n"
                 f"labels: size G{note}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_l0_fvu_frontier(records: list[dict], path: Path, methods=MAIN_METHODS) -> Path | None:
    """L0 on x, FVU on y: one point per (method, size, mode) of the main methods, averaged over seeds, with the
    envelopes of the seeds' 95% intervals as error bars, points of one (method, mode) joined in order of G."""
    fig = l0_fvu_frontier_figure(records, methods)
    return None if fig is None else save_png(fig, path, dpi=110)
