"""Tasks from other packages: the entry point group ``odyssey.tasks``.

A package registers a task without forking odyssey by naming a :class:`~odyssey.tasks.TaskConfig`
subclass (a frozen dataclass whose ``build()`` returns a :class:`~odyssey.tasks.base.Task`) in its
``pyproject.toml``::

    [project.entry-points."odyssey.tasks"]
    my_task = "my_package.task:MyTaskConfig"

The entry point's name is the task's name (``task=my_task``, or ``name: my_task`` in a task YAML).
The plugins are looked up when a config is composed (:func:`plugin_task_nodes`: their defaults
become the ``task/<name>`` option, so no YAML file is needed; a file of that name in a config
folder wins) and when a task name is not a built-in one (:func:`load_plugins`). A built-in name
cannot be taken over.
"""

from __future__ import annotations

import dataclasses
import logging
from importlib.metadata import entry_points
from typing import Any

from odyssey.errors import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "load_plugins", "plugin_task_nodes"]

ENTRY_POINT_GROUP = "odyssey.tasks"
logger = logging.getLogger(__name__)


def load_plugins(name: str | None = None) -> dict[str, type]:
    """Register installed plugin tasks in :data:`odyssey.tasks.TASKS`; return those registered.

    With ``name``, only that entry point is loaded, and a failure is an error; without it, every
    entry point is loaded and one that fails is skipped with a warning (it does not stop commands
    that do not use it; naming it gives the error).

    Raises:
        ConfigError: the named plugin cannot be imported, or does not name a TaskConfig dataclass.
    """
    from odyssey.tasks import TASKS, TaskConfig

    found: dict[str, type] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if (name is not None and ep.name != name) or getattr(TASKS.get(ep.name), "__module__", "").startswith("odyssey."):
            continue  # not asked for, or a built-in name: the package's own task stays
        where = f"task plugin {ep.name!r} ({ep.value}, entry point group {ENTRY_POINT_GROUP!r})"
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, TaskConfig) and dataclasses.is_dataclass(cls)):
                raise ConfigError(f"{where} is {cls!r}; expected a TaskConfig dataclass subclass")
        except Exception as exc:  # noqa: BLE001 - any import failure of a plugin is that plugin's
            error = exc if isinstance(exc, ConfigError) else ConfigError(f"{where} cannot be loaded: {type(exc).__name__}: {exc}")
            if name is not None:
                raise error from None
            logger.warning("%s", error)
            continue
        TASKS[ep.name] = cls
        found[ep.name] = cls
    return found


def plugin_task_nodes() -> dict[str, dict[str, Any]]:
    """Each plugin task's defaults (``name`` set to the entry point's), the node of ``task=<name>``.

    A plugin whose config has a field without a default gets no node (it needs a YAML file).
    """
    nodes = {}
    for name, cls in load_plugins().items():
        try:
            config = cls(name=name)
        except Exception:  # noqa: BLE001 - required fields or checks: the user writes the YAML
            continue
        nodes[name] = dataclasses.asdict(config)
    return nodes
