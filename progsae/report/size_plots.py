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


def plot_metric_vs_size(records: list[dict], metric: str, path: Path, title: str = "") -> Path | None:
    """One panel per mode; x = size G (log2), y = metric; one line per method (mean over seeds) with a shaded band
    over the 95% intervals (`<metric>_ci`; with several seeds their envelope) where present. None if no data."""
    rows = [r for r in records if r.get(metric) is not None]
    if not rows:
        return None
    modes = sorted({r["mode"] for r in rows if r["mode"] != "full"}) or ["full"]
    fig = Figure(figsize=(5.2 * len(modes), 4))
    axes = fig.subplots(1, len(modes), squeeze=False, sharey=True)
    for ax, mode in zip(axes[0], modes):
        for method, (color, marker, ls) in METHOD_STYLE.items():
            pts = _panel_points(rows, method, mode, metric)
            if not pts:
                continue
            xs, ys, los, his = zip(*pts)
            ax.plot(xs, ys, color=color, marker=marker, linestyle=ls, label=method)
            band = [(x, lo, hi) for x, lo, hi in zip(xs, los, his) if lo is not None]
            if band:
                bx, blo, bhi = zip(*band)
                ax.fill_between(bx, blo, bhi, color=color, alpha=0.15, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("SAE size G (latents)")
        ax.set_title(f"{mode} mode" if mode != "full" else "trained")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(METRIC_LABEL.get(metric, metric))
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title or METRIC_LABEL.get(metric, metric))
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def _merge_seeds(bands: dict) -> dict[str, dict[str, dict]]:
    """{seed: {method: {band: r}}} -> {method: {band: r}}: the mean over seeds' measured bands, the envelope of their
    intervals. A one-seed {method: {band: r}} is returned as it is."""
    if not bands or any(m in bands for m in METHOD_STYLE):
        return bands
    merged: dict[str, dict[str, list]] = {}
    for per_method in bands.values():
        for method, per_band in (per_method or {}).items():
            for b, r in per_band.items():
                merged.setdefault(method, {}).setdefault(b, []).append(r)
    out: dict[str, dict[str, dict]] = {}
    for method, per_band in merged.items():
        for b, rs in per_band.items():
            ok = [r for r in rs if r.get("mean") is not None and r.get("measured", True)]
            if not ok:
                out.setdefault(method, {})[b] = {"mean": None}
                continue
            los = [r["lo"] for r in ok if r.get("lo") is not None]
            his = [r["hi"] for r in ok if r.get("hi") is not None]
            out.setdefault(method, {})[b] = {"mean": float(np.mean([r["mean"] for r in ok])),
                                             "lo": min(los) if los else None, "hi": max(his) if his else None}
    return out


def plot_interp_bands(bands: dict[str, dict[str, dict]], path: Path) -> Path | None:
    """Grouped bars: mean Pearson score per importance band for each method, with bootstrap intervals.

    `bands` is {method: {band: r}} or, with seeds, {seed: {method: {band: r}}} (then the mean over seeds)."""
    bands = _merge_seeds(bands)
    if not bands:
        return None
    methods = list(bands)
    band_names = list(next(iter(bands.values())))
    width = 0.8 / len(methods)
    fig = Figure(figsize=(1.6 + 1.8 * len(band_names), 4))
    ax = fig.subplots()
    for i, method in enumerate(methods):
        color = METHOD_STYLE.get(method, ("tab:orange",))[0]
        for j, b in enumerate(band_names):
            x = j + (i - (len(methods) - 1) / 2) * width
            r = bands[method].get(b, {})
            if r.get("mean") is None or r.get("measured") is False:  # no latent of this band fired on the held-out data: nothing to score
                ax.text(x, 0.02, "n/a", ha="center", fontsize=7, rotation=90)
                continue
            has_ci = r.get("lo") is not None and r.get("hi") is not None
            err = [[max(0.0, r["mean"] - r["lo"])], [max(0.0, r["hi"] - r["mean"])]] if has_ci else None
            ax.bar(x, r["mean"], width, yerr=err, color=color, capsize=3, label=method if j == 0 else None)
    ax.set_xticks(range(len(band_names)), band_names)
    ax.set_xlabel("importance band (latent ranks)")
    ax.set_ylabel("explain-then-simulate Pearson r")
    ax.axhline(0, color="black", lw=0.5)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)
