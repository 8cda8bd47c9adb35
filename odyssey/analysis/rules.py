"""Which trials enter which analysis. These rules are stated in every report (``RULES``).

* Variant comparison (Welch t-test, box plots): trials with status ``completed`` or
  ``diverged``. A diverged trial enters with the worst value the trainer recorded for it: how
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
    "Variant comparison (Welch t-test, p < 0.05, and box plots): trials that completed or "
    "diverged; a diverged trial enters with the worst value the trainer recorded for it "
    "(divergence is part of a variant's performance over the search space). The 'top10' "
    "subset is the best 10% of each group's trials by validation metric.",
    "fANOVA: only completed trials that ran their full budget and have a value for every searched "
    "hyperparameter; diverged trials are left out (their constant worst value would dominate the "
    "variance) and counted.",
    "Trials stopped early by the scheduler, failed trials, interrupted trials (resume the sweep "
    "to finish them) and trials still running are left out of both analyses and counted.",
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
