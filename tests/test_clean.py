"""``odyssey clean``: what a finished study no longer needs goes, nothing else.

* Planning rules on hand-made layouts (no services): which checkpoints go, which stay and why
  (failed trials, unfinished statuses, symbolic links, unexpected content, MLflow's paths), and
  which Ray sessions are this study's finished local runtimes.
* End to end (slow): one real tiny sweep (1 search x 2 trials x 2 epochs, a local Ray runtime in
  its own RAY_TMPDIR, the real MLflow server), shared by the tests below in file order: dry run,
  refusals (unfinished search, live lease, wrong storage path), the clean itself, the MLflow
  record and the analysis' data unchanged, and a resume after the clean.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from odyssey.errors import ConfigError
from odyssey.sweep.clean import (
    REMOVABLE_STATUSES,
    StudyNotFinished,
    clean_study,
    plan_checkpoints,
    plan_sessions,
    remove_planned,
)
from odyssey.tracking import TAG_STATUS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_sweep import study_runs, tiny  # noqa: E402

KEY = "adding__vanilla"


# --------------------------------------------------------------------------------------------
# Planning, on hand-made layouts


def _write(path: Path, size: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return size


def _experiment_state(search: Path, stamp: str, trials: list[tuple[str, str, str]]) -> None:
    data = {"trial_data": [[json.dumps({"trial_id": t, "status": s, "relative_logdir": d}), "{}"] for t, s, d in trials],
            "runner_data": {}, "stats": {}}  # fmt: skip
    (search / f"experiment_state-{stamp}.json").write_text(json.dumps(data))


def _checkpoint(trial: Path, n: int = 1, size: int = 1000) -> int:
    """A trial checkpoint as the trainable writes it: ``size`` bytes of state, 29 of metadata."""
    ckpt = trial / f"checkpoint_{n:06d}"
    _write(ckpt / "trainer.pt", size)
    (ckpt / "odyssey.json").write_text('{"mlflow_run_id": "r", "x":1}')
    return size + 29


def _files(root: Path) -> dict[str, int]:
    """Every regular file under ``root`` (links not followed) -> its size."""
    out = {}
    for dirpath, _, files in os.walk(root, followlinks=False):
        for name in files:
            p = Path(dirpath, name)
            if not p.is_symlink():
                out[str(p.relative_to(root))] = p.stat().st_size
    return out


def test_plan_removes_only_finished_trials_checkpoints_and_follows_no_link(tmp_path):
    """Finished (TERMINATED + completed/stopped_early/diverged) trials lose their checkpoints;
    a failed trial (resume=true retries it), a trial MLflow has not finished, links (to a
    checkpoint or a trial folder elsewhere), unexpected content, metrics an MLflow outage kept
    from the server, a checkpoint inside a path MLflow holds, and a trial folder Tune's state does
    not list keep theirs. The bytes are exact."""
    base, outside = tmp_path / "ray_results" / "s", tmp_path / "elsewhere"
    search = base / KEY
    gone = 0
    gone += _checkpoint(search / "t_done", 1, 1000) - 29
    gone += _checkpoint(search / "t_asha", 1, 300) + _checkpoint(search / "t_asha", 2, 300)  # two folders
    gone += _checkpoint(search / "t_nan", 1, 50)
    _checkpoint(search / "t_failed")
    _checkpoint(search / "t_interrupted")
    _checkpoint(search / "t_mystery")
    _write(search / "t_mystery" / "checkpoint_000001" / "MLmodel", 5)  # not what a trial checkpoint holds
    _checkpoint(outside / "ckpt_target")
    (search / "t_link_ckpt").mkdir()
    (search / "t_link_ckpt" / "checkpoint_000001").symlink_to(outside / "ckpt_target" / "checkpoint_000001")
    _checkpoint(outside / "trial_target")
    (search / "t_link_trial").symlink_to(outside / "trial_target")
    _checkpoint(search / "t_mlflow")
    _checkpoint(search / "t_outage")  # metrics an MLflow outage kept from the server ride in odyssey.json
    (search / "t_outage" / "checkpoint_000001" / "odyssey.json").write_text(json.dumps(
        {"mlflow_run_id": "r", "epoch": 2, "mlflow_pending": {"run_id": "r", "pending": [["val/mse", 0.5, 1, 2]]}}))  # fmt: skip
    (search / "t_done" / "checkpoint_000001" / "odyssey.json").write_text(json.dumps(
        {"mlflow_run_id": "r", "epoch": 2, "mlflow_pending": {"run_id": "r", "pending": []}}))  # fmt: skip
    _checkpoint(search / "t_orphan")  # on disk, not in Tune's state
    results = _write(search / "t_done" / "result.json", 123) + _write(search / "t_done" / "params.json", 45)
    trials = [("done", "t_done"), ("asha", "t_asha"), ("nan", "t_nan"), ("failed", "t_failed"), ("intr", "t_interrupted"),
              ("mystery", "t_mystery"), ("lnk", "t_link_ckpt"), ("lnkt", "t_link_trial"), ("mlf", "t_mlflow"),
              ("outage", "t_outage")]  # fmt: skip
    _experiment_state(search, "2026-01-01_00-00-00", [(t, "RUNNING", d) for t, d in trials])  # older: not read
    tune = {"failed": "ERROR"}
    _experiment_state(search, "2026-01-02_00-00-00", [(t, tune.get(t, "TERMINATED"), d) for t, d in trials])
    results += sum(p.stat().st_size for p in search.glob("experiment_state-*.json"))
    mlflow = {"done": "completed", "asha": "stopped_early", "nan": "diverged", "failed": "failed", "intr": "interrupted",
              "mystery": "completed", "lnk": "completed", "lnkt": "completed", "mlf": "completed", "outage": "stopped_early"}  # fmt: skip
    assert set(REMOVABLE_STATUSES) == {"completed", "stopped_early", "diverged"}
    before_outside = _files(outside)

    report = plan_checkpoints(base, {KEY: mlflow}, protected=[search / "t_mlflow"])
    removed = sorted(str(i.path.relative_to(search)) for i in report.removed)
    assert removed == ["t_asha/checkpoint_000001", "t_asha/checkpoint_000002", "t_done/checkpoint_000001", "t_nan/checkpoint_000001"]
    gone += (search / "t_done" / "checkpoint_000001" / "odyssey.json").stat().st_size
    assert report.freed == gone == sum(i.bytes for i in report.removed)
    kept = {str(p.relative_to(search)) if search in p.parents else str(p): why for p, why in report.kept}
    assert "Tune status ERROR: resume=true retries it" in kept["t_failed/checkpoint_000001"]
    assert "MLflow status interrupted" in kept["t_interrupted/checkpoint_000001"]
    assert "holds 'MLmodel'" in kept["t_mystery/checkpoint_000001"]
    assert "symbolic link" in kept["t_link_ckpt/checkpoint_000001"] and "symbolic link" in kept["t_link_trial"]
    assert "MLflow holds" in kept["t_mlflow/checkpoint_000001"]
    assert "1 metric value(s) buffered during an MLflow outage" in kept["t_outage/checkpoint_000001"]
    assert "does not list" in kept["t_orphan"]
    assert report.kept_results_bytes == results  # Tune's state and results: counted, kept

    before = _files(search)
    remove_planned(report, base)
    after = _files(search)
    assert set(before) - set(after) == {f"{r}/{f}" for r in removed for f in ("trainer.pt", "odyssey.json")}
    assert all(after[k] == before[k] for k in after) and report.failed == []
    assert _files(outside) == before_outside  # nothing behind a link was touched
    assert (search / "t_link_ckpt" / "checkpoint_000001").is_symlink()


def test_plan_refuses_an_unreadable_experiment_state(tmp_path):
    search = tmp_path / "s" / KEY
    _checkpoint(search / "t")
    (search / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [["not json", "{}"]]}')
    with pytest.raises(ConfigError, match=r"cannot read Ray Tune's experiment state .*nothing was removed"):
        plan_checkpoints(tmp_path / "s", {KEY: {"t": "completed"}})


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("sqlite:////srv/mlflow/mlflow.db", "/srv/mlflow/mlflow.db"),  # the tracking store itself
        ("file:///srv/mlruns/1", "/srv/mlruns/1"),
        ("/srv/mlartifacts/2/abc/artifacts", "/srv/mlartifacts/2/abc/artifacts"),
        ("mlflow-artifacts:/1", None),  # proxied: on the server's disk, not a path here
        ("s3://bucket/mlflow/1", None),
        ("http://127.0.0.1:5000", None),
    ],
)
def test_the_paths_mlflow_holds_are_read_from_its_uris(uri, expected):
    from odyssey.sweep.clean import _local_path

    assert _local_path(uri) == (Path(os.path.realpath(expected)) if expected else None)


def _session(root: Path, stamp: str, pid: int, *, searches: dict[str, list[str]], drivers: tuple[int, ...] | None = None) -> Path:
    """A Ray session folder: its driver log(s), and Tune's staging of ``searches`` (search -> trial folders)."""
    s = root / f"session_{stamp}_123456_{pid}"
    for d in drivers if drivers is not None else (pid,):
        _write(s / "logs" / f"python-core-driver-01000000ffffffffffffffffffffffffffffffffffffffffffffffff_{d}.log", 100)
    _write(s / "metrics" / "grafana" / "dashboard.json", 1000)
    for search, trials in searches.items():
        for t in trials:
            _write(s / "artifacts" / "2026-01-01_00-00-00" / search / "driver_artifacts" / t / "result.json", 10)
            (s / "artifacts" / "2026-01-01_00-00-00" / search / "working_dirs" / t).mkdir(parents=True)
    return s


