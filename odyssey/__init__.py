"""odyssey: "LSTM: A Search Space Odyssey" as a service.

Packages: :mod:`odyssey.cells` (LSTM variants), :mod:`odyssey.tasks` (benchmarks),
:mod:`odyssey.train` (one trial), :mod:`odyssey.sweep` (Ray Tune studies tracked in MLflow),
:mod:`odyssey.analysis` (Welch t-tests and fANOVA). The command line is ``odyssey``; notebooks use
:mod:`odyssey.api` (``odyssey.api.study(*overrides)`` -> run, load, analyze).
"""

__version__ = "0.1.0"
