"""Collect throughput vs a bare forward to the same layer (target: collect >= 90% of the bare forward).

Both run on the same contexts and batch size, alternating A/B `--repeats` times so a busy machine
slows both alike; medians are printed. "bare" is the model forward stopped at the hook, nothing else;
"collect" is `progsae.data.collect.collect` writing a fresh store (corpus reading, tokenising,
packing, storage conversion, shard writes), timed end to end. Both wall-clock and process-CPU rates
are printed: on a shared machine the CPU ratio is the meaningful one (run with --threads 1).

    .venv/bin/python benchmarks/collect_throughput.py [--model smollm2] [--hook resid_post.14] [--tokens 8192]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from progsae.data.collect import CollectConfig, collect
from progsae.data.corpus import iter_contexts
from progsae.data.hooks import capture, resolve_hook
from progsae.data.models import load_model


class Clock:
    """Wall and process-CPU seconds of a block. On a shared machine CPU seconds measure the work
    itself (exact with one thread); wall seconds also count time other processes held the cores."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def bare_forward(model, site, contexts: list[list[int]], batch_size: int) -> Clock:
    """The stopped forward over all contexts, nothing else."""
    with Clock() as clock:
        for i in range(0, len(contexts), batch_size):
            capture(model, site, torch.tensor(contexts[i : i + batch_size], dtype=torch.long))
    return clock


def timed_collect(cfg: CollectConfig, model, tokenizer) -> Clock:
    """A full collect into a fresh store (deleted afterwards), end to end."""
    out = Path(tempfile.mkdtemp(prefix="progsae-bench-"))
    try:
        with Clock() as clock:
            collect(cfg, out / "store", model=model, tokenizer=tokenizer, progress=False)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return clock


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--hook", default="resid_post.14")
    p.add_argument("--corpus", default="embedded")
    p.add_argument("--tokens", type=int, default=8192, help="stored activations per run")
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--storage-dtype", default="float32", choices=("float32", "float16"))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_model(args.model)
    site = resolve_hook(model, args.hook)
    cfg = CollectConfig(model=args.model, hook=args.hook, corpus=args.corpus, tokens=args.tokens, test_tokens=0,
                        context_length=args.context_length, batch_size=args.batch_size, storage_dtype=args.storage_dtype)
    n_ctx = cfg.contexts_for("train")
    contexts = list(itertools.islice(iter_contexts(args.corpus, tokenizer, "train", args.context_length, seed=cfg.seed,
                                                   test_fraction=cfg.resolved_test_fraction()), n_ctx))
    fed = n_ctx * args.context_length  # tokens through the model (stored rows exclude position 0)
    bare_forward(model, site, contexts[: args.batch_size], args.batch_size)  # warm-up

    rates = {k: [] for k in ("bare_wall", "bare_cpu", "collect_wall", "collect_cpu")}
    for r in range(args.repeats):
        b = bare_forward(model, site, contexts, args.batch_size)
        c = timed_collect(cfg, model, tokenizer)
        for name, clock in (("bare", b), ("collect", c)):
            rates[f"{name}_wall"].append(fed / clock.wall)
            rates[f"{name}_cpu"].append(fed / clock.cpu)
        print(f"repeat {r + 1}: bare {fed / b.wall:,.0f} tok/s wall ({fed / b.cpu:,.0f} per CPU-s), "
              f"collect {fed / c.wall:,.0f} tok/s wall ({fed / c.cpu:,.0f} per CPU-s)", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{args.model} {args.hook}: {fed:,} tokens per run ({n_ctx} contexts of {args.context_length}, batch {args.batch_size}), "
          f"{torch.get_num_threads()} threads, medians of {args.repeats}")
    print(f"bare forward to the hook layer : {med['bare_wall']:9,.0f} tokens/s   {med['bare_cpu']:9,.0f} tokens per CPU-second")
    print(f"collect (end to end)           : {med['collect_wall']:9,.0f} tokens/s   {med['collect_cpu']:9,.0f} tokens per CPU-second")
    print(f"ratio collect / bare           : {med['collect_wall'] / med['bare_wall']:9.3f} (wall)  {med['collect_cpu'] / med['bare_cpu']:9.3f} (CPU)   target >= 0.90")

if __name__ == "__main__":
    main()
