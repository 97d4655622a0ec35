"""Findings are computed from numbers (each verdict flips when the numbers do); the HTML embeds its figures."""

import base64

from progsae.report.findings import compute_findings, matryoshka_finding, ordering_finding, power_law_finding
from progsae.report.render import render_markdown, write_report
from progsae.report.size_plots import plot_interp_bands, plot_metric_vs_size

SIZES = [64, 128, 256]


def records(ef2=0.2, freq=0.3, unsorted=0.5, mat=0.1):
    out = []
    for mode in ("mask", "retopk"):
        for size in SIZES:
            scale = 256 / size
            for method, fvu in [("pruned-ef2", ef2), ("pruned-freq", freq), ("pruned-unsorted", unsorted), ("matryoshka", mat)]:
                v = fvu * scale
                out.append({"method": method, "size": size, "mode": mode, "fvu": v, "ce_recaptured_zero": 1 - v,
                            "rsa": 1 - v / 2, "l0": 8.0})
    return out


def test_ordering_verdict_follows_the_numbers():
    assert ordering_finding(records()).verdict == "supported"
    assert ordering_finding(records(ef2=0.4, freq=0.3)).verdict == "not supported"
    assert "4/4" in ordering_finding(records()).evidence  # 2 modes x 2 sizes below n


def test_matryoshka_verdict_follows_the_numbers():
    assert matryoshka_finding(records(mat=0.1)).verdict == "supported"
    assert matryoshka_finding(records(mat=0.9)).verdict == "not supported"


def test_all_findings_and_report_files(tmp_path):
    recs = records()
    power_law = {"alpha": 0.8, "r2": 0.97, "fit_range": [10, 200], "alpha_ci": [0.75, 0.85], "rejected_for": [],
                 "mle": {"comparisons": {"lognormal": {"R": 1.5, "p": 0.2, "preferred": "inconclusive"},
                                         "exponential": {"R": 30.0, "p": 0.001, "preferred": "power_law"}}}}
    bands = {"pruned-ef2": {"0-64": {"mean": 0.7, "lo": 0.6, "hi": 0.8}, "128-256": {"mean": 0.6, "lo": 0.5, "hi": 0.7}},
             "matryoshka": {"0-64": {"mean": 0.6, "lo": 0.5, "hi": 0.7}, "128-256": {"mean": 0.4, "lo": 0.3, "hi": 0.5}}}
    timings = {"n_latents": 256, "train": {"vanilla-256": 10.0, "matryoshka-256": 12.0}}
    findings = compute_findings(recs, power_law, bands, timings)
    assert [f.verdict for f in findings] == ["supported"] * 5
    assert "1.20×" in findings[-1].evidence
    assert power_law_finding({**power_law, "rejected_for": ["lognormal"]}).verdict == "mixed"
    assert power_law_finding({**power_law, "r2": 0.5}).verdict == "not supported"
    fig = plot_metric_vs_size(recs, "fvu", tmp_path / "figures" / "fvu.png")
    plot_interp_bands(bands, tmp_path / "figures" / "interp.png")
    md = render_markdown("t", ["summary"], findings, [("FVU", "figures/fvu.png"), ("interp", "figures/interp.png")],
                         recs, [["vanilla-256", 10.0, 1.0]])
    md_path, html_path = write_report(tmp_path, md)
    assert fig.stat().st_size > 5000 and "| pruned-ef2 |" in md_path.read_text()
    page = html_path.read_text()
    assert base64.b64encode(fig.read_bytes()).decode()[:200] in page
    assert "<table>" in page and "src=\"figures/" not in page


def test_bands_without_scored_latents_are_named_not_plotted(tmp_path):
    from progsae.report.findings import interpretability_finding

    empty = {"mean": None, "lo": None, "hi": None, "latents": 0}
    bands = {"pruned-ef2": {"0-64": {"mean": 0.7, "lo": 0.6, "hi": 0.8}, "64-128": empty},
             "matryoshka": {"0-64": {"mean": 0.6, "lo": 0.5, "hi": 0.7}, "64-128": {"mean": 0.3, "lo": 0.1, "hi": 0.5}}}
    f = interpretability_finding(bands)
    assert f.verdict == "supported" and "pruned-ef2 64-128" in f.evidence
    assert plot_interp_bands(bands, tmp_path / "b.png").stat().st_size > 5000
    bands["matryoshka"]["64-128"] = empty
    assert interpretability_finding(bands).verdict == "not measured"
