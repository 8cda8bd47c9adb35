"""`odyssey analyze` reads the search space each search recorded (issue 11): every searched
hyperparameter, categoricals included, enters trials.csv, fANOVA (over the recorded box), the
figures and the DeepCAVE export; older studies fall back on the paper's four, and say so.
Small samples are flagged: few trials per hyperparameter, Welch tests on fewer than 3 trials.

The study is logged to the real test MLflow server (``mlflow_server`` in conftest.py) with the
sweep's schema (``_log_study`` of test_analysis.py): the parent runs record ``search_space.json``
with ``MlflowClient.log_dict``, the trials log their values under the config paths only."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from odyssey.analysis import fanova, welch_table, welch_test
from odyssey.sweep.search_space import translate
from test_analysis import _analyze, _log_study, _trials

CONF = "conf/search_space"
N_MINIBATCH = 72  # 12 per hyperparameter: above the few-trials threshold (10 per hyperparameter)


def _minibatch_space() -> dict:
    """``search_space=odyssey_minibatch`` as the sweep composes it (odyssey.yaml + the two
    choices) and records it: ``translate(...).to_mapping()``."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / CONF
    params = {}
    for name in ("odyssey", "odyssey_minibatch"):
        params.update(yaml.safe_load((root / f"{name}.yaml").read_text())["params"])
    return translate({"params": params}).to_mapping()


def _minibatch_trials(rng: np.random.Generator, n: int) -> list[dict]:
    """Random search in odyssey_minibatch's space, except that the learning rate only covers
    [1e-4, 1e-3] of the searched [1e-6, 1e-2] (so the observed box is narrower than the recorded
    one). test mse = 1 + 1.2 [batch_size = 32] + 1.5 [clip_norm = None] + (log10 lr + 3.5) + noise:
    variances 1.5^2 2/9 = 0.5, 1.2^2 2/9 = 0.32 and 1/12 = 0.08 over the observed lr range:
    clipping and batch size explain most of the variance. Over the searched box the forest's
    lr leaves at the ends stretch to -6 and -2 (measured: lr 0.10-0.12 of the variance there
    against 0.09-0.10 over the observed range, clip norm 0.02-0.03 lower)."""
    out = []
    for _ in range(n):
        t = {
            "hidden_size": int(round(10 ** rng.uniform(math.log10(20), math.log10(200)))),
            "lr": 10 ** rng.uniform(-4, -3),
            "momentum": 1 - 10 ** rng.uniform(-2, 0),
            "input_noise": rng.uniform(0, 1),
            "batch_size": [1, 8, 32][rng.integers(3)],
            "clip_norm": [None, 1.0, 10.0][rng.integers(3)],
            "status": "completed",
        }
        test = 1 + 1.2 * (t["batch_size"] == 32) + 1.5 * (t["clip_norm"] is None) + (math.log10(t["lr"]) + 3.5)
        t["test"] = test + rng.normal(0, 0.05)
        t["val"] = t["test"] + rng.normal(0, 0.05)
        out.append(t)
    return out


@pytest.fixture(scope="module")
def minibatch(mlflow_server, tmp_path_factory):
    """The analysis of a study with one recorded minibatch search (adding/vanilla) and one
    search without a record (adding/nfg, the paper's space: the fallback)."""
    rng = np.random.default_rng(11)
    groups = {("adding", "vanilla"): _minibatch_trials(rng, N_MINIBATCH), ("adding", "nfg"): _trials(rng, 12, 1.0)}
    _log_study(mlflow_server, "minibatch", groups, spaces={("adding", "vanilla"): _minibatch_space()})
    out = tmp_path_factory.mktemp("minibatch")
    assert _analyze(mlflow_server, "minibatch", out, "--no-log") == 0
    return out


def test_recorded_categoricals_enter_trials_and_fanova(minibatch):
    trials = pd.read_csv(minibatch / "trials.csv", keep_default_na=False, na_values=[""])
    for col in ("train.batch_size", "train.clip_norm", "batch_size", "clip_norm", "log10_lr", "train.lr"):
        assert col in trials.columns
    assert not {"hidden_size", "lr", "momentum"} & set(trials.columns)  # no bare-name copies
    van = trials[trials["variant"] == "vanilla"]
    assert set(van["train.clip_norm"].astype(str)) == {"None", "1.0", "10.0"}
    assert set(van["clip_norm"]) == {0.0, 1.0, 2.0} and set(van["batch_size"]) == {0.0, 1.0, 2.0}  # index encoding
    assert (van.loc[van["train.clip_norm"].astype(str) == "None", "clip_norm"] == 0).all()
    assert (van.loc[van["train.batch_size"].astype(int) == 32, "batch_size"] == 2).all()
    assert van["batch_size"].notna().all() and trials.loc[trials["variant"] == "nfg", "batch_size"].isna().all()

    fa = pd.read_csv(minibatch / "fanova.csv")
    mains = fa[(fa["variant"] == "vanilla") & ~fa["key"].str.contains(" x ") & (fa["key"] != "higher-order + unexplained")]
    frac = mains.set_index("key")["fraction"]
    assert len(frac) == 6
    assert frac["clip_norm"] > 0.35 and frac["batch_size"] > 0.2  # expected ~0.5 and ~0.3
    assert set(frac.sort_values().index[-2:]) == {"clip_norm", "batch_size"}
    assert mains.set_index("key").loc["clip_norm", "label"] == "clip norm"
    assert mains.set_index("key").loc["log10_lr", "label"] == "log10(learning rate)"
    assert (mains["std"] >= 0).all()


