"""Run a study: one Ray Tune ``Tuner`` per (task, variant) search, one MLflow parent run each.

Order of events for ``run_sweep``:

1. check the tracking store and the Ray address (one clear ``ServiceError`` each, before any
   trial starts);
2. claim the study in MLflow (:mod:`odyssey.sweep.identity`): a second live driver, a study
   that already has a sweep (without ``resume=true``) or a resume with another budget is refused;
   the driver holds the study's lease until it ends;
3. connect to Ray (``ray.address``, ``$RAY_ADDRESS``, a Ray job's cluster or a local runtime);
4. for each search, ``study.max_concurrent_searches`` at a time (default: all at once, each in
   its own thread): the parent run (reused on resume); with ``execution=pack`` the search's pack
   executors (:mod:`odyssey.sweep.pack_executor`); then ``Tuner.fit()`` or, with ``resume=true``
   and saved state, ``Tuner.restore(...).fit()`` (finished trials are not rerun, interrupted ones
   continue from their last checkpoint, errored ones are resumed);
5. close the parent run with the counts of trials by MLflow status. A stop signal ends every
   search at once and marks its unfinished runs interrupted (:mod:`odyssey.sweep.interrupts`).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from odyssey import run_schema
from odyssey.errors import ConfigError, ServiceError
from odyssey.sweep import identity, interrupts, mlflow_runs
from odyssey.sweep.connect import loopback_if_local, starts_local_runtime
from odyssey.sweep.outage import TrackingDown, TrackingWatch, guarded
from odyssey.sweep.study import SearchPlan, SweepConfig
from odyssey.tracking import (
    ALL_STATUSES,
    TAG_ERROR,
    TAG_STATUS,
    quiet_mlflow_urls,
    use_short_http_retries,
    where_to_look,
)

__all__ = ["SearchOutcome", "check_ray_address", "resume_command", "run_sweep"]

# Tune snapshots the experiment state at most this often (seconds): a killed driver loses at most
# this much bookkeeping (trials themselves resume from their own checkpoints).
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
# Ray would otherwise print its own large trial tables; our ProgressCallback prints instead.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


# What a packed trial (a proxy: no compute) reserves. Ray Tune refuses zero-resource trials, and a
# CPU share would deadlock where pack executors hold every CPU of a node; memory is what a proxy
# process really costs (its Python worker with torch and MLflow: measured 300-315 MB USS each).
PROXY_RESOURCES = {"memory": 300 * 2**20}


@dataclass
class SearchOutcome:
    task: str
    variant: str
    parent_run_id: str
    counts: dict[str, int] = field(default_factory=dict)  # MLflow status -> number of trial runs
    best: float | None = None
    first_error: str | None = None  # odyssey.error of a failed trial, if any
    marked: bool = True  # False: stopped in an outage, its unfinished runs not yet marked interrupted


def ray_address_parts(address: str | None) -> tuple[str, int] | None:
    """``(host, port)`` of a configured cluster address (``ray.address`` or ``$RAY_ADDRESS``);
    ``None`` for a local runtime (null, ``auto``, ``local``). A malformed one is a ConfigError."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "auto", "local"):
        return None
    try:
        parsed = urlparse(address if "://" in address else f"ray://{address}")
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise ConfigError(f"ray.address={address!r} is invalid: expected HOST:PORT, ray://HOST:PORT, auto or null")
    return host, port


def check_ray_address(address: str | None, *, timeout: float = 3.0) -> None:
    """A configured cluster address (or ``$RAY_ADDRESS``) must accept a TCP connection."""
    parts = ray_address_parts(address)
    if parts is None:
        return
    try:
        with socket.create_connection(parts, timeout=timeout):
            return
    except OSError as exc:
        shown = address or os.environ.get("RAY_ADDRESS")
        raise ServiceError(
            f"Ray cluster at {shown} is not reachable ({exc.strerror or exc}); start it (`ray start --head`) "
            "or fix ray.address / RAY_ADDRESS"
        ) from None


