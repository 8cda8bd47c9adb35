"""The user's own config folders, searched before the package's; the one config schema; and an
installed (non-editable) odyssey that trains and submits with a folder written outside the repo.

* Search path: ``--config-dir``, ``$ODYSSEY_CONFIG_PATH`` (paths and ``pkg://`` modules) and
  ``./conf`` come before the package's ``conf/``; the first folder with a file wins.
* One schema: the config dataclasses' defaults, registered in Hydra's ConfigStore, are what a
  composed config holds where no option says otherwise; no option restates a default.
* Installed: a wheel built from this tree holds every module and config file; from a
  ``pip install --target`` copy (not this checkout), ``odyssey train`` uses a new variant from a
  temp folder, and ``odyssey submit`` ships that odyssey and the folder to a real Ray cluster,
  whose job runs an experiment of the folder into a real MLflow server.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from odyssey.config import (
    CONFIG_PATH_ENV,
    compose,
    config_dir,
    config_schemas,
    config_search_path,
    group_options,
    take_config_dirs,
    trial_config,
)
from odyssey.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

MY_VARIANT = "# CIFG without peepholes, under a name of my own\ncoupled_input_forget: true\npeepholes: false\nname: mygate\n"
MY_SPACE = """params:
  model.hidden_size: {dist: loguniform_int, low: 4, high: 8}
  train.lr: {dist: loguniform, low: 1.0e-3, high: 1.0e-2}
"""
MY_EXPERIMENT = """# @package _global_
defaults:
  - override /search_space: mine
study:
  name: {name}
  tasks: [adding]
  variants: [vanilla, mygate]
  num_samples: 2
  max_concurrent_trials: 2
  progress_interval_s: 2
