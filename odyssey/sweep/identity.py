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
from odyssey.run_schema import TAG_BUDGET, TAG_EXTENSIONS, TAG_LEASE, TAG_STORAGE, record_differences  # experiment tags

__all__ = [
    "Lease", "TAG_BUDGET", "TAG_LEASE", "TAG_STORAGE", "acquire_lease", "budget_of", "claim", "existing_study_note", "extension_number", "refuse_if_running",
    "read_lease", "release_lease", "renew_lease", "search_budget",
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


def search_budget(sweep, plan) -> dict[str, Any]:
    """What one search's trials are comparable by (``sweep``: SweepConfig, ``plan``: its
    SearchPlan): the task's identity (its keys but paths, cache and progress switches), the model,
    the training protocol (but where trials run: device, eval batch size), the search space, the
    searcher, the scheduler, the seed and the trials per search. Recorded on the search's parent
    run, where ``odyssey analyze`` compares the searches of a task."""
    train = {k: v for k, v in asdict(plan.base.train).items() if k not in ("device", "eval_batch_size")}
    return _plain({
        "task": plan.base.task.identity(),
        "model": asdict(plan.base.model),
        "train": train,
        "num_samples": sweep.study.num_samples,
        "search_space": asdict(sweep.space),
        "search": asdict(sweep.search),
        "scheduler": asdict(sweep.scheduler),
        "seed": sweep.seed,
    })  # fmt: skip


def budget_of(sweep) -> dict[str, Any]:
    """The study's record (``sweep``: SweepConfig): every key that changes what a trial computes or
    how it is scored, per task (:func:`search_budget`), the variants' switches, and the study-wide
    keys. A resume must match it; ``study.extend=true`` may add variants."""
    protocol, variants = {}, {}
    for plan in sweep.searches:
        budget = search_budget(sweep, plan)
        protocol.setdefault(plan.task, {k: budget[k] for k in ("task", "train", "model")})
        variants[plan.variant] = plan.base.variant.switches()
    return _plain({
        "num_samples": sweep.study.num_samples,
        "protocol": protocol,
        "variants": variants,
        "search_space": asdict(sweep.space),
        "search": asdict(sweep.search),
        "scheduler": asdict(sweep.scheduler),
        "seed": sweep.seed,
    })  # fmt: skip


def _plain(value: Any) -> Any:
    """``value`` as the JSON a tag holds and gives back (tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@contextmanager
def claim(sweep, tracking_uri: str, experiment_id: str) -> Iterator[Path]:
    """Check the study's record and lease (module doc), hold the lease while the block runs, and
    yield the storage path to use (the recorded one when resuming)."""
    from odyssey.sweep import mlflow_runs

    mlf = mlflow_runs.client(tracking_uri)
    tags = mlf.get_experiment(experiment_id).tags
    _refuse_if_held(sweep.study.name, read_lease(tags.get(TAG_LEASE)))
    searches = _recorded_searches(mlf, experiment_id)
    storage, added = _check_record(sweep, tags, searches)
    lease = acquire_lease(mlf, experiment_id, sweep.study.name)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(mlf, experiment_id, lease, stop), daemon=True, name="odyssey-lease")
    beat.start()
    try:
        if not searches or TAG_STORAGE not in tags:  # a new sweep (or one recorded before these tags)
            mlf.set_experiment_tag(experiment_id, TAG_STORAGE, json.dumps({"host": socket.gethostname(), "path": str(storage)}))
            mlf.set_experiment_tag(experiment_id, TAG_BUDGET, json.dumps(budget_of(sweep), sort_keys=True))
        elif added:
            _record_extension(mlf, experiment_id, tags, sweep, added)
        yield storage
    finally:
        stop.set()
        beat.join(timeout=5)
        release_lease(mlf, experiment_id, lease)


def refuse_if_running(tracking_uri: str, study: str) -> None:
    """Refuse a study another live driver holds, reading its experiment only (nothing is created):
    the first thing a sweep checks, so that this is what a second driver hears."""
    from odyssey.sweep import mlflow_runs

    exp = mlflow_runs.client(tracking_uri).get_experiment_by_name(study)
    if exp is not None:
        _refuse_if_held(study, read_lease(exp.tags.get(TAG_LEASE)))


def existing_study_note(sweep) -> str | None:
    """One line when the study already has a sweep in its tracking store (what a run without
    ``resume=true`` would refuse), else None; best effort: a store that cannot be read says nothing
    (``odyssey sweep --dry-run`` and ``describe()`` must not need the tracking server)."""
    from pathlib import Path

    uri = sweep.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return None
    try:
        from odyssey.run_schema import check_store
        from odyssey.sweep import mlflow_runs

        check_store(uri, existing=True, timeout=2.0)
        mlf = mlflow_runs.client(uri)
        exp = mlf.get_experiment_by_name(sweep.study.name)
        searches = _recorded_searches(mlf, exp.experiment_id) if exp is not None and exp.lifecycle_stage == "active" else []
    except Exception:  # noqa: BLE001 - an unreadable store is the real run's to report
        return None
    if not searches:
        return None
    shown = ", ".join(sorted(f"{t}/{v}" for t, v in searches))
    return (
        f"study {sweep.study.name!r} already exists in MLflow ({len(searches)} search run(s): {shown}): running it again "
        "is refused; continue it with resume=true, add variants with study.extend=true, or pick another study.name"
    )


def _recorded_searches(mlf, experiment_id: str) -> list[tuple[str, str]]:
    """The (task, variant) of every search run the study has."""
    from odyssey.run_schema import ROLE_SEARCH, TAG_ROLE, TAG_TASK, TAG_VARIANT

    runs = mlf.search_runs([experiment_id], filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_SEARCH}'", max_results=5000)
    return [(r.data.tags.get(TAG_TASK, "?"), r.data.tags.get(TAG_VARIANT, "?")) for r in runs]


def _check_record(sweep, tags: dict[str, str], searches: list[tuple[str, str]]) -> tuple[Path, list[str]]:
    """The storage path to use and the variants an extension adds; or a ConfigError naming why
    the study's record refuses this sweep (no resume, another budget, other variants or tasks)."""
    name = sweep.study.name
    recorded = json.loads(tags[TAG_STORAGE]) if TAG_STORAGE in tags else None
    if not searches:  # nothing ran yet (or a sweep that failed before its first search)
        return sweep.storage_path, []
    where = f"Ray Tune state at {recorded['path']} on {recorded['host']}" if recorded else "no recorded Ray Tune state"
    if not sweep.resume:
        raise ConfigError(
            f"study {name!r} already has a sweep in MLflow ({len(searches)} search run(s), {where}); continue it "
            "with resume=true, add variants with study.extend=true, or start a new study with study.name=<new>"
        )
    if recorded is None:  # recorded by an older odyssey: nothing to compare against
        return sweep.storage_path, []
    old = json.loads(tags.get(TAG_BUDGET, "{}"))
    new = budget_of(sweep)
    added = _check_variants_and_tasks(sweep, old, new, searches)
    changed = record_differences(
        {k: v for k, v in old.items() if k != "variants"}, {k: v for k, v in new.items() if k != "variants"}, only_recorded=True
    )
    if changed:
        verb = "extended" if sweep.study.extend else "resumed"
        raise ConfigError(
            f"resume=true: study {name!r} was run with another budget ({'; '.join(changed)}); trials of both "
            f"would be pooled in one analysis, so it cannot be {verb} with these settings. Use the recorded "
            "settings, or start a new study with study.name=<new>"
        )
    path = Path(recorded["path"])
    if path == sweep.storage_path:
        return path, added
    from ray import tune

    if any(tune.Tuner.can_restore(str(path / name / plan.key)) for plan in sweep.searches):
        print(f"resume: continuing the recorded sweep at {path} (not study.storage_path={sweep.storage_path})", flush=True)
        return path, added
    if added and len(added) == len({p.variant for p in sweep.searches}):
        return path, added  # only new searches: they start at the recorded path
    raise ConfigError(
        f"resume=true: study {name!r}'s Ray Tune state is recorded at {path} on host {recorded['host']}, which "
        f"this machine cannot see (study.storage_path here: {sweep.storage_path}); resume where that path is "
        f"reachable, or make it reachable here (shared storage) and set study.storage_path={path}"
    )


def _check_variants_and_tasks(sweep, old: dict, new: dict, searches: list[tuple[str, str]]) -> list[str]:
    """The variants ``study.extend=true`` adds (``[]`` for a plain resume); refuses other tasks,
    other variants without ``study.extend``, and a variant whose switches changed."""
    name = sweep.study.name
    old_tasks = sorted(old.get("protocol") or {t for t, _ in searches})
    new_tasks = sorted(new["protocol"])
    if old_tasks != new_tasks:
        raise ConfigError(
            f"resume=true: study {name!r} recorded the task(s) {old_tasks}, this sweep has {new_tasks}; a study's "
            f"tasks are fixed (its variants are compared per task): use study.tasks={_listed(old_tasks)}, or start "
            "a new study with study.name=<new> for another task"
        )
    old_variants = old.get("variants") or {v: None for _, v in searches}
    new_variants = new["variants"]
    changed = [
        d for v in sorted(set(old_variants) & set(new_variants)) if old_variants[v] is not None
        for d in record_differences(old_variants[v], new_variants[v], f"variant {v}: ")
    ]  # fmt: skip
    if changed:
        raise ConfigError(
            f"resume=true: study {name!r} recorded other switches for its variant(s) ({'; '.join(changed)}): its "
            "trials trained other cells. Restore the variant file, or give the new variant a new name"
        )
    added = [v for v in new_variants if v not in old_variants]
    missing = [v for v in old_variants if v not in new_variants]
    if sweep.study.extend:
        return added
    if added or missing:
        parts = ([f"not in the record: {added}"] if added else []) + ([f"recorded but not listed: {missing}"] if missing else [])
        raise ConfigError(
            f"resume=true: study {name!r} recorded the variants {_listed(old_variants)}; this sweep lists "
            f"{_listed(new_variants)} ({'; '.join(parts)}). Resume with study.variants={_listed(old_variants)}, or "
            "add variants to the finished study with study.extend=true (the recorded budget and tasks; the record says so)"
        )
    return []


def _listed(names) -> str:
    return "[" + ",".join(names) + "]"


def _record_extension(mlf, experiment_id: str, tags: dict[str, str], sweep, added: list[str]) -> None:
    """Add the extension's variants to the study's record, and the extension to its list."""
    budget = json.loads(tags.get(TAG_BUDGET, "{}"))
    budget.setdefault("variants", {}).update({v: s for v, s in budget_of(sweep)["variants"].items() if v in added})
    extensions = json.loads(tags.get(TAG_EXTENSIONS, "[]"))
    extensions.append({"variants": added, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "overrides": list(sweep.overrides)})
    mlf.set_experiment_tag(experiment_id, TAG_BUDGET, json.dumps(budget, sort_keys=True))
    mlf.set_experiment_tag(experiment_id, TAG_EXTENSIONS, json.dumps(extensions))
    searches = ", ".join(f"{p.task}/{p.variant}" for p in sweep.searches if p.variant in added)
    print(
        f"study.extend: adding the search(es) {searches} to study {sweep.study.name!r} with its recorded budget and "
        f"tasks (extension {len(extensions)}, recorded on the study and on the new searches' runs)",
        flush=True,
    )


def extension_number(tags: dict[str, str]) -> int:
    """How many extensions the study's experiment tags record (0: none)."""
    return len(json.loads(tags.get(TAG_EXTENSIONS, "[]")))


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
