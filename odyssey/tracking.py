"""MLflow adapter: a logger for one trial, and the retry and outage handling around MLflow calls.

The names a run carries (roles, tags, statuses, metric and artifact names), the URIs and the store
checks are :mod:`odyssey.run_schema`'s; they are imported here too, where most callers look.
"""

from __future__ import annotations

from odyssey.run_schema import (  # noqa: F401  (re-exported)
    ALL_STATUSES,
    HP_METRIC_PREFIX,
    ROLE_TRAIN,
    SEARCH_METRIC_PREFIX,
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    STATUS_FAILED,
    STATUS_INTERRUPTED,
    STATUS_RUNNING,
    STATUS_STOPPED,
    STATUSES,
    TAG_BUDGET_REACHED,
    TAG_DEVICE,
    TAG_ERROR,
    TAG_LOWER_IS_BETTER,
    TAG_PARAMS_COUNT,
    TAG_PRIMARY_METRIC,
    TAG_ROLE,
    TAG_SCHEDULER,
    TAG_SEARCH,
    TAG_SEED,
    TAG_STATUS,
    TAG_STUDY,
    TAG_TASK,
    TAG_TRIAL_ID,
    TAG_VARIANT,
    experiment_url,
    mlflow_status,
    where_to_look,
)


# --------------------------------------------------------------------------------------------
# Logging one trial

import time  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

    from odyssey.config import TrialConfig
    from odyssey.train import EpochReport, TrialResult


def trial_tags(cfg: "TrialConfig", *, primary_metric: str, lower_is_better: bool, params_count: int) -> dict[str, str]:
    """The tags every trial run carries (single `odyssey train` runs and sweep trials alike)."""
    return {
        TAG_TASK: cfg.task.name,
        TAG_VARIANT: cfg.variant.label(),
        TAG_SEED: str(cfg.seed),
        TAG_PARAMS_COUNT: str(params_count),
        TAG_PRIMARY_METRIC: primary_metric,
        TAG_LOWER_IS_BETTER: str(lower_is_better).lower(),
        TAG_STATUS: STATUS_RUNNING,
    }


def config_yaml(cfg: "TrialConfig") -> str:
    """The trial's resolved config (every section, the sampled values and the seed) as YAML: the
    ``config.yaml`` artifact of trial and train runs, from which ``odyssey train --from-run``
    rebuilds the trial (:mod:`odyssey.rerun`)."""
    import dataclasses

    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(cfg)))


def get_or_create_experiment(client: "MlflowClient", name: str) -> str:
    """The id of the experiment called ``name``, created if missing (restored if deleted), declared
    as model training (``mlflow.experimentKind``; MLflow 3.18's UI layout still follows the
    browser's switch or the link's ``?workflowType=``: see :mod:`odyssey.run_schema`)."""
    from odyssey.run_schema import EXPERIMENT_KIND, TAG_EXPERIMENT_KIND

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
        except Exception:  # another process created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if exp.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND:  # an experiment made by someone else
        client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    return exp.experiment_id


