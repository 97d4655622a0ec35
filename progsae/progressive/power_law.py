"""Power-law analysis of sorted latent importance: I_(r) ≈ C · r^(−α).

Three views of the same sorted values, all over one range of live ranks [lo, hi] (`fit_range`):
- least squares of log I vs log r on log-binned ranks: the ranks lo..hi are cut into equal-width bins
  in log10(rank) (`bins_per_decade`, default 10), each non-empty bin becomes one point (mean log r,
  mean log I of its ranks, i.e. the geometric means) and every point weighs 1, so each decade of rank
  counts the same (a fit over the integer ranks would be ~90% tail). It gives α, intercept and R² of
  the binned points, and a seeded bootstrap confidence interval for α (latents resampled with
  replacement, sorted, refit the same way on the same range);
- a maximum-likelihood fit with the `powerlaw` package (Alstott et al.) on exactly the values whose
  ranks lie in [lo, hi]: `powerlaw.Fit` with xmin = I_(hi) and xmax = I_(lo) treats them as a
  continuous sample with density p(x) ∝ x^(−γ) on [xmin, xmax], and `Fit.distribution_compare` gives
  normalised log-likelihood ratios R (R > 0 favours the power law) with p-values against log-normal and
  exponential, truncated to the same interval. A rank law I_(r) ∝ r^(−α) is the same law as
  γ = 1 + 1/α, so the record reports both;
- the cumulative share Σ_{r≤G} I_(r) / Σ I as a function of the size G.

Verdict (`PowerLawFit.supported`, a key of `to_dict()`): the power law is supported when all hold
  (a) the log-binned least-squares R² >= `min_r2` (default 0.9);
  (b) the likelihood-ratio fit ran and no alternative is significantly better over the same range,
      i.e. no comparison has p < `significance` and R < 0 (those alternatives are `rejected_for`);
  (c) the exponent does not bend: the log-binned slopes of the head half and the tail half of the fit
      range (halves in log-rank, `local_alpha`) differ by at most `max_bend` · α (default 0.2; `bend`).
Otherwise it is not supported; `r2`, `rejected_for` and `bend` say why. Clause (c) is there because (a)
and (b) pass a broken power law: R² of a kinked line stays high (0.98 for exponent 0.5 up to rank 300,
then 2.0, over ranks 100–9000), and in value space such a kink is a narrow band of values that a
log-normal fits worse than a power law, so the likelihood ratios favour the power law.
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
GAMMA_RANGE = {"alpha": [1.0 + 1e-6, 50.0]}  # powerlaw rejects γ = 1 exactly


@dataclass
class PowerLawSettings:
    """Choices of the fit (**defaults** ours: the paper does not state them)."""

    fit_lo: float = 0.01  # the fit range starts at this fraction of the live ranks (skips the few head latents)
    fit_hi: float = 0.9  # ... and ends here (skips the near-dead tail); LS and MLE both use it
    bins_per_decade: int = 10  # LS points: equal-width bins in log10(rank), each bin one point of weight 1
    n_boot: int = 200
    ci_level: float = 0.95
    seed: int = 0
    significance: float = 0.05  # p-value below which a likelihood-ratio comparison picks a side
    min_r2: float = 0.9  # log-binned LS R² needed for `supported`
    max_bend: float = 0.2  # largest |α_tail − α_head| / α (slopes of the two log-rank halves) for `supported`

    def validate(self) -> None:
        if not (0.0 <= self.fit_lo < self.fit_hi <= 1.0):
            raise ProgsaeError(f"fit range must satisfy 0 <= fit_lo < fit_hi <= 1, got ({self.fit_lo}, {self.fit_hi})")
        if self.n_boot < 0 or not (0.0 < self.ci_level < 1.0):
            raise ProgsaeError(f"bootstrap needs n_boot >= 0 and 0 < ci_level < 1, got {self.n_boot}, {self.ci_level}")
        if self.bins_per_decade < 1:
            raise ProgsaeError(f"bins_per_decade must be >= 1, got {self.bins_per_decade}")
        if not (0.0 < self.significance < 1.0) or not (self.min_r2 <= 1.0) or not (self.max_bend >= 0.0):
            raise ProgsaeError(f"need 0 < significance < 1, min_r2 <= 1 and max_bend >= 0, got "
                               f"{self.significance}, {self.min_r2}, {self.max_bend}")


@dataclass
class Comparison:
    """Normalised log-likelihood ratio of the power law against one alternative (R > 0 favours the power law)."""

    R: float
    p: float
    preferred: str  # "power_law", the alternative's name, or "inconclusive" (p >= significance)


@dataclass
class MLEFit:
    gamma: float  # density exponent p(x) ∝ x^(−γ) of the importance values on [xmin, xmax]
    alpha_rank: float  # the implied rank exponent 1/(γ − 1)
    sigma: float  # standard error of γ
    xmin: float  # I at the last rank of the fit range
    xmax: float  # I at the first rank of the fit range
    n_tail: int  # values in [xmin, xmax] used by the fit (= hi − lo + 1)
    comparisons: dict[str, Comparison]


@dataclass
class PowerLawFit:
    """Everything `fit_power_law` measures; `to_dict()` is its JSON form."""

    alpha: float  # log-binned least-squares rank exponent
    intercept: float  # log C (natural log)
    r2: float  # R² of the log-binned points
    fit_range: tuple[int, int]  # first and last rank (1-based, inclusive) of both the LS and the MLE fit
    n_live: int
    n_total: int
    alpha_ci: tuple[float, float]
    mle: MLEFit | None
    cumulative_share: list[float]  # entry G-1 = share of total importance in the top G latents
    size_for_share: dict[str, int]  # smallest G reaching 50%, 90%, 99% of the total
    settings: PowerLawSettings = field(default_factory=PowerLawSettings)
    mle_error: str | None = None
    n_bins: int = 0  # non-empty log-rank bins behind the LS fit
    local_alpha: tuple[float, float] = (float("nan"), float("nan"))  # LS slope on the head and tail half (log-rank)

    @property
    def bend(self) -> float:
        """(α_tail − α_head) / α: > 0 when the law steepens along the range (log-normal, broken power law); NaN if unmeasured."""
        head, tail = self.local_alpha
        return (tail - head) / self.alpha if self.alpha > 0 else float("nan")

    @property
    def rejected_for(self) -> list[str]:
        """Alternatives significantly better than the power law (p < significance and R < 0) over the fit range."""
        if self.mle is None:
            return []
        return [name for name, c in self.mle.comparisons.items() if c.preferred == name]

    @property
    def supported(self) -> bool:
        """The module's verdict (rule in the module docstring): R² >= min_r2, no alternative significantly
        better in the LR tests (which must have run), and |bend| <= max_bend."""
        s = self.settings
        return bool(self.r2 >= s.min_r2 and self.mle is not None and not self.rejected_for and abs(self.bend) <= s.max_bend)

    def predicted(self, ranks) -> np.ndarray:
        """The LS fit C · r^(−α) at the given ranks."""
        return np.exp(self.intercept) * np.asarray(ranks, dtype=np.float64) ** (-self.alpha)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fit_range"] = list(self.fit_range)
        d["alpha_ci"] = list(self.alpha_ci)
        d["rejected_for"] = self.rejected_for
        d["local_alpha"] = list(self.local_alpha)
        d["bend"] = self.bend
        d["supported"] = self.supported
        return _json_safe(d)


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
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
    """1-based inclusive ranks [lo, hi] of the LS and MLE fits."""
    lo = max(1, int(math.ceil(settings.fit_lo * n_live)))
    hi = min(n_live, max(lo + 2, int(math.floor(settings.fit_hi * n_live))))
    return lo, hi


def log_rank_bins(lo: int, hi: int, bins_per_decade: int) -> np.ndarray:
    """Bin index of each rank lo..hi: equal-width bins in log10(rank), ~bins_per_decade per decade."""
    span = math.log10(hi) - math.log10(lo)
    n_bins = max(2, int(round(span * bins_per_decade)))  # >= 2 bins, so ranks lo and hi never share one
    edges = np.linspace(math.log10(lo), math.log10(hi), n_bins + 1)
    idx = np.searchsorted(edges, np.log10(np.arange(lo, hi + 1, dtype=np.float64)), side="right") - 1
    return np.clip(idx, 0, n_bins - 1)  # rank hi sits on the last edge: put it in the last bin


def binned_points(sorted_desc: np.ndarray, lo: int, hi: int, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean log r, mean log I) of each non-empty bin: geometric means, so an exact power law stays on its line."""
    counts = np.bincount(bins)
    keep = counts > 0
    x = np.bincount(bins, np.log(np.arange(lo, hi + 1, dtype=np.float64)))[keep] / counts[keep]
    y = np.bincount(bins, np.log(sorted_desc[lo - 1 : hi]))[keep] / counts[keep]
    return x, y


