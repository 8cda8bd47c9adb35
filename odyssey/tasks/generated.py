"""The shared base of the generated tasks (adding, temporal order, Reber): split sizes, a seed, build().

Each split is drawn from its own stream (:func:`~odyssey.tasks.base.split_rng`), so the test set
does not change when ``num_train`` does; a subclass says how to draw one example
(:meth:`GeneratedTaskConfig.sample`) and which :class:`Task` holds the splits
(:meth:`GeneratedTaskConfig.make_task`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from odyssey.tasks import TaskConfig
from odyssey.tasks.base import SPLITS, Sequence, Task, check_int, split_rng

__all__ = ["GeneratedTaskConfig"]


@dataclass(frozen=True)
class GeneratedTaskConfig(TaskConfig):
    """Split sizes and seed of a generated task.

    Attributes:
        num_train, num_valid, num_test: number of sequences per split (>= 1).
        seed: seed of the generator (>= 0; each split has its own stream).
    """

    num_train: int = 1000
    num_valid: int = 200
    num_test: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        """Check the split sizes and the seed; subclasses check their own fields, then call this."""
        for key in ("num_train", "num_valid", "num_test"):
            check_int(key, getattr(self, key), low=1)
        check_int("seed", self.seed, low=0)

    def sample(self, rng: np.random.Generator) -> Sequence:  # pragma: no cover - abstract
        raise NotImplementedError

    def make_task(self, splits: dict[str, list[Sequence]]) -> Task:  # pragma: no cover - abstract
        raise NotImplementedError

    def build(self) -> Task:
        sizes = {"train": self.num_train, "valid": self.num_valid, "test": self.num_test}
        rngs = {s: split_rng(self.seed, s) for s in SPLITS}
        return self.make_task({s: [self.sample(rngs[s]) for _ in range(sizes[s])] for s in SPLITS})