def test_fanova_integrates_over_the_recorded_box(minibatch):
    fa = pd.read_csv(minibatch / "fanova.csv")
    box = fa[fa["variant"] == "vanilla"].set_index("key")
    assert (box.loc["log10_lr", "low"], box.loc["log10_lr", "high"]) == (-6.0, -2.0)  # recorded, not [-4, -3]
    assert box.loc["log10_hidden_size", "low"] == pytest.approx(math.log10(20))
    assert (box.loc["log10_one_minus_momentum", "low"], box.loc["log10_one_minus_momentum", "high"]) == (-2.0, 0.0)
    assert (box.loc["clip_norm", "low"], box.loc["clip_norm", "high"]) == (-0.5, 2.5)
    summary = json.loads((minibatch / "summary.json").read_text())
    space = summary["spaces"]["adding/vanilla"]
    assert space["source"] == "recorded"
    kinds = {h["name"]: h["kind"] for h in space["hyperparameters"]}
    assert kinds["clip_norm"] == kinds["batch_size"] == "categorical" and kinds["log10_hidden_size"] == "integer"
    assert summary["spaces"]["adding/nfg"]["source"].startswith("observed")
    # The report's fit is reproduced from trials.csv with the recorded box, and the same fit
    # over the observed min/max (what the analysis did before) gives other fractions.
    trials = pd.read_csv(minibatch / "trials.csv")
    van = trials[trials["variant"] == "vanilla"]
    names = [h["name"] for h in space["hyperparameters"]]
    bounds = np.array([[h["low"], h["high"]] for h in space["hyperparameters"]])
    X, y = van[names].to_numpy(dtype=float), van["test"].to_numpy(dtype=float)
    recorded = fanova(X, y, names, bounds=bounds, n_trees=16, seed=0)
    observed = fanova(X, y, names, n_trees=16, seed=0)
    assert recorded["log10_lr"] == pytest.approx(box.loc["log10_lr", "fraction"], abs=1e-9)
    assert recorded["clip_norm"] == pytest.approx(box.loc["clip_norm", "fraction"], abs=1e-9)
    assert recorded["log10_lr"] > observed["log10_lr"]
    assert max(abs(recorded[k] - observed[k]) for k in recorded) > 0.01


@pytest.mark.filterwarnings("ignore:The field 'default' should be 'default_value'")
def test_deepcave_exports_categoricals_as_categorical(minibatch):
    from ConfigSpace import CategoricalHyperparameter, Configuration, ConfigurationSpace

    folder = minibatch / "deepcave" / "adding" / "vanilla"
    cs = ConfigurationSpace.from_json(folder / "configspace.json")
    assert set(cs) == {"hidden_size", "lr", "one_minus_momentum", "input_noise", "batch_size", "clip_norm"}
    assert isinstance(cs["batch_size"], CategoricalHyperparameter) and list(cs["batch_size"].choices) == [1, 8, 32]
    assert isinstance(cs["clip_norm"], CategoricalHyperparameter) and list(cs["clip_norm"].choices) == ["None", "1.0", "10.0"]
    assert (cs["lr"].lower, cs["lr"].upper) == pytest.approx((1e-6, 1e-2))  # the recorded box
    configs = json.loads((folder / "configs.json").read_text())
    assert len(configs) == N_MINIBATCH
    for values in configs.values():
        Configuration(cs, values=values)
    nfg = json.loads((minibatch / "deepcave" / "adding" / "nfg" / "configspace.json").read_text())
    assert [h["name"] for h in nfg["hyperparameters"]] == ["hidden_size", "lr", "one_minus_momentum", "input_noise"]


