"""The adding problem (Hochreiter & Schmidhuber 1997, experiment 4).

Each step's input is a pair ``(value, marker)``: ``value`` uniform in [-1, 1], ``marker`` 1.0 on
exactly two pairs and 0.0 elsewhere. The first marked pair is one of the first ten pairs (X1);
the second is one of the first ``T // 2 - 1`` pairs still unmarked (X2). At the last step the
network outputs ``0.5 + (X1 + X2) / 4`` (the sum scaled to [0, 1]); only that step is scored.
A sequence counts as correct if its absolute error is below 0.04. Sequence lengths are uniform
integers in ``[T, T + T // 10]`` (1997: "between T and T + T/10").

Simplification (default): the 1997 paper also sets the marker of the first and the last pair to
-1.0 and, when the first pair is marked, its value to 0. ``end_markers=True`` restores both rules.

Example:
    >>> task = AddingConfig(length=20, num_train=8, num_valid=2, num_test=2).build()
    >>> seq = task.splits["train"][0]
    >>> seq.inputs.shape[1], seq.targets.shape[1], int(seq.mask.sum())
    (2, 1, 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from odyssey.tasks import register
from odyssey.tasks.base import Batch, Sequence, Task, check_bool, check_choice, check_int, masked, scored_count
from odyssey.tasks.generated import GeneratedTaskConfig

__all__ = ["ACCURACY_TOLERANCE", "AddingConfig", "AddingTask"]

ACCURACY_TOLERANCE = 0.04  # |error| below which a sequence counts as correct (1997 paper)


@register("adding")
@dataclass(frozen=True)
class AddingConfig(GeneratedTaskConfig):
    """Config of the adding problem.

    Attributes:
        length: minimal sequence length T (>= 10); lengths are uniform in [T, T + T // 10].
        num_train, num_valid, num_test: number of sequences per split.
        seed: seed of the generator (each split has its own stream, see ``split_rng``).
        end_markers: the 1997 paper's -1.0 markers on the first and last pair.
    """

    name: str = "adding"
    length: int = 100
    end_markers: bool = False

    def __post_init__(self) -> None:
        check_choice("name", self.name, ("adding",))
        check_int("length", self.length, low=10)
        check_bool("end_markers", self.end_markers)
        super().__post_init__()

    def make_task(self, splits: dict[str, list[Sequence]]) -> AddingTask:
        return AddingTask(splits)

    def sample(self, rng: np.random.Generator) -> Sequence:
        """One sequence: inputs (L, 2), targets (L, 1), mask (L,) with only the last step set."""
        t = self.length
        n = int(rng.integers(t, t + t // 10, endpoint=True))
        values = rng.uniform(-1.0, 1.0, size=n)
        markers = np.zeros(n)
        first = int(rng.integers(0, 10))
        unmarked = [i for i in range(t // 2) if i != first][: t // 2 - 1]  # first T/2 - 1 unmarked
        second = int(rng.choice(unmarked))
        if self.end_markers:
            markers[0] = markers[-1] = -1.0
            if 0 in (first, second):
                values[0] = 0.0  # 1997: "in the rare case where the first pair gets marked, X1 = 0"
        markers[[first, second]] = 1.0
        inputs = torch.from_numpy(np.stack([values, markers], axis=1)).float()  # (L, 2)
        targets = torch.zeros(n, 1)
        targets[-1, 0] = 0.5 + (values[first] + values[second]) / 4.0
        mask = torch.zeros(n, dtype=torch.bool)
        mask[-1] = True
        return Sequence(inputs, targets, mask)


class AddingTask(Task):
    """Regression at the last step: MSE loss; metrics ``mse`` (primary) and ``accuracy``.

    Worst values (reported for a diverged trial): ``mse`` 1.0, the largest squared error of a
    prediction inside the target range [0, 1]; ``accuracy`` 0.0.
    """

    name = "adding"
    input_size = 2
    output_size = 1
    metric_names: ClassVar[tuple[str, ...]] = ("mse", "accuracy")
    primary_metric: ClassVar[str] = "mse"
    lower_is_better: ClassVar[bool] = True
    worst_value: ClassVar[float] = 1.0
    worst_values: ClassVar[dict[str, float]] = {"accuracy": 0.0}

    def _errors(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Prediction errors of every step: (..., T, B), 0 on unscored steps."""
        return masked(outputs[..., 0] - batch.targets[..., 0], batch.mask)

    def step_losses(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self._errors(outputs, batch).pow(2)

    def metric_totals(self, outputs: torch.Tensor, batch: Batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        err = self._errors(outputs.detach(), batch)
        n = scored_count(batch.mask, err)
        hits = (err.abs() < ACCURACY_TOLERANCE) & batch.mask
        return {"mse": (err.pow(2).sum(dim=(-2, -1)), n), "accuracy": (hits.sum(dim=(-2, -1)), n)}
