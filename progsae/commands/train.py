"""Train an SAE on an activation store (see `progsae collect` / `progsae synth`).

--arch topk|batchtopk|relu; --matryoshka 128,256,512 trains a Matryoshka SAE with those nested
prefixes (last = --latents), --matryoshka-random N samples N prefix lengths each step instead.
Length: --steps S or --tokens T (default: one epoch of the store's train split).
--config FILE reads settings from a JSON object of TrainConfig fields (e.g. a trained SAE's cfg.json ->
provenance.train_config); options typed on the command line override it.
--wandb PROJECT also logs metrics.jsonl's lines and feature-density histograms to Weights & Biases. The output folder holds cfg.json + sae.safetensors (load with
progsae.load_sae), metrics.jsonl and, until the run finishes, checkpoint/; after Ctrl-C or a crash, re-run with --resume.

Example (the recipe that recovers `progsae synth` features):
  progsae train --acts runs/synth --arch topk --latents 512 --k 3 --steps 500 --batch-size 2048 \
      --lr 0.02 --aux-coef 0.25 --dead-window 20000 --out runs/sae
"""

from __future__ import annotations

import argparse
import sys

from progsae.commands.arguments import (
    add_device_argument, add_outlier_arguments, add_overwrite_argument, add_progress_argument, add_wandb_argument, float_list,
    given_options, int_list, open_store, record_given_options,
)
from progsae.errors import ProgsaeError
from progsae.train.config import ARCHITECTURES, TrainConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--acts", required=True, help="activation store folder")
    p.add_argument("--out", required=True, help="SAE folder to write")
    add_outlier_arguments(p)
    p.add_argument("--arch", choices=ARCHITECTURES, default=d.arch)
    p.add_argument("--config", default=None, metavar="FILE", help="JSON of training settings (TrainConfig fields); typed options override it")
    p.add_argument("--latents", type=int, default=None, help="dictionary size n (required unless --config gives n_latents)")
    p.add_argument("--k", type=int, default=None, help="active latents per token (topk, batchtopk)")
    p.add_argument("--matryoshka", type=int_list, default=None, help="nested prefix sizes, e.g. 128,256,512")
    p.add_argument("--matryoshka-weights", type=float_list, default=None, help="per-prefix loss weights (default equal)")
    p.add_argument("--matryoshka-random", type=int, default=None, metavar="NUM_PREFIXES", help="sample this many prefixes each step")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimiser steps (default: one epoch of the store's kept train rows)")
    length.add_argument("--tokens", type=int, help="training tokens (steps = tokens / batch size; default: one epoch)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"tokens per step (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-4 / sqrt(n / 2^14))")
    p.add_argument("--warmup-steps", type=int, default=None, help="lr warm-up steps (default 5%% of steps, at most 1000)")
    p.add_argument("--l1-coef", type=float, default=None, help="relu only: L1 coefficient (default 1)")
    p.add_argument("--dead-window", type=int, default=None, help="tokens without firing that make a latent dead (default min(10M, tokens/10))")
    p.add_argument("--aux-coef", type=float, default=d.aux_coef, help="AuxK loss coefficient (default 1/32)")
    p.add_argument("--k-aux", type=int, default=None, help="dead latents used by AuxK (default d_model/2)")
    p.add_argument("--no-normalize", action="store_true", help="train on raw activations (no scalar normalisation)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--shuffle-buffer-gb", type=float, default=d.buffer_bytes / 2**30,
                   help=f"RAM for the shuffle buffer: batches mix the shards that fit in it (default {d.buffer_bytes / 2**30:g})")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help=f"steps between checkpoints (default {d.checkpoint_every})")
    p.add_argument("--log-every", type=int, default=d.log_every, help=f"steps between metrics.jsonl lines (default {d.log_every})")
    add_device_argument(p, d.device)
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    add_overwrite_argument(p)
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="keep checkpoint/ (optimiser state) after the run finishes; by default it is deleted")
    add_progress_argument(p)
    add_wandb_argument(p)
    record_given_options(p)


# options whose TrainConfig field has another name; options that are not training settings are ignored
_FIELD_OF = {"latents": "n_latents", "no_normalize": "normalize_input", "shuffle_buffer_gb": "buffer_bytes"}


