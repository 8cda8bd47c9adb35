"""Matplotlib figures of the report (Agg backend, PNG files). Each function writes one file."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on cluster nodes or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from odyssey.analysis.fanova import FanovaResult  # noqa: E402

DPI = 110


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    top = 1.0 - 0.45 / fig.get_figheight() if fig._suptitle is not None else 1.0  # room for the suptitle
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path


def _boxes(ax, task: str, values: dict[str, np.ndarray], sig: dict[str, str], params_counts: dict[str, int] | None, title: str, metric: str, lower_is_better: bool | None) -> None:
    variants = list(values)
    bp = ax.boxplot([values[v] for v in variants], patch_artist=True)
    for patch, v in zip(bp["boxes"], variants):
        colour = {"better": "#7fc97f", "worse": "#f0027f"}.get(sig.get(v, ""), "#bdbdbd" if v != "vanilla" else "#80b1d3")
        patch.set_facecolor(colour)
    labels = [f"{v} *" if v in sig else v for v in variants]
    if params_counts:
        labels = [f"{label}\n{params_counts[v]:,} params" if v in params_counts else label for label, v in zip(labels, variants)]
    ax.set_xticks(range(1, len(variants) + 1), labels, rotation=30)
    ax.set_ylabel(f"test {metric}" + _better(lower_is_better))
    ax.set_title(title, fontsize=10)


def _better(lower_is_better: bool | None) -> str:
    return "" if lower_is_better is None else f" ({'lower' if lower_is_better else 'higher'} is better)"


def box_plot(
    task: str,
    values: dict[str, np.ndarray],
    welch: pd.DataFrame,
    metric: str,
    path: Path,
    *,
    params_counts: dict[str, int] | None = None,
    top_values: dict[str, np.ndarray] | None = None,
    top_label: str = "top10",
    pairs: dict[str, pd.DataFrame] | None = None,
    lower_is_better: bool | None = None,
) -> Path:
    """The paper's Fig. 3 for one task, and the paired differences.

    Top row: the test metric per variant side by side on all trials and (``top_values``) on each
    variant's best trials by validation metric; variants significantly different from vanilla
    (Welch test of that subset, Holm-corrected) are marked with * and coloured (green better, red
    worse). With ``params_counts`` (the mean parameter count of each variant's trials) each label
    gives it: a GRU or a simple RNN of the same hidden size has 3/4 or 1/4 of an LSTM's weights.

    Bottom row (``pairs``: per variant its usable pairs, columns ``test_base``, ``test`` and
    ``top``, True for the pairs of the paired top subset): one panel per variant, each pair a line
    from its vanilla value to its variant value, red where the variant is worse, green where
    better; the top subset's pairs drawn solid, the others faint.
    """
    variants = list(values)
    sig: dict[str, dict[str, str]] = {}
    if not welch.empty:
        w = welch[(welch["task"] == task) & (welch.get("test", "welch") == "welch")]
        for subset in ("all", top_label):
            sig[subset] = {r.variant: r.direction for r in w[w["subset"] == subset].itertuples() if r.significant}
    paired = [v for v in variants if pairs and v in pairs]
    ncol = max(2, len(paired))
    width = max(4.0, 0.9 * len(variants) + 2)
    fig = plt.figure(figsize=(max(2 * width, 3.6 * ncol), 4.5 if not paired else 8.5))
    grid = fig.add_gridspec(2 if paired else 1, 2 * ncol)
    ax_all = fig.add_subplot(grid[0, :ncol] if top_values is not None else grid[0, :])
    _boxes(ax_all, task, values, sig.get("all", {}), params_counts, f"{task}: all trials\n(* Welch p_holm < alpha vs vanilla)", metric, lower_is_better)
    if top_values is not None:
        ax_top = fig.add_subplot(grid[0, ncol:])
        title = f"{task}: {top_label} (best trials by validation {metric})\n(* Welch p_holm < alpha vs vanilla)"
        _boxes(ax_top, task, {v: top_values.get(v, np.array([])) for v in variants}, sig.get(top_label, {}), params_counts, title, metric, lower_is_better)
    for i, v in enumerate(paired):
        _pair_panel(fig.add_subplot(grid[1, 2 * i]), fig.add_subplot(grid[1, 2 * i + 1]), v, pairs[v], metric, lower_is_better)
    return _save(fig, path)


def _pair_panel(ax, ax_diff, variant: str, pairs: pd.DataFrame, metric: str, lower_is_better: bool | None) -> None:
    """One variant's pairs: on ``ax`` a line per pair from vanilla's value to the variant's; on
    ``ax_diff`` the differences variant - vanilla, one point per pair (top pairs solid), with 0 and
    the median difference marked."""
    lib = True if lower_is_better is None else lower_is_better
    d = (pairs["test"] - pairs["test_base"]).to_numpy(dtype=float)
    top = pairs["top"].to_numpy(dtype=bool) if "top" in pairs else np.ones(len(pairs), dtype=bool)
    colours = ["#bdbdbd" if x == 0 else ("#f0027f" if (x > 0) == lib else "#33a02c") for x in d]
    for (a, b), colour, strong in zip(pairs[["test_base", "test"]].to_numpy(dtype=float), colours, top):
        ax.plot([0, 1], [a, b], color=colour, alpha=0.9 if strong else 0.25, lw=1.4 if strong else 0.8, marker="o", ms=3)
    worse = int(np.sum(d > 0) if lib else np.sum(d < 0))
    median = float(np.median(d)) if len(d) else float("nan")
    ax.set_xticks([0, 1], ["vanilla", variant])
    ax.set_xlim(-0.3, 1.3)
    ax.set_ylabel(f"test {metric}", fontsize=8)
    ax.set_title(f"{variant} vs vanilla: pairs joined\n(solid: top pairs)", fontsize=9)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(d))  # seeded: the same figure each run
    ax_diff.scatter(jitter, d, c=colours, alpha=[0.9 if t else 0.3 for t in top], s=14)
    ax_diff.axhline(0.0, color="black", lw=0.8)
    if np.isfinite(median):
        ax_diff.axhline(median, color="#f0027f" if (median > 0) == lib else "#33a02c", lw=1.2, ls="--")
    ax_diff.set_xlim(-0.5, 0.5)
    ax_diff.set_xticks([])
    ax_diff.set_ylabel(f"{variant} - vanilla, test {metric}", fontsize=8)
    ax_diff.set_title(f"worse in {worse}/{len(d)} pairs\n-- median {median:+.3g}", fontsize=9)


def fraction_text(res: FanovaResult, key) -> str:
    """``81% +- 5%``: a fraction with its spread over trees (the same text in tables and figures)."""
    return f"{res[key]:.0%} \u00b1 {res.std[res._canonical(key)]:.0%}"


def _label(key, labels: dict[str, str]) -> str:
    return labels.get(key, key) if isinstance(key, str) else " x ".join(labels.get(n, n) for n in key)


def importance_bars(res: FanovaResult, title: str, path: Path, *, labels: dict[str, str] | None = None) -> Path:
    """Variance fractions of the main effects and the pairs, with the std over trees (error
    bars, and written next to each bar)."""
    labels = labels or {}
    keys = list(res.names) + list(res.pairwise)
    names = [_label(k, labels) for k in keys]
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(keys) + 1.5))
    y = np.arange(len(keys))[::-1]
    ax.barh(y, [res[k] for k in keys], xerr=[res.std[k] for k in keys], color=["#1f78b4"] * len(res.names) + ["#a6cee3"] * len(res.pairwise))
    for yi, k in zip(y, keys):
        ax.text(min(res[k] + res.std[k], 0.8) + 0.02, yi, fraction_text(res, k), va="center", fontsize=7)
    ax.set_yticks(y, names)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of variance (mean \u00b1 std over trees)")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _panels(n: int, width: float, height: float, ncol: int = 4):
    ncol = max(1, min(ncol, n))
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(width * ncol, height * nrow), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes.ravel()[:n]


def marginal_curves(
    res: FanovaResult,
    title: str,
    path: Path,
    *,
    metric: str,
    labels: dict[str, str] | None = None,
    categories: dict[str, Sequence[str]] | None = None,
) -> Path:
    """One panel per hyperparameter: predicted metric (mean over trees) with +-1 std over trees;
    a line with a band over a continuous or integer one, a point with an error bar per category
    of a categorical or boolean one (``categories``: name -> choices, index-encoded)."""
    labels, categories = labels or {}, categories or {}
    fig, axes = _panels(len(res.names), 3.2, 3.0)
    for ax, name in zip(axes, res.names):
        if name in categories:
            cats = list(categories[name])
            c = res.marginal(name, grid=np.arange(len(cats)))
            ax.errorbar(c.grid, c.mean, yerr=c.std, fmt="o", capsize=4, color="#1f78b4")
            ax.set_xticks(c.grid, cats)
            ax.set_xlim(-0.5, len(cats) - 0.5)
        else:
            c = res.marginal(name)
            ax.plot(c.grid, c.mean, color="#1f78b4")
            ax.fill_between(c.grid, c.mean - c.std, c.mean + c.std, alpha=0.3, color="#1f78b4")
        ax.set_xlabel(labels.get(name, name))
        ax.set_ylabel(f"predicted test {metric}", fontsize=8)
        ax.set_title(f"{fraction_text(res, name)} of variance", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def pairwise_heatmaps(
    res: FanovaResult,
    title: str,
    path: Path,
    *,
    metric: str,
    labels: dict[str, str] | None = None,
    categories: dict[str, Sequence[str]] | None = None,
) -> Path:
    """One heat map per pair of hyperparameters: predicted metric over their grid (a
    categorical axis has one cell per category)."""
    labels, categories = labels or {}, categories or {}
    pairs = list(itertools.combinations(res.names, 2))
    fig, axes = _panels(len(pairs), 3.8, 3.2, ncol=3)
    for ax, (a, b) in zip(axes, pairs):
        ga = np.arange(len(categories[a])) if a in categories else None
        gb = np.arange(len(categories[b])) if b in categories else None
        pm = res.pairwise_marginal(a, b, grid_a=ga, grid_b=gb)
        im = ax.pcolormesh(pm.grid_a, pm.grid_b, pm.mean.T, shading="nearest", cmap="viridis")
        fig.colorbar(im, ax=ax, label=f"test {metric}")
        if a in categories:
            ax.set_xticks(pm.grid_a, list(categories[a]))
        if b in categories:
            ax.set_yticks(pm.grid_b, list(categories[b]))
        ax.set_xlabel(labels.get(a, a))
        ax.set_ylabel(labels.get(b, b))
        ax.set_title(f"pair: {fraction_text(res, (a, b))} of variance", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
