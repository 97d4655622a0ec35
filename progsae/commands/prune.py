"""Sort an SAE by latent importance and prune it to G latents, as a standalone SAE folder.

--order ef2|freq|mean sorts by importance (from --importance FILE, or measured on --acts DIR);
unsorted and random are controls; prefix keeps the first G latents of a Matryoshka or sorted SAE.
--mode mask keeps the full encoder and zeros latents >= G; retopk is a genuinely smaller SAE (TopK within the kept set).
--k K' keeps the K' largest activations per row (BatchTopK: the threshold giving mean L0 K' on --acts' validation
rows); with --size too, the SAE is cut both ways (the two cuts commute).

Example: progsae prune runs/x/sae --size 512 --order ef2 --mode retopk --importance runs/x/importance.json --out runs/x/sae-512
         progsae prune runs/x/sae --k 8 --out runs/x/sae-k8
"""

from __future__ import annotations

import argparse

from progsae.commands.arguments import add_device_argument, add_overwrite_argument
from progsae.progressive.prune import MODES, PRUNE_ORDERS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sae", help="SAE folder to prune")
    p.add_argument("--size", type=int, default=None, help="number of latents G to keep (1..n)")
    p.add_argument("--k", type=int, default=None, help="active latents per row to keep (1..k; TopK, BatchTopK)")
    p.add_argument("--order", default="ef2", choices=PRUNE_ORDERS, help="which latents to keep (default ef2)")
    p.add_argument("--mode", default="mask", choices=MODES, help="how the pruned SAE encodes (default mask)")
    p.add_argument("--importance", default=None, help="importance.json written by `progsae importance` for this SAE")
    p.add_argument("--acts", default=None, help="activation store to measure importance on when --importance is not given")
    p.add_argument("--split", default=None, help="store split for --acts (default validation, else train)")
    p.add_argument("--seed", type=int, default=None, help="seed of --order random (default: the importance file's, else 0)")
    p.add_argument("--out", required=True, help="output SAE folder")
    add_overwrite_argument(p)
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from progsae.errors import ProgsaeError
    from progsae.progressive.importance import importance
    from progsae.progressive.prune import prune
    from progsae.outputs import claim_folder
    from progsae.progressive.sparsity import at_k
    from progsae.sae.io import load_sae

    if args.size is None and args.k is None:
        raise ProgsaeError("give --size G, --k K or both")
    claim_folder(args.out, "prune", overwrite=args.overwrite, inputs=(args.sae, args.importance, args.acts))
    sae = load_sae(args.sae, device=args.device)
    out = sae
    if args.size is not None:  # first: an importance file belongs to the parent's exact tensors
        imp = args.importance
        if imp is None and args.acts is not None and args.order in ("ef2", "freq", "mean"):
            imp = importance(sae, args.acts, split=args.split, progress=True)
        out = prune(sae, args.size, order=args.order, mode=args.mode, importance=imp, seed=args.seed, parent=str(args.sae))
    if args.k is not None:
        out = at_k(out, args.k, args.acts, split=args.split)
    out.save(args.out)
    notes = []
    if args.size is not None:
        rec = out.cfg.provenance["prune"]
        notes.append(f"{args.order} {args.mode} SAE of size {args.size} (parent {sae.n_latents} latents)")
        if "k_clamped_from" in rec:
            notes.append(f"k clamped from {rec['k_clamped_from']} to {rec['k']} (k > G)")
    if args.k is not None:
        rec = out.cfg.provenance["at_k"]
        notes.append(f"k {rec['k']} (parent k {rec['k_parent']})")
        if "threshold" in rec:
            notes.append(f"threshold {rec['threshold']:.4g}, mean L0 {rec['calibration']['mean_l0']:.2f} on {rec['calibration']['rows']} {rec['calibration']['split']} rows")
    print(f"wrote {args.out}: " + "; ".join(notes))
    return 0
