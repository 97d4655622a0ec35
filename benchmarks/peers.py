"""Training throughput of progsae against the peer SAE libraries on the same activations.

Peers: SAELens, EleutherAI sparsify, dictionary_learning, each through its own training-step code.
Run in the benchmark environment: `make bench` (builds .venv-bench) or `.venv-bench/bin/python benchmarks/peers.py`.

How it measures: every library trains in its own worker process (its own peak RSS), on the same
in-memory activations (same d, n, k, batch, fp32, torch threads). After warm-up steps the parent asks
the workers in turn for a few timed steps, for several rounds, and reports medians: load from other
processes on the machine then lands on every library alike. Nothing is asserted; targets print as ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

# OpenMP threads that sleep instead of spinning at barriers: on a shared, oversubscribed machine a spinning
# barrier waits a whole scheduler slice for a descheduled thread (a 2-thread sort of 131k keys: 1 ms -> 200 ms).
# Set before torch loads, inherited by every worker, so it applies to all libraries alike; override to compare.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

TARGET_PEER_RATIO = 1.5  # progsae vs the fastest peer at the largest n
TARGET_MATRYOSHKA_OVERHEAD = 1.15  # 3 fixed prefixes vs vanilla TopK, time per step
TARGET_ROOFLINE = 0.60  # fraction of the matmul-bound step time

VANILLA = ["progsae", "saelens", "sparsify", "dictionary_learning"]
MATRYOSHKA = ["progsae-matryoshka", "progsae-matryoshka-batchtopk", "saelens-matryoshka", "dictionary_learning-matryoshka"]


@dataclass
class Spec:
    """One benchmark configuration; every worker gets the same one."""

    lib: str
    d: int
    n: int
    k: int
    batch: int
    threads: int
    seed: int = 0
    prefixes: tuple[int, ...] = ()
    total_steps: int = 10_000  # what the libraries' schedules are told; we stop long before


# ---- the shared activations -------------------------------------------------------------------
def activations(d: int, rows: int, seed: int) -> torch.Tensor:
    """Sparse sums of planted unit directions plus noise (heavy-tailed like LM residuals), same for every library."""
    gen = torch.Generator().manual_seed(seed)
    n_feat = 8 * d
    feats_FD = torch.randn(n_feat, d, generator=gen)
    feats_FD /= feats_FD.norm(dim=1, keepdim=True)
    p_F = (torch.arange(1, n_feat + 1, dtype=torch.float32) ** -0.7)
    p_F *= 8.0 / p_F.sum()  # about 8 active features per row
    active_RF = torch.rand(rows, n_feat, generator=gen) < p_F.clamp(max=1.0)
    mags_RF = active_RF * (0.5 + torch.rand(rows, n_feat, generator=gen))
    x_RD = mags_RF @ feats_FD + 0.05 * torch.randn(rows, d, generator=gen)
    return x_RD * (d**0.5 / x_RD.norm(dim=1).mean())  # E||x|| ~ sqrt(d), as after normalisation


# ---- one runner per library: build the model, return a function doing one training step ----------
def progsae_runner(spec: Spec, arch: str, pool: list[torch.Tensor]) -> Callable[[torch.Tensor], None]:
    """progsae's own training step: progsae.train.Trainer's step on a temporary store holding the same rows."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    from progsae.data.store import ActivationStore, StoreWriter
    from progsae.sae.base import TrainContext
    from progsae.train.config import TrainConfig
    from progsae.train.trainer import Trainer

    tmp = Path(tempfile.mkdtemp(prefix="progsae-bench-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    writer = StoreWriter(tmp / "store", {"d_model": spec.d, "model": "bench", "hook": "bench"}, "train")
    writer.add(torch.cat(pool))
    writer.close()
    cfg = TrainConfig(arch=arch, n_latents=spec.n, k=spec.k, matryoshka=list(spec.prefixes) or None,
                      steps=spec.total_steps, batch_size=spec.batch, seed=spec.seed, normalize_input=False,
                      init_sample=spec.batch)
    trainer = Trainer(ActivationStore(tmp / "store"), tmp / "run", cfg, resume=False, progress=False)
    ctx = TrainContext(aux_coef=trainer.cfg.aux_coef, k_aux=trainer.cfg.k_aux, generator=trainer.prefix_gen)

    def step(x_BD: torch.Tensor) -> None:
        trainer._step(x_BD, ctx)
        trainer.state.step += 1

    return step


def saelens_runner(spec: Spec, matryoshka: bool) -> Callable[[torch.Tensor], None]:
    """SAELens v6: a TrainingSAE driven by SAETrainer.step (their public per-step seam of fit())."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(spec.seed)
    if matryoshka:
        from sae_lens.saes.matryoshka_batchtopk_sae import (
            MatryoshkaBatchTopKTrainingSAE,
            MatryoshkaBatchTopKTrainingSAEConfig,
        )

        sae = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=spec.d, d_sae=spec.n, k=spec.k, matryoshka_widths=list(spec.prefixes), dtype="float32", device="cpu"))
    else:
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

        sae = TopKTrainingSAE(TopKTrainingSAEConfig(
            d_in=spec.d, d_sae=spec.n, k=spec.k, dtype="float32", device="cpu",
            use_sparse_activations=os.environ.get("BENCH_SAELENS_SPARSE", "0") == "1"))
    cfg = SAETrainerConfig(
        total_training_samples=spec.total_steps * spec.batch, train_batch_size_samples=spec.batch,
        lr=2e-4, lr_end=2e-5, device="cpu", autocast=False, logger=LoggingConfig(log_to_wandb=False),
        feature_sampling_window=10**9,
    )
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))

    def step(x_BD: torch.Tensor) -> None:
        trainer.step(x_BD)
        trainer.n_training_steps += 1

    return step


def sparsify_runner(spec: Spec) -> Callable[[torch.Tensor], None]:
    """EleutherAI sparsify: SparseCoder plus the body of sparsify.Trainer.fit for one autoencoding step (Adam)."""
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(spec.seed)
    sae = SparseCoder(spec.d, SparseCoderConfig(num_latents=spec.n, k=spec.k), device="cpu", dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (spec.n / 2**14) ** 0.5)
    since_fired = torch.zeros(spec.n, dtype=torch.long)
    did_fire = torch.zeros(spec.n, dtype=torch.bool)
    auxk_alpha, dead_threshold = 1 / 32, 10_000_000

    def step(x_BD: torch.Tensor) -> None:
        sae.set_decoder_norm_to_unit_norm()
        dead_mask = since_fired > dead_threshold
        out = sae(x=x_BD, y=x_BD, dead_mask=dead_mask)
        did_fire[out.latent_indices.flatten()] = True
        loss = out.fvu + auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            since_fired.add_(x_BD.shape[0])
            since_fired[did_fire] = 0
            did_fire.zero_()

    return step


def dictionary_learning_runner(spec: Spec, matryoshka: bool) -> Callable[[torch.Tensor], None]:
    """dictionary_learning 0.1.0: its trainer's update(step, x) (TopKTrainer / MatryoshkaBatchTopKTrainer)."""
    common = dict(steps=spec.total_steps, activation_dim=spec.d, dict_size=spec.n, k=spec.k, layer=0,
                  lm_name="bench", seed=spec.seed, device="cpu", warmup_steps=100)
    if matryoshka:
        from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer

        edges = [0, *spec.prefixes]
        fractions = [(b - a) / spec.n for a, b in zip(edges, edges[1:])]
        trainer = MatryoshkaBatchTopKTrainer(group_fractions=fractions, **common)
    else:
        from dictionary_learning.trainers.top_k import TopKTrainer

        trainer = TopKTrainer(**common)
    count = 0

    def step(x_BD: torch.Tensor) -> None:
        nonlocal count
        trainer.update(count, x_BD)
        count += 1

    return step


def build_runner(spec: Spec, pool: list[torch.Tensor]) -> Callable[[torch.Tensor], None]:
    lib = spec.lib
    if lib in ("progsae", "progsae-matryoshka"):
        return progsae_runner(spec, "topk", pool)
    if lib == "progsae-matryoshka-batchtopk":
        return progsae_runner(spec, "batchtopk", pool)
    if lib.startswith("saelens"):
        return saelens_runner(spec, matryoshka=lib.endswith("matryoshka"))
    if lib == "sparsify":
        return sparsify_runner(spec)
    if lib.startswith("dictionary_learning"):
        return dictionary_learning_runner(spec, matryoshka=lib.endswith("matryoshka"))
    raise ValueError(f"unknown library {lib}")


# ---- worker process -----------------------------------------------------------------------------
def worker(conn, spec_dict: dict) -> None:
    """Build one library's SAE, then run timed steps whenever the parent asks; report peak RSS at the end."""
    spec = Spec(**spec_dict)
    sys.stdout = sys.stderr  # libraries' chatter must not interleave with the parent's table
    torch.set_num_threads(spec.threads)
    try:
        pool = activations(spec.d, 2 * spec.batch, spec.seed).split(spec.batch)
        step = build_runner(spec, list(pool))
        conn.send(("ready", None))
        i = 0
        while True:
            cmd, count = conn.recv()
            if cmd == "stop":
                break
            times = []
            for _ in range(count):
                x_BD = pool[i % len(pool)]
                i += 1
                t0 = time.perf_counter()
                step(x_BD)
                times.append(time.perf_counter() - t0)
            conn.send(("times", times))
        conn.send(("rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    except Exception as e:  # report, don't hang the parent
        conn.send(("error", f"{type(e).__name__}: {e}"))


class Worker:
    def __init__(self, spec: Spec, ctx):
        self.spec = spec
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker, args=(child, asdict(spec)), daemon=True)
        self.proc.start()
        self.error: str | None = None
        self.times: list[float] = []  # per-round median seconds per step
        self.rss_mib: float | None = None
        self._expect("ready")

    def _expect(self, kind: str):
        if self.error:
            return None
        if not self.conn.poll(1800):
            self.error = "worker timed out"
            return None
        got, payload = self.conn.recv()
        if got == "error":
            self.error = payload
            return None
        return payload

    def run(self, count: int) -> list[float] | None:
        if self.error:
            return None
        self.conn.send(("run", count))
        return self._expect("times")

    def stop(self) -> None:
        if not self.error:
            self.conn.send(("stop", 0))
            self.rss_mib = self._expect("rss")
        self.proc.join(timeout=60)
        if self.proc.is_alive():
            self.proc.kill()


# ---- roofline -----------------------------------------------------------------------------------
def matmul_flops(b: int, d: int, n: int, reps: int = 3) -> float:
    """Measured fp32 FLOP/s of the encoder-shaped matmul [b,d] @ [d,n] on this machine."""
    x = torch.randn(b, d)
    w = torch.randn(d, n)
    out = torch.empty(b, n)
    torch.mm(x, w, out=out)
    best = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(x, w, out=out)
        best.append(time.perf_counter() - t0)
    return 2 * b * d * n / statistics.median(best)


def step_flops(b: int, d: int, n: int, k: int) -> tuple[float, float]:
    """Minimal matmul FLOPs of one TopK training step: (dense encoder forward, sparse rest).

    Encoder forward 2BdN is the dense floor (every pre-activation is needed to pick the top k).
    The rest only touches the k active latents per row: decoder forward, decoder weight gradient,
    gradient into the codes, encoder weight gradient: 4 x 2Bkd. (AuxK runs only with dead latents;
    Adam and decoder renormalisation are O(Nd) elementwise.)
    """
    return 2.0 * b * d * n, 8.0 * b * k * d


# ---- the benchmark ------------------------------------------------------------------------------
def run_group(specs: list[Spec], warmup: int, rounds: int, steps: int, roofline: bool, log) -> tuple[list[Worker], list[float]]:
    """Start one worker per spec, warm them up, then interleave timed rounds; returns workers and matmul FLOP/s samples."""
    ctx = mp.get_context("spawn")
    workers = []
    for spec in specs:
        log(f"  starting {spec.lib} (n={spec.n})")
        workers.append(Worker(spec, ctx))
        if workers[-1].error:
            log(f"  {spec.lib}: {workers[-1].error}")
    for w in workers:
        w.run(warmup)
    flops = []
    for r in range(rounds):
        order = workers if r % 2 == 0 else workers[::-1]
        for w in order:
            times = w.run(steps)
            if times:
                w.times.append(statistics.median(times))
        if roofline:
            s = specs[0]
            flops.append(matmul_flops(s.batch, s.d, s.n))
        log(f"  round {r + 1}/{rounds} done")
    for w in workers:
        w.stop()
    return workers, flops


def fmt_rate(x: float | None) -> str:
    return f"{x:,.0f}" if x else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--n", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per library before the rounds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps per library per round")
    p.add_argument("--libs", nargs="+", default=VANILLA, help=f"vanilla TopK libraries (default {VANILLA})")
    p.add_argument("--matryoshka-libs", nargs="+", default=MATRYOSHKA)
    p.add_argument("--matryoshka-n", type=int, default=None, help="dictionary size of the Matryoshka comparison (default: largest --n)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731

    results: dict = {"settings": vars(args).copy(), "vanilla": {}, "matryoshka": {}, "roofline": {}}
    lines = [
        f"TopK SAE training throughput: d={args.d}, k={args.k}, batch={args.batch}, fp32, {args.threads} torch threads, "
        f"median over {args.rounds} interleaved rounds of {args.steps} steps (after {args.warmup} warm-up steps), "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
        f"{'n':>6}  {'library':<32}{'act/s':>9}{'s/step':>8}{'peak RSS MiB':>14}{'progsae / lib':>15}",
    ]
    vanilla_rates: dict[int, dict[str, float]] = {}
    for n in args.n:
        log(f"vanilla TopK, n={n}")
        specs = [Spec(lib=lib, d=args.d, n=n, k=args.k, batch=args.batch, threads=args.threads) for lib in args.libs]
        workers, flops = run_group(specs, args.warmup, args.rounds, args.steps, roofline=True, log=log)
        rates = {w.spec.lib: args.batch / statistics.median(w.times) for w in workers if w.times and not w.error}
        vanilla_rates[n] = rates
        ours = rates.get("progsae")
        for w in workers:
            rate = rates.get(w.spec.lib)
            ratio = f"{ours / rate:.2f}x" if ours and rate and w.spec.lib != "progsae" else ""
            note = f"  [{w.error}]" if w.error else ""
            lines.append(f"{n:>6}  {w.spec.lib:<32}{fmt_rate(rate):>9}{(args.batch / rate if rate else 0):>8.2f}"
                         f"{(w.rss_mib or 0):>14,.0f}  {ratio:>13}{note}")
            results["vanilla"].setdefault(str(n), {})[w.spec.lib] = {"acts_per_s": rate, "peak_rss_mib": w.rss_mib, "error": w.error}
        if flops:
            dense, sparse = step_flops(args.batch, args.d, n, args.k)
            peak = statistics.median(flops)
            bound_rate = args.batch / ((dense + sparse) / peak)
            results["roofline"][str(n)] = {"matmul_flops": peak, "step_flops_dense": dense, "step_flops_sparse": sparse,
                                           "bound_acts_per_s": bound_rate, "progsae_fraction": (ours or 0) / bound_rate}
    peers_best = {}
    for n, rates in vanilla_rates.items():
        peer = {k: v for k, v in rates.items() if k != "progsae"}
        if peer and "progsae" in rates:
            best = max(peer, key=peer.get)
            peers_best[n] = (best, rates["progsae"] / peer[best])

    mat_n = args.matryoshka_n or max(args.n)
    prefixes = (mat_n // 4, mat_n // 2, mat_n)
    mat_lines = []
    if args.matryoshka_libs:
        log(f"Matryoshka, n={mat_n}, prefixes {prefixes}")
        specs = [Spec(lib=lib, d=args.d, n=mat_n, k=args.k, batch=args.batch, threads=args.threads, prefixes=prefixes)
                 for lib in args.matryoshka_libs]
        # vanilla progsae runs again in this group so the overhead ratio is measured side by side
        specs.append(Spec(lib="progsae", d=args.d, n=mat_n, k=args.k, batch=args.batch, threads=args.threads))
        workers, _ = run_group(specs, args.warmup, args.rounds, args.steps, roofline=False, log=log)
        rates = {w.spec.lib: args.batch / statistics.median(w.times) for w in workers if w.times and not w.error}
        mat_lines.append(f"Matryoshka, n={mat_n}, 3 fixed prefixes {list(prefixes)}, equal weights (progsae column: progsae-matryoshka / lib)")
        ours = rates.get("progsae-matryoshka")
        for w in workers:
            rate = rates.get(w.spec.lib)
            ratio = f"{ours / rate:.2f}x" if ours and rate and not w.spec.lib.startswith("progsae") else ""
            if w.spec.lib == "progsae-matryoshka-batchtopk" and rate and rates.get("saelens-matryoshka"):
                ratio = f"{rate / rates['saelens-matryoshka']:.2f}x (BTK vs SAELens)"
            note = f"  [{w.error}]" if w.error else ""
            mat_lines.append(f"{mat_n:>6}  {w.spec.lib:<32}{fmt_rate(rate):>9}{(args.batch / rate if rate else 0):>8.2f}"
                             f"{(w.rss_mib or 0):>14,.0f}  {ratio:>13}{note}")
            results["matryoshka"][w.spec.lib] = {"acts_per_s": rate, "peak_rss_mib": w.rss_mib, "error": w.error}
        if ours and rates.get("progsae"):
            overhead = rates["progsae"] / ours
            results["matryoshka_overhead"] = overhead
            mat_lines.append(f"Matryoshka overhead: progsae-matryoshka step time / progsae vanilla step time = {overhead:.2f}x "
                             f"(target <= {TARGET_MATRYOSHKA_OVERHEAD})")

    lines += [""] + mat_lines + [""]
    for n, r in results["roofline"].items():
        lines.append(
            f"roofline n={n}: fp32 matmul {r['matmul_flops'] / 1e9:.0f} GFLOP/s measured ([{args.batch},{args.d}]@[{args.d},{n}]); "
            f"a step needs >= 2BdN + 8Bkd = {r['step_flops_dense'] / 1e9:.1f} + {r['step_flops_sparse'] / 1e9:.2f} GFLOP "
            f"-> bound {r['bound_acts_per_s']:,.0f} act/s; progsae reaches {r['progsae_fraction']:.0%} (target >= {TARGET_ROOFLINE:.0%})")
    for n, (best, ratio) in peers_best.items():
        lines.append(f"n={n}: progsae / fastest peer ({best}) = {ratio:.2f}x"
                     + (f" (target >= {TARGET_PEER_RATIO}x)" if n == max(args.n) else ""))
    results["progsae_vs_fastest_peer"] = {str(n): {"peer": b, "ratio": r} for n, (b, r) in peers_best.items()}
    print("\n".join(lines), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