def test_report_names_the_fallback_and_uses_readable_names(minibatch):
    summary = json.loads((minibatch / "summary.json").read_text())
    fallback = [m for m in summary["messages"] if "no recorded search space" in m]
    assert len(fallback) == 1 and "adding/nfg" in fallback[0] and "adding/vanilla" not in fallback[0]
    assert "observed min/max" in fallback[0]
    assert any("few" in m and "adding, nfg" in m and "12 trials for 4 hyperparameters" in m for m in summary["messages"])
    assert not any("few" in m and "vanilla" in m for m in summary["messages"])  # 72 >= 60
    html = (minibatch / "report.html").read_text()
    assert "clip norm" in html and "log10(learning rate)" in html and "\u00b1" in html
    for kind in ("fanova", "marginals", "pairs"):
        assert (minibatch / "figures" / f"{kind}_adding_vanilla.png").stat().st_size > 1000


def test_marginal_figure_of_a_categorical_is_points_per_category(tmp_path, monkeypatch):
    from matplotlib.collections import PolyCollection

    from odyssey.analysis import figures

    rng = np.random.default_rng(0)
    X = np.c_[rng.uniform(0, 1, 200), rng.integers(0, 3, 200)]
    res = fanova(X, X[:, 0] + (X[:, 1] == 2), ["x", "clip_norm"], n_trees=8, bounds=np.array([[0, 1], [-0.5, 2.5]]))
    saved = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: saved.append(fig) or path)
    figures.marginal_curves(res, "t", tmp_path / "m.png", metric="mse", labels={"clip_norm": "clip norm"},
                            categories={"clip_norm": ("None", "1.0", "10.0")})  # fmt: skip
    cont, cat = saved[0].axes[:2]
    assert any(isinstance(c, PolyCollection) for c in cont.collections)  # a band around a line
    assert not any(isinstance(c, PolyCollection) for c in cat.collections)  # no band: error bars
    assert [t.get_text() for t in cat.get_xticklabels()] == ["None", "1.0", "10.0"]
    assert cat.get_xlabel() == "clip norm" and "\u00b1" in cat.get_title()
    m = res.marginal("clip_norm", grid=np.arange(3))
    assert m.mean[2] - m.mean[0] == pytest.approx(1.0, abs=0.1)  # the category's effect


def test_welch_needs_three_trials_per_group():
    r = welch_test(np.array([1.0, 1.2]), np.array([3.0, 3.1, 2.9, 3.2]), lower_is_better=True)
    assert math.isnan(r.p) and not r.significant and "no p-value" in r.note and "need 3" in r.note
    assert not math.isnan(welch_test(np.array([1.0, 1.2, 1.1]), np.array([3.0, 3.1, 2.9]), lower_is_better=True).p)
    rows = [{"task": "t", "variant": v, "test": x, "val": x, "lower_is_better": True, "metric": "mse", "params_count": 1}
            for v, xs in (("vanilla", [1.0, 1.1]), ("nfg", [2.0, 2.2])) for x in xs]  # fmt: skip
    table = welch_table(pd.DataFrame(rows))
    nfg = table[(table["variant"] == "nfg") & (table["subset"] == "all")].iloc[0]
    assert math.isnan(nfg["p_value"]) and "too few" in nfg["note"] and not nfg["significant"]


def test_parents_recording_different_spaces_are_a_mixed_sweep():
    from odyssey.analysis.space import AnalysisSpace
    from odyssey.analysis.study import Study, mixed_sweeps

    paper = AnalysisSpace.fallback()
    mini = AnalysisSpace.from_search_space(translate(_minibatch_space()))
    searches = pd.DataFrame({"run_id": ["p1", "p2"], "task": "adding", "variant": "vanilla"})
    trials = pd.DataFrame(columns=["task", "variant", "max_epochs"])
    study = Study("s", "0", "uri", trials, searches, {("adding", "vanilla"): mini}, (), {"p1": mini, "p2": paper})
    assert any("recorded different search spaces" in p for p in mixed_sweeps(study))
    same = Study("s", "0", "uri", trials, searches, {("adding", "vanilla"): mini}, (), {"p1": mini, "p2": None})
    assert not any("search spaces" in p for p in mixed_sweeps(same))
    assert paper.bounds(np.array([[1.5, -4, -1, 0.2], [2.0, -3, -0.5, 0.4]])).tolist() == [[1.5, 2.0], [-4, -3], [-1, -0.5], [0.2, 0.4]]


