"""Sweep-specific MLflow helpers: the study's experiment, the parent run of each search, finding a
trial's run again (resume, retries) and closing runs the trial itself could not close.

The per-trial logging is :class:`odyssey.tracking.MlflowTrialLogger`'s (the same params, metrics
and tags as ``odyssey train``); this module only adds what a sweep needs around it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from odyssey.run_schema import (
    ALL_STATUSES,
    ROLE_SEARCH,
    ROLE_TRIAL,
    SEARCH_SPACE_ARTIFACT,
    SEARCH_WITH_FAILURES,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_INTERRUPTED,
    STATUS_RUNNING,
    STATUSES,
    TAG_LOWER_IS_BETTER,
    TAG_NUM_SAMPLES,
    TAG_PRIMARY_METRIC,
    TAG_ROLE,
    TAG_SCHEDULER,
    TAG_SEARCH,
    TAG_SEARCH_KEY,
    TAG_SEARCH_SPACE,
    TAG_STATUS,
    TAG_STUDY,
    TAG_TASK,
    TAG_TRIAL_ID,
    TAG_VARIANT,
    mlflow_status,
    search_best_metric,
    search_trials_metric,
)
from odyssey.tracking import get_or_create_experiment

__all__ = [
    "client",
    "ensure_experiment",
    "find_trial_run",
    "runs_with_role",
    "start_parent_run",
]

def client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name`` (one per study), created if needed; restores a deleted one."""
    return get_or_create_experiment(client(uri), name)


def start_parent_run(
    uri: str, experiment_id: str, *, study: str, task: str, variant: str, tags: dict[str, str], resume: bool
) -> str:
    """The parent run of one (task, variant) search: reused on resume, else a new one."""
    mlf = client(uri)
    key = f"{task}__{variant}"
    if resume:
        runs = mlf.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_SEARCH}' and tags.`{TAG_SEARCH_KEY}` = '{key}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            run_id = runs[0].info.run_id
            mlf.update_run(run_id, status="RUNNING")
            mlf.set_tag(run_id, TAG_STATUS, STATUS_RUNNING)
            return run_id
    all_tags = {
        TAG_ROLE: ROLE_SEARCH,
        TAG_STUDY: study,
        TAG_TASK: task,
        TAG_VARIANT: variant,
        TAG_SEARCH_KEY: key,
        TAG_STATUS: STATUS_RUNNING,
        **tags,
    }
    run = mlf.create_run(experiment_id, run_name=f"{task}/{variant}", tags=all_tags)
    return run.info.run_id


def finish_parent_run(
    uri: str, run_id: str, *, counts: dict[str, int], best: float | None, metric: str, interrupted: bool = False
) -> None:
    """Close a search's parent run with the trial counts by status and the best primary value.

    Every status gets its count, zeros included, so a resumed search leaves no stale count behind
    (``trials/running`` from an interrupted driver, say). An interrupted search ends ``KILLED``
    with ``odyssey.status = interrupted``."""
    from mlflow.entities import Metric

    mlf = client(uri)
    now = int(time.time() * 1000)
    metrics = [Metric(search_trials_metric(status), float(counts.get(status, 0)), now, 0) for status in ALL_STATUSES]
    if best is not None:
        metrics.append(Metric(search_best_metric(metric.split("/", 1)[-1]), float(best), now, 0))
    mlf.log_batch(run_id, metrics=metrics, tags=[])
    if interrupted:
        mlf.set_tag(run_id, TAG_STATUS, STATUS_INTERRUPTED)
        mlf.set_terminated(run_id, status=mlflow_status(STATUS_INTERRUPTED))
        return
    mlf.set_tag(run_id, TAG_STATUS, SEARCH_WITH_FAILURES if counts.get(STATUS_FAILED, 0) else STATUS_COMPLETED)
    mlf.set_terminated(run_id, status=mlflow_status(STATUS_COMPLETED))


def record_search_space(uri: str, run_id: str, space) -> None:
    """The translated space a search samples from, on its parent run: ``search_space.json`` (the
    mapping ``translate`` reads back) and the readable tag ``odyssey.search_space``."""
    mlf = client(uri)
    mlf.log_dict(run_id, space.to_mapping(), SEARCH_SPACE_ARTIFACT)
    mlf.set_tag(run_id, TAG_SEARCH_SPACE, space.describe()[:5000])


def recorded_search_space(uri: str, run_id: str):
    """The :class:`SearchSpace` a parent run recorded, or None (a study from before the record)."""
    import json

    from mlflow.artifacts import download_artifacts

    from odyssey.sweep.search_space import translate

    try:
        path = download_artifacts(run_id=run_id, artifact_path=SEARCH_SPACE_ARTIFACT, tracking_uri=uri)
    except Exception:  # noqa: BLE001 - no such artifact
        return None
    return translate(json.loads(Path(path).read_text()), name=f"run {run_id}:{SEARCH_SPACE_ARTIFACT}")


def runs_with_role(mlf, experiment_id: str, role: str, *, page_size: int = 1000) -> list:
    """Every run of the experiment with ``odyssey.role = role``, page by page (thousands work)."""
    runs, token = [], None
    while True:
        page = mlf.search_runs(
            [experiment_id], filter_string=f"tags.`{TAG_ROLE}` = '{role}'", max_results=page_size, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def trial_runs(uri: str, experiment_id: str, parent_run_id: str) -> list:
    """Every trial run of one search (the parent's children)."""
    return client(uri).search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`{TAG_ROLE}` = '{ROLE_TRIAL}'",
        max_results=10_000,
    )


def mark_interrupted(uri: str, experiment_id: str, parent_run_id: str) -> int:
    """Mark the search's trial runs that have no final status ``interrupted`` (MLflow ``KILLED``);
    ``resume=true`` reopens them. Returns how many were marked."""
    mlf = client(uri)
    marked = 0
    for run in trial_runs(uri, experiment_id, parent_run_id):
        if run.data.tags.get(TAG_STATUS) in STATUSES:
            continue
        mlf.set_tag(run.info.run_id, TAG_STATUS, STATUS_INTERRUPTED)
        mlf.set_terminated(run.info.run_id, status=mlflow_status(STATUS_INTERRUPTED))
        marked += 1
    return marked


def find_trial_run(uri: str, experiment_id: str, parent_run_id: str, trial_id: str) -> Any | None:
    """The child run of Ray trial ``trial_id`` under ``parent_run_id``, or None."""
    runs = client(uri).search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_TRIAL_ID}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=5,
    )
    return runs[0] if runs else None


def search_tags(search: str, scheduler: str, num_samples: int, metric: str, lower_is_better: bool) -> dict[str, str]:
    return {
        TAG_SEARCH: search,
        TAG_SCHEDULER: scheduler,
        TAG_NUM_SAMPLES: str(num_samples),
        TAG_PRIMARY_METRIC: metric,
        TAG_LOWER_IS_BETTER: str(lower_is_better).lower(),
    }
