"""``analyze_study``: the whole analysis of one study, written to a folder (HTML report, PNG
figures, CSV/JSON tables, DeepCAVE export) and logged to MLflow.

Layout of the output folder::

    report.html            one self-contained file: tables + figures (base64 PNGs) + rules
    summary.json           counts, messages, rules, each search's hyperparameters (recorded
                           space or fallback, boxes), fANOVA fractions, comparison rows
    trials.csv             every trial read from MLflow (every searched hyperparameter: config
                           value and analysis coordinate)
    counts.csv             per (task, variant): trials by status, how many enter each analysis
    comparison.csv         per (task, variant, subset, test): each variant vs vanilla, the paper's
                           Welch t-test (all, top10) and the paired signed-rank test (all, top50),
                           raw and Holm-corrected p-values, effects with their intervals
    pairs.csv              every matched pair: the two run ids, statuses, val and test values
    pair_counts.csv        per (task, variant): trials with and without a vanilla partner, pairs
    fanova.csv             per (task, variant): fraction and its std over trees per key, the
                           readable label, the box each hyperparameter was integrated over
    figures/box_<task>.png (Fig. 3: all and top10 with mean parameter counts; the pairs per
    variant joined), figures/fanova_<task>_<variant>.png (Fig. 5),
    figures/marginals_<task>_<variant>.png (Fig. 4), figures/pairs_<task>_<variant>.png (Fig. 6)
    deepcave/<task>/<variant>/   DeepCAVE runs
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from odyssey.analysis import figures
from odyssey.analysis.compare import BASELINE, MIN_PER_GROUP, ComparisonConfig, comparison_table, top_fraction, top_pairs
from odyssey.analysis.conclusions import conclusion_lines, metric_caption
from odyssey.analysis.deepcave import export_deepcave
from odyssey.analysis.errors import TooFewTrialsError
from odyssey.analysis.fanova import TRIALS_PER_HYPERPARAMETER, FanovaResult, fanova, recommended_trials
from odyssey.analysis.pairing import Pairing, pair_trials
from odyssey.analysis.rules import count_table, fanova_mask, ttest_mask
from odyssey.analysis.space import AnalysisSpace, label_of
from odyssey.analysis.study import Study, load_study, mixed_sweeps
from odyssey.tracking import where_to_look

MIN_FANOVA_TRIALS = 10  # fewer: no fit at all; fewer than TRIALS_PER_HYPERPARAMETER per hyperparameter: a warning
MIN_GROUP_TRIALS = MIN_PER_GROUP  # fewer trials in a group: no Welch p-value (compare.py says why)
FANOVA_COLUMNS = ["task", "variant", "n", "key", "label", "fraction", "std", "low", "high", "note"]


@dataclass
class AnalysisReport:
    """What ``analyze_study`` produced.

    Attributes:
        study: the study analysed. out_dir: the output folder. html: the report file.
        counts, comparison, fanova_table: the tables (pandas). fanova: results per (task, variant).
        messages: plain sentences about what was skipped and why. figures: PNG paths.
        analysis_run_id: the MLflow run holding the artifacts (None with ``log=False``).
        pairing: the study's pairs and their counts. conclusions: one line per (task, variant).
        config: the comparison's keys. rules: the inclusion and test rules, as stated.
    """

    study: Study
    out_dir: Path
    html: Path
    counts: pd.DataFrame
    comparison: pd.DataFrame
    fanova_table: pd.DataFrame
    fanova: dict[tuple[str, str], FanovaResult] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    analysis_run_id: str | None = None
    pairing: Pairing | None = None
    conclusions: list[str] = field(default_factory=list)
    config: ComparisonConfig = field(default_factory=ComparisonConfig)
    rules: list[str] = field(default_factory=list)


def _slug(*parts: str) -> str:
    return "_".join("".join(c if c.isalnum() or c in "-." else "-" for c in p) for p in parts)


def _fanova_rows(
    task: str, variant: str, n: int, res: FanovaResult | None, note: str, labels: dict[str, str] | None = None
) -> list[dict]:
    """fanova.csv rows of one fit: per key its fraction and std over trees, the readable label
    and, for a single hyperparameter, the box integrated over (analysis units)."""
    base = {"task": task, "variant": variant, "n": n, "low": math.nan, "high": math.nan, "note": note}
    if res is None:
        return [{**base, "key": "", "label": "", "fraction": math.nan, "std": math.nan}]
    labels = labels or {}
    rows = []
    for k, v in res.items():
        key = k if isinstance(k, str) else " x ".join(k)
        row = {**base, "key": key, "label": label_of(k, labels), "fraction": v, "std": res.std[k]}
        if isinstance(k, str):
            row["low"], row["high"] = (float(b) for b in res.bounds[res.names.index(k)])
        rows.append(row)
    rest = "higher-order + unexplained"
    rows.append({**base, "key": rest, "label": rest, "fraction": res.remainder, "std": math.nan})
    return rows


def _space_messages(study: Study) -> list[str]:
    """Which searches fall back on the paper's four hyperparameters (no recorded space)."""
    fallback = sorted(f"{t}/{v}" for (t, v), s in study.spaces.items() if not s.recorded)
    if not fallback:
        return []
    names = ", ".join(h.label for h in AnalysisSpace.fallback().hyperparameters)
    return [
        f"search(es) {', '.join(fallback)}: no recorded search space (search_space.json: a study from before "
        f"it was recorded): the analysis covers the paper's four hyperparameters ({names}) and fANOVA integrates "
        "over the observed min/max of the trials, not the searched box"
    ]


