"""The tasks of ``task=sequences`` (:mod:`odyssey.tasks.sequences`), one per kind of target.

* :class:`ClassTask` (``sequence_class``, ``step_class``): softmax cross-entropy
  ``-log softmax(y_t)[c]`` on the scored steps (the last one, or every one); metrics ``error``
  (misclassified / scored steps) and ``loss`` (the mean cross-entropy per scored step).
* :class:`RegressionTask` (``sequence_regression``, ``step_regression``): squared error summed
  over the D outputs; metric ``mse`` = ``sum (y - t)^2 / (scored steps * D)``.
* :class:`NextStepBinaryTask` (``next_step_binary``): JSB's independent Bernoulli outputs, ``nll``
  per predicted step.

Outputs (..., T, B, O); every method keeps the leading (pack) dimensions, as :class:`Task` says.
"""

from __future__ import annotations

import json
import math
from typing import ClassVar

import torch

from odyssey.tasks.base import Batch, Task, class_errors, frame_cross_entropy, masked, scored_count
from odyssey.tasks.jsb import JSBTask

__all__ = ["ClassTask", "NextStepBinaryTask", "RegressionTask", "SequencesTask"]


class SequencesTask(Task):
    """The shared part: ``name``, the target kind, the classes (or None) and the input statistics."""

    name = "sequences"

    def __init__(self, splits, *, input_size: int, output_size: int, target: str, classes=None, normalization=None):
        self.input_size, self.output_size, self.target = input_size, output_size, target
        self.classes = classes
        self.normalization = normalization  # {"mean": [F], "std": [F]} or None
        super().__init__(splits)

    def data_tags(self) -> dict[str, str]:
        """``odyssey.task_data.{normalization,classes,sizes}``: JSON, the statistics to 7 digits
        (MLflow tags hold 8000 characters: statistics of more features are left out, and said so)."""
        from odyssey.run_schema import TAG_TASK_DATA_PREFIX

        tags = {"sizes": json.dumps({s: len(v) for s, v in self.splits.items()})}
        if self.classes is not None:
            tags["classes"] = json.dumps(list(self.classes))
        if self.normalization is not None:
            stats = json.dumps({k: [float(f"{v:.7g}") for v in vs] for k, vs in self.normalization.items()})
            tags["normalization"] = stats if len(stats) <= 8000 else f"left out: {self.input_size} features are too many for a tag"
        return {TAG_TASK_DATA_PREFIX + k: v if len(v) <= 8000 else v[:7990] + " ..." for k, v in tags.items()}


class ClassTask(SequencesTask):
    """``sequence_class`` and ``step_class``: softmax cross-entropy; ``error`` (worst 1) and
    ``loss`` (mean cross-entropy per scored step; worst ln C, a uniform guess)."""

    metric_names: ClassVar[tuple[str, ...]] = ("error", "loss")
    primary_metric: ClassVar[str] = "error"
    lower_is_better: ClassVar[bool] = True
    worst_value: ClassVar[float] = 1.0

    def __init__(self, splits, *, input_size: int, classes, target: str, normalization=None):
        super().__init__(
            splits, input_size=input_size, output_size=len(classes), target=target, classes=classes,
            normalization=normalization,
        )  # fmt: skip
        self.worst_values = {"loss": math.log(max(len(classes), 2))}

    def step_losses(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return frame_cross_entropy(outputs, batch.targets, batch.mask)

    def metric_totals(self, outputs: torch.Tensor, batch: Batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        wrong, count = class_errors(outputs, batch.targets, batch.mask)
        ce = frame_cross_entropy(outputs.detach().double(), batch.targets, batch.mask)
        return {"error": (wrong, count), "loss": (ce.sum(dim=(-2, -1)), count)}


class RegressionTask(SequencesTask):
    """``sequence_regression`` and ``step_regression``: squared error summed over the D outputs;
    ``mse`` per value. Worst (a diverged trial): the larger of 1 and the mse of predicting 0."""

    metric_names: ClassVar[tuple[str, ...]] = ("mse",)
    primary_metric: ClassVar[str] = "mse"
    lower_is_better: ClassVar[bool] = True

    def __init__(self, splits, *, input_size: int, target: str, normalization=None):
        width = int(splits["train"][0].targets.shape[-1])
        super().__init__(splits, input_size=input_size, output_size=width, target=target, normalization=normalization)
        zero = max(
            float(torch.cat([s.targets[s.mask] for s in seqs]).double().pow(2).mean()) for seqs in splits.values()
        )
        self.worst_value = max(1.0, zero)

    def _errors(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """(..., T, B, D) prediction errors, 0 on unscored steps."""
        return masked(outputs - batch.targets, batch.mask.unsqueeze(-1))

    def step_losses(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self._errors(outputs, batch).pow(2).sum(dim=-1)

    def metric_totals(self, outputs: torch.Tensor, batch: Batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        squared = self._errors(outputs.detach().double(), batch).pow(2).sum(dim=-1)  # (..., T, B)
        return {"mse": (squared.sum(dim=(-2, -1)), scored_count(batch.mask, squared) * self.output_size)}


class NextStepBinaryTask(SequencesTask, JSBTask):
    """``next_step_binary``: JSB's loss and ``nll`` metric over F binary outputs (worst F ln 2)."""

    def __init__(self, splits, *, input_size: int, normalization=None):
        super().__init__(
            splits, input_size=input_size, output_size=input_size, target="next_step_binary", normalization=normalization
        )
        self.worst_value = input_size * math.log(2.0)
