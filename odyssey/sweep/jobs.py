"""``odyssey submit / jobs / logs / stop``: the study as a Ray Job, through Ray's job server.

The job server is the head node's dashboard address (``http://HEAD:8265``), taken from
``--address``, the ``ray.job_server`` config value or ``$RAY_ADDRESS`` (Ray's own convention).

``odyssey submit [jobs/<name>.yaml] [overrides]`` ships the project (``working_dir`` = the
repository root, without secrets (.env), venvs, .git, MLflow stores, Ray results, analysis output
or what its .gitignore and .rayignore list: see ``EXCLUDES``) and runs
``python -m odyssey.sweep.cli <overrides>`` on the cluster. ``jobs/*.yaml`` are plain Ray runtime
environments, so the same file works with Ray's CLI::

    ray job submit --address http://127.0.0.1:8265 --runtime-env jobs/odyssey_jsb.yaml -- python -m odyssey.sweep.cli
    odyssey submit jobs/odyssey_jsb.yaml

Their ``env_vars.ODYSSEY_OVERRIDES`` hold the study's Hydra overrides (e.g. ``experiment=odyssey_jsb``)
and ``env_vars.MLFLOW_TRACKING_URI`` the tracking server as the cluster sees it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

import yaml

from odyssey.errors import ConfigError, ServiceError

__all__ = ["jobs_main", "logs_main", "project_runtime_env", "stop_main", "submit_main"]

# Never uploaded with a job, whatever the project's .gitignore says (Ray reads .gitignore only while
# RAY_RUNTIME_ENV_IGNORE_GITIGNORE is not 1). Ray itself adds its default excludes (.git, .venv, venv,
# __pycache__) and the patterns of every .gitignore and .rayignore it finds in the tree, so a
# project's own extra excludes go in a .rayignore at its root. Patterns are gitwildmatch, relative to
# working_dir; a leading "/" anchors one at the root: "/analysis" is `odyssey analyze`'s output folder,
# while "analysis" would also drop the odyssey/analysis package.
EXCLUDES = [
    ".env", ".env.*",                                       # secrets
    ".git", "venv", ".venv", "**/__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", "/build", "/dist",
    "mlruns*", "*.db", "mlartifacts", "ray_results", "/analysis", "/outputs", "/multirun", "/data",
]  # fmt: skip
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
JOB_STOP_WAIT_S = 120


def project_root() -> Path:
    """The repository root (the parent of ``conf/``): the job's working_dir."""
    from odyssey.config import config_dir

    root = config_dir().parent
    if not (root / "odyssey").is_dir():
        raise ConfigError(f"odyssey submit needs a source checkout (no odyssey/ package beside {config_dir()})")
    return root


