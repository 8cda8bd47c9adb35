"""One study, one sweep: the study's identity lives in MLflow, on its experiment.

Ray Tune's state sits on one disk (``study.storage_path``); MLflow is what every driver, machine
and ``odyssey analyze`` shares. So the experiment of a study carries, as tags:

* ``odyssey.sweep.storage``: where the sweep's Ray Tune state is (host and absolute path);
* ``odyssey.sweep.budget``: what makes two trials comparable (trials per search, the training
  protocol, the search space, the searcher, the scheduler, the seed), as JSON;
* ``odyssey.lease``: the driver running the study now (id, host, pid, heartbeat), renewed every
  ``HEARTBEAT_S`` while it runs and released at its end.

:func:`claim` checks them before a sweep creates anything:

* a study that has a sweep is refused without ``resume=true``, naming the existing sweep;
* ``resume=true`` continues the recorded sweep: at the recorded storage path if this machine
  sees it, else it says why it cannot; a different budget is refused, naming what differs;
* a study whose lease is held by a live driver is refused (two drivers would run the same
  trials twice: pseudo-replication in the Welch test). A lease is stale once its heartbeat is
  older than ``LEASE_TTL_S``, or at once when its driver was on this host and is gone.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from odyssey.errors import ConfigError, ServiceError
from odyssey.run_schema import TAG_BUDGET, TAG_LEASE, TAG_STORAGE  # experiment tags

__all__ = [
    "Lease", "TAG_BUDGET", "TAG_LEASE", "TAG_STORAGE", "acquire_lease", "budget_of", "claim", "read_lease",
    "release_lease", "renew_lease",
]  # fmt: skip

HEARTBEAT_S = 10.0
LEASE_TTL_S = 60.0
SETTLE_S = 1.5  # after writing the lease, wait this long and read it back: the last writer wins


@dataclass(frozen=True)
class Lease:
    id: str
    host: str
    pid: int
    since: float
    heartbeat: float

    def describe(self, now: float) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"host {self.host}, pid {self.pid}, since {started}, last heartbeat {now - self.heartbeat:.0f} s ago"

    def is_live(self, now: float) -> bool:
        if now - self.heartbeat > LEASE_TTL_S:
            return False
        if self.host == socket.gethostname():
            return _pid_alive(self.pid)
        return True


def budget_of(sweep) -> dict[str, Any]:
    """What must be equal for the trials of two drivers to be one sample (``sweep``: SweepConfig):
    trials per search, each task's training protocol and model, the search space, the searcher,
    the scheduler and the seed. Where trials run (device, eval batch size) may differ."""
    protocol = {}
    for plan in sweep.searches:
        train = {k: v for k, v in asdict(plan.base.train).items() if k not in ("device", "eval_batch_size")}
        protocol.setdefault(plan.task, {"train": train, "model": asdict(plan.base.model)})
    return {
        "num_samples": sweep.study.num_samples,
        "protocol": protocol,
        "search_space": asdict(sweep.space),
        "search": asdict(sweep.search),
        "scheduler": asdict(sweep.scheduler),
        "seed": sweep.seed,
    }


@contextmanager
def claim(sweep, tracking_uri: str, experiment_id: str) -> Iterator[Path]:
    """Check the study's record and lease (module doc), hold the lease while the block runs, and
    yield the storage path to use (the recorded one when resuming)."""
    from odyssey.sweep import mlflow_runs

    mlf = mlflow_runs.client(tracking_uri)
    tags = mlf.get_experiment(experiment_id).tags
    _refuse_if_held(sweep.study.name, read_lease(tags.get(TAG_LEASE)))
    searches = _count_searches(mlf, experiment_id)
    storage = _check_record(sweep, tags, searches)
    lease = acquire_lease(mlf, experiment_id, sweep.study.name)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(mlf, experiment_id, lease, stop), daemon=True, name="odyssey-lease")
    beat.start()
    try:
        if not searches or TAG_STORAGE not in tags:  # a new sweep (or one recorded before these tags)
            mlf.set_experiment_tag(experiment_id, TAG_STORAGE, json.dumps({"host": socket.gethostname(), "path": str(storage)}))
            mlf.set_experiment_tag(experiment_id, TAG_BUDGET, json.dumps(budget_of(sweep), sort_keys=True, default=str))
        yield storage
    finally:
        stop.set()
        beat.join(timeout=5)
        release_lease(mlf, experiment_id, lease)


def _count_searches(mlf, experiment_id: str) -> int:
    from odyssey.run_schema import ROLE_SEARCH, TAG_ROLE

    return len(mlf.search_runs([experiment_id], filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_SEARCH}'", max_results=1000))


def _check_record(sweep, tags: dict[str, str], searches: int) -> Path:
    name = sweep.study.name
    recorded = json.loads(tags[TAG_STORAGE]) if TAG_STORAGE in tags else None
    if not searches:  # nothing ran yet (or a sweep that failed before its first search)
        return sweep.storage_path
    where = f"Ray Tune state at {recorded['path']} on {recorded['host']}" if recorded else "no recorded Ray Tune state"
    if not sweep.resume:
        raise ConfigError(
            f"study {name!r} already has a sweep in MLflow ({searches} search run(s), {where}); continue it "
            "with resume=true, or start a new study with study.name=<new>"
        )
    if recorded is None:  # recorded by an older odyssey: nothing to compare against
        return sweep.storage_path
    old_budget = json.loads(tags.get(TAG_BUDGET, "{}"))
    new_budget = json.loads(json.dumps(budget_of(sweep), sort_keys=True, default=str))
    changed = sorted(_differences(old_budget, new_budget))
    if changed:
        shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
        raise ConfigError(
            f"resume=true: study {name!r} was run with another budget ({shown}); trials of both would be "
            "pooled in one analysis. Resume with the original settings, or start a new study with study.name=<new>"
        )
    path = Path(recorded["path"])
    if path == sweep.storage_path:
        return path
    from ray import tune

    if any(tune.Tuner.can_restore(str(path / name / plan.key)) for plan in sweep.searches):
        print(f"resume: continuing the recorded sweep at {path} (not study.storage_path={sweep.storage_path})", flush=True)
        return path
    raise ConfigError(
        f"resume=true: study {name!r}'s Ray Tune state is recorded at {path} on host {recorded['host']}, which "
        f"this machine cannot see (study.storage_path here: {sweep.storage_path}); resume where that path is "
        f"reachable, or make it reachable here (shared storage) and set study.storage_path={path}"
    )


def _differences(old: Any, new: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            yield from _differences(old.get(key), new.get(key), f"{prefix}{key}.")
    elif old != new:
        yield f"{prefix.rstrip('.')}: {old!r} recorded, {new!r} now"


def read_lease(text: str | None) -> Lease | None:
    if not text:
        return None
    try:
        return Lease(**json.loads(text))
    except (ValueError, TypeError):
        return None


def _refuse_if_held(study: str, held: Lease | None) -> None:
    now = time.time()
    if held is not None and held.is_live(now):
        raise ServiceError(
            f"study {study!r} is being run by another driver ({held.describe(now)}); wait for it to end or stop "
            f"it (Ctrl-C, odyssey stop ID). A driver that died frees the study after {LEASE_TTL_S:.0f} s"
        )


def acquire_lease(mlf, experiment_id: str, study: str) -> Lease:
    now = time.time()
    mine = Lease(uuid.uuid4().hex, socket.gethostname(), os.getpid(), now, now)
    mlf.set_experiment_tag(experiment_id, TAG_LEASE, json.dumps(asdict(mine)))
    time.sleep(SETTLE_S)  # two drivers that both saw a free lease: the last writer wins
    winner = read_lease(mlf.get_experiment(experiment_id).tags.get(TAG_LEASE))
    if winner is None or winner.id != mine.id:
        other = winner.describe(time.time()) if winner else "unknown"
        raise ServiceError(f"study {study!r} was claimed by another driver at the same moment ({other}); not running it twice")
    return mine


def renew_lease(mlf, experiment_id: str, lease: Lease) -> None:
    """A heartbeat of ``lease``; best effort (the server may be away: then the lease expires)."""
    try:
        renewed = Lease(**{**asdict(lease), "heartbeat": time.time()})
        mlf.set_experiment_tag(experiment_id, TAG_LEASE, json.dumps(asdict(renewed)))
    except Exception:  # noqa: BLE001 - the tracking server may be away; the sweep decides
        pass


def _heartbeat(mlf, experiment_id: str, lease: Lease, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        renew_lease(mlf, experiment_id, lease)


def release_lease(mlf, experiment_id: str, lease: Lease) -> None:
    try:
        held = read_lease(mlf.get_experiment(experiment_id).tags.get(TAG_LEASE))
        if held is not None and held.id == lease.id:
            mlf.delete_experiment_tag(experiment_id, TAG_LEASE)
    except Exception:  # noqa: BLE001 - an unreleased lease expires after LEASE_TTL_S
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
