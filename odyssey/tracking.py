"""MLflow adapter: the names every odyssey run carries, and a logger for one trial.

Run schema (the analysis reads it back, so it is part of the public contract):

* params: the effective config flattened (``model.hidden_size``, ``train.lr``...), plus the four
  searched hyperparameters under bare names in the paper's units: ``hidden_size``, ``lr``,
  ``momentum``, ``input_noise``.
* per-epoch metrics (step = epoch, 1-based): ``train/loss``, ``val/<metric>`` for each of the
  task's metrics.
* final metrics: ``test/<metric>`` and ``best_val/<metric>`` at the best validation epoch,
  ``best_epoch``, ``epochs``.
* tags: see the ``TAG_*`` constants; ``odyssey.status`` is one of ``STATUSES``.
"""

from __future__ import annotations

TAG_ROLE = "odyssey.role"  # "train" (single trial), "search" (parent run), "trial" (child run)
TAG_TASK = "odyssey.task"
TAG_VARIANT = "odyssey.variant"
TAG_STATUS = "odyssey.status"
TAG_PARAMS_COUNT = "odyssey.params_count"
TAG_SEED = "odyssey.seed"
TAG_PRIMARY_METRIC = "odyssey.primary_metric"
TAG_LOWER_IS_BETTER = "odyssey.lower_is_better"
TAG_SEARCH = "odyssey.search"  # search algorithm: random | tpe
TAG_SCHEDULER = "odyssey.scheduler"  # fifo | asha
TAG_BUDGET_REACHED = "odyssey.budget_reached"  # "true" when the trial ran its full epoch budget
TAG_TRIAL_ID = "odyssey.trial_id"  # Ray Tune trial id
TAG_STUDY = "odyssey.study"

STATUS_COMPLETED = "completed"
STATUS_STOPPED = "stopped_early"  # stopped by the scheduler (ASHA)
STATUS_DIVERGED = "diverged"
STATUS_FAILED = "failed"
STATUS_RUNNING = "running"
STATUSES = (STATUS_COMPLETED, STATUS_STOPPED, STATUS_DIVERGED, STATUS_FAILED)

SEARCHED_PARAMS = ("hidden_size", "lr", "momentum", "input_noise")
