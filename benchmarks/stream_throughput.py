"""Streamed training of S SAEs from one pass vs its parts done separately (target: ratio >= 0.9).

    ratio = (bare forward to the deepest hook + S x the SAE training runs on cached rows) / streamed run

"streamed" is `progsae.train.streamed.train_streamed` end to end: the model forward over every train
context, rounding to the storage dtype, the outlier rule, the chunk shuffle, batching and S SAEs
stepping on every batch (metrics, checkpoints). "bare" is the model forward stopped at the deepest
hook over the same contexts, nothing else. "cached" is `train_sae` of the same S configs on a store
of the same rows, one after another. The two sides alternate `--repeats` times so a busy machine
slows both alike; medians are printed, in wall-clock and process-CPU seconds (on a shared machine
the CPU ratio is the meaningful one: run with --threads 1). On CPU nothing overlaps: the ratio says
what the stream costs beyond its parts. On CUDA the forward (bf16 autocast) and the SAE steps are
queued on one stream, so they serialise on the GPU too, while the host runs ahead to tokenise.

    .venv/bin/python benchmarks/stream_throughput.py [--model smollm2] [--hook resid_post.14] [--tokens 16384] [--saes 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from progsae.data.collect import CollectConfig, collect, heldout_only, iter_context_batches, store_folders
from progsae.data.hooks import resolve_hook
from progsae.data.models import load_model
from progsae.data.store import ActivationStore
from progsae.data.stream import ActivationStream, chunk_contexts_for
from progsae.train import TrainConfig, train_sae
from progsae.train.streamed import StreamJob, train_streamed


class Clock:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def sae_configs(args) -> list[TrainConfig]:
    """S SAEs as a study trains them: vanilla n, Matryoshka n, then smaller vanilla baselines (and repeats)."""
    out = []
    for i in range(args.saes):
        kind = i % 3
        n = args.latents if kind < 2 else args.latents // 2
        out.append(TrainConfig(arch="topk", n_latents=n, k=args.k, matryoshka=[n // 4, n // 2, n] if kind == 1 else None,
                               tokens=1, batch_size=args.batch_size, lr=1e-3, seed=i, heldout_rows=0, log_every=50,
                               checkpoint_every=10**9, buffer_bytes=1 << 30, device=args.device))
    return out


def bare_forward(cfg: CollectConfig, model, tok) -> Clock:
    """The stopped forward over the train contexts (corpus reading included, as the stream reads it too)."""
    sites = [resolve_hook(model, h) for h in cfg.hooks]
    with Clock() as clock:
        for _ in iter_context_batches(cfg, "train", model, tok, sites, start=0, stop=cfg.contexts_for("train"), block=1 << 30):
            pass
    return clock


def streamed(cfg: CollectConfig, model, tok, heldout: dict, configs: list[TrainConfig], work: Path) -> Clock:
    rules = {h: s.outlier_rule for h, s in heldout.items()}
    row_bytes = 4 * sum(s.d_model for s in heldout.values())
    stream = ActivationStream(cfg, model, tok, rules, chunk_contexts=chunk_contexts_for(1 << 30, cfg, row_bytes), seed=0)
    out = Path(tempfile.mkdtemp(dir=work))
    jobs = [StreamJob(out / f"sae{i}", c, cfg.hooks[i % len(cfg.hooks)]) for i, c in enumerate(configs)]
    with Clock() as clock:
        train_streamed(stream, jobs, heldout, resume=False, progress=False)
    shutil.rmtree(out, ignore_errors=True)
    return clock


def cached(stores: dict, hooks: list[str], configs: list[TrainConfig], work: Path) -> Clock:
    out = Path(tempfile.mkdtemp(dir=work))
    with Clock() as clock:
        for i, c in enumerate(configs):
            store = stores[hooks[i % len(hooks)]]
            train_sae(store, out / f"sae{i}", TrainConfig(**{**c.to_dict(), "tokens": store.num_tokens("train"),
                                                             "adam_betas": tuple(c.adam_betas)}), progress=False)
    shutil.rmtree(out, ignore_errors=True)
    return clock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--hook", default="resid_post.14")
    ap.add_argument("--corpus", default="embedded")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--context-length", type=int, default=128)
    ap.add_argument("--forward-batch", type=int, default=16)
    ap.add_argument("--saes", type=int, default=3)
    ap.add_argument("--latents", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, device=args.device)
    cfg = CollectConfig(model=args.model, hook=args.hook, corpus=args.corpus, tokens=args.tokens, test_tokens=2048,
                        context_length=args.context_length, batch_size=args.forward_batch, device=args.device)
    cfg.validate()
    work = Path(tempfile.mkdtemp(prefix="progsae-stream-bench-"))
    try:
        collect(cfg, work / "full", model=model, tokenizer=tok, progress=False)
        collect(heldout_only(cfg), work / "heldout", model=model, tokenizer=tok, progress=False)
        stores = {h: ActivationStore(p) for h, p in store_folders(cfg, work / "full").items()}
        heldout = {h: ActivationStore(p) for h, p in store_folders(cfg, work / "heldout").items()}
        configs = sae_configs(args)
        runs = {"streamed": [], "bare": [], "cached": []}
        for _ in range(args.repeats):
            runs["bare"].append(bare_forward(cfg, model, tok))
            runs["cached"].append(cached(stores, cfg.hooks, configs, work))
            runs["streamed"].append(streamed(cfg, model, tok, heldout, configs, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: (statistics.median(c.wall for c in v), statistics.median(c.cpu for c in v)) for k, v in runs.items()}
    rows = cfg.contexts_for("train") * cfg.rows_per_context
    print(f"model {args.model} hook {args.hook}: {rows} train rows, S = {args.saes} SAEs (n {args.latents}, k {args.k}, "
          f"batch {args.batch_size}), {args.threads} thread(s), {args.repeats} repeats, medians")
    for name in ("bare", "cached", "streamed"):
        wall, cpu = med[name]
        print(f"  {name:9s} wall {wall:8.2f} s   cpu {cpu:8.2f} s")
    parts_wall, parts_cpu = med["bare"][0] + med["cached"][0], med["bare"][1] + med["cached"][1]
    print(f"ratio (bare + S x cached) / streamed: wall {parts_wall / med['streamed'][0]:.3f}, cpu {parts_cpu / med['streamed'][1]:.3f}"
          " (target >= 0.9)")


if __name__ == "__main__":
    main()