def project_runtime_env(
    *, job_file: Path | None = None, tracking_uri: str | None = None, root: Path | None = None
) -> dict[str, Any]:
    """The job's runtime env: the job file's (if any), the project as working_dir, excludes, env vars.

    ``root`` is the project to ship (default: :func:`project_root`). Ray uploads ``working_dir``
    less ``excludes`` (these and the job file's), its own defaults and what the tree's ``.gitignore``
    and ``.rayignore`` files list.
    """
    env: dict[str, Any] = {}
    if job_file is not None:
        try:
            env = yaml.safe_load(job_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"job file {job_file}: cannot read it: {exc}") from None
        if not isinstance(env, dict):
            raise ConfigError(f"job file {job_file}: expected a mapping (a Ray runtime_env), got {type(env).__name__}")
    root = project_root() if root is None else Path(root).resolve()
    working_dir = env.get("working_dir")
    env["working_dir"] = str(root if working_dir in (None, ".", "./") else (root / working_dir).resolve())
    env["excludes"] = sorted(set(env.get("excludes", [])) | set(EXCLUDES))
    env_vars = {str(k): str(v) for k, v in (env.get("env_vars") or {}).items()}
    if tracking_uri:
        env_vars["MLFLOW_TRACKING_URI"] = tracking_uri
    elif "MLFLOW_TRACKING_URI" not in env_vars and os.environ.get("MLFLOW_TRACKING_URI"):
        env_vars["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    env["env_vars"] = env_vars
    return env


def job_server(address: str | None) -> str:
    """The job server URL: ``address``, else ``$RAY_ADDRESS``; it must be an http(s) URL that answers."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ConfigError(
            "no Ray job server: pass --address http://HEAD:8265, set ray.job_server=... or export RAY_ADDRESS=http://HEAD:8265"
        )
    if not address.startswith(("http://", "https://")):
        raise ConfigError(
            f"job server address {address!r} is not an http(s) URL: jobs go to the head's dashboard, "
            "e.g. http://HEAD:8265 (not the GCS address HEAD:6379)"
        )
    from odyssey.sweep.connect import auth_headers, token_error

    request = urllib.request.Request(address.rstrip("/") + "/api/version", headers=auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=5):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):  # Ray's token authentication: no token, or not the cluster's
            raise ServiceError(token_error(address)) from None
        raise ServiceError(f"Ray job server {address} answered HTTP {exc.code} ({exc.reason})") from None
    except (OSError, urllib.error.URLError) as exc:
        raise ServiceError(
            f"Ray job server {address} is not reachable ({getattr(exc, 'reason', exc)}); is the head node "
            "running with its dashboard (`ray start --head --dashboard-host 127.0.0.1`)?"
        ) from None
    return address


def _client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(job_server(address))


def submit(
    overrides: Sequence[str],
    *,
    address: str | None = None,
    job_file: Path | None = None,
    submission_id: str | None = None,
    python: str = "python",
) -> str:
    """Check the study locally, submit it as a Ray Job, return the submission id."""
    from odyssey.config import compose
    from odyssey.sweep.search_space import translate

    env = project_runtime_env(job_file=job_file)
    file_overrides = shlex.split(env["env_vars"].pop("ODYSSEY_OVERRIDES", ""))
    overrides = file_overrides + list(overrides)
    cfg = compose("sweep", overrides)  # unknown experiment, bad keys: fail here, not on the cluster
    from omegaconf import OmegaConf

    translate(OmegaConf.to_container(cfg.search_space, resolve=True), name="search_space")
    if cfg.get("tracking") is not None and cfg.tracking.get("uri"):
        env["env_vars"]["MLFLOW_TRACKING_URI"] = str(cfg.tracking.uri)
    # `odyssey stop ID` sends SIGTERM, then SIGKILL after this long: time for the sweep to end its
    # searches and mark its runs interrupted (odyssey.sweep.interrupts). Ray's default is 3 s.
    env["env_vars"].setdefault("RAY_JOB_STOP_WAIT_TIME_S", str(JOB_STOP_WAIT_S))
    address = address or (cfg.get("ray") or {}).get("job_server")
    client = _client(address)
    entrypoint = f"{shlex.quote(python)} -m odyssey.sweep.cli " + " ".join(shlex.quote(o) for o in overrides)
    job_id = client.submit_job(
        entrypoint=entrypoint.strip(),
        runtime_env=env,
        submission_id=submission_id,
        metadata={"odyssey.study": str(cfg.study.name)},
    )
    return job_id


def _parser(prog: str, *, with_id: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--address", help="job server URL, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)")
    if with_id:
        parser.add_argument("job_id", help="the submission id printed by `odyssey submit`")
    return parser


def submit_main(argv: Sequence[str]) -> int:
    """``odyssey submit [jobs/<name>.yaml] [--address URL] [--wait] [overrides]``."""
    from odyssey.config import SWEEP_GROUPS, groups_help

    parser = _parser("odyssey submit")
    parser.usage = "odyssey submit [jobs/<name>.yaml] [--address URL] [--wait] [--id ID] [--python PY] [KEY=VALUE ...]"
    parser.description = (
        "Submit a study to a Ray cluster as a Ray Job. The optional job file is a Ray runtime env "
        "(jobs/*.yaml); KEY=VALUE are the Hydra overrides of `odyssey sweep` (conf/sweep.yaml)."
    )
    parser.epilog = groups_help(SWEEP_GROUPS)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--wait", action="store_true", help="follow the job's logs until it ends")
    parser.add_argument("--id", dest="submission_id", help="a submission id of your choice")
    parser.add_argument("--python", default="python", help="the interpreter on the cluster (default: python)")
    args, rest = parser.parse_known_args(list(argv))
    job_file = None
    if rest and rest[0].endswith((".yaml", ".yml")) and "=" not in rest[0]:
        job_file = Path(rest.pop(0)).resolve()
        if not job_file.is_file():
            raise ConfigError(f"job file {job_file} does not exist; ready ones are in jobs/")
    job_id = submit(
        rest, address=args.address, job_file=job_file, submission_id=args.submission_id, python=args.python
    )
    where = f" --address {args.address}" if args.address else ""
    print(f"submitted job {job_id}")
    print(f"  follow:  odyssey logs {job_id} --follow{where}")
    print(f"  status:  odyssey jobs{where}")
    print(f"  stop:    odyssey stop {job_id}{where}")
    if args.wait:
        status = wait(job_id, address=args.address, follow=True)
        return 0 if status == "SUCCEEDED" else 1
    return 0


def wait(job_id: str, *, address: str | None = None, follow: bool = False, timeout: float | None = None) -> str:
    """Wait for a job to end (printing its new log lines if ``follow``); return its final status."""
    client = _client(address)
    shown = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = str(client.get_job_status(job_id).value)
        if follow:
            logs = client.get_job_logs(job_id)
            sys.stdout.write(logs[shown:])
            sys.stdout.flush()
            shown = len(logs)
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise ServiceError(f"job {job_id} still {status} after {timeout:.0f}s")
        time.sleep(1.0)


def jobs_main(argv: Sequence[str]) -> int:
    """``odyssey jobs [--address URL]``: the cluster's jobs, newest last."""
    args = _parser("odyssey jobs").parse_args(list(argv))
    jobs = sorted(_client(args.address).list_jobs(), key=lambda j: j.start_time or 0)
    if not jobs:
        print("no jobs")
        return 0
    print(f"{'SUBMISSION ID':<28} {'STATUS':<10} {'STUDY':<20} ENTRYPOINT")
    for job in jobs:
        study = (job.metadata or {}).get("odyssey.study", "-")
        print(f"{job.submission_id or job.job_id:<28} {job.status.value:<10} {study:<20} {job.entrypoint}")
    return 0


def _known_job(client, job_id: str) -> None:
    """An unknown submission id is one clear error listing the ids the job server knows."""
    try:
        client.get_job_status(job_id)
    except Exception as exc:  # the client raises RuntimeError("... does not exist") for unknown ids
        if "does not exist" not in str(exc) and "404" not in str(exc):
            raise
        known = [j.submission_id or j.job_id for j in client.list_jobs()]
        raise ConfigError(f"unknown job {job_id!r}; jobs on this cluster: {', '.join(known) or '(none)'}") from None


def logs_main(argv: Sequence[str]) -> int:
    """``odyssey logs ID [--follow] [--address URL]``."""
    parser = _parser("odyssey logs", with_id=True)
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    args = parser.parse_args(list(argv))
    client = _client(args.address)
    _known_job(client, args.job_id)
    if args.follow:
        status = wait(args.job_id, address=args.address, follow=True)
        print(f"\njob {args.job_id}: {status}")
        return 0
    sys.stdout.write(client.get_job_logs(args.job_id))
    return 0


def status_main(argv: Sequence[str]) -> int:
    """``odyssey status ID [--address URL]``: a job's status (and its message when it ended)."""
    args = _parser("odyssey status", with_id=True).parse_args(list(argv))
    client = _client(args.address)
    _known_job(client, args.job_id)
    info = client.get_job_info(args.job_id)
    print(f"job {args.job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
    return 0


def stop_main(argv: Sequence[str]) -> int:
    """``odyssey stop ID [--address URL]``: stop a job (its trials stop; resume later with resume=true)."""
    args = _parser("odyssey stop", with_id=True).parse_args(list(argv))
    client = _client(args.address)
    _known_job(client, args.job_id)
    stopped = client.stop_job(args.job_id)
    if stopped:
        print(f"job {args.job_id}: stop requested; its sweep marks unfinished runs interrupted and prints how to "
              f"resume (odyssey logs {args.job_id})")  # fmt: skip
    else:
        print(f"job {args.job_id}: already finished")
    return 0
