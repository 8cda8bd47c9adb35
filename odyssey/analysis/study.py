"""Read a study's trials back from MLflow into one pandas DataFrame (one row per trial run).

The run schema is ``odyssey.tracking``'s: one experiment per study, one parent run per
(task, variant) search (tag ``odyssey.role=search``) and one child run per trial
(``odyssey.role=trial``). Columns of ``Study.trials``:

``run_id, parent_run_id, task, variant, status, metric, lower_is_better, hidden_size, lr,
momentum, input_noise`` (paper units, floats), the analysis coordinates ``log10_lr,
log10_hidden_size, log10_one_minus_momentum`` (and ``input_noise``), ``val`` (``best_val/<m>``),
``test`` (``test/<m>``) for the primary metric ``m``, ``params_count``, ``budget_reached``
(True/False/None when the tag is absent), ``seed``, ``epochs``, ``max_epochs`` (the budget,
param ``train.max_epochs``), ``start_time``, ``end_time`` (seconds since the epoch).
"""

from __future__ import annotations

import math
import os
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from odyssey.analysis.errors import StudyNotFoundError
from odyssey.errors import ServiceError
from odyssey.tracking import (
    SEARCHED_PARAMS,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_RUNNING,
    TAG_BUDGET_REACHED,
    TAG_LOWER_IS_BETTER,
    TAG_PARAMS_COUNT,
    TAG_PRIMARY_METRIC,
    TAG_ROLE,
    TAG_SEED,
    TAG_STATUS,
    TAG_TASK,
    TAG_VARIANT,
)

ROLE_TRIAL = "trial"
ROLE_SEARCH = "search"
ROLE_ANALYSIS = "analysis"
PAGE_SIZE = 1000

# Analysis coordinates (the paper's): column name -> axis label.
COORDINATES: dict[str, str] = {
    "log10_lr": "log10(learning rate)",
    "log10_hidden_size": "log10(hidden size)",
    "log10_one_minus_momentum": "log10(1 - momentum)",
    "input_noise": "input noise std",
}


@dataclass(frozen=True)
class Study:
    """A study read from MLflow.

    Attributes:
        name: the study (= MLflow experiment name). experiment_id: its id.
        tracking_uri: where it was read from.
        trials: one row per trial run (see the module docstring).
        searches: one row per parent search run: run_id, task, variant.
    """

    name: str
    experiment_id: str
    tracking_uri: str
    trials: pd.DataFrame
    searches: pd.DataFrame


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite file ``mlruns.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlruns.db'}"


def _check_store(tracking_uri: str) -> None:
    """Fail fast, with one clear message, on a missing SQLite file or an unreachable server."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        if not path.is_file():
            raise StudyNotFoundError(f"no MLflow tracking store at {path} (tracking URI {tracking_uri})")
    elif tracking_uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=5) as resp:
                resp.read()
        except OSError as exc:
            raise ServiceError(f"MLflow tracking server {tracking_uri} unreachable: {exc}") from None


def _search_all(client, experiment_id: str, role: str) -> list:
    """Every run with ``odyssey.role = role``, page by page (thousands of runs work)."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids=[experiment_id],
            filter_string=f"tags.`{TAG_ROLE}` = '{role}'",
            max_results=PAGE_SIZE,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _log10(value: float) -> float:
    return math.log10(value) if value > 0 else math.nan


def _bool(value: str | None) -> bool | None:
    if value is None:
        return None
    return value.strip().lower() in ("true", "1", "yes")


def _status(tags: dict, mlflow_status: str) -> str:
    """The odyssey status tag; without one, derived from the MLflow run status."""
    if TAG_STATUS in tags:
        return tags[TAG_STATUS]
    if mlflow_status in ("RUNNING", "SCHEDULED"):
        return STATUS_RUNNING
    if mlflow_status in ("FAILED", "KILLED"):
        return STATUS_FAILED
    return STATUS_COMPLETED


def _trial_row(run) -> dict:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    row = {
        "run_id": run.info.run_id,
        "parent_run_id": tags.get("mlflow.parentRunId"),
        "task": tags.get(TAG_TASK, "?"),
        "variant": tags.get(TAG_VARIANT, "?"),
        "status": _status(tags, run.info.status),
        "metric": tags.get(TAG_PRIMARY_METRIC),
        "lower_is_better": _bool(tags.get(TAG_LOWER_IS_BETTER)),
        **{p: _float(params.get(p)) for p in SEARCHED_PARAMS},
        "params_count": _float(tags.get(TAG_PARAMS_COUNT)),
        "budget_reached": _bool(tags.get(TAG_BUDGET_REACHED)),
        "seed": _float(tags.get(TAG_SEED)),
        "epochs": _float(metrics.get("epochs")),
        "max_epochs": _float(params.get("train.max_epochs")),
        "start_time": (run.info.start_time or 0) / 1000.0,
        "end_time": (run.info.end_time or 0) / 1000.0,
        "_metrics": metrics,
    }
    row["log10_lr"] = _log10(row["lr"])
    row["log10_hidden_size"] = _log10(row["hidden_size"])
    row["log10_one_minus_momentum"] = _log10(1.0 - row["momentum"])
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
        r["val"] = _float(metrics.get(f"best_val/{r['metric']}"))
        r["test"] = _float(metrics.get(f"test/{r['metric']}"))


TRIAL_COLUMNS = [
    "run_id", "parent_run_id", "task", "variant", "status", "metric", "lower_is_better",
    *SEARCHED_PARAMS, *[c for c in COORDINATES if c not in SEARCHED_PARAMS], "val", "test",
    "params_count", "budget_reached", "seed", "epochs", "max_epochs", "start_time", "end_time",
]


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
    _check_store(uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise StudyNotFoundError(
            f"no study named {name!r} at {uri}; available: {', '.join(names) or '(none)'}"
        )
    rows = [_trial_row(r) for r in _search_all(client, exp.experiment_id, ROLE_TRIAL)]
    _fill_metric(rows)
    trials = pd.DataFrame(rows, columns=TRIAL_COLUMNS)
    trials["params_count"] = trials["params_count"].astype(float)
    searches = pd.DataFrame(
        [
            {"run_id": r.info.run_id, "task": r.data.tags.get(TAG_TASK), "variant": r.data.tags.get(TAG_VARIANT)}
            for r in _search_all(client, exp.experiment_id, ROLE_SEARCH)
        ],
        columns=["run_id", "task", "variant"],
    )
    return Study(name, exp.experiment_id, uri, trials.sort_values(["task", "variant", "start_time"], kind="stable").reset_index(drop=True), searches)


def mixed_sweeps(study: Study) -> list[str]:
    """What makes a study more than one sweep, one sentence each: a search with several parent
    runs (independent sweeps pooled into one sample), or trials with different epoch budgets
    (within a search, or between the searches that the Welch test compares)."""
    problems = []
    parents = study.searches.groupby(["task", "variant"]).size()
    for (task, variant), n in parents.items():
        if n > 1:
            problems.append(f"search {task}/{variant} has {n} parent runs: trials of {n} separate sweeps would be pooled")
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
    return problems


def coordinates(trials: pd.DataFrame) -> np.ndarray:
    """(n, 4) the trials' analysis coordinates, columns in ``COORDINATES`` order."""
    return trials[list(COORDINATES)].to_numpy(dtype=float)
