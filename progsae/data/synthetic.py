"""Synthetic activations with planted ground truth: sparse sums of known unit features plus noise.

Each token x = sum_i a_i f_i + e, where f_i are spread-out random unit vectors ("features"), feature i
fires with probability p_i = c * i^-beta (i = 1..n in rank order, so feature 0 is the most frequent),
c chosen so that sum_i p_i = mean_active features fire per token on average. By default each token
has floor/ceil(mean_active) active features drawn without replacement with weights p_i (so a TopK
SAE with k = mean_active can represent every token); `active_count="bernoulli"` makes features fire
independently instead. Magnitudes a_i > 0 follow one law for every feature, and e is Gaussian with
E||e||^2 = noise^2.

Because the magnitude law does not depend on rank, E[a_i^2 1{fires}] = p_i * E[a^2] is proportional to
p_i: an SAE that recovers the features has E[f_i^2] importance following the same power law in rank,
with exponent `freq_exponent` (beta). The planted exponent is stored in meta.json ("synthetic" record),
the p_i in true_features.safetensors ("frequencies") beside the measured train-split firing rates
("empirical_frequencies")."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from progsae.errors import ProgsaeError
from progsae.sae.io import atomic_save_safetensors

TRUE_FEATURES_FILE = "true_features.safetensors"
_CHUNK = 16384  # tokens generated per dense [chunk, n_features] block


@dataclass
class SyntheticSpec:
    """The generator parameters, recorded in meta.json under "synthetic"."""

    d_model: int = 64
    n_features: int = 512
    tokens: int = 200_000
    test_tokens: int = 20_000
    seed: int = 0
    freq_exponent: float = 0.5  # beta in p_i ∝ i^-beta; also the exponent of E[f_i^2] vs rank
    mean_active: float = 3.0  # expected number of features firing per token
    magnitude_low: float = 1.0  # magnitudes ~ Uniform(low, high), the same law for every feature
    magnitude_high: float = 2.0
    noise: float = 0.05  # RMS norm of the added Gaussian noise vector
    active_count: str = "fixed"  # "fixed": floor/ceil(mean_active) features per token; "bernoulli": independent
    spread_steps: int = 50  # push planted features apart (see planted_features); 0 = plain random

    def validate(self) -> None:
        if self.d_model <= 0 or self.n_features <= 0:
            raise ProgsaeError(f"d_model and n_features must be positive, got {self.d_model}, {self.n_features}")
        if self.tokens <= 0 or self.test_tokens < 0:
            raise ProgsaeError(f"tokens must be positive and test_tokens non-negative, got {self.tokens}, {self.test_tokens}")
        if not 0 < self.mean_active <= self.n_features:
            raise ProgsaeError(f"mean_active={self.mean_active} must be in (0, n_features={self.n_features}]")
        if self.freq_exponent < 0:
            raise ProgsaeError(f"freq_exponent must be >= 0, got {self.freq_exponent}")
        if not 0 <= self.magnitude_low <= self.magnitude_high or self.magnitude_high <= 0:
            raise ProgsaeError(f"need 0 <= magnitude_low <= magnitude_high > 0, got {self.magnitude_low}, {self.magnitude_high}")
        if self.active_count not in ("fixed", "bernoulli"):
            raise ProgsaeError(f"active_count must be 'fixed' or 'bernoulli', got {self.active_count!r}")
        if self.noise < 0:
            raise ProgsaeError(f"noise must be >= 0, got {self.noise}")
        if self.firing_probabilities().max() > 1:
            raise ProgsaeError(
                f"mean_active={self.mean_active} with freq_exponent={self.freq_exponent} makes the top feature fire with p > 1"
            )

    def firing_probabilities(self) -> torch.Tensor:
        """p_i = c * i^-beta for ranks i = 1..n, scaled so sum p_i = mean_active (float64)."""
        ranks = torch.arange(1, self.n_features + 1, dtype=torch.float64)
        w = ranks.pow(-self.freq_exponent)
        return w * (self.mean_active / w.sum())


def planted_features(d_model: int, n_features: int, gen: torch.Generator, spread_steps: int = 50) -> torch.Tensor:
    """Unit feature directions [n_features, d_model]: random, then spread apart so no pair is nearly parallel.

    Random unit vectors in 64 dims have pairs with |cos| > 0.5, which no SAE can tell apart reliably;
    `spread_steps` Adam steps on sum_{i != j} cos(f_i, f_j)^8 bring the largest |cos| to about 0.25
    (512 features in 64 dims) while the features stay random-looking.
    """
    f_FD = torch.randn(n_features, d_model, generator=gen, dtype=torch.float64)
    if spread_steps > 0 and n_features > 1:
        f_FD.requires_grad_(True)
        opt = torch.optim.Adam([f_FD], lr=0.02)
        eye_FF = torch.eye(n_features, dtype=torch.float64)
        for _ in range(spread_steps):
            u_FD = f_FD / f_FD.norm(dim=1, keepdim=True)
            g2_FF = (u_FD @ u_FD.T - eye_FF).square()
            loss = g2_FF.square().square().sum()  # sum of cos^8
            opt.zero_grad()
            loss.backward()
            opt.step()
        f_FD = f_FD.detach()
    return (f_FD / f_FD.norm(dim=1, keepdim=True)).float()


def sample_active(spec: SyntheticSpec, p_F: torch.Tensor, count: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Which features fire: (token index, feature index) pairs of one chunk.

    "fixed": each token has floor or ceil(mean_active) features (mean exactly mean_active), drawn
    without replacement with weights p_i (Gumbel top-k); inclusion probabilities are then p_i up to
    a small without-replacement shrink of the most frequent features (see "empirical_frequencies").
    "bernoulli": features fire independently with probability p_i, so the count per token varies.
    """
    if spec.active_count == "bernoulli":
        return (torch.rand(count, spec.n_features, generator=gen) < p_F.float()).nonzero(as_tuple=True)
    c_hi = math.ceil(spec.mean_active)
    u_TF = torch.rand(count, spec.n_features, generator=gen).clamp_(1e-12, 1 - 1e-7)
    keys_TF = p_F.float().log() - (-u_TF.log()).log()  # log-weight + Gumbel noise
    feat_TC = keys_TF.topk(c_hi, dim=1).indices  # sorted: the last column is the weakest draw
    keep_TC = torch.ones(count, c_hi, dtype=torch.bool)
    frac = spec.mean_active - math.floor(spec.mean_active)
    if frac > 0:
        keep_TC[:, -1] = torch.rand(count, generator=gen) < frac
    tok_TC = torch.arange(count)[:, None].expand(count, c_hi)
    return tok_TC[keep_TC], feat_TC[keep_TC]


