"""The task interface: dataset splits of variable-length sequences, a training loss and metrics.

A task turns its config into three splits (``train``, ``valid``, ``test``) of
:class:`Sequence` examples. The trainer batches them with :func:`collate` into time-major,
zero-padded :class:`Batch` tensors, runs the model to get ``outputs`` of shape (T, B, O) and asks
the task for the loss to minimise and for metric sums that it pools over a whole split.

The training objective follows the paper's library (PyLSTM's error functions): a sequence's loss
is the **sum** of its per-step losses over its scored steps (each summed over the output units),
and a minibatch's loss is the **mean over its sequences** (``LOSS_SUM_OVER_STEPS``, the default).
``LOSS_MEAN_OVER_STEPS`` divides by the number of scored steps instead (a gradient about T times
smaller for per-step targets). Tasks with one target per sequence (adding, temporal order) give
the same loss either way.

Every tensor method accepts extra leading dimensions (a trial pack's member axis): outputs
(..., T, B, O) with batch tensors (..., T, B, ...) or (T, B, ...) shared by all members.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from odyssey.errors import ConfigError

__all__ = [
    "LOSS_MEAN_OVER_STEPS",
    "LOSS_REDUCTIONS",
    "LOSS_SUM_OVER_STEPS",
    "SPLITS",
    "Batch",
    "Sequence",
    "Task",
    "check_bool",
    "check_choice",
    "check_float",
    "check_int",
    "class_errors",
    "collate",
    "frame_cross_entropy",
    "masked",
    "scored_count",
    "split_rng",
]

SPLITS = ("train", "valid", "test")

LOSS_SUM_OVER_STEPS = "sum_over_steps"  # the paper's (PyLSTM): sum over steps, mean over sequences
LOSS_MEAN_OVER_STEPS = "mean_over_steps"  # mean over all scored steps of the batch
LOSS_REDUCTIONS = (LOSS_SUM_OVER_STEPS, LOSS_MEAN_OVER_STEPS)


@dataclass(frozen=True)
class Sequence:
    """One example.

    Attributes:
        inputs: (T, I) float32.
        targets: (T, O) float32 (regression, multi-label) or (T,) int64 (class index).
        mask: (T,) bool, the steps whose outputs are scored.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


@dataclass(frozen=True)
class Batch:
    """Time-major, zero-padded batch: inputs (T, B, I), targets (T, B, O) or (T, B),
    mask (T, B) bool (False on padding and unscored steps), lengths (B,) int64."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.inputs.to(device, non_blocking=True),
            self.targets.to(device, non_blocking=True),
            self.mask.to(device, non_blocking=True),
            self.lengths,  # stays on CPU: used for indexing bookkeeping
        )

    @property
    def batch_size(self) -> int:
        return int(self.inputs.shape[1])


def collate(sequences: list[Sequence]) -> Batch:
    """Pad a list of sequences to the longest one, time-major."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    t_max = int(lengths.max())
    first = sequences[0]
    inputs = first.inputs.new_zeros((t_max, len(sequences), *first.inputs.shape[1:]))
    targets = first.targets.new_zeros((t_max, len(sequences), *first.targets.shape[1:]))
    mask = torch.zeros((t_max, len(sequences)), dtype=torch.bool)
    for b, seq in enumerate(sequences):
        n = len(seq)
        inputs[:n, b] = seq.inputs
        targets[:n, b] = seq.targets
        mask[:n, b] = seq.mask
    return Batch(inputs, targets, mask, lengths)


