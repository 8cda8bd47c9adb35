"""``odyssey clean STUDY``: free the disk space a finished study no longer needs.

What a sweep leaves on disk, and what this command does with it:

* ``<storage>/<study>/<task>__<variant>/<trial>/checkpoint_NNNNNN/``: each trial's last checkpoint
  (``trainer.pt``: model and optimizer state, about 8 bytes per parameter; ``odyssey.json``: the
  MLflow run id, and metrics an MLflow outage kept from the server: such a checkpoint is kept).
  Only ``resume=true`` reads them, and only for trials that are not finished. **Removed** for
  every trial that is finished in Tune's state (``TERMINATED``) *and* in MLflow (``completed``,
  ``stopped_early``, ``diverged``). Kept for failed trials: ``resume=true`` retries them from it.
* Tune's experiment state (``experiment_state-*.json``, ``tuner.pkl``, the searcher's state) and
  each trial's ``params.json``/``params.pkl``/``result.json``/``progress.csv``/TensorBoard
  events: **kept**. ``resume=true`` restores the experiment from them (and then runs nothing
  again), Tune's ``ExperimentAnalysis`` and TensorBoard read them, and they are a record of every
  trial that does not depend on the tracking store. They are small (a few kB per trial and
  about 2 kB per epoch). ``odyssey analyze`` reads MLflow only, and MLflow holds every metric.
* ``--logs``: the Ray session directories (``<ray temp dir>/session_*``: logs, dashboards'
  metrics, the unpacked ``odyssey`` package, Tune's staging copy of the results; about 2.3 MB
  each) of *this study's own local runtimes* on this host. A session is removed only when
  all of these hold (else it is left, and said so when it holds the study's trials):

  - it was started by one driver for itself (``ray.init`` without a cluster): its only driver
    log is ``python-core-driver-*_<pid>.log`` with the pid in the session's name, and it ran no
    Ray Job;
  - it ran this study only: every Tune experiment it staged (``artifacts/<time>/<search>/``)
    is a search of this study whose trial folders all exist in the study's storage;
  - it is over: no process on this host has the session's path on its command line (Ray's
    GCS, raylet, dashboard and agents do while it runs), as its working directory or in an open
    file (the dashboard's modules and the workers hold their logs open); nothing in it changed
    for ``QUIET_S`` seconds; and it started before the study's last search ended.

  A cluster's sessions (``ray start``) serve every job on it and live as long as the cluster:
  they are never removed here (see the README).

Safety: the study must be finished (no live driver lease on its MLflow experiment, no search
``running`` or ``interrupted``), else nothing is touched; while deleting, this command holds the
study's lease so that no driver can start on it. Only ``checkpoint_*`` folders directly inside a
trial folder that Tune's state lists, within ``<storage>/<study>/``, holding only the files a
trial checkpoint has, are deleted; no symbolic link is followed (nor deleted); and nothing that
lies in (or contains) a local MLflow artifact location or tracking store is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence
from urllib.parse import urlparse
from urllib.request import url2pathname

from odyssey.errors import ConfigError
from odyssey.run_schema import ROLE_SEARCH, ROLE_TRIAL, TAG_OVERRIDES, TAG_SEARCH_KEY, check_store
from odyssey.sweep.trainable import META_FILE, PENDING_KEY, STATE_FILE
from odyssey.tracking import (
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    STATUS_INTERRUPTED,
    STATUS_RUNNING,
    STATUS_STOPPED,
    TAG_STATUS,
    TAG_TASK,
    TAG_TRIAL_ID,
    TAG_VARIANT,
)

__all__ = ["CleanReport", "StudyNotFinished", "clean_main", "clean_study", "plan_checkpoints", "plan_sessions", "remove_planned"]

# Trials whose checkpoints no resume will read: final in MLflow, and not retried by resume=true
# (which resumes errored trials: STATUS_FAILED keeps its checkpoint).
REMOVABLE_STATUSES = (STATUS_COMPLETED, STATUS_STOPPED, STATUS_DIVERGED)
UNFINISHED_SEARCH_STATUSES = (STATUS_RUNNING, STATUS_INTERRUPTED)
TUNE_TERMINATED = "TERMINATED"
# What a trial checkpoint holds (odyssey.sweep.trainable), plus Tune's own metadata files.
CHECKPOINT_FILES = frozenset({STATE_FILE, META_FILE, ".metadata.json", ".metadata.pkl"})
SESSION_NAME = re.compile(r"^session_(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})_(\d+)_(\d+)$")
DRIVER_LOG = re.compile(r"^python-core-driver-[0-9a-f]+_(\d+)\.log$")
PAGE = 1000
# A session written to this recently may still be shutting down (or used by a process whose files
# this user cannot see): left alone.
QUIET_S = 60.0


class StudyNotFinished(ConfigError):
    """The study is running or can still be resumed: its checkpoints are needed."""


@dataclass
class Item:
    """One folder to remove."""

    path: Path
    bytes: int
    kind: str  # "checkpoint" | "session"
    search: str = ""  # the search key, for checkpoints


@dataclass
class CleanReport:
    removed: list[Item] = field(default_factory=list)  # removed, or to be removed (dry run)
    kept: list[tuple[Path, str]] = field(default_factory=list)  # (path, why): the ones worth telling
    failed: list[tuple[Item, str, int]] = field(default_factory=list)  # (item, why, bytes left behind)
    kept_results_bytes: int = 0  # Tune's experiment state and per-trial results, kept
    dry_run: bool = False

    @property
    def freed(self) -> int:
        """Bytes freed (a dry run: the bytes it would free)."""
        return sum(i.bytes for i in self.removed) - sum(left for _, _, left in self.failed)

    def count(self, kind: str) -> int:
        failed = {id(item) for item, _, _ in self.failed}
        return sum(1 for i in self.removed if i.kind == kind and id(i) not in failed)


# --------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="odyssey clean",
        description="Remove what a finished study no longer needs: the trials' checkpoints (and with "
        "--logs this study's finished local Ray sessions). MLflow and Tune's small result files are kept.",
    )
    p.add_argument("study", help="study name (= MLflow experiment name)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlruns.db)")
    p.add_argument("--storage-path", default=None, help="the study.storage_path the sweep used (default: the one recorded on the study's MLflow experiment)")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")
    p.add_argument("--logs", action="store_true", help="also remove this study's finished local Ray sessions (logs) on this host")
    p.add_argument("--ray-temp-dir", default=None, help="where Ray keeps its sessions (default: $RAY_TMPDIR/ray, else $TMPDIR/ray, else /tmp/ray)")
    return p


def clean_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    from odyssey.run_schema import default_tracking_uri

    clean_study(
        args.study,
        tracking_uri=args.tracking_uri or default_tracking_uri(),
        storage_path=args.storage_path,
        dry_run=args.dry_run,
        logs=args.logs,
        ray_temp_dir=args.ray_temp_dir,
    )
    return 0


# --------------------------------------------------------------------------------------------
# The study, read from MLflow


def clean_study(
    study: str,
    *,
    tracking_uri: str,
    storage_path: str | os.PathLike | None = None,
    dry_run: bool = False,
    logs: bool = False,
    ray_temp_dir: str | os.PathLike | None = None,
    out: Callable[[str], None] | None = None,
) -> CleanReport:
    """Plan, print and (unless ``dry_run``) carry out the clean-up of finished study ``study``.

    Raises:
        StudyNotFinished: a live driver holds the study, or a search is running or interrupted.
        ConfigError: no such study, no sweep, or no Ray Tune state where it should be.
        ServiceError: the tracking server cannot be reached.
    """
    from odyssey.sweep import identity, mlflow_runs

    say = out or (lambda line: print(line, flush=True))
    check_store(tracking_uri, existing=True)
    mlf = mlflow_runs.client(tracking_uri)
    exp = mlf.get_experiment_by_name(study)
    if exp is None:
        names = sorted(e.name for e in mlf.search_experiments())
        raise ConfigError(f"no study named {study!r} at {tracking_uri}; studies there: {', '.join(names) or '(none)'}")
    parents = mlflow_runs.runs_with_role(mlf, exp.experiment_id, ROLE_SEARCH, page_size=PAGE)
    if not parents:
        raise ConfigError(f"study {study!r} has no sweep in MLflow ({tracking_uri}): nothing to clean")
    _refuse_unfinished(study, exp.tags, parents)
    base = _storage_base(study, exp.tags, parents, storage_path)

    lease = None
    if not dry_run:  # hold the study while deleting: no driver can start (or resume) it meanwhile
        lease = identity.acquire_lease(mlf, exp.experiment_id, study)
    try:
        if lease is not None:  # re-read under the lease: a driver may have run in between
            exp = mlf.get_experiment(exp.experiment_id)
            parents = mlflow_runs.runs_with_role(mlf, exp.experiment_id, ROLE_SEARCH, page_size=PAGE)
            _refuse_unfinished(study, {k: v for k, v in exp.tags.items() if k != identity.TAG_LEASE}, parents)
        trials = mlflow_runs.runs_with_role(mlf, exp.experiment_id, ROLE_TRIAL, page_size=PAGE)
        protected = _protected_paths(tracking_uri, exp, [*parents, *trials])
        statuses = _trial_statuses(parents, trials)
        report = plan_checkpoints(base, statuses, protected=protected)
        report.dry_run = dry_run
        if logs:
            end = max((p.info.end_time or 0) for p in parents) / 1000.0
            temp = Path(ray_temp_dir) if ray_temp_dir else default_ray_temp_dir()
            sessions = plan_sessions(temp, base, list(statuses), study_end=end, protected=[*protected, base])
            report.removed += sessions.removed
            report.kept += sessions.kept
        _print_plan(say, study, tracking_uri, base, report, logs)
        if not dry_run:
            remove_planned(report, base, keep_alive=lambda: identity.renew_lease(mlf, exp.experiment_id, lease))
    finally:
        if lease is not None:
            identity.release_lease(mlf, exp.experiment_id, lease)
    _print_total(say, report)
    return report


def _search_key(run) -> str:
    tags = run.data.tags
    return tags.get(TAG_SEARCH_KEY) or f"{tags.get(TAG_TASK)}__{tags.get(TAG_VARIANT)}"


def _refuse_unfinished(study: str, tags: dict[str, str], parents: list) -> None:
    """One line naming everything that makes the study unfinished."""
    from odyssey.sweep import identity

    problems = []
    now = time.time()
    lease = identity.read_lease(tags.get(identity.TAG_LEASE))
    if lease is not None and lease.is_live(now):
        problems.append(f"a driver is running it ({lease.describe(now)})")
    unfinished = [p for p in parents if p.data.tags.get(TAG_STATUS, STATUS_RUNNING) in UNFINISHED_SEARCH_STATUSES]
    if unfinished:
        names = ", ".join(
            f"{p.data.tags.get(TAG_TASK)}/{p.data.tags.get(TAG_VARIANT)} ({p.data.tags.get(TAG_STATUS, STATUS_RUNNING)})"
            for p in sorted(unfinished, key=_search_key)
        )
        problems.append(f"search(es) {names} not finished")
    if not problems:
        return
    overrides = next((p.data.tags.get(TAG_OVERRIDES) for p in unfinished if p.data.tags.get(TAG_OVERRIDES)), None)
    if unfinished:
        if overrides is not None:
            kept = [o for o in overrides.split() if not o.startswith(("resume=", "+resume="))]
            how = f"finish it first with `odyssey sweep {' '.join(kept)} resume=true`"
        else:
            how = "finish it first with resume=true"
        if lease is not None and lease.is_live(now):
            how = "wait for the driver to end (or stop it), then " + how.replace("finish it first", "finish it")
    else:
        how = "wait for the driver to end, or stop it (Ctrl-C, odyssey stop ID)"
    raise StudyNotFinished(
        f"study {study!r} is not finished: {'; '.join(problems)}; its checkpoints are what resume=true needs, "
        f"so nothing was removed. {how[0].upper()}{how[1:]}, then run odyssey clean again"
    )


def _storage_base(study: str, tags: dict[str, str], parents: list, given) -> Path:
    """``<storage>/<study>``: the given storage path, else the one recorded on the experiment."""
    from odyssey.sweep.identity import TAG_STORAGE

    recorded = json.loads(tags[TAG_STORAGE]) if TAG_STORAGE in tags else None
    where = f"{recorded['path']} on host {recorded['host']}" if recorded else "not recorded"
    keys = sorted({_search_key(p) for p in parents})
    if given is not None:
        base = Path(given).expanduser().resolve() / study
    elif recorded is None:
        raise ConfigError(f"study {study!r} has no recorded Ray Tune storage path; pass --storage-path (the sweep's study.storage_path)")
    else:
        base = Path(recorded["path"]) / study
    if not any(any((base / key).glob("experiment_state-*.json")) for key in keys):
        hint = " (the recorded host is another machine: run odyssey clean there, or pass --storage-path)" if (
            recorded and recorded["host"] != socket.gethostname()
        ) else ""  # fmt: skip
        raise ConfigError(
            f"no Ray Tune state of study {study!r} at {base} (searches {', '.join(keys)}; recorded storage: "
            f"{where}){hint}; nothing to clean there"
        )
    return Path(os.path.realpath(base))


def _trial_statuses(parents: list, trials: list) -> dict[str, dict[str, str]]:
    """search key -> {Ray trial id -> MLflow odyssey.status} (missing status: running)."""
    by_parent = {p.info.run_id: _search_key(p) for p in parents}
    statuses: dict[str, dict[str, str]] = {key: {} for key in by_parent.values()}
    for t in trials:
        key = by_parent.get(t.data.tags.get("mlflow.parentRunId"))
        trial_id = t.data.tags.get(TAG_TRIAL_ID)
        if key is not None and trial_id:
            statuses[key][trial_id] = t.data.tags.get(TAG_STATUS, STATUS_RUNNING)
    return statuses


def _protected_paths(tracking_uri: str, exp, runs: list) -> list[Path]:
    """Local paths MLflow holds: the tracking store (SQLite file, file store) and every local
    artifact location (the experiment's, each run's). Remote and proxied (``mlflow-artifacts:``)
    stores are not on this machine's paths we could delete."""
    uris = {tracking_uri, exp.artifact_location, *(r.info.artifact_uri for r in runs)}
    paths = {p for p in map(_local_path, uris) if p is not None}
    return sorted(paths)


