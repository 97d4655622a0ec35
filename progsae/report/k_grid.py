"""The report's sparsity-grid section (train.k_levels): FVU and recaptured CE over (G, k'), the L0–FVU frontier
against size- and k-matched vanilla SAEs, and two verdicts by the rules of progsae.report.findings.

Records come from kgrid/results.json (progsae/study/k_grid.py): one row per (seed, method, size G, k', mode).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from progsae.report.figures import save_png
from progsae.report.findings import HIGHER, LOWER, Finding, compare, comparisons_finding, mark_seed_dependence
from progsae.report.render import comparisons_section, findings_table, fmt_ci, md_table

COST_MARGIN = 0.05  # "costs little at k' = k": no more than 5% worse than plain TopK (FVU, recaptured CE)
GRID_METRICS = (("fvu", LOWER), ("ce_recaptured_zero", HIGHER), ("ce_recaptured_mean", HIGHER))
PAIRS = (("hierarchical", "vanilla"), ("matryoshka-hierarchical", "matryoshka"))
STYLE = {"vanilla": ("black", "s", "--"), "hierarchical": ("tab:green", "o", "-"), "matryoshka": ("tab:red", "^", "--"),
         "matryoshka-hierarchical": ("tab:purple", "D", "-"), "vanilla-size-matched": ("tab:gray", "P", ""),
         "vanilla-k-matched": ("tab:blue", "X", ":")}


def _index(records: list[dict]) -> dict[tuple, dict]:
    return {(r["seed"], r["method"], r["size"], r["mode"], r["k"]): r for r in records}


def _cells(records: list[dict], k_full: int, below: bool) -> list[tuple[int, str, int]]:
    """(size, mode, k') of the grid methods' members with k' < k (below) or k' = k."""
    return sorted({(r["size"], r["mode"], r["k"]) for r in records if r["method"] in dict(PAIRS)
                   and ((r["k"] < k_full) if below else (r["k"] == k_full))})


def _pair_comparisons(records, replicates, k_full: int, below: bool, margin: float = 0.0) -> list[dict]:
    index, seeds = _index(records), sorted({r["seed"] for r in records})
    comps = []
    for a, b in PAIRS:
        for size, mode, k in _cells(records, k_full, below):
            for metric, better in GRID_METRICS:
                label = f"{a} − {b}" + (f" ×{1 - better * margin:g}" if margin else "") + f" (k' = {k})"
                c = compare(index, seeds, replicates, (a, size, mode, k), (b, size, mode, k), metric, better,
                            label=label, size=size, mode=mode, margin=margin)
                if c:
                    c["k"] = k
                    comps.append(c)
    return comps


def grid_findings(records: list[dict], replicates: dict | None, k_full: int) -> list[Finding]:
    """Hierarchical beats plain TopK cut to k' < k; and at k' = k it is within COST_MARGIN of it (non-inferiority:
    a win when the interval of a − (1 ± margin)·b lies on a's side of zero). Both for the Matryoshka pair too."""
    beats = comparisons_finding(
        "hierarchical_below_k", "A hierarchical (multi-k) SAE beats the plain TopK SAE evaluated at k' < k (FVU, recaptured CE), "
        "alone and with Matryoshka prefixes, at every size G", _pair_comparisons(records, replicates, k_full, True))
    cost = comparisons_finding(
        "hierarchical_at_k", f"At k' = k the hierarchical SAE costs little: within {COST_MARGIN:.0%} of plain TopK "
        "(FVU, recaptured CE), at every size G", _pair_comparisons(records, replicates, k_full, False, COST_MARGIN))
    return [mark_seed_dependence(f) for f in (beats, cost)]


def _mean_envelope(rows: list[dict], metric: str) -> tuple[float | None, list[float] | None]:
    vals = [r[metric] for r in rows if r.get(metric) is not None]
    cis = [r[f"{metric}_ci"] for r in rows if r.get(f"{metric}_ci")]
    if not vals:
        return None, None
    env = [min(c[0] for c in cis), max(c[1] for c in cis)] if cis else None
    return float(np.mean(vals)), env


def grid_table(records: list[dict], metric: str) -> str:
    """Rows (method, G, mode), columns k': the metric's mean over seeds [envelope of the seeds' 95% intervals]."""
    ks = sorted({r["k"] for r in records})
    groups: dict[tuple, dict[int, list[dict]]] = {}
    for r in records:
        groups.setdefault((r["method"], r["size"], r["mode"]), {}).setdefault(r["k"], []).append(r)
    order = list(STYLE)
    rows = []
    for (method, size, mode), by_k in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]) if kv[0][0] in order else 99, kv[0][1], kv[0][2])):
        rows.append([method, size, mode, *(fmt_ci(*_mean_envelope(by_k.get(k, []), metric)) if k in by_k else "–" for k in ks)])
    return md_table(["method", "G", "mode", *(f"k' = {k}" for k in ks)], rows)


