"""The study's (G, k') grid (train.k_levels): config, the extra SAEs, the grid stage on a synthetic run folder,
and the grid's verdicts by the findings rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures.synthetic import make_synth_store

from progsae.config import StudyConfig, load_study_config
from progsae.data.store import ActivationStore
from progsae.errors import ProgsaeError
from progsae.progressive import importance
from progsae.report.k_grid import grid_findings, grid_section
from progsae.sae.io import load_sae
from progsae.study.k_grid import grid_members
from progsae.study.pipeline import load_replicates, run_k_grid, sae_specs
from progsae.study.stages import RunContext
from progsae.train import TrainConfig, train_sae

pytestmark = pytest.mark.usefixtures("one_thread")


def test_k_levels_add_the_hierarchical_saes_and_leave_other_configs_unchanged(tmp_path):
    plain = load_study_config(preset="quick")
    assert "k_levels" not in plain.to_dict()["train"]  # unset: the train stage key of existing runs is unchanged
    cfg = StudyConfig.from_dict({**plain.to_dict(), "train": {**plain.to_dict()["train"], "k_levels": [4, 8, 16]}})
    extra = sorted(set(sae_specs(cfg)) - set(sae_specs(plain)))
    assert extra == ["hierarchical-1024", "matryoshka-hierarchical-1024", "vanilla-1024-k4", "vanilla-1024-k8"]
    assert sae_specs(cfg)["matryoshka-hierarchical-1024"] == {"n_latents": 1024, "matryoshka": [256, 512, 1024],
                                                              "k_levels": [4, 8, 16]}
    assert sae_specs(cfg)["vanilla-1024-k4"] == {"n_latents": 1024, "k": 4}
    assert cfg.section_hash("train") != plain.section_hash("train")
    for bad, message in (([4, 8], "must strictly increase"), ([8, 4, 16], "must strictly increase"),
                         ([0, 16], "must strictly increase"), ("4,16", "must be list")):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({"train": {"k": 16, "granularities": [64, 128], "k_levels": bad}}))
        with pytest.raises(ProgsaeError, match=f"train.k_levels'? {message}") as e:
            load_study_config(path)
        assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """A run folder with a synthetic store, every SAE of sae_specs (tiny, 40 steps), the vanilla importance,
    and the kgrid stage run on it (reconstruction only: a synthetic store has no LM for recaptured CE)."""
    out = tmp_path_factory.mktemp("grid")
    store = make_synth_store(out / "acts", d_model=16, n_features=64, tokens=12_000, test_tokens=2_000, mean_active=4)
    cfg = StudyConfig.from_dict({"train": {"k": 4, "granularities": [16, 32, 64], "k_levels": [1, 2, 4], "seeds": [0]},
                                 "eval": {"metrics": ["recon"], "modes": ["mask", "retopk"], "bootstrap_replicates": 200}})
    for name, spec in sae_specs(cfg).items():
        tc = TrainConfig(**{"arch": "topk", "k": 4, "steps": 40, "batch_size": 512, "lr": 1e-2, "heldout_rows": 0, **spec})
        train_sae(store, out / "seed-0" / "saes" / name, tc, progress=False)
    importance(load_sae(out / "seed-0" / "saes" / "vanilla-64"), ActivationStore(store)).save(out / "seed-0" / "importance.json")
    ctx = RunContext(cfg, out, progress=False)
    facts = run_k_grid(ctx)
    return ctx, facts


def test_grid_stage_scores_every_method_at_every_size_and_k(grid_run):
    ctx, facts = grid_run
    records = json.loads(ctx.path("kgrid", "results.json").read_text())
    members = grid_members(ctx.cfg, "seed-0")
    assert facts["grid_records"] == len(records) == len(members) == 4 * (2 * 2 + 1) * 3 + 2 + 2
    assert all(r["fvu"] is not None and r["fvu_ci"] for r in records)
    by = {(r["method"], r["size"], r["k"], r["mode"]): r for r in records}
    for method in ("vanilla", "hierarchical"):  # a mask cut of G latents at k': at most k' latents fire per row
        assert by[(method, 16, 1, "mask")]["l0"] <= 1 + 1e-9 and by[(method, 16, 4, "retopk")]["l0"] > 3
    for method in ("vanilla", "hierarchical", "matryoshka", "matryoshka-hierarchical"):
        fvus = [by[(method, 64, k, "full")]["fvu"] for k in (1, 2, 4)]
        assert fvus[0] > fvus[1] > fvus[2]  # fewer active latents reconstruct worse
    # the full-size member at k' = k is the trained SAE itself; the k-matched baseline is its own SAE
    store = ActivationStore(ctx.path("acts"))
    from progsae.evals.common import Variant
    from progsae.evals.reconstruction import ReconstructionConfig, evaluate_reconstruction

    from progsae.evals.bootstrap import BootstrapConfig

    recon = ReconstructionConfig(bootstrap=BootstrapConfig(replicates=200))
    direct = evaluate_reconstruction(store, [Variant.of(load_sae(ctx.path("seed-0", "saes", "hierarchical-64")))], recon)[0]
    assert by[("hierarchical", 64, 4, "full")]["fvu"] == pytest.approx(direct.fvu, rel=1e-6)
    assert by[("vanilla-k-matched", 64, 2, "full")]["fvu"] < by[("vanilla", 64, 1, "full")]["fvu"]
    reps = load_replicates(ctx, "kgrid")
    assert all(len(reps[r["folder"]]["fvu"]) == 200 for r in records)


def test_grid_section_reaches_verdicts_with_intervals(grid_run, tmp_path):
    ctx, _ = grid_run
    records = json.loads(ctx.path("kgrid", "results.json").read_text())
    lines, findings = grid_section(records, load_replicates(ctx, "kgrid"), 4, 64, "mask", tmp_path / "frontier.png")
    assert [f.key for f in findings] == ["hierarchical_below_k", "hierarchical_at_k"]
    below, at_k = findings
    assert below.wins + below.ties + below.losses == 2 * (2 * 2 + 1) * 2  # 2 pairs x 5 cuts x k' in {1, 2} on FVU
    assert at_k.wins + at_k.ties + at_k.losses == 2 * (2 * 2 + 1)
    assert all(c["seeds"]["0"]["ci"] is not None for f in findings for c in f.comparisons)
    assert (tmp_path / "frontier.png").stat().st_size > 1000
    text = "\n".join(lines)
    assert "## Sparsity grid" in text and "### FVU over the grid" in text and "k' = 1" in text
    print(below.verdict, below.evidence[:300], "|", at_k.verdict, at_k.evidence[:300])


def _rec(seed, method, k, fvu, folder):
    return {"seed": seed, "method": method, "size": 64, "k": k, "mode": "full", "folder": folder, "fvu": fvu}


def test_grid_verdicts_follow_the_rules():
    """Hand-made replicates: hierarchical clearly better below k, 2% worse at k (within the 5% margin): both supported;
    12% worse at k: the cost claim is contradicted."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.002, 200)
    records, reps = [], {}
    for seed in (0, 1):
        for method, base in (("hierarchical", 0.4), ("vanilla", 0.5)):
            for k, fvu in ((2, base), (8, 0.2 * (1.02 if method == "hierarchical" else 1.0))):
                name = f"s{seed}/{method}/{k}"
                records.append(_rec(seed, method, k, fvu, name))
                reps[name] = {"fvu": fvu + noise}
    below, at_k = grid_findings(records, reps, 8)
    assert (below.verdict, below.wins, below.losses) == ("supported", 1, 0)
    assert (at_k.verdict, at_k.wins) == ("supported", 1)
    for r in records:
        if r["method"] == "hierarchical" and r["k"] == 8:
            r["fvu"] = 0.224
            reps[r["folder"]] = {"fvu": 0.224 + noise}
    assert grid_findings(records, reps, 8)[1].verdict == "contradicted"
