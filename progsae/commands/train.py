"""Train an SAE on an activation store (see `progsae collect` / `progsae synth`).

--arch topk|batchtopk|relu; --matryoshka 128,256,512 trains a Matryoshka SAE with those nested
prefixes (last = --latents), --matryoshka-random N samples N prefix lengths each step instead.
--k-levels 8,16,32 (last = --k) trains one SAE for every sparsity up to k: the loss averages the error of
decoding only the j largest activations, for each level j (with --matryoshka: every prefix at every level).
Length: --steps S or --tokens T (default: one epoch of the store's train split).
--config FILE reads settings from a JSON object of TrainConfig fields (e.g. a trained SAE's cfg.json ->
provenance.train_config); options typed on the command line override it.
--wandb PROJECT also logs metrics.jsonl's lines and feature-density histograms to Weights & Biases. The output folder holds cfg.json + sae.safetensors (load with
progsae.load_sae), metrics.jsonl and, until the run finishes, checkpoint/; after Ctrl-C or a crash, re-run with --resume.

Streamed (no --acts; the options of `collect`): --model M --hook H --corpus C --tokens T trains from the running
model on exactly the rows `collect` of those options would store, writing no train activations; only the
validation/test store (--acts, default OUT/acts) is written. --hook a,b trains one SAE per hook (OUT/<hook>)
from one forward; --saes FILE ({"name": {settings}}, e.g. {"v": {}, "m": {"matryoshka": [128, 512]}}) trains
several SAEs from one pass, each in OUT/<name>. --resume continues at the stream position of the last checkpoint.

Example (the recipe that recovers `progsae synth` features):
  progsae train --acts runs/synth --arch topk --latents 512 --k 3 --steps 500 --batch-size 2048 \
      --lr 0.02 --aux-coef 0.25 --dead-window 20000 --out runs/sae
"""

from __future__ import annotations

import argparse
import sys

from progsae.commands.arguments import (
    add_device_argument, add_outlier_arguments, add_overwrite_argument, add_progress_argument, add_source_arguments, add_wandb_argument,
    float_list, given_options, int_list, open_store, record_given_options,
)
from progsae.errors import ProgsaeError
from progsae.train.config import ARCHITECTURES, TrainConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--acts", default=None, help="activation store folder; streamed (with --model): where the validation/test store goes (default OUT/acts)")
    p.add_argument("--out", required=True, help="SAE folder to write")
    add_outlier_arguments(p)
    p.add_argument("--arch", choices=ARCHITECTURES, default=d.arch)
    p.add_argument("--config", default=None, metavar="FILE", help="JSON of training settings (TrainConfig fields); typed options override it")
    p.add_argument("--latents", type=int, default=None, help="dictionary size n (required unless --config gives n_latents)")
    p.add_argument("--k", type=int, default=None, help="active latents per token (topk, batchtopk)")
    p.add_argument("--matryoshka", type=int_list, default=None, help="nested prefix sizes, e.g. 128,256,512")
    p.add_argument("--matryoshka-weights", type=float_list, default=None, help="per-prefix loss weights (default equal)")
    p.add_argument("--matryoshka-random", type=int, default=None, metavar="NUM_PREFIXES", help="sample this many prefixes each step")
    p.add_argument("--k-levels", type=int_list, default=None,
                   help="hierarchical objective: sparsity levels, e.g. 8,16,32 (last = --k); topk, batchtopk")
    p.add_argument("--k-level-weights", type=float_list, default=None, help="per-level loss weights (default equal)")
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
    add_stream_arguments(p)
    add_wandb_argument(p)
    record_given_options(p)


def add_stream_arguments(p: argparse.ArgumentParser) -> None:
    """Streamed training: `collect`'s model/hook/corpus options, plus how the stream is read and which SAEs it feeds."""
    from progsae.data.collect import CollectConfig

    d = CollectConfig()
    g = p.add_argument_group("streamed training (from the running model, no --acts store of train rows)")
    add_source_arguments(g, None)
    g.add_argument("--forward-batch", type=int, default=d.batch_size, help=f"contexts per model forward (collect's --batch-size; default {d.batch_size})")
    g.add_argument("--data-seed", type=int, default=d.seed, help="seed of the document order and split (collect's --seed; default 0)")
    g.add_argument("--saes", default=None, metavar="FILE",
                   help='JSON {"name": {training settings}}: several SAEs from one pass, each in OUT/<name> (a "hook" key picks its hook)')


# options whose TrainConfig field has another name; options that are not training settings are ignored
_FIELD_OF = {"latents": "n_latents", "no_normalize": "normalize_input", "shuffle_buffer_gb": "buffer_bytes"}


