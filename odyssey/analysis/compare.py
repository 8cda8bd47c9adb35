"""Variant comparison: each variant against vanilla, per task, by two tests.

* ``welch`` (the paper's, Greff et al. 2017): Welch's t-test of the variant's test metric against
  the baseline's (``vanilla``), unequal variances (``scipy.stats.ttest_ind(equal_var=False)``), on
  ``all`` the trials that enter the comparison (see ``odyssey.analysis.rules``) and on ``top10``,
  the best 10 % of each group's trials ranked by the *validation* metric (at least one). Effect:
  the difference of means, variant - vanilla, with its 95 % Welch interval.
* ``wilcoxon_paired``: the study's paired design (:mod:`odyssey.analysis.pairing`): the signed-rank
  test of the paired differences of the test metric (:mod:`odyssey.analysis.paired`), on ``all``
  pairs and on ``top50``, the better half of the pairs ranked by the mean of the two trials'
  best validation metric (the fraction is ``ComparisonConfig.top_fraction``; the test metric never
  selects). Effect: the Hodges-Lehmann estimate of the difference with a seeded bootstrap
  interval, the median difference, and the pairs where the variant is worse.

Within each (task, subset, test) the p-values of the variants are Holm-corrected (``p_holm``); a
difference is significant when ``p_holm < alpha`` (0.05), and its direction says whether the
variant is better or worse than vanilla, respecting ``lower_is_better``. Every effect is variant
minus vanilla in the metric's units: positive is worse when lower is better.

Small samples: a Welch group with fewer than ``MIN_PER_GROUP`` (3) trials, or fewer than 3 pairs,
gets no p-value, only a note. With 2 trials a group's variance is estimated from a single
difference (1 degree of freedom), and Welch's degrees of freedom can fall to about 1, where the t
distribution has such heavy tails that the p-value hangs on one trial; the ``top10`` subset of a
search with fewer than 30 trials has fewer than 3 and is noted rather than tested. The exact
signed-rank test cannot reach p < 0.05 with fewer than 6 nonzero pairs (its smallest p is 2/2^n):
such rows say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from odyssey.analysis.paired import LEVEL, MIN_PAIRS, N_RESAMPLES, POWER, holm, min_exact_p, paired_test, pairs_needed
from odyssey.analysis.pairing import Pairing
from odyssey.errors import require

BASELINE = "vanilla"
WELCH, PAIRED = "welch", "wilcoxon_paired"
SUBSETS = ("all", "top10")  # the Welch rows' subsets
MIN_PER_GROUP = 3  # fewer trials in a group: no p-value (see the module docstring)
COLUMNS = [
    "task", "variant", "test", "subset", "metric", "lower_is_better", "n", "n_pairs", "mean", "median", "std",
    "params_count", "baseline_n", "baseline_mean", "statistic", "p_value", "p_holm", "significant", "direction",
    "effect", "effect_low", "effect_high", "median_diff", "worse_pairs", "pairs_needed", "note",
]  # fmt: skip


@dataclass(frozen=True)
class ComparisonConfig:
    """The analysis keys of the variant comparison (``odyssey analyze`` options of the same names).

    Attributes:
        alpha: family-wise significance level; a row is significant when ``p_holm < alpha``.
        top_fraction: the paired ``top`` subset: this fraction of the pairs, best first by the
            mean of the two trials' best validation metric (0.5: ``top50``).
        welch_top: the Welch ``top`` subset: this fraction of each group's trials (0.1: the
            paper's ``top10``).
        detectable_difference: the difference, in the metric's units, that ``pairs_needed``
            plans for (80 % power by default).
        power: the power of that plan.
        n_resamples: bootstrap resamples of the pairs. level: the intervals' coverage.
        seed: the bootstrap's seed.
        primary: the paired subset whose row gives the conclusion line: ``top`` or ``all``.
    """

    alpha: float = 0.05
    top_fraction: float = 0.5
    welch_top: float = 0.1
    detectable_difference: float = 0.1
    power: float = POWER
    n_resamples: int = N_RESAMPLES
    level: float = LEVEL
    seed: int = 0
    primary: str = "top"

    def __post_init__(self) -> None:
        require(0 < self.alpha < 1, "alpha", self.alpha, "a number in (0, 1)")
        require(0 < self.top_fraction <= 1, "top_fraction", self.top_fraction, "a fraction in (0, 1]")
        require(0 < self.welch_top <= 1, "welch_top", self.welch_top, "a fraction in (0, 1]")
        require(self.detectable_difference > 0, "detectable_difference", self.detectable_difference, "a number > 0 (metric units)")
        require(0 < self.power < 1, "power", self.power, "a number in (0, 1)")
        require(self.n_resamples >= 100, "n_resamples", self.n_resamples, "an integer >= 100")
        require(0 < self.level < 1, "level", self.level, "a number in (0, 1)")
        require(self.primary in ("top", "all"), "primary", self.primary, "top or all")

    @property
    def top_subset(self) -> str:
        """The paired top subset's name, e.g. ``top50``."""
        return f"top{round(100 * self.top_fraction)}"

    @property
    def welch_subsets(self) -> tuple[str, str]:
        return ("all", f"top{round(100 * self.welch_top)}")

    @property
    def primary_subset(self) -> str:
        return self.top_subset if self.primary == "top" else "all"

    def rules(self) -> list[str]:
        """The report's rules with these keys filled in (:func:`odyssey.analysis.rules.comparison_rules`)."""
        from odyssey.analysis.rules import comparison_rules

        keys = ("alpha", "top_fraction", "welch_top", "detectable_difference", "power", "n_resamples", "level", "seed")
        return comparison_rules(**{k: getattr(self, k) for k in keys}, primary_subset=self.primary_subset)


