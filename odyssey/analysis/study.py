"""Read a study's trials back from MLflow into one pandas DataFrame (one row per trial run).

The run schema is ``odyssey.tracking``'s: one experiment per study, one parent run per
(task, variant) search (tag ``odyssey.role=search``) and one child run per trial
(``odyssey.role=trial``). Each parent run records the search space it sampled from
(``search_space.json``); :mod:`odyssey.analysis.space` turns it into the hyperparameters of that
search's analysis (``Study.spaces``), or falls back on the paper's four for older studies.

Columns of ``Study.trials``: ``run_id, parent_run_id, task, variant, status, metric,
lower_is_better``, then for every searched hyperparameter of any search its config value under
the config path (``model.hidden_size``, ``train.lr``, ``train.batch_size``...: a float for
numeric ones, the logged text such as ``None`` or ``8`` for a categorical) and, after them, its
analysis coordinate (``log10_hidden_size``, ``log10_lr``, ``log10_one_minus_momentum``,
``input_noise``, ``batch_size``, ``clip_norm``...: log10 / log10(1 - x) / as is; a
categorical's index among its recorded choices), then ``val`` (``best_val/<m>``), ``test``
(``test/<m>``) for the primary metric ``m``, ``params_count``, ``budget_reached``
(True/False/None when the tag is absent), ``seed`` (the trial's, tag ``odyssey.seed``),
``search`` (the searcher that drew it, ``random`` or ``tpe``; None without the tag), ``epochs``, ``max_epochs`` (the budget,
param ``train.max_epochs``), ``start_time``, ``end_time`` (seconds since the epoch),
``machine_kind`` (tag ``odyssey.machine_kind``: device model, torch build, compiled loop).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from odyssey.analysis.errors import StudyNotFoundError
from odyssey.analysis.space import AnalysisSpace, union_columns
from odyssey.errors import ConfigError
from odyssey.run_schema import (
    METRIC_EPOCHS,
    ROLE_SEARCH,
    ROLE_TRIAL,
    TAG_BUDGET_REACHED,
    TAG_LOWER_IS_BETTER,
    TAG_MACHINE_KIND,
    TAG_PARAMS_COUNT,
    TAG_PRIMARY_METRIC,
    TAG_SEARCH,
    TAG_SEARCH_BUDGET,
    TAG_SEED,
    TAG_TASK,
    TAG_VARIANT,
    best_val_metric,
    check_store,
    default_tracking_uri,
    record_differences,
    status_of,
    test_metric,
)

PAGE_SIZE = 1000

@dataclass(frozen=True)
class Study:
    """A study read from MLflow.

    Attributes:
        name: the study (= MLflow experiment name). experiment_id: its id.
        tracking_uri: where it was read from.
        trials: one row per trial run (see the module docstring).
        searches: one row per parent search run: run_id, task, variant.
        spaces: per (task, variant), the hyperparameters its analysis covers (from the search's
            recorded space, else the paper's four: ``AnalysisSpace.recorded`` says which).
        notes: sentences about how the spaces were read (a record that could not be read).
        parent_spaces: per parent run id, its recorded space (None: no record).
    """

    name: str
    experiment_id: str
    tracking_uri: str
    trials: pd.DataFrame
    searches: pd.DataFrame
    spaces: dict[tuple[str, str], AnalysisSpace] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    parent_spaces: dict[str, AnalysisSpace | None] = field(default_factory=dict)

    def space(self, task: str, variant: str) -> AnalysisSpace:
        """The hyperparameters of search (task, variant); the fallback when it has none."""
        return self.spaces.get((task, variant)) or AnalysisSpace.fallback()


def _search_all(client, experiment_id: str, role: str) -> list:
    from odyssey.sweep.mlflow_runs import runs_with_role

    return runs_with_role(client, experiment_id, role, page_size=PAGE_SIZE)


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _bool(value: str | None) -> bool | None:
    if value is None:
        return None
    return value.strip().lower() in ("true", "1", "yes")


def _trial_row(run) -> dict:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    row = {
        "run_id": run.info.run_id,
        "parent_run_id": tags.get("mlflow.parentRunId"),
        "task": tags.get(TAG_TASK, "?"),
        "variant": tags.get(TAG_VARIANT, "?"),
        "status": status_of(tags, run.info.status),
        "metric": tags.get(TAG_PRIMARY_METRIC),
        "lower_is_better": _bool(tags.get(TAG_LOWER_IS_BETTER)),
        "params_count": _float(tags.get(TAG_PARAMS_COUNT)),
        "budget_reached": _bool(tags.get(TAG_BUDGET_REACHED)),
        "seed": _float(tags.get(TAG_SEED)),
        "search": tags.get(TAG_SEARCH),
        "epochs": _float(metrics.get(METRIC_EPOCHS)),
        "max_epochs": _float(params.get("train.max_epochs")),
        "start_time": (run.info.start_time or 0) / 1000.0,
        "end_time": (run.info.end_time or 0) / 1000.0,
        "machine_kind": tags.get(TAG_MACHINE_KIND),  # None for runs from before provenance tags
        "_metrics": metrics,
        "_params": params,
    }
    return row


def _fill_metric(rows: list[dict]) -> None:
    """Fill ``metric``/``lower_is_better`` where a run lacks the tags (from its task's runs),
    then pick ``val``/``test`` of that metric."""
    by_task: dict[str, Counter] = {}
    for r in rows:
        if r["metric"]:
            by_task.setdefault(r["task"], Counter())[(r["metric"], r["lower_is_better"])] += 1
    for r in rows:
        metrics = r.pop("_metrics")
        if not r["metric"]:
            common = by_task.get(r["task"])
            if common:
                r["metric"], r["lower_is_better"] = common.most_common(1)[0][0]
            else:
                tests = sorted(k[len("test/"):] for k in metrics if k.startswith("test/"))
                r["metric"] = tests[0] if tests else "?"
        if r["lower_is_better"] is None:
            r["lower_is_better"] = r["metric"] != "accuracy"
        r["val"] = _float(metrics.get(best_val_metric(r["metric"])))
        r["test"] = _float(metrics.get(test_metric(r["metric"])))


LEADING_COLUMNS = ["run_id", "parent_run_id", "task", "variant", "status", "metric", "lower_is_better"]
TRAILING_COLUMNS = [
    "val", "test", "params_count", "budget_reached", "seed", "search", "epochs", "max_epochs", "start_time", "end_time",
    "machine_kind",
]  # fmt: skip


def _read_spaces(uri: str, parents: list) -> tuple[dict[str, AnalysisSpace | None], list[str]]:
    """Per parent run id its recorded space (None without a record), and notes on records that
    could not be read."""
    out: dict[str, AnalysisSpace | None] = {}
    notes = []
    quiet = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ  # one bar per search otherwise
    if quiet:
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        for r in parents:
            out[r.info.run_id] = _read_space(uri, r, notes)
    finally:
        if quiet:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
    return out, notes


def _read_space(uri: str, run, notes: list[str]) -> AnalysisSpace | None:
    """One parent run's recorded space; None without a record or with one this version cannot
    read (e.g. a key it does not know: a note says so)."""
    from odyssey.sweep.mlflow_runs import recorded_search_space

    try:
        space = recorded_search_space(uri, run.info.run_id)
    except ConfigError as exc:
        search = f"{run.data.tags.get(TAG_TASK)}/{run.data.tags.get(TAG_VARIANT)}"
        notes.append(f"WARNING: search {search}: its recorded search space is unreadable ({exc}); analysed as a study without one")
        return None
    return AnalysisSpace.from_search_space(space) if space is not None else None


def _search_spaces(rows: list[dict], searches: pd.DataFrame, parent_spaces: dict) -> dict[tuple[str, str], AnalysisSpace]:
    """Per (task, variant): its parent runs' recorded space (the earliest recorded one where
    several parents disagree: ``mixed_sweeps`` flags it), else the fallback."""
    spaces: dict[tuple[str, str], AnalysisSpace] = {}
    for r in searches.itertuples(index=False):
        recorded = parent_spaces.get(r.run_id)
        if recorded is not None and (r.task, r.variant) not in spaces:
            spaces[(r.task, r.variant)] = recorded
    for r in rows:
        spaces.setdefault((r["task"], r["variant"]), AnalysisSpace.fallback())
    for r in searches.itertuples(index=False):
        spaces.setdefault((r.task, r.variant), AnalysisSpace.fallback())
    return spaces


def _fill_hyperparameters(rows: list[dict], spaces: dict[tuple[str, str], AnalysisSpace]) -> None:
    """Each row's searched values, by its search's space: config path and analysis coordinate."""
    for r in rows:
        params = r.pop("_params")
        for h in spaces[(r["task"], r["variant"])].hyperparameters:
            text = params.get(h.path)
            r[h.path] = h.value(text)
            r[h.name] = h.coordinate(text)


def load_study(name: str, *, tracking_uri: str | None = None) -> Study:
    """Read every trial of study ``name`` from MLflow.

    Args:
        name: the study, i.e. the MLflow experiment name.
        tracking_uri: MLflow tracking URI; default ``default_tracking_uri()``.

    Returns:
        The Study, with ``trials`` possibly empty (the caller decides what is too few).

    Raises:
        StudyNotFoundError: no store at the URI, or no experiment of that name (the message
            lists the experiments that exist).
        ServiceError: the tracking server cannot be reached.
    """
    from mlflow import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    check_store(uri, existing=True)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise StudyNotFoundError(
            f"no study named {name!r} at {uri}; available: {', '.join(names) or '(none)'}"
        )
    rows = [_trial_row(r) for r in _search_all(client, exp.experiment_id, ROLE_TRIAL)]
    _fill_metric(rows)
    parents = sorted(_search_all(client, exp.experiment_id, ROLE_SEARCH), key=lambda r: r.info.start_time or 0)
    searches = pd.DataFrame(
        [
            {"run_id": r.info.run_id, "task": r.data.tags.get(TAG_TASK), "variant": r.data.tags.get(TAG_VARIANT),
             "budget": r.data.tags.get(TAG_SEARCH_BUDGET)}
            for r in parents
        ],
        columns=["run_id", "task", "variant", "budget"],
    )  # fmt: skip
    parent_spaces, notes = _read_spaces(uri, parents)
    spaces = _search_spaces(rows, searches, parent_spaces)
    _fill_hyperparameters(rows, spaces)
    paths, names = union_columns([spaces[k] for k in sorted(spaces)])
    trials = pd.DataFrame(rows, columns=[*LEADING_COLUMNS, *paths, *[n for n in names if n not in paths], *TRAILING_COLUMNS])
    trials["params_count"] = trials["params_count"].astype(float)
    for n in names:
        trials[n] = trials[n].astype(float)
    trials = trials.sort_values(["task", "variant", "start_time"], kind="stable").reset_index(drop=True)
    return Study(name, exp.experiment_id, uri, trials, searches, spaces, tuple(notes), parent_spaces)


def mixed_sweeps(study: Study) -> list[str]:
    """What makes a study more than one sweep, one sentence each: a search with several parent
    runs (independent sweeps pooled into one sample), trials with different epoch budgets
    (within a search, or between the searches that the Welch test compares), or trials that ran
    on different kinds of machine (``odyssey.machine_kind``)."""
    problems = []
    parents = study.searches.groupby(["task", "variant"]).size()
    for (task, variant), n in parents.items():
        if n > 1:
            problems.append(f"search {task}/{variant} has {n} parent runs: trials of {n} separate sweeps would be pooled")
    for (task, variant), g in study.searches.groupby(["task", "variant"]):
        recorded = [s for s in (study.parent_spaces.get(r) for r in g["run_id"]) if s is not None]
        if any(not s.same_as(recorded[0]) for s in recorded[1:]):
            problems.append(
                f"search {task}/{variant}: its parent runs recorded different search spaces (the analysis uses the earliest)"
            )
    problems += _mixed_search_budgets(study.searches)
    budgets = study.trials.dropna(subset=["max_epochs"])
    for (task, variant), g in budgets.groupby(["task", "variant"]):
        counts = g["max_epochs"].astype(int).value_counts().sort_index()
        if len(counts) > 1:
            shown = ", ".join(f"{b} ({n} trials)" for b, n in counts.items())
            problems.append(f"search {task}/{variant} mixes epoch budgets (train.max_epochs {shown})")
    for task, g in budgets.groupby("task"):
        per_search = g.groupby("variant")["max_epochs"].agg(lambda b: tuple(sorted(set(b.astype(int)))))
        if per_search.nunique() > 1:
            shown = ", ".join(f"{v}: {'/'.join(map(str, b))}" for v, b in per_search.items())
            problems.append(f"task {task}: the variants were trained with different epoch budgets ({shown})")
    kinds = study.trials["machine_kind"].dropna().value_counts() if "machine_kind" in study.trials else []
    if len(kinds) > 1:  # the same trial gives other numbers there: a rerun may not match
        shown = "; ".join(f"{k!r} ({n} trials)" for k, n in kinds.items())
        problems.append(f"its trials ran on {len(kinds)} kinds of machine ({shown}): their numbers are not bitwise comparable")
    return problems


def _mixed_search_budgets(searches: pd.DataFrame) -> list[str]:
    """Searches of one task whose recorded budgets (the task's identity, model, protocol, space,
    searcher, seed: ``odyssey.search_budget``) differ from the first's, naming each difference.
    Searches recorded before that tag are not compared."""
    import json

    problems = []
    recorded = searches.dropna(subset=["budget"]) if "budget" in searches else searches.iloc[0:0]
    for task, g in recorded.groupby("task"):
        first = g.iloc[0]
        reference = json.loads(first["budget"])
        for _, other in g.iloc[1:].iterrows():
            diff = record_differences(reference, json.loads(other["budget"]))
            if diff:
                shown = "; ".join(d.replace(" recorded, ", f" ({first['variant']}) vs ").replace(" now", f" ({other['variant']})") for d in diff)
                problems.append(f"task {task}: searches {first['variant']} and {other['variant']} ran different budgets ({shown})")
    return problems