task: {{length: 10, num_train: 32, num_valid: 16, num_test: 16}}
train: {{max_epochs: 2, batch_size: 8}}
"""


def write_folder(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def clean_path(monkeypatch, tmp_path):
    """No user folders from the environment, and a current directory without ./conf."""
    monkeypatch.delenv(CONFIG_PATH_ENV, raising=False)
    monkeypatch.chdir(tmp_path)


# --------------------------------------------------------------------------------------------
# The search path


def test_a_user_folder_comes_before_the_package(clean_path, tmp_path, monkeypatch):
    mine = write_folder(tmp_path / "mine", {
        "variant/mygate.yaml": MY_VARIANT,
        "variant/vanilla.yaml": "peepholes: false\n",  # shadows the package's vanilla
        "experiment/mine.yaml": MY_EXPERIMENT.format(name="mine"),
        "search_space/mine.yaml": MY_SPACE,
    })  # fmt: skip
    monkeypatch.setenv(CONFIG_PATH_ENV, str(mine))
    assert config_search_path() == (mine.resolve(), config_dir())
    assert trial_config(compose("train", ["variant=vanilla"])).variant.peepholes is False
    gate = trial_config(compose("train", ["variant=mygate"])).variant
    assert (gate.coupled_input_forget, gate.peepholes, gate.label()) == (True, False, "mygate")
    options = group_options("variant")
    assert options["mygate"] == options["vanilla"].parent / "mygate.yaml" == mine.resolve() / "variant/mygate.yaml"
    assert options["cifg"] == config_dir() / "variant/cifg.yaml"  # alongside, not instead
    cfg = compose("sweep", ["experiment=mine"])
    assert list(cfg.study.variants) == ["vanilla", "mygate"] and cfg.train.max_epochs == 2
    assert sorted(cfg.search_space.params) == ["model.hidden_size", "train.lr"]  # the folder's own space
    with pytest.raises(ConfigError, match=r"unknown variant 'nope'; valid choices: cifg, .*mygate, .*vanilla"):
        compose("train", ["variant=nope"])


def test_folders_in_order_then_dot_conf(clean_path, tmp_path, monkeypatch):
    first = write_folder(tmp_path / "first", {"variant/a.yaml": "peepholes: false\n"})
    second = write_folder(tmp_path / "second", {"variant/a.yaml": "output_gate: false\n", "variant/b.yaml": "nesterov: 1\n"})
    local = write_folder(tmp_path / "conf", {"variant/c.yaml": "input_gate: false\n"})
    monkeypatch.setenv(CONFIG_PATH_ENV, os.pathsep.join([str(first), "second"]))  # relative to the cwd
    assert config_search_path() == (first, second, local, config_dir())
    a = trial_config(compose("train", ["variant=a"])).variant
    assert (a.peepholes, a.output_gate) == (False, True)  # the first folder wins
    assert trial_config(compose("train", ["variant=c"])).variant.input_gate is False  # ./conf
    assert set(group_options("variant")) >= {"a", "b", "c", "vanilla"}


def test_a_dot_conf_of_another_kind_is_not_searched(clean_path, tmp_path):
    write_folder(tmp_path / "conf", {"db.yaml": "host: x\n"})  # some other tool's conf/
    assert config_search_path() == (config_dir(),)


def test_take_config_dirs_reads_every_form_and_checks_the_folders(clean_path, tmp_path, monkeypatch):
    a = write_folder(tmp_path / "a", {"variant/x.yaml": "{}\n"})
    b = write_folder(tmp_path / "b", {"task/y.yaml": "name: adding\n"})
    monkeypatch.setenv(CONFIG_PATH_ENV, str(b))
    rest = take_config_dirs(["--config-dir", str(a), "variant=x", f"--config-dir={b}", "-cd", str(a), "seed=1"])
    assert rest == ["variant=x", "seed=1"]
    assert os.environ[CONFIG_PATH_ENV].split(os.pathsep) == [str(a), str(b)]  # given order, no repeats
    with pytest.raises(ConfigError, match=r"--config-dir .*/nowhere: .*/nowhere is not a folder"):
        take_config_dirs(["--config-dir", str(tmp_path / "nowhere")])
    with pytest.raises(ConfigError, match=r"has none of the config group folders experiment/, variant/.*not at conf/variant"):
        take_config_dirs(["--config-dir", str(a / "variant")])
    with pytest.raises(ConfigError, match="--config-dir needs a folder"):
        take_config_dirs(["--config-dir"])


def test_a_folder_shipped_as_a_module_is_found_by_pkg_url(clean_path, tmp_path, monkeypatch):
    """What a submitted job sees: its config folders arrive as py_modules entries."""
    write_folder(tmp_path / "site" / "odyssey_conf_abc", {"variant/shipped.yaml": "forget_gate: false\n"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv(CONFIG_PATH_ENV, "pkg://odyssey_conf_abc")
    assert trial_config(compose("train", ["variant=shipped"])).variant.forget_gate is False
    monkeypatch.setenv(CONFIG_PATH_ENV, "pkg://odyssey_conf_missing")
    with pytest.raises(ConfigError, match="pkg://odyssey_conf_missing: no importable folder"):
        compose("train", [])


def test_help_lists_the_user_options(clean_path, tmp_path, capsys):
    from odyssey.cli import main

    mine = write_folder(tmp_path / "mine", {"variant/mygate.yaml": MY_VARIANT})
    assert main(["train", "--config-dir", str(mine), "--help"]) == 0
    out = capsys.readouterr().out
    variants = next(line for line in out.splitlines() if line.strip().startswith("variant "))
    assert "mygate*" in variants and "cifg," in variants and "cifg*" not in variants
    assert f"searched before the package's: {mine}" in out


# --------------------------------------------------------------------------------------------
# One schema


def _defaults(schema: type) -> dict:
    return dataclasses.asdict(schema())


@pytest.mark.parametrize("section", ["variant", "model", "train", "study", "search", "scheduler", "execution", "ray"])
def test_the_composed_defaults_are_the_dataclass_defaults(clean_path, section):
    composed = OmegaConf.to_container(compose("sweep", []), resolve=True)[section]
    expected = _defaults(config_schemas()[section])
    assert composed == expected


def test_tracking_differs_from_its_schema_only_where_train_yaml_says(clean_path):
    composed = OmegaConf.to_container(compose("train", []), resolve=True)["tracking"]
    assert composed == {**_defaults(config_schemas()["tracking"]), "experiment": "odyssey-train"}


OPTION_GROUPS = {"model": "model", "protocol": "train", "scheduler": "scheduler", "search": "search", "execution": "execution", "variant": "variant"}


@pytest.mark.parametrize("group", sorted(OPTION_GROUPS))
def test_no_option_restates_a_schema_default(group):
    """The drift the one schema prevents: an option file that repeats a default would keep its
    value when the dataclass default changes. (``name``/``mode`` select, they are not defaults.)"""
    defaults = _defaults(config_schemas()[OPTION_GROUPS[group]])
    restated = []
    for path in sorted((config_dir() / group).glob("*.yaml")):
        for key, value in (yaml.safe_load(path.read_text()) or {}).items():
            if key == "defaults" or key in ("name", "mode"):
                continue
            assert key in defaults, f"{path.name}: {key} is not a key of the {OPTION_GROUPS[group]} schema"
            if value == defaults[key]:
                restated.append(f"{path.name}: {key}={value!r}")
    assert not restated, f"options restating schema defaults: {restated}"


def test_the_old_schema_file_is_gone():
    assert not (config_dir() / "schema").exists()


# --------------------------------------------------------------------------------------------
# What `odyssey submit` ships


def test_installed_mode_ships_the_package_and_the_folders(clean_path, tmp_path, monkeypatch):
    from odyssey.sweep.jobs import odyssey_runtime_env

    import odyssey

    mine = write_folder(tmp_path / "mine", {"variant/mygate.yaml": MY_VARIANT, "variant/.hidden/x.yaml": "{}\n", "notes.txt": "x"})
    monkeypatch.setenv(CONFIG_PATH_ENV, str(mine))
    staging = tmp_path / "staging"
    env, what = odyssey_runtime_env(staging, odyssey="installed")
    package, folder = env["py_modules"]
    assert package == str(Path(odyssey.__file__).parent)
    assert sorted(p.name for p in Path(env["working_dir"]).iterdir()) == ["README.txt"]  # a clean cwd
    assert Path(folder).parent == staging / "conf" and Path(folder).name.startswith("odyssey_conf_")
    assert sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file()) == ["variant/mygate.yaml"]
    assert env["env_vars"][CONFIG_PATH_ENV] == f"pkg://{Path(folder).name}"
    assert what == f"the installed odyssey {package}; config folders {mine}"

    env, _ = odyssey_runtime_env(staging, odyssey="odyssey==0.1.0")
    assert env["pip"] == ["odyssey==0.1.0"] and len(env["py_modules"]) == 1  # the folder only
    env, what = odyssey_runtime_env(staging, odyssey="checkout")
    assert env["working_dir"] == str(ROOT) and what.startswith(f"the checkout {ROOT}")
    with pytest.raises(ConfigError, match=r"--odyssey .*: not a source checkout .*valid: checkout, installed, a wheel"):
        odyssey_runtime_env(staging, odyssey=str(mine))
    with pytest.raises(ConfigError, match=r"no such wheel"):
        odyssey_runtime_env(staging, odyssey=str(tmp_path / "odyssey-9.whl"))


def test_a_job_files_working_dir_must_not_shadow_the_shipped_odyssey(clean_path, tmp_path):
    from odyssey.sweep.jobs import odyssey_runtime_env

    job = tmp_path / "job.yaml"
    job.write_text(f"working_dir: {ROOT}\nenv_vars: {{A: 1}}\n")
    with pytest.raises(ConfigError, match="holds an odyssey package, which would shadow the one shipped"):
        odyssey_runtime_env(tmp_path / "s", odyssey="installed", job_file=job)
    job.write_text("working_dir: .\nenv_vars: {A: 1}\n")
    env, _ = odyssey_runtime_env(tmp_path / "s", odyssey="installed", job_file=job)
    assert env["working_dir"] == str(tmp_path) and env["env_vars"]["A"] == "1"


# --------------------------------------------------------------------------------------------
# From an installed (non-editable) package


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(site, wheel): this tree built as a wheel and installed with ``pip --target`` (no deps:
    they are this environment's)."""
    work = tmp_path_factory.mktemp("installed")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (work / "dist").glob("odyssey-*.whl")
    site = work / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    return site, wheel


