"""Figures of the study: each metric against SAE size (one line per method), interpretability per band."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from progsae.report.figures import save_png

METHOD_STYLE = {
    "matryoshka": ("tab:red", "o", "-"),
    "vanilla": ("black", "s", "--"),
    "pruned-ef2": ("tab:blue", "^", "-"),
    "pruned-freq": ("tab:green", "v", "-"),
    "pruned-unsorted": ("tab:gray", "x", ":"),
    "pruned-random": ("tab:purple", "d", ":"),
}
METRIC_LABEL = {
    "fvu": "FVU (lower is better)",
    "ce_recaptured_zero": "recaptured CE vs zero-ablation",
    "ce_recaptured_mean": "recaptured CE vs mean-ablation",
    "delta_ce": "ΔCE (nats, lower is better)",
    "rsa": "RSA with original activations",
    "cka": "linear CKA with original activations",
    "l0": "L0",
}


def _panel_points(rows: list[dict], method: str, mode: str, metric: str) -> list[tuple[int, float, float | None, float | None]]:
    """(size, value, lo, hi) of one method in one mode panel: the mean over seeds and the envelope of the seeds'
    intervals. Rows of the panel's mode (full_size_copy rows included: they draw the G = n point) win over
    mode-full rows of the same (seed, size); mode-full rows alone (vanilla-G) are drawn in every panel."""
    chosen: dict[tuple, dict] = {}
    for r in rows:
        if r["method"] != method or r["mode"] not in (mode, "full") or r.get("size") is None:
            continue
        key = (r.get("seed", 0), r["size"])
        if key not in chosen or (r["mode"] == mode and chosen[key]["mode"] != mode):
            chosen[key] = r
    by_size: dict[int, list[dict]] = {}
    for (_, size), r in chosen.items():
        by_size.setdefault(size, []).append(r)
    pts = []
    for size, rs in sorted(by_size.items()):
        cis = [r.get(f"{metric}_ci") for r in rs]
        cis = [c for c in cis if c and None not in c]
        lo, hi = (min(c[0] for c in cis), max(c[1] for c in cis)) if cis else (None, None)
        pts.append((size, float(np.mean([r[metric] for r in rs])), lo, hi))
    return pts


MAIN_METHODS = ("matryoshka", "pruned-ef2", "vanilla")
CONTROL_METHODS = ("pruned-freq", "pruned-unsorted", "pruned-random")
METHOD_LABEL = {"vanilla": "vanilla (size-matched)"}


def _draw_method(ax, rows: list[dict], method: str, mode: str, metric: str, reference: bool = False) -> list[float]:
    """One method's line (mean over seeds) and interval band on `ax`; returns every y drawn (values and band edges)."""
    pts = _panel_points(rows, method, mode, metric)
    if not pts:
        return []
    color, marker, ls = METHOD_STYLE.get(method, ("tab:orange", "o", "-"))
    xs, ys, los, his = zip(*pts)
    label = METHOD_LABEL.get(method, method) + (" (reference)" if reference else "")
    ax.plot(xs, ys, color=color, marker=marker, linestyle=ls, label=label,
            alpha=0.45 if reference else 1.0, lw=1.0 if reference else 1.6, ms=4 if reference else 5)
    band = [(x, lo, hi) for x, lo, hi in zip(xs, los, his) if lo is not None]
    if band:
        bx, blo, bhi = zip(*band)
        ax.fill_between(bx, blo, bhi, color=color, alpha=0.06 if reference else 0.12, linewidth=0)
        if not reference:  # band edges keep overlapping bands apart
            for edge in (blo, bhi):
                ax.plot(bx, edge, color=color, lw=0.6, alpha=0.6, linestyle=ls, label="_nolegend_")
    return [*ys, *(v for b in band for v in b[1:])]


def _size_axis(ax, sizes) -> None:
    ax.set_xscale("log", base=2)
    if sizes:
        ax.set_xticks(sorted(sizes), [str(g) for g in sorted(sizes)])
        ax.minorticks_off()
    ax.set_xlabel("SAE size G (latents)")
    ax.grid(alpha=0.3)