def sample_tokens(spec: SyntheticSpec, features_FD: torch.Tensor, p_F: torch.Tensor, count: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` synthetic activations [count, d_model] and how often each feature fired in them [n_features]."""
    tok_K, feat_K = sample_active(spec, p_F, count, gen)  # K = number of firings in the chunk
    mags_K = torch.empty(tok_K.numel()).uniform_(spec.magnitude_low, spec.magnitude_high, generator=gen)
    codes_TF = torch.zeros(count, spec.n_features).index_put_((tok_K, feat_K), mags_K)
    acts_TD = codes_TF @ features_FD
    if spec.noise > 0:
        acts_TD += torch.randn(count, spec.d_model, generator=gen) * (spec.noise / math.sqrt(spec.d_model))
    return acts_TD, torch.bincount(feat_K, minlength=spec.n_features)


def make_synthetic(
    out,
    d_model: int = 64,
    n_features: int = 512,
    tokens: int = 200_000,
    test_tokens: int | None = None,
    validation_tokens: int | None = None,
    seed: int = 0,
    freq_exponent: float = 0.5,
    mean_active: float = 3.0,
    noise: float = 0.05,
    magnitude_low: float = 1.0,
    magnitude_high: float = 2.0,
    active_count: str = "fixed",
    spread_steps: int = 50,
    shard_tokens: int = 65536,
) -> Path:
    """Write an activation store (train + test splits) and true_features.safetensors to `out`; returns `out`.

    test_tokens defaults to max(1000, tokens // 10), validation_tokens to test_tokens (drawn after test, so
    train and test do not depend on it). The result is a pure function of the arguments.
    """
    from progsae.data.store import META_FILE, StoreWriter

    out = Path(out)
    if (out / META_FILE).exists():
        raise ProgsaeError(f"{out}: already holds an activation store; choose a new --out")
    spec = SyntheticSpec(
        d_model=d_model,
        n_features=n_features,
        tokens=tokens,
        test_tokens=max(1000, tokens // 10) if test_tokens is None else test_tokens,
        seed=seed,
        freq_exponent=freq_exponent,
        mean_active=mean_active,
        magnitude_low=magnitude_low,
        magnitude_high=magnitude_high,
        noise=noise,
        active_count=active_count,
        spread_steps=spread_steps,
    )
    spec.validate()
    gen = torch.Generator().manual_seed(seed)
    features_FD = planted_features(d_model, n_features, gen, spec.spread_steps)
    p_F = spec.firing_probabilities()
    record = {
        **asdict(spec),
        "true_features": TRUE_FEATURES_FILE,
        "importance_exponent": spec.freq_exponent,
        "note": "p_i ∝ rank^-freq_exponent; magnitudes independent of rank, so E[f_i^2] ∝ p_i follows the same power law",
    }
    meta = {"model": "synthetic", "hook": None, "d_model": d_model, "context_length": None, "synthetic": record}
    fired_F = torch.zeros(n_features, dtype=torch.long)
    n_val = spec.test_tokens if validation_tokens is None else int(validation_tokens)
    for split, count in (("train", spec.tokens), ("test", spec.test_tokens), ("validation", n_val)):
        if count == 0:
            continue
        writer = StoreWriter(out, meta, split, shard_tokens=shard_tokens)
        for start in range(0, count, _CHUNK):
            acts_TD, fired = sample_tokens(spec, features_FD, p_F, min(_CHUNK, count - start), gen)
            writer.add(acts_TD)
            if split == "train":
                fired_F += fired
        writer.close()
    atomic_save_safetensors(
        {"features": features_FD, "frequencies": p_F.float(), "empirical_frequencies": fired_F.float() / spec.tokens},
        out / TRUE_FEATURES_FILE,
        metadata={"freq_exponent": str(spec.freq_exponent), "mean_active": str(spec.mean_active)},
    )
    return out


def load_true_features(store_path) -> dict[str, torch.Tensor]:
    """The planted "features" [n_features, d_model] and "frequencies" [n_features] of a synthetic store."""
    from safetensors.torch import load_file

    path = Path(store_path) / TRUE_FEATURES_FILE
    if not path.exists():
        raise ProgsaeError(f"{path}: no such file (not a synthetic store)")
    return load_file(str(path))


def feature_recovery(W_dec_ND: torch.Tensor, features_FD: torch.Tensor) -> torch.Tensor:
    """For each planted feature, the best cosine similarity with any decoder row [n_features]."""
    dec = W_dec_ND / W_dec_ND.norm(dim=1, keepdim=True).clamp_min(1e-12)
    feat = features_FD / features_FD.norm(dim=1, keepdim=True)
    return (feat @ dec.T).max(dim=1).values
