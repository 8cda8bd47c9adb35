"""The paired variant comparison (issue 21): pairs matched by sampled values and seed, the
signed-rank test with its effect and bootstrap interval, Holm's correction, the pairs needed, and
`odyssey analyze` on a synthetic study written through the sweep's own MLflow writer (parent runs
with their recorded space, trials through ``MlflowTrialLogger``) on the session's MLflow server.

The statistical checks run the pure functions over many seeds (milliseconds each); one study makes
the round trip through MLflow.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
import pytest

from odyssey.analysis import ComparisonConfig, comparison_table, hodges_lehmann, holm, pair_trials, paired_test, pairs_needed
from odyssey.analysis.compare import welch_test
from odyssey.analysis.conclusions import conclusion_lines
from odyssey.analysis.paired import bootstrap_interval
from odyssey.analysis.space import AnalysisSpace
from odyssey.sweep.search_space import translate

SPACE = {"params": {
    "model.hidden_size": {"dist": "loguniform_int", "low": 20, "high": 200},
    "train.lr": {"dist": "loguniform", "low": 1.0e-6, "high": 1.0e-2},
    "train.momentum": {"dist": "one_minus_loguniform", "low": 0.01, "high": 1.0},
    "train.input_noise": {"dist": "uniform", "low": 0.0, "high": 1.0},
}}  # fmt: skip
SHIFT = 0.3  # nfg's constant worsening of the test metric, in its units
NOISE = 0.05  # per-trial noise around each sample's value


@functools.cache
def _space():
    return translate(SPACE)


def _samples(n: int, seed: int = 0) -> list[dict]:
    """What seeded random search draws: the same ``n`` samples for every search (config values)."""
    space = _space()
    rng = np.random.default_rng(seed)
    return [{p: v for p, v in space.flat(space.sample(rng)).items()} for _ in range(n)]


def _metric(sample: dict) -> float:
    """A sample's value: the learning rate moves it from 1 to 9 (spread sd ~2.4), as JSB's NLL."""
    return 1 + 2 * (math.log10(sample["train.lr"]) + 4) ** 2 + 0.2 * sample["train.input_noise"]


def _frame(groups: dict[str, list[dict]], *, task: str = "adding", search: str = "random") -> pd.DataFrame:
    """Trials as ``Study.trials`` has them, from per-variant lists of {sample, seed, status, test, val}."""
    rows = []
    for variant, trials in groups.items():
        for k, t in enumerate(trials):
            rows.append({
                "run_id": f"{variant}-{t['seed']}", "task": task, "variant": variant, "status": t.get("status", "completed"),
                "metric": "mse", "lower_is_better": True, **t["sample"], "val": t["val"], "test": t["test"],
                "params_count": 1000.0, "seed": float(t["seed"]), "search": search, "start_time": float(k),
            })  # fmt: skip
    return pd.DataFrame(rows)


def _paired_groups(rng, samples, shifts: dict[str, float], seed0: dict[str, int] | None = None) -> dict[str, list[dict]]:
    out = {}
    for variant, shift in shifts.items():
        trials = []
        for i, s in enumerate(samples):
            test = _metric(s) + shift + rng.normal(0, NOISE)
            trials.append({"sample": s, "seed": (seed0 or {}).get(variant, 0) + i, "test": test, "val": test + rng.normal(0, NOISE)})
        out[variant] = trials
    return out


# --- the statistics -------------------------------------------------------------------------


def test_holm_against_a_hand_computed_example():
    # p = (0.01, 0.04, 0.03, 0.005), m = 4. Sorted: 0.005, 0.01, 0.03, 0.04, times (m - j + 1):
    # 0.02, 0.03, 0.06, 0.04; running maximum: 0.02, 0.03, 0.06, 0.06. In input order:
    assert holm(np.array([0.01, 0.04, 0.03, 0.005])) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # A missing p-value (an untestable variant) does not count in m: m = 2 here.
    out = holm(np.array([0.01, np.nan, 0.04]))
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm(np.array([0.5, 0.9])) == pytest.approx([1.0, 1.0])  # capped at 1

    # In the table, three variants: a and b have raw p < 0.05, but b fails Holm's second step
    # (2 p_b > alpha), so only a is significant. Welch p-values of these groups (4 trials each,
    # 1 apart, shifted by 3.1, 2.5, 0.3): 0.0146, 0.0338, large.
    from odyssey.analysis.compare import welch_table

    rows = [{"task": "t", "variant": v, "test": x + shift, "val": x, "lower_is_better": True, "metric": "mse", "params_count": 1}
            for v, shift in (("vanilla", 0.0), ("a", 3.1), ("b", 2.5), ("c", 0.3)) for x in (0.0, 1.0, 2.0, 3.0)]  # fmt: skip
    table = welch_table(pd.DataFrame(rows)).query("subset == 'all' and variant != 'vanilla'").set_index("variant")
    p = table["p_value"]
    assert p["a"] < 0.05 / 3 and 0.05 / 2 < p["b"] < 0.05 and p["c"] > 0.5
    assert table["p_holm"].tolist() == pytest.approx([3 * p["a"], max(2 * p["b"], 3 * p["a"]), max(p["c"], 2 * p["b"])])
    assert table["significant"].tolist() == [True, False, False] and table["direction"].tolist() == ["worse", "", ""]


def test_hodges_lehmann_is_the_median_of_walsh_averages():
    # d = (1, 2, 3): Walsh averages 1, 1.5, 2, 2, 2.5, 3 -> 2. d = (0, 0, 10): 0, 0, 5, 0, 5, 10 -> 2.5.
    assert hodges_lehmann(np.array([1.0, 2.0, 3.0])) == 2.0
    assert hodges_lehmann(np.array([0.0, 0.0, 10.0])) == 2.5
    d = np.random.default_rng(0).normal(size=15)
    brute = np.median([(d[i] + d[j]) / 2 for i in range(15) for j in range(i, 15)])
    assert hodges_lehmann(d) == pytest.approx(brute)


def test_paired_detects_a_constant_shift_that_welch_misses():
    """(a) The variant is worse by 0.3 + N(0, 0.05) on every pair while the samples spread from 1 to
    9: the signed-rank test flags it at every seed (24 of 24 pairs worse: exact p = 2/2^24); Welch,
    whose difference of means (0.3) is a third of its standard error (~0.7), at few."""
    welch_flags = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        base = np.array([_metric(s) for s in _samples(24, seed)])
        vanilla, nfg = base + rng.normal(0, NOISE, 24), base + SHIFT + rng.normal(0, NOISE, 24)
        r = paired_test(nfg - vanilla, lower_is_better=True, n_resamples=200)
        assert r.p < 1e-6 and r.worse == 24 and r.hl == pytest.approx(SHIFT, abs=0.05)
        welch_flags += welch_test(nfg, vanilla, lower_is_better=True).significant
    assert welch_flags <= 3  # measured 0 of 20; each seed has p ~ 0.7


def test_no_difference_false_positive_rate_is_within_its_binomial_bound():
    """(b) No difference: of 600 seeded studies (24 pairs, sample spread sd 3, noise 0.1), the
    paired test flags ~5% at alpha = 0.05 (exact test: at most 5%); 30 expected, binomial sd 5.3,
    so 14..46 is +-3 sd. Welch's rate, on the same data, too."""
    paired = welch = 0
    for seed in range(600):
        rng = np.random.default_rng(10_000 + seed)
        base = rng.normal(5, 3, 24)
        a, b = base + rng.normal(0, 0.1, 24), base + rng.normal(0, 0.1, 24)
        paired += paired_test(a - b, lower_is_better=True, n_resamples=100).p < 0.05
        welch += welch_test(a, b, lower_is_better=True).significant
    assert 14 <= paired <= 46, paired
    assert welch <= 46, welch  # Welch is conservative here (the spread dwarfs the difference)


