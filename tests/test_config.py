"""The Hydra config tree: every variant and task file composes into its typed config."""

from __future__ import annotations


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


@pytest.mark.parametrize(
    "name, family",
    [("gru", "gru"), ("rnn", "rnn"), ("vanilla", "lstm"), ("slstm", "lstm"), ("indrnn", "rnn"), ("mingru", "mingru"), ("minlstm", "minlstm")],
)
def test_reference_cell_files_compose_and_record_only_their_own_switches(name, family):
    cfg = trial_config(compose("train", [f"variant={name}"]))
    assert (cfg.variant.family, cfg.variant.label()) == (family, name)
    recorded = {k for k in cfg.flat_params() if k.startswith("variant.")}
    lstm_switches = {"variant.input_gate", "variant.forget_gate", "variant.output_gate", "variant.peepholes",
                     "variant.coupled_input_forget", "variant.full_gate_recurrence", "variant.block_activation",
                     "variant.output_activation", "variant.exponential_gating", "variant.forget_gate_activation"}  # fmt: skip
    own = {"lstm": lstm_switches, "gru": {"variant.reset_before_product"}, "rnn": {"variant.rnn_activation", "variant.recurrence"},
           "mingru": set(), "minlstm": set()}[family]  # fmt: skip
    assert recorded == {"variant.name", "variant.family"} | own


def test_reference_cell_switches_override_and_lstm_switches_on_them_fail_at_compose_time():
    from odyssey.errors import ConfigError

    spec = trial_config(compose("train", ["variant=rnn", "variant.rnn_activation=relu"])).variant
    assert (spec.rnn_activation, spec.label()) == ("relu", "rnn+rnn_activation=relu")
    with pytest.raises(ConfigError) as info:
        trial_config(compose("train", ["variant=[np,gru]"]))
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("variant.peepholes=False set on variant.family='gru'; switches per family: lstm: ")


def test_a_study_compares_lstm_variants_gru_and_rnn(tmp_path):
    from odyssey.sweep.study import load_sweep

    sweep = load_sweep(["study.variants=[vanilla,cifg,gru,rnn]", "study.tasks=[adding]"], cwd=tmp_path)
    assert [(p.variant, p.base.variant.family, p.base.variant.label()) for p in sweep.searches] == [
        ("vanilla", "lstm", "vanilla"), ("cifg", "lstm", "cifg"), ("gru", "gru", "gru"), ("rnn", "rnn", "rnn"),
    ]  # fmt: skip


def test_the_longlag_study_includes_the_simple_rnn_indrnn_and_slstm(tmp_path):
    from odyssey.sweep.study import load_sweep

    sweep = load_sweep(["experiment=longlag_1997", "study.tasks=[adding]"], cwd=tmp_path)
    assert [p.variant for p in sweep.searches] == ["lstm1997", "vanilla", "nfg", "cifg", "rnn", "indrnn", "slstm"]


def test_the_2026_study_runs_the_new_cells_beside_the_2017_variants_on_jsb_in_the_papers_space(tmp_path):
    from odyssey.sweep.study import load_sweep

    new = load_sweep(["experiment=odyssey2_jsb"], cwd=tmp_path)
    paper = load_sweep(["experiment=odyssey_jsb"], cwd=tmp_path)
    assert [p.variant for p in new.searches] == ["vanilla", "cifg", "nfg", "gru", "slstm", "mingru", "minlstm", "rnn"]
    assert {p.task for p in new.searches} == {"jsb"}
    assert new.study.num_samples == paper.study.num_samples == 200 and new.execution == paper.execution
    assert new.space == paper.space  # the paper's search space, unchanged
