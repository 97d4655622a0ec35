"""TrainConfig: every setting of an SAE training run, stored in checkpoints and in the SAE's provenance."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from progsae.errors import ProgsaeError

ARCHITECTURES = ("topk", "batchtopk", "relu")
GAO_LR_N = 2**14  # Gao et al. (2024): lr = 2e-4 / sqrt(n / 2^14)
GAO_LR = 2e-4
DEFAULT_DEAD_WINDOW = 10_000_000  # tokens (Gao et al.); shortened for short runs, see resolved()


@dataclass
class TrainConfig:
    """Settings of one training run. `None` fields get a documented default in `resolved()`.

    lr            default 2e-4 / sqrt(n_latents / 2^14) (Gao et al. scaling in dictionary size).
    warmup_steps  linear lr warm-up; default 5% of steps, at most 1000.
    decay_frac    lr decays linearly to 0 over this final fraction of steps.
    k_aux         AuxK latents; default d_in // 2 (Gao et al.).
    dead_window   tokens without firing after which a latent counts as dead;
                  default min(10M, total tokens / 10).
    l1_coef       only used by relu; default 1.0 (inputs normalised to E||x||^2 = d); it sets the L0/FVU trade-off.
    l1_warmup_steps  the L1 coefficient ramps linearly from 0; default 5% of steps.
    normalize_input  scale inputs by one scalar so E||x||^2 = d; folded back into the weights at save.
    heldout_rows  validation rows whose FVU is logged as heldout_fvu (0, or a store without a
                  validation split: not logged); it tells whether training has levelled off.
    heldout_every steps between held-out FVU logs; default steps // 20, so 20 points and the last step.
    k_levels      sparsity levels j_1 < ... < j_L = k of the hierarchical (multi-k) objective: the loss averages
                  ||x - x_hat_j||^2, x_hat_j decoding only the j largest activations (docs/method.md).
    """

    arch: str = "topk"
    n_latents: int = 512
    k: int | None = 8
    matryoshka: list[int] | None = None  # fixed nested prefix sizes, last == n_latents
    matryoshka_weights: list[float] | None = None  # per prefix; default equal
    matryoshka_random: int | None = None  # number of random prefixes sampled each step
    k_levels: list[int] | None = None  # hierarchical objective's sparsity levels, last == k
    k_level_weights: list[float] | None = None  # per level; default equal
    steps: int | None = None
    tokens: int | None = None
    batch_size: int = 4096
    lr: float | None = None
    warmup_steps: int | None = None
    decay_frac: float = 0.2
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float | None = 1.0
    aux_coef: float = 1 / 32
    k_aux: int | None = None
    dead_window: int | None = None
    l1_coef: float | None = None
    l1_warmup_steps: int | None = None
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    device: str = "cpu"
    dtype: str = "float32"
    normalize_input: bool = True
    init_sample: int = 16384  # rows used for the geometric median and the input scale
    buffer_bytes: int = 1 << 30  # shuffle buffer of the data stream
    heldout_rows: int = 4096
    heldout_every: int | None = None
    keep_checkpoint: bool = False  # False: a finished run deletes checkpoint/ (its SAE is saved); True keeps it for --resume

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ProgsaeError(f"unknown training settings {unknown}")
        d = dict(d)
        if "adam_betas" in d:
            d["adam_betas"] = tuple(d["adam_betas"])
        return cls(**d)

    def validate(self, require_length: bool = True) -> None:
        """Refuse settings that cannot train, with one line naming the setting.

        require_length=False checks everything but the run length (which may come from the store)."""
        from progsae.device import resolve_device

        resolve_device(self.device)
        if self.arch not in ARCHITECTURES:
            raise ProgsaeError(f"--arch must be one of {', '.join(ARCHITECTURES)}, got '{self.arch}'")
        if self.n_latents <= 0:
            raise ProgsaeError(f"--latents must be positive, got {self.n_latents}")
        if self.arch == "relu":
            if self.matryoshka or self.matryoshka_random:
                raise ProgsaeError("Matryoshka training needs --arch topk or batchtopk, not relu")
        elif self.k is None or not 0 < self.k <= self.n_latents:
            raise ProgsaeError(f"--k must be in 1..{self.n_latents} for {self.arch}, got {self.k}")
        if (self.steps is None) == (self.tokens is None) and (require_length or self.steps is not None):
            raise ProgsaeError("give exactly one of --steps or --tokens")
        if (self.steps is not None and self.steps <= 0) or (self.tokens is not None and self.tokens <= 0):
            raise ProgsaeError("--steps / --tokens must be positive")
        if self.batch_size <= 0:
            raise ProgsaeError(f"--batch-size must be positive, got {self.batch_size}")
        if self.buffer_bytes <= 0:
            raise ProgsaeError(f"the shuffle buffer must be positive (--shuffle-buffer-gb), got {self.buffer_bytes} bytes")
        if self.matryoshka and self.matryoshka_random:
            raise ProgsaeError("give either --matryoshka prefixes or --matryoshka-random, not both")
        if self.matryoshka:
            from progsae.sae.config import check_prefixes

            check_prefixes(list(self.matryoshka), self.n_latents)
            if self.matryoshka_weights is not None and len(self.matryoshka_weights) != len(self.matryoshka):
                raise ProgsaeError(
                    f"{len(self.matryoshka_weights)} Matryoshka weights for {len(self.matryoshka)} prefixes"
                )
            w = self.matryoshka_weights
            if w is not None and (not all(math.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0):
                raise ProgsaeError(f"--matryoshka-weights must be non-negative numbers, not all zero, got {list(w)}")
        elif self.matryoshka_weights is not None:
            raise ProgsaeError("Matryoshka weights given without --matryoshka prefixes")
        if self.k_aux is not None and self.k_aux <= 0:
            raise ProgsaeError(f"--k-aux must be a positive number of latents, got {self.k_aux}")
        if not self.aux_coef >= 0 or (self.l1_coef is not None and not self.l1_coef >= 0):
            raise ProgsaeError(f"--aux-coef and --l1-coef must be non-negative, got {self.aux_coef} and {self.l1_coef}")
        if (self.dead_window is not None and self.dead_window <= 0) or (self.warmup_steps is not None and self.warmup_steps < 0):
            raise ProgsaeError(f"--dead-window must be positive and --warmup-steps non-negative, got {self.dead_window} and {self.warmup_steps}")
        if self.matryoshka_random is not None and not 1 <= self.matryoshka_random <= self.n_latents:
            raise ProgsaeError(f"--matryoshka-random must be in 1..{self.n_latents}, got {self.matryoshka_random}")
        self._validate_k_levels()
        if self.lr is not None and not self.lr > 0:
            raise ProgsaeError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.decay_frac <= 1:
            raise ProgsaeError(f"decay_frac must be in [0, 1], got {self.decay_frac}")
        if self.checkpoint_every <= 0 or self.log_every <= 0:
            raise ProgsaeError("checkpoint_every and log_every must be positive")
        if self.heldout_rows < 0 or (self.heldout_every is not None and self.heldout_every <= 0):
            raise ProgsaeError("heldout_rows must be >= 0 and heldout_every positive")
        if self.dtype != "float32":
            raise ProgsaeError(f"only float32 training is supported, got dtype={self.dtype}")

    def _validate_k_levels(self) -> None:
        if self.k_levels is None:
            if self.k_level_weights is not None:
                raise ProgsaeError("--k-level-weights given without --k-levels")
            return
        if self.arch == "relu":
            raise ProgsaeError("--k-levels needs --arch topk or batchtopk, not relu")
        levels = list(self.k_levels)
        if not levels or any(int(j) <= 0 for j in levels) or any(b <= a for a, b in zip(levels, levels[1:])):
            raise ProgsaeError(f"--k-levels must be positive and strictly increasing, got {levels}")
        if levels[-1] != self.k:
            raise ProgsaeError(f"the last of --k-levels must equal --k {self.k}, got {levels}")
        if self.k_level_weights is not None:
            if len(self.k_level_weights) != len(levels):
                raise ProgsaeError(f"{len(self.k_level_weights)} --k-level-weights for {len(levels)} --k-levels")
            if any(w < 0 for w in self.k_level_weights) or not sum(self.k_level_weights) > 0:
                raise ProgsaeError(f"--k-level-weights must be non-negative with a positive sum, got {self.k_level_weights}")

    def total_steps(self) -> int:
        return self.steps if self.steps is not None else math.ceil(self.tokens / self.batch_size)

    def resolved(self, d_in: int) -> "TrainConfig":
        """A copy with every `None` default filled in for an input of width d_in."""
        self.validate()
        steps = self.total_steps()
        r = dataclasses.replace(self, steps=steps, tokens=None)
        if r.lr is None:
            r.lr = GAO_LR / math.sqrt(self.n_latents / GAO_LR_N)
        if r.warmup_steps is None:
            r.warmup_steps = min(1000, steps // 20)
        if r.k_aux is None:
            r.k_aux = max(1, d_in // 2)
        if r.dead_window is None:
            r.dead_window = min(DEFAULT_DEAD_WINDOW, max(self.batch_size, steps * self.batch_size // 10))
        if r.l1_coef is None:
            r.l1_coef = 1.0 if self.arch == "relu" else 0.0
        if r.l1_warmup_steps is None:
            r.l1_warmup_steps = steps // 20
        if r.heldout_every is None:
            r.heldout_every = max(1, steps // 20)
        if r.arch == "relu":
            r.k = None
        return r