def run_sweep(sweep: SweepConfig) -> list[SearchOutcome]:
    """Run every search of ``sweep`` (see the module docstring)."""

    loopback_if_local(sweep.ray_address)  # before Ray is imported
    import ray

    if not interrupts.handling_signals():  # else `odyssey sweep` handles them since its first line
        interrupts.reset()
    use_short_http_retries()  # outages: the driver retries itself (odyssey.sweep.outage)
    quiet_mlflow_urls()
    run_schema.check_store(sweep.tracking_uri)  # a server must answer; a local store's folder is made
    identity.refuse_if_running(sweep.tracking_uri, sweep.study.name)  # a second driver hears this first
    check_sweep_locally(sweep)
    check_ray_address(sweep.ray_address)
    interrupts.raise_if_stopped(sweep.study.name, resume_command(sweep))
    _import_driver_modules()
    from odyssey.sweep.connect import connect  # a refused token: one ServiceError line

    started = connect(sweep.ray_address, runtime_env=_runtime_env())
    try:
        interrupts.raise_if_stopped(sweep.study.name, resume_command(sweep))  # a signal while Ray started
        _check_devices(sweep, int(ray.cluster_resources().get("GPU", 0)))  # every check before the first MLflow record
        experiment_id = mlflow_runs.ensure_experiment(sweep.tracking_uri, sweep.study.name)
        with identity.claim(sweep, sweep.tracking_uri, experiment_id) as storage:  # one study, one sweep
            return _run_claimed(dataclasses.replace(sweep, storage_path=storage), experiment_id)
    finally:
        if started:
            ray.shutdown()


def check_sweep_locally(sweep: SweepConfig) -> None:
    """The checks that need no running cluster and no tracking server (``odyssey sweep --dry-run``
    runs them too): Ray Tune state that a run without ``resume=true`` would run a second time, and
    a ``train.device`` the trials cannot get where that is known without the cluster (trials that
    reserve no GPU; a local runtime on a machine without CUDA), and the cluster address's form."""
    ray_address_parts(sweep.ray_address)
    _check_fresh(sweep)
    _check_devices(sweep, _local_cuda_devices() if starts_local_runtime(sweep.ray_address) else None)


def _local_cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _import_driver_modules() -> None:
    """Inside a Ray job (Ray 2.60) the job's working_dir copy, which is the driver's cwd and
    sys.path[0], can be deleted and unpacked again while the job runs (when trial workers using
    the same package come and go): imports and os.getcwd() then fail. So import everything the
    driver needs now, and leave that directory (all our paths are absolute already)."""
    import odyssey.model  # noqa: F401  (params counts of failed trials, in the callbacks)
    import odyssey.sweep.callbacks  # noqa: F401
    import odyssey.sweep.pack_executor  # noqa: F401
    import odyssey.sweep.trainable  # noqa: F401


def _parent_tags(sweep: SweepConfig, plan: SearchPlan, extension: int) -> dict[str, str]:
    """The tags a search's parent run is created with (a resumed search keeps its own)."""
    import json

    tags = {
        **mlflow_runs.search_tags(
            sweep.search.name, sweep.scheduler.name, sweep.study.num_samples, plan.primary_metric, plan.lower_is_better
        ),
        run_schema.TAG_OVERRIDES: " ".join(sweep.overrides)[:4000],
        run_schema.TAG_SEARCH_BUDGET: json.dumps(identity.search_budget(sweep, plan), sort_keys=True),
    }
    if extension:
        tags[run_schema.TAG_EXTENSION] = str(extension)
    return tags


def _run_claimed(sweep: SweepConfig, experiment_id: str) -> list[SearchOutcome]:
    """``run_sweep`` once this driver holds the study's lease."""
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        sweep.storage_path.mkdir(parents=True, exist_ok=True)
        os.chdir(sweep.storage_path)
    print(
        f"study {sweep.study.name!r}: {len(sweep.searches)} search(es) x {sweep.study.num_samples} trial(s); "
        f"MLflow {sweep.tracking_uri} (experiment {sweep.study.name!r}); Ray results {sweep.storage_path}\n"
        f"{where_to_look(sweep.tracking_uri, experiment_id)}",
        flush=True,
    )
    try:
        return _run_searches(sweep, experiment_id)
    finally:
        print(where_to_look(sweep.tracking_uri, experiment_id), flush=True)


