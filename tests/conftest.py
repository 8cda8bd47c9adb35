"""Session-wide services for the end-to-end tests: a real MLflow tracking server and a real
two-node Ray cluster, each started once per test session (they take seconds to start) and only
when a test asks for them.

* ``mlflow_server`` - ``mlflow server`` as a subprocess on 127.0.0.1 (free port), SQLite backend
  and artifacts in a temp dir; yields its ``http://`` URI.
* ``ray_cluster`` - ``ray.cluster_utils.Cluster``: a head node (with the dashboard, hence the job
  server) and one worker node, 1 CPU each, so that two trials run at once, one per node; yields a
  :class:`RayTestCluster` with the GCS address, the dashboard URL and the worker node (the
  worker-kill test removes it and adds a fresh one).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Loopback only. Ray on Linux turns 127.0.0.1 into the machine's outward address so that other
# machines can reach it; this (documented) switch keeps every node, driver and job on 127.0.0.1.
# It is read when Ray is first imported, and Ray's processes and our subprocesses inherit it.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# Ray's token authentication is off for the in-process test cluster and local runtimes, whatever
# ~/.ray/auth_token holds: without this, the first local ray.init() (or a test that used token mode)
# turns token mode on for every later cluster of the session, whose dashboard then answers 401.
# tests/test_ray_cli_cluster.py runs its token-authenticated cluster with environments of its own.
os.environ["RAY_AUTH_MODE"] = "disabled"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            raise RuntimeError(f"{url}: the server exited with code {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


class MlflowServer:
    """``mlflow server`` as a subprocess on 127.0.0.1:``port``: SQLite backend and artifacts under
    ``root``. ``stop()`` and ``start()`` again keep the store and the port (an outage)."""

    def __init__(self, root: Path, port: int | None = None):
        self.root, self.port = root, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "MlflowServer":
        log = self.root / "server.log"
        mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
        cmd = [
            mlflow, "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1",
        ]  # fmt: skip
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True)
        _wait_http(f"{self.uri}/health", timeout=90, proc=self.proc, log=log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc)
            self.proc = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real MLflow tracking server (SQLite + local artifacts); yields ``http://127.0.0.1:PORT``."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server")).start()
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture
def restartable_mlflow_server(tmp_path_factory) -> MlflowServer:
    """A tracking server of the test's own, which the test may stop and start (outages)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_restartable")).start()
    try:
        yield server
    finally:
        server.stop()


def _terminate(proc: subprocess.Popen) -> None:
    """Stop a server we started (its own process group: uvicorn/gunicorn workers included)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=15)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


# The worker node gets its own loopback IP: a driver on this machine attaches to the raylet whose
# IP matches its own (the head's), never to the worker that the node-loss test kills.
WORKER_ARGS = {"num_cpus": 1, "resources": {"worker": 1}, "node_ip_address": "127.0.0.2"}


@dataclass
class RayTestCluster:
    cluster: Any  # ray.cluster_utils.Cluster
    address: str  # GCS address, for ray.init(address=...) / ray.address=...
    dashboard_url: str  # http://127.0.0.1:PORT, the job server

    @property
    def worker(self):
        return next(iter(self.cluster.worker_nodes))

    def kill_worker(self) -> None:
        """Kill the worker node's processes without a graceful shutdown (a lost machine)."""
        self.cluster.remove_node(self.worker, allow_graceful=False)

    def add_worker(self) -> None:
        self.cluster.add_node(**WORKER_ARGS)
        self.cluster.wait_for_nodes()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory) -> RayTestCluster:
    """A real local Ray cluster: head (dashboard + job server) and one worker node, 1 CPU each."""
    from ray.cluster_utils import Cluster

    dashboard_port = free_port()
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": 1,
            "resources": {"head": 1},
            "node_ip_address": "127.0.0.1",  # loopback only: drivers reach it through 127.0.0.1
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port,
        },
    )
    try:
        cluster.add_node(**WORKER_ARGS)
        cluster.wait_for_nodes()
        dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        _wait_http(f"{dashboard_url}/api/version", timeout=60)
        yield RayTestCluster(cluster=cluster, address=cluster.address, dashboard_url=dashboard_url)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


# --------------------------------------------------------------------------------------------
# A private PostgreSQL cluster and an MLflow server on any backend (the load test)


