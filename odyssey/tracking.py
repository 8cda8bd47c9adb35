"""MLflow adapter: the names every odyssey run carries, and a logger for one trial.

Run schema (the analysis reads it back, so it is part of the public contract):

* params: the effective config flattened (``model.hidden_size``, ``train.lr``...), plus the four
  searched hyperparameters under bare names in the paper's units: ``hidden_size``, ``lr``,
  ``momentum``, ``input_noise``.
* per-epoch metrics (step = epoch, 1-based): ``train/loss``, ``val/<metric>`` for each of the
  task's metrics.
* final metrics: ``test/<metric>`` and ``best_val/<metric>`` at the best validation epoch,
  ``best_epoch``, ``epochs``.
* tags: see the ``TAG_*`` constants; ``odyssey.status`` is one of ``ALL_STATUSES``: a final one
  (``STATUSES``), ``running``, or ``interrupted`` (the sweep was stopped; ``resume=true`` continues
  the run, and ``odyssey analyze`` leaves it out until then).
"""

from __future__ import annotations

TAG_ROLE = "odyssey.role"  # "train" (single trial), "search" (parent run), "trial" (child run)
TAG_TASK = "odyssey.task"
TAG_VARIANT = "odyssey.variant"
TAG_STATUS = "odyssey.status"
TAG_PARAMS_COUNT = "odyssey.params_count"
TAG_SEED = "odyssey.seed"
TAG_PRIMARY_METRIC = "odyssey.primary_metric"
TAG_LOWER_IS_BETTER = "odyssey.lower_is_better"
TAG_SEARCH = "odyssey.search"  # search algorithm: random | tpe
TAG_SCHEDULER = "odyssey.scheduler"  # fifo | asha
TAG_BUDGET_REACHED = "odyssey.budget_reached"  # "true" when the trial ran its full epoch budget
TAG_TRIAL_ID = "odyssey.trial_id"  # Ray Tune trial id
TAG_STUDY = "odyssey.study"
TAG_DEVICE = "odyssey.device"  # where the trial trained: "cpu" or "cuda:N (<GPU name>)"
TAG_ERROR = "odyssey.error"  # a failed trial's exception, "Type: message"; the traceback is artifact error.txt

STATUS_COMPLETED = "completed"
STATUS_STOPPED = "stopped_early"  # stopped by the scheduler (ASHA)
STATUS_DIVERGED = "diverged"
STATUS_FAILED = "failed"
STATUS_RUNNING = "running"
STATUS_INTERRUPTED = "interrupted"  # the sweep was stopped (signal, outage); resume=true continues it
STATUSES = (STATUS_COMPLETED, STATUS_STOPPED, STATUS_DIVERGED, STATUS_FAILED)  # final: never trained again
ALL_STATUSES = (*STATUSES, STATUS_INTERRUPTED, STATUS_RUNNING)

SEARCHED_PARAMS = ("hidden_size", "lr", "momentum", "input_noise")


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


def get_or_create_experiment(client: "MlflowClient", name: str) -> str:
    """The id of the experiment called ``name``, created if missing (restored if deleted)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name)
        except Exception:  # another process created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


class MlflowTrialLogger:
    """An ``EpochReport`` callback that records one trial as one MLflow run.

    Per-epoch metrics are buffered and sent with ``log_batch`` every ``flush_every`` epochs (and
    at the end), not one HTTP call per value. Steps are epochs, so a resumed trial that starts
    after its last logged epoch never writes a step twice.
    """

    def __init__(self, client: "MlflowClient", run_id: str, *, flush_every: int = 1, last_logged_epoch: int = 0):
        self.client = client
        self.run_id = run_id
        self.flush_every = flush_every
        self.last_logged_epoch = last_logged_epoch
        self._pending: list = []

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
    ) -> "MlflowTrialLogger":
        """Create the run (params = ``cfg.flat_params()``, ``tags``) or, with ``run_id``, reopen it."""
        from mlflow import MlflowClient
        from mlflow.entities import Param

        client = MlflowClient(tracking_uri)
        if run_id is not None:
            run = client.get_run(run_id)
            last = int(run.data.metrics.get("epochs_logged", 0))
            if run.info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
            if run.data.tags.get(TAG_STATUS) != STATUS_RUNNING:  # e.g. interrupted, now resumed
                client.set_tag(run_id, TAG_STATUS, STATUS_RUNNING)
            return cls(client, run_id, flush_every=flush_every, last_logged_epoch=last)
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
        self._pending.append(Metric("epochs_logged", float(report.epoch), now, report.epoch))
        self.last_logged_epoch = report.epoch
        if report.epoch % self.flush_every == 0:
            self.flush()

    def flush(self) -> None:
        """Send buffered metrics (at most 1000 per call, MLflow's limit)."""
        while self._pending:
            chunk, self._pending = self._pending[:1000], self._pending[1000:]
            self.client.log_batch(self.run_id, metrics=chunk)

    def finish(self, result: "TrialResult | None", status: str, *, extra_tags: dict[str, str] | None = None) -> None:
        """Log the final metrics and the status tag, and end the run (FAILED if ``status`` is failed)."""
        from mlflow.entities import Metric, RunTag

        self.flush()
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in (result.final_metrics() if result else {}).items()]
        tags = [RunTag(TAG_STATUS, status)] + [RunTag(k, v) for k, v in (extra_tags or {}).items()]
        if result is not None:
            tags.append(RunTag(TAG_BUDGET_REACHED, str(result.budget_reached).lower()))
            tags.append(RunTag(TAG_DEVICE, result.device))
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
        self.client.set_terminated(self.run_id, status="FAILED" if status == STATUS_FAILED else "FINISHED")


def _param_str(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