def _pairing_messages(pairing: Pairing, baseline: str) -> list[str]:
    """Per (task, variant): why it has no paired test, or how many trials found a partner."""
    msgs = []
    for r in pairing.counts.itertuples(index=False):
        where = f"task {r.task}, {r.variant}"
        if r.refused:
            msgs.append(f"{where}: no paired comparison: {r.refused}; the Welch t-tests still run")
            continue
        text = (
            f"{where}: {r.with_partner} of {r.trials} trials found a {baseline} partner ({baseline}: {r.baseline_with_partner} "
            f"of {r.baseline_trials}); {r.pairs} pairs enter the paired test"
        )
        if r.pair_left_out:
            text += f", {r.pair_left_out} left out (a member failed, was interrupted, stopped early or is running)"
        msgs.append(text)
    return msgs


def _comparison_messages(trials: pd.DataFrame, used: pd.DataFrame, baseline: str) -> list[str]:
    msgs = []
    for task, g in trials.groupby("task", sort=True):
        if baseline not in set(g["variant"]):
            msgs.append(f"task {task}: no {baseline} runs, variant comparison skipped (variants: {', '.join(sorted(set(g['variant'])))})")
            continue
        u = used[used["task"] == task]
        n_div = int((g["status"] == "diverged").sum())
        if len(g) and n_div == len(g):
            msgs.append(f"task {task}: all {n_div} trials diverged; nothing to compare and no fANOVA")
        for v, n in u.groupby("variant").size().items():
            if n < MIN_GROUP_TRIALS:
                msgs.append(f"task {task}, {v}: {n} usable trial(s), fewer than {MIN_GROUP_TRIALS}: no t-test")
    return msgs


