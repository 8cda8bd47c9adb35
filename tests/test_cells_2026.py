"""The 2026 cells beyond the contract tests of tests/test_cells.py (which they join through the
presets): the sLSTM's stabilizer, the minGRU/minLSTM parallel scan against the sequential
recurrence, IndRNN's diagonal, refused switch combinations, and ``odyssey train`` end to end."""

from __future__ import annotations

import pytest
import torch

from odyssey.cells import VariantSpec, preset, variant_layer
from odyssey.cells.minimal import coefficients, linear_recurrence, log_coefficients, log_space_scan, parallel_scan

from test_cells import reference_slstm

NEW = ["slstm", "indrnn", "mingru", "minlstm"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("spec", [preset("slstm"), VariantSpec(exponential_gating=True, peepholes=False)], ids=["slstm", "slstm+tanh"])
def test_stabilized_slstm_equals_the_unstabilized_form_in_float64(spec):
    layer = variant_layer(spec, 3, 5).double()
    x = torch.randn(30, 2, 3, dtype=torch.double) * 2
    plain = reference_slstm(layer, x, stabilized=False)
    assert torch.isfinite(plain).all()
    torch.testing.assert_close(layer(x)[0], plain, rtol=1e-10, atol=1e-12)


def test_stabilized_slstm_stays_finite_where_the_unstabilized_form_overflows():
    """Pre-activations of 100 (a bias of 100 in every row): exp(100) overflows float32 (and its
    sums overflow float64's exp in the plain form over a few steps of exp(i~) growth)."""
    layer = variant_layer(preset("slstm"), 3, 5)
    with torch.no_grad():
        layer.bias.fill_(100.0)
    x = torch.randn(20, 2, 3)
    y = layer(x)[0]
    assert torch.isfinite(y).all()
    assert not torch.isfinite(reference_slstm(layer, x, stabilized=False)).all()  # inf / inf
    torch.testing.assert_close(y.double(), reference_slstm(layer.double(), x.double(), stabilized=False))  # float64 has the room
    x.requires_grad_()
    layer.float()(x)[0].sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("family", ["mingru", "minlstm"])
@pytest.mark.parametrize("T", [1, 7, 300])
def test_parallel_scan_equals_the_sequential_recurrence_in_float64(family, T):
    G = 2 if family == "mingru" else 3
    pre = torch.randn(T, 3, 2, G * 4, dtype=torch.double) * 3
    a, b = coefficients(family, pre)
    log_a, log_b = log_coefficients(family, pre)
    torch.testing.assert_close(log_a.exp(), a, rtol=1e-12, atol=0)
    torch.testing.assert_close(log_b.exp(), b, rtol=1e-12, atol=0)
    sequential = linear_recurrence(a, b)
    torch.testing.assert_close(parallel_scan(a, b), sequential, rtol=1e-10, atol=1e-10)
    for chunk in (1, 2, 5, T):  # any chunk length, T divisible by it or not
        torch.testing.assert_close(parallel_scan(a, b, chunk), sequential, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(log_space_scan(log_a, log_b), sequential, rtol=1e-10, atol=1e-10)
    assert torch.equal(parallel_scan(a, b)[0], b[0]) and torch.equal(sequential[0], b[0])  # h_1 = a_1 * 0 + b_1: h_0 = 0 exactly


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_scan_layer_equals_sequential_layer_outputs_and_gradients(name, bidirectional):
    scan = variant_layer(preset(name), 3, 4, bidirectional=bidirectional).double()
    seq = variant_layer(preset(name), 3, 4, bidirectional=bidirectional, fused=False).double()
    seq.load_state_dict(scan.state_dict())
    x = torch.randn(120, 3, 3, dtype=torch.double) * 2
    lengths = torch.tensor([120, 60, 7])
    grads = []
    for layer in (scan, seq):
        out, h_n = layer(x, lengths)
        (out.sin().sum() + h_n.sum()).backward()
        grads.append([p.grad for p in layer.parameters()])
    torch.testing.assert_close(scan(x, lengths)[0], seq(x, lengths)[0], rtol=1e-10, atol=1e-10)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_indrnn_recurrence_is_elementwise():
    layer = variant_layer(preset("indrnn"), 2, 4)
    assert {n: tuple(p.shape) for n, p in layer.named_parameters()} == {"weight_ih": (4, 2), "weight_hh": (4,), "bias": (4,)}
    x = torch.randn(5, 1, 2)
    with torch.no_grad():
        layer.weight_hh.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]))
        layer.weight_ih.zero_()
        layer.bias.copy_(torch.tensor([1.0, 1.0, -1.0, 0.5]))
    y = layer(x)[0][:, 0]
    # unit 0: relu(1) every step; unit 1: counts up (u = 1); unit 2: relu(-1) = 0; unit 3: 0.5.
    torch.testing.assert_close(y, torch.tensor([[1.0, t + 1.0, 0.0, 0.5] for t in range(5)]))


