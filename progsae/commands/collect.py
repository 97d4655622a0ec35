"""Collect a language model's activations at one or more hook sites into activation stores.

--model smollm2 is the embedded SmolLM2-135M-Instruct (no network); any other value is a Hugging Face
hub id or a local model folder. --hook is resid_post.L, resid_pre.L, mlp_out.L or attn_out.L (or blocks.L.hook_resid_post, layers.L, resid_post_layer_L);
several, comma-separated, run the model once per batch up to the deepest and write one store per hook (OUT/<hook>/).
--corpus embedded (KJV + Python stdlib, no network), a .txt/.md/.jsonl file or folder, or hf:DATASET.
--tokens/--test-tokens count stored activations (position 0 of each context is left out).
An interrupted collect resumes when re-run with the same arguments.

Example: progsae collect --model smollm2 --hook resid_post.14 --corpus embedded --tokens 300000 --test-tokens 20000 --out runs/acts
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from progsae.commands.arguments import add_device_argument, add_overwrite_argument, add_progress_argument, add_source_arguments, source_config
from progsae.data.collect import CollectConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = CollectConfig()
    add_source_arguments(p, d.model)
    p.add_argument("--tokens", type=int, default=d.tokens, help=f"train activations to store (default {d.tokens})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"contexts per forward (default {d.batch_size})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the document order and train/test split")
    p.add_argument("--shard-tokens", type=int, default=d.shard_tokens, help="activations per shard file (rounded to whole contexts)")
    add_device_argument(p, d.device)
    add_progress_argument(p)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", required=True, help="store folder to write (or resume); with several hooks, one store per hook under it")
    add_overwrite_argument(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from progsae.data.collect import collect
    from progsae.outputs import claim_folder

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = source_config(args, tokens=args.tokens, batch_size=args.batch_size, seed=args.seed, device=args.device,
                        shard_tokens=args.shard_tokens)
    checked = replace(cfg)  # validated apart: collect records the hook names as typed (another tool's names) beside progsae's
    checked.validate()
    from progsae.data.collect import store_folders
    from progsae.data.outliers import describe

    for folder in store_folders(checked, args.out).values():
        claim_folder(folder, "collect", overwrite=args.overwrite, resumable=("activation store",))
    collect(cfg, args.out, progress=not args.no_progress)
    from progsae.data.store import ActivationStore

    for hook, out in store_folders(checked, args.out).items():
        store = ActivationStore(out)
        counts = ", ".join(f"{store.stored_tokens(s)} {s}" for s in ("train", "validation", "test") if store.has_split(s))
        print(f"wrote {out}: {counts} activations of {cfg.model} {hook} (d_model {store.d_model})")
        for s in ("train", "validation", "test"):
            if store.has_split(s):
                print("  readers drop outliers: " + describe(store.outliers(s)))
    return 0
