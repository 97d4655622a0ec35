"""Sufficiency checks: they pass on a run where size matters and has levelled off, and fail where it does not."""

import numpy as np
import pytest

from progsae.report.sufficiency import density_histograms_figure, late_change, plateau_check, size_check, sufficiency_section


def _records(fvus: dict[int, float], noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.normal(0, noise, 500)  # shared resampling: the replicates of every SAE move together
    records, reps = [], {}
    for size, fvu in fvus.items():
        folder = f"seed-0/saes/vanilla-{size}"
        records.append({"seed": 0, "method": "vanilla", "size": size, "mode": "full", "folder": folder, "fvu": fvu})
        reps[folder] = {"fvu": fvu + base + rng.normal(0, noise / 10, 500)}
    return records, reps


def test_size_check_holds_when_fvu_falls_with_n_and_fails_when_it_does_not():
    ok = size_check(*_records({64: 0.30, 128: 0.25, 256: 0.20}, noise=0.01))
    assert ok.passed is True and "FVU(n=64) − FVU(n=128) = +0.0500" in ok.evidence
    flat = size_check(*_records({64: 0.30, 128: 0.25, 256: 0.2502}, noise=0.01))
    assert flat.passed is False and "✗" in flat.evidence
    assert size_check([], {}).passed is None


def lr(t, total=100_000, decay_frac=0.2):
    start = (1 - decay_frac) * total
    return 1e-3 if t <= start else 1e-3 * (total - t) / (total - start)


def test_plateau_check_compares_the_start_of_the_lr_decay_with_the_end():
    flat = [{"tokens": t, "fvu": 0.2, "lr": lr(t)} for t in range(1000, 100_001, 1000)]
    falling = [{"tokens": t, "fvu": 1.0 / (t / 1000), "lr": lr(t)} for t in range(1000, 100_001, 1000)]
    assert abs(late_change(flat)[2]) < 1e-12
    assert late_change(falling)[2] > 0.05
    assert plateau_check({"a": flat}).passed is True
    check = plateau_check({"a": flat, "b": falling})
    assert check.passed is False and "still falling: b" in check.evidence
    # held-out FVU, where logged, decides: the noisy training-batch FVU is ignored; the decay starts at 80k tokens
    heldout = [{"tokens": t, "fvu": 0.2 + 0.1 * (t % 2000 == 0), "lr": lr(t),
                **({"heldout_fvu": 0.30 if t <= 80_000 else 0.25} if t % 5000 == 0 else {})}
               for t in range(1000, 100_001, 1000)]
    assert late_change(heldout) == pytest.approx((0.30, 0.25, 0.05 / 0.25))
    assert plateau_check({"c": heldout}).passed is False
    assert "0.3000 at the start of the decay, 0.2500 at the end" in plateau_check({"c": heldout}).evidence
    lines = sufficiency_section([check], [["b", 0.1, 0.0, 32.0]])
    assert any("unreliable" in line for line in lines)


def test_a_curve_flat_only_inside_the_decay_fails():
    """FVU falls 10% from the decay's start to 90% of tokens, then is flat: the last 10% alone would call it levelled."""
    curve = [{"tokens": t, "lr": lr(t), "heldout_fvu": 0.22 if t <= 80_000 else max(0.20, 0.22 - 0.002 * (t - 80_000) / 1000)}
             for t in range(5000, 100_001, 5000)]
    assert [m["heldout_fvu"] for m in curve if m["tokens"] >= 90_000] == [0.2, 0.2, 0.2]
    before, end, change = late_change(curve)
    assert (before, end) == (0.22, 0.20) and change == pytest.approx(0.1)
    assert plateau_check({"x": curve}).passed is False
    # a run logged without the learning rate: the decay is taken to start at 80% of the tokens
    assert late_change([{k: v for k, v in m.items() if k != "lr"} for m in curve])[:2] == (0.22, 0.20)


def test_feature_density_figure_counts_never_firing_latents(tmp_path):
    rng = np.random.default_rng(0)
    f = 10 ** rng.uniform(-4, -0.5, 256)
    f[:7] = 0
    firing = {f"seed-{s}/saes/vanilla-256": f for s in (0, 1)}
    path = density_histograms_figure(firing, tmp_path / "d.png")
    assert path is not None and path.stat().st_size > 10_000
    assert density_histograms_figure({}, tmp_path / "e.png") is None


def test_findings_json_says_unreliable_when_a_sufficiency_check_fails():
    from progsae.report.findings import training_time_finding
    from progsae.report.sufficiency import findings_document

    still_falling = [{"tokens": t, "heldout_fvu": 0.3 - 0.001 * t / 1000, "lr": lr(t)} for t in range(5000, 100_001, 5000)]
    flat = [{"tokens": t, "heldout_fvu": 0.2, "lr": lr(t)} for t in range(5000, 100_001, 5000)]
    f = [training_time_finding({})]
    bad = findings_document(f, [plateau_check({"x": still_falling})])
    assert bad["reliable"] is False and "levelled off" in bad["failed_checks"][0]["check"]
    assert "still falling: x" in bad["failed_checks"][0]["evidence"] and bad["findings"][0]["key"] == "training_time"
    good = findings_document(f, [plateau_check({"x": flat})])
    assert good["reliable"] is True and good["failed_checks"] == []
