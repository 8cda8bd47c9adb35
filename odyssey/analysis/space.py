"""The hyperparameters an analysis covers, read from the search space each search recorded.

Each parent (search) run records the translated space it sampled from (``search_space.json``,
:func:`odyssey.sweep.mlflow_runs.recorded_search_space`). From it the analysis takes, per
(task, variant) search, every searched hyperparameter with

* its **analysis coordinate** (:attr:`Param.coordinate`): ``log10_<key>`` for the log-uniform
  distributions, ``log10_one_minus_<key>`` for ``one_minus_loguniform`` (the paper's momentum),
  ``<key>`` otherwise, e.g. ``log10_lr``, ``input_noise``, ``batch_size``, ``clip_norm``;
* its **kind**: ``continuous`` (uniform, loguniform, one_minus_loguniform), ``integer`` (int,
  loguniform_int), ``categorical`` (choice) or ``boolean`` (a choice of True/False);
* its **box** in analysis coordinates, which fANOVA integrates over: the recorded bounds
  (``[log10 low, log10 high]`` on a log scale; for one_minus_loguniform ``low``/``high`` bound
  ``1 - x``), an ``int`` half a step beyond each end (``[low - 0.5, high + 0.5]``, so that each of
  its integers carries the weight it is sampled with: over 1..3 the plain bounds would weigh 2
  twice as much as 1 and 3), a categorical or boolean ``[-0.5, k - 0.5]`` (see below);
* a readable **label** used by every table and figure (``log10(learning rate)``, ``clip norm``).

Categoricals enter the random-forest fANOVA **index-encoded**: a value's coordinate is its index
among the recorded ``values`` (``clip_norm`` ``[null, 1.0, 10.0]`` -> 0, 1, 2; booleans likewise by
their recorded order). The box ``[-0.5, k - 0.5]`` gives every category an interval of width 1,
and the forest's splits fall half-way between observed indices (0.5, 1.5, ...), so each
category gets exactly 1/k of the measure, the probability ``choice`` samples it with: the
decomposition is the uniform-over-categories one. The price: one split of an index can only
separate *contiguous* groups of the recorded order ({0} | {1, 2} or {0, 1} | {2}, not {0, 2} | {1});
a non-contiguous grouping needs two splits, which deep trees (the default, no depth limit) make,
so the fractions are unaffected but a forest needs a few more trials to find such a grouping.
One-hot encoding was not used: its columns are not independent dimensions of the box (most
points of the one-hot cube are no category at all), so the uniform measure over the box would
not be the sampling distribution. A category never observed among the fitted trials moves the
split to the midpoint of its neighbours, giving those neighbours its share.

Studies from before the record (no ``search_space.json``): the analysis falls back on the
paper's four hyperparameters (``model.hidden_size``, ``train.lr``, ``train.momentum``,
``train.input_noise``) with boxes from the observed min/max of the trials, and says so in the
report's messages.

The trials' values are read from their MLflow params under the config path (``train.lr``,
``train.clip_norm``: the flattened config every trial run logs, as text).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from odyssey.sweep.search_space import Param, SearchSpace

KIND_CONTINUOUS, KIND_INTEGER, KIND_CATEGORICAL, KIND_BOOLEAN = "continuous", "integer", "categorical", "boolean"

# Readable names of config keys that a plain "key with spaces" would say badly.
_READABLE = {"lr": "learning rate", "input_noise": "input noise std"}

# The fallback for studies without a recorded space: the paper's four (Greff et al. 2017, Sec. IV),
# boxes from the observed trials (no bounds here).
PAPER_PARAMS = (
    Param("model.hidden_size", "loguniform_int"),
    Param("train.lr", "loguniform"),
    Param("train.momentum", "one_minus_loguniform"),
    Param("train.input_noise", "uniform"),
)

_MISSING = ("", "none", "null")


def readable(key: str) -> str:
    """The readable name of a config key: ``lr`` -> ``learning rate``, ``clip_norm`` -> ``clip norm``."""
    return _READABLE.get(key, key.replace("_", " "))


def _same(text: str, value: Any) -> bool:
    """Whether a logged param string is the choice ``value`` (MLflow params are text)."""
    t = text.strip()
    if value is None:
        return t.lower() in _MISSING
    if isinstance(value, bool):
        return t.lower() == str(value).lower()
    if isinstance(value, (int, float)):
        try:
            return float(t) == float(value)
        except ValueError:
            return False
    return t == str(value)


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter of an analysis: a searched :class:`Param` seen in analysis units.

    Attributes:
        param: the searched parameter (``low``/``high`` None for the fallback: observed bounds).
    """

    param: Param

    @property
    def path(self) -> str:
        """The config path and MLflow param name, e.g. ``train.lr``."""
        return self.param.path

    @property
    def key(self) -> str:
        return self.param.path.split(".", 1)[1]

    @property
    def name(self) -> str:
        """The analysis coordinate (a trials column, a fANOVA key), e.g. ``log10_lr``."""
        return self.param.coordinate

    @property
    def kind(self) -> str:
        dist = self.param.dist
        if dist == "choice":
            values = self.param.values or ()
            return KIND_BOOLEAN if values and all(isinstance(v, bool) for v in values) else KIND_CATEGORICAL
        return KIND_INTEGER if dist in ("int", "loguniform_int") else KIND_CONTINUOUS

    @property
    def categorical(self) -> bool:
        return self.kind in (KIND_CATEGORICAL, KIND_BOOLEAN)

    @property
    def categories(self) -> tuple[str, ...]:
        """The recorded choices as text (``None``, ``1.0``...), in index order; () if not categorical."""
        return tuple(str(v) for v in self.param.values) if self.categorical else ()

    @property
    def label(self) -> str:
        """Readable axis name: ``log10(learning rate)``, ``log10(1 - momentum)``, ``clip norm``."""
        what = readable(self.key)
        if self.param.dist.startswith("one_minus_"):
            return f"log10(1 - {what})"
        return f"log10({what})" if self.param.dist.startswith("loguniform") else what

    @property
    def bounds(self) -> tuple[float, float] | None:
        """The searched box in analysis coordinates (see the module docstring); None without a
        record (the fallback), where the observed min/max is used."""
        p = self.param
        if self.categorical:
            return (-0.5, len(p.values) - 0.5)
        if p.low is None or p.high is None:
            return None
        if p.dist.startswith("one_minus_") or p.dist.startswith("loguniform"):
            return (math.log10(p.low), math.log10(p.high))
        if p.dist == "int":
            return (float(p.low) - 0.5, float(p.high) + 0.5)
        return (float(p.low), float(p.high))

    def value(self, text: str | None) -> Any:
        """A trial's config value from its logged param: a float for numeric kinds (nan when
        missing), the param text itself for a categorical (None when missing)."""
        if self.categorical:
            return text
        try:
            return float(text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return math.nan

    def coordinate(self, text: str | None) -> float:
        """A trial's value in analysis units, from its logged param; nan when missing, not one of
        the recorded choices, or off the scale (a log of 0)."""
        if text is None:
            return math.nan
        if self.categorical:
            for i, v in enumerate(self.param.values):
                if _same(text, v):
                    return float(i)
            return math.nan
        x = self.value(text)
        if not math.isfinite(x):
            return math.nan
        c = self.param.coordinate_value(x)
        return c if math.isfinite(c) else math.nan

    def describe(self) -> dict[str, Any]:
        """JSON-ready: name, path, label, kind, dist, box (low/high in analysis units), choices."""
        b = self.bounds
        return {
            "name": self.name,
            "path": self.path,
            "label": self.label,
            "kind": self.kind,
            "dist": self.param.dist,
            "low": b[0] if b else None,
            "high": b[1] if b else None,
            "choices": list(self.categories) if self.categorical else None,
        }


@dataclass(frozen=True)
class AnalysisSpace:
    """The hyperparameters of one search's analysis.

    Attributes:
        hyperparameters: in the recorded order.
        recorded: True when read from the search's ``search_space.json``; False for the fallback
            (the paper's four, observed bounds).
    """

    hyperparameters: tuple[Hyperparameter, ...]
    recorded: bool

    @classmethod
    def from_search_space(cls, space: SearchSpace) -> "AnalysisSpace":
        return cls(tuple(Hyperparameter(p) for p in space.params), True)

    @classmethod
    def fallback(cls) -> "AnalysisSpace":
        return cls(tuple(Hyperparameter(p) for p in PAPER_PARAMS), False)

    @property
    def names(self) -> list[str]:
        """The analysis coordinates (trials columns, fANOVA names), in order."""
        return [h.name for h in self.hyperparameters]

    @property
    def labels(self) -> dict[str, str]:
        return {h.name: h.label for h in self.hyperparameters}

    @property
    def categories(self) -> dict[str, tuple[str, ...]]:
        """Choices (as text) of the categorical and boolean hyperparameters, by name."""
        return {h.name: h.categories for h in self.hyperparameters if h.categorical}

    def __getitem__(self, name: str) -> Hyperparameter:
        for h in self.hyperparameters:
            if h.name == name:
                return h
        raise KeyError(name)

    def bounds(self, X: np.ndarray) -> np.ndarray:
        """(d, 2) the box fANOVA integrates over: each hyperparameter's recorded bounds, the
        observed min/max of ``X`` (columns in ``names`` order) where there are none."""
        X = np.asarray(X, dtype=float)
        out = np.empty((len(self.hyperparameters), 2))
        for j, h in enumerate(self.hyperparameters):
            b = h.bounds
            out[j] = b if b is not None else (X[:, j].min(), X[:, j].max())
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "source": "recorded" if self.recorded else "observed (no search_space.json: the paper's four)",
            "hyperparameters": [h.describe() for h in self.hyperparameters],
        }

    def same_as(self, other: "AnalysisSpace") -> bool:
        return self.hyperparameters == other.hyperparameters


def label_of(key: str | tuple[str, str], labels: Mapping[str, str]) -> str:
    """The readable name of a fANOVA key: a name, or a pair ``a x b``."""
    if isinstance(key, tuple):
        return " x ".join(labels.get(k, k) for k in key)
    return " x ".join(labels.get(k, k) for k in key.split(" x ")) if key not in labels else labels[key]


def union_columns(spaces: Sequence[AnalysisSpace]) -> tuple[list[str], list[str]]:
    """The config-path and coordinate columns of all spaces, each in order of first appearance."""
    paths, names = [], []
    for s in spaces:
        for h in s.hyperparameters:
            if h.path not in paths:
                paths.append(h.path)
            if h.name not in names:
                names.append(h.name)
    return paths, names
