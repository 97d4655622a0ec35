"""Study figures: metric vs size (main / control panels), paired differences, L0-FVU frontier, interpretability bands."""

import numpy as np

from progsae.report.size_plots import interp_bands_figure, metric_vs_size_figure, plot_interp_bands, plot_metric_vs_size
from progsae.report.study_figures import (l0_fvu_frontier_figure, paired_difference_points, plot_l0_fvu_frontier,
                                          plot_paired_differences)

N, SIZES, SEEDS, R = 256, (64, 128, 256), (0, 1), 40
MAIN_FVU = {"matryoshka": 0.20, "pruned-ef2": 0.22, "vanilla": 0.19}
CONTROL_FVU = {"pruned-freq": 0.30, "pruned-unsorted": 0.70, "pruned-random": 0.76}


def _row(seed, method, size, mode, folder, fvu, l0, copy=False):
    r = {"seed": seed, "method": method, "size": size, "mode": mode, "folder": folder,
         "fvu": fvu, "fvu_ci": [fvu - 0.005, fvu + 0.005], "l0": l0, "l0_ci": [l0 - 0.3, l0 + 0.3],
         "ce_recaptured_zero": 1 - fvu / 4, "ce_recaptured_zero_ci": [1 - fvu / 4 - 0.01, 1 - fvu / 4 + 0.01]}
    return {**r, "full_size_copy": True} if copy else r


def synthetic():
    rng = np.random.default_rng(0)
    records, reps = [], {}
    for seed in SEEDS:
        for g in SIZES:
            shrink = (N / g - 1) * 0.02 + seed * 0.002
            f = f"seed-{seed}/saes/vanilla-{g}"
            records.append(_row(seed, "vanilla", g, "full", f, MAIN_FVU["vanilla"] + shrink, 32.0))
            for method, base in {**MAIN_FVU, **CONTROL_FVU}.items():
                if method == "vanilla":
                    continue
                for mode in ("mask", "retopk"):
                    l0 = 32.0 if mode == "retopk" else 32.0 * g / N
                    if g == N:  # the G = n copies of the trained SAEs
                        full = f"seed-{seed}/saes/{'matryoshka' if method == 'matryoshka' else 'vanilla'}-{N}"
                        v = MAIN_FVU["matryoshka" if method == "matryoshka" else "vanilla"] + seed * 0.002
                        records.append(_row(seed, method, g, mode, full, v, 32.0, copy=True))
                    else:
                        f = f"seed-{seed}/families/{method}-{g}-{mode}"
                        records.append(_row(seed, method, g, mode, f, base + shrink, l0))
            records.append(_row(seed, "matryoshka", N, "full", f"seed-{seed}/saes/matryoshka-{N}",
                                MAIN_FVU["matryoshka"] + seed * 0.002, 32.0))
    for r in records:
        reps.setdefault(f"{r['folder']}@{r['size']}", {"fvu": r["fvu"] + rng.normal(0, 0.002, R),
                                                        "ce_recaptured_zero": r["ce_recaptured_zero"] + rng.normal(0, 0.004, R)})
    return records, reps


def test_metric_vs_size_main_panel_fits_the_main_methods(tmp_path):
    records, _ = synthetic()
    path = plot_metric_vs_size(records, "fvu", tmp_path / "fvu.png", title="FVU")
    assert path == tmp_path / "fvu.png" and path.read_bytes()[:4] == b"\x89PNG"
    fig = metric_vs_size_figure(records, "fvu")
    assert [(ax.mode, ax.panel) for ax in fig.axes] == [("mask", "main"), ("mask", "controls"),
                                                        ("retopk", "main"), ("retopk", "controls")]
    assert len(fig.texts) == 1  # one title per figure
    for ax in fig.axes:
        lo, hi = ax.get_ylim()
        if ax.panel == "main":
            assert lo <= 0.19 and hi >= 0.22 + 0.04  # every main method's line and band fits ...
            assert hi < min(CONTROL_FVU["pruned-unsorted"], CONTROL_FVU["pruned-random"])  # ... the controls do not
            assert {l.get_label() for l in ax.get_lines()} - {"_nolegend_"} == {"matryoshka", "pruned-ef2", "vanilla (size-matched)"}
        else:
            assert hi >= 0.76 + 0.04
            assert "pruned-ef2 (reference)" in {l.get_label() for l in ax.get_lines()}
    assert plot_metric_vs_size([], "fvu", tmp_path / "none.png") is None


def test_paired_differences(tmp_path):
    records, reps = synthetic()
    pts = paired_difference_points(records, reps, "fvu", "pruned-ef2")
    assert {(p[0], p[1], p[2]) for p in pts} == {(s, m, g) for s in SEEDS for m in ("mask", "retopk") for g in SIZES}
    small = [p for p in pts if p[2] == 64]
    assert all(abs(p[3] - (MAIN_FVU["matryoshka"] - MAIN_FVU["pruned-ef2"])) < 1e-9 for p in small)
    assert all(p[4] is not None and p[4] < p[5] for p in pts)
    van = paired_difference_points(records, reps, "fvu", "vanilla")
    assert len(van) == len(pts)
    path = plot_paired_differences(records, reps, tmp_path / "paired.png")
    assert path == tmp_path / "paired.png" and path.read_bytes()[:4] == b"\x89PNG"
    # no replicates: points without error bars, still a figure
    assert plot_paired_differences(records, {}, tmp_path / "no_reps.png").exists()
    assert plot_paired_differences([r for r in records if r["method"] != "matryoshka"], reps, tmp_path / "x.png") is None


def test_l0_fvu_frontier(tmp_path):
    records, _ = synthetic()
    path = plot_l0_fvu_frontier(records, tmp_path / "frontier.png")
    assert path == tmp_path / "frontier.png" and path.read_bytes()[:4] == b"\x89PNG"
    ax = l0_fvu_frontier_figure(records).axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert {"matryoshka, mask", "matryoshka, retopk", "pruned-ef2, mask", "vanilla (size-matched)"} <= set(labels)
    assert not any("unsorted" in l or "random" in l for l in labels)
    assert ax.get_ylim()[1] < CONTROL_FVU["pruned-unsorted"]


def band(mean, scored, measured=True):
    return {"mean": mean if measured else None, "lo": mean - 0.1 if measured else None, "hi": mean + 0.1 if measured else None,
            "scored": scored, "measured": measured}


def test_interp_bands_carry_counts_and_mark_unmeasured_bands(tmp_path):
    bands = {s: {"pruned-ef2": {"0-64": band(0.6, 16), "64-128": band(0.5, 16), "128-256": band(0.4, 0, measured=False)},
                 "matryoshka": {"0-64": band(0.7, 16), "64-128": band(0.4, 15), "128-256": band(0.3, 12)}} for s in SEEDS}
    path = plot_interp_bands(bands, tmp_path / "bands.png")
    assert path == tmp_path / "bands.png" and path.read_bytes()[:4] == b"\x89PNG"
    texts = [t.get_text() for t in interp_bands_figure(bands).axes[0].texts]
    assert "n=32" in texts and "n=30" in texts and "n=24" in texts and texts.count("n/a") == 1
    assert plot_interp_bands(bands[0], tmp_path / "one_seed.png").exists()
