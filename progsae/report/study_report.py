"""The report of a `progsae reproduce` run: figures, findings, timings, report.md and report.html."""

from __future__ import annotations

import json

from progsae.report.findings import compute_findings
from progsae.report.render import render_markdown, write_report
from progsae.report.size_plots import plot_interp_bands, plot_metric_vs_size
from progsae.sae.io import atomic_write_json

SIZE_FIGURES = (
    ("fvu", "FVU against size"),
    ("ce_recaptured_zero", "Recaptured LM loss (vs zero-ablation) against size"),
    ("ce_recaptured_mean", "Recaptured LM loss (vs mean-ablation) against size"),
    ("delta_ce", "ΔCE against size"),
    ("rsa", "RSA with the original activations against size"),
)


def write_study_report(ctx) -> None:
    """Read the run folder's results and write figures, timings.json, report.md and report.html."""
    from progsae.study.pipeline import timings

    cfg, out = ctx.cfg, ctx.out
    records = json.loads(ctx.path("results.json").read_text())
    power_law = json.loads(ctx.path("power_law.json").read_text())
    bands = json.loads(ctx.path("evals", "bands.json").read_text())
    t = timings(ctx)
    atomic_write_json(ctx.path("timings.json"), t)

    figures = [("Importance power law (vanilla SAE, E[f²]-sorted) and cumulative share", "figures/power_law.png")]
    for metric, caption in SIZE_FIGURES:
        if plot_metric_vs_size(records, metric, ctx.path("figures", f"{metric}.png"), title=caption):
            figures.append((caption, f"figures/{metric}.png"))
    if plot_interp_bands(bands, ctx.path("figures", "interp_bands.png")):
        figures.append(("Interpretability (explain-then-simulate Pearson r) per importance band", "figures/interp_bands.png"))

    n = cfg.n_latents
    base = t["train"].get(f"vanilla-{n}")
    timing_rows = [[name, s, (s / base) if (s and base) else None] for name, s in t["train"].items()]
    stage_line = ", ".join(f"{k} {v:.0f} s" for k, v in t["stages"].items() if v is not None)
    summary = [
        f"Model `{cfg.data.model}`, hook `{cfg.data.hook}`, corpus `{cfg.data.corpus}`: "
        f"{cfg.data.tokens:,} training and {cfg.data.test_tokens:,} held-out tokens (context {cfg.data.context_length}).",
        f"{cfg.train.arch} SAEs with k = {cfg.train.k}, n = {n}, granularities G ∈ {cfg.train.granularities}, "
        f"{cfg.train.epochs:g} epoch(s), batch {cfg.train.batch_size}, seed {cfg.train.seed}; pruning modes {cfg.eval.modes}.",
        f"Wall-clock per finished stage: {stage_line}." if stage_line else "",
        "Every verdict below is computed from results.json, power_law.json and evals/bands.json by progsae.report.findings.",
    ]
    findings = compute_findings(records, power_law, bands, t)
    atomic_write_json(ctx.path("findings.json"), [f.__dict__ for f in findings])
    md = render_markdown(f"progsae study: {cfg.name}", summary, findings, figures, records, timing_rows)
    write_report(out, md)
