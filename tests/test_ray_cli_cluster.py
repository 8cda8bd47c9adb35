"""The cluster as Ray's CLI starts it, with the README's commands: the token in the head's
~/.ray/auth_token (copied to the worker's), `ray start --head` on 127.0.0.1, `ray start --address`
for a worker on 127.0.0.2, RAY_AUTH_MODE=token everywhere; then `odyssey sweep ray.address=...`
and `odyssey submit --address http://...` on it, read back from MLflow.

(tests/conftest.py builds its cluster in Python with ray.cluster_utils, which never runs the CLI.)

Both nodes live on this machine, so two loopback details of Ray 2.60 show here that a cluster of
real machines does not meet:

* the head keeps 127.0.0.1 (and then binds its GCS, raylet and agents to loopback only) only
  under RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: otherwise ``ray start`` rewrites a loopback
  --node-ip-address into the machine's outward address (ray/_private/services.py,
  resolve_ip_for_localhost) and its gRPC servers listen on every interface;
* ``ray start --address 127.0.0.1:PORT`` on the worker is rewritten the same way (and the worker
  cannot take that switch: ``ray start --address`` refuses to run under it), so the worker names
  the head by the IPv4-mapped IPv6 spelling of 127.0.0.1, which Ray does not rewrite
  (ray-project/ray#59110).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port
from test_sweep import ROOT, assert_study, tiny

# 54 s together (a token-authenticated cluster of its own, started by Ray's CLI): soak tests, so that
# the default run stays under 10 minutes; python -m pytest -m soak runs them.
pytestmark = [pytest.mark.slow, pytest.mark.soak]

RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


@dataclass
class CliCluster:
    gcs_port: int
    dashboard_url: str
    head_pgid: int
    token: str
    root: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"


def _node_env(home: Path, **extra: str) -> dict[str, str]:
    """A node's environment: its own HOME (hence its own ~/.ray/auth_token) and token mode."""
    env = _clean_env()
    env.update(HOME=str(home), RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def _clean_env() -> dict[str, str]:
    """This process's environment without Ray's auth, address and loopback settings."""
    drop = (*AUTH_VARS, "RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _ray_start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`ray start ...` in its own process group (the node's daemons stay in it: pgid = its pid)."""
    with open(log, "wb") as out:
        return subprocess.Popen([RAY, "start", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def _started(proc: subprocess.Popen, log: Path) -> None:
    """`ray start` returns once its node runs (a worker: once it joined the head's GCS)."""
    try:
        code = proc.wait(timeout=150)
    except subprocess.TimeoutExpired:
        code = None
    if code != 0:
        pytest.fail(f"{' '.join(map(str, proc.args))} -> {code}:\n{log.read_text()[-4000:]}")


def _kill_groups(pgids: list[int]) -> None:
    """Stop nodes: SIGTERM to their process groups, SIGKILL to what is left after 2 s."""
    for sig, grace in ((signal.SIGTERM, 2), (signal.SIGKILL, 10)):
        for pgid in pgids:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_group(pgid) for pgid in pgids):
            time.sleep(0.2)


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (pgid, command line) of every process we can read."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if fields[0] != "Z":
            out[int(entry)] = (int(fields[2]), cmdline)
    return out


def _group(pgid: int) -> list[int]:
    return [pid for pid, (group, _) in _processes().items() if group == pgid]


def _listening(pids: list[int]) -> list[tuple[str, int, int]]:
    """(ip, port, pid) of the TCP sockets in LISTEN state that these processes hold (/proc/net/tcp*)."""
    owner = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owner[int(link[8:-1])] = pid
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state != "0A" or inode not in owner:  # 0A: LISTEN
                continue
            hex_ip, hex_port = local.split(":")
            raw = bytes.fromhex(hex_ip)
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # host-order words
            found.append((socket.inet_ntop(family, raw), int(hex_port, 16), owner[inode]))
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def _get(url: str, token: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return r.read()


def _nodes(cluster: CliCluster) -> list[dict]:
    body = json.loads(_get(f"{cluster.dashboard_url}/api/v0/nodes", cluster.token))
    return body["data"]["result"]["result"]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError as exc:  # not up yet
            last = exc
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})")


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory) -> CliCluster:
    """The README's commands, on loopback: head on 127.0.0.1 (1 CPU), worker on 127.0.0.2 (1 CPU)."""
    root = tmp_path_factory.mktemp("rc")  # short: Ray's unix sockets live under --temp-dir
    head_home, worker_home = root / "head_home", root / "worker_home"
    head_env = _node_env(head_home, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    # what `ray get-auth-token --generate` does on the head (a CLI start saved here: seconds on 2 cores)
    token = secrets.token_hex(32)
    token_file = head_home / ".ray" / "auth_token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text(token)
    token_file.chmod(0o600)
    (worker_home / ".ray").mkdir(parents=True)
    shutil.copy(token_file, worker_home / ".ray" / "auth_token")  # scp head:~/.ray/auth_token worker:~/.ray/

    gcs, dashboard = free_port(), free_port()

    def ports() -> list[str]:  # free ports, not Ray's fixed defaults (other clusters may run here)
        flags = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                 "metrics-export-port")  # fmt: skip
        return [f"--{flag}={free_port()}" for flag in flags]

    starts: list[subprocess.Popen] = []
    try:  # both at once: the worker's `ray start` waits for the head's GCS
        starts.append(_ray_start(
            ["--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}", *ports(),
             "--num-cpus=1", '--resources={"head": 1}', f"--temp-dir={root / 'h'}"],
            head_env, root / "head.log",
        ))  # fmt: skip
        starts.append(_ray_start(
            [f"--address=[::ffff:127.0.0.1]:{gcs}", "--node-ip-address=127.0.0.2", *ports(),
             "--num-cpus=1", '--resources={"worker": 1}', f"--temp-dir={root / 'w'}"],
            _node_env(worker_home), root / "worker.log",
        ))  # fmt: skip
        _started(starts[0], root / "head.log")
        _started(starts[1], root / "worker.log")
        cluster = CliCluster(gcs, f"http://127.0.0.1:{dashboard}", starts[0].pid, token, root)
        alive = lambda: sum(n["state"] == "ALIVE" for n in _nodes(cluster)) == 2  # noqa: E731
        _wait(alive, 90, "both nodes alive")
        job_server = lambda: bool(_get(f"{cluster.dashboard_url}/api/version", token))  # noqa: E731
        _wait(job_server, 90, "the job server")
        yield cluster
    finally:
        _kill_groups([proc.pid for proc in starts])
        for proc in starts:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        # Ray's workers stay in their node's process group; anything left that names our temp
        # dirs is still ours.
        for pid, (_, cmdline) in _processes().items():
            if str(root) in cmdline and pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def laptop(cli_cluster, tmp_path):
    """This process as a machine that connects: token mode, the head's token copied into a file
    named by RAY_AUTH_TOKEN_PATH. Ray caches its config and the token, so both are reloaded, and
    restored afterwards."""
    import ray
    from ray._raylet import AuthenticationTokenLoader, Config

    if ray.is_initialized():  # a driver left connected elsewhere: the sweep must connect afresh
        ray.shutdown()
    token_path = tmp_path / "laptop_token"
    token_path.write_text(cli_cluster.token)
    saved = {k: os.environ.get(k) for k in (*AUTH_VARS, "RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    for k in saved:
        os.environ.pop(k, None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    try:
        yield token_path
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def _trial_nodes(results: Path) -> set[str]:
    """The node IPs Ray Tune recorded for the trials of a study (its result.json files)."""
    ips = set()
    for path in results.rglob("result.json"):
        for line in path.read_text().splitlines():
            if line.strip():
                ips.add(json.loads(line)["node_ip"])
    return ips


def test_cli_cluster_on_loopback(cli_cluster, laptop, mlflow_server, tmp_path):
    """The head listens on loopback only and advertises 127.0.0.1; a sweep's trials run on both
    nodes; a submitted job runs its study there too; MLflow has every trial, completed."""
    head_pids = _group(cli_cluster.head_pgid)
    sockets = _listening(head_pids)
    names = {pid: _comm(pid) for pid in head_pids}
    public = [(ip, port, names.get(pid, pid)) for ip, port, pid in sockets if not _is_loopback(ip)]
    assert not public, f"head ports on non-loopback interfaces: {public}"
    ports = {port for _, port, _ in sockets}
    dashboard_port = int(cli_cluster.dashboard_url.rsplit(":", 1)[1])
    assert {cli_cluster.gcs_port, dashboard_port} <= ports, sorted(ports)
    assert any(port == cli_cluster.gcs_port and names[pid] == "gcs_server" for _, port, pid in sockets), sockets
    assert any(names[pid] == "raylet" for _, _, pid in sockets), names
    nodes = {n["node_ip"]: n for n in _nodes(cli_cluster)}
    assert set(nodes) == {"127.0.0.1", "127.0.0.2"}, nodes
    assert nodes["127.0.0.1"]["is_head_node"] and not nodes["127.0.0.2"]["is_head_node"]

    # `odyssey sweep ray.address=127.0.0.1:PORT`: 2 trials at once, 1 CPU per node -> one on each
    from odyssey.sweep.cli import sweep_main

    name = "cli-sweep"
    overrides = [*tiny(tmp_path, name, variants=("vanilla",), samples=2, epochs=2), "execution=single"]
    assert sweep_main([*overrides, f"tracking.uri={mlflow_server}", f"ray.address={cli_cluster.address}"]) == 0
    assert_study(mlflow_server, name, variants=["vanilla"], samples=2, epochs=2)
    assert _trial_nodes(tmp_path / "ray_results" / name) == {"127.0.0.1", "127.0.0.2"}

    # `odyssey submit --address http://127.0.0.1:PORT`: the job's driver runs on the head
    from odyssey.sweep.jobs import submit_main, wait

    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server  # restored by `laptop`
    job = "cli-submitted"
    job_overrides = [*tiny(tmp_path / "job", job, variants=("vanilla",), samples=2, epochs=2), "execution=single"]
    assert submit_main(["--address", cli_cluster.dashboard_url, "--python", sys.executable, "--id", job,
                        *job_overrides]) == 0  # fmt: skip
    status = wait(job, address=cli_cluster.dashboard_url, timeout=240)
    if status != "SUCCEEDED":
        from ray.job_submission import JobSubmissionClient

        logs = JobSubmissionClient(cli_cluster.dashboard_url).get_job_logs(job)
        pytest.fail(f"job ended {status}:\n{logs[-4000:]}")
    assert_study(mlflow_server, job, variants=["vanilla"], samples=2, epochs=2)


def test_refused_token_is_one_line(cli_cluster, mlflow_server, tmp_path):
    """A driver whose token the cluster refuses (none sent; a wrong one) stops with one line naming
    the address and how to share the token - no traceback, no trial - within seconds."""
    home = tmp_path / "home"  # no ~/.ray/auth_token here
    home.mkdir()
    base = _clean_env()  # and Ray's loopback switch is for the command to set (odyssey/sweep/cli.py)
    base.update(HOME=str(home), PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    cases = {"no-token": {}, "wrong-token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}}
    procs = {}
    for case, extra in cases.items():
        overrides = [*tiny(tmp_path / case, f"refused-{case}", variants=("vanilla",), samples=1, epochs=1),
                     f"tracking.uri={mlflow_server}", f"ray.address={cli_cluster.address}"]  # fmt: skip
        procs[case] = subprocess.Popen(
            [sys.executable, "-m", "odyssey.sweep.cli", *overrides], env={**base, **extra}, cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
    started = time.monotonic()
    for case, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"{case}: the driver still runs after 90 s:\n{err[-3000:]}")
        assert proc.returncode == 2, f"{case}: exit code {proc.returncode}\n{err[-3000:]}"
        assert "Traceback" not in err, f"{case}:\n{err[-3000:]}"
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"odyssey sweep: error: Ray cluster at {cli_cluster.address} refused"), err[-3000:]
        assert "ray get-auth-token" in last and "RAY_AUTH_MODE=token" in last, last
        assert ("RAY_AUTH_MODE is not 'token' here" in last) == (case == "no-token"), last
        from mlflow import MlflowClient

        # refused before the study's first MLflow record (#20: checks before records)
        assert MlflowClient(mlflow_server).get_experiment_by_name(f"refused-{case}") is None
    assert time.monotonic() - started < 60, "the refusal should come before ray.init's ~20 s of retries"