def read_config_file(path: str) -> dict:
    """The training settings of a --config JSON file, checked by TrainConfig (unknown keys are refused by name)."""
    from progsae.validation import read_json_object

    try:
        raw = read_json_object(path, "JSON object of training settings")
    except ProgsaeError as e:
        raise ProgsaeError(f"--config {e}") from None
    try:
        TrainConfig.from_dict(raw)
    except TypeError as e:
        raise ProgsaeError(f"--config {path}: {e}") from None
    except ProgsaeError as e:
        raise ProgsaeError(f"--config {path}: {e}") from None
    return raw


def merged_config(args: argparse.Namespace, given: set[str]) -> TrainConfig:
    """The --config file's settings (if any) with every typed option laid over them."""
    settings = read_config_file(args.config) if args.config else {}
    if {"steps", "tokens"} & given:  # a typed length replaces the file's, whichever of the two it gave
        settings = {k: v for k, v in settings.items() if k not in ("steps", "tokens")}
    from_file = {
        "latents": lambda v: v, "no_normalize": lambda v: not v, "shuffle_buffer_gb": lambda v: v / 2**30,
    }
    fields = set(TrainConfig().to_dict())
    for dest in list(vars(args)):
        field = _FIELD_OF.get(dest, dest)
        if dest not in given and field in fields and field in settings:
            setattr(args, dest, from_file.get(dest, lambda v: v)(settings[field]))
    if args.latents is None:
        raise ProgsaeError("give --latents (or --config FILE with n_latents)")
    cfg = config_from_args(args)
    options = {_FIELD_OF.get(dest, dest) for dest in vars(args)}
    rest = {k: v for k, v in settings.items() if k not in options}  # settings without an option, e.g. decay_frac
    return TrainConfig.from_dict({**cfg.to_dict(), **rest}) if rest else cfg


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    if args.arch != "relu" and args.k is None:
        raise ProgsaeError(f"--arch {args.arch} needs --k")
    return TrainConfig(
        arch=args.arch,
        n_latents=args.latents,
        k=args.k,
        matryoshka=args.matryoshka,
        matryoshka_weights=args.matryoshka_weights,
        matryoshka_random=args.matryoshka_random,
        steps=args.steps,
        tokens=args.tokens,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        l1_coef=args.l1_coef,
        dead_window=args.dead_window,
        aux_coef=args.aux_coef,
        k_aux=args.k_aux,
        normalize_input=not args.no_normalize,
        seed=args.seed,
        buffer_bytes=int(args.shuffle_buffer_gb * 2**30),
        checkpoint_every=args.checkpoint_every,
        keep_checkpoint=args.keep_checkpoint,
        log_every=args.log_every,
        device=args.device,
    )


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from progsae.outputs import claim_folder
    from progsae.train import train_sae
    from progsae.train.metrics import read_metrics

    cfg = merged_config(args, given_options(args))  # fills in every option's default
    if args.resume and args.overwrite:
        raise ProgsaeError("give --resume (continue the run in --out) or --overwrite (replace it), not both")
    cfg.validate(require_length=False)  # bad settings are refused before the store is read
    claim_folder(args.out, "train", overwrite=args.overwrite, resumable=("training run",), inputs=(args.acts, args.config))
    try:
        store = open_store(args, ("train",))
        if cfg.steps is None and cfg.tokens is None:
            cfg = replace(cfg, tokens=store.num_tokens("train"))
            print(f"progsae train: no --steps or --tokens given: one epoch, {cfg.tokens} tokens", file=sys.stderr)
        sae = train_sae(store, args.out, cfg, resume=args.resume, progress=not args.no_progress, wandb=args.wandb)
    except KeyboardInterrupt:
        print(f"progsae train: interrupted; the last step is checkpointed in {args.out}, add --resume to continue", file=sys.stderr)
        return 130
    from progsae.train.distributed import is_main_process

    if not is_main_process():  # under torchrun only rank 0 reports
        return 0
    last = read_metrics(args.out)[-1]
    print(
        f"wrote {args.out}: {sae.cfg.architecture} n={sae.n_latents} k={sae.cfg.k}, {last['tokens']} tokens, "
        f"train FVU {last['fvu']:.4f}, L0 {last['l0']:.1f}, dead {last['dead_frac']:.3f}"
    )
    return 0
