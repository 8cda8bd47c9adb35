"""``odyssey submit / jobs / logs / stop``: the study as a Ray Job, through Ray's job server.

The job server is the head node's dashboard address (``http://HEAD:8265``), taken from
``--address``, the ``ray.job_server`` config value or ``$RAY_ADDRESS`` (Ray's own convention).

``odyssey submit [jobs/<name>.yaml] [overrides]`` ships odyssey and the user's config folders and
runs ``python -m odyssey.sweep.cli <overrides>`` on the cluster. Which odyssey (``--odyssey``):

* ``checkout`` (the default in a source checkout): the repository root as ``working_dir``, without
  secrets (.env), venvs, .git, MLflow stores, Ray results, analysis output or what its .gitignore
  and .rayignore list (see ``EXCLUDES``); a path to another checkout works the same way;
* ``installed`` (the default otherwise): this process's own ``odyssey`` package, as a Ray
  ``py_modules`` entry (its ``conf/`` included);
* a wheel ``dist/odyssey-*.whl``: its ``odyssey`` package, unpacked here and shipped the same way
  (Ray's own wheel support would ``pip install`` the wheel's dependencies, torch included);
* any other value is a pip requirement (``odyssey==0.1.0``, ``git+https://...``) installed by
  Ray's ``pip`` runtime env on top of the cluster's packages.

The dependencies (torch, Ray, MLflow...) are the cluster's (its image: ``docker/``). The user's
config folders (``--config-dir``, ``$ODYSSEY_CONFIG_PATH``, ``./conf``) travel as ``py_modules``
entries too, and ``$ODYSSEY_CONFIG_PATH`` names them on the cluster, in the same order.

``jobs/*.yaml`` are plain Ray runtime environments, so the same file works with Ray's CLI::

    ray job submit --address http://127.0.0.1:8265 --runtime-env jobs/odyssey_jsb.yaml -- python -m odyssey.sweep.cli
    odyssey submit jobs/odyssey_jsb.yaml

Their ``env_vars.ODYSSEY_OVERRIDES`` hold the study's Hydra overrides (e.g. ``experiment=odyssey_jsb``)
and ``env_vars.MLFLOW_TRACKING_URI`` the tracking server as the cluster sees it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import sys
import tempfile
import time
import zipfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

import yaml

from odyssey.errors import ConfigError, ServiceError

__all__ = ["jobs_main", "logs_main", "odyssey_runtime_env", "project_runtime_env", "stop_main", "submit_main"]

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


def project_root() -> Path | None:
    """The source checkout this odyssey runs from (the parent of ``conf/`` and ``odyssey/``), or
    None for an installed package."""
    from odyssey.config import config_dir

    root = config_dir().parent
    return root if _is_checkout(root) else None


def _is_checkout(root: Path) -> bool:
    return (root / "odyssey" / "__init__.py").is_file() and (root / "conf" / "sweep.yaml").is_file()


def project_runtime_env(
    *, job_file: Path | None = None, tracking_uri: str | None = None, root: Path | None = None
) -> dict[str, Any]:
    """The job's runtime env: the job file's (if any), the project as working_dir, excludes, env vars.

    ``root`` is the project to ship (default: :func:`project_root`). Ray uploads ``working_dir``
    less ``excludes`` (these and the job file's), its own defaults and what the tree's ``.gitignore``
    and ``.rayignore`` files list.
    """
    env = _read_job_file(job_file) if job_file is not None else {}
    root = project_root() if root is None else Path(root).resolve()
    if root is None:
        raise ConfigError("no source checkout to ship: this odyssey is an installed package (use --odyssey installed)")
    working_dir = env.get("working_dir")
    env["working_dir"] = str(root if working_dir in (None, ".", "./") else (root / working_dir).resolve())
    env["excludes"] = sorted(set(env.get("excludes", [])) | set(EXCLUDES))
    env["env_vars"] = _env_vars(env, tracking_uri)
    return env


def _env_vars(env: dict[str, Any], tracking_uri: str | None) -> dict[str, str]:
    """The job's environment variables: the job file's, and the tracking URI (given, the job
    file's, or this process's ``$MLFLOW_TRACKING_URI``)."""
    env_vars = {str(k): str(v) for k, v in (env.get("env_vars") or {}).items()}
    if tracking_uri:
        env_vars["MLFLOW_TRACKING_URI"] = tracking_uri
    elif "MLFLOW_TRACKING_URI" not in env_vars and os.environ.get("MLFLOW_TRACKING_URI"):
        env_vars["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    return env_vars


def _read_job_file(job_file: Path) -> dict[str, Any]:
    try:
        env = yaml.safe_load(job_file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"job file {job_file}: cannot read it: {exc}") from None
    if not isinstance(env, dict):
        raise ConfigError(f"job file {job_file}: expected a mapping (a Ray runtime_env), got {type(env).__name__}")
    return env


def odyssey_runtime_env(
    staging: Path, *, odyssey: str | None = None, job_file: Path | None = None, tracking_uri: str | None = None
) -> tuple[dict[str, Any], str]:
    """The job's runtime env with ``odyssey`` (see the module doc: ``checkout``, a checkout's path,
    ``installed``, a wheel or a pip requirement; None: ``checkout`` in a source checkout, else
    ``installed``) and the user's config folders; (env, what is shipped, in words). Files to upload
    are staged under ``staging``, which must outlive the submission."""
    from odyssey.config import CONFIG_PATH_ENV, user_config_dirs

    checkout = project_root()
    mode = odyssey or ("checkout" if checkout is not None else "installed")
    if mode == "checkout" or Path(mode).expanduser().is_dir():
        root = checkout if mode == "checkout" else Path(mode).expanduser().resolve()
        if root is None or not _is_checkout(root):
            raise ConfigError(
                f"--odyssey {mode}: not a source checkout (no odyssey/ and conf/sweep.yaml in "
                f"{root or 'this installation'}); valid: checkout, installed, a wheel (.whl) or a pip requirement"
            )
        env = project_runtime_env(job_file=job_file, tracking_uri=tracking_uri, root=root)
        what = f"the checkout {root}"
    else:
        env = _job_file_env(job_file, tracking_uri, staging)
        modules = env.setdefault("py_modules", [])
        if mode == "installed":
            import odyssey as package

            modules.append(str(Path(package.__file__).resolve().parent))
            what = f"the installed odyssey {modules[-1]}"
        elif mode.endswith(".whl"):
            modules.append(str(_unpacked_wheel(Path(mode).expanduser().resolve(), staging)))
            what = f"the wheel {mode}"
        else:
            pip = env.get("pip") or []
            env["pip"] = (pip if isinstance(pip, list) else [pip]) + [mode]
            what = f"pip install {mode!r} on the cluster"
    folders = user_config_dirs()
    shipped = [_staged_config_folder(folder, staging) for folder in folders]
    if shipped:
        env.setdefault("py_modules", []).extend(str(path) for path in shipped)
        given = env["env_vars"].get(CONFIG_PATH_ENV, "")
        env["env_vars"][CONFIG_PATH_ENV] = os.pathsep.join([f"pkg://{p.name}" for p in shipped] + ([given] if given else []))
        what += "; config folders " + ", ".join(map(str, folders))
    return env, what


def _job_file_env(job_file: Path | None, tracking_uri: str | None, staging: Path) -> dict[str, Any]:
    """A job file's runtime env without the checkout: its ``working_dir`` is relative to the
    current directory, and must not hold an ``odyssey`` package of its own (it would shadow the
    one shipped); without one, the job runs in an empty folder of its own."""
    env: dict[str, Any] = {}
    if job_file is not None:
        env = _read_job_file(job_file)
    working_dir = env.get("working_dir")
    if working_dir is None:  # a clean current directory: the raylet's (a checkout?) would shadow the shipped odyssey
        (staging / "work").mkdir(parents=True, exist_ok=True)
        (staging / "work" / "README.txt").write_text("The working directory of an odyssey job (odyssey submit).\n")
        env["working_dir"] = str(staging / "work")
    else:
        path = (Path.cwd() / working_dir).resolve()
        if (path / "odyssey" / "__init__.py").is_file():
            raise ConfigError(
                f"job file {job_file}: its working_dir {path} holds an odyssey package, which would shadow "
                "the one shipped; submit with --odyssey checkout, or set another working_dir"
            )
        env["working_dir"] = str(path)
        env["excludes"] = sorted(set(env.get("excludes", [])) | set(EXCLUDES))
    env["env_vars"] = _env_vars(env, tracking_uri)
    return env


def _unpacked_wheel(wheel: Path, staging: Path) -> Path:
    """The ``odyssey`` package of ``wheel``, unpacked under ``staging``."""
    if not wheel.is_file():
        raise ConfigError(f"--odyssey {wheel}: no such wheel (build one with `pip wheel --no-deps -w dist .`)")
    target = staging / "wheel"
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.startswith("odyssey/")]
            bad = [n for n in names if ".." in Path(n).parts]
            if not names or bad:
                raise ConfigError(f"--odyssey {wheel}: not an odyssey wheel (no odyssey/ package{', or unsafe paths' if bad else ''})")
            zf.extractall(target, members=names)
    except zipfile.BadZipFile as exc:
        raise ConfigError(f"--odyssey {wheel}: not a wheel ({exc})") from None
    return target / "odyssey"


def _staged_config_folder(folder: Path, staging: Path) -> Path:
    """A copy of the config folder ``folder`` (its YAML files) under ``staging``, named so that it
    is importable as a module on the cluster: ``odyssey_conf_<hash of its path>``."""
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    target = staging / "conf" / f"odyssey_conf_{digest}"
    for path in sorted(folder.rglob("*.yaml")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        destination = target / path.relative_to(folder)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)
    target.mkdir(parents=True, exist_ok=True)
    return target


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

    from odyssey.sweep.connect import secure_token_file

    secure_token_file()  # a token readable by others gets one warning

    return JobSubmissionClient(job_server(address))


def submit(
    overrides: Sequence[str],
    *,
    address: str | None = None,
    job_file: Path | None = None,
    submission_id: str | None = None,
    python: str = "python",
    odyssey: str | None = None,
    shipped: list[str] | None = None,
) -> str:
    """Check the study locally, submit it as a Ray Job, return the submission id. ``odyssey``:
    which odyssey the cluster runs (:func:`odyssey_runtime_env`); ``shipped`` gets what was shipped,
    in words."""
    with tempfile.TemporaryDirectory(prefix="odyssey-submit-") as staging:  # uploaded by submit_job
        env, what = odyssey_runtime_env(Path(staging), odyssey=odyssey, job_file=job_file)
        if shipped is not None:
            shipped.append(what)
        return _submit(env, overrides, address=address, submission_id=submission_id, python=python)


def _submit(env: dict[str, Any], overrides: Sequence[str], *, address: str | None, submission_id: str | None, python: str) -> str:
    from odyssey.config import compose
    from odyssey.sweep.search_space import translate

    file_overrides = shlex.split(env["env_vars"].pop("ODYSSEY_OVERRIDES", ""))
    overrides = file_overrides + list(overrides)
    cfg = compose("sweep", overrides)  # unknown experiment, bad keys: fail here, not on the cluster
    from omegaconf import OmegaConf

    from odyssey.sweep.study import check_no_variant_overrides

    check_no_variant_overrides(overrides)
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
    from odyssey.config import SWEEP_GROUPS, groups_help, take_config_dirs

    argv = take_config_dirs(argv)  # first: --help then lists the folders' options too

    parser = _parser("odyssey submit")
    parser.usage = (
        "odyssey submit [jobs/<name>.yaml] [--address URL] [--wait] [--id ID] [--python PY] "
        "[--odyssey WHICH] [--config-dir DIR] [KEY=VALUE ...]"
    )
    parser.description = (
        "Submit a study to a Ray cluster as a Ray Job. The optional job file is a Ray runtime env "
        "(jobs/*.yaml); KEY=VALUE are the Hydra overrides of `odyssey sweep` (conf/sweep.yaml). "
        "Your config folders (--config-dir DIR, $ODYSSEY_CONFIG_PATH, ./conf) travel with the job."
    )
    parser.epilog = groups_help(SWEEP_GROUPS)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--wait", action="store_true", help="follow the job's logs until it ends")
    parser.add_argument("--id", dest="submission_id", help="a submission id of your choice")
    parser.add_argument("--python", default="python", help="the interpreter on the cluster (default: python)")
    parser.add_argument(
        "--odyssey", metavar="WHICH", default=None,
        help="the odyssey the cluster runs: checkout (the default in a source checkout; or a checkout's path), "
        "installed (the default otherwise: this package), a wheel (.whl), or a pip requirement",
    )  # fmt: skip
    parser.add_argument("--config-dir", metavar="DIR", help="your own config folder (repeatable), searched before the package's")
    args, rest = parser.parse_known_args(argv)
    job_file = None
    if rest and rest[0].endswith((".yaml", ".yml")) and "=" not in rest[0]:
        job_file = Path(rest.pop(0)).resolve()
        if not job_file.is_file():
            raise ConfigError(f"job file {job_file} does not exist; ready ones are in jobs/")
    shipped: list[str] = []
    job_id = submit(
        rest, address=args.address, job_file=job_file, submission_id=args.submission_id, python=args.python,
        odyssey=args.odyssey, shipped=shipped,
    )  # fmt: skip
    where = f" --address {args.address}" if args.address else ""
    print(f"submitted job {job_id}: {shipped[0]}")
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