def test_bootstrap_interval_covers_the_true_shift():
    """(d) The 95% percentile interval of the Hodges-Lehmann estimate covers the true shift (0.3,
    24 pairs, noise sd 0.1) in ~95% of seeded studies; measured 94% over 200. With 100 studies the
    binomial sd is 2.2 points, so >= 88% is 3 sd below 95%. 1000 resamples each keep it fast; the
    analysis uses 10,000."""
    covered = 0
    for seed in range(100):
        d = SHIFT + np.random.default_rng(seed).normal(0, 0.1, 24)
        low, high = bootstrap_interval(d, n_resamples=1000, seed=seed)
        assert low < hodges_lehmann(d) < high
        covered += low <= SHIFT <= high
    assert covered >= 88
    d = SHIFT + np.random.default_rng(0).normal(0, 0.1, 24)
    assert bootstrap_interval(d, seed=3) == bootstrap_interval(d, seed=3)  # seeded: reproducible


def test_pairs_needed_gives_the_promised_power():
    """The plan (n pairs to detect delta = 0.5 sd with 80% power at alpha 0.05: 35) holds: 400
    simulated studies of 35 normal differences, each tested; measured 83%. 400 draws give a binomial
    sd of 2 points: 74..92% accepts a plan that is at most 3 sd short and not wastefully long."""
    from scipy import stats

    n = pairs_needed(1.0, 0.5, alpha=0.05, power=0.8)
    assert n == 35
    hits = sum(stats.wilcoxon(np.random.default_rng(s).normal(0.5, 1.0, n)).pvalue < 0.05 for s in range(400))
    assert 0.74 <= hits / 400 <= 0.92
    assert pairs_needed(0.0, 0.1, alpha=0.05) == 6  # no spread: the exact test's floor, 2/2^6 < 0.05
    assert pairs_needed(1.0, 0.5, alpha=0.025) > n and pairs_needed(math.nan, 0.5) is None