def _fitted_limits(values: list[float], pad: float = 0.08) -> tuple[float, float] | None:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or max(abs(hi), 1e-6) * 0.05
    return lo - pad * span, hi + pad * span


def metric_vs_size_figure(records: list[dict], metric: str, title: str = "") -> Figure | None:
    """The figure of `plot_metric_vs_size`, unsaved (None if no data). Axes: fig.axes in row-major order, i.e.
    [main(mode 1), controls(mode 1), main(mode 2), controls(mode 2), ...]; each axes has `.mode` and `.panel`
    ("main" / "controls") set, and the main panels share y-limits fitted to the main methods only."""
    rows = [r for r in records if r.get(metric) is not None]
    if not rows:
        return None
    present = {r["mode"] for r in rows if r["mode"] != "full"}
    modes = [m for m in ("mask", "retopk") if m in present] + sorted(present - {"mask", "retopk"}) or ["full"]
    sizes = {r["size"] for r in rows if r.get("size") is not None}
    fig = Figure(figsize=(11, 0.6 + 3.4 * len(modes)))
    axes = fig.subplots(len(modes), 2, squeeze=False)
    main_values: list[float] = []
    for (ax_main, ax_ctl), mode in zip(axes, modes):
        mode_name = f"{mode} mode" if mode != "full" else "trained"
        for method in MAIN_METHODS:
            main_values += _draw_method(ax_main, rows, method, mode, metric)
        controls_measured = any(r["method"] in CONTROL_METHODS and r["mode"] == mode and r.get(metric) is not None
                                and not r.get("full_size_copy") for r in rows)
        if controls_measured:
            for method in CONTROL_METHODS:
                _draw_method(ax_ctl, rows, method, mode, metric)
        else:
            ax_ctl.text(0.5, 0.5, "controls not measured for this metric\n(eval.ce_controls: false)", transform=ax_ctl.transAxes,
                        ha="center", va="center", fontsize=9, color="dimgrey")
        _draw_method(ax_ctl, rows, "pruned-ef2", mode, metric, reference=True)
        for ax, panel, what in ((ax_main, "main", "main methods"), (ax_ctl, "controls", "controls")):
            ax.mode, ax.panel = mode, panel
            _size_axis(ax, sizes)
            ax.set_title(f"{mode_name}: {what}", fontsize=10)
            ax.set_ylabel(METRIC_LABEL.get(metric, metric), fontsize=9)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7.5, loc="best")
    lim = _fitted_limits(main_values)
    if lim:
        for ax_main, _ in axes:
            ax_main.set_ylim(*lim)
    fig.suptitle(title or METRIC_LABEL.get(metric, metric))
    fig.tight_layout()
    return fig


def plot_metric_vs_size(records: list[dict], metric: str, path: Path, title: str = "") -> Path | None:
    """Per mode (mask, retopk) one row: left the main methods (Matryoshka, pruned-ef2, size-matched vanilla) on a
    y-axis fitted to them, right the controls (pruned-freq, -unsorted, -random, with pruned-ef2 for reference).
    Lines are means over seeds, shaded bands the envelope of the seeds' 95% intervals (`<metric>_ci`) where
    present. One title per figure. None if no data."""
    fig = metric_vs_size_figure(records, metric, title)
    return None if fig is None else save_png(fig, path, dpi=110)


def _merge_seeds(bands: dict) -> dict[str, dict[str, dict]]:
    """{seed: {method: {band: r}}} -> {method: {band: r}}: the mean over seeds' measured bands, the envelope of their
    intervals. A one-seed {method: {band: r}} is returned as it is."""
    if not bands or any(m in bands for m in METHOD_STYLE):
        return bands
    merged: dict[str, dict[str, list]] = {}
    for per_method in bands.values():
        if not isinstance(per_method, dict):  # "explainer": the name beside the seeds
            continue
        for method, per_band in per_method.items():
            for b, r in per_band.items():
                merged.setdefault(method, {}).setdefault(b, []).append(r)
    out: dict[str, dict[str, dict]] = {}
    for method, per_band in merged.items():
        for b, rs in per_band.items():
            ok = [r for r in rs if r.get("mean") is not None and r.get("measured", True)]
            if not ok:
                out.setdefault(method, {})[b] = {"mean": None, "measured": False, "scored": 0, "seeds": 0}
                continue
            los = [r["lo"] for r in ok if r.get("lo") is not None]
            his = [r["hi"] for r in ok if r.get("hi") is not None]
            scored = [r.get("scored") for r in ok]
            out.setdefault(method, {})[b] = {"mean": float(np.mean([r["mean"] for r in ok])),
                                             "lo": min(los) if los else None, "hi": max(his) if his else None,
                                             "scored": sum(scored) if None not in scored else None, "seeds": len(ok)}
    return out


