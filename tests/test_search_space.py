"""The YAML -> Ray Tune translation of search spaces, table-tested."""

from __future__ import annotations

import math

import numpy as np
import pytest

from odyssey.errors import ConfigError
from odyssey.sweep.search_space import DISTRIBUTIONS, translate

ODYSSEY = {
    "params": {
        "model.hidden_size": {"dist": "loguniform_int", "low": 20, "high": 200},
        "train.lr": {"dist": "loguniform", "low": 1e-6, "high": 1e-2},
        "train.momentum": {"dist": "one_minus_loguniform", "low": 0.01, "high": 1.0},
        "train.input_noise": {"dist": "uniform", "low": 0, "high": 1},
    }
}


def _sample(space, n: int, seed: int = 0) -> list[dict]:
    """Draw n configs with Ray Tune's own samplers (what random search does)."""
    rng = np.random.default_rng(seed)
    domains = space.tune_space()
    return [{k: d.sample(random_state=rng) for k, d in domains.items()} for _ in range(n)]


# (id, param spec, tune key, Ray domain class, sampler class, values must lie in [lo, hi], type)
VALID = [
    ("uniform", {"dist": "uniform", "low": 0, "high": 1}, "train.input_noise", "Float", "_Uniform", (0, 1), float),
    ("loguniform", {"dist": "loguniform", "low": 1e-6, "high": 1e-2}, "train.lr", "Float", "_LogUniform", (1e-6, 1e-2), float),
    ("int", {"dist": "int", "low": 1, "high": 3}, "model.num_layers", "Integer", "_Uniform", (1, 3), int),
    ("loguniform_int", {"dist": "loguniform_int", "low": 20, "high": 200}, "model.hidden_size", "Integer", "_LogUniform", (20, 200), int),
    ("one_minus_loguniform", {"dist": "one_minus_loguniform", "low": 0.01, "high": 1.0}, "train.momentum", "Float", "_LogUniform", (0.0, 0.99), float),
    ("choice", {"dist": "choice", "values": [1, 16, 32]}, "train.batch_size", "Categorical", "_Uniform", (1, 32), int),
    ("choice-null", {"dist": "choice", "values": [None, 1.0, 5.0]}, "train.clip_norm", "Categorical", "_Uniform", None, None),
]


@pytest.mark.parametrize("case", VALID, ids=[c[0] for c in VALID])
def test_translate_valid(case):
    _, spec, key, domain_cls, sampler_cls, bounds, typ = case
    space = translate({"params": {key: spec}})
    (tune_key, domain), = space.tune_space().items()
    assert tune_key == (f"1-{key}" if spec["dist"].startswith("one_minus") else key)
    assert type(domain).__name__ == domain_cls
    assert type(domain.get_sampler()).__name__ == sampler_cls
    section, name = key.split(".")
    values = [space.decode(s)[section][name] for s in _sample(space, 300)]
    if bounds is not None:
        assert min(values) >= bounds[0] and max(values) <= bounds[1]
    if typ is not None:
        assert all(type(v) is typ for v in values)
    else:
        assert set(values) == {None, 1.0, 5.0}


def test_integer_bounds_are_inclusive():
    space = translate({"params": {"model.num_layers": {"dist": "int", "low": 1, "high": 2}}})
    assert {s["model.num_layers"] for s in _sample(space, 200)} == {1, 2}


