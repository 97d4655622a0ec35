"""Activations/s of a full TopK training step: the sparse path vs the dense autograd reference.

One step = forward, backward, decoder-gradient projection, Adam(fused=True), decoder renorm. Variants are
timed side by side (interleaved step by step) and medians are reported, so load from other processes hits
them alike. Also reports Matryoshka (3 fixed prefixes) time / vanilla TopK time, and the hierarchical (multi-k)
objective's time at levels k/4, k/2, k (--k-levels to change them) / vanilla TopK time (the target is <= 1.3).

    .venv/bin/python benchmarks/train_throughput.py --sizes 4096,16384 --steps 5
    .venv/bin/python benchmarks/train_throughput.py --sizes 16384 --no-dense --no-matryoshka --steps 9

OMP_WAIT_POLICY defaults to PASSIVE here: on a machine shared with other jobs, spinning OpenMP workers made
small ops (cat, sort, searchsorted on ~1e5 elements) take 20-200 ms instead of <1 ms. Set it to override.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first torch import

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from progsae.sae import SAEConfig, TopKSAE, TrainContext  # noqa: E402
from progsae.sae.sparse_step import dense_reference  # noqa: E402
from progsae.train.optimizer import LayoutAdam  # noqa: E402
from progsae.train.step_timing import train_step  # noqa: E402


def make_sae(d: int, n: int, k: int, prefixes: list[int] | None, seed: int, k_levels: list[int] | None = None) -> TopKSAE:
    sae = TopKSAE(SAEConfig(architecture="topk", d_in=d, n_latents=n, k=k, prefixes=prefixes))
    if k_levels:
        sae.cfg.provenance["k_levels"] = {"levels": k_levels}
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(n, d, generator=g))
        sae.normalize_decoder()
        sae.W_enc.copy_(sae.W_dec.t())
    return sae


class Runner:
    """One SAE + optimiser; `step(x)` runs a full training step and returns its wall time."""

    def __init__(self, sae: TopKSAE, dense: bool, ctx: TrainContext):
        self.sae, self.dense, self.ctx = sae, dense, ctx
        self.opt = LayoutAdam(sae.parameters(), lr=1e-4)  # the trainer's optimiser
        self.times: list[float] = []

    def _step(self, x_BD: torch.Tensor) -> None:
        train_step(self.sae, self.opt, x_BD, self.ctx)

    def step(self, x_BD: torch.Tensor, record: bool = True) -> None:
        t0 = time.perf_counter()
        if self.dense:
            with dense_reference():
                self._step(x_BD)
        else:
            self._step(x_BD)
        if record:
            self.times.append(time.perf_counter() - t0)

    def median(self) -> float:
        return statistics.median(self.times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="4096,16384", help="comma-separated dictionary sizes n")
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant (after one warm-up step)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dead-frac", type=float, default=0.0, help="fraction of latents marked dead (turns on AuxK)")
    p.add_argument("--no-dense", action="store_true", help="skip the dense reference")
    p.add_argument("--no-matryoshka", action="store_true", help="skip the Matryoshka variant")
    p.add_argument("--k-levels", default=None, help="hierarchical variant's levels (default k/4,k/2,k)")
    p.add_argument("--no-hierarchical", action="store_true", help="skip the hierarchical (multi-k) variant")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    levels = [int(j) for j in args.k_levels.split(",")] if args.k_levels else [args.k // 4, args.k // 2, args.k]
    print(f"d {args.d}, k {args.k}, batch {args.batch}, fp32, {torch.get_num_threads()} threads, "
          f"dead fraction {args.dead_frac}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; "
          f"medians of {args.steps} interleaved steps")
    for n in [int(s) for s in args.sizes.split(",")]:
        g = torch.Generator().manual_seed(0)
        dead = torch.rand(n, generator=g) < args.dead_frac if args.dead_frac > 0 else None
        ctx = TrainContext(dead_mask_N=dead)
        runners = {"sparse": Runner(make_sae(args.d, n, args.k, None, 0), False, ctx)}
        if not args.no_dense:
            runners["dense"] = Runner(make_sae(args.d, n, args.k, None, 0), True, ctx)
        if not args.no_matryoshka:
            runners["matryoshka"] = Runner(make_sae(args.d, n, args.k, [n // 4, n // 2, n], 0), False, ctx)
        if not args.no_hierarchical:
            runners["hierarchical"] = Runner(make_sae(args.d, n, args.k, None, 0, levels), False, ctx)
        xs = [torch.randn(args.batch, args.d, generator=g) for _ in range(2)]
        for r in runners.values():
            r.step(xs[0], record=False)
        for i in range(args.steps):
            for r in runners.values():
                r.step(xs[i % 2])
        rate = {name: args.batch / r.median() for name, r in runners.items()}
        line = f"n {n:6d}: sparse {rate['sparse']:8.0f} act/s ({runners['sparse'].median():.3f} s/step)"
        if "dense" in rate:
            line += f" | dense {rate['dense']:8.0f} act/s ({runners['dense'].median():.3f} s/step)"
            line += f" | sparse/dense {rate['sparse'] / rate['dense']:.2f}x"
        if "matryoshka" in rate:
            line += f" | matryoshka/topk time {runners['matryoshka'].median() / runners['sparse'].median():.3f}"
        if "hierarchical" in rate:
            line += f" | hierarchical {levels}/topk time {runners['hierarchical'].median() / runners['sparse'].median():.3f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
