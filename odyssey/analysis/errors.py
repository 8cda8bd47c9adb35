"""User-facing errors of the analysis (the CLI prints each as one line)."""

from __future__ import annotations

from odyssey.errors import NotFoundError, OdysseyError


class AnalysisError(OdysseyError, ValueError):
    """The analysis cannot be done on the given data (shapes, too few points, no variance)."""


class StudyNotFoundError(AnalysisError, NotFoundError):
    """No MLflow experiment has the study's name; the message lists the ones that exist."""


class TooFewTrialsError(AnalysisError):
    """A study holds too few usable trials to analyse; the message gives the counts."""
