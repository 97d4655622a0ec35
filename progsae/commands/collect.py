"""Collect a language model's activations at one hook site into an activation store.

--model smollm2 is the embedded SmolLM2-135M-Instruct (no network); any other value is a Hugging Face
hub id or a local model folder. --hook is resid_post.L, resid_pre.L, mlp_out.L or attn_out.L (or blocks.L.hook_resid_post, layers.L, resid_post_layer_L).
--corpus embedded (KJV + Python stdlib, no network), a .txt/.md/.jsonl file or folder, or hf:DATASET.
--tokens/--test-tokens count stored activations (position 0 of each context is left out).
An interrupted collect resumes when re-run with the same arguments.

Example: progsae collect --model smollm2 --hook resid_post.14 --corpus embedded --tokens 300000 --test-tokens 20000 --out runs/acts
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from progsae.commands.arguments import add_device_argument, add_overwrite_argument, add_progress_argument
from progsae.data.collect import STORAGE_DTYPES, CollectConfig
from progsae.errors import ProgsaeError


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = CollectConfig()
    p.add_argument("--model", default=d.model, help=f"model name, hub id or folder (default {d.model})")
    p.add_argument("--hook", default=d.hook, help=f"hook site, e.g. resid_post.14; TransformerLens (blocks.14.hook_resid_post), module-path (layers.14) "
                   f"and dictionary_learning (resid_post_layer_14) names are accepted (default {d.hook})")
    p.add_argument("--corpus", default=d.corpus, help=f"text source (default {d.corpus})")
    p.add_argument("--tokens", type=int, default=d.tokens, help=f"train activations to store (default {d.tokens})")
    p.add_argument("--test-tokens", type=int, default=d.test_tokens, help=f"held-out activations to store (default {d.test_tokens})")
    p.add_argument("--validation-tokens", type=int, default=None,
                   help="activations of the validation split, which orderings and other data-driven choices read (default: as many as --test-tokens)")
    p.add_argument("--context-length", type=int, default=d.context_length, help=f"tokens per context (default {d.context_length})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"contexts per forward (default {d.batch_size})")
    p.add_argument("--storage-dtype", default=None, choices=STORAGE_DTYPES,
                   help=f"dtype the activations are stored in (default {d.storage_dtype}; float16 halves the disk use)")
    p.add_argument("--dtype", dest="old_dtype", default=None, choices=STORAGE_DTYPES, help=argparse.SUPPRESS)  # deprecated: --storage-dtype
    p.add_argument("--first-position", type=int, default=d.first_position,
                   help="first stored position of each context (default 1: leave out BOS / the first token)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the document order and train/test split")
    p.add_argument("--test-fraction", type=float, default=None,
                   help="share of documents in the test split (default: tokens ratio, clipped to 0.02..0.4)")
    p.add_argument("--validation-fraction", type=float, default=None,
                   help="share of documents in the validation split (default: tokens ratio, clipped to 0.02..0.4)")
    p.add_argument("--shard-tokens", type=int, default=d.shard_tokens, help="activations per shard file (rounded to whole contexts)")
    p.add_argument("--text-field", default=d.text_field, help="text field of .jsonl files and datasets (default text)")
    p.add_argument("--dataset-config", default=None, help="Hugging Face dataset config name")
    p.add_argument("--dataset-split", default=d.dataset_split, help="Hugging Face dataset split (default train)")
    add_device_argument(p, d.device)
    add_progress_argument(p)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", required=True, help="store folder to write (or resume)")
    add_overwrite_argument(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from progsae.data.collect import collect
    from progsae.outputs import claim_folder

    if args.threads:
        torch.set_num_threads(args.threads)
    storage_dtype = args.storage_dtype
    if args.old_dtype is not None:
        if storage_dtype is not None and storage_dtype != args.old_dtype:
            raise ProgsaeError(f"--dtype {args.old_dtype} and --storage-dtype {storage_dtype} disagree; give --storage-dtype only")
        print("progsae collect: --dtype is deprecated (in Hugging Face it is the model's dtype); it sets --storage-dtype", file=sys.stderr)
        storage_dtype = args.old_dtype
    cfg = CollectConfig(
        model=args.model, hook=args.hook, corpus=args.corpus, tokens=args.tokens, test_tokens=args.test_tokens,
        context_length=args.context_length, batch_size=args.batch_size, storage_dtype=storage_dtype or CollectConfig().storage_dtype,
        first_position=args.first_position, seed=args.seed, test_fraction=args.test_fraction,
        validation_tokens=args.validation_tokens, validation_fraction=args.validation_fraction,
        shard_tokens=args.shard_tokens, device=args.device, text_field=args.text_field,
        dataset_config=args.dataset_config, dataset_split=args.dataset_split,
    )
    dataclasses.replace(cfg).validate()  # bad settings refused before --out is claimed (on a copy: collect records the hook as typed)
    claim_folder(args.out, "collect", overwrite=args.overwrite, resumable=("activation store",))
    out = collect(cfg, args.out, progress=not args.no_progress)
    from progsae.data.store import ActivationStore

    from progsae.data.outliers import describe

    store = ActivationStore(out)
    counts = ", ".join(f"{store.stored_tokens(s)} {s}" for s in ("train", "validation", "test") if store.has_split(s))
    print(f"wrote {out}: {counts} activations of {cfg.model} {cfg.hook} (d_model {store.d_model})")
    for s in ("train", "validation", "test"):
        if store.has_split(s):
            print("  readers drop outliers: " + describe(store.outliers(s)))
    return 0