def _run_searches(sweep: SweepConfig, experiment_id: str) -> list[SearchOutcome]:
    """The searches of the study, ``study.max_concurrent_searches`` at a time (null: all), so the
    cluster does not idle at each search's tail. Each search is its own Tuner in a worker thread
    (Ray schedules all their trials on the cluster); the main thread waits and takes the stop
    signals, which end every search (:mod:`odyssey.sweep.interrupts`)."""
    from concurrent.futures import ThreadPoolExecutor

    plans = list(sweep.searches)
    extension = 0
    if sweep.study.extend:  # new parent runs carry the number of the extension that added them
        extension = identity.extension_number(mlflow_runs.client(sweep.tracking_uri).get_experiment(experiment_id).tags)
    workers = min(sweep.study.max_concurrent_searches or len(plans), len(plans))
    _thread_safe_tune_registries()
    interrupts.install_tune_hook()
    watch = TrackingWatch(sweep.tracking_uri, sweep.outage_grace_s)
    with interrupts.handle_stop_signals(resume_command(sweep)), watch:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="odyssey-search") as pool:
            futures = [pool.submit(_run_search, sweep, plan, experiment_id, extension) for plan in plans]
            try:
                outcomes = [f.result() for f in futures]
            except BaseException:  # one search failed: end the others now, then report it
                interrupts.request_stop("another search failed", 1)
                raise
    reason = interrupts.stop_reason()
    if reason is not None:
        why, code = reason
        if all(o.marked for o in outcomes):
            runs = "its unfinished trial runs are marked interrupted"
        else:
            runs = "its unfinished trial runs could not all be marked interrupted (MLflow did not answer): resume=true marks them"
        raise interrupts.SweepInterrupted(
            f"study {sweep.study.name!r} interrupted ({why}); {runs}. Resume with: {resume_command(sweep)}", exit_code=code
        )
    _fail_if_every_trial_failed(sweep, outcomes)
    return outcomes


def _check_devices(sweep: SweepConfig, cluster_gpus: int | None) -> None:
    """A ``train.device`` the trials cannot get fails now, not in every trial: CUDA on a cluster
    without GPUs, or on trials that reserve none (Ray then hides the GPUs from them).
    ``cluster_gpus``: the cluster's GPUs, ``None`` where not known yet (a remote cluster before
    the driver connects: its GPUs are checked again then)."""
    import math

    from odyssey.config import check_device_available

    packed = sweep.execution.mode == "pack"
    per_trial = sweep.execution.gpu if packed else sweep.study.resources_per_trial.gpu
    for device in sorted({plan.base.train.device for plan in sweep.searches}):
        if not device.startswith("cuda"):
            continue
        if cluster_gpus == 0:
            local = starts_local_runtime(sweep.ray_address)
            where = "this machine (the sweep starts a local Ray runtime)" if local else "the Ray cluster"
            check_device_available(device, cuda_devices=0, where=where)
        if not per_trial:
            key = "execution.gpu" if packed else "study.resources_per_trial.gpu"
            gpus = f"the cluster's {cluster_gpus} GPU(s)" if cluster_gpus else "the cluster's GPUs"
            raise ConfigError(
                f"train.device={device!r} is invalid: the trials reserve no GPU ({key}=0), so Ray hides "
                f"{gpus} from them; reserve one (+resources=gpu or +resources=gpu_quarter) or use train.device=auto"
            )
        check_device_available(device, cuda_devices=max(1, math.ceil(per_trial)), where="each trial")


def _fail_if_every_trial_failed(sweep: SweepConfig, outcomes: list[SearchOutcome]) -> None:
    """A study in which every trial failed is a broken setup (data, environment), not a result."""
    total = sum(sum(o.counts.values()) for o in outcomes)
    failed = sum(o.counts.get("failed", 0) for o in outcomes)
    if total and failed == total:
        first = next((o.first_error for o in outcomes if o.first_error), "no error recorded")
        raise interrupts.SweepFailed(
            f"every trial of study {sweep.study.name!r} failed ({failed} trial(s)); the first error: {first}"
        )


def resume_command(sweep: SweepConfig) -> str:
    """The command that continues this sweep (the same overrides, plus ``resume=true``)."""
    return interrupts.resume_command_for(sweep.overrides)


def _thread_safe_tune_registries() -> None:
    """Serialise Ray Tune's process-wide trainable registry.

    Ray 2.60 fills and flushes its plain dict without a lock; two Tuners starting in two threads
    then fail with "dictionary changed size during iteration". One lock around each of its
    methods makes concurrent searches safe (idempotent)."""
    from ray.tune import registry

    reg = registry._global_registry
    if getattr(reg, "_odyssey_locked", False):
        return
    for name in ("register", "flush_values", "unregister", "unregister_all", "contains", "get"):
        setattr(reg, name, _locked(getattr(reg, name)))
    reg._odyssey_locked = True


_REGISTRY_LOCK = threading.RLock()


