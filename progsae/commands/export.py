"""Export an SAE to another library's folder format (SAELens: cfg.json + sae_weights.safetensors).

Pruned and Matryoshka SAEs export as they encode. A mask-mode SAE exports exactly when its activation
is per-latent (ReLU, JumpReLU, BatchTopK with its threshold); a mask-mode TopK SAE cannot be expressed
in SAELens, so it is refused unless --allow-retopk asks for its retopk equivalent.

Example: progsae export runs/x/pruned_512 --to saelens --out runs/x/saelens_512
"""

from __future__ import annotations

import argparse

from progsae.commands.arguments import add_overwrite_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    from progsae.interop import EXPORT_FORMATS

    p.add_argument("sae", help="SAE folder (progsae, or any format `progsae import` reads)")
    p.add_argument("--to", required=True, choices=list(EXPORT_FORMATS), help="target format")
    p.add_argument("--out", required=True, help="folder to write")
    add_overwrite_argument(p)
    p.add_argument("--allow-retopk", action="store_true",
                   help="export a mask-mode TopK SAE as its retopk equivalent (TopK re-selected among the kept latents)")


def run(args: argparse.Namespace) -> int:
    from progsae.interop import export_sae
    from progsae.outputs import claim_folder
    from progsae.sae.io import load_sae

    claim_folder(args.out, "export", overwrite=args.overwrite, inputs=(args.sae,))
    sae = load_sae(args.sae)
    out = export_sae(sae, args.to, args.out, allow_retopk=args.allow_retopk)
    print(f"exported {sae.cfg.architecture} SAE ({sae.n_latents} latents) from {args.sae} to {args.to} format: {out}")
    return 0
