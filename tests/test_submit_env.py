"""What ``odyssey submit`` uploads: the zip that Ray's own job client builds from
:func:`project_runtime_env`, read back file by file.

The upload goes through ``JobSubmissionClient._upload_working_dir_if_needed`` (what
``submit_job`` calls) with the HTTP layer replaced by a recorder, so Ray's default excludes, its
reading of ``.gitignore`` and ``.rayignore`` and its zipping are all the real ones; no server is
started.
"""

from __future__ import annotations

import copy
import io
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from odyssey.sweep.jobs import EXCLUDES, project_runtime_env

ROOT = Path(__file__).resolve().parents[1]

# A project tree with everything a working copy accumulates, and the files Ray must ship.
SHIPPED = {
    ".gitignore": (ROOT / ".gitignore").read_text(),  # the repository's own
    ".rayignore": "# this project's own upload excludes\nnotes/\n*.ipynb\n",
    "README.md": "# odyssey\n",
    "pyproject.toml": "[project]\nname = 'odyssey'\n",
    "conf/sweep.yaml": "defaults: []\n",
    "conf/experiment/quickstart.yaml": "study: {name: quickstart}\n",
    "jobs/quickstart.yaml": "env_vars: {ODYSSEY_OVERRIDES: experiment=quickstart}\n",
    "odyssey/__init__.py": "",
    "odyssey/analysis/__init__.py": "",  # a package named like the analysis/ output folder
    "odyssey/analysis/report.py": "REPORT = 1\n",
    "odyssey/sweep/jobs.py": "",
    "odyssey/tasks/data.py": "",
}
LOCAL_ONLY = {
    ".env": "POSTGRES_PASSWORD=not-a-real-password\n",
    ".env.local": "MLFLOW_TRACKING_PASSWORD=not-a-real-password\n",
    "odyssey/tasks/.env": "TOKEN=not-a-real-token\n",
    ".venv/bin/python": "",
    ".venv/lib/python3.11/site-packages/torch/__init__.py": "",
    ".git/config": "[core]\n",
    "mlruns.db": "sqlite",
    "mlruns/0/meta.yaml": "",
    "mlartifacts/1/model.pt": "",
    "analysis/report.md": "# report\n",
    "analysis/quickstart/welch.csv": "",
    "ray_results/x": "",
    "ray_results/quickstart/trial_0/checkpoint": "",
    "data/jsb/train.pkl": "",
    "odyssey/__pycache__/jobs.cpython-311.pyc": "",
    "notes/private.txt": "only excluded by .rayignore\n",  # .rayignore patterns
    "scratch.ipynb": "{}",
    "sweep.log": "only excluded by .gitignore\n",  # the repository's .gitignore (*.log)
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    for rel, text in {**SHIPPED, **LOCAL_ONLY}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def upload_set(runtime_env: dict) -> list[str]:
    """The file names in the package Ray's job client uploads for ``runtime_env``."""
    from ray.job_submission import JobSubmissionClient

    uploads: list[bytes] = []

    class Reply:
        def __init__(self, status_code: int):
            self.status_code = status_code

    def do_request(method: str, endpoint: str, **kwargs):
        if method == "GET":  # "does the package exist?": no
            return Reply(404)
        assert method == "PUT" and endpoint.startswith("/api/packages/gcs/_ray_pkg_"), (method, endpoint)
        uploads.append(kwargs["data"])
        return Reply(200)

    client = JobSubmissionClient.__new__(JobSubmissionClient)  # no server: nothing to connect to
    client._do_request = do_request
    env = copy.deepcopy(runtime_env)
    client._upload_working_dir_if_needed(env)
    assert env["working_dir"].startswith("gcs://_ray_pkg_"), env["working_dir"]
    assert len(uploads) == 1
    with zipfile.ZipFile(io.BytesIO(uploads[0])) as zf:
        return sorted(zf.namelist())


def test_upload_set_is_the_project_without_secrets_or_local_state(project, monkeypatch):
    monkeypatch.delenv("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", raising=False)
    monkeypatch.delenv("RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES", raising=False)
    env = project_runtime_env(root=project)
    assert env["working_dir"] == str(project.resolve())
    assert upload_set(env) == sorted(SHIPPED)


def test_secrets_and_local_state_stay_home_when_ray_ignores_gitignore(project, monkeypatch):
    """.gitignore is not what keeps them out: Ray skips it with RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1,
    and RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES='' drops Ray's own defaults (.git, .venv)."""
    monkeypatch.setenv("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "1")
    monkeypatch.setenv("RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES", "")
    names = upload_set(project_runtime_env(root=project))
    assert names == sorted([*SHIPPED, "sweep.log"])  # only what .gitignore alone excluded comes along


def test_job_file_excludes_and_working_dir(project, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("working_dir: .\nexcludes: [README.md, /jobs]\nenv_vars: {A: 1}\n")
    env = project_runtime_env(job_file=job, root=project, tracking_uri="http://mlflow:5000")
    assert set(EXCLUDES) | {"README.md", "/jobs"} == set(env["excludes"])
    assert env["env_vars"] == {"A": "1", "MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    expected = sorted(n for n in SHIPPED if n != "README.md" and not n.startswith("jobs/"))
    assert upload_set(env) == expected


def test_excludes_that_name_output_folders_are_anchored():
    """`odyssey analyze` writes analysis/, the source has odyssey/analysis/: only root-anchored
    patterns may name such folders."""
    from ray._private.thirdparty.pathspec import PathSpec  # the matcher Ray applies to excludes

    spec = PathSpec.from_lines("gitwildmatch", EXCLUDES)
    for path in ["analysis", "data", "build", "dist", "outputs", "multirun", ".env", ".env.prod", "mlruns.db",
                 "mlruns", "ray_results", ".venv", ".git", "x/.env"]:  # fmt: skip
        assert spec.match_file(path), path
    for path in ["odyssey/analysis", "odyssey/analysis/report.py", "odyssey/data", "odyssey/build",
                 "conf/analysis.yaml", "odyssey/tasks/data.py", "environment.yaml"]:  # fmt: skip
        assert not spec.match_file(path), path


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and a checkout")
@pytest.mark.parametrize(
    "path, ignored",
    [(".env", True), (".env.local", True), ("analysis/report.md", True), ("mlruns.db", True),
     ("ray_results/x", True), ("odyssey/analysis/report.py", False), ("conf/sweep.yaml", False)],
)  # fmt: skip
def test_gitignore(path, ignored):
    rc = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT).returncode
    assert rc == (0 if ignored else 1), f"{path}: git check-ignore exit {rc}"


def test_the_repository_upload_carries_the_code_and_no_local_state(monkeypatch):
    """The real checkout, as `odyssey submit` would ship it (default root: project_root())."""
    monkeypatch.delenv("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", raising=False)
    env = project_runtime_env()
    assert Path(env["working_dir"]) == ROOT
    names = upload_set(env)
    assert {"pyproject.toml", "odyssey/sweep/jobs.py", "odyssey/analysis/__init__.py", "conf/sweep.yaml"} <= set(names)
    top = {n.split("/", 1)[0] for n in names}
    assert not top & {".git", ".venv", "venv", ".env", "mlruns", "mlruns.db", "mlartifacts", "analysis",
                      "ray_results", "data", ".pytest_cache"}, sorted(top)  # fmt: skip
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or Path(n).name.startswith(".env")]
