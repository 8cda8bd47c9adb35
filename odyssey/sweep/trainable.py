"""The Ray Tune function trainable: one trial = ``train_trial`` with a callback that reports each
epoch to Tune (with a checkpoint) and to the trial's MLflow run.

Resume and retries continue the same MLflow run, without duplicate steps:

* the checkpoint holds the trainer state, the MLflow run id and the epoch;
* a trial restarted without a checkpoint (it failed before its first one) finds its run by the
  tags ``odyssey.trial_id`` + ``mlflow.parentRunId``;
* only epochs after the run's last logged epoch are logged (``MlflowTrialLogger`` reopens the run
  knowing it; training is deterministic given the seed, so a re-run epoch is the one already logged);
* a trial whose run already carries a final status (it finished, then the driver died before Tune
  recorded it) is not trained again: its final metrics are reported back to Tune.
"""

from __future__ import annotations

import json
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from odyssey.sweep.search_space import SearchSpace
from odyssey.sweep.study import SearchPlan
from odyssey.run_schema import CONFIG_ARTIFACT, ROLE_TRIAL
from odyssey.tracking import (
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    STATUSES,
    TAG_ROLE,
    TAG_SCHEDULER,
    TAG_SEARCH,
    TAG_STATUS,
    TAG_STUDY,
    TAG_TRIAL_ID,
    config_yaml,
    trial_tags,
)

__all__ = ["TrialContext", "run_trial", "trial_config", "trial_seed"]

STATE_FILE = "trainer.pt"
META_FILE = "odyssey.json"
RUN_ID_KEY = "mlflow_run_id"  # also reported to Tune, so the driver finds the run without a search
PENDING_KEY = "mlflow_pending"  # the metrics an outage kept from MLflow, carried by the checkpoint


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one search shares (shipped once to the workers via ``with_parameters``)."""

    plan: SearchPlan
    space: SearchSpace
    tracking_uri: str
    experiment_name: str
    experiment_id: str
    parent_run_id: str
    study: str
    search: str
    scheduler: str
    checkpoint_every: int = 1
    packs: int = 0  # > 0: the search's trials train in this many pack executors (execution=pack)
    system_metrics: bool = True  # tracking.system_metrics: MLflow's CPU/memory/GPU metrics per trial


def trial_seed(base_seed: int, trial_id: str, sampled: dict[str, Any]) -> int:
    """``base_seed + trial index``: the index is the counter of random search's trial ids
    (``xxxxx_00007``); searchers (TPE) name trials by uuid only, so there the index is derived from
    the sampled values (deterministic: the searcher is seeded)."""
    from odyssey.tracking import trial_index

    index = trial_index(trial_id)
    if index is not None:
        return base_seed + index
    blob = json.dumps(sampled, sort_keys=True, default=str).encode()
    return base_seed + zlib.crc32(blob) % 1_000_000


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune trainable (use ``tune.with_parameters(run_trial, ctx=...)``)."""
    import torch
    from ray import tune

    from odyssey.sweep import mlflow_runs
    from odyssey.tasks import build_task
    from odyssey.tracking import MlflowTrialLogger, call_with_retry, quiet_mlflow_urls, trial_run_name, use_short_http_retries
    from odyssey.train import train_trial

    use_short_http_retries()  # an outage: this trial buffers and retries; the driver decides when to stop
    quiet_mlflow_urls()
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(ctx, trial_id, config)

    state, run_id, pending = None, None, None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
            meta = json.loads((Path(folder) / META_FILE).read_text())
            run_id, pending = meta[RUN_ID_KEY], meta.get(PENDING_KEY)
    if run_id is None:
        found = call_with_retry(mlflow_runs.find_trial_run, ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, trial_id)
        if found is not None:
            run_id = found.info.run_id
            if found.data.tags.get(TAG_STATUS) in STATUSES:  # finished before the driver died
                _report_finished(found, ctx)
                return

    task = build_task(cfg.task)
    logger = call_with_retry(
        MlflowTrialLogger.start,
        ctx.tracking_uri,
        ctx.experiment_name,
        cfg,
        tags={**trial_run_tags(ctx, cfg, trial_id, params_count(cfg, task)), **task.data_tags()},
        parent_run_id=ctx.parent_run_id,
        run_name=trial_run_name(ctx.plan.variant, trial_id),
        run_id=run_id,
        pending=pending,
    )  # with run_id: reopens the run; epochs up to its last logged one are not logged again
    if run_id is None:  # a new run: the searched values as numbers (sorting, charts); the config
        call_with_retry(log_hyperparameters, logger, ctx.space.coordinates(cfg))
        call_with_retry(logger.client.log_text, logger.run_id, config_yaml(cfg), CONFIG_ARTIFACT)
    monitor, pack_metrics = None, None
    if ctx.system_metrics and ctx.packs:  # sampled by the pack executor, which holds the device
        pack_metrics = {"run_id": logger.run_id, "tracking_uri": ctx.tracking_uri, "resumed": run_id is not None}
    elif ctx.system_metrics:
        monitor = start_system_metrics(logger.run_id, ctx.tracking_uri, resumed=run_id is not None)

    finished = []

    def finish(result) -> None:
        logger.finish(result, STATUS_DIVERGED if result.status == "diverged" else STATUS_COMPLETED)
        finished.append(result)

    def on_epoch(report) -> None:
        logger(report)  # flushes with log_batch before the checkpoint below is taken (or buffers)
        if report.result is not None:  # the last epoch: close the run before a scheduler can stop us here
            finish(report.result)
        metrics = {**report.metrics, "epoch": report.epoch, "best_epoch": report.best_epoch, RUN_ID_KEY: logger.run_id}
        if report.epoch % ctx.checkpoint_every:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="odyssey-ckpt-") as folder:
            torch.save(report.checkpoint(), Path(folder) / STATE_FILE)
            meta = {RUN_ID_KEY: logger.run_id, "epoch": report.epoch, PENDING_KEY: logger.state()}
            (Path(folder) / META_FILE).write_text(json.dumps(meta))  # metrics not yet in MLflow travel too
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    try:
        if ctx.packs:
            result = train_in_pack(ctx, trial_id, cfg, state, on_epoch, system_metrics=pack_metrics)
        else:
            result = train_trial(cfg, callback=on_epoch, resume_from=state, task=task)
        if not finished:  # diverged (no report for that epoch), or resumed after its last epoch
            finish(result)
    finally:
        if monitor is not None:
            monitor.finish()




