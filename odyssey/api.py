"""The Python API for notebooks: define a study from overrides, run it, load it back, analyse it.
The ``odyssey`` commands are thin layers over the same functions.

Example (a tiny study on the local machine, recorded in ``./mlruns.db``)::

    import odyssey.api as od

    study = od.study("experiment=quickstart", "study.num_samples=3", "train.max_epochs=2")
    print(study.describe())           # what odyssey sweep --dry-run prints; nothing runs
    study.run()                       # the sweep (Ray Tune), recorded in MLflow
    trials = study.trials()           # one row per trial run: a pandas DataFrame
    report = study.analyze(out_dir="analysis/quickstart")   # Welch and paired tests, fANOVA
    report.conclusions                # one line per variant and task
    report.comparison                 # the variant table, a DataFrame
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from odyssey.sweep.study import SweepConfig, describe_sweep, load_sweep

__all__ = ["StudyHandle", "study"]


@dataclass(frozen=True)
class StudyHandle:
    """A study checked from its overrides (``config``: the typed :class:`SweepConfig`)."""

    config: SweepConfig

    @property
    def name(self) -> str:
        return self.config.study.name

    def describe(self) -> str:
        """The searches, trial counts, resources and search space (``odyssey sweep --dry-run``),
        and whether the study already exists (then :meth:`run` refuses it without ``resume=true``)."""
        from odyssey.sweep.identity import existing_study_note

        note = existing_study_note(self.config) if not self.config.resume else None
        return describe_sweep(self.config) + (f"\nnote: {note}" if note else "")

    def run(self):
        """Run the sweep (``odyssey sweep``); returns one outcome per search (counts by status, best)."""
        from odyssey.sweep.runner import run_sweep

        return run_sweep(self.config)

    def load(self):
        """The study as recorded in MLflow (:class:`odyssey.analysis.Study`)."""
        from odyssey.analysis.study import load_study

        return load_study(self.name, tracking_uri=self.config.tracking_uri)

    def trials(self) -> pd.DataFrame:
        """One row per trial run (see :mod:`odyssey.analysis.study` for the columns)."""
        return self.load().trials

    def analyze(self, *, out_dir: str | Path | None = None, log: bool = True, **options):
        """``odyssey analyze``: the variant comparison and fANOVA (:func:`odyssey.analysis.analyze_study`;
        ``config=odyssey.analysis.ComparisonConfig(alpha=..., top_fraction=...)`` sets the comparison's keys)."""
        from odyssey.analysis.report import analyze_study

        return analyze_study(self.load(), out_dir=out_dir or f"analysis/{self.name}", log=log, **options)


def study(*overrides: str, cwd: str | Path | None = None, config_dirs: Sequence[str | Path] = ()) -> StudyHandle:
    """A study from Hydra overrides of ``conf/sweep.yaml``, checked now (a bad key, value or
    name raises :class:`odyssey.errors.ConfigError` before anything runs). ``config_dirs``: your
    own config folders (variant/, experiment/ ...), searched before the package's from now on in
    this process, as ``--config-dir`` does."""
    from odyssey.config import take_config_dirs

    take_config_dirs([a for d in config_dirs for a in ("--config-dir", str(d))])
    return StudyHandle(load_sweep(list(overrides), cwd=Path(cwd) if cwd else None))