def analyze_study(
    study: Study | str,
    *,
    tracking_uri: str | None = None,
    out_dir: Path | str = "analysis",
    min_trials: int = MIN_FANOVA_TRIALS,
    log: bool = True,
    n_trees: int = 64,
    seed: int = 0,
    baseline: str = BASELINE,
    config: ComparisonConfig | None = None,
) -> AnalysisReport:
    """Analyse a study: variant comparison, fANOVA, figures, tables, report, MLflow artifacts.

    Args:
        study: a loaded Study or the study's name (read from ``tracking_uri``).
        tracking_uri: MLflow tracking URI when ``study`` is a name.
        out_dir: output folder (created).
        min_trials: fewest trials for a fANOVA fit of one (task, variant).
        log: log the outputs as MLflow artifacts.
        n_trees, seed: the fANOVA forest.
        baseline: the variant the others are compared with.
        config: the comparison's keys (alpha, the paired top fraction, the difference to plan
            for, the bootstrap); default :class:`ComparisonConfig`'s.

    Raises:
        StudyNotFoundError, ServiceError: see ``load_study``.
        TooFewTrialsError: the study has no trial runs at all.
    """
    if isinstance(study, str):
        study = load_study(study, tracking_uri=tracking_uri)
    trials = study.trials
    if trials.empty:
        raise TooFewTrialsError(f"study {study.name!r} has no trial runs (tag odyssey.role=trial) at {study.tracking_uri}")
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)

    cfg = config or ComparisonConfig()
    counts = count_table(trials, study.spaces)
    used = trials[ttest_mask(trials)]
    pairing = pair_trials(trials, study.spaces, baseline=baseline)
    comparison = comparison_table(used, pairing, baseline=baseline, config=cfg, min_per_group=MIN_GROUP_TRIALS)
    messages = [f"WARNING: {p}" for p in mixed_sweeps(study)] + list(study.notes) + _space_messages(study)
    messages += _comparison_messages(trials, used, baseline) + _pairing_messages(pairing, baseline)
    report = AnalysisReport(
        study, out, out / "report.html", counts, comparison, pd.DataFrame(), messages=messages, pairing=pairing,
        conclusions=conclusion_lines(comparison, cfg, pairing.refused), config=cfg, rules=cfg.rules(),
    )  # fmt: skip

    # Box plots (the paper's Fig. 3): one per task, every variant side by side, all trials and the
    # Welch top subset, with the pairs of each variant joined.
    for task, g in used.groupby("task", sort=True):
        report.figures.append(_box_figure(task, g, comparison, pairing, cfg, baseline, out / "figures" / f"box_{_slug(task)}.png"))

    # fANOVA per (task, variant), over the hyperparameters and the box of its search's space.
    fit = trials[fanova_mask(trials, study.spaces)]
    pair_files: dict[tuple[str, str], list[Path]] = {}
    rows: list[dict] = []
    for (task, variant), g0 in trials.groupby(["task", "variant"], sort=True):
        g = fit[(fit["task"] == task) & (fit["variant"] == variant)]
        space = study.space(task, variant)
        labels = space.labels
        if len(g) < min_trials:
            note = f"{len(g)} trial(s) completed with full budget, fewer than {min_trials}: no fANOVA"
            messages.append(f"task {task}, {variant}: {note}")
            rows += _fanova_rows(task, variant, len(g), None, note)
            continue
        if np.ptp(g["test"].to_numpy(dtype=float)) == 0:
            note = "the test metric is constant over these trials: no variance to decompose"
            messages.append(f"task {task}, {variant}: {note}")
            rows += _fanova_rows(task, variant, len(g), None, note)
            continue
        X = g[space.names].to_numpy(dtype=float)
        res = fanova(X, g["test"].to_numpy(dtype=float), space.names, bounds=space.bounds(X), n_trees=n_trees, seed=seed)
        report.fanova[(task, variant)] = res
        d, enough = len(space.names), recommended_trials(len(space.names))
        note = ""
        if len(g) < enough:
            note = f"few trials: {len(g)} for {d} hyperparameters, fewer than {enough} ({TRIALS_PER_HYPERPARAMETER} per hyperparameter): rough fractions"
            messages.append(
                f"WARNING: task {task}, {variant}: fANOVA on {len(g)} trials for {d} hyperparameters, fewer than "
                f"{TRIALS_PER_HYPERPARAMETER} per hyperparameter ({enough}): the fractions are rough (biased towards an even "
                "split; irrelevant hyperparameters can get 10-20 %), read them with their spread over trees"
            )
        rows += _fanova_rows(task, variant, len(g), res, note, labels)
        metric, s = str(g["metric"].iloc[0]), _slug(task, variant)
        title = f"{task} / {variant}: fANOVA on {len(g)} trials (test {metric})"
        if note:
            title += f"\nfew trials (< {enough}): rough fractions"
        cats = space.categories
        pf = [
            figures.importance_bars(res, title, out / "figures" / f"fanova_{s}.png", labels=labels),
            figures.marginal_curves(res, title, out / "figures" / f"marginals_{s}.png", metric=metric, labels=labels, categories=cats),
        ]
        if d >= 2:
            pf.append(figures.pairwise_heatmaps(res, title, out / "figures" / f"pairs_{s}.png", metric=metric, labels=labels, categories=cats))
        report.figures += pf
        pair_files[(task, variant)] = pf
    report.fanova_table = pd.DataFrame(rows, columns=FANOVA_COLUMNS)

    # Tables, DeepCAVE export, report.
    trials.to_csv(out / "trials.csv", index=False)
    counts.to_csv(out / "counts.csv", index=False)
    comparison.to_csv(out / "comparison.csv", index=False)
    pairing.pairs.to_csv(out / "pairs.csv", index=False)
    pairing.counts.to_csv(out / "pair_counts.csv", index=False)
    report.fanova_table.to_csv(out / "fanova.csv", index=False)
    export_deepcave(trials, out / "deepcave", study.spaces)
    summary = {
        "study": study.name,
        "tracking_uri": study.tracking_uri,
        "conclusions": report.conclusions,
        "rules": report.rules,
        "comparison_config": dataclasses.asdict(cfg),
        "messages": messages,
        "spaces": {f"{t}/{v}": s.describe() for (t, v), s in sorted(study.spaces.items())},
        "counts": counts.to_dict(orient="records"),
        "comparison": json.loads(comparison.to_json(orient="records")),
        "pairs": json.loads(pairing.counts.to_json(orient="records")),
        "fanova": json.loads(report.fanova_table.to_json(orient="records")),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for key, files in pair_files.items():
        t = report.fanova_table
        sel = t[(t["task"] == key[0]) & (t["variant"] == key[1])]
        csv = out / "figures" / f"fanova_{_slug(*key)}.csv"
        sel.to_csv(csv, index=False)
        files.append(csv)
    write_html(report)
    if log:
        from odyssey.analysis.artifacts import log_analysis, result_metrics

        metrics = result_metrics(report.comparison, report.fanova_table)
        report.analysis_run_id = log_analysis(study, out, pair_files, metrics)
    return report


def _box_figure(
    task: str, g: pd.DataFrame, comparison: pd.DataFrame, pairing: Pairing, cfg: ComparisonConfig, baseline: str, path: Path
) -> Path:
    """One task's Fig. 3 (all and the Welch top subset, mean parameter counts) and its pairs."""
    order = sorted(set(g["variant"]), key=lambda v: (v != baseline, v))
    lib = bool(g["lower_is_better"].iloc[0])
    values, top = {}, {}
    for v in order:
        gv = g[g["variant"] == v]
        values[v] = gv["test"].to_numpy(dtype=float)
        top[v] = top_fraction(gv, by="val", lower_is_better=lib, fraction=cfg.welch_top)["test"].to_numpy(dtype=float)
    means = g.groupby("variant")["params_count"].mean().dropna()
    params = {v: int(round(n)) for v, n in means.items()}
    pairs = {}
    for v in order[1:]:
        p = pairing.of(task, v)
        if len(p):
            chosen = top_pairs(p, lower_is_better=lib, fraction=cfg.top_fraction).index
            pairs[v] = p.assign(top=p.index.isin(chosen))
    return figures.box_plot(
        task, values, comparison, str(g["metric"].iloc[0]), path, params_counts=params, top_values=top,
        top_label=cfg.welch_subsets[1], pairs=pairs, lower_is_better=lib,
    )  # fmt: skip


def _pm(fraction: float, std: float) -> str:
    """``0.812 +- 0.047``: a fraction with its spread over trees."""
    if not np.isfinite(fraction):
        return ""
    return f"{fraction:.3f} \u00b1 {std:.3f}" if np.isfinite(std) else f"{fraction:.3f}"


def fanova_display(table: pd.DataFrame) -> pd.DataFrame:
    """The fANOVA table as shown: readable names, each fraction with its std over trees, the box."""
    box = [f"[{lo:.4g}, {hi:.4g}]" if np.isfinite(lo) else "" for lo, hi in zip(table["low"], table["high"])]
    return pd.DataFrame({
        "task": table["task"], "variant": table["variant"], "trials": table["n"],
        "hyperparameter": table["label"], "fraction \u00b1 std": [_pm(f, s) for f, s in zip(table["fraction"], table["std"])],
        "box": box, "note": table["note"],
    })  # fmt: skip


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, na_rep="", float_format=lambda x: f"{x:.4g}", border=0, classes="t")


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></figure>'


