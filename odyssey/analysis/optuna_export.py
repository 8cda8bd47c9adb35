"""``odyssey export optuna STUDY [--storage URL]``: a finished study (random search included) as
one Optuna study per search, so that Optuna's views (``optuna-dashboard``, or
``optuna.visualization``: parallel coordinates, slices, contours, importances) work on it.

Each search ``<task>/<variant>`` becomes the Optuna study ``<study>/<task>__<variant>`` with:

* distributions from the search space the search recorded (``search_space.json`` on its parent
  run): ``loguniform`` -> ``FloatDistribution(log=True)``, ``int``/``loguniform_int`` ->
  ``IntDistribution``, ``choice`` -> ``CategoricalDistribution``; a ``one_minus_loguniform`` key
  is the log-uniform quantity Ray Tune sampled, ``1-<key>`` (the paper's momentum);
* the objective's name ``best_val/<metric>`` (``study.metric_names``: the dashboard's axis);
* one trial per MLflow trial run, numbered in trial-index order (the order of the run names
  ``vanilla-000``, ``vanilla-001``...; TPE's hash-named trials by start time, after them): its
  sampled values, ``best_val/<metric>`` as the objective (the direction of the task's metric),
  the per-epoch ``val/<metric>`` as intermediate values, the run's own start and end times, and
  the MLflow run id and run name as user attributes (``mlflow_run_id``, ``mlflow_run_name``).
  Completed and diverged trials are COMPLETE, scheduler-stopped ones PRUNED, failed ones FAIL;
  running and interrupted ones are left out (so a trial's number is its index only when none is).

Log-scaled parameters are declared log-scaled (``log=True``), so the dashboard's slice and
contour plots put them on the report's log axes. Importances still differ from the report's (see
the README): the dashboard's PED-ANOVA asks what sets the best trials apart, on this objective
(not the report's test metric); Optuna's fANOVA and mean-decrease-impurity evaluators work on each
parameter's linear scale whatever ``log`` says.
"""

from __future__ import annotations

import argparse
import datetime
import math
import warnings
from typing import Any

from odyssey.errors import ConfigError

__all__ = ["export_optuna", "main"]


def _distribution(p):
    import optuna.distributions as d

    if p.dist == "choice":
        return d.CategoricalDistribution(list(p.values))
    if p.dist in ("int", "loguniform_int"):
        return d.IntDistribution(int(p.low), int(p.high), log=p.dist == "loguniform_int")
    return d.FloatDistribution(float(p.low), float(p.high), log=p.dist != "uniform")


def _value(p, text: str) -> Any:
    """A param string of the MLflow run as the value Optuna's distribution holds."""
    if p.dist == "choice":
        for v in p.values:
            if str(v) == text:
                return v
        raise ValueError(f"{text!r} is not one of {list(p.values)}")
    if p.dist in ("int", "loguniform_int"):
        return int(text)
    value = float(text)
    return 1.0 - value if p.dist.startswith("one_minus_") else value


def _run_time(ms: int | None) -> datetime.datetime | None:
    """An MLflow time (ms since the epoch) as Optuna stores times: a naive local datetime."""
    return None if ms is None else datetime.datetime.fromtimestamp(ms / 1000)


def trial_order(run) -> tuple[int, int, int]:
    """Sort key of a trial run: its Ray trial index (the number in its run name ``vanilla-007``),
    then its start time; trials without an index (TPE's) after the indexed ones."""
    from odyssey.tracking import TAG_TRIAL_ID, trial_index

    index = trial_index(run.data.tags.get(TAG_TRIAL_ID, ""))
    return (index is None, index if index is not None else 0, run.info.start_time or 0)