def _local_path(uri: str | None) -> Path | None:
    if not uri:
        return None
    if uri.startswith("sqlite:///"):
        return Path(os.path.realpath(uri[len("sqlite:///"):]))
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(os.path.realpath(url2pathname(parsed.path)))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and sys.platform == "win32"):
        return Path(os.path.realpath(uri))
    return None


# --------------------------------------------------------------------------------------------
# Planning (pure: the filesystem and the statuses given; testable without MLflow or Ray)


def plan_checkpoints(base: Path, statuses: dict[str, dict[str, str]], *, protected: Iterable[Path] = ()) -> CleanReport:
    """The ``checkpoint_*`` folders of finished trials under ``base`` (``<storage>/<study>``).

    ``statuses``: search key -> {trial id -> MLflow status}. A trial's checkpoints are removed
    when Tune's newest experiment state lists the trial as ``TERMINATED`` and MLflow's status is
    one of ``REMOVABLE_STATUSES``."""
    base = Path(os.path.realpath(base))
    protected = [Path(os.path.realpath(p)) for p in protected]
    report = CleanReport()
    for key in sorted(statuses):
        search = base / key
        if not _is_real_dir(search):
            if os.path.lexists(search):
                report.kept.append((search, "a symbolic link or not a folder: not followed"))
            continue
        tune_trials = _tune_trials(search)
        listed = set()
        for trial_id, tune_status, logdir in tune_trials:
            listed.add(logdir)
            if not _plain_name(logdir):
                report.kept.append((search / str(logdir), "an unexpected trial folder name in Tune's state"))
                continue
            trial = search / logdir
            if not _is_real_dir(trial):
                if os.path.lexists(trial):
                    report.kept.append((trial, "a symbolic link or not a folder: not followed"))
                continue
            checkpoints = sorted(p for p in trial.iterdir() if p.name.startswith("checkpoint_"))
            if not checkpoints:
                continue
            mlflow_status = statuses[key].get(trial_id)
            why = None
            if tune_status != TUNE_TERMINATED:
                why = f"Tune status {tune_status}" + (": resume=true retries it from this checkpoint" if tune_status == "ERROR" else "")
            elif mlflow_status not in REMOVABLE_STATUSES:
                why = f"MLflow status {mlflow_status or 'unknown (no run)'}"
            for ckpt in checkpoints:
                if why is None:
                    problem = _unsafe_checkpoint(ckpt, base, protected)
                    if problem is None:
                        report.removed.append(Item(ckpt, _tree_bytes(ckpt), "checkpoint", key))
                        continue
                    report.kept.append((ckpt, problem))
                else:
                    report.kept.append((ckpt, f"trial {trial_id}: {why}"))
        for entry in sorted(search.iterdir()):
            if entry.name not in listed and _is_real_dir(entry) and any(p.name.startswith("checkpoint_") for p in entry.iterdir()):
                report.kept.append((entry, "a trial folder Tune's state does not list: left alone"))
        report.kept_results_bytes += _tree_bytes(search, skip_checkpoints_below=1)
    return report


