"""The MLflow run schema: everything an odyssey run carries, in one place. The sweep writes it,
``odyssey analyze``, ``odyssey export`` and ``odyssey clean`` read it back, so it is part of the
public contract (a test runs a real sweep and a real analysis on one store).

Experiments: one per study (the study's name). Experiment tags: ``odyssey.sweep.storage`` (where
its Ray Tune state lives), ``odyssey.sweep.budget`` (what a resume must keep) and
``odyssey.lease`` (the driver running it now).

Runs, by ``odyssey.role``:

* ``train``: one ``odyssey train`` trial.
* ``search``: a (task, variant) search's parent run. Tags: task, variant, search, scheduler,
  num_samples, search_key (``<task>__<variant>``), overrides, search_space (readable); artifacts:
  ``search_space.json`` (the space it sampled from) and ``config.yaml``. Metrics of its own,
  ``search/trials/<status>`` (counts, every status, zeros included) and
  ``search/best_val/<metric>``, so that grouping runs by variant averages trials only.
* ``trial``: a child run of a search (``mlflow.parentRunId``), one per Ray Tune trial.
* ``analysis``: an ``odyssey analyze`` run: the report's files, and its results as metrics under
  the one prefix ``analysis/<task>/<variant>/`` and as the table artifact ``results_table.json``.
* ``plot``: an ``odyssey plot`` run: the PNG, and its curves as metrics.

Trial runs (and ``train`` runs):

* params: the effective config flattened (``model.hidden_size``, ``train.lr``...), plus the
  paper's four hyperparameters under bare names (``hidden_size``, ``lr``, ``momentum``,
  ``input_noise``: short MLflow columns; the analysis reads the config paths).
* per-epoch metrics (step = epoch, 1-based): ``train/loss``, ``val/<metric>`` for each of the
  task's metrics.
* searched hyperparameters (sweep trials) in analysis units, as numeric metrics ``hp/<coordinate>``
  (``hp/log10_lr``...): MLflow sorts and charts metrics by value, params as text.
* final metrics: ``test/<metric>`` and ``best_val/<metric>`` at the best validation epoch,
  ``best_epoch``, ``epochs``.
* tags: the ``TAG_*`` constants, and ``odyssey.task_data.*`` where a task records what it derived
  from its data (``task=sequences``: the normalisation statistics, the classes, the split sizes); ``odyssey.status`` is one of ``ALL_STATUSES``: a final one
  (``STATUSES``), ``running``, or ``interrupted`` (the sweep was stopped; ``resume=true`` continues
  the run, and ``odyssey analyze`` leaves it out until then). MLflow's own run status follows it
  (:func:`mlflow_status`). A failed trial has ``odyssey.error`` and the artifact ``error.txt``.

Nothing here imports MLflow at module level: the trainer side stays importable with torch alone.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from odyssey.errors import NotFoundError, ServiceError

# --------------------------------------------------------------------------------------------
# Roles

ROLE_TRAIN = "train"
ROLE_SEARCH = "search"
ROLE_TRIAL = "trial"
ROLE_ANALYSIS = "analysis"
ROLE_PLOT = "plot"  # an ``odyssey plot`` figure (the gradient flow)

# --------------------------------------------------------------------------------------------
# Run tags

TAG_ROLE = "odyssey.role"  # one of the ROLE_* above
TAG_STUDY = "odyssey.study"
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
TAG_DEVICE = "odyssey.device"  # where the trial trained: "cpu" or "cuda:N (<GPU name>)"
TAG_ERROR = "odyssey.error"  # a failed trial's exception, "Type: message"; the traceback is ERROR_ARTIFACT
TAG_NUM_SAMPLES = "odyssey.num_samples"  # search runs: the trial budget
TAG_OVERRIDES = "odyssey.overrides"  # search runs: the user's Hydra overrides
TAG_SEARCH_KEY = "odyssey.search_key"  # search runs: "<task>__<variant>", found again on resume
TAG_SEARCH_SPACE = "odyssey.search_space"  # search runs: the sampled space, readable
# search runs: what makes its trials comparable with another search's (the task's identity, the
# model, the training protocol, the space, searcher, scheduler, seed, trials), as JSON
TAG_SEARCH_BUDGET = "odyssey.search_budget"
TAG_EXTENSION = "odyssey.extension"  # search runs added by `study.extend=true`: the extension's number
TAG_TASK_DATA_PREFIX = "odyssey.task_data."  # what a task derived from its data (Task.data_tags): task=sequences'
#   input statistics, classes and split sizes
TAG_SOURCE_RUN = "odyssey.source_run"  # `odyssey train --from-run`: the run it was rebuilt from
TAG_REPRODUCED = "odyssey.reproduced"  # --from-run: "true" when every recorded metric came out equal

# Provenance of trial and train runs (odyssey.provenance): what decides a trial's numbers bit for
# bit beyond its config. ``odyssey analyze`` warns when a study's trials differ in TAG_MACHINE_KIND.
TAG_TORCH = "odyssey.torch"  # torch.__version__
TAG_CPU = "odyssey.cpu"  # the CPU's model name
TAG_COMPILED_LOOP = "odyssey.compiled_loop"  # the compiled CPU loop's build key, or "off"
TAG_THREADS = "odyssey.threads"  # torch.get_num_threads() where it trained
TAG_DEVICE_NAME = "odyssey.device_name"  # the GPU's model, or the CPU's
TAG_CUDA = "odyssey.cuda"  # torch.version.cuda (CUDA runs only)
TAG_CUDNN = "odyssey.cudnn"  # torch.backends.cudnn.version() (CUDA runs only)
TAG_ODYSSEY_VERSION = "odyssey.version"
TAG_COMMIT = "odyssey.git_commit"  # where the source is a git checkout
TAG_MACHINE_KIND = "odyssey.machine_kind"  # device model, torch build, compiled loop key: one line

# Experiment tags. mlflow.experimentKind declares the experiment's kind to MLflow (model training,
# not GenAI). MLflow 3.18's UI does not pick its layout from it (measured in Chromium: the browser's
# GenAI / Model training switch or the URL's ?workflowType= decide; tests/test_ui.py keeps a strict
# xfail for the day it does), so odyssey's printed links carry ?workflowType=machine_learning.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# odyssey.sweep.identity
TAG_STORAGE = "odyssey.sweep.storage"
TAG_BUDGET = "odyssey.sweep.budget"
TAG_EXTENSIONS = "odyssey.sweep.extensions"  # JSON list: each `study.extend=true`'s variants and time
TAG_LEASE = "odyssey.lease"

# --------------------------------------------------------------------------------------------
# Statuses (the odyssey.status tag)

STATUS_COMPLETED = "completed"
STATUS_STOPPED = "stopped_early"  # stopped by the scheduler (ASHA)
STATUS_DIVERGED = "diverged"
STATUS_FAILED = "failed"
STATUS_RUNNING = "running"
STATUS_INTERRUPTED = "interrupted"  # the sweep was stopped (signal, outage); resume=true continues it
STATUSES = (STATUS_COMPLETED, STATUS_STOPPED, STATUS_DIVERGED, STATUS_FAILED)  # final: never trained again
ALL_STATUSES = (*STATUSES, STATUS_INTERRUPTED, STATUS_RUNNING)
SEARCH_WITH_FAILURES = "completed_with_failures"  # a search run whose budget ran out with failed trials


def mlflow_status(status: str) -> str:
    """MLflow's run status for an odyssey status: ``FAILED``; ``KILLED`` (interrupted, or stopped
    early by the scheduler); ``RUNNING``; else ``FINISHED``."""
    killed = {STATUS_INTERRUPTED: "KILLED", STATUS_STOPPED: "KILLED"}
    return {STATUS_FAILED: "FAILED", STATUS_RUNNING: "RUNNING", **killed}.get(status, "FINISHED")


def status_of(tags: dict[str, str], mlflow_run_status: str) -> str:
    """A run's odyssey status: its tag; without one (a run from outside odyssey), derived from
    MLflow's run status."""
    if TAG_STATUS in tags:
        return tags[TAG_STATUS]
    if mlflow_run_status in ("RUNNING", "SCHEDULED"):
        return STATUS_RUNNING
    if mlflow_run_status in ("FAILED", "KILLED"):
        return STATUS_FAILED
    return STATUS_COMPLETED