def test_paired_test_notes_untestable_cases():
    r = paired_test(np.array([0.1, 0.2]), lower_is_better=True, n_resamples=100)
    assert math.isnan(r.p) and "too few pairs" in r.note and r.worse == 2
    r = paired_test(np.zeros(8), lower_is_better=True, n_resamples=100)
    assert math.isnan(r.p) and "same value" in r.note
    r = paired_test(np.array([-0.5, -0.4, -0.6, 0.1]), lower_is_better=False, n_resamples=100)
    assert r.worse == 3 and r.better == 1  # higher is better: a negative difference is worse


def test_comparison_keys_are_checked():
    from odyssey.errors import ConfigError

    with pytest.raises(ConfigError, match=r"alpha=2 is invalid: expected a number in \(0, 1\)"):
        ComparisonConfig(alpha=2)
    with pytest.raises(ConfigError, match="top_fraction=0 is invalid"):
        ComparisonConfig(top_fraction=0)
    with pytest.raises(ConfigError, match="primary='best' is invalid: expected top or all"):
        ComparisonConfig(primary="best")
    cfg = ComparisonConfig(top_fraction=0.25, welch_top=0.2)
    assert (cfg.top_subset, cfg.welch_subsets, cfg.primary_subset) == ("top25", ("all", "top20"), "top25")
    assert any("'top25', the better 25% of the pairs" in r for r in cfg.rules())


def test_box_figure_has_the_paper_panels_and_one_pair_panel_per_variant(tmp_path, monkeypatch):
    """Fig. 3: all trials and top10 side by side; per variant with pairs, the pairs joined and
    their differences (two axes)."""
    from odyssey.analysis import figures

    rng = np.random.default_rng(4)
    trials = _frame(_paired_groups(rng, _samples(12), {"vanilla": 0.0, "nfg": SHIFT, "cifg": 0.0}))
    pairing = pair_trials(trials, {})
    table = comparison_table(trials, pairing, config=ComparisonConfig(n_resamples=200))
    values = {v: g["test"].to_numpy() for v, g in trials.groupby("variant")}
    pairs = {v: pairing.of("adding", v).assign(top=True) for v in ("cifg", "nfg")}
    shown = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: shown.setdefault("axes", [a.get_title() for a in fig.axes]) and path)
    figures.box_plot("adding", values, table, "mse", tmp_path / "b.png", top_values=values, pairs=pairs, lower_is_better=True)
    titles = shown["axes"]
    assert len(titles) == 2 + 2 * 2 and titles[0].startswith("adding: all trials") and titles[1].startswith("adding: top10")
    assert titles[4] == "nfg vs vanilla: pairs joined\n(solid: top pairs)" and titles[5].startswith("worse in 12/12 pairs")


# --- pairs ------------------------------------------------------------------------------------


