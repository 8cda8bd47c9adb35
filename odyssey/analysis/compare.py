"""Variant comparison, as in Greff et al. (2017): Welch's t-test of each variant against vanilla.

Per task, each variant's test metric is compared with the baseline's (``vanilla``) by Welch's
t-test (unequal variances, ``scipy.stats.ttest_ind(equal_var=False)``), on two subsets:

* ``all``: every trial that enters the comparison (see ``odyssey.analysis.rules``);
* ``top10``: the best 10 % of each group's trials, ranked by the *validation* metric (so the
  selection does not peek at the test metric), at least one trial.

A difference is significant when p < ``alpha`` (0.05); its direction says whether the variant's
mean is better or worse than the baseline's, respecting ``lower_is_better``.

Small samples: a group with fewer than ``MIN_PER_GROUP`` (3) trials gets no p-value, only a note.
With 2 trials a group's variance is estimated from a single difference (1 degree of freedom),
and Welch's degrees of freedom can fall to about 1, where the t distribution has such heavy
tails that the p-value hangs on one trial; the ``top10`` subset of a search with fewer than 30
trials has fewer than 3 and is noted rather than tested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

BASELINE = "vanilla"
SUBSETS = ("all", "top10")
MIN_PER_GROUP = 3  # fewer trials in a group: no p-value (see the module docstring)


@dataclass(frozen=True)
class WelchResult:
    """Welch's t-test of ``a`` (variant) against ``b`` (baseline).

    Attributes:
        t: the t statistic (nan when untestable); p: the two-sided p-value (nan when untestable).
        significant: p < alpha. direction: "better", "worse" or "" (not significant).
        note: why the test was not done, or "".
    """

    t: float
    p: float
    significant: bool
    direction: str
    note: str = ""


def welch_test(
    a: np.ndarray,
    b: np.ndarray,
    *,
    lower_is_better: bool,
    alpha: float = 0.05,
    min_per_group: int = MIN_PER_GROUP,
) -> WelchResult:
    """Welch's two-sided t-test of sample ``a`` against sample ``b``.

    Args:
        a: the variant's values. b: the baseline's values.
        lower_is_better: how ``direction`` reads the difference of means.
        alpha: significance level.
        min_per_group: fewer values than this in either group gives no test (and a note).

    Returns:
        A WelchResult; untestable cases (too few values, both groups constant) carry nan and a
        note instead of a meaningless number.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < min_per_group or len(b) < min_per_group:
        return WelchResult(
            math.nan, math.nan, False, "",
            f"too few trials (n={len(a)} vs {len(b)}, need {min_per_group} per group): no p-value",
        )
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return WelchResult(math.nan, math.nan, False, "", "both groups are constant: no variance")
    t, p = stats.ttest_ind(a, b, equal_var=False)
    significant = bool(p < alpha)
    better = (a.mean() < b.mean()) if lower_is_better else (a.mean() > b.mean())
    direction = ("better" if better else "worse") if significant else ""
    return WelchResult(float(t), float(p), significant, direction)


def top_fraction(group: pd.DataFrame, *, by: str, lower_is_better: bool, fraction: float = 0.1) -> pd.DataFrame:
    """The best ``fraction`` of ``group``'s rows by column ``by`` (at least one row).

    Rows with a non-finite ``by`` are never selected.
    """
    valid = group[np.isfinite(group[by].to_numpy(dtype=float))]
    k = max(1, math.ceil(fraction * len(group)))
    return valid.sort_values(by, ascending=lower_is_better, kind="stable").head(k)


def _describe(values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return {"n": 0, "mean": math.nan, "median": math.nan, "std": math.nan}
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return {"n": len(values), "mean": float(values.mean()), "median": float(np.median(values)), "std": std}


def welch_table(
    trials: pd.DataFrame,
    *,
    baseline: str = BASELINE,
    alpha: float = 0.05,
    top: float = 0.1,
    min_per_group: int = MIN_PER_GROUP,
) -> pd.DataFrame:
    """Per task, each variant against ``baseline``, on all trials and on the best ``top``.

    Args:
        trials: one row per trial with columns ``task``, ``variant``, ``test``, ``val``,
            ``lower_is_better`` (bool), ``metric`` (name) and ``params_count``; only the rows
            that should enter the comparison (see ``odyssey.analysis.rules``).
        baseline: the variant every other one is compared with.
        alpha: significance level.
        top: fraction of best trials (by validation metric) for the ``top10`` subset.
        min_per_group: minimum trials per group for a test.

    Returns:
        One row per (task, variant, subset), baseline rows included (with no test), columns:
        task, variant, subset, metric, lower_is_better, n, mean, median, std, params_count,
        baseline_n, baseline_mean, p_value, t, significant, direction, note. Empty when no task
        has the baseline.
    """
    rows: list[dict] = []
    for task, tdf in trials.groupby("task", sort=True):
        if baseline not in set(tdf["variant"]):
            continue
        lib = bool(tdf["lower_is_better"].iloc[0])
        metric = str(tdf["metric"].iloc[0])
        groups = {v: g for v, g in tdf.groupby("variant", sort=True)}
        order = [baseline] + sorted(v for v in groups if v != baseline)
        for subset in SUBSETS:
            pick = {
                v: g if subset == "all" else top_fraction(g, by="val", lower_is_better=lib, fraction=top)
                for v, g in groups.items()
            }
            base = pick[baseline]["test"].to_numpy(dtype=float)
            bdesc = _describe(base)
            for v in order:
                vals = pick[v]["test"].to_numpy(dtype=float)
                desc = _describe(vals)
                pc = pd.to_numeric(groups[v]["params_count"], errors="coerce").median()
                if v == baseline:
                    res = WelchResult(math.nan, math.nan, False, "", "baseline")
                else:
                    res = welch_test(vals, base, lower_is_better=lib, alpha=alpha, min_per_group=min_per_group)
                rows.append(
                    {
                        "task": task,
                        "variant": v,
                        "subset": subset,
                        "metric": metric,
                        "lower_is_better": lib,
                        **desc,
                        "params_count": None if pd.isna(pc) else int(pc),
                        "baseline_n": bdesc["n"],
                        "baseline_mean": bdesc["mean"],
                        "p_value": res.p,
                        "t": res.t,
                        "significant": res.significant,
                        "direction": res.direction,
                        "note": res.note,
                    }
                )
    columns = [
        "task", "variant", "subset", "metric", "lower_is_better", "n", "mean", "median", "std",
        "params_count", "baseline_n", "baseline_mean", "p_value", "t", "significant", "direction", "note",
    ]
    return pd.DataFrame(rows, columns=columns)
