"""Strict configs (issue 12): booleans are booleans, no unknown top-level keys, finite numbers,
one-line type errors, malformed YAML, an unusable storage path and an absent CUDA device each
fail at once with one line naming the key (or file), the bad value and what is valid."""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import pytest

from odyssey.cli import main as cli_main
from odyssey.config import (
    TrackingConfig,
    check_device_available,
    compose,
    config_dir,
    trial_config,
    typed,
    valid_top_level_keys,
)
from odyssey.errors import ConfigError
from odyssey.sweep.search_space import translate
from odyssey.sweep.study import load_sweep

TRAIN_KEYS = ["model", "seed", "task", "tracking", "train", "variant"]
SWEEP_KEYS = sorted(TRAIN_KEYS + ["execution", "ray", "resume", "scheduler", "search", "search_space", "study"])


def small_sweep(tmp_path: Path) -> list[str]:
    """A one-search study on a tiny adding problem, its storage under ``tmp_path``."""
    return [
        "task.length=10",
        "task.num_train=4",
        "task.num_valid=4",
        "task.num_test=4",
        f"study.storage_path={tmp_path / 'ray_results'}",
    ]


def train_error(overrides: list[str]) -> str:
    """The one-line error of the typed ``odyssey train`` config (trial and tracking sections)."""
    with pytest.raises(ConfigError) as info:
        cfg = compose("train", overrides)
        trial_config(cfg)
        typed(cfg.get("tracking"), TrackingConfig, "tracking")
    return one_line(info.value)