def test_pairs_are_matched_by_values_not_order_and_missing_partners_are_counted():
    """10 samples. vanilla's trial 3 failed, nfg's trial 5 was interrupted, nfg's trial 7 never
    ran; nfg's trials are listed in reverse order. Every pair is a (vanilla, nfg) trial of the same
    sample; 9 nfg trials have a partner, 2 pairs lose a member, 7 enter the test."""
    rng = np.random.default_rng(1)
    groups = _paired_groups(rng, _samples(10), {"vanilla": 0.0, "nfg": SHIFT})
    groups["vanilla"][3] = {**groups["vanilla"][3], "status": "failed", "test": math.nan, "val": math.nan}
    groups["nfg"][5] = {**groups["nfg"][5], "status": "interrupted"}
    del groups["nfg"][7]
    groups["nfg"].reverse()
    pairing = pair_trials(_frame(groups), {})
    c = pairing.counts.iloc[0]
    assert (c["trials"], c["baseline_trials"], c["with_partner"], c["no_partner"], c["baseline_no_partner"]) == (9, 10, 9, 0, 1)
    assert (c["pair_left_out"], c["pairs"], c["refused"]) == (2, 7, "")
    used = pairing.of("adding", "nfg")
    assert len(used) == 7 and (used["run_id"].str[4:] == used["run_id_base"].str[8:]).all()  # nfg-<seed> with vanilla-<seed>
    assert set(used["run_id"]) == {f"nfg-{i}" for i in (0, 1, 2, 4, 6, 8, 9)}
    assert np.allclose(used["test"] - used["test_base"], SHIFT, atol=4 * NOISE * math.sqrt(2))


def test_a_study_not_sampled_paired_is_refused_in_one_line_and_welch_still_runs():
    rng = np.random.default_rng(2)
    samples = _samples(12)
    cases = {
        "tpe": (_frame(_paired_groups(rng, samples, {"vanilla": 0.0, "nfg": 1.0}), search="tpe"), "search tpe draws"),
        # a different seed per variant: other samples, trial seeds 0.. and 100..
        "seeds": (_frame({**_paired_groups(rng, samples, {"vanilla": 0.0}),
                          **_paired_groups(rng, _samples(12, seed=100), {"nfg": 1.0}, {"nfg": 100})}),
                  "trial seeds start at 100 for nfg, at 0 for vanilla"),  # fmt: skip
    }
    for name, (trials, reason) in cases.items():
        pairing = pair_trials(trials, {})
        assert list(pairing.refused) == [("adding", "nfg")] and reason in pairing.refused[("adding", "nfg")], name
        assert "\n" not in pairing.refused[("adding", "nfg")]
        table = comparison_table(trials, pairing, config=ComparisonConfig(n_resamples=200))
        paired = table[table["test"] == "wilcoxon_paired"]
        assert paired["p_value"].isna().all() and (paired["n_pairs"] == 0).all() and paired["note"].str.contains(reason).all()
        welch = table[(table["test"] == "welch") & (table["variant"] == "nfg") & (table["subset"] == "all")]
        assert welch["p_value"].notna().all(), name  # the paper's test still runs
        (line,) = conclusion_lines(table, ComparisonConfig(), pairing.refused)
        assert line.startswith("nfg: ") and "(Welch, all:" in line and "not sampled paired" in line

    # different recorded spaces
    trials = _frame(_paired_groups(rng, samples, {"vanilla": 0.0, "nfg": 1.0}))
    small = translate({"params": {"train.lr": SPACE["params"]["train.lr"]}})
    spaces = {("adding", "vanilla"): AnalysisSpace.from_search_space(translate(SPACE)), ("adding", "nfg"): AnalysisSpace.from_search_space(small)}
    assert "different search spaces" in pair_trials(trials, spaces).refused[("adding", "nfg")]


def test_diverged_trials_enter_with_their_worst_value_and_lose_their_pairs():
    rng = np.random.default_rng(3)
    groups = _paired_groups(rng, _samples(12), {"vanilla": 0.0, "noaf": 0.0})
    for i in range(0, 12, 2):  # noaf blows up on half the samples: the task's worst value
        groups["noaf"][i] = {**groups["noaf"][i], "status": "diverged", "test": 100.0, "val": 100.0}
    trials = _frame(groups)
    table = comparison_table(trials, pair_trials(trials, {}), config=ComparisonConfig(n_resamples=500))
    row = table[(table["test"] == "wilcoxon_paired") & (table["subset"] == "all")].iloc[0]
    assert row["n_pairs"] == 12 and row["worse_pairs"] >= 6
    top = table[(table["test"] == "wilcoxon_paired") & (table["subset"] == "top50")].iloc[0]
    assert top["n_pairs"] == 6  # ranked by mean validation value: the diverged pairs rank last


