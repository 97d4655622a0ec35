"""Speed-up of the shared-prefix recaptured-CE evaluation over one full forward per variant.

Both paths score the same tokens with the same SAEs (clean, zero and mean ablations, and each
variant) and must agree; the prefix path runs the blocks up to the hook once per batch. Prints the
median wall time of each path (alternated, so machine load hits both alike) and their ratio.

    .venv/bin/python benchmarks/ce_shared_prefix.py                # SmolLM2, resid_post.14, 8 variants
    .venv/bin/python benchmarks/ce_shared_prefix.py --model PATH --hook resid_post.1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from progsae.data.hooks import resolve_hook
    from progsae.data.models import load_model
    from progsae.evals.common import Variant
    from progsae.evals.lm_loss import evaluate_lm_loss
    from progsae.sae import SAEConfig, TopKSAE

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--hook", default="resid_post.14")
    ap.add_argument("--variants", type=int, default=8)
    ap.add_argument("--contexts", type=int, default=4)
    ap.add_argument("--context-length", type=int, default=128)
    ap.add_argument("--n-latents", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, _ = load_model(args.model)
    site = resolve_hook(model, args.hook)
    d = model.config.hidden_size
    torch.manual_seed(0)
    variants = []
    for i in range(args.variants):
        sae = TopKSAE(SAEConfig(architecture="topk", d_in=d, n_latents=args.n_latents, k=args.k))
        for p in sae.parameters():
            p.data.normal_(0, 0.05)
        sae.normalize_decoder()
        variants.append(Variant.of(sae, f"v{i}"))
    ids = torch.randint(0, model.config.vocab_size, (args.contexts, args.context_length), generator=torch.Generator().manual_seed(0))
    mean = torch.zeros(d)

    times = {True: [], False: []}
    results = {}
    for _ in range(args.repeats):
        for shared in (True, False):
            t0 = time.perf_counter()
            results[shared] = evaluate_lm_loss(model, site, [ids], variants, mean, shared_prefix=shared)
            times[shared].append(time.perf_counter() - t0)
    diff = max(abs(a.ce_sae - b.ce_sae) + abs(a.kl - b.kl) for a, b in zip(results[True], results[False]))
    t_shared, t_full = statistics.median(times[True]), statistics.median(times[False])
    tokens = ids.numel()
    print(f"model {args.model}  hook {args.hook}  {args.variants} variants (+ clean, zero, mean)  {tokens} tokens/batch  threads {args.threads}")
    print(f"full forward per variant : {t_full:8.2f} s  ({tokens * (args.variants + 2) / t_full:8.0f} variant-tokens/s)")
    print(f"shared prefix            : {t_shared:8.2f} s  ({tokens * (args.variants + 2) / t_shared:8.0f} variant-tokens/s)")
    print(f"speed-up                 : {t_full / t_shared:8.2f}x   (max |difference| in CE+KL: {diff:.2e})")


if __name__ == "__main__":
    main()
