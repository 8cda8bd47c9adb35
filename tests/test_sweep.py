"""End-to-end sweeps on a real two-node Ray cluster, recorded on a real MLflow server.

Every study here is tiny (adding problem of length 10, 32 training sequences, hidden size 4-8,
2-3 epochs) so that the whole file runs in a few minutes on 2 CPU cores; the assertions read
everything back from the tracking server with ``MlflowClient``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from odyssey.cells import preset
from odyssey.errors import ConfigError, ServiceError
from odyssey.tracking import (
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    STATUS_FAILED,
    TAG_BUDGET_REACHED,
    TAG_DEVICE,
    TAG_ROLE,
    TAG_SCHEDULER,
    TAG_SEARCH,
    TAG_STATUS,
    TAG_TASK,
    TAG_TRIAL_ID,
    TAG_VARIANT,
)

ROOT = Path(__file__).resolve().parents[1]
ENDED = {STATUS_COMPLETED, STATUS_DIVERGED, STATUS_FAILED}


def tiny(tmp_path: Path, name: str, *, variants=("vanilla", "nfg"), samples=3, epochs=2) -> list[str]:
    """Overrides of a tiny study on a long-lag task (the adding problem)."""
    return [
        f"study.name={name}",
        "study.tasks=[adding]",
        f"study.variants=[{','.join(variants)}]",
        f"study.num_samples={samples}",
        "study.max_concurrent_trials=2",
        "study.progress_interval_s=2",
        f"study.storage_path={tmp_path / 'ray_results'}",
        "search_space=tiny",
        "task.length=10",
        "task.num_train=32",
        "task.num_valid=16",
        "task.num_test=16",
        "train.batch_size=8",
        f"train.max_epochs={epochs}",
        "train.patience=10",
    ]


def study_runs(uri: str, name: str):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    assert exp is not None, f"no MLflow experiment {name!r}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == "search"]
    trials = [r for r in runs if r.data.tags.get(TAG_ROLE) == "trial"]
    return client, parents, trials


def assert_no_duplicate_steps(client, run) -> list[int]:
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(steps) == len(set(steps)), f"duplicate steps in run {run.info.run_id}: {steps}"
    return sorted(steps)


def assert_study(uri: str, name: str, *, variants, samples, epochs, statuses=(STATUS_COMPLETED,)):
    """One parent per variant, ``samples`` children each, params/metrics/tags of a train run."""
    client, parents, trials = study_runs(uri, name)
    assert sorted(p.data.tags[TAG_VARIANT] for p in parents) == sorted(variants)
    by_parent = Counter(t.data.tags["mlflow.parentRunId"] for t in trials)
    assert by_parent == {p.info.run_id: samples for p in parents}
    trial_ids = [t.data.tags[TAG_TRIAL_ID] for t in trials]
    assert len(trial_ids) == len(set(trial_ids)), "a Ray trial has two MLflow runs"
    for p in parents:
        assert p.data.tags[TAG_SEARCH] == "random" and p.data.tags[TAG_SCHEDULER] == "fifo"
        assert p.data.tags[TAG_TASK] == "adding" and p.info.status == "FINISHED"
        assert not any(k.startswith(("best_val/", "trials/")) for k in p.data.metrics)  # names of their own
        assert p.data.metrics["search/trials/completed"] + p.data.metrics["search/trials/failed"] + p.data.metrics[
            "search/trials/diverged"
        ] == samples
    for t in trials:
        tags, params, metrics = t.data.tags, t.data.params, t.data.metrics
        assert tags[TAG_STATUS] in statuses, tags[TAG_STATUS]
        assert t.info.run_name == f"{tags[TAG_VARIANT]}-{int(tags[TAG_TRIAL_ID].rsplit('_', 1)[1]):03d}"  # readable
        # the searched values as numbers in analysis units (params are strings: they sort as text)
        assert metrics["hp/log10_lr"] == pytest.approx(math.log10(float(params["train.lr"])))
        assert metrics["hp/log10_hidden_size"] == pytest.approx(math.log10(int(params["model.hidden_size"])))
        assert "epochs_logged" not in metrics and not any(k.startswith("search/") for k in metrics)
        assert tags[TAG_TASK] == "adding" and tags[TAG_SEARCH] == "random" and tags[TAG_SCHEDULER] == "fifo"
        assert {"odyssey.seed", "odyssey.params_count", TAG_BUDGET_REACHED} <= set(tags)
        assert 4 <= int(params["hidden_size"]) <= 8 and 1e-3 <= float(params["lr"]) <= 1e-1
        assert 0.0 <= float(params["momentum"]) <= 0.9 and params["train.max_epochs"] == str(epochs)
        assert params["train.loss_reduction"] == "sum_over_steps"  # the objective's scale is on record
        if tags[TAG_STATUS] == STATUS_COMPLETED:
            assert tags[TAG_DEVICE] == "cpu"  # no GPU asked for: Ray hides the GPUs from the trial
            assert {"test/mse", "test/accuracy", "best_val/mse", "best_epoch"} <= set(metrics)
            assert assert_no_duplicate_steps(client, t) == list(range(1, epochs + 1))
            val = [m.step for m in client.get_metric_history(t.info.run_id, "val/mse")]
            assert sorted(val) == list(range(1, epochs + 1))
    return client, parents, trials


def run_in_subprocess(overrides: list[str], env_extra: dict[str, str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_extra}
    out = open(log, "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "odyssey.sweep.cli", *overrides],
        cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the sweep exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def trial_runs(uri: str, name: str):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(TAG_ROLE) == "trial"]


# --------------------------------------------------------------------------------------------
# Bad input: one clear error each, before any trial starts (no Ray, no storage written)


@pytest.fixture
def bad_space_conf(tmp_path, monkeypatch):
    """A copy of conf/ with malformed search spaces, selected by ODYSSEY_CONFIG_PATH."""
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    spaces = {
        "low_gt_high": "params:\n  train.lr: {dist: uniform, low: 0.1, high: 0.01}\n",
        "log_nonpositive": "params:\n  train.lr: {dist: loguniform, low: 0.0, high: 0.01}\n",
        "unknown_dist": "params:\n  train.lr: {dist: gaussian, low: 0.0, high: 0.01}\n",
    }
    for name, text in spaces.items():
        (conf / "search_space" / f"{name}.yaml").write_text(text)
    monkeypatch.setenv("ODYSSEY_CONFIG_PATH", str(conf))
    return conf


@pytest.mark.parametrize(
    "space, words",
    [
        ("low_gt_high", ["train.lr", "low=0.1 > high=0.01"]),
        ("log_nonpositive", ["train.lr", "log scale", "0 < low"]),
        ("unknown_dist", ["train.lr", "'gaussian'", "loguniform_int", "one_minus_loguniform"]),
    ],
)
def test_malformed_search_space_fails_before_any_trial(bad_space_conf, tmp_path, space, words):
    from odyssey.sweep.cli import sweep_main

    with pytest.raises(ConfigError) as info:
        sweep_main([*tiny(tmp_path, "bad"), f"search_space={space}"])
    assert all(w in str(info.value) for w in words), str(info.value)
    assert not (tmp_path / "ray_results").exists()


def test_unknown_experiment(tmp_path):
    from odyssey.sweep.cli import sweep_main

    with pytest.raises(ConfigError) as info:
        sweep_main(["experiment=no_such_study"])
    message = str(info.value)
    assert "no_such_study" in message and "quickstart" in message  # names the valid choices


def test_unreachable_tracking_server(tmp_path):
    from odyssey.sweep.cli import sweep_main

    from conftest import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServiceError, match=f"MLflow tracking server {uri} is not reachable"):
        sweep_main([*tiny(tmp_path, "nowhere"), f"tracking.uri={uri}"])
    assert not (tmp_path / "ray_results").exists()


def test_unreachable_ray_cluster(tmp_path):
    import ray

    from odyssey.sweep.cli import sweep_main

    from conftest import free_port

    address = f"127.0.0.1:{free_port()}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ServiceError, match=f"Ray cluster at {address} is not reachable"):
        sweep_main([*tiny(tmp_path, "nocluster"), f"tracking.uri={uri}", f"ray.address={address}"])
    assert not ray.is_initialized() and not (tmp_path / "ray_results").exists()


def test_unreachable_job_server(tmp_path):
    from odyssey.sweep.jobs import submit_main

    from conftest import free_port

    with pytest.raises(ServiceError, match="job server .* is not reachable"):
        submit_main(["--address", f"http://127.0.0.1:{free_port()}", *tiny(tmp_path, "nojobs")])


# --------------------------------------------------------------------------------------------
# The real thing


@pytest.mark.slow
def test_a_quick_sweep_runs_each_2026_cell_into_mlflow(tmp_path, mlflow_server, ray_cluster):
    """Issue 25: the sLSTM, IndRNN, minGRU and minLSTM as study variants (one trial, one epoch each)."""
    from odyssey.sweep.cli import sweep_main

    name = "cells2026"
    variants = ["slstm", "indrnn", "mingru", "minlstm"]
    overrides = [*tiny(tmp_path, name, variants=variants, samples=1, epochs=1), f"tracking.uri={mlflow_server}",
                 f"ray.address={ray_cluster.address}"]  # fmt: skip
    assert sweep_main(overrides) == 0
    _, _, trials = assert_study(mlflow_server, name, variants=variants, samples=1, epochs=1)
    for t in trials:
        spec = preset(t.data.tags[TAG_VARIANT])
        assert t.data.params["variant.family"] == spec.family
        hidden = int(t.data.params["model.hidden_size"])
        assert t.data.tags["odyssey.params_count"] == str(spec.num_parameters(2, hidden) + hidden + 1)  # cell + head


@pytest.mark.slow
def test_sweep_end_to_end(tmp_path, mlflow_server, ray_cluster, capsys):
    """`odyssey sweep` on the two-node cluster: 2 variants x 3 trials x 2 epochs, read back."""
    from odyssey.sweep.cli import sweep_main

    name = "e2e"
    overrides = [*tiny(tmp_path, name), f"tracking.uri={mlflow_server}", f"ray.address={ray_cluster.address}"]
    started = time.monotonic()
    assert sweep_main(overrides) == 0
    elapsed = time.monotonic() - started
    assert_study(mlflow_server, name, variants=["vanilla", "nfg"], samples=3, epochs=2)
    out = capsys.readouterr().out
    assert "[adding/vanilla] 3/3 done, 0 running, 0 failed" in out and "best val/mse" in out
    # the study's URL opens MLflow's model-training view, at the start and at the end; MLflow's
    # own "View run" lines (one per run, in its GenAI view) are not printed
    experiment_id = study_runs(mlflow_server, name)[0].get_experiment_by_name(name).experiment_id
    url = f"MLflow UI: {mlflow_server}/#/experiments/{experiment_id}?workflowType=machine_learning"
    assert out.count(url) == 2 and "View run" not in out, out[-2000:]
    print(f"e2e sweep: 6 trials in {elapsed:.1f}s")

    # Running the same study again without resume=true is refused (it would duplicate trials).
    with pytest.raises(ConfigError, match="resume=true"):
        sweep_main(overrides)

    # The writer and the reader share one store: the Python API loads the sweep's own runs back
    # and analyses them (what `odyssey analyze` does), so the two cannot drift apart.
    import odyssey.api as od

    # The notebook API (#23): describe() says the study exists; run() refuses as the command does.
    again = od.study(*overrides)
    assert f"note: study '{name}' already exists in MLflow (2 search run(s): adding/nfg, adding/vanilla)" in again.describe()
    with pytest.raises(ConfigError, match=r"already has (a sweep|Ray Tune state).*resume=true") as refused:
        again.run()
    assert "\n" not in str(refused.value)
    handle = od.study(*overrides, "resume=true")
    trials = handle.trials()
    assert len(trials) == 6 and set(trials["status"]) == {STATUS_COMPLETED}
    assert sorted(trials["variant"].unique()) == ["nfg", "vanilla"] and trials["val"].notna().all()
    client, _, runs = study_runs(mlflow_server, name)
    by_id = {r.info.run_id: r for r in runs}
    for _, row in trials.iterrows():
        assert row["train.lr"] == pytest.approx(float(by_id[row["run_id"]].data.params["train.lr"]))
        assert row["log10_lr"] == pytest.approx(math.log10(row["train.lr"]))
        assert row["test"] == pytest.approx(by_id[row["run_id"]].data.metrics["test/mse"])
    report = handle.analyze(out_dir=tmp_path / "analysis", log=False, min_trials=2, n_trees=8)
    counts = report.counts.set_index("variant")
    assert counts.loc["vanilla", "completed"] == counts.loc["nfg", "completed"] == 3
    assert "nfg" in set(report.comparison["variant"]) and (tmp_path / "analysis" / "report.html").is_file()
    # the seeded random search gave both variants the same 3 samples: the analysis pairs them by
    # their recorded values and seeds, and comparison.csv carries the paired rows and Holm's p
    cmp_ = pd.read_csv(tmp_path / "analysis" / "comparison.csv")
    for column in ("test", "subset", "n", "n_pairs", "p_value", "p_holm", "significant", "direction", "effect", "effect_low", "effect_high"):
        assert column in cmp_.columns, column
    nfg = cmp_[cmp_["variant"] == "nfg"].set_index(["test", "subset"])
    assert sorted(nfg.index) == [("welch", "all"), ("welch", "top10"), ("wilcoxon_paired", "all"), ("wilcoxon_paired", "top50")]
    assert nfg.loc[("wilcoxon_paired", "all"), "n_pairs"] == 3 and nfg.loc[("wilcoxon_paired", "top50"), "n_pairs"] == 2
    assert nfg.loc[("welch", "all"), "p_holm"] == pytest.approx(nfg.loc[("welch", "all"), "p_value"])  # one variant: m = 1
    pairs = pd.read_csv(tmp_path / "analysis" / "pair_counts.csv").iloc[0]
    assert (pairs["with_partner"], pairs["no_partner"], pairs["pairs"]) == (3, 0, 3) and pd.isna(pairs["refused"])
    assert report.conclusions and report.conclusions[0].startswith("nfg: ")

    # Refusals (#20) record nothing and change nothing: a variant override on the sweep (it would
    # train other cells under the searches' labels), a resume with another task setting and an
    # extra variant (they would be compared as one study), an extension with another task setting.
    before = study_snapshot(mlflow_server, name)
    refused = {
        "variant.peepholes=false": r"in a sweep the variants come from study.variants only",
        "variant=[nig,cifg]": r"in a sweep the variants come from study.variants only",
        "task.length=50 study.variants=[vanilla,nfg,cifg] resume=true": r"another budget \(protocol.adding.task.length: 10 recorded, 50 now\)|cifg",
        "study.variants=[vanilla,nfg,cifg] resume=true": r"not in the record: \['cifg'\].*study.extend=true",
        "study.variants=[cifg] task.length=50 study.extend=true": r"protocol.adding.task.length: 10 recorded, 50 now",
        "study.variants=[vanilla,nfg] study.tasks=[adding,temporal_order] study.extend=true": r"recorded the task\(s\) \['adding'\]",
    }
    for extra, words in refused.items():
        with pytest.raises(ConfigError, match=words):
            sweep_main([*overrides, *extra.split()])
    assert study_snapshot(mlflow_server, name) == before

    # An explicit extension adds a search with the recorded budget, says so and records it; the
    # analysis then compares the new variant with the recorded vanilla.
    assert sweep_main([*overrides, "study.variants=[cifg]", "study.extend=true"]) == 0
    out = capsys.readouterr().out
    assert "study.extend: adding the search(es) adding/cifg to study 'e2e'" in out
    client, parents, runs = study_runs(mlflow_server, name)
    assert sorted(p.data.tags[TAG_VARIANT] for p in parents) == ["cifg", "nfg", "vanilla"]
    (added,) = [p for p in parents if p.data.tags[TAG_VARIANT] == "cifg"]
    assert added.data.tags["odyssey.extension"] == "1"
    assert json.loads(added.data.tags["odyssey.search_budget"]) == json.loads(
        next(p for p in parents if p.data.tags[TAG_VARIANT] == "vanilla").data.tags["odyssey.search_budget"]
    )
    exp_tags = client.get_experiment_by_name(name).tags
    assert json.loads(exp_tags["odyssey.sweep.extensions"])[0]["variants"] == ["cifg"]
    assert set(json.loads(exp_tags["odyssey.sweep.budget"])["variants"]) == {"vanilla", "nfg", "cifg"}
    assert Counter(r.data.tags[TAG_VARIANT] for r in runs) == {"vanilla": 3, "nfg": 3, "cifg": 3}
    from odyssey.analysis.study import load_study, mixed_sweeps

    assert mixed_sweeps(load_study(name, tracking_uri=mlflow_server)) == []
    report = od.study(*overrides, "study.variants=[vanilla,nfg,cifg]", "resume=true").analyze(
        out_dir=tmp_path / "analysis2", log=False, min_trials=2, n_trees=8
    )
    assert {"nfg", "cifg"} <= set(report.comparison["variant"])


def study_snapshot(uri: str, name: str) -> dict:
    """Every run of a study (tags, params, metrics, status) and the experiment's tags but the lease."""
    client, parents, trials = study_runs(uri, name)
    exp = client.get_experiment_by_name(name)
    runs = {
        r.info.run_id: (r.info.status, r.info.run_name, dict(r.data.tags), dict(r.data.params), dict(r.data.metrics))
        for r in client.search_runs([exp.experiment_id], max_results=1000)
    }
    return {"runs": runs, "tags": {k: v for k, v in exp.tags.items() if k != "odyssey.lease"}}


