"""Figures of progressive coding: the importance power law (log-log rank plot and cumulative share).

Figures are built on matplotlib's object API with the Agg canvas, so they never need a display and
never change the global pyplot backend.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from progsae.progressive.power_law import PowerLawFit, binned_points, fit_power_law, log_rank_bins, sorted_live
from progsae.sae.io import atomic_write_bytes


def save_png(fig: Figure, path, dpi: int = 120) -> Path:
    """Render a figure with the Agg canvas and write the PNG atomically."""
    path = Path(path)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return path


def power_law_figure(values, path, fit: PowerLawFit | None = None, title: str = "", label: str = "E[f²]·‖W_dec‖²") -> Path:
    """Left: sorted importance vs rank (log-log) with the least-squares fit over its range.
    Right: cumulative share of total importance against the size G. Saved as PNG at `path`."""
    fit = fit or fit_power_law(values)
    live, n_total = sorted_live(values)
    ranks = np.arange(1, live.size + 1)
    lo, hi = fit.fit_range

    fig = Figure(figsize=(10, 4))
    ax, ax2 = fig.subplots(1, 2)
    ax.loglog(ranks, live, ".", ms=2.5, color="tab:blue", alpha=0.6, label=f"live latents ({live.size} of {n_total})")
    r_fit = np.geomspace(lo, hi, 64)
    ci = fit.alpha_ci
    ci_text = f", {fit.settings.ci_level:.0%} CI [{ci[0]:.2f}, {ci[1]:.2f}]" if np.isfinite(ci[0]) else ""
    bx, by = binned_points(live, lo, hi, log_rank_bins(lo, hi, fit.settings.bins_per_decade))
    ax.loglog(np.exp(bx), np.exp(by), "o", ms=3.5, mfc="none", color="black", label=f"log-rank bins ({bx.size}, fitted)")
    ax.loglog(r_fit, fit.predicted(r_fit), "-", color="tab:red", lw=2, label=f"LS fit α={fit.alpha:.2f}{ci_text}, R²={fit.r2:.3f}")
    ax.axvspan(lo, hi, color="tab:red", alpha=0.06, label=f"fit range ranks {lo}–{hi}")
    if fit.mle is not None:
        verdict = ", ".join(f"vs {k}: R={c.R:+.1f} (p={c.p:.2g})" for k, c in fit.mle.comparisons.items())
        ax.text(0.02, 0.02, f"MLE γ={fit.mle.gamma:.2f} (rank α={fit.mle.alpha_rank:.2f})\n{verdict}\n"
                f"bend {fit.bend:+.2f}: power law {'supported' if fit.supported else 'not supported'}",
                transform=ax.transAxes, fontsize=7, va="bottom")
    ax.set_xlabel("rank r")
    ax.set_ylabel(f"importance {label}")
    ax.set_title("sorted importance")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper right")

    share = np.asarray(fit.cumulative_share)
    sizes = np.arange(1, share.size + 1)
    ax2.plot(sizes, share, color="tab:blue")
    for lvl, g in fit.size_for_share.items():
        ax2.axhline(float(lvl), color="gray", lw=0.5, ls=":")
        ax2.plot([g], [float(lvl)], "o", color="tab:red", ms=4)
        ax2.annotate(f"G={g}", (g, float(lvl)), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax2.set_xscale("log")
    ax2.set_xlabel("size G (top-G latents)")
    ax2.set_ylabel("cumulative share of importance")
    ax2.set_ylim(0, 1.02)
    ax2.set_title("cumulative share")
    ax2.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, path)
