"""Search spaces as YAML data, translated to Ray Tune by one pure function.

A search space is a mapping ``params: {<section>.<key>: {dist: <name>, ...}}``, e.g. the paper's
(``conf/search_space/odyssey.yaml``)::

    params:
      model.hidden_size: {dist: loguniform_int, low: 20, high: 200}
      train.lr:          {dist: loguniform, low: 1.0e-6, high: 1.0e-2}
      train.momentum:    {dist: one_minus_loguniform, low: 0.01, high: 1.0}
      train.input_noise: {dist: uniform, low: 0.0, high: 1.0}

Distributions (bounds are inclusive for the integer ones):

==========================  ====================================  ==========================
``dist``                    value                                 Ray Tune domain
==========================  ====================================  ==========================
``uniform``                 U[low, high]                          ``tune.uniform``
``loguniform``              exp(U[log low, log high])             ``tune.loguniform``
``int``                     integer in [low, high]                ``tune.randint(low, high+1)``
``loguniform_int``          integer, log-uniform in [low, high]   ``tune.lograndint(low, high+1)``
``one_minus_loguniform``    1 - loguniform(low, high)             ``tune.loguniform`` on ``1-<key>``
``choice``                  one of ``values``                     ``tune.choice``
==========================  ====================================  ==========================

``one_minus_loguniform`` is the paper's momentum: Ray Tune (and Optuna's TPE) sample the
log-uniform quantity itself under the name ``1-<key>``, and :meth:`SearchSpace.decode` turns a
sampled Tune config back into config values. Keys are the fields of ``model`` and ``train``.

Example:
    >>> space = translate({"params": {"train.lr": {"dist": "loguniform", "low": 1e-6, "high": 1e-2}}})
    >>> sorted(space.tune_space())
    ['train.lr']
    >>> space.decode({"train.lr": 1e-3})
    {'train': {'lr': 0.001}}
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from odyssey.errors import ConfigError

__all__ = ["DISTRIBUTIONS", "Param", "SearchSpace", "searchable_keys", "translate"]


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: config path ``section.key``, distribution and its arguments."""

    path: str
    dist: str
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] | None = None

    @property
    def tune_key(self) -> str:
        """The name Ray Tune samples: the path itself, or ``1-<path>`` for one_minus_* dists."""
        return f"1-{self.path}" if self.dist.startswith("one_minus_") else self.path

    def decode(self, sampled: Any) -> Any:
        """The config value for a value sampled by Ray Tune."""
        if self.dist.startswith("one_minus_"):
            return 1.0 - float(sampled)
        if self.dist in ("int", "loguniform_int"):
            return int(sampled)
        if self.dist in ("uniform", "loguniform"):
            return float(sampled)
        return sampled

    def sample(self, rng) -> Any:
        """One draw as Ray Tune would sample it (its tune key's value), from a numpy Generator:
        what ``odyssey bench study`` uses where Ray is not installed."""
        low, high = self.low, self.high
        if self.dist == "uniform":
            return float(rng.uniform(low, high))
        if self.dist in ("loguniform", "one_minus_loguniform"):
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        if self.dist == "int":
            return int(rng.integers(int(low), int(high) + 1))
        if self.dist == "loguniform_int":  # as tune.lograndint: floor of a log-uniform draw in [low, high + 1)
            return min(int(math.exp(rng.uniform(math.log(low), math.log(high + 1)))), int(high))
        return self.values[int(rng.integers(len(self.values)))]

    @property
    def coordinate(self) -> str:
        """The parameter's name in analysis units (the paper's axes): ``log10_<key>`` on a log
        scale, ``log10_one_minus_<key>`` for one_minus_* dists, else ``<key>``; e.g. ``log10_lr``."""
        key = self.path.split(".", 1)[1]
        if self.dist.startswith("one_minus_"):
            return f"log10_one_minus_{key}"
        return f"log10_{key}" if self.dist.startswith("loguniform") else key

    def coordinate_value(self, value: Any) -> float:
        """A config value in analysis units (see ``coordinate``); a choice is its value when
        numeric (booleans as 0/1), else its index among ``values``."""
        if self.dist.startswith("one_minus_"):
            return math.log10(1.0 - float(value)) if value < 1 else -math.inf
        if self.dist.startswith("loguniform"):
            return math.log10(float(value)) if value > 0 else -math.inf
        if self.dist == "choice" and not isinstance(value, (int, float)) or value is None:
            return float(list(self.values).index(value))
        return float(value)

    def domain(self):
        """The Ray Tune domain (imports Ray lazily: the rest of this module is pure)."""
        from ray import tune

        return _BUILDERS[self.dist][1](tune, self)


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space. ``tune_space()`` for Ray Tune, ``decode()`` back to config values."""

    params: tuple[Param, ...]

    def tune_keys(self) -> tuple[str, ...]:
        """The names Ray Tune samples (without importing Ray)."""
        return tuple(p.tune_key for p in self.params)

    def tune_space(self) -> dict[str, Any]:
        """The flat ``param_space`` for ``ray.tune.Tuner``: tune key -> domain."""
        return {p.tune_key: p.domain() for p in self.params}

    def decode(self, sampled: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Sections of config overrides, e.g. ``{"train": {"lr": 1e-3}}``, for ``TrialConfig.replace``."""
        out: dict[str, dict[str, Any]] = {}
        for p in self.params:
            section, key = p.path.split(".", 1)
            out.setdefault(section, {})[key] = p.decode(sampled[p.tune_key])
        return out

    def sample(self, rng) -> dict[str, Any]:
        """One random-search draw of every parameter, keyed like a Tune config (see ``Param.sample``)."""
        return {p.tune_key: p.sample(rng) for p in self.params}

    def to_mapping(self) -> dict[str, Any]:
        """The space as the YAML mapping it came from (``translate(space.to_mapping()) == space``):
        what a search's parent run records (``search_space.json``)."""
        params = {}
        for p in self.params:
            entry: dict[str, Any] = {"dist": p.dist}
            if p.dist == "choice":
                entry["values"] = list(p.values)
            else:
                entry["low"], entry["high"] = p.low, p.high
            params[p.path] = entry
        return {"params": params}

    def describe(self) -> str:
        """One readable line, e.g. ``train.lr ~ loguniform[1e-06, 0.01]; train.clip_norm ~ choice{None, 1}``."""
        parts = []
        for p in self.params:
            where = "{" + ", ".join(map(str, p.values)) + "}" if p.dist == "choice" else f"[{p.low:g}, {p.high:g}]"
            parts.append(f"{p.path} ~ {p.dist}{where}")
        return "; ".join(parts)

    def coordinates(self, cfg) -> dict[str, float]:
        """The searched values of a trial config ``cfg`` in analysis units, by coordinate name."""
        out = {}
        for p in self.params:
            section, key = p.path.split(".", 1)
            out[p.coordinate] = p.coordinate_value(getattr(getattr(cfg, section), key))
        return out

    def flat(self, sampled: Mapping[str, Any]) -> dict[str, Any]:
        """Decoded values keyed by path, e.g. ``{"train.momentum": 0.9}`` (for display)."""
        return {p.path: p.decode(sampled[p.tune_key]) for p in self.params}

    def extremes(self) -> list[dict[str, dict[str, Any]]]:
        """Config overrides at each parameter's bounds (used to validate ranges against the config)."""
        probes = []
        for p in self.params:
            section, key = p.path.split(".", 1)
            ends = list(p.values) if p.dist == "choice" else [p.low, p.high]
            for end in ends:
                probes.append({section: {key: p.decode(end) if p.dist != "choice" else end}})
        return probes


