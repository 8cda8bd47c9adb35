"""The gradient-flow measurement (``odyssey.gradient_flow``) and ``odyssey plot gradient-flow``.

The hand-checked case: a one-unit ReLU RNN kept in its linear region (positive weights and
inputs) computes h_t = w h_{t-1} + u x_t + b, so the gradient of h_T at x_t is exactly u w^(T-1-t).
The decay bound: for h_t = tanh(W x_t + R h_{t-1} + b) and loss v . h_T,
d loss / d x_t = W^T D_t R^T D_{t+1} ... R^T D_T v with 0 <= D <= 1 (tanh' on the diagonal),
so its norm is at most ||W||_2 ||R||_2^(T-1-t) ||v||: exponential decay for ||R||_2 < 1.
"""

from __future__ import annotations

import pytest
import torch

from odyssey.cells import VariantRNN, VariantSpec, preset
from odyssey.config import compose, trial_config
from odyssey.gradient_flow import gradient_flow, input_gradient_norms
from odyssey.gradient_flow_plot import main
from odyssey.tasks import build_task

SMALL = ["task.length=30", "task.num_train=16", "task.num_valid=8", "task.num_test=4", "model.hidden_size=8", "train.device=cpu"]


def test_norms_equal_the_hand_computed_gradient_of_a_linear_one_unit_rnn():
    layer = VariantRNN(VariantSpec(family="rnn", rnn_activation="relu"), 1, 1).double()
    u, w = 0.7, 0.5
    with torch.no_grad():
        layer.weight_ih.fill_(u)
        layer.weight_hh.fill_(w)
        layer.bias.fill_(1.0)  # with x > 0 every pre-activation is > 0: relu is the identity
    x = torch.rand(6, 2, 1, dtype=torch.double) + 0.1
    lengths = torch.tensor([6, 4])

    def loss(x):  # each sequence's h at its own last step, summed
        out, h_n = layer(x, lengths)
        return h_n.sum()

    norms = input_gradient_norms(loss, x, lengths)
    assert norms.shape == (4,)  # the lags every sequence has: 0..min(lengths)-1
    torch.testing.assert_close(norms, torch.tensor([u * w**k for k in range(4)], dtype=torch.double), rtol=1e-12, atol=0)


def test_norms_equal_autograd_per_sequence_and_step():
    torch.manual_seed(0)
    layer = VariantRNN(preset("rnn"), 3, 5).double()
    x = torch.randn(7, 3, 3, dtype=torch.double)
    lengths = torch.tensor([7, 5, 6])
    v = torch.randn(5, dtype=torch.double)

    def loss(x):
        return (layer(x, lengths)[1][0] @ v).sum()

    norms = input_gradient_norms(loss, x, lengths)
    expected = torch.zeros(5, dtype=torch.double)
    for b, n in enumerate(lengths.tolist()):  # each sequence alone, unpadded, its own loss
        xb = x[:n, b : b + 1].clone().requires_grad_()
        (g,) = torch.autograd.grad(layer(xb)[1][0, 0] @ v, xb)
        expected += g[:n, 0].norm(dim=-1).flip(0)[:5] / 3  # by lag, mean over the 3 sequences
    torch.testing.assert_close(norms, expected, rtol=1e-12, atol=1e-15)


def test_simple_rnn_with_small_recurrent_weights_decays_exponentially_with_the_lag():
    torch.manual_seed(1)
    H, rho = 16, 0.5
    layer = VariantRNN(preset("rnn"), 2, H).double()
    with torch.no_grad():  # R with spectral norm rho
        layer.weight_hh.copy_(rho * torch.linalg.qr(torch.randn(H, H, dtype=torch.double))[0])
    x = torch.randn(40, 4, 2, dtype=torch.double)
    v = torch.randn(H, dtype=torch.double)
    norms = input_gradient_norms(lambda x: (layer(x)[1][0] @ v).sum(), x)
    bound = torch.linalg.matrix_norm(layer.weight_ih.detach(), ord=2) * v.norm() * rho ** torch.arange(40)
    assert (norms <= bound * (1 + 1e-9)).all()  # the theory's bound, at every lag
    # Step to step the norm may rise (the bound is not tight), but over 5 steps it falls, and a
    # straight line through log norm against the lag falls by at least 25 % per step (measured ~45 %).
    assert (norms[5:] < norms[:-5]).all()
    lags = torch.arange(40, dtype=torch.double)
    slope = torch.linalg.lstsq(torch.stack([lags, torch.ones_like(lags)], 1), norms.log()[:, None]).solution[0, 0]
    assert slope < torch.log(torch.tensor(0.75))


