"""How a variant is selected (#20, odyssey.variant_selection): a switch of another family is
refused whatever its value, variants of two families are not combined, a variant file names its
variant, and a sweep takes its variants from study.variants only (its searches' labels, their
runs and what trained cannot disagree). Composition only: no training, no services."""

from __future__ import annotations

import re

import pytest

from odyssey.config import compose_trial
from odyssey.errors import ConfigError
from odyssey.sweep.study import load_sweep


@pytest.mark.parametrize(
    "overrides, family, switch, owner",
    [
        # the measured holes: a foreign switch at its *default* value was accepted silently
        (["variant=gru", "variant.peepholes=true"], "gru", "peepholes", "lstm"),
        (["variant=gru", "variant.input_gate=true"], "gru", "input_gate", "lstm"),
        (["variant=rnn", "variant.reset_before_product=false"], "rnn", "reset_before_product", "gru"),
        (["variant=gru", "variant.block_activation=tanh"], "gru", "block_activation", "lstm"),
        (["variant=gru", "variant.peepholes=false"], "gru", "peepholes", "lstm"),
        # and on the LSTM: the message names the family the variant really is
        (["variant.rnn_activation=tanh"], "lstm", "rnn_activation", "rnn"),
        (["variant=np", "variant.reset_before_product=true"], "lstm", "reset_before_product", "gru"),
        # the 2026 cells: their switches belong to their families, and the scan families have none
        (["variant=gru", "variant.exponential_gating=true"], "gru", "exponential_gating", "lstm"),
        (["variant=slstm", "variant.recurrence=diagonal"], "lstm", "recurrence", "rnn"),
        (["variant=mingru", "variant.peepholes=false"], "mingru", "peepholes", "lstm"),
        (["variant=minlstm", "variant.rnn_activation=relu"], "minlstm", "rnn_activation", "rnn"),
    ],
)
def test_a_switch_of_another_family_is_refused_whatever_its_value(overrides, family, switch, owner):
    with pytest.raises(ConfigError) as info:
        compose_trial("train", overrides)
    message = str(info.value)
    assert f"variant.{switch} (a switch of the {owner} family)" in message
    assert f"whose family is {family}" in message and "\n" not in message
    own = {"lstm": "input_gate, forget_gate", "gru": "reset_before_product", "rnn": "rnn_activation, recurrence",
           "mingru": "none", "minlstm": "none"}[family]  # fmt: skip
    assert f"the {family} family's switches: {own}" in message


@pytest.mark.parametrize("variants", ["[gru,rnn]", "[rnn,gru]", "[np,gru]", "[gru,cifg]", "[mingru,gru]", "[gru,minlstm]"])
def test_variants_of_two_families_are_not_combined(variants):
    with pytest.raises(ConfigError, match=r"combines variants of different families: .*\(gru\).*; a variant is one cell"):
        compose_trial("train", [f"variant={variants}"])


@pytest.mark.parametrize(
    "overrides, label, family",
    [
        (["variant=gru", "variant.reset_before_product=true"], "gru+reset_before_product=True", "gru"),
        (["variant=rnn", "variant.rnn_activation=relu"], "rnn+rnn_activation=relu", "rnn"),
        (["variant=indrnn", "variant.rnn_activation=tanh"], "rnn+recurrence=diagonal", "rnn"),
        (["variant=slstm", "variant.output_gate=false"], "slstm+nog", "lstm"),
        (["variant=[slstm,nig]"], "slstm+nig", "lstm"),
        (["variant=mingru"], "mingru", "mingru"),
        (["variant=[np,cifg]"], "np+cifg", "lstm"),  # a combination keeps the label its switches give
        (["variant=np", "variant.coupled_input_forget=true"], "np+cifg", "lstm"),  # a file changed: its switches name it
        (["variant=cifg"], "cifg", "lstm"),
        ([], "vanilla", "lstm"),
    ],
)
def test_own_switches_and_one_family_combinations_are_accepted(overrides, label, family):
    _, trial = compose_trial("train", overrides)
    assert trial.variant.family == family and trial.variant.label() == label


