"""Tests of odyssey.analysis: fANOVA known answers, Welch t-tests, and `odyssey analyze` end to
end on a real MLflow server (the shared session fixture ``mlflow_server`` in conftest.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from odyssey.analysis import FanovaResult, fanova, welch_table, welch_test
from odyssey.analysis.compare import top_fraction
from odyssey.analysis.errors import AnalysisError, StudyNotFoundError, TooFewTrialsError

NAMES = ["x1", "x2", "x3"]

# Tolerance of the known-answer tests: 3 percentage points. The forest is a piecewise-constant
# fit to n = 1000 noise-free points; measured errors here (n = 1000, 32 trees) are at most
# 1.0 pp on the main effects (x2 of the additive function: 0.141 vs 8/53 = 0.151) and 0.8 pp of
# spurious pair interaction on the additive function (axis-aligned splits approximating a smooth
# function), and below 0.5 pp at n = 2000, so 3 pp leaves room for other sklearn versions and
# platforms while still failing on any real error in the decomposition (those are >= 10 pp).
TOL = 0.03


@pytest.fixture(scope="module")
def uniform_x() -> np.ndarray:
    return np.random.default_rng(0).uniform(size=(1000, 3))


@pytest.fixture(scope="module")
def interaction(uniform_x) -> FanovaResult:
    X = uniform_x
    return fanova(X, -X[:, 0] + 4 * X[:, 0] * X[:, 1], NAMES, n_trees=32, seed=0)


def test_fanova_interaction_known_answer(interaction):
    # f = a x1 + b x2 + c x1 x2 with a = -1, b = 0, c = 4 on U[0,1]^3 (x3 irrelevant).
    # With E[x] = 1/2, Var[x] = 1/12:
    #   f_1(x1) = E[f | x1] - E f = (a + c/2)(x1 - 1/2)      -> V_1  = (a + c/2)^2 / 12 = 1/12
    #   f_2(x2) = (b + c/2)(x2 - 1/2)                         -> V_2  = (b + c/2)^2 / 12 = 4/12
    #   f_12 = f - E f - f_1 - f_2 = c (x1 - 1/2)(x2 - 1/2)   -> V_12 = c^2 / 144       = 4/36
    #   total V = 3/36 + 12/36 + 4/36 = 19/36, so fractions 3/19, 12/19, 4/19.
    res = interaction
    assert res["x1"] == pytest.approx(3 / 19, abs=TOL)
    assert res["x2"] == pytest.approx(12 / 19, abs=TOL)
    assert res[("x1", "x2")] == pytest.approx(4 / 19, abs=TOL)
    assert res["x3"] < 0.005
    assert res[("x1", "x3")] < 0.005 and res[("x2", "x3")] < 0.005
    assert res.ranking() == ["x2", "x1", "x3"]
    assert res.remainder == pytest.approx(0.0, abs=TOL)


def test_fanova_additive_known_answer(uniform_x):
    # f = sin(2 pi x1) + x2^2, additive: no pair explains anything.
    #   Var sin(2 pi x) = 1/2 on U[0,1]; Var x^2 = E x^4 - (E x^2)^2 = 1/5 - 1/9 = 4/45.
    #   fractions: x1 = (1/2)/(1/2 + 4/45) = 45/53, x2 = 8/53, x3 = 0, all pairs 0.
    X = uniform_x
    y = np.sin(2 * np.pi * X[:, 0]) + X[:, 1] ** 2
    res = fanova(X, y, NAMES, n_trees=32, seed=1)
    assert res["x1"] == pytest.approx(45 / 53, abs=TOL)
    assert res["x2"] == pytest.approx(8 / 53, abs=TOL)
    assert res["x3"] < 0.005
    for pair in res.pairwise:
        assert res[pair] < TOL


def test_fanova_is_invariant_to_affine_coordinates(uniform_x):
    # Analysis coordinates are e.g. log10(lr) in [-6, -2]; tree splits are midpoints between
    # data points, so an affine map of each column leaves the partition and the fractions as is.
    X = uniform_x[:500]
    y = X[:, 0] * X[:, 1] + X[:, 2]
    scaled = X * np.array([4.0, 2.0, 0.5]) + np.array([-6.0, 1.0, 3.0])
    a = fanova(X, y, NAMES, n_trees=8, seed=3)
    b = fanova(scaled, y, NAMES, n_trees=8, seed=3)
    for key in a:
        assert b[key] == pytest.approx(a[key], abs=1e-6)  # sklearn splits in float32
    assert np.allclose(b.bounds[:, 0], scaled.min(axis=0))


def test_fanova_marginals_follow_the_function(interaction):
    # f = -x1 + 4 x1 x2: E[f|x1] = x1, E[f|x2] = 2 x2 - 1/2, E[f|x1,x2] = f.
    res = interaction
    c1 = res.marginal("x1", n_points=11)
    inner = slice(1, -1)  # the end cells of a piecewise-constant fit are the least accurate
    assert c1.grid.shape == c1.mean.shape == c1.std.shape == (11,)
    np.testing.assert_allclose(c1.mean[inner], c1.grid[inner], atol=0.05)
    c2 = res.marginal("x2", n_points=11)
    np.testing.assert_allclose(c2.mean[inner], 2 * c2.grid[inner] - 0.5, atol=0.08)
    assert np.all(c1.std >= 0)
    pm = res.pairwise_marginal("x1", "x2", n_points=9)
    assert pm.mean.shape == (9, 9)
    ga, gb = np.meshgrid(pm.grid_a, pm.grid_b, indexing="ij")
    np.testing.assert_allclose(pm.mean[1:-1, 1:-1], (-ga + 4 * ga * gb)[1:-1, 1:-1], atol=0.15)
    flat = res.marginal("x3", n_points=11).mean
    assert np.ptp(flat) < 0.05  # irrelevant: a flat marginal


def test_fanova_mapping_api(uniform_x):
    X = uniform_x[:300]
    res = fanova(X, X[:, 0] + X[:, 1] * X[:, 2], NAMES, n_trees=4)
    assert isinstance(res, FanovaResult)
    assert list(res) == ["x1", "x2", "x3", ("x1", "x2"), ("x1", "x3"), ("x2", "x3")]
    assert len(res) == 6 and res.n_trees == 4 and res.n_samples == 300
    assert res[("x3", "x2")] == res[("x2", "x3")]
    assert set(res.main_effects) == set(NAMES) and len(res.pairwise) == 3
    assert all(0.0 <= v <= 1.0 for v in res.values())
    with pytest.raises(KeyError):
        res.marginal("nope")


def test_fanova_refuses_bad_input():
    X = np.random.default_rng(0).uniform(size=(20, 2))
    with pytest.raises(AnalysisError, match="no variance"):
        fanova(X, np.ones(20), ["a", "b"], n_trees=4)
    with pytest.raises(AnalysisError, match="d = len"):
        fanova(X, np.ones(20), ["a"], n_trees=4)
    with pytest.raises(AnalysisError, match="finite"):
        fanova(X, np.r_[np.nan, np.ones(19)], ["a", "b"], n_trees=4)


def test_fanova_tree_matches_optuna_reference(uniform_x):
    """Independent check of the per-tree decomposition against Optuna's (private) _FanovaTree,
    which computes Var(marginal over a feature set) on the same fitted sklearn tree."""
    tree_mod = pytest.importorskip("optuna.importance._fanova._tree")
    from sklearn.ensemble import RandomForestRegressor

    from odyssey.analysis.fanova import _extract_tree, _tree_variances

    X = uniform_x[:200]
    y = np.sin(3 * X[:, 0]) * X[:, 1] + X[:, 2] ** 2
    bounds = np.stack([X.min(axis=0), X.max(axis=0)], axis=1)
    forest = RandomForestRegressor(n_estimators=3, random_state=0).fit(X, y)
    for est in forest.estimators_:
        ref = tree_mod._FanovaTree(est.tree_, bounds)
        mine = _extract_tree(est.tree_, bounds)
        assert mine.mean_and_variance()[1] == pytest.approx(ref.variance, rel=1e-9)
        main, pair = _tree_variances(mine, bounds)
        for j in range(3):
            assert main[j] == pytest.approx(ref.get_marginal_variance(np.array([j])), rel=1e-9, abs=1e-12)
        v01 = ref.get_marginal_variance(np.array([0, 1]))
        assert pair[0, 1] + main[0] + main[1] == pytest.approx(v01, rel=1e-9)


# --- Welch t-tests ----------------------------------------------------------------------------


def test_welch_flags_a_known_shift():
    # Two normal groups, n = 30 each, sd 1, means 1 apart: Welch's test has power ~0.97 at
    # alpha = 0.05 (noncentrality 1 * sqrt(30/2) = 3.9), so of 50 seeded repetitions ~48.5 are
    # expected flagged; >= 45 is 3 sd below that.
    flagged = 0
    for seed in range(50):
        rng = np.random.default_rng(seed)
        base, shifted = rng.normal(0, 1, 30), rng.normal(1, 1, 30)
        r = welch_test(shifted, base, lower_is_better=True)
        flagged += r.significant
        if r.significant:
            assert r.direction == "worse"  # higher loss than the baseline
            assert welch_test(shifted, base, lower_is_better=False).direction == "better"
    assert flagged >= 45


def test_welch_rarely_flags_same_distribution():
    # Same distribution: p is uniform, so ~5 % of 200 seeded repetitions (10) are flagged by
    # chance; <= 20 is 3 sd above that (binomial sd = 3.1).
    flagged = sum(
        welch_test(rng.normal(0, 1, 30), rng.normal(0, 1, 30), lower_is_better=True).significant
        for rng in (np.random.default_rng(1000 + s) for s in range(200))
    )
    assert 1 <= flagged <= 20


def test_welch_untestable_cases_say_why():
    r = welch_test(np.array([1.0]), np.array([1.0, 2.0]), lower_is_better=True)
    assert math.isnan(r.p) and not r.significant and "too few" in r.note
    r = welch_test(np.full(5, 3.0), np.full(5, 3.0), lower_is_better=True)
    assert math.isnan(r.p) and "constant" in r.note


def test_top_fraction_respects_direction():
    g = pd.DataFrame({"val": np.arange(20.0), "test": np.arange(20.0)})
    assert list(top_fraction(g, by="val", lower_is_better=True)["val"]) == [0.0, 1.0]
    assert list(top_fraction(g, by="val", lower_is_better=False)["val"]) == [19.0, 18.0]


def test_welch_table_rows():
    rng = np.random.default_rng(0)
    rows = []
    for variant, shift in (("vanilla", 0.0), ("nfg", 2.0), ("cifg", 0.0)):
        for v in rng.normal(shift, 1.0, 40):
            rows.append({"task": "t", "variant": variant, "test": v, "val": v, "lower_is_better": True, "metric": "mse", "params_count": 10})
    table = welch_table(pd.DataFrame(rows))
    assert len(table) == 6  # 3 variants x {all, top10}
    all_ = table[table["subset"] == "all"].set_index("variant")
    assert all_.loc["nfg", "significant"] and all_.loc["nfg", "direction"] == "worse"
    assert not all_.loc["cifg", "significant"]
    assert all_.loc["nfg", "n"] == 40 and all_.loc["nfg", "baseline_n"] == 40
    top = table[table["subset"] == "top10"].set_index("variant")
    assert top.loc["nfg", "n"] == 4


# --- `odyssey analyze` end to end on a real MLflow server ------------------------------------

VARIANT_SHIFT = {"vanilla": 0.0, "nfg": 1.0, "cifg": 0.0}


# The export writes "default" (what ConfigSpace 0.6, read by DeepCAVE 1.2, knows); ConfigSpace 1.x
# reads it and warns that it now calls it "default_value".
@pytest.mark.filterwarnings("ignore:The field 'default' should be 'default_value'")
def test_deepcave_export_reads_back_with_configspace(tmp_path):
    """Every exported config is legal in the exported space, read by ConfigSpace itself (the
    reader DeepCAVE uses); times are relative to the search's start; objective bounds come from
    the completed trials only (the others are written without costs)."""
    from ConfigSpace import Configuration, ConfigurationSpace

    from odyssey.analysis.deepcave import export_deepcave

    rng = np.random.default_rng(3)
    n = 12
    statuses = ["completed"] * 8 + ["diverged", "failed", "stopped_early", "completed"]
    trials = pd.DataFrame({
        "task": "adding", "variant": "vanilla", "metric": "mse", "lower_is_better": True,
        "model.hidden_size": rng.integers(20, 201, n).astype(float),
        "train.lr": 10 ** rng.uniform(-6, -2, n),  # values with more than 13 significant decimals
        "train.momentum": 1 - 10 ** rng.uniform(-2, 0, n),
        "train.input_noise": rng.uniform(0, 1, n),
        "seed": np.arange(n, dtype=float),
        "status": statuses,
        "test": np.r_[rng.uniform(0.1, 0.2, 8), [np.nan, np.nan, 0.9, 0.15]],
        "val": np.r_[rng.uniform(0.1, 0.2, 8), [np.nan, np.nan, 0.95, 0.12]],
        "run_id": [f"r{i}" for i in range(n)],
        "start_time": 1.7e9 + 10.0 * np.arange(n),
        "end_time": 1.7e9 + 10.0 * np.arange(n) + 5.0,
    })  # fmt: skip
    (folder,) = export_deepcave(trials, tmp_path)
    space = ConfigurationSpace.from_json(folder / "configspace.json")
    configs = json.loads((folder / "configs.json").read_text())
    assert len(configs) == n
    for values in configs.values():
        Configuration(space, values=values)  # raises IllegalValueError for a value out of bounds
    history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    assert [h[4] for h in history] == [10.0 * i for i in range(n)] and all(h[5] - h[4] == 5.0 for h in history)
    assert [h[6] for h in history] == [1] * 8 + [4, 4, 5, 1]
    assert history[10][3] == [None, None]  # stopped early: no costs
    meta = json.loads((folder / "meta.json").read_text())
    val = meta["objectives"][1]
    done = trials[trials["status"] == "completed"]["val"]
    assert (val["name"], val["lower"], val["upper"]) == ("val/mse", done.min(), done.max())  # not 0.95


# A trial dict's hyperparameters -> the config paths its run logs them under (the flattened config,
# as text: ``str(None)`` is "None"). No bare-name copies: the analysis must not need them.
CONFIG_PATHS = {
    "hidden_size": "model.hidden_size", "lr": "train.lr", "momentum": "train.momentum",
    "input_noise": "train.input_noise", "batch_size": "train.batch_size", "clip_norm": "train.clip_norm",
}  # fmt: skip


def _log_study(
    uri: str, name: str, groups: dict[tuple[str, str], list[dict]], spaces: dict[tuple[str, str], dict] | None = None
) -> None:
    """Log a synthetic study with the sweep's schema: parent search runs, child trial runs.

    ``spaces``: per (task, variant), the search space mapping its parent run records as
    ``search_space.json`` (what ``odyssey.sweep.mlflow_runs.record_search_space`` writes); a
    search missing there records none (a study from before the record).

    Trials are logged from a few threads: each run costs three HTTP round trips to the server.
    """
    from concurrent.futures import ThreadPoolExecutor

    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from odyssey import tracking as tr

    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(name)

    def log_trial(parent_id: str, task: str, variant: str, i: int, t: dict) -> None:
        tags = {
            "mlflow.parentRunId": parent_id, tr.TAG_ROLE: "trial", tr.TAG_TASK: task,
            tr.TAG_VARIANT: variant, tr.TAG_STATUS: t["status"], tr.TAG_PARAMS_COUNT: "1000",
            tr.TAG_PRIMARY_METRIC: "mse", tr.TAG_LOWER_IS_BETTER: "true", tr.TAG_SEED: str(i),
            tr.TAG_BUDGET_REACHED: "true" if t["status"] in ("completed", "diverged") else "false",
        }  # fmt: skip
        run = client.create_run(exp, run_name=f"trial-{i}", tags=tags, start_time=1_700_000_000_000 + i)
        params = [Param(path, str(t[k])) for k, path in CONFIG_PATHS.items() if k in t]
        params += [Param("train.max_epochs", str(t["max_epochs"]))] if "max_epochs" in t else []
        metrics = [Metric(k, t[v], 0, 1) for k, v in (("test/mse", "test"), ("best_val/mse", "val"))] if "test" in t else []
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        client.set_terminated(run.info.run_id, "FAILED" if t["status"] == "failed" else "FINISHED")

    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = []
        for (task, variant), trials in groups.items():
            tags = {tr.TAG_ROLE: "search", tr.TAG_TASK: task, tr.TAG_VARIANT: variant}
            parent = client.create_run(exp, run_name=f"{task}-{variant}", tags=tags)
            if spaces and (task, variant) in spaces:
                client.log_dict(parent.info.run_id, spaces[(task, variant)], "search_space.json")
            jobs += [pool.submit(log_trial, parent.info.run_id, task, variant, i, t) for i, t in enumerate(trials)]
            client.set_terminated(parent.info.run_id)
        for job in jobs:
            job.result()


def _trials(rng: np.random.Generator, n: int, shift: float, status: str = "completed") -> list[dict]:
    """Random-search trials in the paper's space; test mse = 1 + 0.5 (log10 lr + 4)^2
    + 0.1 input_noise + shift + noise: the learning rate explains almost all variance."""
    out = []
    for _ in range(n):
        lr = 10 ** rng.uniform(-6, -2)
        t = {"hidden_size": int(round(10 ** rng.uniform(math.log10(20), math.log10(200)))), "lr": lr,
             "momentum": 1 - 10 ** rng.uniform(-2, 0), "input_noise": rng.uniform(0, 1), "status": status}  # fmt: skip
        test = 1 + 0.5 * (math.log10(lr) + 4) ** 2 + 0.1 * t["input_noise"] + shift + rng.normal(0, 0.05)
        if status == "diverged":
            test = 10.0  # the task's worst value
        if status != "failed":
            t["test"], t["val"] = test, test + rng.normal(0, 0.05)
        out.append(t)
    return out


@pytest.fixture(scope="module")
def study_uri(mlflow_server) -> str:
    rng = np.random.default_rng(42)
    groups = {("adding", v): _trials(rng, 30, s) for v, s in VARIANT_SHIFT.items()}
    groups[("adding", "nfg")] += _trials(rng, 1, 1.0, "diverged") + _trials(rng, 1, 1.0, "stopped_early") + _trials(rng, 1, 1.0, "failed")
    groups[("adding", "nfg")] += _trials(rng, 1, 1.0, "interrupted")  # has metrics, must still be left out
    _log_study(mlflow_server, "synthetic", groups)
    _log_study(mlflow_server, "tiny", {("adding", "vanilla"): _trials(rng, 3, 0), ("adding", "nfg"): _trials(rng, 1, 0)})
    _log_study(mlflow_server, "novanilla", {("adding", "nfg"): _trials(rng, 12, 0), ("adding", "cifg"): _trials(rng, 12, 0)})
    _log_study(mlflow_server, "alldiverged", {("adding", v): _trials(rng, 4, 0, "diverged") for v in ("vanilla", "nfg")})
    _log_study(mlflow_server, "empty", {})
    return mlflow_server


def _analyze(uri: str, study: str, out, *extra: str) -> int:
    from odyssey.analysis.cli import main

    return main([study, "--tracking-uri", uri, "--out", str(out), "--n-trees", "16", *extra])


def test_analyze_end_to_end(study_uri, tmp_path, capsys):
    from mlflow import MlflowClient

    out = tmp_path / "report"
    assert _analyze(study_uri, "synthetic", out) == 0
    printed = capsys.readouterr().out
    assert "Variant comparison" in printed and "fANOVA fraction of variance" in printed

    html = (out / "report.html").read_text()
    assert "Variant comparison" in html and "<table" in html and "data:image/png;base64," in html
    assert "diverged trial enters with the worst value" in html  # the rule is stated
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pngs) == 1 + 3 * 3  # one box plot, 3 figures per (task, variant)
    for p in pngs:
        assert p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cmp_ = pd.read_csv(out / "comparison.csv")
    welch = cmp_[cmp_["test"] == "welch"]
    allt = welch[welch["subset"] == "all"].set_index("variant")
    assert bool(allt.loc["nfg", "significant"]) and allt.loc["nfg", "direction"] == "worse"
    assert not bool(allt.loc["cifg", "significant"])
    assert allt.loc["nfg", "n"] == 31  # 30 completed + 1 diverged (worst value), rule 1
    assert allt.loc["vanilla", "mean"] == pytest.approx(1 + 0.5 * 4 / 3 + 0.05, abs=0.35)
    top = welch[welch["subset"] == "top10"].set_index("variant")
    assert top.loc["vanilla", "n"] == 3 and bool(top.loc["nfg", "significant"])
    # each variant drew its own samples here (an unpaired study): the paired test is refused in one
    # line per variant, its rows carry the reason, and the conclusions fall back on Welch
    paired = cmp_[cmp_["test"] == "wilcoxon_paired"]
    assert len(paired) == 4 and paired["p_value"].isna().all() and (paired["n_pairs"] == 0).all()
    assert paired["note"].str.contains("not sampled paired").all()
    assert "task adding, nfg: no paired comparison: none of its 34 trials shares its sampled values and seed" in printed
    assert printed.startswith("Conclusions (variant vs vanilla; the paired test decides):\n  cifg: no difference detected on adding (Welch, all:")
    assert "  nfg: worse than vanilla on adding (Welch, all: +" in printed

    counts = pd.read_csv(out / "counts.csv").set_index("variant")
    columns = ["trials", "diverged", "stopped_early", "failed", "interrupted", "in_fanova", "in_ttest"]
    assert counts.loc["nfg", columns].tolist() == [34, 1, 1, 1, 1, 30, 31]

    fa = pd.read_csv(out / "fanova.csv")
    for variant in VARIANT_SHIFT:
        mains = fa[(fa["variant"] == variant) & fa["key"].isin(["log10_lr", "log10_hidden_size", "log10_one_minus_momentum", "input_noise"])]
        best = mains.sort_values("fraction").iloc[-1]
        assert best["key"] == "log10_lr" and best["fraction"] > 0.7

    # no search_space.json on these parents: the paper's four over the observed min/max, said so
    nfg = fa[(fa["variant"] == "nfg") & (fa["key"] == "log10_lr")].iloc[0]
    trials = pd.read_csv(out / "trials.csv")
    fitted = trials[(trials["variant"] == "nfg") & (trials["status"] == "completed")]
    assert (nfg["low"], nfg["high"]) == pytest.approx((fitted["log10_lr"].min(), fitted["log10_lr"].max()))
    assert nfg["label"] == "log10(learning rate)" and "few trials: 30 for 4 hyperparameters" in nfg["note"]
    assert "log10(learning rate)" in printed and "\u00b1" in printed  # readable names, fractions with their std
    summary = json.loads((out / "summary.json").read_text())
    assert summary["study"] == "synthetic" and len(summary["rules"]) == 6
    assert any("no recorded search space" in m and "observed min/max" in m for m in summary["messages"])
    assert any(m.startswith("WARNING: task adding, nfg: fANOVA on 30 trials for 4 hyperparameters") for m in summary["messages"])
    assert summary["spaces"]["adding/nfg"]["source"].startswith("observed")

    dc = out / "deepcave" / "adding" / "nfg"
    for f in ("configspace.json", "configs.json", "origins.json", "meta.json", "history.jsonl"):
        assert (dc / f).is_file()
    cs = json.loads((dc / "configspace.json").read_text())
    assert [h["name"] for h in cs["hyperparameters"]] == ["hidden_size", "lr", "one_minus_momentum", "input_noise"]
    assert all(h["lower"] < h["upper"] for h in cs["hyperparameters"])
    history = [json.loads(line) for line in (dc / "history.jsonl").read_text().splitlines()]
    configs = json.loads((dc / "configs.json").read_text())
    assert len(history) == len(configs) == 34
    assert all(len(h) == 8 and str(h[0]) in configs for h in history)
    assert sorted({h[6] for h in history}) == [1, 4, 5]  # success, crashed (diverged/failed), aborted (stopped/interrupted)
    meta = json.loads((dc / "meta.json").read_text())
    assert [o["name"] for o in meta["objectives"]] == ["test/mse", "val/mse"] and meta["objectives"][0]["optimize"] == "lower"

    client = MlflowClient(tracking_uri=study_uri)
    exp = client.get_experiment_by_name("synthetic")
    runs = client.search_runs([exp.experiment_id], "tags.`odyssey.role` = 'analysis'")
    assert len(runs) == 1
    logged = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"report.html", "comparison.csv", "fanova.csv", "figures", "deepcave"} <= logged
    parents = client.search_runs([exp.experiment_id], "tags.`odyssey.role` = 'search' and tags.`odyssey.variant` = 'nfg'")
    on_parent = {a.path for a in client.list_artifacts(parents[0].info.run_id, "analysis")}
    assert "analysis/fanova_adding_nfg.png" in on_parent and "analysis/fanova_adding_nfg.csv" in on_parent

    # the results are metrics too (MLflow charts and compares them across searches and studies)
    nfg_all = allt.loc["nfg"]
    # on the analysis run under one prefix (not ~100 loose top-level metrics beside the trials'),
    # and as one table artifact with the same values
    on_analysis = runs[0].data.metrics
    assert on_analysis and all(k.startswith("analysis/adding/") for k in on_analysis), sorted(on_analysis)[:5]
    assert on_analysis["analysis/adding/nfg/all/p_value"] == pytest.approx(nfg_all["p_value"])
    assert on_analysis["analysis/adding/nfg/all/mean"] == pytest.approx(nfg_all["mean"])
    assert on_analysis["analysis/adding/nfg/all/median"] == pytest.approx(nfg_all["median"])
    assert on_analysis["analysis/adding/nfg/all/significant"] == 1.0 and on_analysis["analysis/adding/cifg/all/significant"] == 0.0
    lr = fa[(fa["variant"] == "nfg") & (fa["key"] == "log10_lr")].iloc[0]
    assert on_analysis["analysis/adding/nfg/fanova/log10_lr"] == pytest.approx(lr["fraction"])
    assert on_analysis["analysis/adding/nfg/fanova/log10_lr/std"] == pytest.approx(lr["std"])
    table = json.loads(open(client.download_artifacts(runs[0].info.run_id, "results_table.json", str(tmp_path))).read())
    assert table["columns"] == ["task", "variant", "metric", "value"] and len(table["data"]) == len(on_analysis)
    for task, variant, metric, value in table["data"]:
        assert on_analysis[f"analysis/{task}/{variant}/{metric}"] == pytest.approx(value)
    parent = parents[0].data.metrics
    assert parent["analysis/all/p_value"] == pytest.approx(nfg_all["p_value"]) and parent["analysis/all/significant"] == 1.0
    assert parent["analysis/fanova/log10_lr"] == pytest.approx(lr["fraction"])
    assert "analysis/all/p_value" not in on_analysis  # the baseline has no test: no p-value metric


def test_analyze_unknown_study_lists_available(study_uri, tmp_path):
    with pytest.raises(StudyNotFoundError, match="no study named 'nope'.*available: .*synthetic"):
        _analyze(study_uri, "nope", tmp_path)


def test_analyze_study_without_trials(study_uri, tmp_path):
    with pytest.raises(TooFewTrialsError, match="no trial runs"):
        _analyze(study_uri, "empty", tmp_path, "--no-log")


def test_analyze_too_few_trials(study_uri, tmp_path, capsys):
    assert _analyze(study_uri, "tiny", tmp_path, "--no-log") == 0
    printed = capsys.readouterr().out
    assert "3 trial(s) completed with full budget, fewer than 10: no fANOVA" in printed
    assert "nfg: 1 usable trial(s), fewer than 3: no t-test" in printed
    cmp_ = pd.read_csv(tmp_path / "comparison.csv")
    row = cmp_[(cmp_["variant"] == "nfg") & (cmp_["subset"] == "all") & (cmp_["test"] == "welch")].iloc[0]
    assert math.isnan(row["p_value"]) and "too few" in row["note"]
    assert not list((tmp_path / "figures").glob("fanova_*.png"))


def test_analyze_without_vanilla(study_uri, tmp_path, capsys):
    assert _analyze(study_uri, "novanilla", tmp_path, "--no-log") == 0
    printed = capsys.readouterr().out
    assert "no vanilla runs, variant comparison skipped" in printed
    assert pd.read_csv(tmp_path / "comparison.csv").empty
    fa = pd.read_csv(tmp_path / "fanova.csv")
    assert set(fa.dropna(subset=["fraction"])["variant"]) == {"nfg", "cifg"}  # fANOVA still done
    assert (tmp_path / "figures" / "marginals_adding_cifg.png").is_file()


def test_analyze_only_diverged(study_uri, tmp_path, capsys):
    assert _analyze(study_uri, "alldiverged", tmp_path, "--no-log") == 0
    printed = capsys.readouterr().out
    assert "all 8 trials diverged" in printed
    assert "0 trial(s) completed with full budget" in printed
    cmp_ = pd.read_csv(tmp_path / "comparison.csv")
    assert cmp_["significant"].eq(False).all() and cmp_["p_value"].isna().all()


def test_a_study_of_several_sweeps_or_mixed_budgets_is_refused_or_flagged(mlflow_server, tmp_path, capsys):
    """Pooling an 8-epoch and a 2-epoch sweep as one sample (measured: "6 trials completed with
    full budget") is refused, naming each problem; --allow-mixed analyses it with the flags."""
    import json

    from mlflow import MlflowClient

    from odyssey.analysis.errors import AnalysisError
    from odyssey import tracking as tr

    rng = np.random.default_rng(7)
    budget = lambda trials, epochs: [{**t, "max_epochs": epochs} for t in trials]  # noqa: E731
    groups = {
        ("adding", "vanilla"): budget(_trials(rng, 3, 0), 8) + budget(_trials(rng, 3, 0), 2),
        ("adding", "nfg"): budget(_trials(rng, 6, 0), 8),
    }
    _log_study(mlflow_server, "mixed", groups)
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("mixed").experiment_id
    client.create_run(exp, tags={tr.TAG_ROLE: "search", tr.TAG_TASK: "adding", tr.TAG_VARIANT: "nfg"})  # a second sweep
    with pytest.raises(AnalysisError) as err:
        _analyze(mlflow_server, "mixed", tmp_path / "refused")
    text = str(err.value)
    assert "search adding/nfg has 2 parent runs" in text
    assert "search adding/vanilla mixes epoch budgets (train.max_epochs 2 (3 trials), 8 (3 trials))" in text
    assert "task adding: the variants were trained with different epoch budgets (nfg: 8, vanilla: 2/8)" in text
    assert "--allow-mixed" in text and not (tmp_path / "refused" / "report.html").exists()

    assert _analyze(mlflow_server, "mixed", tmp_path / "flagged", "--allow-mixed", "--no-log") == 0
    summary = json.loads((tmp_path / "flagged" / "summary.json").read_text())
    warnings = [m for m in summary["messages"] if m.startswith("WARNING: ")]
    assert len(warnings) == 3 and "2 parent runs" in warnings[0]
    assert "WARNING: search adding/nfg has 2 parent runs" in capsys.readouterr().out


def test_reference_cells_are_compared_against_vanilla_like_any_variant(tmp_path, monkeypatch):
    """GRU and RNN rows come out of the Welch table like an LSTM variant's, with their own
    parameter counts, and the box plot labels every variant with its count."""
    from odyssey.analysis import figures
    from odyssey.cells import preset

    counts = {v: preset(v).num_parameters(2, 20) + 21 for v in ("vanilla", "gru", "rnn")}  # layer + head
    rng = np.random.default_rng(1)
    rows = [
        {"task": "adding", "variant": v, "test": x, "val": x, "lower_is_better": True, "metric": "mse", "params_count": counts[v]}
        for v, shift in (("vanilla", 0.0), ("gru", 0.0), ("rnn", 3.0))
        for x in rng.normal(shift, 1.0, 30)
    ]  # fmt: skip
    table = welch_table(pd.DataFrame(rows))
    all_ = table[table["subset"] == "all"].set_index("variant")
    assert all_.loc["rnn", "significant"] and all_.loc["rnn", "direction"] == "worse"
    assert not all_.loc["gru", "significant"]
    assert {v: all_.loc[v, "params_count"] for v in counts} == counts == {"vanilla": 1921, "gru": 1421, "rnn": 481}
    labels = []
    monkeypatch.setattr(figures.plt.Axes, "set_xticks", lambda self, ticks, names, **kw: labels.extend(names))
    values = {v: np.array([r["test"] for r in rows if r["variant"] == v]) for v in counts}
    figures.box_plot("adding", values, table, "mse", tmp_path / "box.png", params_counts=counts)
    assert labels == ["vanilla\n1,921 params", "gru\n1,421 params", "rnn *\n481 params"]  # all trials; no top10, no pairs
    assert (tmp_path / "box.png").stat().st_size > 0
