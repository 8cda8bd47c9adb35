"""The comparison in sentences: one conclusion line per variant and task, and the caption that
names each task's metric and direction. Both read the rows of ``comparison.csv``
(:func:`odyssey.analysis.compare.comparison_table`) and compute nothing new.

The paired test decides (the design the service runs); its subset is
``ComparisonConfig.primary_subset`` (``top50`` by default), with the other paired subset added in
brief. Where a task was not sampled paired, or a pair test is impossible, the line says so and
the paper's Welch test on all trials speaks instead. Examples::

    nfg: worse than vanilla on jsb (paired, top50: +0.33 nll [0.21, 0.45], worse in 12/12 pairs, p_holm 0.003; all 24 pairs: worse, p_holm 0.001)
    cifg: no difference detected on jsb (paired, top50: +0.02 nll [-0.11, 0.15], worse in 7/12 pairs, p_holm 0.6; the interval excludes differences above 0.15; about 40 pairs (80 trials per variant) would detect 0.1 nll with 80% power)
"""

from __future__ import annotations

import math

import pandas as pd

from odyssey.analysis.compare import BASELINE, PAIRED, WELCH, ComparisonConfig


def _num(x: float, signed: bool = False) -> str:
    return "nan" if not math.isfinite(x) else (f"{x:+.3g}" if signed else f"{x:.3g}")


def _p(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.2g}"


def _verdict(row) -> str:
    return f"{row.direction} than {BASELINE}" if row.significant else "no difference detected"


def _interval(row) -> str:
    if not (math.isfinite(row.effect_low) and math.isfinite(row.effect_high)):
        return ""
    return f" [{_num(row.effect_low)}, {_num(row.effect_high)}]"


def _bound(row) -> str:
    """What a non-significant interval rules out: differences beyond its farther end."""
    if not (math.isfinite(row.effect_low) and math.isfinite(row.effect_high)):
        return ""
    return f"; the interval excludes differences above {max(abs(row.effect_low), abs(row.effect_high)):.2g}"


def _plan(row, cfg: ComparisonConfig) -> str:
    """How many pairs (and trials per variant) would detect the configured difference."""
    if not math.isfinite(row.pairs_needed):
        return ""
    n = int(row.pairs_needed)
    per_variant = n if row.subset == "all" else math.ceil(n / cfg.top_fraction)
    trials = f" ({per_variant} trials per variant)" if row.subset != "all" else ""
    return (
        f"; about {n} pairs{trials} would detect {cfg.detectable_difference:g} {row.metric} with "
        f"{cfg.power:.0%} power (have {int(row.n_pairs)})"
    )


def paired_line(row, cfg: ComparisonConfig, other=None) -> str:
    """The conclusion of one paired row (``other``: the other paired subset's row, in brief)."""
    if not math.isfinite(row.p_value):
        return f"{row.variant}: no conclusion on {row.task} (paired, {row.subset}: {row.note})"
    text = (
        f"{row.variant}: {_verdict(row)} on {row.task} (paired, {row.subset}: {_num(row.effect, True)} {row.metric}{_interval(row)}, "
        f"worse in {int(row.worse_pairs)}/{int(row.n_pairs)} pairs, p_holm {_p(row.p_holm)}"
    )
    if not row.significant:
        text += _bound(row) + _plan(row, cfg)
    if other is not None and math.isfinite(other.p_value):
        verdict = other.direction if other.significant else "no difference"
        text += f"; {other.subset} {int(other.n_pairs)} pairs: {verdict}, p_holm {_p(other.p_holm)}"
    return text + ")"


def welch_line(row, why: str) -> str:
    """The conclusion of a Welch row, where no paired test speaks (``why``)."""
    if not math.isfinite(row.p_value):
        return f"{row.variant}: no conclusion on {row.task} (Welch, {row.subset}: {row.note}; {why})"
    text = (
        f"{row.variant}: {_verdict(row)} on {row.task} (Welch, {row.subset}: {_num(row.effect, True)} {row.metric}"
        f"{_interval(row)}, n {int(row.n)} vs {int(row.baseline_n)}, p_holm {_p(row.p_holm)}"
    )
    if not row.significant:
        text += _bound(row)
    return text + f"; {why})"


def conclusion_lines(comparison: pd.DataFrame, cfg: ComparisonConfig | None = None, refused: dict | None = None) -> list[str]:
    """One line per (task, variant) compared with vanilla, in table order (see the module docstring).

    Args:
        comparison: the comparison table. cfg: its keys. refused: per (task, variant) why it has no
            paired test (:attr:`odyssey.analysis.pairing.Pairing.refused`).
    """
    cfg = cfg or ComparisonConfig()
    refused = refused or {}
    if comparison.empty:
        return []
    lines = []
    rows = comparison[comparison["variant"] != BASELINE]
    for (task, variant), g in rows.groupby(["task", "variant"], sort=False):
        paired = {r.subset: r for r in g[g["test"] == PAIRED].itertuples(index=False)}
        welch = {r.subset: r for r in g[g["test"] == WELCH].itertuples(index=False)}
        main, other_subset = cfg.primary_subset, ("all" if cfg.primary == "top" else cfg.top_subset)
        if (task, variant) in refused or main not in paired:
            if "all" in welch:
                lines.append(welch_line(welch["all"], "not sampled paired: no paired test, see Notes"))
            continue
        lines.append(paired_line(paired[main], cfg, paired.get(other_subset)))
    return lines


def metric_caption(comparison: pd.DataFrame) -> str:
    """Each task's metric and direction, and how effects read, for the tables' headings."""
    if comparison.empty:
        return ""
    tasks = comparison.drop_duplicates("task")
    per_task = "; ".join(
        f"{r.task}: test {r.metric}, {'lower' if r.lower_is_better else 'higher'} is better "
        f"(an effect > 0 means the variant is {'worse' if r.lower_is_better else 'better'})"
        for r in tasks.itertuples(index=False)
    )
    return f"{per_task}. Effects are variant - vanilla in the metric's units."