def tracking_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the tracking server is away or overloaded (no connection, a timeout,
    HTTP 5xx or 429, a locked SQLite store, a server out of database connections), so the same
    call may succeed later; False when it refused the request itself (a bad parameter, a deleted
    run)."""
    text = str(exc)
    if isinstance(exc, OSError) or "failed with exception" in text or "failed with timeout exception" in text:
        return True
    if "database is locked" in text:
        return True
    # The server's SQLAlchemy pool ran dry (it answers 400 BAD_REQUEST for that): an overloaded
    # server (its MLFLOW_SQLALCHEMYSTORE_POOL_SIZE is too small); PostgreSQL out of connections.
    if "QueuePool limit of size" in text or "too many clients" in text or "remaining connection slots" in text:
        return True
    status = getattr(exc, "get_http_status_code", None)
    if callable(status):
        try:
            code = int(status())
        except (TypeError, ValueError):
            return False
        return code >= 500 or code == 429
    return False


def call_with_retry(fn, *args, give_up=lambda: False, on_wait=None, **kwargs):
    """``fn(*args, **kwargs)``, retried with backoff (1 s doubling to 30 s, each wait drawn between
    half and all of it, so that hundreds of trials refused at once do not come back at once) while
    the tracking server is unavailable (:func:`tracking_unavailable`), until ``give_up()``; other
    errors raise at once. ``on_wait(exc)`` is told of each failed attempt."""
    import random

    delay = 1.0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not tracking_unavailable(exc) or give_up():
                raise
            if on_wait is not None:
                on_wait(exc)
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(2 * delay, 30.0)


# MLflow's client retries a failed HTTP call 7 times with backoff, about 4 minutes, before it
# raises. Sweeps keep each call short instead and ride out an outage themselves: trials buffer
# (MlflowTrialLogger), the driver retries and, past tracking.outage_grace_s, stops the sweep.
SHORT_HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                      "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}  # fmt: skip


def use_short_http_retries() -> None:
    """Apply :data:`SHORT_HTTP_RETRIES` to this process (values the user set are kept)."""
    import os

    for key, value in SHORT_HTTP_RETRIES.items():
        os.environ.setdefault(key, value)


class MlflowTrialLogger:
    """An ``EpochReport`` callback that records one trial as one MLflow run.

    Per-epoch metrics are buffered and sent with ``log_batch`` every ``flush_every`` epochs (and
    at the end), not one HTTP call per value. Steps are epochs, so a resumed trial that starts
    after its last logged epoch never writes a step twice.

    Outages: a flush that cannot reach the server keeps its metrics and training goes on; the
    next flush sends them. :meth:`state` holds what is still unsent, so a trial's checkpoint
    carries it across a restart (``pending=`` of :meth:`start`): no metric is lost, and as
    every metric keeps its epoch and timestamp, a batch sent twice is stored once. :meth:`finish`
    waits for the server (the sweep driver decides how long an outage may last).
    """

    def __init__(self, client: "MlflowClient", run_id: str, *, flush_every: int = 1, last_logged_epoch: int = 0):
        self.client = client
        self.run_id = run_id
        self.flush_every = flush_every
        self.last_logged_epoch = last_logged_epoch
        self._pending: list = []
        self.unavailable_since: float | None = None  # time.monotonic() of the first failed flush

    @classmethod
    def start(
        cls,
        tracking_uri: str,
        experiment_name: str,
        cfg: "TrialConfig",
        *,
        tags: dict[str, str],
        parent_run_id: str | None = None,
        run_name: str | None = None,
        run_id: str | None = None,
        flush_every: int = 1,
        pending: dict | None = None,
    ) -> "MlflowTrialLogger":
        """Create the run (params = ``cfg.flat_params()``, ``tags``) or, with ``run_id``, reopen it;
        ``pending``: a :meth:`state` from before a restart, sent first."""
        from mlflow import MlflowClient
        from mlflow.entities import Param

        client = MlflowClient(tracking_uri)
        if run_id is not None:
            run = client.get_run(run_id)
            last = last_complete_epoch(client, run)
            if run.info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
            if run.data.tags.get(TAG_STATUS) != STATUS_RUNNING:  # e.g. interrupted, now resumed
                client.set_tag(run_id, TAG_STATUS, STATUS_RUNNING)
            logger = cls(client, run_id, flush_every=flush_every, last_logged_epoch=last)
            logger._restore(pending)
            return logger
        all_tags = dict(tags)
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(get_or_create_experiment(client, experiment_name), tags=all_tags, run_name=run_name)
        params = [Param(k, _param_str(v)) for k, v in cfg.flat_params().items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run.info.run_id, params=params[i : i + 100])
        return cls(client, run.info.run_id, flush_every=flush_every)

    def __call__(self, report: "EpochReport") -> None:
        from mlflow.entities import Metric

        if report.epoch <= self.last_logged_epoch:  # already recorded before a resume
            return
        now = int(time.time() * 1000)
        for key, value in report.metrics.items():
            self._pending.append(Metric(key, float(value), now, report.epoch))
        self.last_logged_epoch = report.epoch
        if report.epoch % self.flush_every == 0:
            self.flush()

    def flush(self) -> bool:
        """Send buffered metrics (at most 1000 per call, MLflow's limit). False, keeping what is
        unsent, when the server is unavailable; other errors raise.

        Back-pressure: after a failed flush the next one sends nothing (returns False) until a
        backoff has passed, 1 s doubling to 15 s, jittered, so that hundreds of trials do not
        hammer an overloaded server every epoch; the buffer then goes as one batch. A batch that
        reached the server before the client gave up on it is stored once: every metric keeps its
        timestamp, and MLflow's store skips a (key, timestamp, step, value) it has."""
        import random

        now = time.monotonic()
        if self._pending and now < getattr(self, "_retry_at", 0.0):
            return False
        try:
            while self._pending:
                chunk = self._pending[:1000]
                self.client.log_batch(self.run_id, metrics=chunk)
                del self._pending[: len(chunk)]
        except Exception as exc:
            if not tracking_unavailable(exc):
                raise
            if self.unavailable_since is None:
                self.unavailable_since = now
            self._backoff_s = min(2 * getattr(self, "_backoff_s", 0.5), 15.0)
            self._retry_at = time.monotonic() + self._backoff_s * random.uniform(0.5, 1.0)
            return False
        self.unavailable_since = None
        self._backoff_s, self._retry_at = 0.5, 0.0  # the first failure waits 1 s
        return True

    def state(self) -> dict:
        """What has not reached the server yet, as plain data (for a checkpoint)."""
        return {"run_id": self.run_id, "pending": [[m.key, m.value, m.timestamp, m.step] for m in self._pending]}

    def _restore(self, state: dict | None) -> None:
        from mlflow.entities import Metric

        if state and state.get("run_id") == self.run_id:
            self._pending = [Metric(k, v, t, s) for k, v, t, s in state.get("pending", [])] + self._pending
            self.last_logged_epoch = max([self.last_logged_epoch, *(m.step for m in self._pending)])

    def finish(
        self, result: "TrialResult | None", status: str, *, extra_tags: dict[str, str] | None = None, give_up=lambda: False
    ) -> None:
        """Log the final metrics and the status tag, and end the run (FAILED if ``status`` is
        failed); waits, retrying, while the server is unavailable, until ``give_up()``."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, 0) for k, v in (result.final_metrics() if result else {}).items()]
        tags = [RunTag(TAG_STATUS, status)] + [RunTag(k, v) for k, v in (extra_tags or {}).items()]
        if result is not None:
            tags.append(RunTag(TAG_BUDGET_REACHED, str(result.budget_reached).lower()))
            tags.append(RunTag(TAG_DEVICE, result.device))
            tags += [RunTag(k, v) for k, v in result.provenance.items()]

        def send() -> None:
            if not self.flush():
                raise ConnectionError(f"MLflow tracking server unavailable; {len(self._pending)} metric(s) buffered")
            self.client.log_batch(self.run_id, tags=tags)
            self.client.set_terminated(self.run_id, status=mlflow_status(status))

        call_with_retry(send, give_up=give_up)


def last_complete_epoch(client: "MlflowClient", run) -> int:
    """The last epoch all of whose per-epoch metrics (``train/*``, ``val/*``) reached run ``run``
    (0 if none): a resumed trial logs only the epochs after it, so no step is written twice."""
    keys = [k for k in run.data.metrics if k.startswith(("train/", "val/"))]
    if not keys:
        return 0
    return min(max((m.step for m in client.get_metric_history(run.info.run_id, k)), default=0) for k in keys)


def trial_index(trial_id: str) -> int | None:
    """The counter of random search's Ray trial ids (``xxxxx_00007`` -> 7); None for searchers
    (TPE) that name trials by hash only."""
    import re

    match = re.search(r"_(\d+)$", trial_id)
    return int(match.group(1)) if match else None


def trial_run_name(variant: str, trial_id: str) -> str:
    """A readable run name: the variant and the trial's index in its search (``vanilla-007``);
    searchers that name trials by hash keep 8 characters of it."""
    index = trial_index(trial_id)
    return f"{variant}-{index:03d}" if index is not None else f"{variant}-{trial_id[:8]}"


def quiet_mlflow_urls() -> None:
    """MLflow 3 prints a "View run" line (in its GenAI view) each time a run ends: hundreds in a
    sweep. odyssey prints the study's URL itself (:func:`where_to_look`)."""
    import os

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def _param_str(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
