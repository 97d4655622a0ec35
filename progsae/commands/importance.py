"""Measure every latent's importance over held-out activations and fit its power law.

Writes importance.json (per-latent E[f²]·‖W_dec‖², firing frequency and mean activation, the orderings
ef2/freq/mean/unsorted/random, and the power-law analysis) and a PNG figure beside it.

Example: progsae importance runs/x/sae --acts runs/x/acts --out runs/x/importance.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from progsae.commands.arguments import (add_device_argument, add_outlier_arguments, add_overwrite_argument, add_progress_argument, open_store,
                                        report_outliers)
from progsae.errors import ProgsaeError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sae", help="SAE folder (cfg.json + sae.safetensors, or a format `progsae import` reads)")
    p.add_argument("--acts", required=True, help="activation store folder")
    p.add_argument("--split", default=None,
                   help="store split to measure on (default: validation, else train; never test, whose rows the evals score)")
    p.add_argument("--out", required=True, help="importance JSON file to write")
    add_overwrite_argument(p, "--out and --figure")
    add_outlier_arguments(p)
    p.add_argument("--figure", default=None, help="power-law PNG to write (default: OUT with .png; 'none' to skip)")
    p.add_argument("--statistic", default="ef2", choices=["ef2", "freq", "mean"], help="importance the power law is fitted to")
    p.add_argument("--fit-range", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                   help="least-squares fit over these fractions of the live ranks (default 0.01 0.9)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the CI of alpha (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random ordering and of the bootstrap")
    p.add_argument("--max-memory-mb", type=float, default=512, help="memory for one batch of activations and its codes")
    add_device_argument(p)
    add_progress_argument(p)


def run(args: argparse.Namespace) -> int:
    from progsae.progressive.importance import importance
    from progsae.outputs import claim_file
    from progsae.progressive.power_law import PowerLawSettings, fit_power_law
    from progsae.sae.io import load_sae

    if not args.max_memory_mb > 0:
        raise ProgsaeError(f"--max-memory-mb must be positive, got {args.max_memory_mb}")
    if args.bootstrap < 0:
        raise ProgsaeError(f"--bootstrap must be 0 or more resamples, got {args.bootstrap}")
    claim_file(args.out, overwrite=args.overwrite, inputs=(args.sae, args.acts))
    if (args.figure or "").lower() != "none":
        claim_file(args.figure or Path(args.out).with_suffix(".png"), overwrite=args.overwrite, what="--figure", inputs=(args.sae, args.acts))
    sae = load_sae(args.sae, device=args.device)
    store = open_store(args)
    split = args.split or store.choice_split()
    report_outliers(store, (split,))
    imp = importance(sae, store, split=split, max_memory_bytes=int(args.max_memory_mb * 2**20), seed=args.seed, progress=not args.no_progress)
    imp.source["sae_path"] = str(args.sae)
    settings = PowerLawSettings(n_boot=args.bootstrap, seed=args.seed)
    if args.fit_range is not None:
        settings.fit_lo, settings.fit_hi = args.fit_range
    power_law: dict
    fit = None
    try:
        fit = fit_power_law(imp.score(args.statistic), settings)
        power_law = {"statistic": args.statistic, **fit.to_dict()}
    except ProgsaeError as e:  # e.g. every latent dead: still write the statistics
        power_law = {"statistic": args.statistic, "error": str(e)}
    out = imp.save(Path(args.out), power_law=power_law)
    print(f"wrote {out}: {imp.n_latents} latents over {imp.n_tokens} tokens")
    if fit is None:
        print(f"power law: not fitted ({power_law['error']})")
        return 0
    lo, hi = fit.fit_range
    print(f"power law ({args.statistic}): alpha={fit.alpha:.3f} [{fit.alpha_ci[0]:.3f}, {fit.alpha_ci[1]:.3f}] "
          f"R2={fit.r2:.3f} over ranks {lo}-{hi} of {fit.n_live} live")
    if fit.mle is not None:
        comps = ", ".join(f"vs {k} R={c.R:+.2f} p={c.p:.2g} ({c.preferred})" for k, c in fit.mle.comparisons.items())
        print(f"MLE: gamma={fit.mle.gamma:.3f} (rank alpha {fit.mle.alpha_rank:.3f}), {comps}")
    fig_path = args.figure or str(out.with_suffix(".png"))
    if fig_path.lower() != "none":
        from progsae.report.figures import power_law_figure

        power_law_figure(imp.score(args.statistic), fig_path, fit=fit, title=f"{args.sae}: {args.statistic} importance")
        print(f"wrote {fig_path}")
    return 0
