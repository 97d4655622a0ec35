"""`progsae reproduce --preset quick` end to end: interrupted inside the evaluate stage, resumed without redoing
finished stages or finished metrics, and every promised file written with the documented schema."""

import json

import pytest

from progsae.cli import main
from progsae.study import pipeline

RECORD_KEYS = {"method", "size", "mode", "fvu", "mse", "l0", "ce_recaptured_zero", "ce_recaptured_mean",
               "delta_ce", "kl", "rsa", "cka", "interp"}
METHODS = {"vanilla", "matryoshka", "pruned-ef2", "pruned-freq", "pruned-unsorted", "pruned-random"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    calls = {"collect": 0, "metrics": []}
    real_collect, real_metric = pipeline.run_collect, pipeline.evaluate_metric

    def counting_collect(ctx):
        calls["collect"] += 1
        return real_collect(ctx)

    def interrupted_metric(ctx, metric, *args):
        if calls["metrics"]:  # as if the user pressed Ctrl-C once the first metric was written
            raise KeyboardInterrupt
        calls["metrics"].append(metric)
        return real_metric(ctx, metric, *args)

    stages = {s.name: s for s in pipeline.STAGES}
    stages["collect"].run = counting_collect
    pipeline.evaluate_metric = interrupted_metric
    try:
        assert main(["reproduce", "--preset", "quick", "--out", str(out), "--no-progress"]) == 130
        before = {name: json.loads((out / "stages" / f"{name}.json").read_text()) for name in ("collect", "train", "importance", "families")}
        assert not (out / "stages" / "evaluate.json").exists()
        first = out / "evals" / f"{calls['metrics'][0]}.json"
        written = (first.read_bytes(), first.stat().st_mtime_ns)
        pipeline.evaluate_metric = real_metric
        assert main(["reproduce", "--preset", "quick", "--out", str(out), "--no-progress"]) == 0
    finally:
        stages["collect"].run = real_collect
        pipeline.evaluate_metric = real_metric
    return out, before, calls | {"first_metric": (first, written)}


def test_resume_skips_finished_stages(quick_run):
    out, before, calls = quick_run
    assert calls["collect"] == 1
    for name, marker in before.items():
        assert json.loads((out / "stages" / f"{name}.json").read_text())["finished"] == marker["finished"]


def test_resume_keeps_the_metric_finished_before_the_interruption(quick_run):
    out, _, calls = quick_run
    first, (content, mtime) = calls["first_metric"]
    assert first.read_bytes() == content and first.stat().st_mtime_ns == mtime
    for metric in ("recon", "ce", "rsa", "interp"):
        assert (out / "evals" / f"{metric}.json").stat().st_size > 0, metric


def test_quick_preset_writes_every_file_with_the_schema(quick_run):
    out, _, _ = quick_run
    for rel in ("report.md", "report.html", "results.json", "power_law.json", "timings.json", "findings.json",
                "figures/power_law.png", "figures/fvu.png", "figures/ce_recaptured_zero.png", "figures/delta_ce.png",
                "figures/rsa.png", "figures/interp_bands.png"):
        assert (out / rel).stat().st_size > 0, rel
    records = json.loads((out / "results.json").read_text())
    assert records and all(set(r) == RECORD_KEYS for r in records)
    assert {r["method"] for r in records} == METHODS
    cfg = json.loads((out / "config.json").read_text())
    sizes = cfg["train"]["granularities"]
    for method in METHODS - {"vanilla"}:
        for mode in ("mask", "retopk"):
            got = sorted(r["size"] for r in records if r["method"] == method and r["mode"] == mode)
            assert got == sizes, (method, mode)
    for r in records:
        assert 0 <= r["fvu"] < 1.5 and r["l0"] > 0 and -1 <= r["rsa"] <= 1
        assert r["ce_recaptured_zero"] is not None and r["kl"] >= 0
    # pruning keeps the nesting: the mask-mode effective L0 grows with the size for the sorted family
    ef2 = sorted((r["size"], r["l0"]) for r in records if r["method"] == "pruned-ef2" and r["mode"] == "mask")
    assert [l0 for _, l0 in ef2] == sorted(l0 for _, l0 in ef2)
    power_law = json.loads((out / "power_law.json").read_text())
    assert power_law["alpha"] > 0 and 0 <= power_law["r2"] <= 1
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["train"]) == {f"vanilla-{g}" for g in sizes} | {f"matryoshka-{sizes[-1]}"}
    assert all(timings["stages"][s] > 0 for s in ("collect", "train", "evaluate"))
    findings = json.loads((out / "findings.json").read_text())
    assert len(findings) == 5 and all(f["verdict"] in {"supported", "not supported", "mixed", "not measured"} for f in findings)
    assert "data:image/png;base64," in (out / "report.html").read_text()