def test_on_the_adding_problem_the_rnn_gradient_vanishes_and_the_carousel_keeps_it():
    """At initialisation (std 0.1, H = 8): measured rnn 7e-11 at lag 25 relative to lag 0, nfg
    (no forget gate: the cell passes its gradient on unchanged) 0.76; the thresholds leave
    orders of magnitude either side."""
    ratios = {}
    for variant in ("rnn", "nfg"):
        cfg = trial_config(compose("train", [f"variant={variant}", *SMALL]))
        curves = gradient_flow(cfg, build_task(cfg.task), train_epochs=1, sequences=8)
        assert [c.stage for c in curves] == ["initialisation", "after 1 epoch"]
        assert curves[0].params_count == cfg.variant.num_parameters(2, 8) + 8 + 1  # the layer and the head
        norms = curves[0].norms
        assert 30 <= len(norms) <= 33 and norms.dtype == torch.float64  # lags 0..min T_b - 1; T_b in [30, 33]
        ratios[variant] = float(norms[25] / norms[0])
    assert ratios["rnn"] < 1e-6 < 1e-2 < ratios["nfg"]


def test_plot_command_writes_a_png_and_its_help_names_its_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["gradient-flow", "--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--variants", "--out", "--train-epochs", "--sequences", "KEY=VALUE", "tracking.enabled=false"):
        assert option in help_text
    out = tmp_path / "figs" / "gf.png"
    assert main(["gradient-flow", "--variants", "rnn,gru", "--out", str(out), *SMALL, "tracking.enabled=false"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert main(["gradient-flow-x"]) == 2


def test_plot_command_refuses_variant_overrides_with_the_option_to_use():
    from odyssey.errors import ConfigError

    with pytest.raises(ConfigError, match="--variants rnn,vanilla"):
        main(["gradient-flow", "variant=[rnn,vanilla]"])


def test_plot_is_logged_to_mlflow_with_its_curves(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert main(["gradient-flow", "--variants", "rnn", "--out", "gf.png", *SMALL, f"tracking.uri={uri}", "tracking.experiment=plots"]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("plots").experiment_id])
    assert run.data.tags["odyssey.role"] == "plot" and run.data.params["variants"] == "rnn"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["gf.csv", "gf.png"]
    assert (run.data.params["model.hidden_size"], run.data.params["train.lr"]) == ("8", "0.01")  # SMALL's H, the plot's lr
    history = client.get_metric_history(run.info.run_id, "grad_norm/rnn/init")
    steps = sorted(m.step for m in history)
    assert steps == list(range(len(steps))) and len(steps) >= 30  # one value per lag


def _csv_curves(path) -> dict[tuple[str, str], tuple[int, list[float]]]:
    import csv

    rows = list(csv.DictReader(path.open()))
    curves: dict = {}
    for r in rows:
        _, norms = curves.setdefault((r["variant"], r["stage"]), (int(r["params_count"]), []))
        assert int(r["lag"]) == len(norms)  # lags 0, 1, 2... in order
        norms.append(float(r["grad_norm"]))
    return curves


def test_plot_defaults_title_csv_and_progress(tmp_path, capsys):
    """The command's own defaults (H = 20, lr = 1e-2: the setting of the README's figure) apply
    unless KEY=VALUE overrides them; the title names task, T, H and lr (printed, and the PNG's
    Title); the CSV beside the PNG holds exactly the curves; training prints each epoch."""
    from odyssey.config import compose_trial
    from odyssey.gradient_flow_plot import PLOT_DEFAULTS

    assert PLOT_DEFAULTS == ["model.hidden_size=20", "train.lr=1e-2"]
    small = [o for o in SMALL if not o.startswith("model.hidden_size")]
    out = tmp_path / "gf.png"
    assert main(["gradient-flow", "--variants", "rnn,nfg", "--out", str(out), "--train-epochs", "1", *small, "tracking.enabled=false"]) == 0
    err = capsys.readouterr().err
    title = "gradient flow on adding (T >= 30), H = 20, lr = 0.01"
    assert title in err and "[1/2] rnn: epoch 1/1 (val/mse " in err and "[2/2] nfg: epoch 1/1 (val/mse " in err
    assert f"tEXtTitle\x00{title}, 1 epoch(s) of training".encode() in out.read_bytes()

    curves = _csv_curves(tmp_path / "gf.csv")
    assert sorted(curves) == [("nfg", "after 1 epoch"), ("nfg", "initialisation"), ("rnn", "after 1 epoch"), ("rnn", "initialisation")]
    for variant in ("rnn", "nfg"):  # the same measurement again, from the defaults: the same numbers
        cfg = compose_trial("train", [*PLOT_DEFAULTS, *small, f"variant={variant}"])[1]
        assert (cfg.model.hidden_size, cfg.train.lr) == (20, 0.01)
        for c in gradient_flow(cfg, build_task(cfg.task), train_epochs=1, sequences=32):
            count, norms = curves[(variant, c.stage)]
            assert count == c.params_count == cfg.variant.num_parameters(2, 20) + 20 + 1
            assert norms == c.norms.tolist()  # written with repr: exact

    # explicit overrides beat the plot's defaults
    assert main(["gradient-flow", "--variants", "rnn", "--out", str(out), *small, "model.hidden_size=6", "train.lr=0.05",
                 "tracking.enabled=false"]) == 0  # fmt: skip
    assert "gradient flow on adding (T >= 30), H = 6, lr = 0.05" in capsys.readouterr().err
    (count, norms), = _csv_curves(tmp_path / "gf.csv").values()
    assert count == compose_trial("train", ["variant=rnn"])[1].variant.num_parameters(2, 6) + 6 + 1
