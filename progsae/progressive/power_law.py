"""Power-law analysis of sorted latent importance: I_(r) ≈ C · r^(−α).

Three views of the same sorted values:
- least squares of log I vs log r over a range of live ranks (α, intercept, R²) with a seeded
  bootstrap confidence interval for α (latents resampled with replacement, refit on the same range);
- a maximum-likelihood fit with the `powerlaw` package (Alstott et al.): `powerlaw.Fit` treats the
  importance values as a continuous sample x with density p(x) ∝ x^(−γ) for x ≥ xmin, and
  `Fit.distribution_compare` gives normalised log-likelihood ratios against log-normal and exponential.
  A rank law I_(r) ∝ r^(−α) is the same law as γ = 1 + 1/α, so the record reports both;
- the cumulative share Σ_{r≤G} I_(r) / Σ I as a function of the size G.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from progsae.errors import ProgsaeError

ALTERNATIVES = ("lognormal", "exponential")
SHARE_LEVELS = (0.5, 0.9, 0.99)


@dataclass
class PowerLawSettings:
    """Choices of the fit (**defaults** ours: the paper does not state them)."""

    fit_lo: float = 0.01  # LS fit starts at this fraction of the live ranks (skips the few head latents)
    fit_hi: float = 0.9  # ... and ends here (skips the near-dead tail)
    xmin: str | float = "fit"  # MLE cutoff: "fit" = importance at the last rank of the LS range, "auto" = powerlaw's KS search, or a value
    n_boot: int = 200
    ci_level: float = 0.95
    seed: int = 0
    significance: float = 0.05  # p-value below which a likelihood-ratio comparison picks a side

    def validate(self) -> None:
        if not (0.0 <= self.fit_lo < self.fit_hi <= 1.0):
            raise ProgsaeError(f"fit range must satisfy 0 <= fit_lo < fit_hi <= 1, got ({self.fit_lo}, {self.fit_hi})")
        if self.n_boot < 0 or not (0.0 < self.ci_level < 1.0):
            raise ProgsaeError(f"bootstrap needs n_boot >= 0 and 0 < ci_level < 1, got {self.n_boot}, {self.ci_level}")
        if not (self.xmin in ("fit", "auto") or isinstance(self.xmin, (int, float))):
            raise ProgsaeError(f"xmin must be 'fit', 'auto' or a number, got {self.xmin!r}")


@dataclass
class Comparison:
    """Normalised log-likelihood ratio of the power law against one alternative (R > 0 favours the power law)."""

    R: float
    p: float
    preferred: str  # "power_law", the alternative's name, or "inconclusive" (p >= significance)


@dataclass
class MLEFit:
    gamma: float  # density exponent p(x) ∝ x^(−γ) of the importance values
    alpha_rank: float  # the implied rank exponent 1/(γ − 1)
    sigma: float  # standard error of γ
    xmin: float
    n_tail: int  # values >= xmin used by the fit
    comparisons: dict[str, Comparison]


@dataclass
class PowerLawFit:
    """Everything `fit_power_law` measures; `to_dict()` is its JSON form."""

    alpha: float  # least-squares rank exponent
    intercept: float  # log C (natural log)
    r2: float
    fit_range: tuple[int, int]  # first and last rank (1-based, inclusive) of the LS fit
    n_live: int
    n_total: int
    alpha_ci: tuple[float, float]
    mle: MLEFit | None
    cumulative_share: list[float]  # entry G-1 = share of total importance in the top G latents
    size_for_share: dict[str, int]  # smallest G reaching 50%, 90%, 99% of the total
    settings: PowerLawSettings = field(default_factory=PowerLawSettings)
    mle_error: str | None = None

    @property
    def rejected_for(self) -> list[str]:
        """Alternatives the likelihood ratio significantly prefers over the power law."""
        if self.mle is None:
            return []
        return [name for name, c in self.mle.comparisons.items() if c.preferred == name]

    def predicted(self, ranks) -> np.ndarray:
        """The LS fit C · r^(−α) at the given ranks."""
        return np.exp(self.intercept) * np.asarray(ranks, dtype=np.float64) ** (-self.alpha)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fit_range"] = list(self.fit_range)
        d["alpha_ci"] = list(self.alpha_ci)
        d["rejected_for"] = self.rejected_for
        return _json_safe(d)


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def sorted_live(values) -> tuple[np.ndarray, int]:
    """Values sorted descending with non-positive (dead) ones dropped, and the total count."""
    v = np.asarray(values.cpu() if hasattr(values, "cpu") else values, dtype=np.float64).ravel()
    if not np.isfinite(v).all():
        raise ProgsaeError("importance values contain NaN or inf")
    return np.sort(v[v > 0])[::-1], v.size


def fit_range(n_live: int, settings: PowerLawSettings) -> tuple[int, int]:
    """1-based inclusive ranks [lo, hi] of the least-squares fit."""
    lo = max(1, int(math.ceil(settings.fit_lo * n_live)))
    hi = min(n_live, max(lo + 2, int(math.floor(settings.fit_hi * n_live))))
    return lo, hi


def least_squares(sorted_desc: np.ndarray, lo: int, hi: int) -> tuple[float, float, float]:
    """(α, intercept, R²) of log I vs log r over ranks lo..hi."""
    r = np.arange(lo, hi + 1, dtype=np.float64)
    x, y = np.log(r), np.log(sorted_desc[lo - 1 : hi])
    slope, intercept = np.polyfit(x, y, 1)
    ss_res = float(np.sum((y - (slope * x + intercept)) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return float(-slope), float(intercept), r2


def bootstrap_alpha(sorted_desc: np.ndarray, settings: PowerLawSettings) -> tuple[float, float]:
    """Percentile interval of the LS α over latents resampled with replacement (seeded)."""
    if settings.n_boot == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(settings.seed)
    n = sorted_desc.size
    lo, hi = fit_range(n, settings)
    alphas = np.empty(settings.n_boot)
    for b in range(settings.n_boot):
        sample = np.sort(sorted_desc[rng.integers(0, n, n)])[::-1]
        alphas[b] = least_squares(sample, lo, hi)[0]
    tail = (1 - settings.ci_level) / 2
    q_lo, q_hi = np.quantile(alphas, [tail, 1 - tail])
    return float(q_lo), float(q_hi)


def mle_fit(sorted_desc: np.ndarray, xmin: float | None, significance: float) -> MLEFit:
    """powerlaw.Fit on the values (continuous) with likelihood-ratio comparisons to the alternatives."""
    import powerlaw

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        fit = powerlaw.Fit(sorted_desc, xmin=xmin, discrete=False, verbose=False, parameter_ranges={"alpha": [1.0, 50.0]})
        gamma = float(fit.power_law.alpha)
        comparisons = {}
        for alt in ALTERNATIVES:
            R, p = fit.distribution_compare("power_law", alt, normalized_ratio=True)
            R, p = float(R), float(p)
            preferred = "inconclusive"
            if math.isfinite(R) and math.isfinite(p) and p < significance:
                preferred = "power_law" if R > 0 else alt
            comparisons[alt] = Comparison(R, p, preferred)
    return MLEFit(
        gamma=gamma,
        alpha_rank=1.0 / (gamma - 1.0) if gamma > 1.0 else float("inf"),
        sigma=float(fit.power_law.standard_err),
        xmin=float(fit.xmin),
        n_tail=int(fit.n_tail),
        comparisons=comparisons,
    )


def cumulative_share(values) -> np.ndarray:
    """Σ_{r≤G} I_(r) / Σ I for G = 1..n (all latents, dead ones add nothing)."""
    v = np.sort(np.clip(np.asarray(values.cpu() if hasattr(values, "cpu") else values, dtype=np.float64).ravel(), 0, None))[::-1]
    total = v.sum()
    if total <= 0:
        raise ProgsaeError("all importance values are zero (every latent is dead)")
    return np.cumsum(v) / total


def fit_power_law(values, settings: PowerLawSettings | None = None, **overrides) -> PowerLawFit:
    """Fit I_(r) ≈ C · r^(−α) to importance values (any order; dead latents are excluded from the fits).

    Keyword overrides set PowerLawSettings fields, e.g. `fit_power_law(v, fit_lo=0.0, n_boot=0)`.
    """
    settings = settings or PowerLawSettings()
    if overrides:
        settings = PowerLawSettings(**{**asdict(settings), **overrides})
    settings.validate()
    live, n_total = sorted_live(values)
    if live.size < 5:
        raise ProgsaeError(f"only {live.size} live latents (importance > 0): too few to fit a power law")
    lo, hi = fit_range(live.size, settings)
    alpha, intercept, r2 = least_squares(live, lo, hi)
    ci = bootstrap_alpha(live, settings)
    xmin = {"fit": float(live[hi - 1]), "auto": None}.get(settings.xmin, settings.xmin)  # type: ignore[arg-type]
    mle, mle_error = None, None
    try:
        mle = mle_fit(live, xmin, settings.significance)
    except Exception as e:  # the ML fit is a secondary view; keep the LS results if it fails
        mle_error = f"{type(e).__name__}: {e}"
    share = cumulative_share(values)
    sizes = {f"{lvl:g}": int(np.searchsorted(share, lvl - 1e-12) + 1) for lvl in SHARE_LEVELS}
    return PowerLawFit(alpha, intercept, r2, (lo, hi), int(live.size), int(n_total), ci, mle, share.tolist(), sizes, settings, mle_error)