TERMINAL_COLUMNS = [
    "task", "variant", "test", "subset", "n", "mean", "params_count", "p_value", "p_holm", "significant", "direction",
    "effect", "effect_low", "effect_high", "worse_pairs", "pairs_needed", "note",
]  # fmt: skip
FIGURE_SECTIONS = [  # file prefix -> heading: the paper's figures in its order
    ("fanova_", "Fig. 5: fraction of variance per hyperparameter and pair (mean \u00b1 std over trees)"),
    ("marginals_", "Fig. 4: marginal predicted test metric per hyperparameter (band: \u00b1 1 std over trees)"),
    ("pairs_", "Fig. 6: pairwise interactions (predicted test metric over two hyperparameters)"),
]


def comparison_heading(report: AnalysisReport) -> str:
    """The comparison table's heading: the tests, the rule of significance, the metric and its direction."""
    cfg = report.config
    return (
        f"Variant comparison vs vanilla: Welch t-test (all, {cfg.welch_subsets[1]}) and paired Wilcoxon signed-rank "
        f"(all, {cfg.top_subset}); significant: p_holm < {cfg.alpha:g}. {metric_caption(report.comparison)}"
    )


def _pairs_display(report: AnalysisReport) -> pd.DataFrame:
    c = report.pairing.counts if report.pairing is not None else pd.DataFrame()
    return c.assign(refused=c["refused"].map(lambda r: "not sampled paired (see Notes)" if r else "")) if not c.empty else c


