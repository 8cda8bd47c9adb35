"""``odyssey train --from-run RUN_ID``: a recorded trial rebuilt from its run reproduces its
metrics exactly, continues past its budget as a new run naming its source, and a run that is not
an odyssey trial is refused in one line. Also: every trial run carries its provenance."""

from __future__ import annotations

import pytest

from odyssey.cli import main as cli_main
from odyssey.run_schema import (
    TAG_COMPILED_LOOP,
    TAG_MACHINE_KIND,
    TAG_REPRODUCED,
    TAG_SOURCE_RUN,
    TAG_THREADS,
    TAG_TORCH,
)

TRIAL = ["variant=vanilla", "task=adding", "task.length=10", "task.num_train=24", "task.num_valid=12", "task.num_test=12",
         "model.hidden_size=6", "train.lr=0.05", "train.momentum=0.9", "train.input_noise=0.2", "train.max_epochs=2",
         "seed=5"]  # fmt: skip


def runs(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_a_rerun_from_the_record_reproduces_exactly_and_continues_as_a_new_run(mlflow_server, tmp_path, capsys, monkeypatch):
    import torch
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(mlflow_server)
    where = [f"tracking.uri={mlflow_server}", "tracking.experiment=rerun"]
    assert cli_main(["train", *TRIAL, *where]) == 0
    (source,) = runs(client, "rerun")
    tags = source.data.tags
    assert tags[TAG_TORCH] == torch.__version__ and tags[TAG_THREADS] == str(torch.get_num_threads())
    assert tags[TAG_COMPILED_LOOP] != "" and tags[TAG_MACHINE_KIND].startswith("cpu: ")
    capsys.readouterr()

    assert cli_main(["train", "--from-run", source.info.run_id, *where]) == 0
    out = capsys.readouterr().out
    assert "reproduced: every recorded metric of 2 epoch(s) and the final metrics is equal" in out
    again = runs(client, "rerun")[-1]
    assert again.data.tags[TAG_SOURCE_RUN] == source.info.run_id and again.data.tags[TAG_REPRODUCED] == "true"
    assert again.data.metrics == source.data.metrics  # test/*, best_val/*, best_epoch, epochs: exactly
    for key in ("train/loss", "val/mse", "val/accuracy"):
        assert history(client, again.info.run_id, key) == history(client, source.info.run_id, key)

    assert cli_main(["train", f"--from-run={source.info.run_id}", *where, "train.max_epochs=4"]) == 0
    out = capsys.readouterr().out
    assert "reproduced: every recorded metric of 2 epoch(s) is equal" in out  # the config changed: no finals
    longer = runs(client, "rerun")[-1]
    assert longer.data.tags[TAG_SOURCE_RUN] == source.info.run_id and longer.data.params["train.max_epochs"] == "4"
    assert history(client, longer.info.run_id, "val/mse")[:2] == history(client, source.info.run_id, "val/mse")
    assert [s for s, _ in history(client, longer.info.run_id, "val/mse")] == [1, 2, 3, 4]

    # A record that does not match (here: a metric changed after the fact) is reported, exit 1.
    client.set_tag(source.info.run_id, "unused", "x")
    client.log_metric(source.info.run_id, "test/mse", 123.0, step=0)
    assert cli_main(["train", "--from-run", source.info.run_id, *where, "tracking.enabled=false"]) == 1
    out = capsys.readouterr().out
    assert "NOT reproduced: 1 of the recorded metrics" in out and "test/mse: recorded 123.0" in out


@pytest.mark.slow
def test_from_run_refuses_a_run_that_is_not_an_odyssey_trial_in_one_line(mlflow_server, tmp_path, capsys, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(mlflow_server)
    exp = client.create_experiment("not-odyssey")
    other = client.create_run(exp, tags={"odyssey.role": "analysis"}).info.run_id
    assert cli_main(["train", "--from-run", other, f"tracking.uri={mlflow_server}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"run {other} is not an odyssey trial" in err and "'analysis'" in err
    assert cli_main(["train", "--from-run", "0" * 32, f"tracking.uri={mlflow_server}"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no MLflow run" in err
    assert cli_main(["train", "--from-run"]) == 2
    assert "--from-run needs a run id" in capsys.readouterr().err


def test_analyze_warns_when_a_studys_trials_ran_on_mixed_kinds_of_machine():
    import pandas as pd

    from odyssey.analysis.study import Study, mixed_sweeps

    searches = pd.DataFrame({"run_id": ["p1"], "task": "adding", "variant": "vanilla"})

    def study(kinds):
        trials = pd.DataFrame({"task": "adding", "variant": "vanilla", "max_epochs": 2.0, "machine_kind": kinds})
        return Study("s", "0", "uri", trials, searches)

    a, b = "cpu: AMD EPYC; torch 2.13.0+cpu; compiled loop 1234", "cuda: NVIDIA H100; torch 2.13.0; compiled loop off"
    (problem,) = mixed_sweeps(study([a, a, b]))
    assert "ran on 2 kinds of machine" in problem and f"{a!r} (2 trials)" in problem and f"{b!r} (1 trials)" in problem
    assert mixed_sweeps(study([a, a, None])) == []  # a run from before provenance tags says nothing


def test_provenance_names_the_machine_and_the_compiled_loop():
    import torch

    from odyssey.cells import native
    from odyssey.config import compose, trial_config
    from odyssey.provenance import cpu_model
    from odyssey.train import trial_provenance

    lstm = trial_config(compose("train", ["variant=vanilla", "train.batch_size=1"]))
    gru = trial_config(compose("train", ["variant=gru", "train.batch_size=1"]))
    tags = trial_provenance(lstm, torch.device("cpu"))
    key = native.build_key()
    assert tags[TAG_COMPILED_LOOP] == (key or "off") and tags["odyssey.cpu"] == cpu_model()
    assert tags[TAG_MACHINE_KIND] == f"cpu: {cpu_model()}; torch {torch.__version__}; compiled loop {key or 'off'}"
    assert trial_provenance(gru, torch.device("cpu"))[TAG_COMPILED_LOOP] == "off"  # the GRU runs no compiled loop
    assert "odyssey.cuda" not in tags and tags["odyssey.version"]


def test_a_recorded_config_is_rebuilt_with_overrides_and_unknown_keys_are_one_error():
    from odyssey.config import compose, trial_config
    from odyssey.errors import ConfigError
    from odyssey.rerun import rebuilt_config
    from odyssey.tracking import config_yaml

    cfg = trial_config(compose("train", [*TRIAL, "train.clip_norm=1.0"]))
    text = config_yaml(cfg)
    assert rebuilt_config(text) == cfg
    longer = rebuilt_config(text, ["train.max_epochs=300", "train.lr=1e-3", "train.clip_norm=null"])
    assert longer == cfg.replace(train={"max_epochs": 300, "lr": 1e-3, "clip_norm": None})
    with pytest.raises(ConfigError, match="has no key 'train.max_epoch'"):
        rebuilt_config(text, ["train.max_epoch=3"])
    with pytest.raises(ConfigError, match="key=value overrides"):
        rebuilt_config(text, ["+train.foo=1"])