def test_a_variant_file_names_its_variant_unless_it_sets_a_name(tmp_path, monkeypatch):
    (tmp_path / "variant").mkdir()
    (tmp_path / "variant" / "gruish.yaml").write_text("peepholes: false\ncoupled_input_forget: true\noutput_activation: identity\n")
    (tmp_path / "variant" / "named.yaml").write_text("peepholes: false\nname: my_label\n")
    monkeypatch.setenv("ODYSSEY_CONFIG_PATH", str(tmp_path))
    assert compose_trial("train", ["variant=gruish"])[1].variant.label() == "gruish"  # not noaf+np+cifg
    assert compose_trial("train", ["variant=named"])[1].variant.label() == "my_label"
    # in a sweep, a search is labelled by its study.variants entry, and so is every trial's cell
    sweep = load_sweep(["study.variants=[vanilla,gruish,named]", "study.num_samples=1", f"study.storage_path={tmp_path / 'r'}"])
    assert [(p.variant, p.base.variant.label()) for p in sweep.searches] == [
        ("vanilla", "vanilla"), ("gruish", "gruish"), ("named", "named")
    ]  # fmt: skip
    assert sweep.searches[1].base.variant.output_activation == "identity"


@pytest.mark.parametrize(
    "override",
    ["variant.peepholes=false", "variant=[nig,cifg]", "variant=gru", "variant=[gru,rnn]", "+variant.name=x", "variant=np"],
)
def test_a_sweep_refuses_variant_overrides(tmp_path, override):
    """The measured defect: variant.peepholes=false on a sweep trained np cells under every
    search's label; variant=gru and the like were silently ignored."""
    with pytest.raises(ConfigError) as info:
        load_sweep(["experiment=quickstart", override, f"study.storage_path={tmp_path}"])
    message = str(info.value)
    assert override in message and "the variants come from study.variants only" in message
    assert "put a combined variant in a file" in message and "odyssey train takes variant=[a,b]" in message


def test_a_sweep_refuses_an_experiment_that_sets_variant_keys(tmp_path, monkeypatch):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "sneaky.yaml").write_text(
        "# @package _global_\nstudy: {name: sneaky, variants: [vanilla, nfg]}\nvariant: {peepholes: false}\n"
    )
    monkeypatch.setenv("ODYSSEY_CONFIG_PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"the experiment \(or another config file\) sets variant.peepholes=False"):
        load_sweep(["experiment=sneaky", f"study.storage_path={tmp_path / 'r'}"])


def test_the_submit_check_refuses_variant_overrides_before_anything_is_sent(tmp_path):
    from odyssey.sweep.jobs import _submit

    env = {"env_vars": {}}
    with pytest.raises(ConfigError, match="the variants come from study.variants only"):
        _submit(env, ["experiment=quickstart", "variant.peepholes=false"], address="http://127.0.0.1:1", submission_id=None, python="python")


@pytest.mark.parametrize(
    "argv, words",
    [
        (["variant=vanilla,cifg"], r"variant=vanilla,cifg is ambiguous .*write variant=\[vanilla,cifg\]; to compare them, run a study with study.variants=\[vanilla,cifg\]"),
        (["train.lr=1e-3,2e-3"], r"train.lr=1e-3,2e-3 is ambiguous .*give one value"),
        (["--variant", "cifg"], r"--variant is not an option: configs are set as KEY=VALUE overrides, e.g. variant=\.\.\."),
    ],
)
def test_hydra_parse_slips_get_a_one_line_hint(argv, words, capsys):
    """#23: Hydra's "Ambiguous value" and LexerNoViableAltException with a hint of what to write."""
    from odyssey.cli import main

    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(words, err), err
