"""Load: hundreds of trials logging to one MLflow tracking server at once (packs, concurrent
searches), on the SQLite backend and on PostgreSQL (what docker/compose.yaml deploys).

Each simulated trial goes through odyssey's own logging path, as ``odyssey.sweep.trainable``
does: ``use_short_http_retries()``, ``MlflowTrialLogger.start`` (under ``call_with_retry``) with
a real ``TrialConfig``, ``logger(EpochReport(...))`` each epoch (one ``log_batch`` flush per
epoch), ``logger.finish(TrialResult, "completed")``. Then every run is read back (from the store
itself, through MLflow's client, so that the check does not load the server it measures): each
``(key, step)`` of its metric history exactly once with the value written, its params, its status
tag and its FINISHED state, and no run too many (a create retried after a timeout makes a second).
The server runs as it should be deployed for many trials (see ``SERVER_ENV`` below).

Trials are threads of this process, each with its own ``MlflowClient`` and its own keep-alive
connection (the HTTP pool is sized to the thread count): the server sees what it sees from a
trial per process, as under Ray. The trials' client-side work (JSON of a few metrics) is small
next to the server's, so the GIL does not hide the server's limits; a process per trial would
need hundreds of interpreters importing MLflow and torch, which a 2-core test machine cannot run
in the test's time. Latencies measured here include the client's GIL waits: an upper bound.

The numbers (sustained metrics/s, slowest flush, failed flushes, the server's 5xx) are printed
(``pytest -s``) and written to ``load-<backend>.json`` in the test's tmp dir. Scale with
``ODYSSEY_LOAD_TRIALS`` (default 200), ``ODYSSEY_LOAD_EPOCHS`` (4), ``ODYSSEY_LOAD_WORKERS``
(the server's worker processes), ``ODYSSEY_LOAD_POOL``, ``ODYSSEY_LOAD_WAL`` (see below),
``ODYSSEY_LOAD_EPOCH_S`` (the most a trial sleeps between epochs, 0.05 s: flat out, far above a
real trial's pace) and ``ODYSSEY_LOAD_DEADLINE_S`` (150).
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from conftest import MlflowBackendServer

TRIALS = int(os.environ.get("ODYSSEY_LOAD_TRIALS", "200"))
EPOCHS = int(os.environ.get("ODYSSEY_LOAD_EPOCHS", "4"))
# The server as it should be deployed for many trials (README, docker/compose.yaml): SQLite has one
# writer, so one worker process (more only wait on its lock); every worker's SQLAlchemy pool
# larger than its 40 request threads, as MLflow's log_batch holds two connections at once (with
# the default pool, 5 + 10, 15 requests take them all and every worker stalls on the pool's
# 30 s timeout). ODYSSEY_LOAD_POOL=default runs MLflow's defaults instead.
WORKERS = {"sqlite": 1, "postgresql": 2}  # PostgreSQL: one per core (2 here; compose: 4)
if os.environ.get("ODYSSEY_LOAD_WORKERS"):
    WORKERS = dict.fromkeys(WORKERS, int(os.environ["ODYSSEY_LOAD_WORKERS"]))
POOL = os.environ.get("ODYSSEY_LOAD_POOL", "80")
SERVER_ENV = {} if POOL == "default" else {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": POOL}
# SQLite in WAL mode (set once on the file, it stays): readers no longer block the writer; here
# 1.6x the requests/s and half the slowest call of the default rollback journal, whose waits
# run into SQLite's 20 s busy timeout ("database is locked") at 200 trials. ODYSSEY_LOAD_WAL=0: off.
WAL = os.environ.get("ODYSSEY_LOAD_WAL", "1") != "0"
EPOCH_S = float(os.environ.get("ODYSSEY_LOAD_EPOCH_S", "0.05"))
DEADLINE_S = float(os.environ.get("ODYSSEY_LOAD_DEADLINE_S", "150"))  # a trial that has not finished by then fails the test (finish gives up)


@dataclass
class TrialLoad:
    index: int
    run_id: str | None = None
    written: dict[tuple[str, int], float] = field(default_factory=dict)  # (key, step) -> value
    params: dict[str, str] = field(default_factory=dict)
    flush_s: list[float] = field(default_factory=list)
    failed_flushes: int = 0  # flushes that found the server unavailable (metrics kept, resent)
    start_retries: int = 0
    finished_at: float = 0.0
    error: BaseException | None = None


def _one_trial(t: TrialLoad, uri: str, experiment: str, parent_run_id: str, base_cfg, task, go: threading.Event):
    from odyssey.tracking import (
        STATUS_COMPLETED, TAG_ROLE, TAG_TRIAL_ID, MlflowTrialLogger, _param_str, call_with_retry, trial_tags,
    )  # fmt: skip
    from odyssey.train import EpochReport, TrialResult

    rng = random.Random(t.index)
    cfg = base_cfg.replace(seed=t.index)
    t.params = {k: _param_str(v) for k, v in cfg.flat_params().items()}
    tags = trial_tags(cfg, primary_metric=task.primary_metric, lower_is_better=task.lower_is_better, params_count=1000 + t.index)
    tags.update({TAG_ROLE: "trial", TAG_TRIAL_ID: f"load_{t.index:05d}"})
    deadline = time.monotonic() + DEADLINE_S
    try:
        go.wait()

        def count_retry(_exc):
            t.start_retries += 1

        logger = call_with_retry(
            MlflowTrialLogger.start, uri, experiment, cfg, tags=tags, parent_run_id=parent_run_id,
            run_name=f"load-{t.index:05d}", on_wait=count_retry,
        )  # fmt: skip
        t.run_id = logger.run_id
        flush = logger.flush

        def timed_flush() -> bool:
            t0 = time.perf_counter()
            ok = flush()
            t.flush_s.append(time.perf_counter() - t0)
            t.failed_flushes += not ok
            return ok

        logger.flush = timed_flush
        best, best_epoch = float("inf"), 0
        for epoch in range(1, EPOCHS + 1):
            time.sleep(rng.uniform(0, EPOCH_S))  # "training"
            metrics = {"train/loss": rng.random(), **{f"val/{m}": rng.random() for m in task.metric_names}}
            improved = metrics[f"val/{task.primary_metric}"] < best
            if improved:
                best, best_epoch = metrics[f"val/{task.primary_metric}"], epoch
            logger(EpochReport(epoch, metrics, best_epoch, improved))
            t.written.update({(k, epoch): float(v) for k, v in metrics.items()})
        result = TrialResult(
            status="completed", stop_reason="max_epochs", epochs=EPOCHS, best_epoch=best_epoch, params_count=1000 + t.index,
            best_val={m: rng.random() for m in task.metric_names}, test={m: rng.random() for m in task.metric_names},
        )  # fmt: skip
        t.written.update({(k, 0): float(v) for k, v in result.final_metrics().items()})
        logger.finish(result, STATUS_COMPLETED, give_up=lambda: time.monotonic() > deadline)
        t.finished_at = time.monotonic()
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        t.error = exc


def _server_statuses(log_text: str) -> Counter:
    """HTTP status codes of the server's access log (uvicorn: '... "POST /api/... HTTP/1.1" 200')."""
    return Counter(m.group(1) for m in re.finditer(r'HTTP/1\.[01]" (\d{3})', log_text))