def frontier_figure(records: list[dict], n: int, mode: str) -> Figure | None:
    """One panel per size G: L0 (x) against FVU (y) of each method over k' (mean over seeds), with the trained
    size-matched vanilla-G (at k) and k-matched vanilla-n-k' SAEs as the frontier they are measured against."""
    sizes = sorted({r["size"] for r in records})
    if not sizes:
        return None
    fig = Figure(figsize=(4.2 * len(sizes), 4.2))
    axes = fig.subplots(1, len(sizes), squeeze=False)[0]
    for ax, size in zip(axes, sizes):
        want = "full" if size == n else mode
        for method, (color, marker, ls) in STYLE.items():
            rows = [r for r in records if r["method"] == method and r["size"] == size and r["mode"] in (want, "full")]
            by_k: dict[int, list[dict]] = {}
            for r in rows:
                by_k.setdefault(r["k"], []).append(r)
            pts = [(np.mean([r["l0"] for r in rs]), np.mean([r["fvu"] for r in rs]), k) for k, rs in sorted(by_k.items())
                   if all(r.get("l0") is not None and r.get("fvu") is not None for r in rs)]
            if not pts:
                continue
            xs, ys, ks = zip(*pts)
            ax.plot(xs, ys, color=color, marker=marker, linestyle=ls or "none", label=method, ms=6)
            for x, y, k in pts:
                ax.annotate(f"k'={k}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=6.5, color=color)
        ax.set_title(f"G = {size}" + ("" if size == n else f" ({mode})"), fontsize=9)
        ax.set_xlabel("L0 (active latents per token)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("FVU (test)")
    handles = {}
    for ax in axes:  # the size-matched baselines appear only in the G < n panels
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    axes[-1].legend(list(handles.values()), list(handles), fontsize=7, loc="best")
    fig.suptitle("L0–FVU frontier over the (G, k') grid: mean over seeds; trained vanilla SAEs matched in size (k) or in k (G = n)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def grid_section(records: list[dict], replicates: dict | None, k_full: int, n: int, mode: str, figure_path: Path) -> tuple[list[str], list[Finding]]:
    """Markdown lines of the section and its findings (empty when the run has no grid)."""
    if not records:
        return [], []
    findings = grid_findings(records, replicates, k_full)
    fig = frontier_figure(records, n, mode)
    lines = ["## Sparsity grid: one SAE for every (G, k')", "",
             "Each method cut to size G (at_size) and to k' active latents per row (at_k), on the test split. "
             "vanilla and hierarchical are sorted by their own E[f²] (validation rows); the Matryoshka ones cut by "
             f"prefix. The comparisons pair each hierarchical SAE with its plain counterpart at the same (G, k', mode); "
             f"at k' = k the test is non-inferiority within {COST_MARGIN:.0%}.", "",
             findings_table(findings), ""]
    if fig is not None:
        save_png(fig, figure_path, dpi=110)
        caption = "L0–FVU frontier over the (G, k') grid"
        lines += [f"### {caption}", "", f"![{caption}](figures/{figure_path.name})", ""]
    for metric, title in (("fvu", "FVU"), ("ce_recaptured_zero", "Recaptured CE (vs zero ablation)"),
                          ("ce_recaptured_mean", "Recaptured CE (vs mean ablation)"), ("l0", "L0")):
        if any(r.get(metric) is not None for r in records):
            lines += [f"### {title} over the grid", "", "Mean over seeds [envelope of the seeds' 95% intervals].", "",
                      grid_table(records, metric), ""]
    lines += ["### Comparisons of the sparsity grid", "", *comparisons_section(findings)]
    return lines, findings


__all__ = ["grid_findings", "grid_section", "grid_table", "frontier_figure", "COST_MARGIN"]