# --------------------------------------------------------------------------------------------
# Distributions: name -> (validator, builder). A validator returns a problem or None.


def _bounds(p: Param, *, positive: bool = False, integer: bool = False) -> str | None:
    if p.low is None or p.high is None:
        return "needs both 'low' and 'high'"
    for name, v in (("low", p.low), ("high", p.high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"'{name}' must be a finite number, got {v!r}"
        if integer and (not isinstance(v, int) and not float(v).is_integer()):
            return f"'{name}' must be an integer, got {v!r}"
    if p.low > p.high:
        return f"low={p.low} > high={p.high}"
    if positive and p.low <= 0:
        return f"a log scale needs 0 < low <= high, got low={p.low}"
    return None


def _choice(p: Param) -> str | None:
    if not p.values:
        return "needs a non-empty list 'values'"
    return None


_BUILDERS: dict[str, tuple[Callable[[Param], str | None], Callable[[Any, Param], Any]]] = {
    "uniform": (lambda p: _bounds(p), lambda t, p: t.uniform(float(p.low), float(p.high))),
    "loguniform": (lambda p: _bounds(p, positive=True), lambda t, p: t.loguniform(float(p.low), float(p.high))),
    "int": (lambda p: _bounds(p, integer=True), lambda t, p: t.randint(int(p.low), int(p.high) + 1)),
    "loguniform_int": (
        lambda p: _bounds(p, positive=True, integer=True),
        lambda t, p: t.lograndint(int(p.low), int(p.high) + 1),
    ),
    "one_minus_loguniform": (
        lambda p: _bounds(p, positive=True),
        lambda t, p: t.loguniform(float(p.low), float(p.high)),
    ),
    "choice": (_choice, lambda t, p: t.choice(list(p.values))),
}
DISTRIBUTIONS: tuple[str, ...] = tuple(_BUILDERS)

_INTEGER_DISTS = ("int", "loguniform_int")
_ARGS = {"dist", "low", "high", "values"}


def searchable_keys() -> dict[str, type]:
    """Every ``section.key`` a space may search, with its Python type (from the typed configs)."""
    from odyssey.config import ModelConfig, TrainConfig

    keys: dict[str, type] = {}
    for section, schema in (("model", ModelConfig), ("train", TrainConfig)):
        hints = typing.get_type_hints(schema)
        for f in dataclasses.fields(schema):
            keys[f"{section}.{f.name}"] = hints[f.name]
    return keys


def translate(space: Mapping[str, Any], *, name: str = "search_space") -> SearchSpace:
    """Validate a search space mapping (``{"params": {...}}``) and return a :class:`SearchSpace`.

    Raises:
        ConfigError: naming the parameter, the problem and the valid choices, for an unknown
            key path or distribution, missing or malformed bounds, ``low > high``, a log scale
            over a non-positive range, or a real-valued distribution for an integer key.
    """
    if not isinstance(space, Mapping) or set(space) - {"params"}:
        extra = sorted(set(space) - {"params"}) if isinstance(space, Mapping) else space
        raise ConfigError(f"{name}: expected a mapping with one key 'params', got {extra!r}")
    raw = space.get("params") or {}
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{name}.params: expected a non-empty mapping of '<section>.<key>: {{dist: ...}}'")
    valid_keys = searchable_keys()
    params = []
    for path, spec in raw.items():
        where = f"{name}.params.{path}"
        if path not in valid_keys:
            raise ConfigError(f"{where}: unknown key path {path!r}; valid keys: {sorted(valid_keys)}")
        if not isinstance(spec, Mapping) or "dist" not in spec:
            raise ConfigError(f"{where}: expected a mapping with 'dist' (one of {list(DISTRIBUTIONS)}), got {spec!r}")
        unknown = sorted(set(spec) - _ARGS)
        if unknown:
            raise ConfigError(f"{where}: unknown argument(s) {unknown}; valid arguments: {sorted(_ARGS)}")
        dist = spec["dist"]
        if dist not in _BUILDERS:
            raise ConfigError(f"{where}: unknown distribution {dist!r}; valid distributions: {list(DISTRIBUTIONS)}")
        values = spec.get("values")
        param = Param(
            path=str(path),
            dist=dist,
            low=spec.get("low"),
            high=spec.get("high"),
            values=tuple(values) if isinstance(values, (list, tuple)) else values,
        )
        problem = _BUILDERS[dist][0](param)
        if problem:
            raise ConfigError(f"{where}: {dist} {problem}")
        expected = valid_keys[path]
        if expected is int and dist not in _INTEGER_DISTS and dist != "choice":
            raise ConfigError(
                f"{where}: {path} is an integer; use one of {list(_INTEGER_DISTS) + ['choice']}, not {dist!r}"
            )
        params.append(param)
    return SearchSpace(params=tuple(params))
