"""Sort an SAE's latents by importance, most important first, into a full-size SAE folder.

Outputs are unchanged; every prefix of the sorted SAE is then the SAE pruned to that size, so
`eval --sizes` and `prune --order prefix` read any size from it. --order ef2|freq|mean uses --importance FILE
(from `progsae importance`) or measures it on --acts DIR (validation split, else train; never test).

Example: progsae sort runs/vanilla --importance runs/importance.json --out runs/vanilla-sorted
"""

from __future__ import annotations

import argparse

from progsae.commands.arguments import add_device_argument, add_overwrite_argument, add_progress_argument
from progsae.progressive.importance import ORDERINGS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sae", help="SAE folder to sort")
    p.add_argument("--order", default="ef2", choices=ORDERINGS, help="importance to sort by (default ef2); unsorted, random: controls")
    p.add_argument("--importance", default=None, help="importance.json written by `progsae importance` for this SAE")
    p.add_argument("--acts", default=None, help="activation store to measure importance on when --importance is not given")
    p.add_argument("--seed", type=int, default=None, help="seed of --order random (default: the importance file's, else 0)")
    p.add_argument("--out", required=True, help="sorted SAE folder to write")
    add_overwrite_argument(p)
    add_device_argument(p)
    add_progress_argument(p)


def run(args: argparse.Namespace) -> int:
    from progsae.progressive.importance import importance
    from progsae.progressive.prune import sort_sae
    from progsae.outputs import claim_folder
    from progsae.sae.io import load_sae

    claim_folder(args.out, "sort", overwrite=args.overwrite, inputs=(args.sae, args.importance, args.acts))
    sae = load_sae(args.sae, device=args.device)
    imp = args.importance
    if imp is None and args.acts is not None and args.order in ("ef2", "freq", "mean"):
        imp = importance(sae, args.acts, progress=not args.no_progress)
    out = sort_sae(sae, args.order, importance=imp, seed=args.seed)
    out.save(args.out)
    print(f"wrote {args.out}: {args.sae} with its {sae.n_latents} latents sorted by {args.order}")
    return 0