def run_load(uri: str, store_uri: str, server_log, label: str) -> dict:
    from mlflow import MlflowClient

    from odyssey.config import compose, trial_config
    from odyssey.tasks import build_task
    from odyssey.tracking import TAG_ROLE, get_or_create_experiment

    base_cfg = trial_config(compose("train", []))
    task = build_task(base_cfg.task)
    client = MlflowClient(uri)
    experiment = f"load-{label}"
    exp_id = get_or_create_experiment(client, experiment)  # as a sweep's driver does, with the parent run
    parent = client.create_run(exp_id, tags={TAG_ROLE: "search"}, run_name=f"load-{label}").info.run_id

    trials = [TrialLoad(i) for i in range(TRIALS)]
    go = threading.Event()
    threads = [
        threading.Thread(target=_one_trial, args=(t, uri, experiment, parent, base_cfg, task, go), daemon=True)
        for t in trials
    ]
    for th in threads:
        th.start()
    t0 = time.monotonic()
    go.set()  # all at once: a pack or a search starting its trials
    for th in threads:
        th.join(timeout=max(1.0, t0 + DEADLINE_S + 30 - time.monotonic()))
    wall = max((t.finished_at for t in trials if t.finished_at), default=time.monotonic()) - t0
    client.set_terminated(parent)

    errors = [f"trial {t.index}: {type(t.error).__name__}: {str(t.error)[:300]}" for t in trials if t.error]
    stuck = sum(th.is_alive() for th in threads)
    t_check = time.monotonic()
    problems, orphans = check_runs(MlflowClient(store_uri), exp_id, parent, trials)
    check_s = time.monotonic() - t_check
    flushes = sorted(s for t in trials for s in t.flush_s) or [float("nan")]
    statuses = _server_statuses(server_log.read_text(errors="replace"))
    written = sum(len(t.written) for t in trials)
    stats = {
        "backend": label,
        "trials": TRIALS,
        "epochs": EPOCHS,
        "server_workers": WORKERS[label],
        "server_pool": POOL,
        "sqlite_wal": WAL if label == "sqlite" else None,
        "metrics_written": written,
        "wall_s": round(wall, 2),
        "check_s": round(check_s, 2),
        "metrics_per_s": round(written / wall, 1),
        "flushes": len(flushes),
        "flushes_per_s": round(len(flushes) / wall, 1),
        "flush_p50_s": round(flushes[len(flushes) // 2], 3),
        "flush_p99_s": round(flushes[int(len(flushes) * 0.99)], 3),
        "slowest_flush_s": round(flushes[-1], 3),
        "failed_flushes": sum(t.failed_flushes for t in trials),
        "start_retries": sum(t.start_retries for t in trials),
        "http_requests": sum(statuses.values()),
        "http_5xx": sum(n for code, n in statuses.items() if code.startswith("5")),
        "http_429": statuses.get("429", 0),
        "server_db_locked": server_log.read_text(errors="replace").count("database is locked"),
        "trial_errors": len(errors),
        "run_problems": len(problems),
        "orphan_runs": orphans,
    }
    out = server_log.parent / f"load-{label}.json"
    out.write_text(json.dumps(stats, indent=1))
    print(f"\nmlflow load ({label}): " + json.dumps(stats))
    assert not errors, f"{len(errors)} trial(s) failed under load:\n" + "\n".join(errors[:10])
    assert not stuck, f"{stuck} trial(s) still logging past the deadline"
    assert not problems, f"{len(problems)} problem(s) in the logged runs:\n" + "\n".join(problems[:20])
    return stats


def check_runs(client, exp_id: str, parent: str, trials: list[TrialLoad]) -> tuple[list[str], int]:
    """Every trial's run as written: params, status, each (key, step) once with its value; and
    how many runs no trial knows of (a create that reached the server, retried)."""
    from mlflow.entities import ViewType

    from odyssey.tracking import STATUS_COMPLETED, TAG_STATUS

    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], run_view_type=ViewType.ALL, max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            break
    children = {r.info.run_id: r for r in runs if r.info.run_id != parent}
    problems = []
    extra = set(children) - {t.run_id for t in trials}
    if extra:  # a retried create_run, or MlflowTrialLogger.start retried after it made its run
        problems.append(
            f"{len(extra)} run(s) no trial knows of: create_run calls slower than MLFLOW_HTTP_REQUEST_TIMEOUT, "
            "re-sent by MLflow's HTTP retries (each made a run; MlflowTrialLogger.start keeps the last)"
        )

    def check(t: TrialLoad) -> list[str]:
        run = children.get(t.run_id)
        if run is None:
            return [f"trial {t.index}: run {t.run_id} missing"]
        out = []
        if run.info.status != "FINISHED" or run.data.tags.get(TAG_STATUS) != STATUS_COMPLETED:
            out.append(f"trial {t.index}: status {run.info.status}/{run.data.tags.get(TAG_STATUS)}")
        if run.data.params != t.params:
            out.append(f"trial {t.index}: params differ: {set(run.data.params.items()) ^ set(t.params.items())}")
        for key in sorted({k for k, _ in t.written} | set(run.data.metrics)):
            history = client.get_metric_history(t.run_id, key)
            steps = Counter(m.step for m in history)
            dup = sorted(s for s, n in steps.items() if n > 1)
            if dup:
                out.append(f"trial {t.index}: {key} steps {dup} logged more than once")
            for m in history:
                if (key, m.step) in t.written and m.value != t.written[(key, m.step)]:
                    out.append(f"trial {t.index}: {key}@{m.step} = {m.value}, wrote {t.written[(key, m.step)]}")
            lost = sorted(s for k, s in t.written if k == key and s not in steps)
            if lost:
                out.append(f"trial {t.index}: {key} steps {lost} lost")
        return out

    with ThreadPoolExecutor(8) as pool:
        for found in pool.map(check, trials):
            problems += found
    return problems, len(extra)


@pytest.fixture
def load_env(monkeypatch):
    """What a trial process has: MLflow's short HTTP retries (``use_short_http_retries``), and
    here an HTTP pool as large as the number of trials (one connection each, as a process has)."""
    from odyssey.tracking import SHORT_HTTP_RETRIES

    for key, value in SHORT_HTTP_RETRIES.items():
        monkeypatch.setenv(key, os.environ.get(key, value))
    monkeypatch.setenv("MLFLOW_HTTP_POOL_MAXSIZE", str(TRIALS + 8))
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from mlflow.utils.request_utils import _cached_get_request_session

    _cached_get_request_session.cache_clear()  # sessions made before take the new pool size
    yield
    _cached_get_request_session.cache_clear()


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_many_trials_log_at_once(backend, request, tmp_path, load_env):
    if backend == "sqlite":
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        if WAL:
            import sqlite3

            with sqlite3.connect(tmp_path / "mlflow.db") as db:  # before MLflow creates its tables
                assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    else:
        uri = request.getfixturevalue("postgres_cluster").url
    t0 = time.monotonic()
    server = MlflowBackendServer(tmp_path, uri, workers=WORKERS[backend], env=SERVER_ENV).start()
    print(f"\nmlflow server ({backend}) up in {time.monotonic() - t0:.1f}s")
    try:
        stats = run_load(server.uri, uri, tmp_path / "server.log", backend)
    finally:
        server.stop()
    assert stats["metrics_written"] >= TRIALS * (EPOCHS + 1)


def test_flush_backs_off_and_resends_once():
    """A failed flush keeps its metrics and sends nothing until its backoff has passed; then the
    whole buffer goes as one batch. A server out of pool connections counts as unavailable."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST, INVALID_PARAMETER_VALUE

    from odyssey.tracking import MlflowTrialLogger, tracking_unavailable
    from odyssey.train import EpochReport

    class Client:
        def __init__(self):
            self.calls, self.fail = [], 1

        def log_batch(self, run_id, metrics=()):
            self.calls.append(list(metrics))
            if self.fail:
                self.fail -= 1
                raise MlflowException(  # what the server answers when its pool ran dry: 400
                    "QueuePool limit of size 5 overflow 10 reached, connection timed out, timeout 30.00", BAD_REQUEST
                )

    client = Client()
    logger = MlflowTrialLogger(client, "run")
    logger(EpochReport(1, {"train/loss": 1.0}, 1, True))  # fails: buffered, backoff starts
    assert len(client.calls) == 1 and logger.state()["pending"] and logger.unavailable_since is not None
    logger(EpochReport(2, {"train/loss": 0.5}, 2, True))  # within the backoff: no request
    assert len(client.calls) == 1 and len(logger.state()["pending"]) == 2
    logger._retry_at = 0.0  # the backoff has passed
    assert logger.flush() and not logger.state()["pending"] and logger.unavailable_since is None
    assert [(m.key, m.step) for m in client.calls[-1]] == [("train/loss", 1), ("train/loss", 2)]
    assert client.calls[0][0] is client.calls[-1][0]  # the same Metric (timestamp kept): stored once
    assert tracking_unavailable(MlflowException("(psycopg2.OperationalError) FATAL: sorry, too many clients already"))
    assert not tracking_unavailable(MlflowException("Changing param values is not allowed", INVALID_PARAMETER_VALUE))
