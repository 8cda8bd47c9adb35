"""Benchmark tasks. ``build_task(config)`` returns a :class:`Task` with its splits.

Each task has a frozen config dataclass (a subclass of :class:`TaskConfig`) whose ``build()``
makes the task; ``TASKS`` maps the config ``name`` to that class.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from odyssey.tasks.base import Batch, Sequence, Task, collate

__all__ = ["TASKS", "Batch", "Sequence", "Task", "TaskConfig", "build_task", "collate", "task_config_from_mapping"]


@dataclass(frozen=True)
class TaskConfig:
    """Base of every task config; ``name`` selects the task."""

    name: str
    # Keys that say where the data is or how loading looks, not what a trial computes or how it
    # is scored: a resumed or extended study may change them (everything else is its record).
    LOCATION_KEYS: ClassVar[tuple[str, ...]] = ("data_dir", "cache_dir", "progress")

    def identity(self) -> dict[str, Any]:
        """The keys that define the task's data and scoring (all but :attr:`LOCATION_KEYS`): what a
        study records, and what two searches must share to be compared."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.LOCATION_KEYS}

    def build(self) -> Task:  # pragma: no cover - abstract
        raise NotImplementedError


TASKS: dict[str, type[TaskConfig]] = {}


def register(*names: str):
    """Class decorator: register a TaskConfig subclass under one or more task names."""

    def deco(cls: type[TaskConfig]) -> type[TaskConfig]:
        for n in names:
            TASKS[n] = cls
        return cls

    return deco


def task_config_from_mapping(mapping: dict[str, Any]) -> TaskConfig:
    """The typed config of ``mapping['name']``; unknown names/keys and bad values raise ValueError."""
    from odyssey.errors import ConfigError

    mapping = dict(mapping)
    name = mapping.get("name")
    if name not in TASKS:
        from odyssey.tasks.plugins import load_plugins

        load_plugins(name)  # a task of another package (entry point group odyssey.tasks)
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    cls = TASKS[name]
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(mapping) - valid)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} for task {name!r}; valid keys: {sorted(valid)}")
    return cls(**mapping)


def build_task(config: TaskConfig) -> Task:
    return config.build()


# Concrete tasks register themselves on import.
from odyssey.tasks import adding as _adding  # noqa: E402,F401
from odyssey.tasks import iam_ondb as _iam_ondb  # noqa: E402,F401
from odyssey.tasks import jsb as _jsb  # noqa: E402,F401
from odyssey.tasks import reber as _reber  # noqa: E402,F401
from odyssey.tasks import temporal_order as _temporal_order  # noqa: E402,F401
from odyssey.tasks import timit as _timit  # noqa: E402,F401
from odyssey.tasks import sequences as _sequences  # noqa: E402,F401
