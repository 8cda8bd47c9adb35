"""Functional ANOVA over a random forest (Hutter, Hoos & Leyton-Brown, ICML 2014).

A random forest (scikit-learn's ``RandomForestRegressor``) is fitted to ``(X, y)``. Each tree
is a partition of the bounding box into axis-aligned leaves with constant predictions, so its
functional ANOVA decomposition under the uniform measure on the box is exact and cheap:

* the marginal prediction over a set of dimensions ``U`` at ``x_U`` averages the tree over the
  other dimensions: ``a_U(x_U) = sum_l v_l * [x_U in leaf_l|U] * vol_{-U}(leaf_l) / vol_{-U}(box)``;
  its variance is exact from the pairwise overlaps of the leaves along ``U``:
  ``E[a_U^2] = sum_{l,l'} v_l w_l v_l' w_l' prod_{u in U} overlap_u(l, l')`` (no grid);
* ``V_U = Var(a_U) - sum of V_W over the non-empty proper subsets W of U``;
* the fraction of ``U`` is ``V_U / Var(tree)``; fractions are computed per tree and averaged
  over the trees (as the reference implementation, ``automl/fanova``, does).

Why not Optuna: ``optuna.importance.FanovaImportanceEvaluator`` (public) returns normalised main
effects only. Its private ``optuna.importance._fanova._tree._FanovaTree`` computes marginal
variances of arbitrary feature sets, but it is a private module with no stability promise
(underscored package, not in any ``__all__``) and loops in Python over every cell of the grid of split
points, which is slow for pairs. So the per-tree computation is written here, vectorised with NumPy; the tests
check it against ``_FanovaTree`` where that is importable, and against analytic decompositions.

Categorical hyperparameters enter index-encoded, with the box ``[-0.5, k - 0.5]`` (pass it in
``bounds``): each category then covers width 1, splits fall at the half-integers, and the uniform
measure gives every category weight 1/k (see :mod:`odyssey.analysis.space`); their marginals are
evaluated at the indices (``marginal(name, grid=np.arange(k))``).

Small samples: the fractions mean little below ``TRIALS_PER_HYPERPARAMETER`` (10) trials per
hyperparameter. Measured on random search in the paper's space (4 hyperparameters, the test
function of ``tests/test_analysis.py``, where the learning rate explains 99 % of the variance;
20 independent samples each, 16 trees): with 10 / 20 / 40 / 100 trials the learning rate's
fraction came out 0.45 / 0.70 / 0.90 / 0.98 (spread over samples 0.23 / 0.15 / 0.05 / 0.004) and
the largest fraction given to an irrelevant hyperparameter 0.21 / 0.13 / 0.02 / 0.001; with 6
hyperparameters (categorical batch size and clip norm added, one batch size shifting the
metric) the same picture at 60 trials (irrelevant
ones 0.01) that 4 had at 40. Below 10 per hyperparameter the fractions are biased towards
spreading the variance evenly and noise gets double-digit percentages; the report warns. The
spread over trees (``std``) is the forest's own (bootstrap) uncertainty, not a confidence
interval for the study: in the measurement it was larger than the spread over independent
samples, but centred on a biased value at small sizes (20 trials: lr 0.70 +- 0.28 over trees,
against 0.99 with many trials).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(size=(500, 2))
    >>> res = fanova(X, 3 * X[:, 0] + X[:, 1], ["a", "b"], n_trees=16)
    >>> res["a"] > res["b"]
    True
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from odyssey.analysis.errors import AnalysisError

Key = str | tuple[str, str]

TRIALS_PER_HYPERPARAMETER = 10  # fewer trials per hyperparameter: the report warns (docstring)


def recommended_trials(n_hyperparameters: int) -> int:
    """Trials below which a fit's fractions are rough: ``TRIALS_PER_HYPERPARAMETER`` per
    hyperparameter (see the module docstring for the measurement)."""
    return TRIALS_PER_HYPERPARAMETER * n_hyperparameters


@dataclass(frozen=True)
class _TreeBoxes:
    """One fitted tree as its leaves: boxes ``[lo, hi]`` (clipped to the bounds) and values."""

    lo: np.ndarray  # (L, d) lower edges, clipped to the bounds
    hi: np.ndarray  # (L, d) upper edges, clipped to the bounds
    open_lo: np.ndarray  # (L, d) lower edges for membership: -inf where the root bound is
    open_hi: np.ndarray  # (L, d) upper edges for membership: +inf where the root bound is
    value: np.ndarray  # (L,)
    rel_width: np.ndarray  # (L, d) width of the leaf / width of the box, per dimension
    thresholds: tuple[np.ndarray, ...]  # sorted split thresholds per dimension (inside bounds)

    @property
    def volume(self) -> np.ndarray:
        return np.prod(self.rel_width, axis=1)

    def mean_and_variance(self) -> tuple[float, float]:
        w = self.volume
        mean = float(np.sum(w * self.value) / np.sum(w))
        return mean, float(np.sum(w * (self.value - mean) ** 2) / np.sum(w))

    def membership(self, dim: int, points: np.ndarray) -> np.ndarray:
        """``(L, P)`` booleans: is ``points[p]`` inside leaf ``l`` along ``dim``.

        scikit-learn sends ``x <= threshold`` left, so a leaf holds ``open_lo < x <= open_hi``.
        """
        return (self.open_lo[:, dim, None] < points[None, :]) & (
            points[None, :] <= self.open_hi[:, dim, None]
        )

    def other_weight(self, dims: Sequence[int]) -> np.ndarray:
        """``(L,)`` relative volume of each leaf over the dimensions not in ``dims``."""
        mask = np.ones(self.rel_width.shape[1], dtype=bool)
        mask[list(dims)] = False
        return np.prod(self.rel_width[:, mask], axis=1)

    def marginal(self, dims: Sequence[int], points: Sequence[np.ndarray]) -> np.ndarray:
        """Marginal prediction on the grid ``points[0] x points[1] x ...`` over ``dims``."""
        vw = self.value * self.other_weight(dims)  # (L,)
        if len(dims) == 1:
            return vw @ self.membership(dims[0], points[0])
        if len(dims) == 2:
            ma = self.membership(dims[0], points[0]).astype(float)
            mb = self.membership(dims[1], points[1]).astype(float)
            return np.einsum("l,la,lb->ab", vw, ma, mb, optimize=True)
        raise ValueError("marginals are computed for one or two dimensions")


def _extract_tree(tree: object, bounds: np.ndarray) -> _TreeBoxes:
    """Walk a fitted ``sklearn.tree._tree.Tree`` and return its leaves as boxes."""
    d = bounds.shape[0]
    left, right = tree.children_left, tree.children_right
    feature, threshold = tree.feature, tree.threshold
    values = tree.value.reshape(tree.node_count, -1)[:, 0]
    los, his, olos, ohis, vals = [], [], [], [], []
    split_values: list[set[float]] = [set() for _ in range(d)]
    stack = [(0, bounds[:, 0].copy(), bounds[:, 1].copy(), np.full(d, -np.inf), np.full(d, np.inf))]
    while stack:
        node, lo, hi, olo, ohi = stack.pop()
        f = feature[node]
        if left[node] < 0:  # leaf
            los.append(lo), his.append(hi), olos.append(olo), ohis.append(ohi)
            vals.append(values[node])
            continue
        t = float(threshold[node])
        split_values[f].add(t)
        l_hi, l_ohi = hi.copy(), ohi.copy()
        l_hi[f], l_ohi[f] = min(hi[f], max(lo[f], t)), t
        r_lo, r_olo = lo.copy(), olo.copy()
        r_lo[f], r_olo[f] = max(lo[f], min(hi[f], t)), t
        stack.append((left[node], lo, l_hi, olo, l_ohi))
        stack.append((right[node], r_lo, hi, r_olo, ohi))
    lo_a, hi_a = np.array(los), np.array(his)
    total = bounds[:, 1] - bounds[:, 0]
    rel = np.where(total > 0, (hi_a - lo_a) / np.where(total > 0, total, 1.0), 1.0)
    thresholds = tuple(
        np.array(sorted(t for t in split_values[j] if bounds[j, 0] < t < bounds[j, 1]))
        for j in range(d)
    )
    return _TreeBoxes(
        lo_a, hi_a, np.array(olos), np.array(ohis), np.array(vals, dtype=float), rel, thresholds
    )


def _overlap(tree: _TreeBoxes, dim: int, rows: slice) -> np.ndarray:
    """``(r, L)`` relative length of the intersection of leaves ``rows`` and all leaves on ``dim``."""
    lo, hi = tree.lo[:, dim], tree.hi[:, dim]
    span = float(np.max(hi) - np.min(lo))
    inter = np.clip(np.minimum(hi[rows, None], hi[None, :]) - np.maximum(lo[rows, None], lo[None, :]), 0.0, None)
    return inter / span if span > 0 else np.ones_like(inter)


def _marginal_second_moment(tree: _TreeBoxes, dims: Sequence[int], centred: np.ndarray, chunk: int = 1024) -> float:
    """``E[a_U(x_U)^2]`` of the marginal over ``dims`` of the tree with leaf values ``centred``.

    ``a_U(x_U) = sum_l c_l w_l [x_U in leaf_l|U]`` with ``w_l`` the leaf's relative volume over
    the other dimensions, so ``E[a_U^2] = sum_{l,l'} c_l w_l c_l' w_l' prod_{u in U}
    overlap_u(l, l')``: exact, no grid, O(L^2) per set, computed in row chunks.
    """
    vw = centred * tree.other_weight(dims)
    total = 0.0
    for start in range(0, len(vw), chunk):
        rows = slice(start, start + chunk)
        prod = _overlap(tree, dims[0], rows)
        for u in dims[1:]:
            prod *= _overlap(tree, u, rows)
        total += float(vw[rows] @ prod @ vw)
    return total


def _tree_variances(tree: _TreeBoxes, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Main-effect variances ``(d,)`` and pairwise variances ``(d, d)`` (upper triangle)."""
    d = bounds.shape[0]
    mean, _ = tree.mean_and_variance()
    centred = tree.value - mean  # the marginals of the centred tree have mean 0
    main = np.zeros(d)
    for j in range(d):
        if tree.thresholds[j].size:  # a tree that never splits on j has a constant marginal
            main[j] = _marginal_second_moment(tree, [j], centred)
    pair = np.zeros((d, d))
    for a, b in itertools.combinations(range(d), 2):
        if tree.thresholds[a].size and tree.thresholds[b].size:
            v_ab = _marginal_second_moment(tree, [a, b], centred)
            pair[a, b] = max(v_ab - main[a] - main[b], 0.0)  # clip round-off below zero
    return main, pair


@dataclass(frozen=True)
class MarginalCurve:
    """Predicted metric vs one hyperparameter, averaged over the others.

    Attributes:
        name: the hyperparameter.
        grid: (P,) points in analysis coordinates.
        mean: (P,) mean over trees of the trees' marginal predictions.
        std: (P,) standard deviation over trees (the band the reference plots).
    """

    name: str
    grid: np.ndarray
    mean: np.ndarray
    std: np.ndarray


@dataclass(frozen=True)
class PairwiseMarginal:
    """Predicted metric over a grid of two hyperparameters (for heat maps).

    Attributes:
        names: the two hyperparameters ``(a, b)``.
        grid_a: (Pa,) points for ``a``; grid_b: (Pb,) points for ``b``.
        mean: (Pa, Pb) mean over trees of the marginal predictions.
    """

    names: tuple[str, str]
    grid_a: np.ndarray
    grid_b: np.ndarray
    mean: np.ndarray


@dataclass(frozen=True)
class FanovaResult(Mapping):
    """Variance fractions, as a mapping from each name and each pair ``(a, b)`` to its fraction.

    Pairs are keyed in the order the names were given; ``result[(b, a)]`` is accepted too.
    ``std[key]`` is the standard deviation of the per-tree fractions.

    Attributes:
        names: the hyperparameter names, in the order given.
        bounds: (d, 2) the box the decomposition integrates over.
        fractions: fraction of the total variance per key (mean over trees).
        std: standard deviation over trees per key.
        n_samples: points the forest was fitted on.
        n_trees: trees that had non-zero variance (the ones averaged).
    """

    names: tuple[str, ...]
    bounds: np.ndarray
    fractions: dict[Key, float]
    std: dict[Key, float]
    n_samples: int
    n_trees: int
    _trees: tuple[_TreeBoxes, ...] = field(repr=False, compare=False)

    def _canonical(self, key: Key) -> Key:
        if isinstance(key, tuple) and len(key) == 2 and key not in self.fractions:
            return (key[1], key[0])
        return key

    def __getitem__(self, key: Key) -> float:
        return self.fractions[self._canonical(key)]

    def __iter__(self) -> Iterator[Key]:
        return iter(self.fractions)

    def __len__(self) -> int:
        return len(self.fractions)

    @property
    def main_effects(self) -> dict[str, float]:
        """Fraction per single hyperparameter."""
        return {n: self.fractions[n] for n in self.names}

    @property
    def pairwise(self) -> dict[tuple[str, str], float]:
        """Fraction per pair ``(a, b)``."""
        return {k: v for k, v in self.fractions.items() if isinstance(k, tuple)}

    @property
    def remainder(self) -> float:
        """Fraction left to higher-order interactions (1 - mains - pairs), clipped at 0."""
        return max(0.0, 1.0 - sum(self.fractions.values()))

    def ranking(self) -> list[str]:
        """Names sorted by main-effect fraction, most important first."""
        return sorted(self.names, key=lambda n: -self.fractions[n])

    def _grid(self, name: str, n_points: int, grid: Sequence[float] | None = None) -> tuple[int, np.ndarray]:
        if name not in self.names:
            raise KeyError(f"unknown hyperparameter {name!r}; known: {', '.join(self.names)}")
        j = self.names.index(name)
        if grid is not None:
            return j, np.asarray(grid, dtype=float)
        lo, hi = self.bounds[j]
        return j, np.linspace(lo, hi, n_points)

    def marginal(self, name: str, *, n_points: int = 50, grid: Sequence[float] | None = None) -> MarginalCurve:
        """Marginal curve of one hyperparameter over ``n_points`` evenly spaced points of its
        box, or at the points ``grid`` (e.g. a categorical's indices ``0..k-1``)."""
        j, grid = self._grid(name, n_points, grid)
        per_tree = np.array([t.marginal([j], [grid]) for t in self._trees])  # (T, P)
        return MarginalCurve(name, grid, per_tree.mean(axis=0), per_tree.std(axis=0))

    def pairwise_marginal(
        self,
        a: str,
        b: str,
        *,
        n_points: int = 30,
        grid_a: Sequence[float] | None = None,
        grid_b: Sequence[float] | None = None,
    ) -> PairwiseMarginal:
        """Marginal prediction over an ``n_points x n_points`` grid of ``a`` and ``b`` (or at the
        points ``grid_a`` x ``grid_b``)."""
        ja, ga = self._grid(a, n_points, grid_a)
        jb, gb = self._grid(b, n_points, grid_b)
        if ja == jb:
            raise ValueError("pairwise_marginal needs two different hyperparameters")
        per_tree = np.array([t.marginal([ja, jb], [ga, gb]) for t in self._trees])
        return PairwiseMarginal((a, b), ga, gb, per_tree.mean(axis=0))


def fanova(
    X: np.ndarray,
    y: np.ndarray,
    names: Sequence[str],
    *,
    n_trees: int = 64,
    seed: int = 0,
    bounds: np.ndarray | None = None,
    min_samples_leaf: int = 1,
    max_depth: int | None = None,
    max_features: float = 1.0,
    bootstrap: bool = True,
) -> FanovaResult:
    """Fraction of the variance of ``y`` explained by each hyperparameter and each pair.

    Args:
        X: (n, d) points in analysis coordinates (e.g. log10 learning rate).
        y: (n,) the metric at each point.
        names: d names, one per column of ``X``.
        n_trees: trees in the random forest.
        seed: random seed of the forest.
        bounds: (d, 2) box to integrate over, in the coordinates of ``X``: the searched box
            (``odyssey analyze`` passes each search's recorded bounds); default the min/max of
            ``X`` per column. A categorical (index-encoded) column's box is ``[-0.5, k - 0.5]``.
        min_samples_leaf, max_depth, max_features, bootstrap: passed to
            ``sklearn.ensemble.RandomForestRegressor``.

    Returns:
        A FanovaResult: ``result["lr"]``, ``result[("lr", "hidden_size")]``, marginal curves.

    Raises:
        AnalysisError: shapes disagree, non-finite values, fewer than 2 points, or ``y`` has no
            variance that the forest can explain.
    """
    from sklearn.ensemble import RandomForestRegressor

    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float).ravel()
    names = tuple(names)
    if X.ndim != 2 or X.shape[0] != y.shape[0] or X.shape[1] != len(names):
        raise AnalysisError(
            f"fanova: X must be (n, d) with n = len(y) and d = len(names); got X {X.shape}, "
            f"y {y.shape}, {len(names)} names"
        )
    if len(set(names)) != len(names):
        raise AnalysisError(f"fanova: names must be unique, got {names}")
    if X.shape[0] < 2:
        raise AnalysisError(f"fanova: needs at least 2 points, got {X.shape[0]}")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise AnalysisError("fanova: X and y must be finite (drop diverged or failed trials)")
    if bounds is None:
        bounds = np.stack([X.min(axis=0), X.max(axis=0)], axis=1)
    bounds = np.asarray(bounds, dtype=float)
    if bounds.shape != (len(names), 2) or np.any(bounds[:, 1] < bounds[:, 0]):
        raise AnalysisError(f"fanova: bounds must be (d, 2) with low <= high, got {bounds}")

    forest = RandomForestRegressor(
        n_estimators=n_trees,
        min_samples_leaf=min_samples_leaf,
        max_depth=max_depth,
        max_features=max_features,
        bootstrap=bootstrap,
        random_state=seed,
    ).fit(X, y)

    d = len(names)
    pairs = list(itertools.combinations(range(d), 2))
    per_tree: list[np.ndarray] = []
    trees: list[_TreeBoxes] = []
    for est in forest.estimators_:
        tree = _extract_tree(est.tree_, bounds)
        _, total = tree.mean_and_variance()
        if total <= 0.0:
            continue  # a constant tree explains nothing; the reference skips it too
        main, pair = _tree_variances(tree, bounds)
        per_tree.append(np.concatenate([main, [pair[a, b] for a, b in pairs]]) / total)
        trees.append(tree)
    if not per_tree:
        raise AnalysisError("fanova: the metric has no variance the forest can explain")
    frac = np.array(per_tree)  # (T, d + d(d-1)/2)
    keys: list[Key] = [*names, *((names[a], names[b]) for a, b in pairs)]
    return FanovaResult(
        names=names,
        bounds=bounds,
        fractions={k: float(m) for k, m in zip(keys, frac.mean(axis=0))},
        std={k: float(s) for k, s in zip(keys, frac.std(axis=0))},
        n_samples=int(X.shape[0]),
        n_trees=len(trees),
        _trees=tuple(trees),
    )
