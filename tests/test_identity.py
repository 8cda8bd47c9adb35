"""One study, one sweep (odyssey.sweep.identity): the record and the lease on the study's MLflow
experiment, against the real test tracking server. No Ray runtime: the sweep driver's integration
is tested in test_sweep.py (a second live driver refused; resume after SIGKILL takes over)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from odyssey.errors import ConfigError, ServiceError
from odyssey.sweep import identity, mlflow_runs
from odyssey.sweep.study import load_sweep


def sweep_config(tmp_path, name: str, *extra: str):
    return load_sweep([
        f"study.name={name}", "study.tasks=[adding]", "study.variants=[vanilla]", "study.num_samples=2",
        "search_space=tiny", "task.length=10", "train.max_epochs=2", f"study.storage_path={tmp_path / 'ray_results'}",
        *extra,
    ])  # fmt: skip


def experiment(uri: str, name: str) -> str:
    return mlflow_runs.ensure_experiment(uri, name)


def tags(uri: str, experiment_id: str) -> dict[str, str]:
    return mlflow_runs.client(uri).get_experiment(experiment_id).tags


def add_parent(uri: str, experiment_id: str, name: str) -> str:
    return mlflow_runs.start_parent_run(
        uri, experiment_id, study=name, task="adding", variant="vanilla", tags={}, resume=False
    )


@pytest.fixture(autouse=True)
def quick_settle(monkeypatch):
    monkeypatch.setattr(identity, "SETTLE_S", 0.2)


def test_a_live_lease_refuses_a_second_driver_and_is_released_at_the_end(tmp_path, mlflow_server):
    name = "lease-live"
    exp = experiment(mlflow_server, name)
    sweep = sweep_config(tmp_path, name)
    with identity.claim(sweep, mlflow_server, exp) as storage:
        assert storage == sweep.storage_path
        lease = json.loads(tags(mlflow_server, exp)[identity.TAG_LEASE])
        assert lease["pid"] > 0 and lease["host"]
        with pytest.raises(ServiceError, match=rf"study '{name}' is being run by another driver \(host .*, pid {lease['pid']}, since .*last heartbeat \d+ s ago\)"):
            with identity.claim(sweep, mlflow_server, exp):
                pass
    assert identity.TAG_LEASE not in tags(mlflow_server, exp)  # released
    with identity.claim(sweep, mlflow_server, exp):  # and free again
        pass


def test_a_lease_whose_driver_died_on_this_host_is_taken_over(tmp_path, mlflow_server):
    name = "lease-dead"
    exp = experiment(mlflow_server, name)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()
    stale = identity.Lease("x" * 32, identity.socket.gethostname(), dead.pid, now, now)
    mlflow_runs.client(mlflow_server).set_experiment_tag(exp, identity.TAG_LEASE, json.dumps(stale.__dict__))
    with identity.claim(sweep_config(tmp_path, name), mlflow_server, exp):
        assert json.loads(tags(mlflow_server, exp)[identity.TAG_LEASE])["id"] != stale.id


@pytest.mark.parametrize("age, refused", [(5.0, True), (identity.LEASE_TTL_S + 5, False)])
def test_a_lease_on_another_host_holds_until_its_heartbeat_expires(tmp_path, mlflow_server, age, refused):
    name = f"lease-remote-{int(age)}"
    exp = experiment(mlflow_server, name)
    beat = time.time() - age
    other = identity.Lease("y" * 32, "some-other-host", 4242, beat - 100, beat)
    mlflow_runs.client(mlflow_server).set_experiment_tag(exp, identity.TAG_LEASE, json.dumps(other.__dict__))
    sweep = sweep_config(tmp_path, name)
    if refused:
        with pytest.raises(ServiceError, match="host some-other-host, pid 4242"):
            with identity.claim(sweep, mlflow_server, exp):
                pass
    else:
        with identity.claim(sweep, mlflow_server, exp):
            pass


def test_a_study_with_a_sweep_needs_resume_and_a_resume_needs_the_same_budget(tmp_path, mlflow_server):
    name = "recorded"
    exp = experiment(mlflow_server, name)
    first = sweep_config(tmp_path, name)
    with identity.claim(first, mlflow_server, exp):
        add_parent(mlflow_server, exp, name)
    record = json.loads(tags(mlflow_server, exp)[identity.TAG_STORAGE])
    assert record["path"] == str(first.storage_path)
    assert json.loads(tags(mlflow_server, exp)[identity.TAG_BUDGET])["num_samples"] == 2

    with pytest.raises(ConfigError, match=rf"study '{name}' already has a sweep in MLflow \(1 search run\(s\), Ray Tune state at {first.storage_path}.*resume=true"):
        with identity.claim(first, mlflow_server, exp):
            pass
    # another storage path (the measured failure: a second, independent sweep) is refused too
    with pytest.raises(ConfigError, match="already has a sweep"):
        with identity.claim(sweep_config(tmp_path / "elsewhere", name), mlflow_server, exp):
            pass
    # resuming with another budget would pool an 8-epoch and a 2-epoch sweep
    with pytest.raises(ConfigError, match=r"another budget \(protocol.adding.train.max_epochs: 2 recorded, 8 now\)"):
        with identity.claim(sweep_config(tmp_path, name, "train.max_epochs=8", "resume=true"), mlflow_server, exp):
            pass
    with pytest.raises(ConfigError, match=r"num_samples: 2 recorded, 5 now"):
        with identity.claim(sweep_config(tmp_path, name, "study.num_samples=5", "resume=true"), mlflow_server, exp):
            pass
    # the same budget resumes, where it was recorded
    with identity.claim(sweep_config(tmp_path, name, "resume=true"), mlflow_server, exp) as storage:
        assert storage == first.storage_path


def test_resume_from_a_storage_path_that_has_no_state_says_why(tmp_path, mlflow_server):
    name = "recorded-elsewhere"
    exp = experiment(mlflow_server, name)
    with identity.claim(sweep_config(tmp_path / "a", name), mlflow_server, exp):
        add_parent(mlflow_server, exp, name)
    elsewhere = sweep_config(tmp_path / "b", name, "resume=true")
    with pytest.raises(ConfigError, match=rf"Ray Tune state is recorded at {tmp_path / 'a' / 'ray_results'} on host .*which this machine cannot see"):
        with identity.claim(elsewhere, mlflow_server, exp):
            pass


def test_the_analysis_refuses_searches_of_one_task_with_different_recorded_budgets(tmp_path, mlflow_server):
    """Searches whose recorded budgets differ (e.g. written by a resume that changed the task, as
    measured before #20) are not compared: mixed_sweeps names the difference."""
    from odyssey.analysis.study import load_study, mixed_sweeps
    from odyssey.run_schema import TAG_SEARCH_BUDGET

    name = "mixed-budgets"
    exp = experiment(mlflow_server, name)
    short, long_ = sweep_config(tmp_path, name), sweep_config(tmp_path, name, "task.length=50", "study.variants=[cifg]")
    for sweep in (short, long_):
        (plan,) = sweep.searches
        mlflow_runs.start_parent_run(
            mlflow_server, exp, study=name, task=plan.task, variant=plan.variant, resume=False,
            tags={TAG_SEARCH_BUDGET: json.dumps(identity.search_budget(sweep, plan))},
        )  # fmt: skip
    problems = mixed_sweeps(load_study(name, tracking_uri=mlflow_server))
    assert problems == ["task adding: searches vanilla and cifg ran different budgets (task.length: 10 (vanilla) vs 50 (cifg))"]


def test_a_resume_refuses_a_variant_whose_switches_changed(tmp_path, mlflow_server, monkeypatch):
    name = "changed-switches"
    exp = experiment(mlflow_server, name)
    (tmp_path / "conf" / "variant").mkdir(parents=True)
    mine = tmp_path / "conf" / "variant" / "mine.yaml"
    mine.write_text("peepholes: false\n")
    monkeypatch.setenv("ODYSSEY_CONFIG_PATH", str(tmp_path / "conf"))
    with identity.claim(sweep_config(tmp_path, name, "study.variants=[vanilla,mine]"), mlflow_server, exp):
        add_parent(mlflow_server, exp, name)
    mine.write_text("peepholes: false\ncoupled_input_forget: true\n")
    with pytest.raises(ConfigError, match=r"variant mine: coupled_input_forget: False recorded, True now.*Restore the variant file"):
        with identity.claim(sweep_config(tmp_path, name, "study.variants=[vanilla,mine]", "resume=true"), mlflow_server, exp):
            pass


def test_every_experiment_odyssey_uses_opens_in_the_model_training_layout(mlflow_server):
    """#23: every experiment odyssey creates or uses declares its kind, mlflow.experimentKind =
    custom_model_development (the UI's layout itself: tests/test_ui.py)."""
    from mlflow import MlflowClient

    from odyssey.run_schema import EXPERIMENT_KIND, TAG_EXPERIMENT_KIND

    client = MlflowClient(mlflow_server)
    created = experiment(mlflow_server, "layout-new")
    assert client.get_experiment(created).tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND == "custom_model_development"
    foreign = client.create_experiment("layout-made-elsewhere")  # e.g. by mlflow.set_experiment
    assert TAG_EXPERIMENT_KIND not in client.get_experiment(foreign).tags
    assert experiment(mlflow_server, "layout-made-elsewhere") == foreign
    assert client.get_experiment(foreign).tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND
