"""Write synthetic activations with planted ground-truth features (for tests and demos).

Each token is a sum of ~--mean-active planted unit features with positive magnitudes plus small noise;
feature i fires with probability ∝ i^-(--freq-exponent), so an SAE's E[f^2] importance recovers that
power law. Writes an activation store (train + test splits) and true_features.safetensors
("features" [n, d], "frequencies" [n]).

Example: progsae synth --out runs/synth --d-model 64 --features 512 --tokens 200000 --seed 0
"""

from __future__ import annotations

import argparse

from progsae.commands.arguments import add_overwrite_argument
from progsae.data.synthetic import SyntheticSpec, make_synthetic


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = SyntheticSpec()
    p.add_argument("--out", required=True, help="store folder to create")
    add_overwrite_argument(p)
    p.add_argument("--d-model", type=int, default=d.d_model, help=f"activation width (default {d.d_model})")
    p.add_argument("--features", type=int, default=d.n_features, help=f"planted features (default {d.n_features})")
    p.add_argument("--tokens", type=int, default=d.tokens, help=f"train tokens (default {d.tokens})")
    p.add_argument("--test-tokens", type=int, default=None, help="held-out tokens (default max(1000, tokens/10))")
    p.add_argument("--validation-tokens", type=int, default=None, help="validation tokens (default: as many as test)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--freq-exponent", type=float, default=d.freq_exponent, help=f"beta in p_i ∝ i^-beta (default {d.freq_exponent})")
    p.add_argument("--mean-active", type=float, default=d.mean_active, help=f"features per token on average (default {d.mean_active:g})")
    p.add_argument("--noise", type=float, default=d.noise, help=f"RMS norm of the added noise (default {d.noise})")
    p.add_argument("--active-count", choices=("fixed", "bernoulli"), default=d.active_count,
                   help="fixed: floor/ceil(mean-active) features per token; bernoulli: features fire independently")


def run(args: argparse.Namespace) -> int:
    from progsae.outputs import claim_folder

    claim_folder(args.out, "synth", overwrite=args.overwrite)
    out = make_synthetic(
        args.out,
        d_model=args.d_model,
        n_features=args.features,
        tokens=args.tokens,
        test_tokens=args.test_tokens,
        validation_tokens=args.validation_tokens,
        seed=args.seed,
        freq_exponent=args.freq_exponent,
        mean_active=args.mean_active,
        noise=args.noise,
        active_count=args.active_count,
    )
    print(f"wrote {out} ({args.tokens} train tokens, d_model {args.d_model}, {args.features} planted features)")
    return 0