@pytest.mark.slow
def test_tpe_search_end_to_end(tmp_path, mlflow_server, ray_cluster, capsys):
    """`search=tpe`: Optuna's TPE through Ray Tune's OptunaSearch, seeded, recorded like random search."""
    from odyssey.sweep.cli import sweep_main

    name = "tpe"
    overrides = [
        *tiny(tmp_path, name, variants=("vanilla",), samples=4, epochs=2),
        "search=tpe",
        "search.n_startup_trials=2",  # the last two trials are TPE's own suggestions
        f"tracking.uri={mlflow_server}",
        f"ray.address={ray_cluster.address}",
    ]
    assert sweep_main(overrides) == 0
    client, parents, trials = study_runs(mlflow_server, name)
    assert len(parents) == 1 and parents[0].data.tags[TAG_SEARCH] == "tpe"
    assert parents[0].data.metrics["search/trials/completed"] == 4 and len(trials) == 4
    seeds, points = set(), set()
    for t in trials:
        tags, params = t.data.tags, t.data.params
        assert tags[TAG_SEARCH] == "tpe" and tags[TAG_STATUS] == STATUS_COMPLETED
        assert 4 <= int(params["hidden_size"]) <= 8 and 1e-3 <= float(params["lr"]) <= 1e-1
        assert 0.0 <= float(params["momentum"]) <= 0.9 and 0.0 <= float(params["input_noise"]) <= 0.1
        assert assert_no_duplicate_steps(client, t) == [1, 2]
        seeds.add(tags["odyssey.seed"])
        points.add((params["hidden_size"], params["lr"], params["momentum"], params["input_noise"]))
    assert len(seeds) == 4 and len(points) == 4  # every trial its own sample and seed
    out = capsys.readouterr().out
    assert "[adding/vanilla] 4/4 done, 0 running, 0 failed" in out

    # TPE's study is persistent (optuna-dashboard shows it live): the 4 trials with their values
    import optuna

    live_url = f"sqlite:///{tmp_path / 'ray_results' / name / 'optuna.db'}"
    assert f"optuna-dashboard {live_url}" in out
    live = optuna.load_study(study_name=f"{name}/adding__vanilla", storage=live_url)
    by_run = {t.info.run_id: t for t in trials}
    assert len(live.trials) == 4
    assert sorted(t.params["train.lr"] for t in live.trials) == pytest.approx(sorted(float(t.data.params["train.lr"]) for t in trials))

    # the export (random search works the same way) reads back with Optuna: count, values, states
    from odyssey.analysis.optuna_export import main as export_main

    storage = f"sqlite:///{tmp_path / 'export.db'}"
    assert export_main(["optuna", name, "--storage", storage, "--tracking-uri", mlflow_server]) == 0
    exported = optuna.load_study(study_name=f"{name}/adding__vanilla", storage=storage)
    assert exported.direction == optuna.study.StudyDirection.MINIMIZE and len(exported.trials) == 4
    for ot in exported.trials:
        run = by_run[ot.user_attrs["mlflow_run_id"]]
        assert ot.state == optuna.trial.TrialState.COMPLETE
        assert ot.value == pytest.approx(run.data.metrics["best_val/mse"])
        assert ot.params["train.lr"] == pytest.approx(float(run.data.params["train.lr"]))
        assert ot.params["1-train.momentum"] == pytest.approx(1 - float(run.data.params["train.momentum"]))
        assert ot.params["model.hidden_size"] == int(run.data.params["model.hidden_size"])
        assert sorted(ot.intermediate_values) == [1, 2]
    assert optuna.importance.get_param_importances(exported)  # Optuna's own views work on it
    assert parents[0].data.tags["odyssey.search_space"].startswith("model.hidden_size ~ loguniform_int[4, 8]")


