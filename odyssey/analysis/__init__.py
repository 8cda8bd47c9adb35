"""Importance analysis of a study: which variants differ from vanilla (the paper's Welch t-tests
and the paired signed-rank test of the study's paired samples, Holm-corrected) and which
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

from odyssey.analysis.compare import ComparisonConfig, WelchResult, comparison_table, paired_table, welch_table, welch_test
from odyssey.analysis.paired import PairedResult, hodges_lehmann, holm, paired_test, pairs_needed
from odyssey.analysis.pairing import Pairing, pair_trials
from odyssey.analysis.fanova import FanovaResult, MarginalCurve, PairwiseMarginal, fanova
from odyssey.analysis.report import AnalysisReport, analyze_study
from odyssey.analysis.space import AnalysisSpace, Hyperparameter
from odyssey.analysis.study import Study, load_study

__all__ = [
    "AnalysisReport",
    "AnalysisSpace",
    "ComparisonConfig",
    "PairedResult",
    "Pairing",
    "FanovaResult",
    "Hyperparameter",
    "MarginalCurve",
    "PairwiseMarginal",
    "Study",
    "WelchResult",
    "analyze_study",
    "comparison_table",
    "fanova",
    "hodges_lehmann",
    "holm",
    "load_study",
    "pair_trials",
    "paired_table",
    "paired_test",
    "pairs_needed",
    "welch_table",
    "welch_test",
]