def _tune_trials(search: Path) -> list[tuple[str, str, str]]:
    """(trial id, Tune status, trial folder) of every trial in the newest experiment state (the
    one ``Tuner.restore`` reads: the greatest file name, ray/tune/execution/experiment_state.py)."""
    states = sorted(p for p in search.glob("experiment_state-*.json") if p.is_file() and not p.is_symlink())
    if not states:
        return []
    try:
        data = json.loads(states[-1].read_text())
        trials = []
        for entry in data["trial_data"]:
            info = json.loads(entry[0])
            trials.append((str(info["trial_id"]), str(info["status"]), str(info["relative_logdir"])))
        return trials
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ConfigError(f"cannot read Ray Tune's experiment state {states[-1]} ({type(exc).__name__}: {exc}); nothing was removed") from None


def _unsafe_checkpoint(ckpt: Path, base: Path, protected: list[Path]) -> str | None:
    """Why ``ckpt`` must not be deleted, or None: a real folder inside ``base`` holding only the
    files of a trial checkpoint, apart from anything MLflow holds."""
    if not _is_real_dir(ckpt):
        return "a symbolic link or not a folder: not followed"
    real = Path(os.path.realpath(ckpt))
    if base not in real.parents:
        return f"outside {base}"
    clash = next((p for p in protected if _overlap(real, p)), None)
    if clash is not None:
        return f"MLflow holds {clash}: never deleted"
    for entry in ckpt.iterdir():
        if entry.is_symlink() or not entry.is_file() or entry.name not in CHECKPOINT_FILES:
            return f"holds {entry.name!r}, which is not a trial checkpoint's (expected only {', '.join(sorted(CHECKPOINT_FILES))})"
    meta = ckpt / META_FILE
    if meta.is_file():  # metrics an MLflow outage kept from the server travel in the checkpoint
        try:
            pending = (json.loads(meta.read_text()).get(PENDING_KEY) or {}).get("pending") or []
        except (ValueError, AttributeError, OSError) as exc:
            return f"its {META_FILE} cannot be read ({type(exc).__name__}), so it may hold metrics MLflow lacks"
        if pending:
            return f"holds {len(pending)} metric value(s) buffered during an MLflow outage, which MLflow may lack"
    return None