def test_odyssey_space_matches_the_paper():
    """Hidden size log-uniform in [20, 200] (median ~ sqrt(20*200) = 63), momentum = 1 - loguniform[0.01, 1]."""
    space = translate(ODYSSEY)
    assert sorted(space.tune_space()) == ["1-train.momentum", "model.hidden_size", "train.input_noise", "train.lr"]
    draws = [space.flat(s) for s in _sample(space, 2000, seed=1)]
    hidden = np.array([d["model.hidden_size"] for d in draws])
    assert hidden.min() >= 20 and hidden.max() <= 200
    # log-uniform: the median sits near the geometric mean, far below the arithmetic one (110);
    # with n=2000 the sample median's spread is a few units, so 50..80 is a wide margin.
    assert 50 <= np.median(hidden) <= 80
    momentum = np.array([d["train.momentum"] for d in draws])
    assert momentum.min() >= 0.0 and momentum.max() <= 0.99
    # P(1 - m <= 0.1) = log(0.1/0.01)/log(1/0.01) = 0.5: half the momenta are >= 0.9.
    assert abs(np.mean(momentum >= 0.9) - 0.5) < 0.05
    lr = np.array([d["train.lr"] for d in draws])
    assert abs(np.median(np.log10(lr)) - (-4)) < 0.2  # log-uniform over 1e-6..1e-2: median 1e-4


def test_decode_gives_sections_for_trial_config_replace():
    space = translate(ODYSSEY)
    sampled = {"model.hidden_size": 50, "train.lr": 1e-3, "1-train.momentum": 0.1, "train.input_noise": 0.25}
    decoded = space.decode(sampled)
    assert decoded["model"] == {"hidden_size": 50}
    assert decoded["train"]["lr"] == 1e-3 and decoded["train"]["input_noise"] == 0.25
    assert math.isclose(decoded["train"]["momentum"], 0.9)


def test_optuna_converts_every_distribution():
    """TPE (Ray's OptunaSearch) must accept what random search accepts."""
    from ray.tune.search.optuna import OptunaSearch

    params = {c[2]: c[1] for c in VALID if c[0] != "choice-null"}
    space = translate({"params": params})
    converted = OptunaSearch.convert_search_space(space.tune_space())
    assert set(converted) == set(space.tune_space())
    assert converted["model.hidden_size"].low == 20 and converted["model.hidden_size"].high == 200
    assert converted["model.hidden_size"].log


# (id, space, words the message must contain)
INVALID = [
    ("low>high", {"train.lr": {"dist": "uniform", "low": 1, "high": 0}}, ["train.lr", "low=1 > high=0"]),
    ("log-nonpositive", {"train.lr": {"dist": "loguniform", "low": 0, "high": 1}}, ["train.lr", "log scale", "0 < low"]),
    ("log-negative", {"train.momentum": {"dist": "one_minus_loguniform", "low": -1, "high": 1}}, ["train.momentum", "log scale"]),
    ("unknown-dist", {"train.lr": {"dist": "gaussian", "low": 0, "high": 1}}, ["train.lr", "'gaussian'", *DISTRIBUTIONS]),
    ("unknown-key", {"train.learning_rate": {"dist": "uniform", "low": 0, "high": 1}}, ["train.learning_rate", "train.lr", "model.hidden_size"]),
    ("missing-bound", {"train.lr": {"dist": "uniform", "low": 0}}, ["train.lr", "'low' and 'high'"]),
    ("bad-bound", {"train.lr": {"dist": "uniform", "low": "a", "high": 1}}, ["train.lr", "finite number"]),
    ("no-dist", {"train.lr": {"low": 0, "high": 1}}, ["train.lr", "'dist'", "loguniform"]),
    ("unknown-arg", {"train.lr": {"dist": "uniform", "low": 0, "high": 1, "log": True}}, ["train.lr", "'log'", "valid arguments"]),
    ("float-for-int", {"model.hidden_size": {"dist": "loguniform", "low": 20, "high": 200}}, ["model.hidden_size", "integer", "loguniform_int"]),
    ("int-noninteger-bound", {"model.hidden_size": {"dist": "int", "low": 2.5, "high": 9}}, ["model.hidden_size", "integer"]),
    ("empty-choice", {"train.batch_size": {"dist": "choice", "values": []}}, ["train.batch_size", "values"]),
    ("empty", {}, ["params", "non-empty"]),
]


@pytest.mark.parametrize("case", INVALID, ids=[c[0] for c in INVALID])
def test_translate_invalid(case):
    _, params, words = case
    with pytest.raises(ConfigError) as info:
        translate({"params": params}, name="search_space")
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match="'params'"):
        translate({"parameters": {}})