# --- a study through the sweep's own MLflow writer and `odyssey analyze` ----------------------


def _write_study(uri: str, name: str, groups: dict[str, list[dict]]) -> None:
    """Write a study as ``odyssey sweep`` does: per variant a parent run (``start_parent_run``,
    the search's tags, ``record_search_space``), per trial a run through ``MlflowTrialLogger``
    (params = the trial config's flat params, tags = ``trial_tags`` + role/study/search) ended by
    ``finish`` with a ``TrialResult`` (None for a failed or interrupted trial)."""
    from concurrent.futures import ThreadPoolExecutor

    from odyssey.config import compose, trial_config
    from odyssey.run_schema import ROLE_TRIAL, TAG_ROLE, TAG_SEARCH, TAG_STUDY
    from odyssey.sweep.mlflow_runs import ensure_experiment, finish_parent_run, record_search_space, search_tags, start_parent_run
    from odyssey.tracking import MlflowTrialLogger, trial_tags
    from odyssey.train import TrialResult

    experiment = ensure_experiment(uri, name)
    space = translate(SPACE)

    def write(parent: str, cfg, t: dict) -> None:
        sample = t["sample"]
        cfg = cfg.replace(
            model={"hidden_size": int(sample["model.hidden_size"])},
            train={k.split(".")[1]: sample[k] for k in ("train.lr", "train.momentum", "train.input_noise")},
        ).replace(seed=t["seed"])
        tags = {**trial_tags(cfg, primary_metric="mse", lower_is_better=True, params_count=1000),
                TAG_ROLE: ROLE_TRIAL, TAG_STUDY: name, TAG_SEARCH: "random"}  # fmt: skip
        logger = MlflowTrialLogger.start(uri, name, cfg, tags=tags, parent_run_id=parent, run_name=f"{cfg.variant.label()}-{t['seed']:03d}")
        status = t.get("status", "completed")
        result = None
        if status in ("completed", "diverged"):
            result = TrialResult(status, "max_epochs", 2, 2, 1000, {"mse": t["val"]}, {"mse": t["test"]})
        logger.finish(result, status)

    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = []
        for variant, trials in groups.items():
            cfg = trial_config(compose("train", [f"variant={variant}", "task=adding"]))
            parent = start_parent_run(uri, experiment, study=name, task="adding", variant=variant,
                                      tags=search_tags("random", "fifo", len(trials), "mse", True), resume=False)  # fmt: skip
            record_search_space(uri, parent, space)
            jobs += [(pool.submit(write, parent, cfg, t), parent) for t in trials]
        for job, _ in jobs:
            job.result()
        for parent in {p for _, p in jobs}:
            finish_parent_run(uri, parent, counts={}, best=None, metric="val/mse")