def sweep_error(overrides: list[str], tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_sweep([*small_sweep(tmp_path), *overrides], cwd=tmp_path)
    return one_line(info.value)


def one_line(exc: Exception) -> str:
    message = str(exc)
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message


def cli_error(argv: list[str], capsys) -> str:
    """Run the real CLI; it must exit 2 with exactly one line on stderr and no traceback."""
    code = cli_main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.fixture
def conf_copy(tmp_path, monkeypatch) -> Path:
    """A copy of ``conf/`` in ``tmp_path`` used as ``$ODYSSEY_CONFIG_PATH``."""
    conf = tmp_path / "conf"
    shutil.copytree(config_dir(), conf)
    monkeypatch.setenv("ODYSSEY_CONFIG_PATH", str(conf))
    return conf


# --------------------------------------------------------------------------------------------
# 1. Booleans are booleans


@pytest.mark.parametrize(
    "key, value",
    [
        ("train.nesterov", "no"),
        ("train.nesterov", "maybe"),
        ("train.nesterov", "1"),
        ("train.scale_lr_by_momentum", "yes"),
        ("model.bidirectional", "on"),
        ("tracking.enabled", "no"),
        ("task.end_markers", "no"),
    ],
)
def test_train_bool_keys_take_only_true_or_false(key, value, capsys):
    shown = repr(int(value)) if value.isdigit() else repr(value)
    expected = f"{key}={shown} is invalid: expected true or false"
    assert train_error([f"{key}={value}"]) == expected
    assert cli_error(["train", f"{key}={value}"], capsys) == f"odyssey train: error: {expected}"


@pytest.mark.parametrize("value", ["no", "maybe", "off", "0"])
def test_variant_switches_take_only_true_or_false(value):
    message = train_error([f"variant.peepholes={value}"])
    assert message.startswith("variant.peepholes=") and "expected bool" in message


@pytest.mark.parametrize("value, shown", [("no", "'no'"), ("maybe", "'maybe'"), ("1", "1"), ("yes", "'yes'")])
def test_sweep_resume_takes_only_true_or_false(tmp_path, value, shown):
    assert sweep_error([f"resume={value}"], tmp_path) == f"resume={shown} is invalid: expected true or false"


def test_real_booleans_are_accepted(tmp_path):
    cfg = compose("train", ["train.nesterov=false", "model.bidirectional=true", "tracking.enabled=false"])
    trial = trial_config(cfg)
    assert (trial.train.nesterov, trial.model.bidirectional) == (False, True)
    assert typed(cfg.get("tracking"), TrackingConfig, "tracking").enabled is False
    assert load_sweep([*small_sweep(tmp_path), "resume=true"], cwd=tmp_path).resume is True


def test_replace_checks_types_too():
    trial = trial_config(compose("train", []))
    with pytest.raises(ConfigError, match=re.escape("train.nesterov='no' is invalid: expected true or false")):
        trial.replace(train={"nesterov": "no"})
    assert trial.replace(train={"lr": 1}).train.lr == 1.0 and type(trial.replace(train={"lr": 1}).train.lr) is float


# --------------------------------------------------------------------------------------------
# 2. Unknown top-level keys


def test_unknown_top_level_key_of_train_is_refused(capsys):
    expected = f"unknown top-level key(s) ['foo'] in the 'train' config; valid top-level keys: {TRAIN_KEYS}"
    assert one_line(pytest.raises(ConfigError, compose, "train", ["+foo=1"]).value) == expected
    assert cli_error(["train", "+foo=1"], capsys) == f"odyssey train: error: {expected}"


def test_unknown_top_level_key_of_sweep_is_refused(tmp_path):
    expected = f"unknown top-level key(s) ['foo'] in the 'sweep' config; valid top-level keys: {SWEEP_KEYS}"
    assert sweep_error(["+foo=1"], tmp_path) == expected


def test_overriding_an_unknown_top_level_key_lists_the_valid_ones():
    message = one_line(pytest.raises(ConfigError, compose, "train", ["foo=1"]).value)
    assert message == f"unknown top-level key 'foo'; valid top-level keys: {TRAIN_KEYS}"


def test_unknown_ray_key_is_refused(tmp_path):
    assert sweep_error(["+ray.foo=1"], tmp_path) == "unknown key(s) ['foo'] in 'ray'; valid keys: ['address', 'job_server']"


def test_valid_top_level_keys_come_from_the_config_files(conf_copy):
    (conf_copy / "train.yaml").write_text((conf_copy / "train.yaml").read_text() + "notes: null\n")
    assert valid_top_level_keys("train") == frozenset(TRAIN_KEYS + ["notes"])
    assert compose("train", ["notes=hello"]).notes == "hello"


@pytest.mark.parametrize("name", sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml")))
def test_experiments_and_optional_groups_add_no_unknown_top_level_key(name):
    cfg = compose("sweep", [f"experiment={name}", "+resources=gpu_quarter"])
    assert cfg.study.resources_per_trial.gpu == 0.25


# --------------------------------------------------------------------------------------------
# 3. Non-finite numbers


@pytest.mark.parametrize(
    "key, value",
    [("train.lr", "inf"), ("model.init_std", "inf"), ("train.momentum", "nan"), ("train.input_noise", "inf"),
     ("train.clip_norm", "inf"), ("train.lr", "-inf")],
)  # fmt: skip
def test_train_numbers_are_finite(key, value):
    shown = repr(float(value))
    expected = "null or a finite float" if key == "train.clip_norm" else "a finite float"
    assert train_error([f"{key}={value}"]) == f"{key}={shown} is invalid: expected {expected}"


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["study.progress_interval_s=inf"], "study.progress_interval_s"),
        (["study.resources_per_trial.cpu=inf"], "study.resources_per_trial.cpu"),
        (["study.resources_per_trial.gpu=nan"], "study.resources_per_trial.gpu"),
        (["execution.cpu=nan"], "execution.cpu"),
        (["execution.gpu=inf"], "execution.gpu"),
        (["execution.members=inf"], "execution.members"),
        (["scheduler=asha", "scheduler.reduction_factor=inf"], "scheduler.reduction_factor"),
    ],
)
def test_study_numbers_are_finite(tmp_path, overrides, key):
    message = sweep_error(overrides, tmp_path)
    assert message.startswith(f"{key}=") and "finite" in message, message


def test_search_space_values_are_finite(conf_copy, tmp_path):
    (conf_copy / "search_space" / "inf_clip.yaml").write_text(
        "defaults:\n  - tiny\n  - _self_\nparams:\n  train.clip_norm: {dist: choice, values: [null, .inf]}\n"
    )
    message = sweep_error(["search_space=inf_clip"], tmp_path)
    assert message.startswith("search_space.params.train.clip_norm: the bound inf is invalid") and "finite" in message
    with pytest.raises(ConfigError, match="finite number"):
        translate({"params": {"train.lr": {"dist": "uniform", "low": 0.0, "high": math.inf}}})


