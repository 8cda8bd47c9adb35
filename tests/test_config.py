"""The Hydra config tree: every variant and task file composes into its typed config."""

from __future__ import annotations

from pathlib import Path

import pytest

from odyssey.cells import PRESETS, preset
from odyssey.config import compose, config_dir, trial_config
from odyssey.tasks import TASKS

VARIANT_FILES = sorted(p.stem for p in (config_dir() / "variant").glob("*.yaml"))
TASK_FILES = sorted(p.stem for p in (config_dir() / "task").glob("*.yaml"))


def test_every_preset_has_a_config_file_and_back():
    assert VARIANT_FILES == sorted(PRESETS)
    assert TASK_FILES == sorted(TASKS)


@pytest.mark.parametrize("name", VARIANT_FILES)
def test_variant_file_composes_to_its_preset(name):
    spec = trial_config(compose("train", [f"variant={name}"])).variant
    assert spec.switches() == preset(name).switches()
    assert spec.label() == name


@pytest.mark.parametrize("name", TASK_FILES)
def test_task_file_composes_to_its_typed_config(name):
    cfg = trial_config(compose("train", [f"task={name}"])).task
    assert type(cfg) is TASKS[name] and cfg.name == name


def test_variant_files_combine_and_switches_override():
    spec = trial_config(compose("train", ["variant=[np,cifg]", "variant.block_activation=identity"])).variant
    assert (spec.peepholes, spec.coupled_input_forget, spec.block_activation) == (False, True, "identity")
    assert spec.label() == "niaf+np+cifg"


def test_protocol_group_fills_the_train_node():
    paper = trial_config(compose("train", [])).train
    mini = trial_config(compose("train", ["protocol=minibatch"])).train
    assert (paper.batch_size, mini.batch_size) == (1, 32)
    assert (paper.lr, paper.momentum, paper.patience) == (mini.lr, mini.momentum, mini.patience)


def test_params_are_flat_and_carry_the_searched_names():
    params = trial_config(compose("train", ["model.hidden_size=42", "train.lr=0.003"])).flat_params()
    assert params["hidden_size"] == params["model.hidden_size"] == 42
    assert params["lr"] == params["train.lr"] == 0.003
    assert {"momentum", "input_noise", "seed", "variant.peepholes", "task.name"} <= set(params)


def test_a_config_folder_without_config_groups_fails_clearly(monkeypatch, tmp_path):
    from odyssey.errors import ConfigError

    monkeypatch.setenv("ODYSSEY_CONFIG_PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=f"{tmp_path} has none of the config group folders experiment/, variant/"):
        compose("train", [])