def export_optuna(study_name: str, *, tracking_uri: str, storage: str) -> dict[str, int]:
    """Write every search of ``study_name`` into Optuna ``storage``; returns trials per Optuna study."""
    import optuna
    from mlflow import MlflowClient

    from odyssey.analysis.study import _search_all
    from odyssey.run_schema import ROLE_SEARCH, check_store
    from odyssey.sweep.mlflow_runs import recorded_search_space, trial_runs
    from odyssey.tracking import (
        STATUS_COMPLETED,
        STATUS_DIVERGED,
        STATUS_FAILED,
        STATUS_STOPPED,
        TAG_LOWER_IS_BETTER,
        TAG_PRIMARY_METRIC,
        TAG_STATUS,
        TAG_TASK,
        TAG_VARIANT,
    )

    check_store(tracking_uri, existing=True)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study_name)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ConfigError(f"no study named {study_name!r} at {tracking_uri}; available: {', '.join(names) or '(none)'}")
    states = {
        STATUS_COMPLETED: optuna.trial.TrialState.COMPLETE,
        STATUS_DIVERGED: optuna.trial.TrialState.COMPLETE,
        STATUS_STOPPED: optuna.trial.TrialState.PRUNED,
        STATUS_FAILED: optuna.trial.TrialState.FAIL,
    }
    written: dict[str, int] = {}
    for parent in _search_all(client, exp.experiment_id, ROLE_SEARCH):
        task, variant = parent.data.tags.get(TAG_TASK), parent.data.tags.get(TAG_VARIANT)
        space = recorded_search_space(tracking_uri, parent.info.run_id)
        if space is None:
            raise ConfigError(
                f"search {task}/{variant} of study {study_name!r} has no recorded search space (search_space.json "
                "on its parent run: studies run before odyssey recorded it); it cannot be exported"
            )
        metric = parent.data.tags.get(TAG_PRIMARY_METRIC, "")
        lower = parent.data.tags.get(TAG_LOWER_IS_BETTER, "true") == "true"
        name = f"{study_name}/{task}__{variant}"
        if name in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
            optuna.delete_study(study_name=name, storage=storage)  # an export is a snapshot: replace it
        target = optuna.create_study(study_name=name, storage=storage, direction="minimize" if lower else "maximize")
        target.set_user_attr("mlflow_parent_run_id", parent.info.run_id)
        target.set_user_attr("metric", f"best_val/{metric}")
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, and what the dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            target.set_metric_names([f"best_val/{metric}"])
        distributions = {p.tune_key: _distribution(p) for p in space.params}
        trials = []
        for run in sorted(trial_runs(tracking_uri, exp.experiment_id, parent.info.run_id), key=trial_order):
            state = states.get(run.data.tags.get(TAG_STATUS))
            if state is None:
                continue
            params = {p.tune_key: _value(p, run.data.params[p.path]) for p in space.params}
            value = run.data.metrics.get(f"best_val/{metric}")
            if state == optuna.trial.TrialState.COMPLETE and (value is None or not math.isfinite(value)):
                state = optuna.trial.TrialState.FAIL  # a diverged trial without a recorded value
            history = client.get_metric_history(run.info.run_id, f"val/{metric}")
            trial = optuna.trial.create_trial(
                params=params,
                distributions=distributions,
                value=value if state == optuna.trial.TrialState.COMPLETE else None,
                state=state,
                intermediate_values={m.step: m.value for m in history if math.isfinite(m.value)},
                user_attrs={"mlflow_run_id": run.info.run_id, "mlflow_run_name": run.info.run_name,
                            "odyssey_status": run.data.tags.get(TAG_STATUS)},
            )  # fmt: skip
            trial.datetime_start = _run_time(run.info.start_time)  # create_trial stamps "now"
            trial.datetime_complete = _run_time(run.info.end_time) or trial.datetime_start
            trials.append(trial)
        target.add_trials(trials)
        written[name] = len(trials)
    if not written:
        raise ConfigError(f"study {study_name!r} has no searches (parent runs) at {tracking_uri}")
    return written


def main(argv: list[str]) -> int:
    """``odyssey export optuna STUDY [--storage URL] [--tracking-uri URI]``."""
    parser = argparse.ArgumentParser(prog="odyssey export", description="export a study for other tools")
    parser.add_argument("format", choices=["optuna"], help="the target: optuna (one Optuna study per search)")
    parser.add_argument("study", help="study name (= MLflow experiment name)")
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///optuna-<study>.db)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlruns.db)")
    args = parser.parse_args(argv)
    from odyssey.run_schema import default_tracking_uri

    storage = args.storage or f"sqlite:///optuna-{args.study}.db"
    written = export_optuna(args.study, tracking_uri=args.tracking_uri or default_tracking_uri(), storage=storage)
    for name, n in written.items():
        print(f"{name}: {n} trial(s)")
    print(f"Optuna storage {storage}: view it with `optuna-dashboard {storage}`")
    return 0