# --------------------------------------------------------------------------------------------
# Metric and artifact names

SEARCH_METRIC_PREFIX = "search/"  # the metrics of search (parent) runs
HP_METRIC_PREFIX = "hp/"  # a trial's searched hyperparameters in analysis units
METRIC_BEST_EPOCH = "best_epoch"
METRIC_EPOCHS = "epochs"


def best_val_metric(metric: str) -> str:
    """A trial's best validation value of task metric ``metric`` (``best_val/mse``)."""
    return f"best_val/{metric}"


def test_metric(metric: str) -> str:
    """A trial's test value at its best validation epoch (``test/mse``)."""
    return f"test/{metric}"


def search_trials_metric(status: str) -> str:
    """A search run's count of trials with ``status`` (``search/trials/completed``)."""
    return f"{SEARCH_METRIC_PREFIX}trials/{status}"


def search_best_metric(metric: str) -> str:
    """A search run's best validation value of task metric ``metric`` (``search/best_val/mse``)."""
    return f"{SEARCH_METRIC_PREFIX}best_val/{metric}"


CONFIG_ARTIFACT = "config.yaml"  # trial and search runs: the resolved config
SEARCH_SPACE_ARTIFACT = "search_space.json"  # search runs: the space, as translate() reads it
ERROR_ARTIFACT = "error.txt"  # failed trial runs: the tail of the traceback