def plan_sessions(
    temp_dir: Path, base: Path, keys: Sequence[str], *, study_end: float, protected: Iterable[Path] = ()
) -> CleanReport:
    """This study's finished local Ray sessions under ``temp_dir`` (module doc: the rules)."""
    report = CleanReport()
    protected = [Path(os.path.realpath(p)) for p in protected]
    if not Path("/proc/self/cmdline").is_file():
        report.kept.append((temp_dir, "--logs: cannot tell running Ray sessions from finished ones here (no /proc): none removed"))
        return report
    if not _is_real_dir(temp_dir):
        return report
    processes = _process_references()
    now = time.time()
    for session in sorted(temp_dir.iterdir()):
        match = SESSION_NAME.match(session.name)
        if match is None or not _is_real_dir(session):
            continue
        ours, foreign = _staged_searches(session, base, keys)
        if not ours:
            continue  # not this study's (another study's or anyone else's session): not ours to judge
        why = None
        real = os.path.realpath(session)
        if foreign:
            why = f"it also ran other experiments ({', '.join(sorted(foreign)[:3])})"
        elif not _own_local_runtime(session, int(match.group(3))):
            why = "not one driver's own local runtime (a cluster's or a shared session)"
        elif _in_use({real, str(session)}, processes):
            why = "it is running (a process on this host uses it)"
        elif now - _newest_mtime(session) < QUIET_S:
            why = f"it was written to less than {QUIET_S:.0f} s ago (it may still be shutting down)"
        elif time.mktime(time.strptime(match.group(1), "%Y-%m-%d_%H-%M-%S")) >= study_end:
            why = "it started after the study ended"
        else:
            clash = next((p for p in protected if _overlap(Path(real), p)), None)
            if clash is not None:
                why = f"it overlaps {clash}, which must stay"
        if why is None:
            report.removed.append(Item(session, _tree_bytes(session), "session"))
        else:
            report.kept.append((session, f"Ray session of this study kept: {why}"))
    return report


