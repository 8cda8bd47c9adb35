"""``odyssey analyze <study>``: read a study from MLflow, analyse it, print the tables."""

from __future__ import annotations

import argparse

from odyssey.analysis.compare import ComparisonConfig
from odyssey.analysis.fanova import TRIALS_PER_HYPERPARAMETER
from odyssey.analysis.report import MIN_FANOVA_TRIALS, analyze_study, format_terminal
from odyssey.analysis.errors import AnalysisError
from odyssey.analysis.study import load_study, mixed_sweeps
from odyssey.run_schema import default_tracking_uri
from odyssey.tracking import quiet_mlflow_urls


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="odyssey analyze",
        description="Variant comparison (the paper's Welch t-tests and paired signed-rank tests vs vanilla, "
        "Holm-corrected) and fANOVA hyperparameter "
        "importance of a study recorded in MLflow; writes an HTML report, figures and tables.",
    )
    p.add_argument("study", help="study name (= MLflow experiment name)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlruns.db)")
    p.add_argument("--out", default=None, help="output folder (default: analysis/<study>)")
    p.add_argument("--min-trials", type=int, default=MIN_FANOVA_TRIALS, help=f"fewest full-budget trials for a fANOVA fit (default {MIN_FANOVA_TRIALS}); "
                   f"fits with fewer than {TRIALS_PER_HYPERPARAMETER} per hyperparameter are flagged as rough")
    p.add_argument("--n-trees", type=int, default=64, help="trees in the fANOVA forest (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fANOVA forest")
    d = ComparisonConfig()
    p.add_argument("--alpha", type=float, default=d.alpha, help=f"family-wise significance level: significant means p_holm < alpha (default {d.alpha})")
    p.add_argument("--top-fraction", type=float, default=d.top_fraction,
                   help=f"the paired top subset: this fraction of the pairs, best by mean validation metric (default {d.top_fraction}: top50)")
    p.add_argument("--detectable-difference", type=float, default=d.detectable_difference,
                   help=f"the difference (metric units) that the 'pairs needed' estimate plans for, at 80%% power (default {d.detectable_difference})")
    p.add_argument("--primary", choices=("top", "all"), default=d.primary, help="the paired subset whose row gives each conclusion line (default top)")
    p.add_argument("--no-log", action="store_true", help="do not log the outputs to MLflow")
    p.add_argument(
        "--allow-mixed", action="store_true",
        help="analyse a study whose searches have several sweeps or mixed epoch budgets (flagged in the report)",
    )  # fmt: skip
    return p


def main(argv: list[str]) -> int:
    """Run ``odyssey analyze``; returns the exit code.

    User errors (unknown study, unreachable server, no trials) are raised as
    ``odyssey.errors.OdysseyError`` subclasses, which the top-level CLI prints as one line.
    """
    args = build_parser().parse_args(argv)
    if args.min_trials < 2:
        from odyssey.errors import ConfigError

        raise ConfigError(f"--min-trials must be at least 2, got {args.min_trials}")
    quiet_mlflow_urls()  # the conclusions come first; odyssey prints the study's URL itself
    config = ComparisonConfig(
        alpha=args.alpha, top_fraction=args.top_fraction, detectable_difference=args.detectable_difference, primary=args.primary
    )
    study = load_study(args.study, tracking_uri=args.tracking_uri or default_tracking_uri())
    problems = mixed_sweeps(study)
    if problems and not args.allow_mixed:
        raise AnalysisError(
            f"study {args.study!r} is not one sweep: {'; '.join(problems)}. Analyse the sweeps as separate "
            "studies, or pass --allow-mixed to analyse it anyway (the report flags it)"
        )
    report = analyze_study(
        study,
        out_dir=args.out or f"analysis/{args.study}",
        min_trials=args.min_trials,
        log=not args.no_log,
        n_trees=args.n_trees,
        seed=args.seed,
        config=config,
    )
    print(format_terminal(report))
    return 0
