"""The run schema lives in one module (odyssey.run_schema): its names, its statuses and its store
checks. The writer-reader contract itself is tested end to end in tests/test_sweep.py (a real
sweep, then the analysis, on one store)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from odyssey import run_schema
from odyssey.errors import NotFoundError, ServiceError
from odyssey.run_schema import (
    ALL_STATUSES,
    STATUS_COMPLETED,
    STATUS_FAILED,
    STATUS_INTERRUPTED,
    STATUS_STOPPED,
    check_store,
    mlflow_status,
    status_of,
)

ROOT = Path(__file__).resolve().parents[1]


def test_no_other_module_defines_run_names():
    """Tags, roles, statuses and artifact names are defined once; elsewhere they are imported."""
    definition = re.compile(r'^(TAG_\w+|ROLE_\w+|STATUS_\w+|\w+_ARTIFACT)\s*=\s*"', re.M)
    found = {
        str(path.relative_to(ROOT)): definition.findall(path.read_text())
        for path in (ROOT / "odyssey").rglob("*.py")
        if path.name != "run_schema.py"
    }
    assert {k: v for k, v in found.items() if v} == {}


@pytest.mark.parametrize(
    "status, expected",
    [(STATUS_COMPLETED, "FINISHED"), ("diverged", "FINISHED"), (STATUS_FAILED, "FAILED"),
     (STATUS_INTERRUPTED, "KILLED"), (STATUS_STOPPED, "KILLED"), ("running", "RUNNING")],
)  # fmt: skip
def test_mlflow_status_follows_the_odyssey_status(status, expected):
    assert mlflow_status(status) == expected
    assert status_of({run_schema.TAG_STATUS: status}, "FINISHED") == status  # the tag wins


def test_a_run_without_a_status_tag_gets_one_from_mlflow():
    assert [status_of({}, s) for s in ("RUNNING", "SCHEDULED", "FAILED", "KILLED", "FINISHED")] == [
        "running", "running", "failed", "failed", "completed",
    ]  # fmt: skip
    assert set(ALL_STATUSES) >= {status_of({}, s) for s in ("RUNNING", "FAILED", "FINISHED")}


def test_metric_names():
    assert (run_schema.best_val_metric("mse"), run_schema.test_metric("nll")) == ("best_val/mse", "test/nll")
    assert run_schema.search_trials_metric("failed") == "search/trials/failed"
    assert run_schema.search_best_metric("mse") == "search/best_val/mse"


def test_store_checks(tmp_path):
    new = f"sqlite:///{tmp_path / 'new' / 'mlruns.db'}"
    check_store(new)  # a writer creates the folder
    assert (tmp_path / "new").is_dir()
    with pytest.raises(NotFoundError, match=rf"no MLflow tracking store at {tmp_path}/new/mlruns.db .*--tracking-uri"):
        check_store(new, existing=True)  # a reader: a missing file is a wrong URI
    (tmp_path / "new" / "mlruns.db").write_bytes(b"")
    check_store(new, existing=True)
    from conftest import free_port

    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServiceError, match=rf"MLflow tracking server {down} is not reachable"):
        check_store(down, timeout=1)


def test_the_default_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert run_schema.default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert run_schema.default_tracking_uri(tmp_path) == "http://127.0.0.1:5000"
    assert run_schema.experiment_url("http://h:5000/", "7") == "http://h:5000/#/experiments/7?workflowType=machine_learning"