@pytest.mark.parametrize(
    "switches, bad",
    [
        (dict(exponential_gating=True), "peepholes"),
        (dict(exponential_gating=True, peepholes=False, coupled_input_forget=True), "coupled_input_forget"),
        (dict(exponential_gating=True, peepholes=False, full_gate_recurrence=True), "full_gate_recurrence"),
    ],
)
def test_a_refused_slstm_combination_names_the_family_and_the_valid_switches_in_one_line(switches, bad):
    with pytest.raises(ValueError) as info:
        VariantSpec(**switches)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"variant.exponential_gating=true (family lstm, the sLSTM) refuses variant.{bad}=true")
    assert message.endswith("switches valid with it: input_gate, forget_gate, output_gate, block_activation, "
                            "output_activation, exponential_gating, forget_gate_activation")  # fmt: skip


@pytest.mark.parametrize(
    "switches, match",
    [
        (dict(forget_gate_activation="exp"), "needs variant.exponential_gating=true"),
        (dict(family="rnn", recurrence="banded"), r"valid: \['full', 'diagonal'\]"),
        (dict(family="mingru", recurrence="diagonal"), "variant.recurrence='diagonal' set on variant.family='mingru'"),
        (dict(family="minlstm", exponential_gating=True), r"mingru: \(none\); minlstm: \(none\)"),
    ],
)
def test_other_refused_switches(switches, match):
    with pytest.raises(ValueError, match=match):
        VariantSpec(**switches)


def test_labels_of_the_new_cells():
    assert [preset(n).label() for n in NEW] == NEW
    assert VariantSpec(exponential_gating=True, peepholes=False, output_gate=False).label() == "slstm+nog+output_activation=tanh"
    assert VariantSpec(family="rnn", recurrence="diagonal").label() == "rnn+recurrence=diagonal"


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    """One sqlite tracking store for the module (creating one costs seconds of migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.mark.parametrize("name", NEW)
def test_odyssey_train_runs_each_new_preset_end_to_end(name, sqlite_store, tmp_path, monkeypatch, capsys):
    """``odyssey train`` (in this process), one epoch on a tiny adding task, a two-layer
    bidirectional model, tracked to a sqlite store."""
    from mlflow import MlflowClient

    from odyssey.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["train", f"variant={name}", "task=adding", "task.length=10", "task.num_train=8", "task.num_valid=4",
            "task.num_test=4", "model=bidirectional", "model.num_layers=2", "model.hidden_size=4", "train.max_epochs=1",
            "seed=3", f"tracking.uri={sqlite_store}", f"tracking.experiment=new-cells-{name}"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    client = MlflowClient(sqlite_store)
    (run,) = client.search_runs([client.get_experiment_by_name(f"new-cells-{name}").experiment_id])
    assert run.data.tags["odyssey.variant"] == name and run.data.tags["odyssey.status"] == "completed"
    assert run.data.params["variant.family"] == preset(name).family
    expected = 2 * (preset(name).num_parameters(2, 4) + preset(name).num_parameters(8, 4)) + 8 + 1  # two bi layers (I = 2, then 8) + head
    assert run.data.tags["odyssey.params_count"] == str(expected)
    assert "test/mse" in run.data.metrics and [h.step for h in client.get_metric_history(run.info.run_id, "val/mse")] == [1]
