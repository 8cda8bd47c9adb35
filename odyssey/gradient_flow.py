"""The vanishing gradient, measured: the norm of d loss / d x_t against the lag T - t.

For a sequence of length T scored at its last step (the adding problem), the gradient reaching
the input x_t has passed through T - t steps of the recurrence. For the simple RNN it is a
product of T - t Jacobians diag(act'(.)) R, so with ||R|| < 1 it decays exponentially with the lag
(Hochreiter 1991; Bengio et al. 1994); the LSTM's cell passes it on through c = ... + c' * f,
unchanged where f = 1 (the 1997 cell, NFG: the constant error carousel; vanilla once its
forget gates have learned to stay open).

:func:`input_gradient_norms` computes the curve for any differentiable loss of a batch;
:func:`gradient_flow` for a trial config on its task, at initialisation and after a short
training (``odyssey plot gradient-flow`` draws them: :mod:`odyssey.gradient_flow_plot`).
Nothing here imports Ray or MLflow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from odyssey.config import TrialConfig
from odyssey.model import build_model
from odyssey.tasks import Task
from odyssey.tasks.base import collate
from odyssey.train import EpochReport, train_trial

__all__ = ["GradientCurve", "gradient_flow", "input_gradient_norms"]


def input_gradient_norms(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over sequences of ||d loss / d x_t||, indexed by the lag T_b - 1 - t.

    Args:
        loss_fn: x -> a scalar, the *sum* of the sequences' own losses (so that the gradient at
            sequence b's inputs is that of its own loss: the sequences of a batch do not interact).
        x: inputs (T, B, I).
        lengths: (B,) the sequences' lengths T_b (default: all T).

    Returns:
        (L,) with L = min_b T_b: entry k is the mean over the batch of the Euclidean norm (over the
        I features) of the gradient at x_{T_b - 1 - k, b}; k = 0 is each sequence's last step.
    """
    T, B, _ = x.shape
    x = x.detach().requires_grad_()
    (grad,) = torch.autograd.grad(loss_fn(x), x)
    norms = grad.norm(dim=-1)  # (T, B)
    lengths = torch.full((B,), T) if lengths is None else lengths.cpu()
    lags = torch.arange(int(lengths.min()))  # (L,)
    steps = (lengths[None, :] - 1 - lags[:, None]).to(norms.device)  # (L, B): the step at each lag
    return norms.gather(0, steps).mean(dim=1)


@dataclass(frozen=True)
class GradientCurve:
    """One curve of the plot: a variant at one stage of training."""

    variant: str  # the variant's label
    stage: str  # "initialisation" or "after N epochs"
    norms: torch.Tensor  # (L,) float64, by lag (see input_gradient_norms)
    params_count: int


def _curve(model, task: Task, batch, variant: str, stage: str) -> GradientCurve:
    model.zero_grad(set_to_none=True)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return task.step_losses(model(x, batch.lengths), batch).sum()  # each sequence's own loss, summed

    norms = input_gradient_norms(loss, batch.inputs, batch.lengths)
    return GradientCurve(variant, stage, norms.detach().cpu(), model.num_parameters())


def gradient_flow(
    cfg: TrialConfig,
    task: Task,
    *,
    train_epochs: int = 0,
    sequences: int = 32,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> list[GradientCurve]:
    """The curves of ``cfg``'s variant on ``task``: at initialisation (the weights ``train_trial``
    starts from), and, with ``train_epochs`` > 0, after that many epochs of ``train_trial``
    (``on_epoch`` is called with each epoch's report: progress).

    Measured in float64 on the CPU, on the first ``sequences`` sequences of the validation split.
    """
    batch = collate(task.splits["valid"][:sequences])
    targets = batch.targets.double() if batch.targets.is_floating_point() else batch.targets  # class indices stay
    batch = dataclasses.replace(batch, inputs=batch.inputs.double(), targets=targets)
    torch.manual_seed(cfg.seed)  # as train_trial: the same initial weights
    model = build_model(cfg, task).double()
    label = cfg.variant.label()
    curves = [_curve(model, task, batch, label, "initialisation")]
    if train_epochs > 0:
        reports = []

        def collect(report: EpochReport) -> None:
            reports.append(report)
            if on_epoch is not None:
                on_epoch(report)

        train_trial(cfg.replace(train={"max_epochs": train_epochs, "patience": max(train_epochs, cfg.train.patience)}), callback=collect, task=task)
        if not reports:  # diverged in its first epoch: there are no trained weights to measure
            return curves
        model.load_state_dict(reports[-1].checkpoint()["model"])  # copied into the float64 weights
        curves.append(_curve(model, task, batch, label, f"after {len(reports)} epoch{'s' * (len(reports) != 1)}"))
    return curves