def write_html(report: AnalysisReport) -> Path:
    """Write ``report.html``: one file, figures embedded as base64 data URIs."""
    r, esc = report, html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>odyssey analysis: {esc(r.study.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table.t{border-collapse:collapse;font-size:12px}"
        "table.t td,table.t th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style></head><body>",
        f"<h1>Study {esc(r.study.name)}</h1><p>Tracking URI: {esc(r.study.tracking_uri)}; {len(r.study.trials)} trials.</p>",
    ]
    if r.conclusions:
        parts.append("<h2>Conclusions</h2><ul>" + "".join(f"<li><code>{esc(x)}</code></li>" for x in r.conclusions) + "</ul>")
    parts.append("<h2>Rules</h2><ul>" + "".join(f"<li>{esc(x)}</li>" for x in r.rules) + "</ul>")
    if r.messages:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(m)}</li>" for m in r.messages) + "</ul>")
    parts += ["<h2>Trials by status</h2>", _table_html(r.counts)]
    pairs = _pairs_display(r)
    if not pairs.empty:
        parts += [f"<h2>Pairs: each variant's trials with a {BASELINE} partner (same sampled values and seed)</h2>", _table_html(pairs)]
    parts.append(f"<h2>Variant comparison</h2><p>{esc(comparison_heading(r))}</p>")
    parts.append(_table_html(r.comparison) if not r.comparison.empty else "<p>No task has vanilla runs: comparison skipped.</p>")
    boxes = [p for p in r.figures if p.name.startswith("box_")]
    if boxes:
        parts.append(
            f"<h2>Fig. 3: test metric per variant, all trials and {esc(r.config.welch_subsets[1])}, mean parameter counts; "
            "below, each variant's pairs joined</h2>"
        )
        parts += [_img(p) for p in boxes]
    caption = metric_caption(r.comparison).split(". Effects")[0]
    parts += ["<h2>fANOVA: fraction of variance of the test metric per hyperparameter and pair (mean \u00b1 std over trees)</h2>",
              f"<p>{esc(caption)}</p>" if caption else "", _table_html(fanova_display(r.fanova_table))]  # fmt: skip
    for prefix, heading in FIGURE_SECTIONS:
        shown = [p for p in r.figures if p.name.startswith(prefix) and p.suffix == ".png"]
        if shown:
            parts.append(f"<h2>{esc(heading)}</h2>")
            parts += [_img(p) for p in shown]
    parts.append("</body></html>")
    r.html.write_text("\n".join(parts))
    return r.html