def _locked(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _REGISTRY_LOCK:
            return fn(*args, **kwargs)

    return wrapper


def _run_search(sweep: SweepConfig, plan: SearchPlan, experiment_id: str, extension: int) -> SearchOutcome:
    from ray import tune

    from odyssey.sweep.callbacks import MlflowStatusCallback, ProgressCallback
    from odyssey.sweep.trainable import TrialContext, run_trial

    study = sweep.study
    if interrupts.stop_requested():  # stopped before this search's turn: it starts on resume
        return SearchOutcome(plan.task, plan.variant, parent_run_id="")
    packs = sweep.execution.packs if sweep.execution.mode == "pack" else 0
    concurrency = study.max_concurrent_trials
    executors = None
    if packs:  # the executors hold the devices; each trial is a light proxy (pack_executor.py)
        from odyssey.sweep.pack_executor import start_executors

        ex = sweep.execution
        executors = start_executors(
            study.name, plan.key, task=plan.base.task, device=plan.base.train.device, dtype=plan.base.train.dtype,
            capacity=ex.members, packs=ex.packs, cpu=ex.cpu, gpu=ex.gpu,
        )  # fmt: skip
        concurrency = ex.members * ex.packs
        print(f"[{plan.task}/{plan.variant}] {ex.packs} pack(s) of up to {ex.members} trials "
              f"({ex.cpu:g} CPU, {ex.gpu:g} GPU each)", flush=True)  # fmt: skip
    parent = guarded(
        f"start the parent run of {plan.key}",
        mlflow_runs.start_parent_run,
        sweep.tracking_uri,
        experiment_id,
        study=study.name,
        task=plan.task,
        variant=plan.variant,
        tags=_parent_tags(sweep, plan, extension),
        resume=sweep.resume,
    )
    guarded(f"record {plan.key}'s search space", mlflow_runs.record_search_space, sweep.tracking_uri, parent, sweep.space)
    guarded(f"record {plan.key}'s config", mlflow_runs.client(sweep.tracking_uri).log_text, parent, _sweep_yaml(sweep, plan), "config.yaml")
    ctx = TrialContext(
        plan=plan,
        space=sweep.space,
        tracking_uri=sweep.tracking_uri,
        experiment_name=study.name,
        experiment_id=experiment_id,
        parent_run_id=parent,
        study=study.name,
        search=sweep.search.name,
        scheduler=sweep.scheduler.name,
        checkpoint_every=study.checkpoint_every,
        packs=packs,
        system_metrics=sweep.system_metrics,
    )
    resources = {"cpu": study.resources_per_trial.cpu, "gpu": study.resources_per_trial.gpu}
    if packs:
        resources = dict(PROXY_RESOURCES)
    trainable = tune.with_resources(tune.with_parameters(_search_trainable(plan, run_trial), ctx=ctx), resources)
    path = _search_path(sweep, plan)

    if sweep.resume and tune.Tuner.can_restore(str(path)):
        print(f"[{plan.task}/{plan.variant}] resuming from {path}", flush=True)
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=sweep.space.tune_space(),
            tune_config=tune.TuneConfig(
                metric=plan.metric,
                mode=plan.mode,
                num_samples=study.num_samples,
                search_alg=_search_alg(sweep, plan, concurrency),
                scheduler=_scheduler(sweep, plan),
                # random search limits concurrency itself (max_concurrent below); Searchers via Tune
                max_concurrent_trials=concurrency if sweep.search.name != "random" else None,
            ),
            run_config=tune.RunConfig(
                name=path.name,
                storage_path=str(path.parent),
                failure_config=tune.FailureConfig(max_failures=study.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[
                    ProgressCallback(
                        f"{plan.task}/{plan.variant}", plan.metric, plan.mode, study.num_samples, study.progress_interval_s
                    ),
                    MlflowStatusCallback(ctx),
                ],
                verbose=0,
            ),
        )
    try:
        tuner.fit()
    finally:
        if executors is not None:
            from odyssey.sweep.pack_executor import stop_executors

            stop_executors(*executors)
    interrupted = interrupts.stop_requested()
    try:
        if interrupted:
            marked = guarded(f"mark {plan.key}'s runs interrupted", mlflow_runs.mark_interrupted, sweep.tracking_uri, experiment_id, parent)
            print(f"[{plan.task}/{plan.variant}] interrupted: {marked} unfinished trial run(s) marked interrupted", flush=True)
        outcome = guarded(f"count {plan.key}'s trials", _outcome, sweep, plan, experiment_id, parent)
        guarded(
            f"close {plan.key}'s parent run", mlflow_runs.finish_parent_run, sweep.tracking_uri, parent,
            counts=outcome.counts, best=outcome.best, metric=plan.metric, interrupted=interrupted,
        )  # fmt: skip
    except TrackingDown as exc:  # the sweep is stopping during an outage: resume=true reconciles
        print(f"[{plan.task}/{plan.variant}] {exc}; resume=true will mark them", file=sys.stderr, flush=True)
        return SearchOutcome(plan.task, plan.variant, parent, marked=False)
    return outcome


def _sweep_yaml(sweep: SweepConfig, plan: SearchPlan) -> str:
    """The search's composed config (the study's overrides plus its task and variant) as YAML."""
    from omegaconf import OmegaConf

    from odyssey.config import compose

    return OmegaConf.to_yaml(compose("sweep", [*sweep.overrides, f"task={plan.task}", f"variant={plan.variant}"]), resolve=True)


def _search_trainable(plan: SearchPlan, run_trial):
    """``run_trial`` under a name of the search's own: Ray Tune registers trainables by name in one
    process-wide registry, so concurrent searches must not share one (``Tuner.restore`` needs the
    same name again, which the search key gives)."""

    def trainable(config, ctx):
        return run_trial(config, ctx)

    trainable.__name__ = trainable.__qualname__ = f"odyssey_{plan.key}"
    return trainable


def _search_path(sweep: SweepConfig, plan: SearchPlan) -> Path:
    return sweep.storage_path / sweep.study.name / plan.key


def _check_fresh(sweep: SweepConfig) -> None:
    """Without ``resume=true``, a search whose Tune state exists would be run a second time."""
    if sweep.resume:
        return
    folders = [_search_path(sweep, p) for p in sweep.searches if _search_path(sweep, p).is_dir()]
    if not folders:  # nothing there (Ray is not imported: --dry-run runs this too)
        return
    from ray import tune

    existing = [str(f) for f in folders if tune.Tuner.can_restore(str(f))]
    if existing:
        raise ConfigError(
            f"study {sweep.study.name!r} already has Ray Tune state at {existing[0]}"
            + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
            + "; continue it with resume=true, or start a new study with study.name=<new> "
            "(or another study.storage_path)"
        )


def optuna_storage_url(sweep: SweepConfig) -> str:
    """Where TPE keeps its Optuna studies (one per search, named ``<study>/<task>__<variant>``):
    ``search.storage``, else a SQLite file beside the study's Ray Tune state."""
    return sweep.search.storage or f"sqlite:///{sweep.storage_path / sweep.study.name / 'optuna.db'}"


def _search_alg(sweep: SweepConfig, plan: SearchPlan, concurrency: int | None):
    if sweep.search.name == "tpe":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        url = optuna_storage_url(sweep)
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        sampler = optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=sweep.search.n_startup_trials)
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None)
        print(f"[{plan.task}/{plan.variant}] Optuna study {sweep.study.name}/{plan.key}: optuna-dashboard {url}", flush=True)
        return OptunaSearch(sampler=sampler, storage=storage, study_name=f"{sweep.study.name}/{plan.key}")
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=sweep.seed, max_concurrent=concurrency or 0)


