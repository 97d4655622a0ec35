"""Import an SAE trained by another library as a progsae SAE folder.

Reads SAELens (cfg.json + sae_weights.safetensors), sparsify (cfg.json + sae.safetensors),
dictionary_learning (config.json + ae.pt, tensors only: never unpickles objects) and Gemma Scope
(params.npz) folders; the format is detected. The written folder records the source in cfg.json
under provenance.

Examples:
  progsae import runs/saelens_sae --out runs/imported
  progsae import --from-hub google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71 --out runs/gs
"""

from __future__ import annotations

import argparse

from progsae.commands.arguments import add_device_argument, add_overwrite_argument
from progsae.errors import ProgsaeError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", help="local SAE folder in a foreign (or progsae) format")
    p.add_argument("--from-hub", metavar="OWNER/REPO[/PATH]", help="download this folder of a Hugging Face Hub repo instead (network)")
    p.add_argument("--revision", default=None, help="Hub branch, tag or commit for --from-hub")
    p.add_argument("--out", required=True, help="progsae SAE folder to write")
    add_overwrite_argument(p)
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from progsae.interop import detect_format, import_sae
    from progsae.outputs import claim_folder

    if bool(args.path) == bool(args.from_hub):
        raise ProgsaeError("give either a local PATH or --from-hub OWNER/REPO/PATH (exactly one)")
    claim_folder(args.out, "import", overwrite=args.overwrite, inputs=(args.path,))
    src = args.path
    if args.from_hub:
        from progsae.interop.hub import fetch

        src = fetch(args.from_hub, revision=args.revision)
    fmt = detect_format(src)
    hub = {"source_hub": {"spec": args.from_hub, "revision": args.revision}} if args.from_hub else None
    sae = import_sae(src, args.out, device=args.device, overwrite=True, provenance=hub)  # the claim decided what --out may hold
    cfg = sae.cfg
    extra = f", k={cfg.k}" if cfg.k is not None else ""
    extra += f", prefixes={cfg.prefixes}" if cfg.prefixes else ""
    extra += "" if cfg.subtract_b_dec else ", no b_dec subtraction"
    print(f"imported {fmt} SAE from {src}: {cfg.architecture}, d_in={cfg.d_in}, n_latents={cfg.n_latents}{extra} -> {args.out}")
    return 0
