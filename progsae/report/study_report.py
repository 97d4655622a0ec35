"""The report of a `progsae reproduce` run: figures, findings, timings, report.md and report.html."""

from __future__ import annotations

import json

from progsae.evals.runner import load_firing
from progsae.report.findings import compute_findings
from progsae.report.k_grid import grid_section
from progsae.report.render import render_markdown, write_report
from progsae.report.size_plots import plot_interp_bands, plot_metric_vs_size
from progsae.report.study_figures import plot_l0_fvu_frontier, plot_paired_differences
from progsae.report.sufficiency import (findings_document, density_histograms_figure, density_rows, plateau_check, size_check, sufficiency_section,
                                        training_curves_figure)
from progsae.provenance import environment
from progsae.sae.io import atomic_write_json

SIZE_FIGURES = (
    ("fvu", "FVU against size"),
    ("ce_recaptured_zero", "Recaptured LM loss (vs zero-ablation) against size"),
    ("ce_recaptured_mean", "Recaptured LM loss (vs mean-ablation) against size"),
    ("delta_ce", "ΔCE against size"),
    ("rsa", "RSA with the original activations against size"),
)


def write_study_report(ctx) -> None:
    """Read the run folder's results and write figures, timings.json, findings.json, report.md and report.html."""
    from progsae.study.pipeline import load_replicates, sae_folders, seed_dir, timings
    from progsae.study.stages import read_marker
    from progsae.train.metrics import read_metrics

    cfg, out = ctx.cfg, ctx.out
    records = json.loads(ctx.path("results.json").read_text())
    power_laws = {str(s): json.loads(ctx.path(seed_dir(s), "power_law.json").read_text()) for s in cfg.seeds}
    bands = json.loads(ctx.path("evals", "bands.json").read_text())
    outliers = json.loads(ctx.path("rows.json").read_text())
    t = timings(ctx)
    atomic_write_json(ctx.path("timings.json"), t)

    figures = [(f"Importance power law (vanilla SAE, E[f²]-sorted) and cumulative share, seed {s}", f"figures/power_law-{seed_dir(s)}.png")
               for s in cfg.seeds[:1]]
    for metric, caption in SIZE_FIGURES:
        if plot_metric_vs_size(records, metric, ctx.path("figures", f"{metric}.png"), title=caption):
            figures.append((caption, f"figures/{metric}.png"))
    if plot_interp_bands(bands, ctx.path("figures", "interp_bands.png")):
        explainer = bands.get("explainer", "token-identity baseline")  # runs before the key: the deterministic explainer
        figures.append((f"Interpretability per importance band: explain-then-simulate Pearson r, explainer = {explainer}",
                        "figures/interp_bands.png"))
    reps = load_replicates(ctx)
    if plot_paired_differences(records, reps, ctx.path("figures", "paired_differences.png")):
        figures.append(("Paired differences: Matryoshka − pruned-ef2 and − size-matched vanilla (FVU, recaptured CE), "
                        "95% paired-bootstrap intervals per seed", "figures/paired_differences.png"))
    if plot_l0_fvu_frontier(records, ctx.path("figures", "l0_fvu_frontier.png")):
        figures.append(("L0–FVU frontier of the main methods (mean over seeds, 95% interval envelopes)", "figures/l0_fvu_frontier.png"))
    curves = {f: read_metrics(ctx.path(f)) for f in sae_folders(cfg) if ctx.path(f, "metrics.jsonl").exists()}
    if training_curves_figure(curves, ctx.path("figures", "training_curves.png")):
        figures.append(("Training curves of every SAE (FVU, L0, dead fraction against tokens)", "figures/training_curves.png"))
    recon = json.loads(ctx.path("evals", "recon.json").read_text()).get("reconstruction", []) if ctx.path("evals", "recon.json").exists() else []
    firing = load_firing(ctx.path("evals", "recon.json"))
    trained = {r["variant"]: r["source"] for r in recon if "/saes/" in r["source"] and r.get("mode") is None}
    if density_histograms_figure({trained[v]: f for v, f in firing.items() if v in trained}, ctx.path("figures", "feature_density.png")):
        figures.append(("Feature density (log10 firing frequency on test tokens) of every trained SAE", "figures/feature_density.png"))
    checks = [size_check(records, reps), plateau_check(curves)]
    sufficiency = sufficiency_section(checks, density_rows(recon))

    n = cfg.n_latents
    timing_rows = []
    for seed, per_sae in t["train"].items():
        base = per_sae.get(f"vanilla-{n}")
        timing_rows += [[f"seed {seed}: {name}", s, (s / base) if (s and base) else None] for name, s in per_sae.items()]
    stage_line = ", ".join(f"{k} {v:.0f} s" for k, v in t["stages"].items() if v is not None)
    d = cfg.data
    ref = "validation" if d.stream else "train"  # a streamed run stores no train rows: its rule's median is validation's
    rule = "every row kept" if cfg.outlier_factor is None else f"rows above {cfg.outlier_factor:g}× the median {ref}-row norm dropped"
    summary = [
        f"Model `{d.model}`, hook `{d.hook}`, corpus `{d.corpus}`: {d.tokens:,} training"
        f"{' (streamed from the running model, every SAE from one pass, never stored)' if d.stream else ''}, "
        f"{d.resolved_validation_tokens:,} validation and {d.test_tokens:,} test tokens (context {d.context_length}); {rule}.",
        f"{cfg.train.arch} SAEs with k = {cfg.train.k}, n = {n}, granularities G ∈ {cfg.train.granularities}, "
        f"{cfg.train.epochs:g} epoch(s), batch {cfg.train.batch_size}, seeds {cfg.seeds}; pruning modes {cfg.eval.modes}.",
        "Orderings, the mean-ablation vector and interpretability explanations read the validation split; every number "
        f"below reads the test split, with a 95% interval from {cfg.eval.bootstrap_replicates} bootstrap resamples of test contexts.",
        f"Wall-clock per finished stage: {stage_line}." if stage_line else "",
        "Every verdict below is computed from results.json, the bootstrap replicates in evals/, seed-*/power_law.json and "
        "evals/bands.json by progsae.report.findings.",
    ]
    prov = {**environment(cfg.device), "seeds": cfg.seeds, "outlier_factor": cfg.outlier_factor,
            "rows_dropped": {split: v["dropped"] for split, v in outliers.items()}, "stage_seconds": t["stages"],
            "stage_commits": {name: (read_marker(out, name) or {}).get("git_commit") for name in t["stages"]}}
    atomic_write_json(ctx.path("provenance.json"), prov)
    findings = compute_findings(records, reps, power_laws, bands, t)
    atomic_write_json(ctx.path("findings.json"), findings_document(findings, checks))
    grid = json.loads(ctx.path("kgrid", "results.json").read_text()) if ctx.path("kgrid", "results.json").exists() else []
    grid_lines, grid_found = grid_section(grid, load_replicates(ctx, "kgrid"), cfg.train.k, n, cfg.eval.modes[0],
                                          ctx.path("figures", "k_grid_frontier.png"))
    if grid_found:
        atomic_write_json(ctx.path("kgrid_findings.json"), [f.to_dict() for f in grid_found])
    md = render_markdown(f"progsae study: {cfg.name}", summary, findings, figures, records, timing_rows, outliers=outliers,
                         extra=sufficiency + grid_lines)
    md += "\n".join(["", "## Provenance", "", "Also in `provenance.json` beside `results.json`.", "",
                      "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in prov.items()), ""])
    if write_latents(ctx):
        md += "\n\nThe latents behind the interpretability scores, with their top test contexts: [latents.html](latents.html)\n"
    write_report(out, md)


def write_latents(ctx) -> bool:
    """latents.html for seed 0's E[f²]-sorted vanilla SAE and Matryoshka SAE (the latents the interp eval scored)."""
    from progsae.data.store import ActivationStore
    from progsae.evals.interp.base import default_detokenize, tokenizer_detokenize
    from progsae.evals.runner import _tokenizer_or_none
    from progsae.progressive import sort_sae
    from progsae.report.latents import latent_cards, write_latent_browser
    from progsae.sae.io import load_sae
    from progsae.study.pipeline import seed_dir

    path = ctx.path("evals", "interp.json")
    if not path.exists():
        return False
    cfg, sd, n = ctx.cfg, seed_dir(ctx.cfg.seeds[0]), ctx.cfg.n_latents
    interp = {r["source"]: r for r in json.loads(path.read_text())["interp"]}
    store = ActivationStore(ctx.path("acts"), outlier_factor=cfg.outlier_factor)
    tok = _tokenizer_or_none(cfg.data.model)
    detok = tokenizer_detokenize(tok) if tok is not None else default_detokenize
    vanilla = load_sae(ctx.path(sd, "saes", f"vanilla-{n}"), device=cfg.device)
    saes = {f"{sd}/pruned-ef2": ("vanilla SAE sorted by E[f²] (rank = E[f²] rank)", sort_sae(vanilla, "ef2", importance=ctx.path(sd, "importance.json"))),
            f"{sd}/matryoshka": ("Matryoshka SAE (rank = position in the nested prefixes)", load_sae(ctx.path(sd, "saes", f"matryoshka-{n}"), device=cfg.device))}
    sections = []
    for source, (note, sae) in saes.items():
        scored = [ls for ls in (interp.get(source) or {}).get("latents", []) if ls.get("score") is not None]
        sections.append((f"{source}: {len(scored)} scored latents", note, latent_cards(store, sae, scored, detok)))
    write_latent_browser(ctx.path("latents.html"), sections, title=f"progsae latent browser: {cfg.name}, {sd}")
    return True