# --------------------------------------------------------------------------------------------
# Where runs are: URIs and the MLflow UI


def default_tracking_uri(cwd: Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a SQLite file ``mlruns.db`` in ``cwd`` (default: the
    current directory)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{((cwd or Path.cwd()) / 'mlruns.db').resolve()}"


def experiment_url(uri: str, experiment_id: str) -> str:
    """Where a study's runs are in the MLflow UI, in the model-training view (MLflow 3 opens an
    experiment in its GenAI view otherwise). For a local store: the URL of ``mlflow ui``."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"


def where_to_look(uri: str, experiment_id: str) -> str:
    """One line telling a user how to open the study in the MLflow UI."""
    url = experiment_url(uri, experiment_id)
    if uri.startswith(("http://", "https://")):
        return f"MLflow UI: {url}"
    return f"MLflow UI: `mlflow ui --backend-store-uri {uri}`, then {url}"


def check_store(uri: str, *, existing: bool = False, timeout: float = 5.0) -> None:
    """Fail fast, naming the URI, when the tracking store cannot be used.

    ``http(s)://`` URIs must answer ``/health`` (else :class:`ServiceError`). A local store
    (``sqlite:///``, ``file:``) must be in a folder that exists or can be created; with
    ``existing`` (readers: analyze, export, clean), a SQLite file must already exist, since a
    missing one is a wrong URI, not a store to create (:class:`~odyssey.errors.NotFoundError`).
    """
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                if response.status == 200:
                    return
                problem = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            problem = str(getattr(exc, "reason", exc))
        raise ServiceError(
            f"MLflow tracking server {uri} is not reachable ({problem}); start it (`mlflow server ...`) "
            "or point tracking.uri / MLFLOW_TRACKING_URI (--tracking-uri) at a running one"
        )
    if uri.startswith(("sqlite:///", "file:")):
        from urllib.parse import urlparse

        path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else Path(urlparse(uri).path)
        if existing and uri.startswith("sqlite:///") and not path.is_file():
            raise NotFoundError(f"no MLflow tracking store at {path} (tracking URI {uri}); pass --tracking-uri")
        folder = path.parent if uri.startswith("sqlite:///") else path
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServiceError(f"MLflow tracking store {uri}: cannot create {folder}: {exc}") from None
        return
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme and scheme not in TRACKING_SCHEMES:
        from odyssey.errors import ConfigError

        raise ConfigError(
            f"tracking.uri={uri!r} is invalid: MLflow cannot track to {scheme}://; expected http(s)://HOST:PORT, "
            "sqlite:///PATH, file:PATH, a database URL (postgresql://, mysql://, mssql://) or databricks"
        )


# The tracking URI schemes MLflow's tracking client accepts (a database URL may name its driver:
# postgresql+psycopg2://).
TRACKING_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks")


def record_differences(old: object, new: object, prefix: str = "", *, only_recorded: bool = False) -> list[str]:
    """Where two recorded JSON values differ, one ``key.path: OLD recorded, NEW now`` each.

    ``only_recorded``: keys that ``old`` does not have are not compared (a record written by an
    older odyssey, which did not record them).

    Example:
        >>> record_differences({"task": {"length": 20}}, {"task": {"length": 50}})
        ['task.length: 20 recorded, 50 now']
    """
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(old) if only_recorded else sorted(set(old) | set(new))
        out: list[str] = []
        for key in keys:
            out += record_differences(old.get(key), new.get(key), f"{prefix}{key}.", only_recorded=only_recorded)
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} recorded, {new!r} now"]