def _scheduler(sweep: SweepConfig, plan: SearchPlan):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if sweep.scheduler.name == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=sweep.scheduler.max_t or plan.base.train.max_epochs,
            grace_period=sweep.scheduler.grace_period,
            reduction_factor=sweep.scheduler.reduction_factor,
        )
    return FIFOScheduler()


def _runtime_env() -> dict | None:
    """Ship the ``odyssey`` package to the workers when it is not installed (a source checkout)."""
    import odyssey

    package = Path(list(odyssey.__path__)[0]).resolve()  # a namespace package: no __file__
    if "site-packages" in package.parts or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return None  # installed, or a Ray job whose working_dir already carries the project
    return {"py_modules": [str(package)], "excludes": ["__pycache__", "*.pyc"]}


def _outcome(sweep: SweepConfig, plan: SearchPlan, experiment_id: str, parent: str) -> SearchOutcome:
    """Counts by status, read back from MLflow (the system of record), and the best value."""
    runs = mlflow_runs.trial_runs(sweep.tracking_uri, experiment_id, parent)
    counts = {s: 0 for s in ALL_STATUSES}
    best, first_error = None, None
    key = run_schema.best_val_metric(plan.primary_metric)
    for run in runs:
        status = run.data.tags.get(TAG_STATUS, run_schema.STATUS_RUNNING)
        counts[status] = counts.get(status, 0) + 1
        first_error = first_error or run.data.tags.get(TAG_ERROR)
        value = run.data.metrics.get(key)
        if value is not None and value == value and (best is None or (value < best) == plan.lower_is_better):
            best = value
    outcome = SearchOutcome(plan.task, plan.variant, parent, counts, best, first_error)
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    print(f"[{plan.task}/{plan.variant}] finished: {summary or 'no trials'}"
          + (f"; best {key} {best:.4g}" if best is not None else ""), flush=True)  # fmt: skip
    return outcome