def test_analyze_a_paired_study_end_to_end(mlflow_server, tmp_path, capsys):
    """16 samples under vanilla, nfg (worse by 0.3 on every sample) and cifg (no difference); the
    spread of the samples (1 to 9) hides nfg from Welch, not from the pairs. vanilla's trial 3
    failed, nfg's trial 5 was interrupted, cifg's trial 9 never ran and cifg's trials were written
    in reverse order."""
    from mlflow import MlflowClient

    from odyssey.analysis.cli import main

    rng = np.random.default_rng(21)
    groups = _paired_groups(rng, _samples(16, seed=7), {"vanilla": 0.0, "nfg": SHIFT, "cifg": 0.0})
    groups["vanilla"][3] = {**groups["vanilla"][3], "status": "failed"}
    groups["nfg"][5] = {**groups["nfg"][5], "status": "interrupted"}
    del groups["cifg"][9]
    groups["cifg"].reverse()
    _write_study(mlflow_server, "paired", groups)

    out = tmp_path / "report"
    capsys.readouterr()  # what the writer printed
    assert main(["paired", "--tracking-uri", mlflow_server, "--out", str(out), "--n-trees", "8", "--min-trials", "50"]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0] == "Conclusions (variant vs vanilla; the paired test decides):", printed[:500]
    assert lines[1].startswith("  cifg: no difference detected on adding (paired, top50: ") and "the interval excludes differences above" in lines[1]
    assert "would detect 0.1 mse with 80% power" in lines[1]
    assert lines[2].startswith("  nfg: worse than vanilla on adding (paired, top50: +0.") and "worse in 7/7 pairs" in lines[2]

    cmp_ = pd.read_csv(out / "comparison.csv")
    assert len(cmp_) == 3 * 2 + 2 * 2  # welch: 3 variants x 2 subsets (vanilla: descriptive); paired: 2 variants x 2
    for column in ("test", "subset", "n", "n_pairs", "p_value", "p_holm", "significant", "direction", "effect", "effect_low", "effect_high"):
        assert column in cmp_.columns
    rows = cmp_.set_index(["variant", "test", "subset"])
    nfg_paired, nfg_welch = rows.loc[("nfg", "wilcoxon_paired", "all")], rows.loc[("nfg", "welch", "all")]
    assert nfg_paired["n_pairs"] == 14 and nfg_paired["worse_pairs"] == 14  # 16 - failed vanilla 3 - interrupted nfg 5
    assert bool(nfg_paired["significant"]) and nfg_paired["direction"] == "worse"
    assert nfg_paired["p_value"] == pytest.approx(2 / 2**14) and nfg_paired["p_holm"] == pytest.approx(2 * 2 / 2**14)
    assert nfg_paired["effect_low"] <= SHIFT <= nfg_paired["effect_high"]  # (d) the interval covers the true shift
    assert nfg_paired["effect"] == pytest.approx(SHIFT, abs=0.05)
    assert not bool(nfg_welch["significant"]) and nfg_welch["p_value"] > 0.3  # (a) Welch does not see it
    assert nfg_welch["effect_low"] < 0 < nfg_welch["effect_high"]
    cifg = rows.loc[("cifg", "wilcoxon_paired", "all")]
    assert cifg["n_pairs"] == 14 and not bool(cifg["significant"]) and cifg["pairs_needed"] > 0  # (b)
    assert rows.loc[("nfg", "wilcoxon_paired", "top50"), "n_pairs"] == 7

    counts = pd.read_csv(out / "pair_counts.csv").set_index("variant")
    assert counts.loc["cifg", ["trials", "with_partner", "baseline_no_partner", "pair_left_out", "pairs"]].tolist() == [15, 15, 1, 1, 14]
    assert counts.loc["nfg", ["trials", "with_partner", "no_partner", "pair_left_out", "pairs"]].tolist() == [16, 16, 0, 2, 14]
    assert "task adding, nfg: 16 of 16 trials found a vanilla partner (vanilla: 16 of 16); 14 pairs enter the paired test, 2 left out" in printed

    assert (out / "figures" / "box_adding.png").stat().st_size > 10_000 and (out / "pairs.csv").is_file()
    html = (out / "report.html").read_text()
    assert html.index("<h2>Conclusions</h2>") < html.index("<h2>Rules</h2>") < html.index("<h2>Variant comparison</h2>")
    assert "the better 50% of the pairs ranked by the mean of the two trials" in html and "Holm" in html
    assert "adding: test mse, lower is better" in html and "Fig. 3" in html

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("paired")
    (analysis,) = client.search_runs([exp.experiment_id], "tags.`odyssey.role` = 'analysis'")
    m = analysis.data.metrics
    assert m["analysis/adding/nfg/paired/all/p_holm"] == pytest.approx(nfg_paired["p_holm"])
    assert m["analysis/adding/nfg/paired/all/effect"] == pytest.approx(nfg_paired["effect"]) and m["analysis/adding/nfg/paired/all/significant"] == 1.0
    assert m["analysis/adding/nfg/all/p_holm"] == pytest.approx(nfg_welch["p_holm"]) and m["analysis/adding/nfg/all/significant"] == 0.0
    (parent,) = client.search_runs([exp.experiment_id], "tags.`odyssey.role` = 'search' and tags.`odyssey.variant` = 'nfg'")
    assert parent.data.metrics["analysis/paired/top50/n_pairs"] == 7.0