def postgres_bin_dir() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl): on $PATH, else Debian's
    /usr/lib/postgresql/<version>/bin (the newest); None when PostgreSQL is not installed."""
    found = shutil.which("pg_ctl")
    if found and (Path(found).resolve().parent / "initdb").exists():
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return versions[-1].parent if versions else None


def _install_postgres() -> Path | None:
    """As root with apt-get, install Debian's PostgreSQL (about a minute, once per machine)."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
    for cmd in (install, ["apt-get", "update", "-q"], install):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
        except subprocess.TimeoutExpired:
            return None
        if cmd is install and done.returncode == 0:
            break
    return postgres_bin_dir()


class PostgresCluster:
    """A throwaway PostgreSQL cluster: ``initdb`` in a fresh folder under the system temp dir,
    listening on 127.0.0.1:``port`` only (no Unix socket outside its folder), password auth for
    user ``odyssey`` (a random password), database ``mlflow``. As root the server runs as the
    ``postgres`` user (``initdb`` refuses root). ``max_connections`` 400: each MLflow server worker
    may hold up to its pool size + 10 connections. ``url`` is the SQLAlchemy URL for MLflow."""

    user, database = "odyssey", "mlflow"

    def __init__(self, bin_dir: Path, port: int | None = None, max_connections: int = 400):
        import secrets
        import tempfile

        self.bin_dir, self.port, self.max_connections = bin_dir, port or free_port(), max_connections
        self.password = secrets.token_hex(16)
        # Not under pytest's tmp (0700, root's): the postgres user must reach the folder.
        self.root = Path(tempfile.mkdtemp(prefix="odyssey-pg-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.root, ignore_errors=True)
                pytest.skip("PostgreSQL: running as root and there is no 'postgres' user to run initdb as")
            if not shutil.which("runuser"):
                shutil.rmtree(self.root, ignore_errors=True)
                pytest.skip("PostgreSQL: running as root and runuser is missing (initdb refuses root)")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.root.chmod(0o700)
        # +psycopg2: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg (3), which MLflow does not bring
        self.url = f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stdout}{done.stderr}{log}")

    def start(self) -> "PostgresCluster":
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.as_user:
            shutil.chown(pwfile, "postgres")
        pwfile.chmod(0o600)
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "-E", "UTF8", "--locale=C",
        )  # fmt: skip
        pwfile.unlink()
        opts = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} -c max_connections={self.max_connections}"
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", opts, "start")
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {self.database}")
        finally:
            conn.close()
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> PostgresCluster:
    """A private PostgreSQL cluster on 127.0.0.1 (see :class:`PostgresCluster`); skips when
    PostgreSQL is not installed and cannot be (apt-get as root), or psycopg2 is missing."""
    pytest.importorskip("psycopg2", reason="PostgreSQL tests need psycopg2-binary (pip install -e '.[test]')")
    bin_dir = postgres_bin_dir() or _install_postgres()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl; Debian: apt-get install postgresql)")
    cluster = PostgresCluster(bin_dir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


class MlflowBackendServer(MlflowServer):
    """``mlflow server`` on 127.0.0.1 with the backend store ``backend_uri`` (passed in the
    environment, so a password stays off the command line) and ``workers`` worker processes
    (None: MLflow's default, 4), ``env`` on top of this process's environment (e.g.
    ``MLFLOW_SQLALCHEMYSTORE_POOL_SIZE``); artifacts under ``root``."""

    def __init__(
        self, root: Path, backend_uri: str, *, workers: int | None = None, env: dict[str, str] | None = None, port: int | None = None
    ):
        super().__init__(root, port)
        self.backend_uri, self.workers, self.env = backend_uri, workers, dict(env or {})

    def start(self) -> "MlflowBackendServer":
        log = self.root / "server.log"
        mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
        cmd = [mlflow, "server", "--artifacts-destination", str(self.root / "artifacts"),
               "--host", "127.0.0.1", "--port", str(self.port)]  # fmt: skip
        if self.workers is not None:
            cmd += ["--workers", str(self.workers)]
        # MLflow 3's job runner (GenAI scorers, a huey consumer per job type) is nothing odyssey uses
        env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": self.backend_uri, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("PYTEST_CURRENT_TEST", None)  # MLflow's store checks every read session under pytest
        env.update(self.env)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.root, env=env, start_new_session=True)
        _wait_http(f"{self.uri}/health", timeout=120, proc=self.proc, log=log)
        return self
