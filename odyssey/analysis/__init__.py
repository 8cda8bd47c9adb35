"""Importance analysis of a study: which variants differ from vanilla (Welch t-tests) and which
hyperparameters matter (fANOVA), read back from MLflow. The hyperparameters, their analysis
coordinates and the boxes fANOVA integrates over come from the search space each search recorded
(:mod:`odyssey.analysis.space`).

Example:
    >>> from odyssey.analysis import fanova
    >>> import numpy as np
    >>> X = np.random.default_rng(0).uniform(size=(300, 2))
    >>> fanova(X, X[:, 0], ["a", "b"], n_trees=8).ranking()[0]
    'a'
"""

from odyssey.analysis.compare import WelchResult, welch_table, welch_test
from odyssey.analysis.fanova import FanovaResult, MarginalCurve, PairwiseMarginal, fanova
from odyssey.analysis.report import AnalysisReport, analyze_study
from odyssey.analysis.space import AnalysisSpace, Hyperparameter
from odyssey.analysis.study import Study, load_study

__all__ = [
    "AnalysisReport",
    "AnalysisSpace",
    "FanovaResult",
    "Hyperparameter",
    "MarginalCurve",
    "PairwiseMarginal",
    "Study",
    "WelchResult",
    "analyze_study",
    "fanova",
    "load_study",
    "welch_table",
    "welch_test",
]