@pytest.mark.slow
@pytest.mark.soak  # 60 s; the default run submits through tests/test_user_configs.py (an installed odyssey)
def test_submit_to_job_server(tmp_path, mlflow_server, ray_cluster, monkeypatch, capsys):
    """`odyssey submit` ships the project to the cluster's job server; MLFLOW_TRACKING_URI travels
    in the job's runtime env. `odyssey stop ID` ends the job's sweep like SIGTERM does (runs
    marked interrupted, the log says how to resume); a resubmission with resume=true finishes it."""
    from odyssey.sweep.jobs import stop_main, submit_main, wait
    from odyssey.tracking import STATUS_INTERRUPTED

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    name = "submitted"
    address = ["--address", ray_cluster.dashboard_url]
    study = tiny(tmp_path, name, epochs=3)

    def submit(job_id: str, *extra: str) -> None:
        assert submit_main([*address, "--python", sys.executable, "--id", job_id, *study, *extra]) == 0

    def job_logs(job_id: str) -> str:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(ray_cluster.dashboard_url).get_job_logs(job_id)

    submit(f"odyssey-{name}-stopped")
    done = lambda: any(r.data.tags.get(TAG_STATUS) == STATUS_COMPLETED for r in trial_runs(mlflow_server, name))  # noqa: E731
    wait_for(done, 240, "a finished trial of the job")
    assert stop_main([*address, f"odyssey-{name}-stopped"]) == 0
    assert wait(f"odyssey-{name}-stopped", address=ray_cluster.dashboard_url, timeout=150) == "STOPPED"
    logs = job_logs(f"odyssey-{name}-stopped")
    assert "interrupted (SIGTERM received)" in logs and "Resume with: odyssey submit" in logs, logs[-3000:]
    _, parents, trials = study_runs(mlflow_server, name)
    statuses = {p.data.tags[TAG_STATUS] for p in parents}  # a search may have ended before the stop
    assert STATUS_INTERRUPTED in statuses and statuses <= {STATUS_INTERRUPTED, STATUS_COMPLETED}, statuses
    assert {t.data.tags[TAG_STATUS] for t in trials} <= {STATUS_COMPLETED, STATUS_INTERRUPTED}

    submit(f"odyssey-{name}", "resume=true")
    status = wait(f"odyssey-{name}", address=ray_cluster.dashboard_url, timeout=240)
    if status != "SUCCEEDED":
        pytest.fail(f"job ended {status}:\n{job_logs(f'odyssey-{name}')[-4000:]}")
    assert_study(mlflow_server, name, variants=["vanilla", "nfg"], samples=3, epochs=3)

    # the Jobs API wrappers: list, logs, stop, and an unknown id
    from odyssey.sweep.jobs import jobs_main, logs_main, stop_main

    capsys.readouterr()
    assert jobs_main(address) == 0
    listing = capsys.readouterr().out
    assert any(line.split()[:3] == [f"odyssey-{name}", "SUCCEEDED", name] for line in listing.splitlines()), listing
    assert logs_main([*address, f"odyssey-{name}"]) == 0
    logs = capsys.readouterr().out
    assert "[adding/vanilla] finished: 3 completed" in logs and "[adding/nfg] finished: 3 completed" in logs
    assert stop_main([*address, f"odyssey-{name}"]) == 0
    assert "already finished" in capsys.readouterr().out
    from odyssey.sweep.jobs import status_main

    assert status_main([*address, f"odyssey-{name}"]) == 0 and status_main([*address, f"odyssey-{name}-stopped"]) == 0
    statuses = capsys.readouterr().out.splitlines()
    assert statuses[0].startswith(f"job odyssey-{name}: SUCCEEDED") and statuses[1].startswith(f"job odyssey-{name}-stopped: STOPPED")
    with pytest.raises(ConfigError, match=f"unknown job 'nope'; jobs on this cluster: .*odyssey-{name}"):
        logs_main([*address, "nope"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "how, execution",
    [pytest.param("SIGKILL", "single", marks=pytest.mark.soak), ("SIGINT", "pack"),
     pytest.param("SIGTERM", "single", marks=pytest.mark.soak)],  # SIGTERM: the same handler as SIGINT (tests/test_interrupts.py)
    ids=["kill", "int-pack", "term"],
)
def test_interrupt_and_resume(tmp_path, mlflow_server, ray_cluster, how, execution):
    """Stop the driver mid-sweep, resume: all trials, each once, every epoch logged once.

    * SIGKILL: the driver dies without any chance to clean up (its runs stay RUNNING);
    * SIGINT (Ctrl-C) and SIGTERM (docker stop, systemd, Ray's job stop): the whole sweep stops,
      the unfinished runs and the parent are marked interrupted (MLflow KILLED), the command says
      how to resume and exits 128 + signal;
    with one process per trial and with trial packs (2 members: members resume from checkpoints).
    After the resume the parent's counts are true again (no stale trials/running)."""
    from odyssey.sweep.cli import sweep_main
    from odyssey.tracking import STATUS_INTERRUPTED

    name = f"resumed-{how.lower()}-{execution}"
    overrides = [
        *tiny(tmp_path, name, variants=("vanilla",), samples=4, epochs=3),
        f"execution={execution}",
        "execution.members=2",
        f"tracking.uri={mlflow_server}",
        f"ray.address={ray_cluster.address}",
    ]
    log = tmp_path / "driver.log"
    proc = run_in_subprocess(overrides, {}, log)
    state = tmp_path / "ray_results" / name / "adding__vanilla"
    done = lambda: any(r.data.tags.get(TAG_STATUS) == STATUS_COMPLETED for r in trial_runs(mlflow_server, name))  # noqa: E731
    wait_for(lambda: done() and any(state.glob("experiment_state-*.json")), 180, "a finished trial", proc, log)
    if how == "SIGTERM":  # a second driver of a running study is refused, resuming or not
        for extra in ([], ["resume=true"]):
            with pytest.raises(ServiceError, match=rf"study '{name}' is being run by another driver \(host .*, pid {proc.pid}"):
                sweep_main([*overrides, *extra])
    os.killpg(proc.pid, getattr(signal, how)) if how == "SIGKILL" else os.kill(proc.pid, getattr(signal, how))
    code = proc.wait(timeout=90)
    output = log.read_text()
    before = trial_runs(mlflow_server, name)
    assert 1 <= len(before) <= 4
    if how == "SIGKILL":
        assert code == -signal.SIGKILL
    else:
        assert code == 128 + getattr(signal, how), output[-3000:]
        assert f"interrupted ({how} received)" in output and "Resume with: odyssey sweep" in output, output[-3000:]
        assert output.rstrip().endswith("resume=true"), output[-500:]
        after = output[output.index(f"{how}: stopping every search"):]
        # Tune ends the stopped trials as if finished: no "4/4 done" line may say otherwise (#20)
        assert " done, " not in after and "[adding/vanilla] stopped: each trial keeps its last epoch checkpoint" in after
        _, parents, _ = study_runs(mlflow_server, name)
        (parent,) = parents
        assert (parent.info.status, parent.data.tags[TAG_STATUS]) == ("KILLED", STATUS_INTERRUPTED)
        statuses = Counter(r.data.tags[TAG_STATUS] for r in before)
        assert set(statuses) <= {STATUS_COMPLETED, STATUS_INTERRUPTED}, statuses  # none left "running"
        assert all(r.info.status == "KILLED" for r in before if r.data.tags[TAG_STATUS] == STATUS_INTERRUPTED)
        assert parent.data.metrics["search/trials/interrupted"] == statuses[STATUS_INTERRUPTED]
        assert parent.data.metrics["search/trials/completed"] == statuses[STATUS_COMPLETED]

    assert sweep_main([*overrides, "resume=true"]) == 0
    client, parents, trials = assert_study(mlflow_server, name, variants=["vanilla"], samples=4, epochs=3)
    assert len(parents) == 1
    counts = {k: v for k, v in parents[0].data.metrics.items() if k.startswith("search/trials/")}
    assert counts["search/trials/completed"] == 4, counts
    assert counts["search/trials/running"] == counts["search/trials/interrupted"] == 0, counts
    # the runs that existed before the interruption were continued, not duplicated
    assert {r.info.run_id for r in before} <= {t.info.run_id for t in trials}


@pytest.mark.slow
@pytest.mark.soak
def test_mlflow_outages_short_and_past_the_grace(tmp_path, restartable_mlflow_server, ray_cluster):
    """The real tracking server goes away twice while trials train.

    1. Frozen (SIGSTOP) for 12 s, less than tracking.outage_grace_s: the driver sees it gone, the
       trials' calls wait, and the sweep carries on when it answers again (SIGCONT).
    2. Stopped (killed) for longer than the grace: the sweep stops every search cleanly (exit 75,
       not a crash) while the trials buffer their metrics; the server is started again, and if it
       answers within the driver's final wait the runs are marked interrupted (else they stay
       running, which resume=true handles the same way).
    Then resume=true finishes the study: every epoch of every trial is in MLflow exactly once,
    nothing lost, nothing duplicated."""
    from odyssey.sweep.cli import sweep_main
    from odyssey.tracking import STATUS_INTERRUPTED

    server = restartable_mlflow_server
    name, epochs = "outage", 120
    overrides = [
        *tiny(tmp_path, name, variants=("vanilla",), samples=2, epochs=epochs),
        "task.num_train=128", "train.batch_size=1", "train.patience=1000",  # no early stop; ~0.3-0.5 s per epoch
        "execution=single", "tracking.outage_grace_s=30",
        f"tracking.uri={server.uri}", f"ray.address={ray_cluster.address}",
    ]  # fmt: skip
    log = tmp_path / "driver.log"
    proc = run_in_subprocess(overrides, {}, log)

    def logged_epochs() -> list[int]:
        from mlflow import MlflowClient

        client = MlflowClient(server.uri)
        return [max((m.step for m in client.get_metric_history(r.info.run_id, "train/loss")), default=0)
                for r in trial_runs(server.uri, name)]  # fmt: skip

    wait_for(lambda: len(logged_epochs()) == 2 and min(logged_epochs()) >= 2, 180, "two trials logging", proc, log)
    before = max(logged_epochs())
    os.killpg(server.proc.pid, signal.SIGSTOP)  # 1. a short outage: a frozen server
    wait_for(lambda: "is unreachable" in log.read_text(), 60, "the driver to notice the outage", proc, log)
    time.sleep(max(0.0, 12 - 5))
    os.killpg(server.proc.pid, signal.SIGCONT)
    wait_for(lambda: "is back after" in log.read_text(), 60, "the driver to see the server back", proc, log)
    assert proc.poll() is None, log.read_text()[-3000:]
    assert "is back after" in log.read_text() or proc.poll() is None
    wait_for(lambda: max(logged_epochs()) >= before + 6, 120, "training logged through the short outage", proc, log)

    server.stop()  # 2. past the grace
    wait_for(lambda: "stopping every search of the study" in log.read_text(), 120, "the sweep to give up", proc, log)
    server.start()  # within the final wait: the driver marks the runs
    code = proc.wait(timeout=120)
    output = log.read_text()
    assert code == 75, output[-3000:]
    assert "unreachable for" in output and "Resume with: odyssey sweep" in output and "Traceback" not in output, output[-3000:]
    client, parents, trials = study_runs(server.uri, name)
    marked = "unfinished trial run(s) marked interrupted" in output
    # the last line agrees with what happened (#20: it said "are marked" after "could not be marked")
    assert ("its unfinished trial runs are marked interrupted" in output) == marked, output[-2000:]
    assert ("could not all be marked interrupted" in output) == (not marked), output[-2000:]
    expected = {STATUS_INTERRUPTED, STATUS_COMPLETED, STATUS_DIVERGED} | (set() if marked else {"running"})
    assert {t.data.tags[TAG_STATUS] for t in trials} <= expected, output[-2000:]
    assert parents[0].data.tags[TAG_STATUS] == (STATUS_INTERRUPTED if marked else "running")

    assert sweep_main([*overrides, "resume=true"]) == 0
    client, _, trials = assert_study(
        server.uri, name, variants=["vanilla"], samples=2, epochs=epochs, statuses=(STATUS_COMPLETED, STATUS_DIVERGED)
    )
    # trials this long (> 10 s) carry MLflow's system metrics (tracking.system_metrics)
    assert all("system/cpu_utilization_percentage" in t.data.metrics for t in trials), [sorted(t.data.metrics) for t in trials]


@pytest.mark.slow
@pytest.mark.parametrize(
    "execution",
    [
        pytest.param(["execution=single", "study.max_concurrent_trials=1"], marks=pytest.mark.soak),
        ["execution=pack", "execution.members=2"],
    ],
    ids=["single", "pack"],
)
def test_asha_stops_poor_trials_and_marks_them(tmp_path, mlflow_server, ray_cluster, execution):
    """ASHA (grace 1 epoch, halving) cuts trials short: MLflow marks them stopped_early with
    budget_reached=false and fewer epochs; the others complete their whole budget. Unpacked
    (one trial at a time: each new trial meets the recorded rungs) and in packs of 2, where ASHA
    stops individual members and the freed slot goes to the next trial."""
    from odyssey.sweep.cli import sweep_main
    from odyssey.tracking import STATUS_STOPPED

    name, epochs = f"asha-{'-'.join(execution).replace('=', '').replace('.', '')}", 4
    overrides = [
        *tiny(tmp_path, name, variants=("vanilla",), samples=6, epochs=epochs),
        *execution,
        "scheduler=asha",
        "scheduler.grace_period=1",
        "scheduler.reduction_factor=2",
        f"tracking.uri={mlflow_server}",
        f"ray.address={ray_cluster.address}",
    ]
    assert sweep_main(overrides) == 0
    client, parents, trials = study_runs(mlflow_server, name)
    assert len(parents) == 1 and len(trials) == 6
    statuses = Counter(t.data.tags[TAG_STATUS] for t in trials)
    assert set(statuses) <= {STATUS_COMPLETED, STATUS_STOPPED}, statuses
    # Seeded random search: with reduction factor 2 a trial below the rung's median is cut;
    # the first trial always completes, and 5 trials that all beat the median is ~3% a priori.
    assert statuses[STATUS_STOPPED] >= 1 and statuses[STATUS_COMPLETED] >= 1, statuses
    for t in trials:
        steps = assert_no_duplicate_steps(client, t)
        assert t.data.tags[TAG_SCHEDULER] == "asha"
        if t.data.tags[TAG_STATUS] == STATUS_STOPPED:
            assert t.data.tags[TAG_BUDGET_REACHED] == "false" and len(steps) < epochs
        else:
            assert t.data.tags[TAG_BUDGET_REACHED] == "true" and steps == list(range(1, epochs + 1))


@pytest.mark.slow
def test_failing_trials_are_retried_then_recorded_as_failed(tmp_path, mlflow_server, ray_cluster, capsys):
    """A trial that raises (here: its data file is gone by the time the trials start, which only
    the workers see) is retried `max_failures` times, then recorded as failed with the exception's
    type and message and a traceback artifact; a study in which every trial failed is a failed
    sweep (exit 1), not a result."""
    from mlflow.artifacts import download_artifacts

    from odyssey.sweep.interrupts import SweepFailed
    from odyssey.sweep.runner import run_sweep
    from odyssey.sweep.study import load_sweep

    name, data = "failing", tmp_path / "jsb"
    shutil.copytree(ROOT.parent / "shared" / "data" / "jsb", data)
    overrides = [
        *tiny(tmp_path, name, variants=("vanilla",), samples=2, epochs=2),
        "study.tasks=[jsb]",
        "task=jsb",
        f"task.data_dir={data}",
        "study.max_failures=1",
        "execution=single",  # one process per trial (packs: test_packs.py, and below)
        f"tracking.uri={mlflow_server}",
        f"ray.address={ray_cluster.address}",
    ]
    overrides = [o for o in overrides if not o.startswith(("task.num_", "task.length", "study.tasks=[adding]"))]
    sweep = load_sweep(overrides)  # the driver's checks see the data...
    shutil.rmtree(data)  # ...which is gone when the trials start
    with pytest.raises(SweepFailed, match=r"every trial of study 'failing' failed \(2 trial\(s\)\); the first error: .*DataError"):
        run_sweep(sweep)
    out = capsys.readouterr().out
    client, parents, trials = study_runs(mlflow_server, name)
    assert len(parents) == 1 and len(trials) == 2
    assert [t.data.tags[TAG_STATUS] for t in trials] == [STATUS_FAILED, STATUS_FAILED]
    for t in trials:
        error = t.data.tags["odyssey.error"]
        assert "DataError" in error and str(data) in error, error  # the type and message, not "unknown error"
        text = Path(download_artifacts(run_id=t.info.run_id, artifact_path="error.txt", tracking_uri=mlflow_server)).read_text()
        assert 'File "' in text and "in build_task" in text and "\x1b[" not in text, text[-2000:]
        assert "DataError" in text.strip().splitlines()[-1], text[-2000:]
    assert parents[0].data.metrics["search/trials/failed"] == 2
    assert out.count("retrying from its last checkpoint") == 2 and "[adding/vanilla] finished: 2 failed" not in out
    assert "[jsb/vanilla] finished: 2 failed" in out


def test_cuda_on_a_cluster_without_gpus_fails_before_any_trial(tmp_path, mlflow_server, ray_cluster):
    """train.device=cuda where the trials cannot get a GPU: one line, no parent run, no trial."""
    import torch

    from odyssey.sweep.cli import sweep_main

    if torch.cuda.is_available():
        pytest.skip("checks a cluster without GPUs")
    name = "cuda-nowhere"
    overrides = [*tiny(tmp_path, name, variants=("vanilla",), samples=1, epochs=1), "train.device=cuda",
                 f"tracking.uri={mlflow_server}", f"ray.address={ray_cluster.address}"]  # fmt: skip
    with pytest.raises(ConfigError, match=r"train.device='cuda' is invalid: CUDA is not available on the Ray cluster; valid here: auto, cpu"):
        sweep_main([*overrides, "+resources=gpu"])  # trials that ask for a GPU the cluster does not have
    with pytest.raises(ConfigError, match=r"train.device='cuda' is invalid: the trials reserve no GPU"):
        sweep_main(overrides)
    from mlflow import MlflowClient

    # refused before the study's first record (#20: an empty experiment with study tags was left)
    assert MlflowClient(mlflow_server).get_experiment_by_name(name) is None


@pytest.mark.slow
@pytest.mark.soak
def test_worker_node_killed(tmp_path, mlflow_server, ray_cluster):
    """Lose a node mid-sweep: its trial is retried from its checkpoint elsewhere; every trial ends
    completed or failed, none is lost, none has two runs. (Last: it replaces the worker node.)"""
    name = "nodeloss"
    overrides = [
        *tiny(tmp_path, name, variants=("vanilla",), samples=3, epochs=30),
        "task.num_train=256",  # trials of ~10 s: still running when the node goes
        "train.patience=100",
        "execution=single",  # one process per trial (packs: test_packs.py, and below)
        f"tracking.uri={mlflow_server}",
        f"ray.address={ray_cluster.address}",
    ]
    log = tmp_path / "driver.log"
    proc = run_in_subprocess(overrides, {}, log)

    def two_running() -> bool:  # 1 CPU per node, 2 trials at once: one of them is on the worker
        runs = [r for r in trial_runs(mlflow_server, name) if r.data.tags.get(TAG_STATUS) == "running"]
        return len(runs) >= 2 and all("train/loss" in r.data.metrics for r in runs)

    try:
        wait_for(two_running, 180, "two trials running", proc, log)
        ray_cluster.kill_worker()
        assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        ray_cluster.add_worker()
    client, parents, trials = study_runs(mlflow_server, name)
    assert len(trials) == 3 and len({t.data.tags[TAG_TRIAL_ID] for t in trials}) == 3
    assert all(t.data.tags[TAG_STATUS] in ENDED for t in trials)
    for t in trials:
        assert_no_duplicate_steps(client, t)
    text = log.read_text()
    assert "retrying from its last checkpoint" in text, text[-3000:]  # the lost trial was retried
    assert all(len(assert_no_duplicate_steps(client, t)) == 30 for t in trials)  # ... and finished



@pytest.mark.slow
@pytest.mark.gpu
def test_trials_given_a_gpu_fraction_train_on_the_gpu(tmp_path, mlflow_server, ray_cluster):
    """`+resources=gpu_quarter`: each trial reserves a quarter GPU, trains on it (train.device=auto),
    and records where in its `odyssey.device` tag."""
    import torch

    from odyssey.sweep.cli import sweep_main

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    name = "gpu_quarter"
    overrides = [
        *tiny(tmp_path, name, variants=("vanilla",), samples=4, epochs=2),
        "+resources=gpu_quarter",
        "execution=single",  # one process per trial (packs: test_packs.py, and below)
        f"tracking.uri={mlflow_server}",
        f"ray.address={ray_cluster.address}",
    ]
    assert sweep_main(overrides) == 0
    _, _, trials = study_runs(mlflow_server, name)
    assert len(trials) == 4
    assert all(t.data.tags[TAG_STATUS] == STATUS_COMPLETED for t in trials)
    assert all(t.data.tags[TAG_DEVICE].startswith("cuda:") for t in trials), [t.data.tags[TAG_DEVICE] for t in trials]


# --------------------------------------------------------------------------------------------
# Trial packs (execution=pack): the same study as unpacked, every member its own trial


def _by_trial_index(trials):
    return {(t.data.tags[TAG_VARIANT], t.data.tags[TAG_TRIAL_ID].rsplit("_", 1)[1]): t for t in trials}


@pytest.mark.slow
def test_packed_sweep_matches_the_unpacked_sweep_and_reruns_to_the_same_table(tmp_path, mlflow_server, ray_cluster, capsys):
    """The same seeded study three times on the two-node cluster: one process per trial, then
    packs of 2 members (3 trials per search, so the third joins when a member leaves), then
    packs of 8 at another concurrency. Same trials (by index), params, tags and, bit for bit,
    per-epoch and final metrics (a CPU pack trains each member as alone: test_reproducible.py);
    no duplicate runs or steps."""
    from odyssey.sweep.cli import sweep_main

    common = [f"tracking.uri={mlflow_server}", f"ray.address={ray_cluster.address}"]
    one = {"variants": ("nfg",)}  # both searches of a study running at once: test_sweep_end_to_end
    assert sweep_main([*tiny(tmp_path / "a", "unpacked", **one), *common, "execution=single"]) == 0
    assert sweep_main([*tiny(tmp_path / "b", "packed", **one), *common, "execution=pack", "execution.members=2"]) == 0
    assert sweep_main([*tiny(tmp_path / "c", "packed8", **one), *common, "execution=pack", "execution.members=8",
                       "study.max_concurrent_trials=3"]) == 0  # fmt: skip
    client, _, single = assert_study(mlflow_server, "unpacked", variants=["nfg"], samples=3, epochs=2)
    single = _by_trial_index(single)
    for study in ("packed", "packed8"):
        _, parents, packed = assert_study(mlflow_server, study, variants=["nfg"], samples=3, epochs=2)
        packed = _by_trial_index(packed)
        assert single.keys() == packed.keys() and len(packed) == 3
        ignore_params = {"study.name", "study.storage_path"}
        for key, s in single.items():
            p = packed[key]
            assert {k: v for k, v in p.data.params.items() if k not in ignore_params} == {
                k: v for k, v in s.data.params.items() if k not in ignore_params
            }
            same_tags = {k: v for k, v in s.data.tags.items() if k.startswith("odyssey.") and k not in (TAG_TRIAL_ID, "odyssey.study")}
            assert {k: p.data.tags.get(k) for k in same_tags} == same_tags
            assert {"odyssey.machine_kind", "odyssey.torch", "odyssey.threads", "odyssey.compiled_loop"} <= same_tags.keys()
            # exactly: test/*, best_val/*, hp/*, epochs; system/* (the node's CPU, memory...) are sampled
            # every 10 s: a few-second trial may have none
            computed = {k: v for k, v in s.data.metrics.items() if not k.startswith("system/")}
            assert {k: v for k, v in p.data.metrics.items() if not k.startswith("system/")} == computed, (study, key)
            for name in ("train/loss", "val/mse", "val/accuracy"):
                ours = [m.value for m in sorted(client.get_metric_history(p.info.run_id, name), key=lambda m: m.step)]
                theirs = [m.value for m in sorted(client.get_metric_history(s.info.run_id, name), key=lambda m: m.step)]
                assert ours == theirs and len(ours) == 2, (study, key, name)
    # One packed trial rebuilt from its record by `odyssey train --from-run`: the same numbers.
    from odyssey.cli import main as cli_main

    capsys.readouterr()
    run_id = packed[sorted(packed)[-1]].info.run_id
    assert cli_main(["train", "--from-run", run_id, f"tracking.uri={mlflow_server}", "tracking.enabled=false"]) == 0
    assert "reproduced: every recorded metric of 2 epoch(s) and the final metrics is equal" in capsys.readouterr().out


@pytest.mark.slow
def test_a_pack_that_cannot_start_is_one_clear_error_and_records_nothing(tmp_path, mlflow_server, ray_cluster):
    """The pack executor builds the task on its node: data gone by then is one ServiceError that
    names the search, the cause and the way out, raised before the search's parent run exists."""
    from odyssey.sweep.runner import run_sweep
    from odyssey.sweep.study import load_sweep

    name, data = "pack-no-data", tmp_path / "jsb"
    shutil.copytree(ROOT.parent / "shared" / "data" / "jsb", data)
    overrides = [*tiny(tmp_path, name, variants=("vanilla",)), "study.tasks=[jsb]", "task=jsb", f"task.data_dir={data}",
                 "execution=pack", f"tracking.uri={mlflow_server}", f"ray.address={ray_cluster.address}"]  # fmt: skip
    sweep = load_sweep([o for o in overrides if not o.startswith(("task.num_", "task.length", "study.tasks=[adding]"))])
    shutil.rmtree(data)
    with pytest.raises(ServiceError, match=r"jsb__vanilla: its pack executor could not start .*DataError.*execution=single"):
        run_sweep(sweep)
    _, parents, trials = study_runs(mlflow_server, name)
    assert parents == [] and trials == []