# --------------------------------------------------------------------------------------------
# 4. Type errors


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lr=abc", "train.lr='abc' is invalid: expected a float"),
        ("train.lr='1e-3'", "train.lr='1e-3' is invalid: expected a float"),
        ("train.lr=true", "train.lr=True is invalid: expected a float"),
        ("model.hidden_size=1.5", "model.hidden_size=1.5 is invalid: expected an integer"),
        ("train.max_epochs=true", "train.max_epochs=True is invalid: expected an integer"),
        ("train.clip_norm=abc", "train.clip_norm='abc' is invalid: expected null or a float"),
        ("train.device=0", "train.device=0 is invalid: expected a string"),
        ("train.device=cuda:x", "train.device='cuda:x' is invalid: expected auto, cpu, cuda or cuda:N"),
        ("tracking.experiment=[a,b]", "tracking.experiment=['a', 'b'] is invalid: expected a string"),
        ("seed=abc", "seed='abc' is invalid: expected an integer"),
        ("seed=true", "seed=True is invalid: expected an integer"),
    ],
)
def test_train_type_errors_are_one_line(override, expected, capsys):
    assert train_error([override]) == expected
    assert cli_error(["train", override], capsys) == f"odyssey train: error: {expected}"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["study.num_samples=x"], "study.num_samples='x' is invalid: expected an integer"),
        (["study.num_samples=2.5"], "study.num_samples=2.5 is invalid: expected an integer"),
        (["study.max_concurrent_trials=x"], "study.max_concurrent_trials='x' is invalid: expected null or an integer"),
        (["study.tasks=[adding,1]"], "study.tasks[1]=1 is invalid: expected a string"),
        (["study.resources_per_trial.cpu=x"], "study.resources_per_trial.cpu='x' is invalid: expected a float"),
        (["study.resources_per_trial=1"], "study.resources_per_trial=1 is invalid: expected a mapping of cpu, gpu"),
        (["search=tpe", "search.n_startup_trials=x"], "search.n_startup_trials='x' is invalid: expected an integer"),
        (["ray.address=1"], "ray.address=1 is invalid: expected null or a string"),
        (["seed=abc"], "seed='abc' is invalid: expected an integer"),
    ],
)
def test_study_type_errors_are_one_line(tmp_path, overrides, expected):
    assert sweep_error(overrides, tmp_path) == expected


def test_integers_are_accepted_for_floats(tmp_path):
    sweep = load_sweep([*small_sweep(tmp_path), "scheduler=asha", "study.progress_interval_s=5"], cwd=tmp_path)
    assert type(sweep.scheduler.reduction_factor) is float and sweep.scheduler.reduction_factor == 3.0
    assert type(sweep.study.progress_interval_s) is float
    assert type(sweep.study.resources_per_trial.cpu) is float


# --------------------------------------------------------------------------------------------
# 5. Malformed YAML


def test_malformed_experiment_file_is_one_line_naming_file_and_line(conf_copy, tmp_path, capsys):
    path = conf_copy / "experiment" / "broken.yaml"
    path.write_text("# @package _global_\nstudy:\n  tasks: [adding\n")
    expected = (
        f"malformed YAML in {path}, line 4, column 1: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence started at line 3)"
    )
    assert one_line(pytest.raises(ConfigError, compose, "sweep", ["experiment=broken"]).value) == expected
    assert sweep_error(["experiment=broken"], tmp_path) == expected


def test_malformed_main_config_is_one_line(conf_copy, capsys):
    path = conf_copy / "train.yaml"
    path.write_text(path.read_text() + "notes: [a\n\tb: 1\n")
    message = cli_error(["train"], capsys)
    assert message.startswith(f"odyssey train: error: malformed YAML in {path}, line ")
    assert "found character '\\t' that cannot start any token" in message


def test_duplicate_yaml_key_is_one_line(conf_copy):
    path = conf_copy / "model" / "twice.yaml"
    path.write_text("hidden_size: 10\nhidden_size: 20\n")
    message = one_line(pytest.raises(ConfigError, compose, "train", ["model=twice"]).value)
    assert message == (
        f"malformed YAML in {path}, line 2, column 1: found duplicate key hidden_size "
        "(while constructing a mapping started at line 1)"
    )