def _age(path: Path, seconds: float) -> None:
    """Make everything under ``path`` last modified ``seconds`` ago."""
    when = time.time() - seconds
    for dirpath, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.utime(Path(dirpath, name), (when, when), follow_symlinks=False)


def _wait_for_proc(pid: int, predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"process {pid} did not get ready"
        time.sleep(0.05)


def test_sessions_removed_are_this_studys_finished_local_runtimes_only(tmp_path):
    """Of ten session folders only the finished local runtime that ran this study alone and
    started before the study's end goes: not one a process uses (its path on the process'
    command line, as Ray's GCS and raylet have it, or a file of it held open, as the dashboard's
    modules and the workers do), one written to a moment ago, one started after the end, one
    that also ran another experiment, a shared one (two drivers), another study's, a link, or
    session_latest."""
    base = tmp_path / "ray_results" / "s"
    for t in ("trial_a", "trial_b"):
        (base / KEY / t).mkdir(parents=True)
    temp = tmp_path / "ray"
    end = time.mktime(time.strptime("2026-01-01_12-00-00", "%Y-%m-%d_%H-%M-%S"))
    ours = {KEY: ["trial_a", "trial_b"]}
    done = _session(temp, "2026-01-01_10-00-00", 11, searches=ours)
    running = _session(temp, "2026-01-01_10-30-00", 12, searches=ours)
    holding = _session(temp, "2026-01-01_10-35-00", 18, searches=ours)
    fresh = _session(temp, "2026-01-01_10-36-00", 19, searches=ours)
    late = _session(temp, "2026-01-01_12-00-01", 13, searches=ours)
    mixed = _session(temp, "2026-01-01_10-40-00", 14, searches={**ours, "adding__nfg": ["other_trial"]})
    shared = _session(temp, "2026-01-01_10-50-00", 15, searches=ours, drivers=(15, 99))
    other = _session(temp, "2026-01-01_10-55-00", 16, searches={KEY: ["someone_elses_trial"]})
    real = _session(tmp_path / "elsewhere", "2026-01-01_10-10-00", 17, searches=ours)
    (temp / "session_2026-01-01_10-10-00_123456_17").symlink_to(real)
    (temp / "session_latest").symlink_to(done)
    _age(temp, 3600)
    _age(tmp_path / "elsewhere", 3600)
    _write(fresh / "logs" / "raylet.out", 10)  # just written
    log = next((holding / "logs").glob("python-core-driver-*.log"))
    by_args = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"--session-dir={running}"])
    by_file = subprocess.Popen(  # the path comes on stdin: not on its command line
        [sys.executable, "-c", "import sys, time; f = open(sys.stdin.readline().strip()); print('ok', flush=True); time.sleep(120)"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        by_file.stdin.write(f"{log}\n")
        by_file.stdin.flush()
        assert by_file.stdout.readline().strip() == "ok"
        cmdline = lambda: Path(f"/proc/{by_args.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()  # noqa: E731
        _wait_for_proc(by_args.pid, lambda: f"--session-dir={running}" in cmdline())  # once it has exec'd
        assert str(holding) not in Path(f"/proc/{by_file.pid}/cmdline").read_bytes().decode()
        report = plan_sessions(temp, base, [KEY, "adding__nfg"], study_end=end, protected=[base])
    finally:
        for proc in (by_args, by_file):
            proc.kill()
            proc.wait()
    assert [i.path for i in report.removed] == [done]
    assert report.removed[0].bytes == sum(_files(done).values()) == 100 + 1000 + 2 * 10
    kept = {p: why for p, why in report.kept}
    assert set(kept) == {running, holding, fresh, late, mixed, shared}, kept
    assert "it is running" in kept[running] and "it is running" in kept[holding]
    assert "written to less than" in kept[fresh] and "started after the study ended" in kept[late]
    assert "also ran other experiments" in kept[mixed] and "not one driver's own local runtime" in kept[shared]
    remove_planned(report, base)
    assert not done.exists() and (temp / "session_latest").is_symlink()  # the link itself is not Ray's data
    assert all(p.exists() for p in (running, holding, fresh, late, mixed, shared, other, real))


# --------------------------------------------------------------------------------------------
# End to end: one real tiny sweep, shared by the tests below (they run in file order)


@dataclass
class Finished:
    uri: str
    name: str
    root: Path  # the study's storage_path
    ray_temp: Path  # RAY_TMPDIR/ray: the local runtime's sessions
    overrides: list[str]
    runs: dict  # the MLflow record right after the sweep
    trials_table: object  # what odyssey analyze reads (load_study(...).trials)

    @property
    def base(self) -> Path:
        return self.root / self.name

    def clean(self, *args: str) -> tuple[int, str]:
        from odyssey.cli import main

        import contextlib
        import io

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            code = main(["clean", self.name, "--tracking-uri", self.uri, *args])
        return code, buffer.getvalue()


def _record(uri: str, name: str) -> dict:
    """Every run of the study: status, times, tags, params, metrics, train/loss history."""
    client, parents, trials = study_runs(uri, name)
    out = {}
    for r in [*parents, *trials]:
        history = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "train/loss"))
        out[r.info.run_id] = (r.info.status, r.info.end_time, dict(r.data.tags), dict(r.data.params), dict(r.data.metrics), history)
    return out


def _sessions(ray_temp: Path) -> set[Path]:
    return {p for p in ray_temp.glob("session_2*") if p.is_dir() and not p.is_symlink()} if ray_temp.is_dir() else set()


def _wait_sessions_over(ray_temp: Path, quiet: float, timeout: float = 90) -> None:
    """ray.shutdown() returns before every process of the local runtime has exited (the
    dashboard's modules log their exit a moment later): wait until no process uses a session
    and none changed for ``quiet`` seconds."""
    from odyssey.sweep.clean import _in_use, _newest_mtime, _process_references

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sessions = [str(s) for s in _sessions(ray_temp)]
        newest = max((_newest_mtime(Path(s)) for s in sessions), default=0.0)
        if not _in_use(set(sessions), _process_references()) and time.time() - newest > quiet:
            return
        time.sleep(0.5)
    pytest.fail(f"Ray sessions under {ray_temp} still in use after {timeout}s")


@pytest.fixture(scope="module")
def finished(mlflow_server, tmp_path_factory):
    """A finished study: 1 search x 2 trials x 2 epochs on a local Ray runtime of its own (its
    own RAY_TMPDIR, short enough for Ray's socket paths), recorded on the real MLflow server.
    Sessions count as quiet after 2 s here (default 60 s)."""
    import ray

    from odyssey.analysis.study import load_study
    from odyssey.sweep import clean
    from odyssey.sweep.cli import sweep_main

    if ray.is_initialized():  # a local runtime of this sweep's own, not a cluster another test joined
        ray.shutdown()
    root = tmp_path_factory.mktemp("clean") / "ray_results"
    temp = Path(tempfile.mkdtemp(prefix="odc", dir="/tmp"))
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_ADDRESS")}
    os.environ["RAY_TMPDIR"] = str(temp)
    os.environ.pop("RAY_ADDRESS", None)
    quiet, clean.QUIET_S = clean.QUIET_S, 2.0
    name = "clean-e2e"
    overrides = [*tiny(root.parent, name, variants=("vanilla",), samples=2, epochs=2), f"tracking.uri={mlflow_server}", "execution=single"]
    try:
        assert sweep_main(overrides) == 0
        _wait_sessions_over(temp / "ray", quiet=3.0)
        table = load_study(name, tracking_uri=mlflow_server).trials
        yield Finished(mlflow_server, name, root, temp / "ray", overrides, _record(mlflow_server, name), table)
    finally:
        clean.QUIET_S = quiet
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        shutil.rmtree(temp, ignore_errors=True)


def _checkpoints(base: Path) -> dict[Path, int]:
    return {p: sum(_files(p).values()) for p in base.glob(f"{KEY}/*/checkpoint_*")}


@pytest.mark.slow
def test_dry_run_lists_everything_and_deletes_nothing(finished):
    checkpoints = _checkpoints(finished.base)
    sessions = _sessions(finished.ray_temp)
    assert len(checkpoints) == 2 and len(sessions) == 1  # one checkpoint per trial (num_to_keep=1), one session
    (session,) = sessions
    before, before_sessions = _files(finished.root), _files(finished.ray_temp)
    code, out = finished.clean("--dry-run", "--logs")
    assert code == 0, out
    listed = re.findall(r"would remove checkpoint (\S+) \((\d+) bytes\)", out)
    assert {finished.base / p: int(b) for p, b in listed} == checkpoints
    assert re.findall(r"would remove session (\S+) \((\d+) bytes\)", out) == [(str(session), str(sum(_files(session).values())))], out
    total = int(re.search(r"would free (\d+) bytes", out).group(1))
    assert total == sum(checkpoints.values()) + sum(_files(session).values())
    assert _files(finished.root) == before and _files(finished.ray_temp) == before_sessions  # nothing deleted


@pytest.mark.slow
@pytest.mark.parametrize("status", ["interrupted", "running"])
def test_a_study_that_can_still_be_resumed_is_refused(finished, status):
    """A search marked interrupted (or still running: a killed driver) needs its checkpoints:
    one line naming it and the resume command, nothing removed (dry run or not)."""
    client, parents, _ = study_runs(finished.uri, finished.name)
    (parent,) = parents
    original = parent.data.tags[TAG_STATUS]
    before = _files(finished.root), _files(finished.ray_temp)
    client.set_tag(parent.info.run_id, TAG_STATUS, status)
    try:
        for extra in ([], ["--dry-run"]):
            with pytest.raises(StudyNotFinished) as info:
                clean_study(finished.name, tracking_uri=finished.uri, logs=True, dry_run=bool(extra), out=lambda _: None)
            message = str(info.value)
            assert f"search(es) adding/vanilla ({status}) not finished" in message, message
            assert "odyssey sweep study.name=clean-e2e" in message and "resume=true" in message and "\n" not in message
        code, _ = finished.clean("--logs")  # through the CLI: exit 2, one line on stderr
        assert code == 2
    finally:
        client.set_tag(parent.info.run_id, TAG_STATUS, original)
    assert (_files(finished.root), _files(finished.ray_temp)) == before


@pytest.mark.slow
def test_a_live_lease_is_refused_and_a_stale_one_is_not(finished):
    from mlflow import MlflowClient

    from odyssey.sweep.identity import TAG_LEASE

    client = MlflowClient(finished.uri)
    exp = client.get_experiment_by_name(finished.name)
    host, now = socket.gethostname(), time.time()
    before = _files(finished.root)
    try:
        client.set_experiment_tag(exp.experiment_id, TAG_LEASE, json.dumps(
            {"id": "x", "host": host, "pid": os.getpid(), "since": now - 5, "heartbeat": now}))  # fmt: skip
        with pytest.raises(StudyNotFinished, match=rf"a driver is running it \(host {re.escape(host)}, pid {os.getpid()},"):
            clean_study(finished.name, tracking_uri=finished.uri, out=lambda _: None)
        assert _files(finished.root) == before
        client.set_experiment_tag(exp.experiment_id, TAG_LEASE, json.dumps(
            {"id": "y", "host": host, "pid": os.getpid(), "since": now - 600, "heartbeat": now - 300}))  # fmt: skip
        report = clean_study(finished.name, tracking_uri=finished.uri, dry_run=True, out=lambda _: None)
        assert len(report.removed) == 2  # a stale lease (a driver gone for 5 min) holds nothing
    finally:
        client.delete_experiment_tag(exp.experiment_id, TAG_LEASE)
    assert _files(finished.root) == before


@pytest.mark.slow
def test_a_storage_path_without_the_study_is_refused(finished, tmp_path):
    with pytest.raises(ConfigError, match=rf"no Ray Tune state of study 'clean-e2e' at {re.escape(str(tmp_path))}/clean-e2e"):
        clean_study(finished.name, tracking_uri=finished.uri, storage_path=tmp_path, out=lambda _: None)
    with pytest.raises(ConfigError, match=r"no study named 'nope' at .*; studies there: .*clean-e2e"):
        clean_study("nope", tracking_uri=finished.uri, out=lambda _: None)


@pytest.mark.slow
def test_clean_frees_the_bytes_it_reports(finished):
    """Checkpoints and the study's finished session go; the bytes freed are what it says;
    Tune's state and every trial's results stay; the study's lease is released."""
    from mlflow import MlflowClient

    from odyssey.sweep.identity import TAG_LEASE

    checkpoints = _checkpoints(finished.base)
    (session,) = _sessions(finished.ray_temp)
    session_bytes = sum(_files(session).values())
    before = sum(_files(finished.root).values()) + sum(_files(finished.ray_temp).values())
    kept_files = {k: v for k, v in _files(finished.root).items() if "/checkpoint_" not in k}
    code, out = finished.clean("--logs", "--storage-path", str(finished.root))
    assert code == 0, out
    freed = int(re.search(r"freed (\d+) bytes", out).group(1))
    after = sum(_files(finished.root).values()) + sum(_files(finished.ray_temp).values())
    assert freed == before - after == sum(checkpoints.values()) + session_bytes > 0
    assert "2 checkpoint(s), 1 Ray session(s) removed" in out
    assert _checkpoints(finished.base) == {} and not session.exists()
    assert _files(finished.root) == kept_files  # everything else is still there, unchanged
    for trial in {p.parent for p in checkpoints}:
        assert {"result.json", "params.json", "progress.csv"} <= {p.name for p in trial.iterdir()}
    assert any(finished.base.glob(f"{KEY}/experiment_state-*.json")) and (finished.base / KEY / "tuner.pkl").is_file()
    assert TAG_LEASE not in MlflowClient(finished.uri).get_experiment_by_name(finished.name).tags
    code, out = finished.clean("--logs")  # again: nothing left to remove
    assert code == 0 and re.search(r"freed 0 bytes", out), out


@pytest.mark.slow
def test_mlflow_record_and_the_analysis_data_are_untouched(finished):
    from odyssey.analysis.study import load_study

    assert _record(finished.uri, finished.name) == finished.runs
    assert len(finished.runs) == 3  # 1 parent + 2 trials
    table = load_study(finished.name, tracking_uri=finished.uri).trials
    assert len(table) == 2
    assert table.sort_index(axis=1).equals(finished.trials_table.sort_index(axis=1))


@pytest.mark.slow
def test_resume_after_clean_runs_nothing_again(finished):
    """resume=true on the cleaned study: Tune restores it, runs no trial again (no new run, no
    new epoch, no checkpoint); its own session is then this study's to clean, alone."""
    from odyssey.sweep.cli import sweep_main

    sessions = _sessions(finished.ray_temp)
    assert sweep_main([*finished.overrides, "resume=true"]) == 0
    _wait_sessions_over(finished.ray_temp, quiet=3.0)
    client, parents, trials = study_runs(finished.uri, finished.name)
    assert {t.info.run_id for t in trials} == {k for k, v in finished.runs.items() if v[2].get("odyssey.role") == "trial"}
    for t in trials:
        assert t.data.tags[TAG_STATUS] == "completed"
        assert sorted(m.step for m in client.get_metric_history(t.info.run_id, "train/loss")) == [1, 2]
    (parent,) = parents
    assert (parent.info.status, parent.data.tags[TAG_STATUS]) == ("FINISHED", "completed")
    assert _checkpoints(finished.base) == {}
    (new,) = _sessions(finished.ray_temp) - sessions
    new_bytes = sum(_files(new).values())
    code, out = finished.clean("--logs")
    assert code == 0, out
    assert re.search(rf"freed {new_bytes} bytes .*: 0 checkpoint\(s\), 1 Ray session\(s\) removed", out), out
    assert not new.exists()