@dataclass(frozen=True)
class WelchResult:
    """Welch's t-test of ``a`` (variant) against ``b`` (baseline).

    Attributes:
        t: the t statistic (nan when untestable); p: the two-sided p-value (nan when untestable).
        significant: p < alpha. direction: "better", "worse" or "" (not significant).
        note: why the test was not done, or "".
        diff: mean(a) - mean(b). low, high: its Welch confidence interval (nan when untestable).
    """

    t: float
    p: float
    significant: bool
    direction: str
    note: str = ""
    diff: float = math.nan
    low: float = math.nan
    high: float = math.nan


def welch_test(
    a: np.ndarray,
    b: np.ndarray,
    *,
    lower_is_better: bool,
    alpha: float = 0.05,
    min_per_group: int = MIN_PER_GROUP,
    level: float = LEVEL,
) -> WelchResult:
    """Welch's two-sided t-test of sample ``a`` against sample ``b``.

    Args:
        a: the variant's values. b: the baseline's values.
        lower_is_better: how ``direction`` reads the difference of means.
        alpha: significance level.
        min_per_group: fewer values than this in either group gives no test (and a note).
        level: coverage of the interval of the difference of means.

    Returns:
        A WelchResult; untestable cases (too few values, both groups constant) carry nan and a
        note instead of a meaningless number.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < min_per_group or len(b) < min_per_group:
        return WelchResult(
            math.nan, math.nan, False, "",
            f"too few trials (n={len(a)} vs {len(b)}, need {min_per_group} per group): no p-value", diff,
        )  # fmt: skip
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return WelchResult(math.nan, math.nan, False, "", "both groups are constant: no variance", diff)
    res = stats.ttest_ind(a, b, equal_var=False)
    low, high = res.confidence_interval(confidence_level=level)
    significant = bool(res.pvalue < alpha)
    direction = _direction(diff, lower_is_better) if significant else ""
    return WelchResult(float(res.statistic), float(res.pvalue), significant, direction, "", diff, float(low), float(high))


def _direction(effect: float, lower_is_better: bool) -> str:
    """``worse`` or ``better`` for a difference variant - vanilla; "" for 0 or nan."""
    if not np.isfinite(effect) or effect == 0:
        return ""
    return "worse" if (effect > 0) == lower_is_better else "better"


def top_fraction(group: pd.DataFrame, *, by: str, lower_is_better: bool, fraction: float = 0.1) -> pd.DataFrame:
    """The best ``fraction`` of ``group``'s rows by column ``by`` (at least one row).

    Rows with a non-finite ``by`` are never selected.
    """
    valid = group[np.isfinite(group[by].to_numpy(dtype=float))]
    k = max(1, math.ceil(fraction * len(group)))
    return valid.sort_values(by, ascending=lower_is_better, kind="stable").head(k)


def top_pairs(pairs: pd.DataFrame, *, lower_is_better: bool, fraction: float) -> pd.DataFrame:
    """The best ``fraction`` of ``pairs`` (columns ``val``, ``val_base``) ranked by the mean of the
    two trials' best validation metric (at least one; none from no pairs)."""
    if pairs.empty:
        return pairs
    ranked = pairs.assign(_rank=(pairs["val"] + pairs["val_base"]) / 2)
    return top_fraction(ranked, by="_rank", lower_is_better=lower_is_better, fraction=fraction).drop(columns="_rank")


