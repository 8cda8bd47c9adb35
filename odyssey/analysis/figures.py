"""Matplotlib figures of the report (Agg backend, PNG files). Each function writes one file."""

from __future__ import annotations

import itertools
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
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path


def box_plot(task: str, values: dict[str, np.ndarray], welch: pd.DataFrame, metric: str, path: Path) -> Path:
    """Test metric per variant side by side; variants significantly different from vanilla
    (all-trials Welch test) are marked with * and coloured (green better, red worse)."""
    variants = list(values)
    sig = {}
    if not welch.empty:
        w = welch[(welch["task"] == task) & (welch["subset"] == "all")]
        sig = {r.variant: r.direction for r in w.itertuples() if r.significant}
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(variants) + 2), 4))
    bp = ax.boxplot([values[v] for v in variants], patch_artist=True)
    for patch, v in zip(bp["boxes"], variants):
        colour = {"better": "#7fc97f", "worse": "#f0027f"}.get(sig.get(v, ""), "#bdbdbd" if v != "vanilla" else "#80b1d3")
        patch.set_facecolor(colour)
    ax.set_xticks(range(1, len(variants) + 1), [f"{v} *" if v in sig else v for v in variants], rotation=30)
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"{task}: test {metric} per variant\n(* Welch p < 0.05 vs vanilla, all trials)", fontsize=10)
    return _save(fig, path)


def importance_bars(res: FanovaResult, title: str, path: Path, *, labels: dict[str, str] | None = None) -> Path:
    """Variance fractions of the main effects and the pairs, with the std over trees."""
    labels = labels or {}
    keys = list(res.names) + list(res.pairwise)
    names = [labels.get(k, k) if isinstance(k, str) else " x ".join(labels.get(n, n) for n in k) for k in keys]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(keys) + 1.5))
    y = np.arange(len(keys))[::-1]
    ax.barh(y, [res[k] for k in keys], xerr=[res.std[k] for k in keys], color=["#1f78b4"] * len(res.names) + ["#a6cee3"] * len(res.pairwise))
    ax.set_yticks(y, names)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of variance")
    ax.set_title(title)
    return _save(fig, path)


def marginal_curves(res: FanovaResult, title: str, path: Path, *, metric: str, labels: dict[str, str] | None = None) -> Path:
    """One panel per hyperparameter: predicted metric (mean over trees) with a +-1 std band."""
    labels = labels or {}
    d = len(res.names)
    fig, axes = plt.subplots(1, d, figsize=(3.2 * d, 3), squeeze=False)
    for ax, name in zip(axes[0], res.names):
        c = res.marginal(name)
        ax.plot(c.grid, c.mean, color="#1f78b4")
        ax.fill_between(c.grid, c.mean - c.std, c.mean + c.std, alpha=0.3, color="#1f78b4")
        ax.set_xlabel(labels.get(name, name))
        ax.set_title(f"{res[name]:.1%} of variance", fontsize=9)
    axes[0][0].set_ylabel(f"predicted test {metric}")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def pairwise_heatmaps(res: FanovaResult, title: str, path: Path, *, metric: str, labels: dict[str, str] | None = None) -> Path:
    """One heat map per pair of hyperparameters: predicted metric over their grid."""
    labels = labels or {}
    pairs = list(itertools.combinations(res.names, 2))
    ncol = min(3, len(pairs))
    nrow = int(np.ceil(len(pairs) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.8 * ncol, 3.2 * nrow), squeeze=False)
    for ax in axes.ravel()[len(pairs):]:
        ax.axis("off")
    for ax, (a, b) in zip(axes.ravel(), pairs):
        pm = res.pairwise_marginal(a, b)
        im = ax.pcolormesh(pm.grid_a, pm.grid_b, pm.mean.T, shading="auto", cmap="viridis")
        fig.colorbar(im, ax=ax, label=f"test {metric}")
        ax.set_xlabel(labels.get(a, a))
        ax.set_ylabel(labels.get(b, b))
        ax.set_title(f"pair: {res[(a, b)]:.1%} of variance", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
