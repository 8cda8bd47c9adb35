"""Statistics of the paired variant comparison: the signed-rank test on paired differences, its
effect size with a bootstrap interval, Holm's correction and the pairs a test would need.

Every function takes plain arrays; :mod:`odyssey.analysis.pairing` makes the pairs and
:mod:`odyssey.analysis.compare` the table. Notation: ``d_i = y_i(variant) - y_i(vanilla)`` for pair
``i = 1..n`` (the test metric of one hyperparameter sample run under both), so a positive
difference is a higher metric under the variant: worse when lower is better.

* Test: Wilcoxon's signed-rank test of ``median(d) = 0``, two-sided, ``scipy.stats.wilcoxon`` with
  its defaults (zero differences dropped, ``zero_method="wilcox"``; ties get average ranks; the
  exact null distribution where scipy uses it, i.e. small n without zeros or ties).
* Effect: the Hodges-Lehmann estimate ``HL = median{(d_i + d_j) / 2 : i <= j}`` (the median of the
  n(n+1)/2 Walsh averages: the shift the signed-rank test estimates), with a percentile bootstrap
  interval: ``B`` resamples of the pairs (with replacement, seeded), HL of each, the
  ``(1 - level)/2`` and ``(1 + level)/2`` quantiles.
* Holm: for m p-values sorted ``p_(1) <= ... <= p_(m)``,
  ``p_holm_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))``; rejecting ``p_holm < alpha`` controls the
  family-wise error rate at alpha (Holm 1979).
* Pairs needed: a paired t-test at level ``a`` and power ``1 - b`` needs
  ``n_t = ((z_{1-a/2} + z_{1-b}) sigma / delta)^2 + z_{1-a/2}^2 / 2`` pairs (normal approximation
  plus Guenther's small-sample term) to detect a shift ``delta`` of differences with spread
  ``sigma``; the signed-rank test needs ``n_t / ARE`` with its asymptotic relative efficiency
  ``ARE = 3 / pi`` (0.955) for normal differences; and never fewer than the smallest ``n`` whose
  exact two-sided p-value can fall below ``a`` (``2 / 2^n < a``). ``sigma`` is estimated robustly,
  ``1.4826 * MAD(d)`` (the sample standard deviation where the MAD is 0): a rank test is not
  moved by one diverged pair, and neither should its planning be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "PairedResult",
    "bootstrap_interval",
    "hodges_lehmann",
    "holm",
    "min_exact_p",
    "pairs_needed",
    "paired_test",
    "robust_sigma",
]

N_RESAMPLES = 10_000
LEVEL = 0.95
POWER = 0.8
ARE_SIGNED_RANK = 3 / math.pi  # efficiency of the signed-rank test relative to the t-test, normal data
MAD_TO_SIGMA = 1.4826  # 1 / Phi^{-1}(3/4): the MAD of a normal sample estimates 0.6745 sigma
MIN_PAIRS = 3  # fewer pairs: no p-value (the exact test cannot go below 2/2^n = 0.25)


def hodges_lehmann(d: np.ndarray) -> float:
    """The Hodges-Lehmann estimate of the shift of paired differences ``d`` (n,): the median of
    the Walsh averages ``(d_i + d_j) / 2`` over ``i <= j``; nan for no differences."""
    d = np.asarray(d, dtype=float)
    if d.size == 0:
        return math.nan
    i, j = np.triu_indices(d.size)
    return float(np.median((d[i] + d[j]) / 2))


def bootstrap_interval(
    d: np.ndarray, *, n_resamples: int = N_RESAMPLES, level: float = LEVEL, seed: int = 0, chunk: int = 500
) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`hodges_lehmann` over resamples of the pairs.

    Args:
        d: (n,) paired differences. n_resamples: B. level: coverage (0.95). seed: the numpy
            Generator's seed (the same data and seed give the same interval).
        chunk: resamples per vectorised step, bounding memory at ``chunk * n (n + 1) / 2`` floats.

    Returns:
        (low, high); (nan, nan) for fewer than 2 differences.
    """
    d = np.asarray(d, dtype=float)
    n = d.size
    if n < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    i, j = np.triu_indices(n)
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        x = d[rng.integers(0, n, size=(b, n))]  # (b, n) resampled pairs
        out[start : start + b] = np.median((x[:, i] + x[:, j]) / 2, axis=1)  # (b,) HL per resample
    tail = (1 - level) / 2
    low, high = np.quantile(out, [tail, 1 - tail])
    return float(low), float(high)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as ``p``); nan entries stay nan and do not
    count in m.

    Example:
        >>> holm(np.array([0.01, 0.04, 0.03, 0.005])).round(3).tolist()
        [0.03, 0.06, 0.06, 0.02]
    """
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]  # (m - j + 1) p_(j), j = 1..m
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def robust_sigma(d: np.ndarray) -> float:
    """``1.4826 * median|d - median(d)|``; the sample standard deviation where that is 0."""
    d = np.asarray(d, dtype=float)
    if d.size < 2:
        return math.nan
    mad = MAD_TO_SIGMA * float(np.median(np.abs(d - np.median(d))))
    return mad if mad > 0 else float(np.std(d, ddof=1))


def min_exact_p(n: int) -> float:
    """The smallest two-sided p-value of the exact signed-rank test on n nonzero pairs, 2 / 2^n."""
    return min(1.0, 2.0 / 2.0**n)


def pairs_needed(sigma: float, delta: float, *, alpha: float = 0.05, power: float = POWER) -> int | None:
    """Pairs the signed-rank test needs to detect a shift ``delta`` at level ``alpha`` with
    ``power`` when the differences spread by ``sigma`` (formula in the module docstring); None
    where sigma is unknown (nan)."""
    if not (math.isfinite(sigma) and delta > 0):
        return None
    floor = 1
    while min_exact_p(floor) >= alpha:
        floor += 1
    za, zb = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    n_t = ((za + zb) * sigma / delta) ** 2 + za**2 / 2
    return max(floor, math.ceil(n_t / ARE_SIGNED_RANK))


@dataclass(frozen=True)
class PairedResult:
    """The signed-rank test of one variant's paired differences against vanilla.

    Attributes:
        n: pairs. statistic: scipy's W (nan when untestable). p: two-sided p-value.
        median_diff: median of d. hl: Hodges-Lehmann estimate. low, high: its bootstrap interval.
        worse: pairs where the variant is worse than vanilla. better: where it is better.
        sigma: robust spread of d (see :func:`robust_sigma`). note: why there is no p-value, or "".
    """

    n: int
    statistic: float
    p: float
    median_diff: float
    hl: float
    low: float
    high: float
    worse: int
    better: int
    sigma: float
    note: str = ""


def paired_test(
    d: np.ndarray,
    *,
    lower_is_better: bool,
    n_resamples: int = N_RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
    min_pairs: int = MIN_PAIRS,
) -> PairedResult:
    """Wilcoxon's signed-rank test of differences ``d`` (n,) = variant - vanilla, with the effect
    and its bootstrap interval (see the module docstring).

    Non-finite differences are dropped (a diverged trial enters with the finite worst value the
    trainer recorded, so its pair stays). Fewer than ``min_pairs`` pairs, or differences that are
    all 0, give no p-value and a note.
    """
    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d)]
    n = int(d.size)
    worse = int(np.sum(d > 0) if lower_is_better else np.sum(d < 0))
    better = int(np.sum(d < 0) if lower_is_better else np.sum(d > 0))
    median = float(np.median(d)) if n else math.nan
    hl = hodges_lehmann(d)
    low, high = bootstrap_interval(d, n_resamples=n_resamples, level=level, seed=seed)
    sigma = robust_sigma(d)
    common = dict(n=n, median_diff=median, hl=hl, low=low, high=high, worse=worse, better=better, sigma=sigma)
    if n < min_pairs:
        return PairedResult(statistic=math.nan, p=math.nan, note=f"too few pairs (n={n}, need {min_pairs}): no p-value", **common)
    if not np.any(d != 0):
        return PairedResult(statistic=math.nan, p=math.nan, note="every pair has the same value under both: no difference to test", **common)
    res = stats.wilcoxon(d)
    return PairedResult(statistic=float(res.statistic), p=float(res.pvalue), **common)