def _staged_searches(session: Path, base: Path, keys: Sequence[str]) -> tuple[set[str], set[str]]:
    """The searches Tune staged in ``session/artifacts/<time>/<search>/``: those whose trial
    folders (driver_artifacts/, working_dirs/) all exist under ``base/<search>`` (ours), and the others."""
    ours, foreign = set(), set()
    artifacts = session / "artifacts"
    if not _is_real_dir(artifacts):
        return ours, foreign
    for stamp in artifacts.iterdir():
        if not _is_real_dir(stamp):
            continue
        for search in stamp.iterdir():
            trials = set()
            for sub in ("driver_artifacts", "working_dirs"):
                folder = search / sub
                if _is_real_dir(folder):
                    trials |= {p.name for p in folder.iterdir() if _is_real_dir(p)}
            if search.name in keys and trials and all(_is_real_dir(base / search.name / t) for t in trials):
                ours.add(search.name)
            else:
                foreign.add(f"{stamp.name}/{search.name}")
    return ours, foreign


def _own_local_runtime(session: Path, pid: int) -> bool:
    """Started by ``ray.init`` in one driver for itself: that driver (the pid in the session's
    name) is the session's only driver, and no Ray Job ran in it."""
    logs = session / "logs"
    if not _is_real_dir(logs):
        return False
    names = [p.name for p in logs.iterdir()]
    drivers = [m for m in map(DRIVER_LOG.match, names) if m]
    jobs = [n for n in names if n.startswith("job-driver-")]
    return len(drivers) == 1 and int(drivers[0].group(1)) == pid and not jobs


