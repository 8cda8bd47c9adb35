"""``odyssey train task=timit`` and ``task=iam_ondb`` end to end on the synthetic corpora of
tests/corpora.py: one epoch each, recorded as MLflow runs with the task's metrics (``error``,
``cer``). The store is MLflow's file store: a SQLite store costs ~10 s of schema migrations here,
and the tracking code under test is the same for both."""

from __future__ import annotations

import math

import pytest

import corpora
from odyssey.cli import main as cli_main


@pytest.mark.slow
def test_odyssey_train_records_timit_and_iam_ondb_runs(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    dev, core = corpora.full_lists()
    timit = corpora.write_timit(tmp_path / "t", dev=dev, core=core, utterances=corpora.UTTERANCES[:2])
    iam = corpora.write_iam(tmp_path / "i")
    uri = (tmp_path / "mlruns").as_uri()
    common = ["model=bidirectional", "model.hidden_size=4", "train.max_epochs=1", "train.batch_size=8",
              f"task.cache_dir={tmp_path / 'cache'}", f"tracking.uri={uri}", "tracking.experiment=corpora"]  # fmt: skip
    assert cli_main(["train", "task=timit", f"task.data_dir={timit}", "task.expect_full_corpus=false", *common]) == 0
    assert cli_main(["train", "task=iam_ondb", f"task.data_dir={iam}", "variant=cifg", *common]) == 0
    err = capsys.readouterr().err
    assert "TIMIT features" in err and "IAM-OnDB strokes" in err  # progress bars while the caches are built
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("corpora").experiment_id])
    by_task = {r.data.tags["odyssey.task"]: r for r in runs}
    assert sorted(by_task) == ["iam_ondb", "timit"]
    for task, metric in (("timit", "error"), ("iam_ondb", "cer")):
        run = by_task[task]
        m = run.data.metrics
        assert run.info.status == "FINISHED" and run.data.tags["odyssey.status"] == "completed"
        assert {f"val/{metric}", f"test/{metric}", f"best_val/{metric}", "train/loss", "best_epoch"} <= set(m)
        assert math.isfinite(m["train/loss"]) and 0.0 <= m[f"test/{metric}"] and m["best_epoch"] == 1.0
        assert run.data.params["model.bidirectional"] == "True" and run.data.params["task.name"] == task
    assert by_task["timit"].data.metrics["test/error"] <= 1.0
    assert by_task["iam_ondb"].data.tags["odyssey.variant"] == "cifg"


def test_the_paper_arms_dry_run_on_the_corpora(tmp_path, capsys):
    """``experiment=odyssey_timit`` and ``odyssey_iam``: 9 variants x 200 trials, bidirectional,
    the TIMIT space with its two switches; checked without Ray."""
    from odyssey.sweep.cli import sweep_main

    dev, core = corpora.full_lists()
    timit = corpora.write_timit(tmp_path / "t", dev=dev, core=core, utterances=corpora.UTTERANCES[:1])
    iam = corpora.write_iam(tmp_path / "i")
    common = [f"study.storage_path={tmp_path / 'ray'}", f"task.cache_dir={tmp_path / 'cache'}", "task.progress=false", "--dry-run"]
    assert sweep_main(["experiment=odyssey_timit", f"task.data_dir={timit}", "task.expect_full_corpus=false", *common]) == 0
    timit_text = capsys.readouterr().out
    assert sweep_main(["experiment=odyssey_iam", f"task.data_dir={iam}", *common]) == 0
    iam_text = capsys.readouterr().out
    assert "study 'odyssey_timit': 9 search(es) x 200 trial(s) = 1800 trials" in timit_text
    assert "timit/fgr (val/error, min)" in timit_text
    assert "train.nesterov ~ choice{True, False}" in timit_text and "train.clip_value ~ choice{None, 1.0}" in timit_text
    assert "study 'odyssey_iam': 9 search(es) x 200 trial(s) = 1800 trials" in iam_text
    assert "iam_ondb/cifg (val/cer, min)" in iam_text and "nesterov" not in iam_text
    from odyssey.config import compose

    for name in ("odyssey_timit", "odyssey_iam"):
        assert compose("sweep", [f"experiment={name}"]).model.bidirectional is True


def test_data_fetch_refuses_the_licensed_corpora(capsys):
    from odyssey.tasks.fetch import main

    assert main(["timit"]) == 2 and main(["iam_ondb"]) == 2
    err = capsys.readouterr().err
    assert "TIMIT is licensed (LDC93S1" in err and "set task.data_dir (or $ODYSSEY_TIMIT_DIR)" in err
    assert "IAM-OnDB needs registration" in err and "$ODYSSEY_IAM_ONDB_DIR" in err