def least_squares(sorted_desc: np.ndarray, lo: int, hi: int, bins: np.ndarray) -> tuple[float, float, float, int]:
    """(α, intercept, R², n_points) of log I vs log r on the log-rank bins of ranks lo..hi, each bin weight 1."""
    x, y = binned_points(sorted_desc, lo, hi, bins)
    if x.size < 2:
        raise ProgsaeError(f"fit range {lo}–{hi} gives {x.size} log-rank bin(s): too few for a line")
    slope, intercept = np.polyfit(x, y, 1)
    ss_res = float(np.sum((y - (slope * x + intercept)) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return float(-slope), float(intercept), r2, int(x.size)


def local_alphas(sorted_desc: np.ndarray, lo: int, hi: int, bins: np.ndarray) -> tuple[float, float]:
    """LS slopes (as α) of the binned points in the lower and upper half of [log lo, log hi]; NaN for a half with < 2 points."""
    x, y = binned_points(sorted_desc, lo, hi, bins)
    mid = (math.log(lo) + math.log(hi)) / 2
    halves = (x <= mid, x > mid)
    return tuple(float(-np.polyfit(x[h], y[h], 1)[0]) if h.sum() >= 2 else float("nan") for h in halves)  # type: ignore[return-value]


def bootstrap_alpha(sorted_desc: np.ndarray, lo: int, hi: int, bins: np.ndarray, settings: PowerLawSettings) -> tuple[float, float]:
    """Percentile interval of the log-binned LS α over latents resampled with replacement (seeded, same range and bins)."""
    if settings.n_boot == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(settings.seed)
    n = sorted_desc.size
    alphas = np.empty(settings.n_boot)
    for b in range(settings.n_boot):
        sample = np.sort(sorted_desc[rng.integers(0, n, n)])[::-1]
        alphas[b] = least_squares(sample, lo, hi, bins)[0]
    tail = (1 - settings.ci_level) / 2
    q_lo, q_hi = np.quantile(alphas, [tail, 1 - tail])
    return float(q_lo), float(q_hi)


def mle_fit(sorted_desc: np.ndarray, lo: int, hi: int, significance: float) -> MLEFit:
    """powerlaw.Fit (continuous) on the values of ranks lo..hi, cut by xmin = I_(hi) and xmax = I_(lo),
    with likelihood-ratio comparisons to the alternatives on that same interval."""
    import powerlaw

    values = sorted_desc[lo - 1 : hi]
    xmin, xmax = float(values[-1]), float(values[0])
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        fit = powerlaw.Fit(values, xmin=xmin, xmax=xmax, discrete=False, verbose=False, parameter_ranges=GAMMA_RANGE)
        # powerlaw 2.0 takes the closed-form (untruncated) estimate of γ when it lands in (1.5, 3], ignoring
        # xmax; force the numerical fit of the truncated likelihood so the comparisons see the real MLE.
        fit.power_law = powerlaw.Power_Law(data=values, xmin=xmin, xmax=xmax, discrete=False, force_numerical_fit=True,
                                           parameter_ranges=GAMMA_RANGE, parent_Fit=fit, verbose=False)
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
        xmax=float(fit.xmax),
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
    bins = log_rank_bins(lo, hi, settings.bins_per_decade)
    alpha, intercept, r2, n_bins = least_squares(live, lo, hi, bins)
    ci = bootstrap_alpha(live, lo, hi, bins, settings)
    local = local_alphas(live, lo, hi, bins)
    mle, mle_error = None, None
    try:
        mle = mle_fit(live, lo, hi, settings.significance)
    except Exception as e:  # the ML fit is a secondary view; keep the LS results if it fails
        mle_error = f"{type(e).__name__}: {e}"
    share = cumulative_share(values)
    sizes = {f"{lvl:g}": int(np.searchsorted(share, lvl - 1e-12) + 1) for lvl in SHARE_LEVELS}
    return PowerLawFit(alpha, intercept, r2, (lo, hi), int(live.size), int(n_total), ci, mle, share.tolist(), sizes, settings, mle_error, n_bins, local)