def _describe(values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return {"n": 0, "mean": math.nan, "median": math.nan, "std": math.nan}
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return {"n": len(values), "mean": float(values.mean()), "median": float(np.median(values)), "std": std}


def _apply_holm(rows: list[dict], alpha: float) -> None:
    """Holm over the variants of each (task, subset, test) family: ``p_holm``, ``significant``
    (``p_holm < alpha``) and ``direction`` (from the effect) of every row, in place."""
    families: dict[tuple, list[dict]] = {}
    for r in rows:
        families.setdefault((r["task"], r["subset"], r["test"]), []).append(r)
    for family in families.values():
        adjusted = holm(np.array([r["p_value"] for r in family], dtype=float))
        for r, ph in zip(family, adjusted):
            r["p_holm"] = float(ph)
            r["significant"] = bool(np.isfinite(ph) and ph < alpha)
            r["direction"] = _direction(r["effect"], r["lower_is_better"]) if r["significant"] else ""


def welch_table(
    trials: pd.DataFrame,
    *,
    baseline: str = BASELINE,
    alpha: float = 0.05,
    top: float = 0.1,
    min_per_group: int = MIN_PER_GROUP,
    level: float = LEVEL,
) -> pd.DataFrame:
    """Per task, each variant against ``baseline``, on all trials and on the best ``top``.

    Args:
        trials: one row per trial with columns ``task``, ``variant``, ``test``, ``val``,
            ``lower_is_better`` (bool), ``metric`` (name) and ``params_count``; only the rows
            that should enter the comparison (see ``odyssey.analysis.rules``).
        baseline: the variant every other one is compared with.
        alpha: family-wise significance level (Holm over the variants of a task and subset).
        top: fraction of best trials (by validation metric) for the ``top10`` subset.
        min_per_group: minimum trials per group for a test.
        level: coverage of the intervals of the differences of means.

    Returns:
        One row per (task, variant, subset), baseline rows included (with no test), ``COLUMNS``
        with ``test = "welch"``; ``params_count`` is the mean over the variant's trials (the
        paper's Fig. 3), ``effect`` the difference of means. Empty when no task has the baseline.
    """
    rows: list[dict] = []
    subsets = ("all", f"top{round(100 * top)}")
    for task, tdf in trials.groupby("task", sort=True):
        if baseline not in set(tdf["variant"]):
            continue
        lib = bool(tdf["lower_is_better"].iloc[0])
        metric = str(tdf["metric"].iloc[0])
        groups = {v: g for v, g in tdf.groupby("variant", sort=True)}
        order = [baseline] + sorted(v for v in groups if v != baseline)
        for subset in subsets:
            pick = {
                v: g if subset == "all" else top_fraction(g, by="val", lower_is_better=lib, fraction=top)
                for v, g in groups.items()
            }
            base = pick[baseline]["test"].to_numpy(dtype=float)
            bdesc = _describe(base)
            for v in order:
                vals = pick[v]["test"].to_numpy(dtype=float)
                desc = _describe(vals)
                pc = pd.to_numeric(groups[v]["params_count"], errors="coerce").mean()
                if v == baseline:
                    res = WelchResult(math.nan, math.nan, False, "", "baseline")
                else:
                    res = welch_test(vals, base, lower_is_better=lib, alpha=alpha, min_per_group=min_per_group, level=level)
                rows.append({
                    "task": task, "variant": v, "test": WELCH, "subset": subset, "metric": metric, "lower_is_better": lib,
                    **desc, "n_pairs": math.nan, "params_count": None if pd.isna(pc) else int(round(pc)),
                    "baseline_n": bdesc["n"], "baseline_mean": bdesc["mean"], "statistic": res.t, "p_value": res.p,
                    "effect": res.diff, "effect_low": res.low, "effect_high": res.high, "median_diff": math.nan,
                    "worse_pairs": math.nan, "pairs_needed": math.nan, "note": res.note,
                })  # fmt: skip
    _apply_holm(rows, alpha)
    return pd.DataFrame(rows, columns=COLUMNS)


def paired_table(
    trials: pd.DataFrame, pairing: Pairing, *, baseline: str = BASELINE, config: ComparisonConfig | None = None
) -> pd.DataFrame:
    """Per task, each variant's paired differences against ``baseline`` on ``all`` pairs and on
    the ``top`` fraction (``COLUMNS`` with ``test = "wilcoxon_paired"``; ``n`` = ``n_pairs``; mean,
    median and std describe the variant's test values in the pairs, baseline_mean vanilla's).

    Args:
        trials: the trials that enter the comparison (task, variant, metric, lower_is_better,
            params_count are read from them).
        pairing: :func:`odyssey.analysis.pairing.pair_trials` of the study.
        config: alpha, top fraction, bootstrap and planning keys.

    A refused (task, variant) (not sampled paired) gets rows without a p-value, its reason as the
    note. ``pairs_needed``: pairs of this subset that would detect ``detectable_difference`` with
    ``power`` at Holm's first-step level alpha / m (m: the variants compared).
    """
    cfg = config or ComparisonConfig()
    rows: list[dict] = []
    for task, tdf in trials.groupby("task", sort=True):
        if baseline not in set(tdf["variant"]):
            continue
        lib = bool(tdf["lower_is_better"].iloc[0])
        metric = str(tdf["metric"].iloc[0])
        variants = sorted(set(tdf["variant"]) - {baseline})
        level_for_plan = cfg.alpha / max(1, len(variants))
        for v in variants:
            pairs = pairing.of(task, v)
            pc = pd.to_numeric(tdf.loc[tdf["variant"] == v, "params_count"], errors="coerce").mean()
            for subset in ("all", cfg.top_subset):
                sel = pairs if subset == "all" else top_pairs(pairs, lower_is_better=lib, fraction=cfg.top_fraction)
                d = (sel["test"] - sel["test_base"]).to_numpy(dtype=float)
                res = paired_test(d, lower_is_better=lib, n_resamples=cfg.n_resamples, level=cfg.level, seed=cfg.seed, min_pairs=MIN_PAIRS)
                note = pairing.refused.get((task, v), "") or res.note
                nonzero = int(np.sum(d[np.isfinite(d)] != 0))
                if not note and min_exact_p(nonzero) >= cfg.alpha:
                    note = f"{nonzero} nonzero pairs: the signed-rank test cannot reach p < {cfg.alpha:g} (smallest p {min_exact_p(nonzero):.3g})"
                needed = pairs_needed(res.sigma, cfg.detectable_difference, alpha=level_for_plan, power=cfg.power)
                desc, bdesc = _describe(sel["test"].to_numpy(dtype=float)), _describe(sel["test_base"].to_numpy(dtype=float))
                rows.append({
                    "task": task, "variant": v, "test": PAIRED, "subset": subset, "metric": metric, "lower_is_better": lib,
                    **desc, "n": res.n, "n_pairs": res.n, "params_count": None if pd.isna(pc) else int(round(pc)),
                    "baseline_n": bdesc["n"], "baseline_mean": bdesc["mean"], "statistic": res.statistic, "p_value": res.p,
                    "effect": res.hl, "effect_low": res.low, "effect_high": res.high, "median_diff": res.median_diff,
                    "worse_pairs": res.worse, "pairs_needed": math.nan if needed is None else needed, "note": note,
                })  # fmt: skip
    _apply_holm(rows, cfg.alpha)
    return pd.DataFrame(rows, columns=COLUMNS)


def comparison_table(
    trials: pd.DataFrame,
    pairing: Pairing,
    *,
    baseline: str = BASELINE,
    config: ComparisonConfig | None = None,
    min_per_group: int = MIN_PER_GROUP,
) -> pd.DataFrame:
    """The whole comparison: :func:`welch_table` rows, then :func:`paired_table` rows; one row per
    (task, variant, subset, test), sorted by task, test (welch first) and subset."""
    cfg = config or ComparisonConfig()
    welch = welch_table(trials, baseline=baseline, alpha=cfg.alpha, top=cfg.welch_top, min_per_group=min_per_group, level=cfg.level)
    paired = paired_table(trials, pairing, baseline=baseline, config=cfg)
    frames = [t for t in (welch, paired) if not t.empty]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    table = pd.concat(frames, ignore_index=True)
    order = {WELCH: 0, PAIRED: 1}
    table["_t"] = table["test"].map(order)
    table = table.sort_values(["task", "_t"], kind="stable").drop(columns="_t").reset_index(drop=True)
    return table
