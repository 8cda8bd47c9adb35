"""Sweep-specific MLflow helpers: the study's experiment, the parent run of each search, finding a
trial's run again (resume, retries) and closing runs the trial itself could not close.

The per-trial logging is :class:`odyssey.tracking.MlflowTrialLogger`'s (the same params, metrics
and tags as ``odyssey train``); this module only adds what a sweep needs around it.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from odyssey.errors import ServiceError
from odyssey.tracking import (
    ALL_STATUSES,
    SEARCH_METRIC_PREFIX,
    STATUS_INTERRUPTED,
    STATUS_RUNNING,
    STATUSES,
    TAG_LOWER_IS_BETTER,
    TAG_PRIMARY_METRIC,
    TAG_ROLE,
    TAG_SCHEDULER,
    TAG_SEARCH,
    TAG_STATUS,
    TAG_STUDY,
    TAG_TASK,
    TAG_TRIAL_ID,
    TAG_VARIANT,
    get_or_create_experiment,
)

__all__ = [
    "check_tracking_server",
    "client",
    "ensure_experiment",
    "find_trial_run",
    "runs_with_role",
    "start_parent_run",
]

ROLE_SEARCH = "search"
ROLE_TRIAL = "trial"
TAG_NUM_SAMPLES = "odyssey.num_samples"
TAG_OVERRIDES = "odyssey.overrides"
TAG_SEARCH_KEY = "odyssey.search_key"  # "<task>__<variant>": finds a search's parent run on resume


def client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def check_tracking_server(uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast, naming the URI, when the tracking store cannot be reached.

    ``http(s)://`` URIs must answer ``/health``; ``sqlite:///`` and ``file:`` stores must be in a
    directory that exists or can be created.
    """
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status == 200:
                    return
                problem = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            problem = str(getattr(exc, "reason", exc))
        raise ServiceError(
            f"MLflow tracking server {uri} is not reachable ({problem}); start it (`mlflow server ...`) "
            "or point tracking.uri / MLFLOW_TRACKING_URI at a running one"
        )
    if uri.startswith(("sqlite:///", "file:")):
        from urllib.parse import urlparse

        path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else Path(urlparse(uri).path)
        folder = path.parent if uri.startswith("sqlite:///") else path
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServiceError(f"MLflow tracking store {uri}: cannot create {folder}: {exc}") from None


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
    prefix = SEARCH_METRIC_PREFIX
    metrics = [Metric(f"{prefix}trials/{status}", float(counts.get(status, 0)), now, 0) for status in ALL_STATUSES]
    if best is not None:
        metrics.append(Metric(f"{prefix}best_val/{metric.split('/', 1)[-1]}", float(best), now, 0))
    mlf.log_batch(run_id, metrics=metrics, tags=[])
    if interrupted:
        mlf.set_tag(run_id, TAG_STATUS, STATUS_INTERRUPTED)
        mlf.set_terminated(run_id, status="KILLED")
        return
    mlf.set_tag(run_id, TAG_STATUS, "completed" if not counts.get("failed", 0) else "completed_with_failures")
    mlf.set_terminated(run_id, status="FINISHED")


SEARCH_SPACE_ARTIFACT = "search_space.json"
TAG_SEARCH_SPACE = "odyssey.search_space"


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
        mlf.set_terminated(run.info.run_id, status="KILLED")
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