def format_terminal(report: AnalysisReport) -> str:
    """The conclusions first, then the tables as plain text for the terminal."""
    lines = []
    if report.conclusions:
        lines += ["Conclusions (variant vs vanilla; the paired test decides):", *[f"  {c}" for c in report.conclusions], ""]
    lines += [f"study {report.study.name}: {len(report.study.trials)} trials", "", "Trials by status:", report.counts.to_string(index=False), ""]
    pairs = _pairs_display(report)
    if not pairs.empty:
        lines += [f"Pairs (each variant's trials with a {BASELINE} partner: same sampled values and seed):", pairs.to_string(index=False), ""]
    if report.comparison.empty:
        lines.append("Variant comparison: skipped (no vanilla runs).")
    else:
        lines += [comparison_heading(report), report.comparison[TERMINAL_COLUMNS].to_string(index=False, float_format=lambda x: f"{x:.4g}")]
    lines.append("")
    ft = report.fanova_table
    if not ft.empty and ft["key"].ne("").any():
        done = ft[ft["key"] != ""].assign(
            shown=lambda t: [_pm(f, s) for f, s in zip(t["fraction"], t["std"])],
            fit=lambda t: t["task"] + "/" + t["variant"] + " (n=" + t["n"].astype(str) + ")",
        )
        tall = done.pivot_table(index="label", columns="fit", values="shown", aggfunc="first", sort=False).fillna("")
        rank = {lab: (" x " in key) + 2 * (key == "higher-order + unexplained") for key, lab in zip(done["key"], done["label"])}
        tall = tall.loc[sorted(tall.index, key=lambda lab: rank[lab])]  # mains, pairs, the rest (stable)
        tall.index.name = "hyperparameter"
        metrics = ", ".join(f"{t}: test {m}" for t, m in done.drop_duplicates("task")[["task"]].merge(
            report.study.trials.drop_duplicates("task")[["task", "metric"]], on="task").itertuples(index=False))
        lines += [f"fANOVA fraction of variance ({metrics}), mean \u00b1 std over trees (columns: task/variant, trials fitted):", tall.to_string()]
    if report.messages:
        lines += ["", "Notes:", *[f"  - {m}" for m in report.messages]]
    lines += ["", f"report: {report.html}"]
    if report.analysis_run_id:
        lines.append(f"logged to MLflow run {report.analysis_run_id} ({report.study.tracking_uri})")
        lines.append(where_to_look(report.study.tracking_uri, report.study.experiment_id))
    return "\n".join(lines)
