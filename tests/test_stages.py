"""The stage runner skips finished stages, re-runs on config change or --force, and cascades downstream."""

import pytest

from progsae.config import load_study_config
from progsae.errors import ProgsaeError
from progsae.study.stages import RunContext, Stage, run_stages


def make_stages(calls):
    def writer(name):
        def run(ctx):
            calls.append(name)
            ctx.path(f"{name}.txt").write_text(name)
            return {"n": len(calls)}

        return run

    return [
        Stage("a", ("data",), (), lambda cfg: ("a.txt",), writer("a"), owns=("a.txt", "a-parts")),
        Stage("b", ("train",), ("a",), lambda cfg: ("b.txt",), writer("b")),
        Stage("c", ("eval",), ("b",), lambda cfg: ("c.txt",), writer("c")),
    ]


def test_finished_stages_are_skipped_and_changes_cascade(tmp_path):
    cfg = load_study_config(preset="quick")
    calls: list[str] = []
    ctx = RunContext(cfg, tmp_path)
    run_stages(make_stages(calls), ctx, log=lambda m: None)
    assert calls == ["a", "b", "c"]
    run_stages(make_stages(calls), ctx, log=lambda m: None)
    assert calls == ["a", "b", "c"]  # nothing re-ran
    cfg.train.k = 4  # only 'train' changed: b re-runs, and so does c, which reads b
    run_stages(make_stages(calls), ctx, log=lambda m: None)
    assert calls == ["a", "b", "c", "b", "c"]
    run_stages(make_stages(calls), ctx, force={"c"}, log=lambda m: None)
    assert calls[-1] == "c" and len(calls) == 6
    (tmp_path / "a.txt").unlink()  # a lost output makes its stage (and those after) run again
    run_stages(make_stages(calls), ctx, log=lambda m: None)
    assert calls[-3:] == ["a", "b", "c"]


def test_interrupted_stage_resumes_without_redoing_earlier_ones(tmp_path):
    cfg = load_study_config(preset="quick")
    calls: list[str] = []
    stages = make_stages(calls)

    def boom(ctx):
        raise KeyboardInterrupt

    broken = stages[:1] + [Stage("b", ("train",), ("a",), lambda cfg: ("b.txt",), boom)] + stages[2:]
    with pytest.raises(KeyboardInterrupt):
        run_stages(broken, RunContext(cfg, tmp_path), log=lambda m: None)
    run_stages(make_stages(calls), RunContext(cfg, tmp_path), log=lambda m: None)
    assert calls == ["a", "b", "c"]  # a ran once, before the interrupt


def test_unknown_forced_stage_is_refused(tmp_path):
    with pytest.raises(ProgsaeError, match="unknown stage 'zzz'"):
        run_stages(make_stages([]), RunContext(load_study_config(preset="quick"), tmp_path), force={"zzz"})


def test_partial_work_is_kept_on_resume_and_cleared_on_change_or_force(tmp_path):
    cfg = load_study_config(preset="quick")
    ctx = RunContext(cfg, tmp_path)
    seen = []

    def partial(ctx):
        part = ctx.path("a-parts", "item1")
        seen.append(part.exists())
        part.parent.mkdir(exist_ok=True)
        part.write_text("done")
        if len(seen) == 1:
            raise KeyboardInterrupt  # interrupted after finishing item1
        ctx.path("a.txt").write_text("a")
        return {}

    stage = [Stage("a", ("data",), (), lambda cfg: ("a.txt",), partial, owns=("a.txt", "a-parts"))]
    with pytest.raises(KeyboardInterrupt):
        run_stages(stage, ctx, log=lambda m: None)
    run_stages(stage, ctx, log=lambda m: None)
    assert seen == [False, True]  # the resumed attempt found item1
    run_stages(stage, ctx, force={"a"}, log=lambda m: None)
    assert seen[-1] is False  # forced: started afresh
    cfg.data.tokens += 1
    run_stages(stage, ctx, log=lambda m: None)
    assert seen[-1] is False and len(seen) == 4  # config changed: stale items removed


def test_outputs_placed_before_any_attempt_are_kept(tmp_path):
    """The scaling guide's workflow: SAEs trained by hand (torchrun) into the run folder, then `reproduce`."""
    cfg = load_study_config(preset="quick")
    ctx = RunContext(cfg, tmp_path)
    ctx.path("a-parts").mkdir()
    ctx.path("a-parts", "trained-by-hand").write_text("weights")
    seen = []

    def uses_parts(ctx):
        seen.append(sorted(p.name for p in ctx.path("a-parts").iterdir()))
        ctx.path("a.txt").write_text("a")
        return {}

    run_stages([Stage("a", ("data",), (), lambda cfg: ("a.txt",), uses_parts, owns=("a.txt", "a-parts"))], ctx, log=lambda m: None)
    assert seen == [["trained-by-hand"]]


def test_changing_the_device_redoes_no_stage(tmp_path):
    from progsae.study.pipeline import STAGES
    from progsae.study.stages import stage_key

    cpu, gpu = load_study_config(preset="quick"), load_study_config(preset="quick")
    gpu.device = "cuda"
    for stage in STAGES:
        assert stage_key(stage, RunContext(cpu, tmp_path)) == stage_key(stage, RunContext(gpu, tmp_path)), stage.name
    gpu.train.k += 1  # a real change does show
    assert stage_key(STAGES[1], RunContext(cpu, tmp_path)) != stage_key(STAGES[1], RunContext(gpu, tmp_path))