def run_installed(site: Path, cwd: Path, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m odyssey.cli ARGS`` with the installed copy first on the path, outside the repo."""
    environ = {**os.environ, "PYTHONPATH": str(site), **(env or {})}
    environ.pop(CONFIG_PATH_ENV, None)
    return subprocess.run([sys.executable, "-m", "odyssey.cli", *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_config(installed):
    _, wheel = installed
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    modules = {str(p.relative_to(ROOT)) for ext in ("*.py", "*.cpp") for p in (ROOT / "odyssey").rglob(ext) if "__pycache__" not in p.parts}
    configs = {"odyssey/conf/" + str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml")}
    assert modules - names == set(), "modules (or the C++ loop) missing from the wheel (pyproject's packages list, package-data)"
    assert configs - names == set(), "configs missing from the wheel (pyproject's package-data)"


@pytest.mark.slow
def test_train_from_the_installed_package_with_a_folder_outside_the_repo(installed, tmp_path):
    site, _ = installed
    probe = subprocess.run(
        [sys.executable, "-c", "import odyssey, odyssey.config as c; print(odyssey.__file__); print(c.config_dir())"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    module, conf = probe.stdout.split()
    assert module.startswith(str(site)) and conf == str(site / "odyssey" / "conf"), probe.stdout  # not this checkout

    mine = write_folder(tmp_path / "my_configs", {"variant/mygate.yaml": MY_VARIANT})
    args = ["variant=mygate", "task.length=10", "task.num_train=16", "task.num_valid=8", "task.num_test=8",
            "model.hidden_size=4", "train.max_epochs=1", f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}"]  # fmt: skip
    out = run_installed(site, tmp_path, "train", "--config-dir", str(mine), *args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1].startswith("mygate on adding: completed")
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("odyssey-train").experiment_id])
    assert run.data.params["variant.coupled_input_forget"] == "True" and run.data.params["variant.peepholes"] == "False"

    # ./conf by convention, from the folder that holds it
    write_folder(tmp_path / "project" / "conf", {"variant/mygate.yaml": MY_VARIANT})
    out = run_installed(site, tmp_path / "project", "train", "--cfg", "job", "variant=mygate")
    assert out.returncode == 0, out.stderr[-3000:]
    assert yaml.safe_load(out.stdout)["variant"]["name"] == "mygate"


@pytest.mark.slow
def test_submit_from_the_installed_package_ships_it_and_the_folder(installed, tmp_path, mlflow_server, ray_cluster):
    """The job runs the installed copy (a py_modules upload, not this checkout) with the user's
    variant and experiment, and records the study in MLflow."""
    from ray.job_submission import JobSubmissionClient
    from test_sweep import assert_study

    site, _ = installed
    name = "installed-submit"
    mine = write_folder(tmp_path / "my_configs", {
        "variant/mygate.yaml": MY_VARIANT, "experiment/mine.yaml": MY_EXPERIMENT.format(name=name), "search_space/mine.yaml": MY_SPACE,
    })  # fmt: skip
    job_id = f"odyssey-{name}"
    out = run_installed(
        site, tmp_path, "submit", "--address", ray_cluster.dashboard_url, "--python", sys.executable, "--id", job_id,
        "--config-dir", str(mine), "--wait", "experiment=mine", f"study.storage_path={tmp_path / 'ray_results'}",
        f"tracking.uri={mlflow_server}", timeout=420,
    )  # fmt: skip
    assert f"submitted job {job_id}" in out.stdout, out.stderr[-3000:]
    logs = JobSubmissionClient(ray_cluster.dashboard_url).get_job_logs(job_id)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-2000:], logs[-3000:])
    assert f"submitted job {job_id}: the installed odyssey {site / 'odyssey'}; config folders {mine}" in out.stdout
    (which,) = [line for line in logs.splitlines() if line.startswith("odyssey 0.1.0 from ")]
    assert "runtime_resources" in which and str(ROOT) not in which, which  # the shipped copy ran
    assert "config folders " in which and "odyssey_conf_" in which
    assert_study(mlflow_server, name, variants=["vanilla", "mygate"], samples=2, epochs=2)