# --------------------------------------------------------------------------------------------
# 6. The storage path


def test_storage_path_under_a_file_is_refused_before_anything_starts(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    storage = blocker / "ray_results"
    message = sweep_error([f"study.storage_path={storage}"], tmp_path)
    assert message == (
        f"study.storage_path='{storage}' is invalid: cannot create {storage}: Not a directory; "
        "expected a writable directory"
    )


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_storage_path_under_proc_is_refused(tmp_path):
    message = sweep_error(["study.storage_path=/proc/odyssey/ray_results"], tmp_path)
    assert message == (
        "study.storage_path='/proc/odyssey/ray_results' is invalid: cannot create /proc/odyssey: "
        "No such file or directory; expected a writable directory"
    )


def test_storage_path_that_is_a_file_is_refused(tmp_path):
    storage = tmp_path / "results.txt"
    storage.write_text("")
    message = sweep_error([f"study.storage_path={storage}"], tmp_path)
    assert message.startswith(f"study.storage_path='{storage}' is invalid: cannot write in {storage}: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only directories")
def test_read_only_storage_path_is_refused(tmp_path):
    parent = tmp_path / "read_only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        message = sweep_error([f"study.storage_path={parent / 'a' / 'b'}"], tmp_path)
    finally:
        parent.chmod(0o755)
    assert f"cannot create {parent / 'a'}: Permission denied" in message
    assert list(parent.iterdir()) == []


def test_storage_check_leaves_nothing_behind(tmp_path):
    storage = tmp_path / "new" / "nested" / "ray_results"
    sweep = load_sweep([*small_sweep(tmp_path), f"study.storage_path={storage}"], cwd=tmp_path)
    assert sweep.storage_path == storage
    assert not (tmp_path / "new").exists()  # checked by creating and removing it; Ray creates it
    existing = tmp_path / "existing"
    existing.mkdir()
    load_sweep([*small_sweep(tmp_path), f"study.storage_path={existing}"], cwd=tmp_path)
    assert existing.is_dir() and list(existing.iterdir()) == []


# --------------------------------------------------------------------------------------------
# 7. The device


@pytest.mark.parametrize(
    "device, cuda_devices",
    [("auto", 0), ("cpu", 0), ("cuda", 1), ("cuda:0", 1), ("cuda:1", 2), ("cuda:7", 8)],
)
def test_available_devices_pass(device, cuda_devices):
    check_device_available(device, cuda_devices=cuda_devices)


@pytest.mark.parametrize(
    "device, cuda_devices, expected",
    [
        ("cuda", 0, "train.device='cuda' is invalid: CUDA is not available on this machine; valid here: auto, cpu"),
        ("cuda:0", 0, "train.device='cuda:0' is invalid: CUDA is not available on this machine; valid here: auto, cpu"),
        ("cuda:1", 1, "train.device='cuda:1' is invalid: this machine has 1 CUDA device(s); valid here: auto, cpu, cuda, cuda:0"),
        ("cuda:8", 8, "train.device='cuda:8' is invalid: this machine has 8 CUDA device(s); valid here: auto, cpu, cuda, cuda:0, ... cuda:7"),
    ],
)  # fmt: skip
def test_unavailable_devices_are_refused(device, cuda_devices, expected):
    with pytest.raises(ConfigError) as info:
        check_device_available(device, cuda_devices=cuda_devices)
    assert one_line(info.value) == expected


def test_device_check_names_the_cluster_when_asked():
    with pytest.raises(ConfigError, match=re.escape("CUDA is not available on the cluster; valid here: auto, cpu")):
        check_device_available("cuda", cuda_devices=0, where="the cluster")


def test_train_refuses_cuda_without_cuda_before_training(monkeypatch, capsys):
    import odyssey.run_train as run_train

    monkeypatch.setattr(run_train, "_cuda_devices", lambda: 0)
    monkeypatch.setattr(run_train, "build_task", lambda _: pytest.fail("the task was built"))
    message = cli_error(["train", "train.device=cuda", "tracking.enabled=false"], capsys)
    assert message == (
        "odyssey train: error: train.device='cuda' is invalid: CUDA is not available on this machine; "
        "valid here: auto, cpu"
    )
