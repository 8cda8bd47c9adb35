"""`odyssey export optuna`, read back with Optuna: the trials keep their runs' times, numbers follow
the trial index (the run names), the metric has its name, the log-scaled parameters are declared
log-scaled. A recorded study is logged straight into the session's MLflow server (the sweep's
schema), so the test runs in about a second; tests/test_sweep.py::test_tpe_search_end_to_end
exports a real sweep."""

from __future__ import annotations

import datetime

import pytest

SPACE = {"params": {
    "model.hidden_size": {"dist": "loguniform_int", "low": 4, "high": 64},
    "train.lr": {"dist": "loguniform", "low": 1e-4, "high": 1e-1},
    "train.momentum": {"dist": "one_minus_loguniform", "low": 0.01, "high": 1.0},
    "train.input_noise": {"dist": "uniform", "low": 0.0, "high": 0.5},
}}  # fmt: skip
T0 = 1_760_000_000_000  # ms since the epoch


def _log_search(uri: str, name: str) -> list:
    """A search of 4 trials created out of index order (2, 0, 3, 1: parallel trials start in any
    order), each with its own start and end time; trial 3 is still running (left out)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from odyssey import tracking as tr
    from odyssey.sweep import mlflow_runs

    client = MlflowClient(uri)
    exp = mlflow_runs.ensure_experiment(uri, name)
    parent = mlflow_runs.start_parent_run(uri, exp, study=name, task="adding", variant="vanilla",
                                          tags={tr.TAG_PRIMARY_METRIC: "mse", tr.TAG_LOWER_IS_BETTER: "true"}, resume=False)  # fmt: skip
    from odyssey.sweep.search_space import translate

    mlflow_runs.record_search_space(uri, parent, translate(SPACE))
    runs = []
    for order, index in enumerate((2, 0, 3, 1)):
        status = tr.STATUS_RUNNING if index == 3 else tr.STATUS_COMPLETED
        tags = {"mlflow.parentRunId": parent, tr.TAG_ROLE: "trial", tr.TAG_TASK: "adding", tr.TAG_VARIANT: "vanilla",
                tr.TAG_STATUS: status, tr.TAG_TRIAL_ID: f"run_abc12_{index:05d}"}  # fmt: skip
        start = T0 + 1000 * order + 7  # ms: the export keeps them
        run = client.create_run(exp, run_name=tr.trial_run_name("vanilla", f"run_abc12_{index:05d}"), tags=tags, start_time=start)
        params = {"model.hidden_size": 8 * (index + 1), "train.lr": 10.0 ** -(index + 1), "train.momentum": 0.9,
                  "train.input_noise": 0.1 * index}  # fmt: skip
        metrics = [Metric("val/mse", 1.0 / (index + e), start + e, e) for e in (1, 2)]
        metrics += [Metric("best_val/mse", 1.0 / (index + 2), start + 3, 0)]
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
        if status != tr.STATUS_RUNNING:
            client.set_terminated(run.info.run_id, "FINISHED", end_time=start + 60_000 + index)
        runs.append(client.get_run(run.info.run_id))
    return runs


def test_export_reads_back_with_optuna(mlflow_server, tmp_path, capsys):
    import optuna

    from odyssey.analysis.optuna_export import main

    runs = {r.info.run_name: r for r in _log_search(mlflow_server, "optuna-export")}
    storage = f"sqlite:///{tmp_path / 'export.db'}"
    assert main(["optuna", "optuna-export", "--storage", storage, "--tracking-uri", mlflow_server]) == 0
    assert "optuna-export/adding__vanilla: 3 trial(s)" in capsys.readouterr().out
    study = optuna.load_study(study_name="optuna-export/adding__vanilla", storage=storage)

    assert study.metric_names == ["best_val/mse"]  # the dashboard's axis, not "Objective 0"
    # numbered in trial-index order (vanilla-000, 001, 002), not in the order the runs started
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert [t.user_attrs["mlflow_run_name"] for t in study.trials] == ["vanilla-000", "vanilla-001", "vanilla-002"]
    for t in study.trials:
        run = runs[t.user_attrs["mlflow_run_name"]]
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        assert t.datetime_start == datetime.datetime.fromtimestamp(run.info.start_time / 1000)
        assert t.datetime_complete == datetime.datetime.fromtimestamp(run.info.end_time / 1000)
        assert t.value == pytest.approx(run.data.metrics["best_val/mse"])
        assert t.params["train.lr"] == pytest.approx(float(run.data.params["train.lr"]))
        assert t.params["1-train.momentum"] == pytest.approx(0.1)
        assert t.intermediate_values == pytest.approx({1: 1.0 / (t.number + 1), 2: 1.0 / (t.number + 2)})
    assert (study.trials[1].datetime_complete - study.trials[1].datetime_start).total_seconds() == pytest.approx(60.001)

    dist = study.trials[0].distributions  # the recorded space: log-scaled where the report uses log10
    assert dist["train.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert dist["model.hidden_size"] == optuna.distributions.IntDistribution(4, 64, log=True)
    assert dist["1-train.momentum"] == optuna.distributions.FloatDistribution(0.01, 1.0, log=True)
    assert dist["train.input_noise"] == optuna.distributions.FloatDistribution(0.0, 0.5, log=False)