def interp_bands_figure(bands: dict) -> Figure | None:
    """The figure of `plot_interp_bands`, unsaved (None without bands)."""
    explainer = (bands or {}).get("explainer", "token-identity baseline")
    bands = _merge_seeds(bands)
    if not bands:
        return None
    methods = list(bands)
    band_names = list(dict.fromkeys(b for per in bands.values() for b in per))
    width = 0.8 / len(methods)
    fig = Figure(figsize=(1.8 + 2.0 * len(band_names), 4.2))
    ax = fig.subplots()
    tops = [r["hi"] if r.get("hi") is not None else r["mean"] for per in bands.values() for r in per.values()
            if r.get("mean") is not None and r.get("measured", True) is not False]
    top = max([0.1, *tops]) * 1.18
    for i, method in enumerate(methods):
        color = METHOD_STYLE.get(method, ("tab:orange",))[0]
        for j, b in enumerate(band_names):
            x = j + (i - (len(methods) - 1) / 2) * width
            r = bands[method].get(b, {})
            if r.get("mean") is None or r.get("measured") is False:  # no latent of this band fired on the held-out data: nothing to score
                ax.bar(x, top * 0.25, width, fill=False, hatch="//", edgecolor=color, linewidth=0.8)
                ax.text(x, top * 0.27, "n/a", ha="center", va="bottom", fontsize=7)
                continue
            has_ci = r.get("lo") is not None and r.get("hi") is not None
            err = [[max(0.0, r["mean"] - r["lo"])], [max(0.0, r["hi"] - r["mean"])]] if has_ci else None
            ax.bar(x, r["mean"], width, yerr=err, color=color, alpha=0.85, capsize=3, ecolor="black",
                   error_kw={"lw": 0.8}, label=method if method not in ax.get_legend_handles_labels()[1] else None)
            if r.get("scored") is not None:
                y = (r["hi"] if has_ci else r["mean"]) if r["mean"] >= 0 else 0.0
                ax.text(x, max(y, 0.0) + top * 0.01, f"n={r['scored']}", ha="center", va="bottom", fontsize=6.5)
    ax.set_xticks(range(len(band_names)), band_names)
    ax.set_xlabel("importance band (latent ranks)")
    ax.set_ylabel(f"explain-then-simulate Pearson r\n(explainer: {explainer})")
    bottoms = [r["lo"] if r.get("lo") is not None else r["mean"] for per in bands.values() for r in per.values()
               if r.get("mean") is not None and r.get("measured", True) is not False]
    ax.set_ylim(min([0.0, *bottoms]) * 1.1, top)
    ax.axhline(0, color="black", lw=0.5)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    seeds = {r.get("seeds") for per in bands.values() for r in per.values() if r.get("seeds")}
    what = (f"mean over {max(seeds)} seeds, bars: envelope of the seeds' 95% intervals,\nn = latents scored (all seeds)"
            if seeds and max(seeds) > 1 else "bars: 95% interval, n = latents scored")
    ax.set_title(f"Interpretability per importance band ({what}; hatched n/a: nothing measured)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_interp_bands(bands: dict[str, dict[str, dict]], path: Path) -> Path | None:
    """Grouped bars: mean Pearson score per importance band for each method, with bootstrap intervals and the number
    of scored latents written on each bar; bands with nothing measured are hatched, empty and marked n/a.

    `bands` is {method: {band: r}} or, with seeds, {seed: {method: {band: r}}} (then the mean over seeds)."""
    fig = interp_bands_figure(bands)
    return None if fig is None else save_png(fig, path, dpi=110)
