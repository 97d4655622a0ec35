"""Evaluate SAEs at any sizes: reconstruction, recaptured LM loss, representational similarity, interpretability.

Each SAE is a folder, optionally named NAME=FOLDER (the name is the method in results.json).
--sizes cuts each (Matryoshka or importance-sorted) SAE to those sizes with --mode mask and/or retopk.
--metrics recon,ce,rsa,interp picks the evaluations; ce loads --model (default: the store's model)
and splices reconstructions at --hook (default: the store's hook). interp explains latents per band
(cut at --sizes) with the LLM-free token explainer, or --explainer llm with a local chat model
(default the embedded SmolLM2) or any OpenAI-compatible server (--llm-url URL --llm-model NAME);
LLM prompts and answers are cached under --llm-cache.

Example: progsae eval matryoshka=runs/x/matryoshka pruned=runs/x/sorted --acts runs/x/acts \\
             --sizes 1024,2048,4096 --mode mask,retopk --metrics recon,ce,rsa,interp --out runs/x/results.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from progsae.commands.arguments import (add_device_argument, add_outlier_arguments, add_overwrite_argument, add_progress_argument, check_positive,
                                        comma_list, int_list, open_store)
from progsae.errors import ProgsaeError


def _bands(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(a), int(b)) for a, b in (part.split("-") for part in comma_list(text))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bands are LO-HI,LO-HI,... latent ranges, got '{text}'") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("saes", nargs="+", metavar="SAE", help="SAE folders, optionally NAME=FOLDER")
    p.add_argument("--acts", required=True, help="activation store (its test split is held out)")
    p.add_argument("--out", default="results.json", help="results JSON (default results.json)")
    add_overwrite_argument(p)
    p.add_argument("--sizes", type=int_list, default=None, help="comma-separated sizes G (default: each SAE as it is)")
    p.add_argument("--mode", type=comma_list, default=["mask"], help="mask, retopk or mask,retopk (default mask)")
    p.add_argument("--metrics", type=comma_list, default=["recon", "ce", "rsa", "interp"], help="subset of recon,ce,rsa,interp (default all)")
    p.add_argument("--model", default=None, help="language model for ce (default: the store's model, e.g. smollm2)")
    p.add_argument("--hook", default=None, help="hook site for ce (default: the store's hook)")
    p.add_argument("--split", default="test", help="store split to evaluate on (default test)")
    add_outlier_arguments(p)
    p.add_argument("--max-tokens", type=int, default=None, help="rows used by recon (default: the whole split)")
    p.add_argument("--ce-contexts", type=int, default=None, help="contexts scored by ce (default: every context of --split)")
    p.add_argument("--ce-batch-size", type=int, default=8, help="contexts per forward in ce (default 8)")
    p.add_argument("--full-forwards", action="store_true", help="ce: one full forward per variant instead of the shared prefix")
    p.add_argument("--rsa-tokens", type=int, default=1000, help="rows for RSA/CKA, spread over every context of --split (default 1000)")
    p.add_argument("--interp-latents", type=int, default=None, help="latents scored per band (default: every eligible latent)")
    p.add_argument("--bands", type=_bands, default=None, help="interp bands LO-HI,... (default: cut at --sizes, or Matryoshka groups)")
    p.add_argument("--explainer", choices=["deterministic", "llm"], default="deterministic")
    p.add_argument("--llm-url", default=None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--llm-model", default=None, help="model name at --llm-url, or a local model (default smollm2)")
    p.add_argument("--llm-cache", default=None, help="folder of cached prompts and answers (default: beside --out)")
    p.add_argument("--seed", type=int, default=0)
    add_progress_argument(p)
    add_device_argument(p)


def parse_saes(specs: list[str]) -> dict[str, Path]:
    """NAME=FOLDER or FOLDER (named by its folder name) -> ordered {name: folder}; names must be unique."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, _, folder = spec.partition("=") if "=" in spec else ("", "", spec)
        folder_path = Path(folder)
        name = name or folder_path.resolve().name
        if name in out:
            raise ProgsaeError(f"two SAEs are named '{name}'; name them NAME=FOLDER")
        out[name] = folder_path
    return out


def run(args: argparse.Namespace) -> int:
    from progsae.evals.interp.score import InterpConfig
    from progsae.evals.lm_loss import LMLossConfig
    from progsae.evals.reconstruction import ReconstructionConfig
    from progsae.evals.runner import EvalRunConfig, firing_path, format_table, replicates_path, run_evals
    from progsae.evals.similarity import SimilarityConfig
    from progsae.outputs import claim_file
    from progsae.sae.io import load_sae

    bad = [m for m in args.mode if m not in ("mask", "retopk")]
    if bad:
        raise ProgsaeError(f"unknown mode {bad} (use mask, retopk or mask,retopk)")
    check_positive(args, "max_tokens", "ce_contexts", "ce_batch_size", "rsa_tokens", "interp_latents")
    bad_bands = [b for b in args.bands or [] if not 0 <= b[0] < b[1]]
    if bad_bands:
        raise ProgsaeError(f"--bands must be LO-HI ranges with 0 <= LO < HI, got {bad_bands[0][0]}-{bad_bands[0][1]}")
    folders = parse_saes(args.saes)
    claim_file(args.out, overwrite=args.overwrite, inputs=(args.acts, *folders.values()),
               companions=(replicates_path(args.out), firing_path(args.out)))
    store = open_store(args, (args.split,))
    saes = {name: load_sae(folder, device=args.device) for name, folder in folders.items()}
    cfg = EvalRunConfig(
        metrics=args.metrics,
        sizes=args.sizes,
        modes=args.mode,
        model=args.model,
        hook=args.hook,
        explainer=args.explainer,
        llm_url=args.llm_url,
        llm_model=args.llm_model,
        llm_cache=args.llm_cache,
        recon=ReconstructionConfig(split=args.split, max_tokens=args.max_tokens),
        ce=LMLossConfig(split=args.split, contexts=args.ce_contexts, batch_size=args.ce_batch_size, shared_prefix=not args.full_forwards),
        rsa=SimilarityConfig(split=args.split, tokens=args.rsa_tokens, seed=args.seed),
        interp=InterpConfig(score_split=args.split, latents_per_band=args.interp_latents, bands=args.bands, seed=args.seed),
    )
    res = run_evals(store, saes, cfg, out_path=args.out, progress=not args.no_progress)
    print(format_table(res))
    print(f"wrote {args.out}")
    return 0
