"""`progsae reproduce --preset quick` end to end: interrupted inside the evaluate stage, resumed without redoing
finished stages or finished metrics, and every promised file written with the documented schema."""

import json

import pytest

from progsae.cli import main
from progsae.study import pipeline

METRIC_KEYS = {"fvu", "mse", "l0", "dead", "ce_recaptured_zero", "ce_recaptured_mean", "delta_ce", "kl", "rsa", "rsa_full",
               "cka", "interp"}
RECORD_KEYS = {"seed", "folder", "method", "size", "mode"} | METRIC_KEYS | {f"{m}_ci" for m in METRIC_KEYS}
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
    for rel in ("report.md", "report.html", "results.json", "seed-0/power_law.json", "seed-1/power_law.json", "timings.json",
                "findings.json", "rows.json", "figures/power_law-seed-0.png", "figures/fvu.png", "figures/ce_recaptured_zero.png", "figures/delta_ce.png",
                "figures/rsa.png", "figures/interp_bands.png", "figures/paired_differences.png", "figures/l0_fvu_frontier.png",
                "figures/training_curves.png", "figures/feature_density.png"):
        assert (out / rel).stat().st_size > 0, rel
    records = json.loads((out / "results.json").read_text())
    assert records and all(set(r) - {"full_size_copy"} == RECORD_KEYS for r in records)
    assert {r["method"] for r in records} == METHODS and {r["seed"] for r in records} == {0, 1}
    cfg = json.loads((out / "config.json").read_text())
    sizes = cfg["train"]["granularities"]
    for method in METHODS - {"vanilla"}:
        for mode in ("mask", "retopk"):
            got = sorted(r["size"] for r in records if r["method"] == method and r["mode"] == mode and r["seed"] == 0)
            assert got == sizes, (method, mode)
    for r in records:
        assert 0 <= r["fvu"] < 1.5 and r["l0"] > 0 and -1 <= r["rsa"] <= 1
        control = r["method"] in ("pruned-freq", "pruned-unsorted", "pruned-random") and not r.get("full_size_copy")
        assert (r["ce_recaptured_zero"] is None) == control  # the preset's ce_controls: false measures CE for the main methods only
        for m in ("fvu", "rsa") if control else ("fvu", "rsa", "ce_recaptured_zero", "ce_recaptured_mean", "kl"):  # every number has its interval
            lo, hi = r[f"{m}_ci"]
            assert lo <= r[m] <= hi, (r["folder"], m)
        if r["mode"] != "full" and not r.get("full_size_copy"):  # a cut of a family: compared with the family's own full-size reconstruction
            assert r["rsa_full"] is not None and r["rsa_full_ci"] is not None and r["rsa_full"] > r["rsa"] - 0.5
    full = [r for r in records if r["size"] == sizes[-1]]
    assert sum(not r.get("full_size_copy") for r in full) == 2 * 2  # vanilla-n and matryoshka-n, once per seed
    rows = json.loads((out / "rows.json").read_text())
    assert set(rows) == {"train", "validation", "test"} and all(r["rule"]["factor"] == 5.0 for r in rows.values())
    # pruning keeps the nesting: the mask-mode effective L0 grows with the size for the sorted family
    ef2 = sorted((r["size"], r["l0"]) for r in records if r["method"] == "pruned-ef2" and r["mode"] == "mask" and r["seed"] == 0)
    assert [l0 for _, l0 in ef2] == sorted(l0 for _, l0 in ef2)
    power_law = json.loads((out / "seed-0" / "power_law.json").read_text())
    assert power_law["alpha"] > 0 and 0 <= power_law["r2"] <= 1 and power_law["split"] == "validation"
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["train"]) == {"0", "1"}
    assert set(timings["train"]["0"]) == {f"vanilla-{g}" for g in sizes} | {f"matryoshka-{sizes[-1]}"}
    assert all(timings["stages"][s] > 0 for s in ("collect", "train", "evaluate"))
    doc = json.loads((out / "findings.json").read_text())
    findings = doc["findings"]
    assert isinstance(doc["reliable"], bool) and doc["reliable"] == (not doc["failed_checks"])
    assert len(findings) >= 5 and all(f["verdict"] in {"supported", "contradicted", "mixed", "inconclusive"} for f in findings)
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert "## Is the run big enough to judge?" in (out / "report.md").read_text()
    assert (out / "latents.html").read_text().count('class="card"') >= 5 and "latents.html" in (out / "report.md").read_text()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["seeds"] == [0, 1] and prov["torch"].startswith("2.") and set(prov["rows_dropped"]) == {"train", "validation", "test"}
    assert all(len(c or "") >= 40 for c in prov["stage_commits"].values() if c is not None)


@pytest.fixture(scope="module")
def streamed_quick_run(tmp_path_factory):
    """The quick preset with data.stream: true (every SAE from one stream of the model, no train rows stored)."""
    from progsae.config import preset_path

    root = tmp_path_factory.mktemp("quick-stream")
    cfg = json.loads(preset_path("quick").read_text())
    cfg["data"]["stream"] = True
    (root / "quick-stream.json").write_text(json.dumps(cfg))
    assert main(["reproduce", "--config", str(root / "quick-stream.json"), "--out", str(root / "run"), "--no-progress"]) == 0
    return root / "run"


def test_streamed_quick_run_stores_no_train_rows_and_judges_like_the_cached_run(streamed_quick_run, quick_run):
    out, cached = streamed_quick_run, quick_run[0]
    assert not list(out.rglob("train-*.safetensors")) and list(cached.rglob("train-*.safetensors"))
    assert sorted(json.loads((out / "acts" / "meta.json").read_text())["splits"]) == ["test", "validation"]
    assert json.loads((out / "stages" / "train.json").read_text())["streamed"] is True
    prov = json.loads((out / "seed-1" / "saes" / "matryoshka-1024" / "cfg.json").read_text())["provenance"]
    assert prov["stream"]["epochs"] == 3 and prov["outlier_rule"]["reference_split"] == "validation" and prov["steps"] > 100
    records, reference = (json.loads((d / "results.json").read_text()) for d in (out, cached))
    key = lambda r: (r["seed"], r["method"], r["size"], r["mode"])  # noqa: E731
    assert sorted(map(key, records)) == sorted(map(key, reference))
    ref = {key(r): r for r in reference}
    for r in records:  # every interval the cached run reports, the streamed run reports too
        assert {k for k, v in r.items() if k.endswith("_ci") and v is not None} == {k for k, v in ref[key(r)].items() if k.endswith("_ci") and v is not None}
        if r["mode"] == "full" and r["method"] == "vanilla" and not r.get("full_size_copy"):
            assert abs(r["fvu"] - ref[key(r)]["fvu"]) < 0.1, key(r)
    findings, cached_findings = (json.loads((d / "findings.json").read_text())["findings"] for d in (out, cached))
    assert [f["claim"] for f in findings] == [f["claim"] for f in cached_findings]
    for f, g in zip(findings, cached_findings):  # the same comparisons, counted the same way
        assert [(c.get("label"), c.get("seed"), c.get("metric")) for c in f["comparisons"]] == \
               [(c.get("label"), c.get("seed"), c.get("metric")) for c in g["comparisons"]]
