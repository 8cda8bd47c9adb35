"""The temporal order problems (Hochreiter & Schmidhuber 1997, experiments 6a and 6b).

Symbols, one-hot in this order: ``a b c d B E X Y`` (input size 8). A sequence starts with ``E``,
ends with the trigger ``B``, and holds random distractors ``a``-``d`` everywhere else except at
``num_relevant`` positions, each ``X`` or ``Y``. The class, read out at the last step, is the
X/Y pattern as a binary number with X = 0, Y = 1 and the first relevant symbol as the most
significant bit (6a: XX=0, XY=1, YX=2, YY=3, the paper's Q R S U; 6b: XXX=0 ... YYY=7).

Lengths are uniform integers in ``[T, T + 10]`` (1997: 100-110 for T = 100). Positions are
0-based (``E`` is step 0) and scale with T: relevant position j is uniform in
``[lo_j * T // 100, hi_j * T // 100]`` with the 1997 windows at T = 100 as percentages,
6a: [10, 20], [50, 60]; 6b: [10, 20], [33, 43], [66, 76]. For T = 100 these are the paper's.

``temporal_order`` is 6a (``num_relevant=2``), ``temporal_order_3`` is 6b (``num_relevant=3``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from odyssey.errors import ConfigError
from odyssey.tasks import register
from odyssey.tasks.base import Batch, Sequence, Task, check_choice, check_int, frame_cross_entropy, scored_count
from odyssey.tasks.generated import GeneratedTaskConfig

__all__ = ["SYMBOLS", "WINDOWS", "TemporalOrderConfig", "TemporalOrderTask", "relevant_windows"]

SYMBOLS = ("a", "b", "c", "d", "B", "E", "X", "Y")
_INDEX = {s: i for i, s in enumerate(SYMBOLS)}
# Windows of the relevant positions in percent of T (the 1997 positions for T = 100).
WINDOWS: dict[int, tuple[tuple[int, int], ...]] = {
    2: ((10, 20), (50, 60)),
    3: ((10, 20), (33, 43), (66, 76)),
}
_NAMES = {2: "temporal_order", 3: "temporal_order_3"}


def relevant_windows(length: int, num_relevant: int) -> list[tuple[int, int]]:
    """The inclusive 0-based position window of each relevant symbol for minimal length T."""
    return [(lo * length // 100, hi * length // 100) for lo, hi in WINDOWS[num_relevant]]


@register(*_NAMES.values())
@dataclass(frozen=True)
class TemporalOrderConfig(GeneratedTaskConfig):
    """Config of temporal order 6a (``temporal_order``) and 6b (``temporal_order_3``).

    Attributes:
        length: minimal sequence length T (>= 10); lengths are uniform in [T, T + 10].
        num_relevant: 2 (6a) or 3 (6b); ``None`` takes it from ``name``, a value must agree.
        num_train, num_valid, num_test: number of sequences per split.
        seed: seed of the generator (each split has its own stream, see ``split_rng``).
    """

    name: str = "temporal_order"
    length: int = 100
    num_relevant: int | None = None

    def __post_init__(self) -> None:
        check_choice("name", self.name, tuple(_NAMES.values()))
        expected = next(k for k, v in _NAMES.items() if v == self.name)
        if self.num_relevant is None:
            object.__setattr__(self, "num_relevant", expected)
        elif self.num_relevant != expected or isinstance(self.num_relevant, bool):
            raise ConfigError(
                f"task.num_relevant={self.num_relevant!r} is invalid for task {self.name!r}: expected "
                f"{expected} (use task=temporal_order for 2 relevant symbols, task=temporal_order_3 for 3)"
            )
        check_int("length", self.length, low=10)
        super().__post_init__()

    def make_task(self, splits: dict[str, list[Sequence]]) -> TemporalOrderTask:
        return TemporalOrderTask(splits, num_relevant=self.num_relevant, name=self.name)

    def sample(self, rng: np.random.Generator) -> Sequence:
        """One sequence: inputs (L, 8) one-hot, targets (L,) int64 class, mask (L,) last step only."""
        n = int(rng.integers(self.length, self.length + 10, endpoint=True))
        symbols = rng.integers(0, 4, size=n)  # distractors a-d
        symbols[0], symbols[-1] = _INDEX["E"], _INDEX["B"]
        label = 0
        for lo, hi in relevant_windows(self.length, self.num_relevant):
            is_y = int(rng.integers(0, 2))
            symbols[int(rng.integers(lo, hi, endpoint=True))] = _INDEX["Y"] if is_y else _INDEX["X"]
            label = 2 * label + is_y
        inputs = F.one_hot(torch.from_numpy(symbols), len(SYMBOLS)).float()  # (L, 8)
        targets = torch.zeros(n, dtype=torch.int64)
        targets[-1] = label
        mask = torch.zeros(n, dtype=torch.bool)
        mask[-1] = True
        return Sequence(inputs, targets, mask)


class TemporalOrderTask(Task):
    """Classification at the last step: cross-entropy loss, metric ``accuracy`` (worst 0.0)."""

    input_size = len(SYMBOLS)
    metric_names: ClassVar[tuple[str, ...]] = ("accuracy",)
    primary_metric: ClassVar[str] = "accuracy"
    lower_is_better: ClassVar[bool] = False
    worst_value: ClassVar[float] = 0.0

    def __init__(self, splits: dict[str, list[Sequence]], *, num_relevant: int, name: str):
        self.name = name
        self.num_relevant = num_relevant
        self.output_size = 2**num_relevant
        super().__init__(splits)

    def step_losses(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return frame_cross_entropy(outputs, batch.targets, batch.mask)  # at the scored (last) step

    def metric_totals(self, outputs: torch.Tensor, batch: Batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        correct = (outputs.detach().argmax(dim=-1) == batch.targets) & batch.mask  # (..., T, B)
        return {"accuracy": (correct.sum(dim=(-2, -1)), scored_count(batch.mask, correct))}
