"""The single-trial path: the trainer's protocol, determinism, divergence, resume, and
``odyssey train`` recording a run in a real MLflow tracking server."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from odyssey.cli import main as cli_main
from odyssey.config import compose, trial_config
from odyssey.errors import ConfigError
from odyssey.tasks import build_task
from odyssey.train import train_trial

SMALL = [
    "task.length=12",
    "task.num_train=64",
    "task.num_valid=32",
    "task.num_test=32",
    "model.hidden_size=8",
]


def small_trial(*overrides: str):
    return trial_config(compose("train", [*SMALL, *overrides]))


def test_training_on_the_adding_problem_lowers_the_loss():
    cfg = small_trial("train.max_epochs=6", "train.lr=0.1", "train.momentum=0.9", "train.batch_size=4")
    reports = []
    result = train_trial(cfg, callback=reports.append)
    losses = [r.metrics["train/loss"] for r in reports]
    assert len(reports) == result.epochs == 6
    # The target 0.5 + (X1 + X2)/4 has variance 1/24 = 0.042 around its mean; a network that
    # learns nothing stays near it. After 6 epochs the loss must be well below the first epoch's.
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.status == "completed" and result.stop_reason == "max_epochs"
    assert set(result.test) == {"mse", "accuracy"}
    assert result.best_epoch == min(range(1, 7), key=lambda e: (reports[e - 1].metrics["val/mse"], e))


def test_stacked_bidirectional_model_shapes_parameters_and_learning():
    """`model=bidirectional model.num_layers=2`: layer 2 reads both directions of layer 1 (2H
    inputs), the head reads 2H; the parameter count follows, and the stack learns."""
    from odyssey.model import build_model

    cfg = small_trial("model=bidirectional", "model.hidden_size=8", "model.num_layers=2", "variant=cifg",
                      "train.max_epochs=6", "train.lr=0.1", "train.momentum=0.9", "train.batch_size=4")  # fmt: skip
    task = build_task(cfg.task)
    model = build_model(cfg, task)
    H, I, O = 8, task.input_size, task.output_size
    cell = cfg.variant.num_parameters
    assert model.num_parameters() == 2 * cell(I, H) + 2 * cell(2 * H, H) + (2 * H * O + O)
    x = torch.randn(7, 3, I)
    assert model(x, torch.tensor([7, 5, 2])).shape == (7, 3, O)
    reports = []
    result = train_trial(cfg, callback=reports.append)
    losses = [r.metrics["train/loss"] for r in reports]
    assert result.status == "completed" and losses[-1] < 0.7 * losses[0], losses


def test_same_seed_same_metrics_and_other_seed_differs():
    a = train_trial(small_trial("train.max_epochs=2", "seed=3", "train.input_noise=0.1"))
    b = train_trial(small_trial("train.max_epochs=2", "seed=3", "train.input_noise=0.1"))
    c = train_trial(small_trial("train.max_epochs=2", "seed=4", "train.input_noise=0.1"))
    assert a.final_metrics() == b.final_metrics()
    assert a.final_metrics() != c.final_metrics()


def test_online_sgd_is_the_default_protocol():
    cfg = small_trial()
    assert (cfg.train.batch_size, cfg.train.max_epochs, cfg.train.patience) == (1, 150, 15)
    assert cfg.train.loss_reduction == "sum_over_steps"
    assert cfg.train.nesterov and cfg.train.scale_lr_by_momentum and cfg.model.init_std == 0.1


def test_diverging_trial_stops_cleanly_with_the_worst_metric():
    cfg = small_trial("train.max_epochs=5", "train.lr=1e12", "train.momentum=0.0", "train.batch_size=8")
    result = train_trial(cfg)
    assert result.status == "diverged" and result.stop_reason == "diverged"
    assert result.epochs == 1  # stops in the epoch where the loss stopped being finite
    assert result.test == {"mse": 1.0, "accuracy": 0.0}
    assert all(math.isfinite(v) for v in result.final_metrics().values())


def test_early_stopping_after_patience_stale_epochs():
    cfg = small_trial("train.max_epochs=20", "train.patience=2", "train.lr=1e-9", "train.batch_size=16")
    result = train_trial(cfg)
    # With a step of 1e-10 the validation metric can only improve at epoch 1 (the first value)
    # and, by rounding, rarely after; training must stop `patience` epochs after the best.
    assert result.stop_reason == "early_stopping"
    assert result.epochs == result.best_epoch + 2


def test_resume_from_a_checkpoint_continues_exactly():
    cfg = small_trial("train.max_epochs=3", "train.lr=0.05", "train.input_noise=0.2", "train.batch_size=4")
    task = build_task(cfg.task)
    full, saved = [], {}

    def keep(report):
        full.append(report.metrics)
        if report.epoch == 1:
            saved["ckpt"] = report.checkpoint()

    uninterrupted = train_trial(cfg, callback=keep, task=task)
    resumed_reports = []
    resumed = train_trial(cfg, callback=resumed_reports.append, resume_from=saved["ckpt"], task=task)
    assert [r.epoch for r in resumed_reports] == [2, 3]
    assert [r.metrics for r in resumed_reports] == full[1:]
    assert resumed.final_metrics() == uninterrupted.final_metrics()


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=-0.1", "train.lr=-0.1 is invalid"),
        ("model.hidden_size=0", "model.hidden_size=0 is invalid"),
        ("train.momentum=1.5", "train.momentum=1.5 is invalid"),
        ("variant=lstm2", "valid choices: cifg, fgr, gru, indrnn, lstm1997, mingru, minlstm"),
        ("task=mnist", "valid choices: adding, iam_ondb, jsb, reber"),
        ("train.learning_rate=1", "valid keys of 'train': batch_size"),
        ("train.loss_reduction=mean", "train.loss_reduction='mean' is invalid: expected one of ['sum_over_steps', 'mean_over_steps']"),
        ("train.dtype=float16", "train.dtype='float16' is invalid: expected float32 or float64"),
    ],
)
def test_bad_values_fail_with_one_clear_message(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        trial_config(compose("train", [override]))


def test_bad_switch_combination_is_refused_at_compose_time(capsys):
    code = cli_main(["train", "variant=cifg", "variant.input_gate=false"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "coupled_input_forget=true needs variant.input_gate=true" in err


@pytest.mark.slow
def test_odyssey_train_records_a_run_in_mlflow(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    args = [
        "train",
        "variant=cifg",
        "task=adding",
        *SMALL,
        "train.lr=1e-2",
        "train.momentum=0.9",
        "train.input_noise=0.1",
        "train.max_epochs=2",
        "seed=1",
        "tracking.experiment=train-e2e",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    proc = subprocess.run(
        [sys.executable, "-m", "odyssey.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("train-e2e")
    (run,) = client.search_runs([exp.experiment_id])
    p, m, t = run.data.params, run.data.metrics, run.data.tags
    assert (p["hidden_size"], p["lr"], p["momentum"], p["input_noise"]) == ("8", "0.01", "0.9", "0.1")
    assert p["train.loss_reduction"] == "sum_over_steps"  # the objective's scale is part of the record
    assert p["task.length"] == "12" and p["variant.coupled_input_forget"] == "True"
    assert t["odyssey.variant"] == "cifg" and t["odyssey.task"] == "adding"
    assert t["odyssey.status"] == "completed" and t["odyssey.seed"] == "1"
    assert t["odyssey.device"] == "cpu"  # this machine has no GPU; train.device=auto fell back
    cfg = small_trial("variant=cifg")
    expected_params = cfg.variant.num_parameters(2, 8) + 8 * 1 + 1  # cell + linear head
    assert t["odyssey.params_count"] == str(expected_params)
    history = client.get_metric_history(run.info.run_id, "val/mse")
    assert [h.step for h in history] == [1, 2]
    assert [h.step for h in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2]
    assert {"test/mse", "test/accuracy", "best_epoch"} <= set(m)
    assert m["best_epoch"] in (1.0, 2.0)
    best = history[int(m["best_epoch"]) - 1].value
    assert m["best_val/mse"] == pytest.approx(best)
    assert run.info.status == "FINISHED"
    assert "MLflow: run" in proc.stderr and "epoch" in proc.stderr  # progress display


def test_train_command_refuses_an_unreachable_tracking_server(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    code = cli_main(["train", *SMALL, "train.max_epochs=1", "tracking.uri=http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "http://127.0.0.1:9" in err


def test_gpu_training_uses_the_gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    result = train_trial(small_trial("train.max_epochs=1", "train.device=cuda"))
    assert result.status == "completed"
    assert result.device.startswith("cuda:0 ("), result.device
    auto = train_trial(small_trial("train.max_epochs=1"))  # train.device=auto picks the GPU
    assert auto.device == result.device
    assert train_trial(small_trial("train.max_epochs=1", "train.device=cpu")).device == "cpu"


JSB_DIR = Path(os.environ.get("ODYSSEY_JSB_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data" / "jsb")


@pytest.mark.skipif(not (JSB_DIR / "jsb-chorales-quarter.pkl").is_file(), reason=f"JSB Chorales not found in {JSB_DIR} (set ODYSSEY_JSB_DIR)")
def test_paper_protocol_on_jsb_beats_the_independent_bernoulli_baseline():
    """The paper's loss scale (issue: sum over steps, as PyLSTM) makes its learning rates learn.

    Reference points: the independent per-key Bernoulli fitted on train has NLL 11.06; LSTMs reach
    8.4-8.7. Vanilla, H = 100, lr 1e-2, momentum 0.9, online SGD, no noise, seed 0, measured on
    this machine: validation NLL 10.55, 9.44, 9.35 after epochs 1-3 (with the per-step mean
    instead: 11.99, 11.63, 11.46, still worse than the baseline). The threshold 10.0 is 1.06 below
    the baseline and 0.65 above the measured value.
    """
    cfg = trial_config(
        compose("train", ["task=jsb", f"task.data_dir={JSB_DIR}", "model.hidden_size=100", "train.lr=1e-2",
                          "train.momentum=0.9", "train.max_epochs=3", "seed=0"])
    )  # fmt: skip
    assert cfg.train.batch_size == 1 and cfg.train.loss_reduction == "sum_over_steps"
    vals = []
    result = train_trial(cfg, callback=lambda report: vals.append(report.metrics["val/nll"]))
    assert result.status == "completed" and len(vals) == 3
    assert vals[-1] < 10.0, vals
    assert result.best_val["nll"] == min(vals) and result.test["nll"] < 10.3, (vals, result.test)


@pytest.mark.parametrize("size", [None, 1, 3], ids=["auto", "1", "3"])
def test_evaluation_builds_no_autograd_graph_at_any_eval_batch_size(size):
    """``evaluate`` runs under no_grad (the model's forward sees grad mode off), and the metrics do
    not depend on the evaluation batch size: null (auto), 1 and 3 give the same NLL."""
    from odyssey.config import compose, trial_config
    from odyssey.model import build_model
    from odyssey.tasks import build_task
    from odyssey.tasks.resident import ResidentSplit
    from odyssey.train import eval_batch_size, evaluate

    overrides = ["task.length=10", "task.num_train=8", "task.num_valid=7", "task.num_test=4", "model.hidden_size=4"]
    cfg = trial_config(compose("train", [*overrides, f"train.eval_batch_size={'null' if size is None else size}"]))
    task = build_task(cfg.task)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(torch.is_grad_enabled()))
    split = ResidentSplit(task.splits["valid"], "cpu")
    metrics = evaluate(model, task, split, eval_batch_size(cfg, torch.device("cpu")))
    assert seen and not any(seen)
    from odyssey.cells import native

    auto = 1 if native.lstm_loop() is not None else 64  # 1 where the compiled CPU loop runs
    assert eval_batch_size(cfg, torch.device("cpu")) == (size or auto)
    torch.manual_seed(0)
    reference = evaluate(build_model(cfg, task), task, split, 64)
    assert metrics.keys() == reference.keys() and math.isfinite(metrics[task.primary_metric])
    for k in metrics:
        assert metrics[k] == pytest.approx(reference[k], rel=1e-6), k
