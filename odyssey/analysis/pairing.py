"""Pairs of trials: one hyperparameter sample run under vanilla and under a variant.

A seeded random search draws the same samples for every search of a study (``seed``), and trial
``i`` of every search trains with seed ``seed + i``: every variant's trial has a vanilla twin with
the same sampled values and the same trial seed. The pairs are found by those values (each
searched hyperparameter's config value, as its search's recorded space lists them, and the
``odyssey.seed`` tag), never by trial order, so a failed, interrupted or missing trial costs only
its own pair.

A pair enters the paired comparison when both its trials enter the variant comparison (completed
or diverged, :func:`odyssey.analysis.rules.ttest_mask`). A (task, variant) gets no pairs at all,
and a one-line reason, when its study was not sampled paired:

* a trial of it or of vanilla was drawn by a searcher other than random search (TPE proposes from
  each search's own history, so the samples differ per variant);
* its search and vanilla's recorded different search spaces;
* none of its trials shares its sampled values and seed with a vanilla trial (e.g. a different
  ``seed`` per variant).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from odyssey.analysis.rules import ttest_mask
from odyssey.analysis.space import AnalysisSpace

PAIRED_SEARCHES = ("random",)  # searchers that draw the same samples for every variant
PAIR_COLUMNS = [
    "task", "variant", "run_id", "run_id_base", "status", "status_base", "val", "val_base", "test", "test_base", "usable",
]  # fmt: skip
COUNT_COLUMNS = [
    "task", "variant", "trials", "baseline_trials", "with_partner", "baseline_with_partner", "no_partner",
    "baseline_no_partner", "pair_left_out", "pairs", "refused",
]  # fmt: skip


@dataclass
class Pairing:
    """The pairs of a study, per task, of each variant with the baseline.

    Attributes:
        pairs: one row per matched sample (``PAIR_COLUMNS``; ``*_base`` is the baseline's trial;
            ``usable``: both trials enter the comparison).
        counts: per (task, variant): its trials and the baseline's, how many of each found a
            partner, how many have none, matched pairs left out (a member failed, was interrupted,
            stopped early or is running), usable pairs, and the refusal reason ("" if paired).
        refused: per (task, variant), why it has no paired comparison.
    """

    pairs: pd.DataFrame
    counts: pd.DataFrame
    refused: dict[tuple[str, str], str] = field(default_factory=dict)

    def of(self, task: str, variant: str) -> pd.DataFrame:
        """The usable pairs of (task, variant)."""
        p = self.pairs
        return p[(p["task"] == task) & (p["variant"] == variant) & p["usable"]]


def _normal(value: object) -> object:
    """A sampled value as a matching key: numbers to 12 significant digits, text as is; None
    where missing."""
    if value is None:
        return None
    if isinstance(value, (int, float, np.floating, np.integer)):
        x = float(value)
        return float(f"{x:.12g}") if math.isfinite(x) else None
    return str(value)


def _keys(g: pd.DataFrame, space: AnalysisSpace) -> list[tuple | None]:
    """Per row: (seed, value of each hyperparameter in the space's order); None where a value is
    missing (a run without its params cannot be matched)."""
    paths = [h.path for h in space.hyperparameters]
    out: list[tuple | None] = []
    for _, row in g.iterrows():
        values = [_normal(row.get(p)) for p in paths]
        out.append(None if any(v is None for v in values) else (_normal(row.get("seed")), *values))
    return out


def _by_key(g: pd.DataFrame, space: AnalysisSpace) -> dict[tuple, pd.Series]:
    """Rows by matching key; of two runs of one sample (a study pooled from sweeps) the one that
    enters the comparison, else the earliest."""
    g = g.assign(_ok=ttest_mask(g)).sort_values(["_ok", "start_time"], ascending=[False, True], kind="stable")
    out: dict[tuple, pd.Series] = {}
    for key, (_, row) in zip(_keys(g, space), g.iterrows()):
        if key is not None and key not in out:
            out[key] = row
    return out


def _searchers(g: pd.DataFrame) -> set[str]:
    if "search" not in g.columns:
        return set()
    return {str(s) for s in g["search"] if isinstance(s, str) and s}


def _refusal(task: str, variant: str, baseline: str, g: pd.DataFrame, b: pd.DataFrame, spaces) -> str:
    other = sorted((_searchers(g) | _searchers(b)) - set(PAIRED_SEARCHES))
    if other:
        return (
            f"search {'/'.join(other)} draws each search's samples from its own history, so {variant} and "
            f"{baseline} were not sampled paired"
        )
    sv, sb = spaces.get((task, variant)), spaces.get((task, baseline))
    if sv is not None and sb is not None and not sv.same_as(sb):
        return f"the searches of {variant} and {baseline} recorded different search spaces"
    return ""


def _seed_start(g: pd.DataFrame) -> str:
    seeds = pd.to_numeric(g["seed"], errors="coerce").dropna() if "seed" in g.columns else pd.Series(dtype=float)
    return f"{int(seeds.min())}" if len(seeds) else "?"


def pair_trials(
    trials: pd.DataFrame, spaces: Mapping[tuple[str, str], AnalysisSpace], *, baseline: str = "vanilla"
) -> Pairing:
    """Match each variant's trials with the baseline's of the same task (see the module docstring).

    Args:
        trials: ``Study.trials`` (every status: a failed partner is counted, not ignored).
        spaces: ``Study.spaces``: which hyperparameters identify a sample; a search without one
            falls back on the paper's four.
        baseline: the variant every other one is paired with.
    """
    pairs: list[dict] = []
    counts: list[dict] = []
    refused: dict[tuple[str, str], str] = {}
    for task, tdf in trials.groupby("task", sort=True):
        if baseline not in set(tdf["variant"]):
            continue
        b = tdf[tdf["variant"] == baseline]
        for variant in sorted(set(tdf["variant"]) - {baseline}):
            g = tdf[tdf["variant"] == variant]
            space = spaces.get((task, variant)) or AnalysisSpace.fallback()
            reason = _refusal(task, variant, baseline, g, b, spaces)
            mine, theirs = ({}, {}) if reason else (_by_key(g, space), _by_key(b, space))
            common = [k for k in mine if k in theirs]
            if not reason and not common:
                reason = (
                    f"none of its {len(g)} trials shares its sampled values and seed with one of {baseline}'s {len(b)}, so "
                    f"the study was not sampled paired (trial seeds start at {_seed_start(g)} for {variant}, at "
                    f"{_seed_start(b)} for {baseline}: a different seed per variant?)"
                )
            if reason:
                refused[(task, variant)] = reason
                common = []
            left_out = 0
            for k in common:
                v, w = mine[k], theirs[k]
                usable = bool(ttest_mask(pd.DataFrame([v, w])).all())
                left_out += not usable
                pairs.append({
                    "task": task, "variant": variant, "run_id": v["run_id"], "run_id_base": w["run_id"],
                    "status": v["status"], "status_base": w["status"], "val": float(v["val"]), "val_base": float(w["val"]),
                    "test": float(v["test"]), "test_base": float(w["test"]), "usable": usable,
                })  # fmt: skip
            counts.append({
                "task": task, "variant": variant, "trials": len(g), "baseline_trials": len(b),
                "with_partner": len(common), "baseline_with_partner": len(common),
                "no_partner": len(g) - len(common), "baseline_no_partner": len(b) - len(common),
                "pair_left_out": left_out, "pairs": len(common) - left_out, "refused": reason,
            })  # fmt: skip
    return Pairing(pd.DataFrame(pairs, columns=PAIR_COLUMNS), pd.DataFrame(counts, columns=COUNT_COLUMNS), refused)
