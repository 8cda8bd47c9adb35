"""Which trials enter which analysis. These rules are stated in every report (``RULES``).

* Variant comparison (Welch t-test, paired test, box plots): trials with status ``completed``
  or ``diverged``. A diverged trial enters with the worst value the trainer recorded for it: how
  often a variant diverges over the search space is part of how good it is, and dropping those
  trials would flatter unstable variants. Diverged trials without a recorded test value are
  left out and counted.
* fANOVA: only ``completed`` trials that ran their full budget (``odyssey.budget_reached`` not
  "false"; trials without the tag count as full) and have a value for every hyperparameter of
  their search's space (a choice outside the recorded ones counts as none). Diverged trials are left out and counted:
  their constant worst value would make the forest model where training diverges rather than
  how the metric depends on the hyperparameters.
* Trials stopped early by the scheduler (``stopped_early``), ``failed``, ``interrupted`` (the
  sweep was stopped; ``resume=true`` finishes them) and still ``running`` trials are left out
  of both and counted.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from odyssey.analysis.space import AnalysisSpace
from odyssey.tracking import (
    ALL_STATUSES,
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    STATUS_FAILED,
    STATUS_INTERRUPTED,
    STATUS_RUNNING,
    STATUS_STOPPED,
)

RULES = [
    "Variant comparison (box plots, Welch t-tests, paired tests): trials that completed or "
    "diverged; a diverged trial enters with the worst value the trainer recorded for it "
    "(divergence is part of a variant's performance over the search space, and a variant that "
    "blows up loses its pairs). The Welch 'top10' subset is the best 10% of each group's trials "
    "by validation metric.",
    "fANOVA: only completed trials that ran their full budget and have a value for every searched "
    "hyperparameter; diverged trials are left out (their constant worst value would dominate the "
    "variance) and counted.",
    "Trials stopped early by the scheduler, failed trials, interrupted trials (resume the sweep "
    "to finish them) and trials still running are left out of both analyses and counted.",
]


def comparison_rules(
    *, alpha: float, top_fraction: float, welch_top: float, detectable_difference: float, power: float,
    n_resamples: int, level: float, seed: int, primary_subset: str,
) -> list[str]:  # fmt: skip
    """The rules of the variant comparison with the analysis' keys filled in (the report's Rules
    section states them; ``odyssey.analysis.compare.ComparisonConfig`` holds the keys)."""
    top = f"top{round(100 * top_fraction)}"
    return [
        RULES[0].replace("top10", f"top{round(100 * welch_top)}").replace("best 10%", f"best {welch_top:.0%}"),
        "Pairs: a variant's trial and a vanilla trial of the same task with the same sampled value of "
        "every searched hyperparameter (per the search's recorded space) and the same trial seed, "
        "matched by those values, not by trial order; a pair enters when both its trials enter the "
        "comparison. A study not sampled paired (a searcher other than random search, different "
        "recorded spaces, or no shared samples, e.g. a different seed per variant) gets no paired "
        "test, only the Welch test.",
        f"Paired test, subsets declared before looking: Wilcoxon signed-rank on the pairs' differences "
        f"of the test metric (variant - vanilla), two-sided, scipy's defaults, on 'all' pairs and on "
        f"'{top}', the better {top_fraction:.0%} of the pairs ranked by the mean of the two trials' best "
        f"validation metric (the test metric never selects). Effect: the Hodges-Lehmann estimate with "
        f"a {level:.0%} bootstrap interval ({n_resamples} resamples of the pairs, seed {seed}), the "
        f"median difference and the pairs where the variant is worse. The conclusion follows the "
        f"'{primary_subset}' row; Welch on all trials where there is no paired test.",
        f"Multiple comparisons: within each (task, subset, test), Holm's correction over the variants "
        f"compared with vanilla; significant means p_holm < {alpha:g}. Pairs needed: from the "
        f"differences' robust spread (1.4826 MAD), the pairs that would detect a difference of "
        f"{detectable_difference:g} (metric units) with {power:.0%} power at level alpha/m.",
        *RULES[1:],
    ]


def ttest_mask(trials: pd.DataFrame) -> pd.Series:
    """Rows that enter the variant comparison."""
    ok = trials["status"].isin([STATUS_COMPLETED, STATUS_DIVERGED])
    return ok & np.isfinite(trials["test"].astype(float))


def fanova_mask(trials: pd.DataFrame, spaces: Mapping[tuple[str, str], AnalysisSpace] | None = None) -> pd.Series:
    """Rows that enter the fANOVA fit; with ``spaces`` (per (task, variant), as ``Study.spaces``)
    only rows with a finite coordinate for each hyperparameter of their search's space."""
    full = trials["budget_reached"].map(lambda b: b is not False)
    finite = pd.Series(np.isfinite(trials["test"].astype(float)), index=trials.index)
    for (task, variant), space in (spaces or {}).items():
        sel = (trials["task"] == task) & (trials["variant"] == variant)
        if not sel.any():
            continue
        cols = [c for c in space.names if c in trials.columns]
        ok = np.isfinite(trials.loc[sel, cols].astype(float)).all(axis=1) if len(cols) == len(space.names) else False
        finite[sel] = finite[sel] & ok
    return (trials["status"] == STATUS_COMPLETED) & full & finite


def count_table(trials: pd.DataFrame, spaces: Mapping[tuple[str, str], AnalysisSpace] | None = None) -> pd.DataFrame:
    """Per (task, variant): trials by status and how many enter each analysis."""
    t = trials.assign(_tt=ttest_mask(trials), _fa=fanova_mask(trials, spaces))
    t["_cut"] = (t["status"] == STATUS_COMPLETED) & t["budget_reached"].map(lambda b: b is False)
    rows = []
    for (task, variant), g in t.groupby(["task", "variant"], sort=True):
        st = g["status"]
        rows.append(
            {
                "task": task,
                "variant": variant,
                "trials": len(g),
                "completed": int((st == STATUS_COMPLETED).sum()),
                "completed_short_budget": int(g["_cut"].sum()),
                "stopped_early": int((st == STATUS_STOPPED).sum()),
                "diverged": int((st == STATUS_DIVERGED).sum()),
                "failed": int((st == STATUS_FAILED).sum()),
                "interrupted": int((st == STATUS_INTERRUPTED).sum()),
                "running": int((st == STATUS_RUNNING).sum()),
                "other": int((~st.isin(ALL_STATUSES)).sum()),
                "in_ttest": int(g["_tt"].sum()),
                "in_fanova": int(g["_fa"].sum()),
            }
        )
    return pd.DataFrame(rows)