def _process_references() -> tuple[list[str], list[str]]:
    """What this host's processes point at: their command lines (Ray's GCS, raylet, dashboard,
    agents and workers carry ``--session-dir``/``--log-dir``/sockets of their session), and the
    paths of their working directories and open files (the dashboard's module processes and
    workers renamed ``ray::...`` show no path in their command line, but hold their log files
    open). Processes of other users whose files cannot be read are covered by ``QUIET_S``.

    This process is left out unless it has a Ray runtime now: a process that ran a sweep in
    itself (``sweep_main`` in Python) keeps its runtime's driver logs open after
    ``ray.shutdown()``, which is no use of the session."""
    lines, paths = [], []
    me = str(os.getpid()) if not _ray_initialized_here() else None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or proc.name == me:
            continue
        try:
            lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
        for link in (proc / "cwd",):
            try:
                paths.append(os.readlink(link))
            except OSError:
                pass
        try:
            fds = os.listdir(proc / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                paths.append(os.readlink(proc / "fd" / fd))
            except OSError:
                pass
    return lines, paths


def _ray_initialized_here() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


def _in_use(names: set[str], processes: tuple[list[str], list[str]]) -> bool:
    lines, paths = processes
    for name in names:
        if any(f"{name}/" in line or f"{name} " in line or f"={name}" in line for line in lines):
            return True
        if any(p == name or p.startswith(f"{name}/") for p in paths):
            return True
    return False


def _newest_mtime(path: Path) -> float:
    newest = 0.0
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in [*dirs, *files]:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:
                pass
    return newest


def default_ray_temp_dir() -> Path:
    """Ray's default temp dir (ray/_common/utils.py, get_default_ray_temp_dir, Ray 2.60):
    $RAY_TMPDIR, else $TMPDIR on Linux, else /tmp; plus ``ray``."""
    if "RAY_TMPDIR" in os.environ:
        root = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        root = os.environ["TMPDIR"]
    else:
        root = "/tmp"
    return Path(root) / "ray"


# --------------------------------------------------------------------------------------------
# Doing it


def remove_planned(report: CleanReport, base: Path, *, keep_alive: Callable[[], None] | None = None) -> None:
    """Delete ``report.removed``, checking each folder again just before (it may have changed
    since it was planned); what could not be removed goes to ``report.failed``. ``keep_alive``
    is called every ``HEARTBEAT_S`` (the study's lease)."""
    from odyssey.sweep.identity import HEARTBEAT_S

    renewed = time.monotonic()
    for item in report.removed:
        if keep_alive is not None and time.monotonic() - renewed > HEARTBEAT_S:
            keep_alive()
            renewed = time.monotonic()
        changed = _unsafe_checkpoint(item.path, base, []) if item.kind == "checkpoint" else (
            None if _is_real_dir(item.path) else "no longer a folder"
        )  # fmt: skip
        if changed is not None:  # a link now, new content...
            report.failed.append((item, f"{changed}: left alone", item.bytes))
            continue
        errors: list[str] = []
        _rmtree(item.path, errors)
        if errors:
            left = _tree_bytes(item.path) if os.path.lexists(item.path) else 0
            report.failed.append((item, errors[0], left))


def _rmtree(path: Path, errors: list[str]) -> None:
    """``shutil.rmtree``, which unlinks symbolic links inside instead of following them (on
    platforms where it cannot guarantee that, remove bottom-up without following any link)."""

    def onerror(func, p, exc_info):
        errors.append(f"{p}: {exc_info[1]}")

    if shutil.rmtree.avoids_symlink_attacks:
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=lambda func, p, exc: errors.append(f"{p}: {exc}"))
        else:  # Python 3.11: onerror (deprecated from 3.12)
            shutil.rmtree(path, onerror=onerror)
        return
    for root, dirs, files in os.walk(path, topdown=False, followlinks=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            try:
                os.unlink(os.path.join(root, name))
            except OSError as exc:
                errors.append(f"{name}: {exc}")
        for name in dirs:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                try:
                    os.rmdir(full)
                except OSError as exc:
                    errors.append(f"{full}: {exc}")
    try:
        os.rmdir(path)
    except OSError as exc:
        errors.append(f"{path}: {exc}")


def _print_plan(say, study: str, uri: str, base: Path, report: CleanReport, logs: bool) -> None:
    verb = "would remove" if report.dry_run else "removing"
    say(f"odyssey clean: study {study!r} (MLflow {uri}; Ray Tune state {base})" + (" - dry run, nothing is deleted" if report.dry_run else ""))
    for item in report.removed:
        shown = item.path.relative_to(base) if base in item.path.parents else item.path
        say(f"  {verb} {item.kind} {shown} ({item.bytes} bytes)")
    for path, why in report.kept:
        say(f"  kept {path}: {why}")
    checkpoints = [i for i in report.removed if i.kind == "checkpoint"]
    by_search: dict[str, list[Item]] = {}
    for item in checkpoints:
        by_search.setdefault(item.search, []).append(item)
    for key, items in sorted(by_search.items()):
        trials = len({i.path.parent for i in items})
        say(f"  {key}: {len(items)} checkpoint(s) of {trials} finished trial(s), {sum(i.bytes for i in items)} bytes")
    say(f"  kept Tune's experiment state and trial results ({report.kept_results_bytes} bytes): resume=true and Tune read them; "
        "odyssey analyze reads MLflow, which is not touched")  # fmt: skip
    if logs:
        sessions = [i for i in report.removed if i.kind == "session"]
        say(f"  Ray sessions: {len(sessions)} of this study's finished local session(s), {sum(i.bytes for i in sessions)} bytes")


def _print_total(say, report: CleanReport) -> None:
    for item, why, _ in report.failed:
        say(f"  not removed {item.path}: {why}")
    checkpoints, sessions = report.count("checkpoint"), report.count("session")
    if report.dry_run:
        say(f"dry run: would free {report.freed} bytes ({_mb(report.freed)}): {checkpoints} checkpoint(s), "
            f"{sessions} Ray session(s); nothing was deleted")  # fmt: skip
    else:
        say(f"freed {report.freed} bytes ({_mb(report.freed)}): {checkpoints} checkpoint(s), {sessions} Ray session(s) removed"
            + (f"; {len(report.failed)} could not be removed" if report.failed else ""))  # fmt: skip


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


# --------------------------------------------------------------------------------------------
# Filesystem helpers (no symbolic link is ever followed)


def _is_real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and os.sep not in name


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def _tree_bytes(path: Path, *, skip_checkpoints_below: int | None = None) -> int:
    """Bytes of the regular files under ``path``; links are neither followed nor counted.
    ``skip_checkpoints_below=1``: leave out ``checkpoint_*`` folders one level down (in trials)."""
    import stat

    total = 0
    root_depth = len(path.parts)
    for root, dirs, files in os.walk(path, followlinks=False):
        if skip_checkpoints_below is not None and len(Path(root).parts) - root_depth == skip_checkpoints_below:
            dirs[:] = [d for d in dirs if not d.startswith("checkpoint_")]
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
