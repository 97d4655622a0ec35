"""Figures of the study: each metric against SAE size (one line per method), interpretability per band."""

from __future__ import annotations

from pathlib import Path

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


def plot_metric_vs_size(records: list[dict], metric: str, path: Path, title: str = "") -> Path | None:
    """One panel per mode; x = size G (log2), y = metric; one line per method. None if no data."""
    rows = [r for r in records if r.get(metric) is not None]
    if not rows:
        return None
    modes = sorted({r["mode"] for r in rows if r["mode"] != "full"}) or ["full"]
    fig = Figure(figsize=(5.2 * len(modes), 4))
    axes = fig.subplots(1, len(modes), squeeze=False, sharey=True)
    for ax, mode in zip(axes[0], modes):
        for method, (color, marker, ls) in METHOD_STYLE.items():
            pts = sorted((r["size"], r[metric]) for r in rows if r["method"] == method and r["mode"] in (mode, "full"))
            if pts:
                ax.plot(*zip(*pts), color=color, marker=marker, linestyle=ls, label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("SAE size G (latents)")
        ax.set_title(f"{mode} mode" if mode != "full" else "trained")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(METRIC_LABEL.get(metric, metric))
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title or METRIC_LABEL.get(metric, metric))
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def plot_interp_bands(bands: dict[str, dict[str, dict]], path: Path) -> Path | None:
    """Grouped bars: mean Pearson score per importance band for each method, with bootstrap intervals."""
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
            if r.get("mean") is None:  # no latent of this band fired on the held-out data: nothing to score
                ax.text(x, 0.02, "n/a", ha="center", fontsize=7, rotation=90)
                continue
            err = [[r["mean"] - r["lo"]], [r["hi"] - r["mean"]]] if r.get("lo") is not None else None
            ax.bar(x, r["mean"], width, yerr=err, color=color, capsize=3, label=method if j == 0 else None)
    ax.set_xticks(range(len(band_names)), band_names)
    ax.set_xlabel("importance band (latent ranks)")
    ax.set_ylabel("explain-then-simulate Pearson r")
    ax.axhline(0, color="black", lw=0.5)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)
