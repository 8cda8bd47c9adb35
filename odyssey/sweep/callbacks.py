"""Driver-side Ray Tune callbacks: a readable progress view, and MLflow statuses for the trials
that could not record their own end (stopped by the scheduler, failed, lost with their node).

Both are pickled into the Tune experiment (``Tuner.restore`` brings them back), so they hold
only plain data.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from collections import Counter
from typing import Any

from ray.tune import Callback

from odyssey.sweep import interrupts
from odyssey.sweep.trainable import RUN_ID_KEY, TrialContext
from odyssey.run_schema import (
    ERROR_ARTIFACT,
    STATUS_FAILED,
    STATUS_STOPPED,
    STATUSES,
    TAG_BUDGET_REACHED,
    TAG_ERROR,
    TAG_STATUS,
    mlflow_status,
)

__all__ = ["MlflowStatusCallback", "ProgressCallback", "trial_error"]

TRACEBACK_LINES = 60  # the tail of the traceback kept in the run's error.txt


class ProgressCallback(Callback):
    """One line per search every ``interval_s`` seconds and one per finished trial, e.g.::

        [adding/vanilla] 4/10 done, 2 running, 0 failed, 4 pending | best val/mse 0.0123 (trial 00002)
    """

    def __init__(self, label: str, metric: str, mode: str, num_samples: int, interval_s: float = 10.0):
        self.label, self.metric, self.mode = label, metric, mode
        self.num_samples, self.interval_s = num_samples, interval_s
        self._last, self._last_line = 0.0, ""
        self._best: dict[str, float] = {}

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            if trial.trial_id not in self._best or self._better(value, self._best[trial.trial_id]):
                self._best[trial.trial_id] = float(value)

    def line(self, trials) -> str:
        counts = Counter(t.status for t in trials)
        done, failed = counts.get("TERMINATED", 0), counts.get("ERROR", 0)
        running = counts.get("RUNNING", 0)
        pending = max(self.num_samples - done - failed - running, 0)
        text = f"[{self.label}] {done}/{self.num_samples} done, {running} running, {failed} failed, {pending} pending"
        if self._best:
            pick = min if self.mode == "min" else max
            tid = pick(self._best, key=self._best.get)
            text += f" | best {self.metric} {self._best[tid]:.4g} (trial {tid})"
        return text

    def _print(self, text: str) -> None:
        print(text, file=sys.stdout, flush=True)

    def on_step_end(self, iteration, trials, **info):
        if interrupts.stop_requested():  # Tune's counts no longer say what finished (see below)
            return
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            line = self.line(trials)
            if line != self._last_line or now - self._last >= 6 * self.interval_s:  # no repeats
                self._print(line)
                self._last, self._last_line = now, line

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = trial.last_result.get("epoch", "?")
        self._print(f"[{self.label}] trial {trial.trial_id} done after {epochs} epoch(s)")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._print(f"[{self.label}] trial {trial.trial_id} failed; retrying from its last checkpoint")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(f"[{self.label}] trial {trial.trial_id} FAILED (retries exhausted): {trial_error(trial)[0]}")

    def on_experiment_end(self, trials, **info):
        if interrupts.stop_requested():
            # Tune ends an interrupted search's running trials as if they had finished: its counts
            # would read "3/3 done". The driver says next how many runs it marked interrupted.
            self._print(f"[{self.label}] stopped: each trial keeps its last epoch checkpoint for resume=true")
            return
        self._print(self.line(trials))


class MlflowStatusCallback(Callback):
    """Closes the MLflow run of a trial that ended without closing it itself.

    * scheduler-stopped (ASHA): the run is open when Tune completes the trial -> ``stopped_early``;
    * failed after its retries (exception, lost node): -> ``failed``; a trial that failed before
      creating its run gets one, with its params, so no trial is missing from the study.
    """

    def __init__(self, ctx: TrialContext):
        self.ctx = ctx

    def _run(self, trial) -> Any | None:
        from odyssey.sweep import mlflow_runs

        run_id = (trial.last_result or {}).get(RUN_ID_KEY)
        if run_id:
            return mlflow_runs.client(self.ctx.tracking_uri).get_run(run_id)
        return mlflow_runs.find_trial_run(
            self.ctx.tracking_uri, self.ctx.experiment_id, self.ctx.parent_run_id, trial.trial_id
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._guarded(f"close the run of trial {trial.trial_id}", self._close_stopped, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._guarded(f"record the failure of trial {trial.trial_id}", self._record_failure, trial)

    def _guarded(self, what: str, fn, trial) -> None:
        """An outage must not end the Tune loop: retry, and if the sweep gives up (it is being
        stopped), say so; ``resume=true`` reconciles the run."""
        from odyssey.sweep.outage import TrackingDown, guarded

        try:
            guarded(what, fn, trial)
        except TrackingDown as exc:
            print(f"[{self.ctx.plan.task}/{self.ctx.plan.variant}] {exc}", file=sys.stderr, flush=True)

    def _close_stopped(self, trial) -> None:
        from odyssey.sweep import mlflow_runs

        run = self._run(trial)
        if run is None or run.data.tags.get(TAG_STATUS) in STATUSES:
            return  # the trial closed its own run
        mlf = mlflow_runs.client(self.ctx.tracking_uri)
        mlf.set_tag(run.info.run_id, TAG_STATUS, STATUS_STOPPED)
        mlf.set_tag(run.info.run_id, TAG_BUDGET_REACHED, "false")
        mlf.set_terminated(run.info.run_id, status=mlflow_status(STATUS_STOPPED))

    def _record_failure(self, trial) -> None:
        from odyssey.sweep import mlflow_runs

        mlf = mlflow_runs.client(self.ctx.tracking_uri)
        run = self._run(trial)
        if run is None:
            run_id = self._create_failed_run(trial)
        else:
            run_id = run.info.run_id
            if run.data.tags.get(TAG_STATUS) in STATUSES:
                return
        summary, text = trial_error(trial)
        mlf.set_tag(run_id, TAG_STATUS, STATUS_FAILED)
        mlf.set_tag(run_id, TAG_ERROR, summary[:4000])
        if text:
            mlf.log_text(run_id, "\n".join(text.splitlines()[-TRACEBACK_LINES:]) + "\n", ERROR_ARTIFACT)
        mlf.set_terminated(run_id, status=mlflow_status(STATUS_FAILED))

    def _create_failed_run(self, trial) -> str:
        from odyssey.sweep.trainable import params_count, trial_config, trial_run_tags
        from odyssey.tracking import MlflowTrialLogger, trial_run_name

        ctx = self.ctx
        cfg = trial_config(ctx, trial.trial_id, trial.config)
        try:
            count = params_count(cfg, cfg.task.build())
        except Exception:  # noqa: BLE001 - the run must exist even if its config cannot be built
            count = -1
        logger = MlflowTrialLogger.start(
            ctx.tracking_uri, ctx.experiment_name, cfg, tags=trial_run_tags(ctx, cfg, trial.trial_id, count),
            parent_run_id=ctx.parent_run_id, run_name=trial_run_name(ctx.plan.variant, trial.trial_id),
        )  # fmt: skip
        logger.finish(None, STATUS_FAILED)
        return logger.run_id


def trial_error(trial) -> tuple[str, str]:
    """A failed trial's last error: ``("Type: message", full text)``.

    The driver's Tune controller writes each failure to the trial's local ``error.txt`` at once
    (the copy in the storage path may lag behind, which is how a run used to end up with
    "unknown error"); each failure is a block starting with ``Failure # N``, and the text of the
    last block ends with the exception's ``Type: message`` line."""
    text = ""
    path = getattr(trial, "error_file", None)
    try:
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        else:
            text = str(trial.get_error() or "")
    except Exception:  # noqa: BLE001 - best effort, for a message
        text = ""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # Ray colours its task names
    text = re.split(r"^Failure # \d+.*$", text, flags=re.M)[-1].strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "unknown error (Tune recorded no error text)", ""
    typed = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
    return (typed[-1] if typed else lines[-1]), text


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failure|Died)\b.*")