def log_hyperparameters(logger, coordinates: dict[str, float]) -> None:
    """``hp/<coordinate>`` metrics: the trial's searched values in analysis units (log10 lr...)."""
    import math
    import time

    from mlflow.entities import Metric

    from odyssey.tracking import HP_METRIC_PREFIX

    now = int(time.time() * 1000)
    metrics = [Metric(f"{HP_METRIC_PREFIX}{k}", v, now, 0) for k, v in coordinates.items() if math.isfinite(v)]
    if metrics:
        logger.client.log_batch(logger.run_id, metrics=metrics)


def start_system_metrics(run_id: str, tracking_uri: str, *, resumed: bool, interval_s: float = 10.0):
    """MLflow's system metrics on run ``run_id``: the node's CPU, memory, disk and network (psutil)
    and its GPUs (where pynvml finds them), sampled every ``interval_s``; None where MLflow cannot monitor."""
    import logging

    # its INFO lines ("Started monitoring system metrics.", per trial) would reach the sweep's console
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=interval_s, samples_before_logging=1, resume_logging=resumed, tracking_uri=tracking_uri
        )
        monitor.start()
        return monitor
    except Exception:  # noqa: BLE001 - an optional view; training goes on without it
        return None


def train_in_pack(ctx: TrialContext, trial_id: str, cfg, state: dict | None, on_epoch, *, system_metrics: dict | None = None):
    """The proxy side of :mod:`odyssey.sweep.pack_executor`: join the least loaded pack of the
    search, relay each epoch to ``on_epoch`` (MLflow, Tune), leave when done or stopped.
    ``system_metrics``: the member's run, for the executor to sample (see ``PackExecutor.join``)."""
    import time

    import ray

    from odyssey.sweep.pack_executor import executor_name
    from odyssey.train import EpochReport

    executors = [ray.get_actor(executor_name(ctx.study, ctx.plan.key, i)) for i in range(ctx.packs)]
    me = ray.get_runtime_context().current_actor
    joined = None
    while joined is None:  # Tune starts at most members x packs trials, but a slot frees a moment late
        for _, executor in sorted(zip(ray.get([e.load.remote() for e in executors]), executors), key=lambda p: p[0]):
            if ray.get(executor.join.remote(trial_id, cfg, state, me, ctx.checkpoint_every, system_metrics)):
                joined = executor
                break
        else:
            time.sleep(0.2)
    try:
        while True:
            event = ray.get(joined.next.remote(trial_id))
            if event["report"] is not None:
                r = event["report"]
                on_epoch(EpochReport(
                    r["epoch"], r["metrics"], r["best_epoch"], r["improved"], lambda ckpt=r["checkpoint"]: ckpt, r["result"]
                ))  # fmt: skip
            if event["result"] is not None:
                return event["result"]
    finally:  # also on the SystemExit with which Tune stops a trial (ASHA) inside tune.report
        joined.leave.remote(trial_id)


def trial_config(ctx: TrialContext, trial_id: str, config: dict[str, Any]):
    """The trial's config: the search's base config, the sampled values, the trial's seed."""
    sampled = {k: config[k] for k in ctx.space.tune_keys()}
    cfg = ctx.plan.base.replace(**ctx.space.decode(sampled))
    return cfg.replace(seed=trial_seed(ctx.plan.base.seed, trial_id, sampled))


def params_count(cfg, task) -> int:
    from odyssey.model import SequenceModel

    m = cfg.model
    model = SequenceModel(
        cfg.variant, task.input_size, task.output_size, hidden_size=m.hidden_size,
        num_layers=m.num_layers, bidirectional=m.bidirectional, init_std=m.init_std,
    )  # fmt: skip
    return model.num_parameters()


def trial_run_tags(ctx: TrialContext, cfg, trial_id: str, count: int) -> dict[str, str]:
    """The tags of a single ``odyssey train`` run, plus the sweep's."""
    tags = trial_tags(
        cfg, primary_metric=ctx.plan.primary_metric, lower_is_better=ctx.plan.lower_is_better, params_count=count
    )
    tags.update({
        TAG_ROLE: ROLE_TRIAL,
        TAG_STUDY: ctx.study,
        TAG_SEARCH: ctx.search,
        TAG_SCHEDULER: ctx.scheduler,
        TAG_TRIAL_ID: trial_id,
    })  # fmt: skip
    return tags


def _report_finished(run: Any, ctx: TrialContext) -> None:
    """Give Tune the final metrics of a trial that had already finished in MLflow."""
    from ray import tune

    metric = ctx.plan.primary_metric
    best = run.data.metrics.get(f"best_val/{metric}")
    tune.report({f"val/{metric}": best if best is not None else float("nan"), RUN_ID_KEY: run.info.run_id})