class Task(ABC):
    """A benchmark: splits, output size, loss and metrics.

    Subclasses set the class attributes and implement :meth:`step_losses` (the training loss of
    every step) and :meth:`metric_totals`, which returns, per metric name, a (sum, count) pair of
    tensors for one batch; the trainer adds them up over a split and divides, so a metric is
    pooled over the split, not averaged over batches (e.g. JSB NLL is the sum over all predicted
    steps divided by their number). Both keep any leading dimensions of ``outputs``.
    """

    name: str
    input_size: int
    output_size: int
    metric_names: ClassVar[tuple[str, ...]]
    primary_metric: ClassVar[str]
    lower_is_better: ClassVar[bool]
    worst_value: ClassVar[float]  # reported for the primary metric of a diverged trial
    worst_values: ClassVar[dict[str, float]] = {}  # worst value of each non-primary metric

    def __init__(self, splits: dict[str, list[Sequence]]):
        missing = {"train", "valid", "test"} - set(splits)
        if missing:
            raise ValueError(f"task {self.name!r} lacks split(s) {sorted(missing)}")
        self.splits = splits

    @abstractmethod
    def step_losses(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The training loss of each step, summed over output units: (..., T, B), 0 where unscored."""

    @abstractmethod
    def metric_totals(self, outputs: torch.Tensor, batch: Batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per metric, the (sum, count) of this batch's contribution, as tensors of shape (...)."""

    def loss(self, outputs: torch.Tensor, batch: Batch, reduction: str = LOSS_SUM_OVER_STEPS) -> torch.Tensor:
        """The training loss of a batch of outputs (..., T, B, O): shape (...), a scalar for one model.

        ``sum_over_steps`` (the paper's): sum over each sequence's scored steps, mean over the
        batch's sequences (those with at least one scored step; padding columns have none).
        ``mean_over_steps``: the sum over all scored steps divided by their number.
        """
        per_step = self.step_losses(outputs, batch)  # (..., T, B)
        scored = batch.mask
        if reduction == LOSS_SUM_OVER_STEPS:
            sequences = scored.any(dim=-2).sum(dim=-1).clamp_min(1)  # (...,)
            return per_step.sum(dim=(-2, -1)) / sequences
        if reduction == LOSS_MEAN_OVER_STEPS:
            return per_step.sum(dim=(-2, -1)) / scored.sum(dim=(-2, -1)).clamp_min(1)
        raise ValueError(f"unknown loss reduction {reduction!r}; valid reductions: {list(LOSS_REDUCTIONS)}")

    def metric_sums(self, outputs: torch.Tensor, batch: Batch) -> dict[str, tuple[float, int]]:
        """:meth:`metric_totals` of one model's outputs (T, B, O) as plain numbers."""
        return {k: (float(total), int(count)) for k, (total, count) in self.metric_totals(outputs, batch).items()}

    def data_tags(self) -> dict[str, str]:
        """What the run records about the data this task derived from its files (run tags under
        ``odyssey.task_data.``, e.g. normalisation statistics); none for most tasks."""
        return {}

    def better(self, a: float, b: float) -> bool:
        """Whether primary-metric value ``a`` is strictly better than ``b``."""
        return a < b if self.lower_is_better else a > b

    def worst_metrics(self) -> dict[str, float]:
        """The metrics reported for a diverged trial: the worst value of each metric, never NaN.

        The primary metric gets ``worst_value``; the others come from ``worst_values``, and an
        ``accuracy`` missing there is 0.0.
        """
        worst = {}
        for m in self.metric_names:
            if m == self.primary_metric:
                worst[m] = float(self.worst_value)
            elif m in self.worst_values:
                worst[m] = float(self.worst_values[m])
            elif m == "accuracy":
                worst[m] = 0.0
            else:
                raise NotImplementedError(f"task {self.name!r} defines no worst value for metric {m!r}")
        return worst


def masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` where ``mask`` (broadcast over leading dims), exact 0 elsewhere (NaN-safe)."""
    return torch.where(mask, values, values.new_zeros(()))


def frame_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of each step, ``-log softmax(outputs)[target]``: (..., T, B), 0 where unscored.

    ``outputs`` (..., T, B, O) logits; ``targets`` (T, B) or (..., T, B) class indices.
    """
    targets = targets.expand(outputs.shape[:-1])  # (..., T, B)
    nll = -torch.log_softmax(outputs, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return masked(nll, mask)


def class_errors(outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(misclassified scored steps, scored steps), each of shape (...): argmax != target."""
    wrong = (outputs.detach().argmax(dim=-1) != targets) & mask  # (..., T, B)
    return wrong.sum(dim=(-2, -1)), scored_count(mask, wrong)


def scored_count(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The number of scored steps, with ``like``'s leading dims: shape ``like.shape[:-2]``."""
    return mask.expand(like.shape).sum(dim=(-2, -1))


def split_rng(seed: int, split: str) -> np.random.Generator:
    """A private generator for one split of a generated task.

    Each split draws from its own stream seeded by ``(seed, split index)``, so the test set does
    not change when ``num_train`` does, and no global RNG state is read or changed.
    """
    return np.random.default_rng([int(seed), SPLITS.index(split)])


# --------------------------------------------------------------------------------------------
# Config validation helpers shared by the task configs: each raises ConfigError naming the key
# (``task.<field>``), the bad value and the valid range.


def check_int(key: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in [low, high] (bounds optional); bools and floats are refused."""
    valid = _range_text("an integer", low, high)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"task.{key}={value!r} is invalid: expected {valid}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"task.{key}={value!r} is invalid: expected {valid}")
    return int(value)


def check_float(key: str, value: Any, *, low: float | None = None, high: float | None = None) -> float:
    """``value`` (an int or a float) as a finite float in [low, high]."""
    valid = _range_text("a number", low, high)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"task.{key}={value!r} is invalid: expected {valid}")
    return float(value)


def check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"task.{key}={value!r} is invalid: expected true or false")
    return value


def check_choice(key: str, value: Any, choices: tuple[Any, ...]) -> Any:
    if value not in choices:
        raise ConfigError(f"task.{key}={value!r} is invalid: expected one of {list(choices)}")
    return value


def _range_text(kind: str, low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"{kind} in [{low}, {high}]"
    if low is not None:
        return f"{kind} >= {low}"
    if high is not None:
        return f"{kind} <= {high}"
    return kind
