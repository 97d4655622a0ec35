"""The report: findings table with w / t / l and the verdict rule, intervals in every results cell, outliers and
seeds sections, figures with interval bands; the HTML embeds its figures and scrolls its tables."""

import base64
import json

from test_findings import N, band_set, build_study, fit, planted

from progsae.report.findings import VERDICT_RULE, compute_findings, interpretability_finding, matryoshka_finding, ordering_finding
from progsae.report.render import markdown_to_html, render_markdown, write_report
from progsae.report.size_plots import _panel_points, plot_interp_bands, plot_metric_vs_size

OUTLIERS = {
    "train": {"rows": 300000, "dropped": 12, "positions": {"0": 10, "1": 2}, "variance_share": 0.0123,
              "rule": {"factor": 5.0, "median_norm": 3.2, "threshold": 16.0, "reference_split": "train"}},
    "test": {"rows": 20000, "dropped": 0, "positions": {}, "variance_share": 0.0, "rule": None},
}


def study(**planted_fvu):
    records, reps = build_study(planted(**planted_fvu), seeds=(0, 1), own=0.005)
    bands = {s: {"pruned-ef2": band_set((0.7, 0.7, 0.7), seed=s), "matryoshka": band_set((0.65, 0.5, 0.3), seed=10 + s)}
             for s in (0, 1)}
    timings = {"n_latents": N, "train": {"0": {f"vanilla-{N}": 10.0, f"matryoshka-{N}": 12.0},
                                         "1": {f"vanilla-{N}": 10.0, f"matryoshka-{N}": 12.5}}}
    return records, reps, {0: fit(), 1: fit()}, bands, timings


def test_verdicts_follow_the_numbers():
    records, reps, *_ = study(pruned_ef2=0.1, pruned_freq=0.2, pruned_unsorted=0.3, matryoshka=0.05)
    assert ordering_finding(records, reps).verdict == "supported"
    assert matryoshka_finding(records, reps).verdict == "supported"
    records, reps, *_ = study(pruned_ef2=0.4, pruned_freq=0.3, pruned_unsorted=0.2, matryoshka=0.5)
    assert ordering_finding(records, reps).verdict == "contradicted"
    assert matryoshka_finding(records, reps).verdict == "contradicted"


def test_all_findings_and_report_files(tmp_path):
    records, reps, power_laws, bands, timings = study(pruned_ef2=0.1, pruned_freq=0.2, pruned_unsorted=0.3, matryoshka=0.05)
    findings = compute_findings(records, reps, power_laws, bands, timings)
    # four claims supported; training time from single wall times (no step_timing) is reported, not judged
    assert [f.verdict for f in findings if not f.context] == ["supported"] * 4 + ["inconclusive"]
    assert "1.25×" in findings[-1].evidence and "not counted" in findings[-1].evidence
    json.dumps([f.to_dict() for f in findings])
    fig = plot_metric_vs_size(records, "fvu", tmp_path / "figures" / "fvu.png")
    plot_interp_bands(bands, tmp_path / "figures" / "interp.png")
    md = render_markdown("t", ["summary"], findings, [("FVU", "figures/fvu.png"), ("interp", "figures/interp.png")],
                         records, [["vanilla-256", 10.0, 1.0]], outliers=OUTLIERS)
    md_path, html_path = write_report(tmp_path, md)
    text = md_path.read_text()
    assert "| claim (docs/method.md) | this run | w / t / l | numbers |" in text
    assert "| 4 / 0 / 0 |" in text  # the ordering finding: 2 pairs x 2 sizes in retopk (mask shown, not counted), all won
    assert VERDICT_RULE in text
    # results cells carry their interval; the plot-only G = n copies are not listed again
    ef2 = next(r for r in records if r["method"] == "pruned-ef2" and r["size"] == 64 and r["mode"] == "mask" and r["seed"] == 0)
    lo, hi = ef2["fvu_ci"]
    assert f"| 0 | pruned-ef2 | 64 | mask | {ef2['fvu']:.4g} [{lo:.4g}, {hi:.4g}] |" in text
    assert "| 0 | pruned-ef2 | 256 | mask |" not in text
    assert "## Rows dropped as outliers" in text and "| train | 300000 | 12 | 0: 10, 1: 2 | 1.23% |" in text
    assert "norm > 5 × median norm 3.2 = 16 (median of the train split)" in text and "none (outliers kept)" in text
    assert "Seeds: 0, 1. Across-seed spread" in text and "| matryoshka | 64 | mask | 2 |" in text
    assert "## Comparisons" in text and "seed 1: a − b [95% interval]" in text
    page = html_path.read_text()
    assert base64.b64encode(fig.read_bytes()).decode()[:200] in page
    assert "<table>" in page and "src=\"figures/" not in page
    assert page.count('<div class="scroll" style="overflow-x:auto"><table>') == page.count("<table>")
    assert 'name="viewport"' in page


def test_report_without_optional_inputs(tmp_path):
    records, _, _, _, _ = study()
    findings = compute_findings(records, {}, None, None, None)
    assert {f.verdict for f in findings} == {"inconclusive"}
    md = render_markdown("t", [], findings, [], [r for r in records if r["seed"] == 0], [])
    assert "Not recorded for this run." in md and "one seed: no across-seed spread" in md
    assert "<h2>Findings</h2>" in markdown_to_html(md, tmp_path)


def test_size_plot_draws_interval_bands_and_uses_the_full_size_copies(tmp_path):
    records, *_ = study(matryoshka=0.1)
    pts = _panel_points(records, "pruned-ef2", "mask", "fvu")
    assert [p[0] for p in pts] == [64, 128, N]  # the G = n copy draws the last point
    assert all(lo is not None and lo < v < hi for _, v, lo, hi in pts)
    vanilla = _panel_points(records, "vanilla", "retopk", "fvu")
    assert [p[0] for p in vanilla] == [64, 128, N]  # size-matched vanilla SAEs appear in every panel
    fig = plot_metric_vs_size(records, "fvu", tmp_path / "fvu.png")
    no_ci = [{**r, "fvu_ci": None} for r in records]
    plain = plot_metric_vs_size(no_ci, "fvu", tmp_path / "plain.png")
    assert fig.stat().st_size > 5000 and plain.stat().st_size > 5000
    assert fig.read_bytes() != plain.read_bytes()


def test_bands_without_scored_latents_are_named_not_plotted(tmp_path):
    bands = {0: {"pruned-ef2": band_set((0.7, 0.7, 0.7), measured=(True, False, True)),
                 "matryoshka": band_set((0.6, 0.5, 0.3), seed=10)}}
    f = interpretability_finding(bands)
    assert "64-128 (pruned-ef2 not measured)" in f.evidence and f.verdict == "supported"
    assert plot_interp_bands(bands, tmp_path / "b.png").stat().st_size > 5000
    assert plot_interp_bands(bands[0], tmp_path / "one_seed.png").stat().st_size > 5000
    for b in bands[0]["matryoshka"].values():
        b.update(measured=False, mean=None, scores=[])
    assert interpretability_finding(bands).verdict == "inconclusive"
