"""Run the whole study of PAPER.md and write the report (resumable: finished stages are skipped).

Stages: collect -> train -> importance -> families -> evaluate -> report.
Examples:
  progsae reproduce --out runs/embedded                       # embedded SmolLM2 + corpus, <= 20 min on 2 CPU cores
  progsae reproduce --preset quick --out runs/quick           # toy scale, ~3 min
  progsae reproduce --config my_study.json --out runs/mine    # copy a preset from progsae/presets/ and edit it
  progsae reproduce --out runs/embedded --force evaluate      # re-run one stage (and those after it)
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from progsae.config import PRESETS

    p.add_argument("--config", help="a study config JSON (see progsae/presets/*.json)")
    p.add_argument("--preset", choices=PRESETS, default=None, help="a built-in study (default: embedded)")
    p.add_argument("--out", required=True, help="run folder; re-running with the same folder resumes")
    p.add_argument("--force", action="append", default=[], metavar="STAGE", help="re-run this stage (repeatable)")
    p.add_argument("--device", help="override the config's device (cpu, cuda)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from progsae.config import load_study_config
    from progsae.errors import ProgsaeError
    from progsae.sae.io import atomic_write_json
    from progsae.study.pipeline import STAGES, timings
    from progsae.study.stages import RunContext, run_stages

    if args.config and args.preset:
        raise ProgsaeError("give --config or --preset, not both")
    cfg = load_study_config(args.config, args.preset)
    if args.device:
        cfg.device = args.device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", cfg.to_dict())
    ctx = RunContext(cfg, out, progress=not args.no_progress)
    run_stages(STAGES, ctx, force=set(args.force))
    atomic_write_json(out / "timings.json", timings(ctx))  # now including the report stage itself
    print(f"report: {out / 'report.md'} and {out / 'report.html'}; results: {out / 'results.json'}")
    return 0