def read_config_file(path: str) -> dict:
    """The training settings of a --config JSON file, checked by TrainConfig (unknown keys are refused by name)."""
    import json
    from pathlib import Path

    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ProgsaeError(f"--config {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProgsaeError(f"--config {path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ProgsaeError(f"--config {path}: expected a JSON object of training settings")
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
        k_levels=args.k_levels,
        k_level_weights=args.k_level_weights,
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

    given = given_options(args)  # first: until then the untyped options are absent from args
    if args.resume and args.overwrite:
        raise ProgsaeError("give --resume (continue the run in --out) or --overwrite (replace it), not both")
    cfg = merged_config(args, given)
    cfg.validate(require_length=False)  # bad settings are refused before the store is read
    if args.model is not None:
        return run_streamed(args, cfg)
    if args.acts is None:
        raise ProgsaeError("give --acts STORE (train on a collected store) or --model M (stream from the running model)")
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


def stream_jobs(args: argparse.Namespace, base: TrainConfig, hooks: list[str]) -> list:
    """The SAEs a streamed run trains: --saes entries over the command line's settings, else one per hook."""
    import json
    from pathlib import Path

    from progsae.train.streamed import StreamJob

    out = Path(args.out)
    if args.saes is None:
        return [StreamJob(out if len(hooks) == 1 else out / h, base, h) for h in hooks]
    try:
        entries = json.loads(Path(args.saes).read_text())
    except FileNotFoundError:
        raise ProgsaeError(f"{args.saes}: no such file") from None
    except json.JSONDecodeError as e:
        raise ProgsaeError(f"{args.saes}: not valid JSON ({e})") from None
    if not isinstance(entries, dict) or not entries or not all(isinstance(v, dict) for v in entries.values()):
        raise ProgsaeError(f'{args.saes}: expected {{"name": {{settings}}, ...}} with at least one SAE')
    jobs = []
    for name, settings in entries.items():
        settings = dict(settings)
        hook = settings.pop("hook", hooks[0] if len(hooks) == 1 else None)
        if hook not in hooks:
            raise ProgsaeError(f"{args.saes}: SAE '{name}' needs a \"hook\" among {', '.join(hooks)} (got {hook!r})")
        cfg = TrainConfig.from_dict({**base.to_dict(), **settings})
        cfg.validate()
        jobs.append(StreamJob(out / name, cfg, hook))
    return jobs


def run_streamed(args: argparse.Namespace, base: TrainConfig) -> int:
    """Train from the running model: the validation/test store first, then every SAE from one pass."""
    from pathlib import Path

    from progsae.commands.arguments import source_config
    from progsae.data.collect import store_folders
    from progsae.outputs import claim_folder
    from progsae.train.metrics import read_metrics
    from progsae.train.streamed import stream_train

    if base.steps is not None or base.tokens is None:
        raise ProgsaeError("a streamed run is one pass over --tokens rows (as `collect --tokens` would store); give --tokens, not --steps")
    if args.wandb:
        raise ProgsaeError("--wandb is not supported for streamed runs yet; train from a store (--acts) to log to Weights & Biases")
    if not args.keep_outliers and not args.outlier_factor > 1:
        raise ProgsaeError(f"--outlier-factor must exceed 1 (rows above factor x the median norm are dropped), got {args.outlier_factor}")
    data = source_config(args, tokens=base.tokens, batch_size=args.forward_batch, seed=args.data_seed, device=args.device)
    data.validate()
    jobs = stream_jobs(args, base, data.hooks)
    acts = Path(args.acts) if args.acts else Path(args.out) / "acts"
    for job in jobs:  # each SAE folder and each held-out store is its own claim (OUT itself may hold several)
        claim_folder(job.out_dir, "train", overwrite=args.overwrite, resumable=("training run",), inputs=(args.config,))
    for folder in store_folders(data, acts).values():
        claim_folder(folder, "collect", overwrite=args.overwrite, resumable=("activation store",))
    try:
        saes = stream_train(data, jobs, acts, outlier_factor=None if args.keep_outliers else args.outlier_factor,
                            buffer_bytes=base.buffer_bytes, seed=base.seed, resume=args.resume, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"progsae train: interrupted; every SAE is checkpointed under {args.out}, add --resume to continue", file=sys.stderr)
        return 130
    for folder, sae in saes.items():
        last = read_metrics(folder)[-1]
        print(f"wrote {folder}: {sae.cfg.architecture} n={sae.n_latents} k={sae.cfg.k} at {sae.cfg.hook}, {last['tokens']} streamed tokens, "
              f"train FVU {last['fvu']:.4f}, L0 {last['l0']:.1f}, dead {last['dead_frac']:.3f}")
    print(f"held-out store (validation, test): {acts}")
    return 0
