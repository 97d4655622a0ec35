"""Run the whole study of docs/method.md and write the report (resumable: finished stages are skipped).

Stages: collect -> train -> timing -> importance -> families -> evaluate -> kgrid (with train.k_levels) -> report.
Examples:
  progsae reproduce --out runs/embedded                       # embedded SmolLM2 + corpus, <= 20 min on 2 CPU cores
  progsae reproduce --preset quick --out runs/quick           # toy scale, ~3 min
  progsae reproduce --config my_study.json --out runs/mine    # copy a preset from progsae/presets/ and edit it
  progsae reproduce --out runs/embedded --force evaluate      # re-run one stage (and those after it)
"""

from __future__ import annotations

import argparse

from progsae.commands.arguments import add_device_argument, add_overwrite_argument, add_progress_argument, add_wandb_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    from progsae.config import PRESETS

    p.add_argument("--config", help="a study config JSON (see progsae/presets/*.json)")
    p.add_argument("--preset", choices=PRESETS, default=None, help="a built-in study (default: embedded)")
    p.add_argument("--out", required=True, help="run folder; re-running with the same folder resumes")
    add_overwrite_argument(p)
    p.add_argument("--force", action="append", default=[], metavar="STAGE", help="re-run this stage (repeatable)")
    p.add_argument("--until", metavar="STAGE", help="stop after this stage (e.g. collect, then train with torchrun)")
    add_device_argument(p, None)
    add_progress_argument(p)
    add_wandb_argument(p)


def run(args: argparse.Namespace) -> int:
    from progsae.config import load_study_config
    from progsae.device import resolve_device
    from progsae.errors import ProgsaeError
    from progsae.outputs import claim_folder
    from progsae.sae.io import atomic_write_json
    from progsae.study.pipeline import STAGES, timings
    from progsae.study.stages import RunContext, run_stages

    if args.config and args.preset:
        raise ProgsaeError("give --config or --preset, not both")
    names = [s.name for s in STAGES]
    for flag, asked in (("--until", [args.until] if args.until else []), ("--force", args.force)):
        unknown = [a for a in asked if a not in names]
        if unknown:
            raise ProgsaeError(f"unknown stage {unknown[0]!r} for {flag} (stages: {', '.join(names)})")
    cfg = load_study_config(args.config, args.preset)
    if args.device:
        cfg.device = args.device
    resolve_device(cfg.device)  # checked here, not when the config loads: the paper preset names cuda
    out = claim_folder(args.out, "reproduce", overwrite=args.overwrite, resumable=("study run",), inputs=(args.config,))
    atomic_write_json(out / "config.json", cfg.to_dict())
    ctx = RunContext(cfg, out, progress=not args.no_progress, wandb=args.wandb)
    stages = STAGES[: names.index(args.until) + 1] if args.until else STAGES
    run_stages(stages, ctx, force=set(args.force) & {s.name for s in stages})
    if args.until and args.until != names[-1]:
        print(f"stopped after stage {args.until}; re-run without --until to go on")
        return 0
    atomic_write_json(out / "timings.json", timings(ctx))  # now including the report stage itself
    print(f"report: {out / 'report.md'} and {out / 'report.html'}; results: {out / 'results.json'}")
    return 0