@pytest.mark.filterwarnings("ignore:The field 'default' should be 'default_value'")
def test_integer_and_boolean_hyperparameters(tmp_path):
    from ConfigSpace import CategoricalHyperparameter, Configuration, ConfigurationSpace, UniformIntegerHyperparameter

    from odyssey.analysis.deepcave import export_deepcave
    from odyssey.analysis.space import AnalysisSpace

    space = AnalysisSpace.from_search_space(translate({"params": {
        "model.num_layers": {"dist": "int", "low": 1, "high": 3},
        "train.nesterov": {"dist": "choice", "values": [True, False]},
    }}))  # fmt: skip
    layers, nesterov = space.hyperparameters
    assert (layers.kind, layers.bounds, layers.label) == ("integer", (0.5, 3.5), "num layers")  # each integer weighs 1/3
    assert (nesterov.kind, nesterov.bounds, nesterov.categories) == ("boolean", (-0.5, 1.5), ("True", "False"))
    assert (nesterov.coordinate("True"), nesterov.coordinate("False")) == (0.0, 1.0)  # index among the recorded values
    assert math.isnan(nesterov.coordinate("maybe")) and math.isnan(layers.coordinate(None))
    rows = [{"task": "t", "variant": "vanilla", "metric": "mse", "lower_is_better": True, "status": "completed",
             "model.num_layers": float(n), "train.nesterov": str(b), "num_layers": float(n), "nesterov": nesterov.coordinate(str(b)),
             "seed": 0.0, "test": 1.0, "val": 1.0, "run_id": f"r{n}{b}", "start_time": 0.0, "end_time": 1.0}
            for n in (1, 2, 3) for b in (True, False)]  # fmt: skip
    (folder,) = export_deepcave(pd.DataFrame(rows), tmp_path, {("t", "vanilla"): space})
    cs = ConfigurationSpace.from_json(folder / "configspace.json")
    assert isinstance(cs["num_layers"], UniformIntegerHyperparameter) and (cs["num_layers"].lower, cs["num_layers"].upper) == (1, 3)
    assert isinstance(cs["nesterov"], CategoricalHyperparameter) and list(cs["nesterov"].choices) == ["True", "False"]
    configs = json.loads((folder / "configs.json").read_text())
    assert len(configs) == 6
    for values in configs.values():
        Configuration(cs, values=values)


def test_fanova_on_the_timit_space_with_its_boolean_and_its_clipping_choice():
    """``search_space=odyssey_timit`` as the sweep composes it: ``train.nesterov`` enters fANOVA as
    a boolean, ``train.clip_value`` {null, 1.0} as a two-valued categorical, both index-encoded
    from the params' text as MLflow logs it. test = 0.2 + 0.3 [classical momentum] + 0.1 [no
    clipping] + noise: variances 0.0225 and 0.0025 of 0.025 + noise (0.01^2), so nesterov explains
    ~0.89 and clip_value ~0.10; the marginals at the indices are the two effects."""
    from omegaconf import OmegaConf

    from odyssey.analysis.space import AnalysisSpace
    from odyssey.config import compose

    cfg = compose("sweep", ["experiment=odyssey_timit"])
    space = translate(OmegaConf.to_container(cfg.search_space, resolve=True))
    analysis = AnalysisSpace.from_search_space(translate(space.to_mapping()))  # as recorded
    kinds = {h.name: (h.kind, h.bounds, h.categories) for h in analysis.hyperparameters}
    assert kinds["nesterov"] == ("boolean", (-0.5, 1.5), ("True", "False"))
    assert kinds["clip_value"] == ("categorical", (-0.5, 1.5), ("None", "1.0"))
    rng = np.random.default_rng(0)
    X, y = [], []
    for _ in range(120):
        flat = space.flat(space.sample(rng))  # config values by path
        text = {path: str(value) for path, value in flat.items()}  # MLflow params are text
        X.append([analysis[h.name].coordinate(text[h.path]) for h in analysis.hyperparameters])
        y.append(0.2 + 0.3 * (not flat["train.nesterov"]) + 0.1 * (flat["train.clip_value"] is None) + rng.normal(0, 0.01))
    X = np.array(X)
    assert set(X[:, analysis.names.index("nesterov")]) == {0.0, 1.0} and np.isfinite(X).all()
    res = fanova(X, np.array(y), analysis.names, bounds=analysis.bounds(X), n_trees=32, seed=0)
    assert res["nesterov"] == pytest.approx(0.89, abs=0.06) and res["clip_value"] == pytest.approx(0.10, abs=0.05)
    assert max(res[k] for k in ("log10_hidden_size", "log10_lr", "log10_one_minus_momentum", "input_noise")) < 0.03
    nesterov = res.marginal("nesterov", grid=np.arange(2))  # index 0 = True (recorded order)
    clip = res.marginal("clip_value", grid=np.arange(2))  # index 0 = None
    assert nesterov.mean[1] - nesterov.mean[0] == pytest.approx(0.3, abs=0.03)
    assert clip.mean[0] - clip.mean[1] == pytest.approx(0.1, abs=0.03)
