"""Resumable stages of a run folder: a stage is skipped when its outputs exist and match its inputs.

Each finished stage leaves `stages/<name>.json` recording a key (digest of its config sections and of
the finish records of the stages it reads) and the seconds it took. Re-running recomputes the key:
a stage re-runs only if its config or an upstream stage changed, or if forced.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from progsae.config import StudyConfig
from progsae.errors import ProgsaeError
from progsae.provenance import git_commit
from progsae.sae.io import atomic_write_json


@dataclass
class Stage:
    """One step of the study: what it reads from the config, which stages it depends on, what it writes."""

    name: str
    sections: tuple[str, ...]
    depends: tuple[str, ...]
    outputs: Callable[[StudyConfig], tuple[str, ...]]  # paths (relative to the run folder) that must exist when done
    run: Callable[["RunContext"], dict]  # returns extra facts to record (e.g. per-SAE timings)
    # paths this stage writes (or a function of the config giving them); removed when it starts afresh, not when resuming
    owns: tuple[str, ...] | Callable[[StudyConfig], tuple[str, ...]] = ()


@dataclass
class RunContext:
    cfg: StudyConfig
    out: Path
    progress: bool = True
    wandb: str | None = None  # a Weights & Biases project for every SAE the train stage trains (not part of any stage key)

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)


def marker_path(out: Path, name: str) -> Path:
    return out / "stages" / f"{name}.json"


def read_marker(out: Path, name: str) -> dict | None:
    try:
        return json.loads(marker_path(out, name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def stage_key(stage: Stage, ctx: RunContext) -> str:
    upstream = []
    for dep in stage.depends:
        m = read_marker(ctx.out, dep)
        upstream.append(None if m is None else [m["key"], m["finished"]])
    blob = json.dumps([ctx.cfg.section_hash(*stage.sections), upstream], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_done(stage: Stage, ctx: RunContext) -> bool:
    m = read_marker(ctx.out, stage.name)
    return (
        m is not None
        and m.get("key") == stage_key(stage, ctx)
        and all(ctx.path(o).exists() for o in stage.outputs(ctx.cfg))
    )


def start(stage: Stage, ctx: RunContext, forced: bool) -> None:
    """Clear a previous attempt's partial work if it ran with another key, or if forced.

    With no previous attempt recorded, whatever is there was put there by the user (e.g. SAEs trained
    with torchrun into saes/, see docs/scaling.md) and is kept: the stage's own skip logic uses it.
    """
    key = stage_key(stage, ctx)
    started = ctx.out / "stages" / f"{stage.name}.started.json"
    try:
        stale = forced or json.loads(started.read_text()).get("key") != key
    except FileNotFoundError:
        stale = forced
    except json.JSONDecodeError:
        stale = True
    if stale:
        for rel in stage.owns(ctx.cfg) if callable(stage.owns) else stage.owns:
            p = ctx.path(rel)
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)  # noqa: B018
        marker_path(ctx.out, stage.name).unlink(missing_ok=True)
    atomic_write_json(started, {"key": key})


def run_stages(stages: list[Stage], ctx: RunContext, force: set[str] = frozenset(), log: Callable[[str], None] = print) -> dict[str, dict]:
    """Run the stages in order, skipping finished ones; returns each stage's marker record."""
    known = {s.name for s in stages}
    unknown = sorted(set(force) - known)
    if unknown:
        raise ProgsaeError(f"unknown stage {unknown[0]!r} for --force (stages: {', '.join(s.name for s in stages)})")
    records = {}
    for stage in stages:
        if stage.name not in force and is_done(stage, ctx):
            log(f"[{stage.name}] already done, skipped")
            records[stage.name] = read_marker(ctx.out, stage.name)
            continue
        log(f"[{stage.name}] running")
        start(stage, ctx, forced=stage.name in force)
        t0 = time.perf_counter()
        facts = stage.run(ctx) or {}
        missing = [o for o in stage.outputs(ctx.cfg) if not ctx.path(o).exists()]
        if missing:
            raise ProgsaeError(f"stage {stage.name} finished without writing {missing}")
        record = {
            "key": stage_key(stage, ctx),
            "seconds": round(time.perf_counter() - t0, 2),
            "finished": datetime.now(timezone.utc).isoformat(),
            "git_commit": git_commit(),  # the code this stage ran
            **facts,
        }
        atomic_write_json(marker_path(ctx.out, stage.name), record)
        records[stage.name] = record
        log(f"[{stage.name}] done in {record['seconds']:.1f} s")
    return records
