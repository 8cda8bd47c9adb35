"""The typed study config: tasks x variants x a search space x a trial budget.

``odyssey sweep`` composes ``conf/sweep.yaml`` (the ``train`` config plus the groups
``search_space``, ``search``, ``scheduler`` and an optional ``experiment``) and calls
:func:`load_sweep`, which checks everything that can be checked before a trial starts:

* the study keys and their types (unknown keys fail, with the valid ones);
* every task and variant name (against ``conf/task`` and ``conf/variant``);
* every (task, variant) trial config, composed with ``variant=<v> task=<t>`` and the user's
  overrides, and each search-space bound applied to it (so ``train.lr`` low = 0 fails here);
* the storage path: it must be, or be creatable as, a writable directory.

Example:
    >>> sweep = load_sweep(["experiment=quickstart", "study.num_samples=2"])  # doctest: +SKIP
    >>> [(s.task, s.variant) for s in sweep.searches]  # doctest: +SKIP
    [('adding', 'vanilla'), ('adding', 'nfg')]
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from odyssey.config import (
    TrackingConfig,
    TrialConfig,
    check_fields,
    check_type,
    compose,
    compose_trial,
    group_options,
    typed,
)
from odyssey.errors import ConfigError, OdysseyError
from odyssey.errors import require as _check
from odyssey.sweep.search_space import SearchSpace, translate

__all__ = [
    "ExecutionConfig",
    "RayConfig",
    "ResourcesConfig",
    "SchedulerConfig",
    "SearchConfig",
    "SearchPlan",
    "StudyConfig",
    "SweepConfig",
    "check_no_variant_overrides",
    "load_sweep",
]

SEARCHES = ("random", "tpe")
SCHEDULERS = ("fifo", "asha")
EXECUTION_MODES = ("auto", "single", "pack")
# `execution=auto` on CPU-only trials: measured with `odyssey bench study` (README, trial packs):
# a pack of 8 JSB trials trains 1.42-1.67x the trial-epochs per thread of one trial at a time (both
# on the compiled CPU loop), and 1.22-1.58x those of a plain torch.nn.LSTM loop (FGR: 0.76-0.79x
# of one at a time; the padded 4H x 4H products outweigh the packing there).
CPU_DEFAULT_MODE = "pack"
CPU_PACK_MEMBERS = 8
GPU_PACK_MEMBERS_MAX = 512


@dataclass(frozen=True)
class SearchConfig:
    """The search algorithm: ``random`` (the paper's) or ``tpe`` (Optuna's TPE via Ray Tune)."""

    name: str = "random"
    n_startup_trials: int = 10  # tpe: random trials before TPE models the space
    storage: str | None = None  # tpe: Optuna storage URL; null: sqlite in the study's Ray results folder

    def __post_init__(self) -> None:
        check_fields(self, "search")
        _check(self.name in SEARCHES, "search.name", self.name, f"one of {list(SEARCHES)}")
        _check(self.n_startup_trials >= 1, "search.n_startup_trials", self.n_startup_trials, "an integer >= 1")


@dataclass(frozen=True)
class SchedulerConfig:
    """The trial scheduler: ``fifo`` (every trial runs to its end, the paper) or ``asha``."""

    name: str = "fifo"
    grace_period: int = 2  # asha: epochs before a trial may be stopped
    reduction_factor: float = 3.0
    max_t: int | None = None  # asha: the epoch budget; null = train.max_epochs

    def __post_init__(self) -> None:
        check_fields(self, "scheduler")
        _check(self.name in SCHEDULERS, "scheduler.name", self.name, f"one of {list(SCHEDULERS)}")
        _check(self.grace_period >= 1, "scheduler.grace_period", self.grace_period, "an integer >= 1")
        _check(self.reduction_factor > 1, "scheduler.reduction_factor", self.reduction_factor, "a float > 1")
        _check(self.max_t is None or self.max_t >= 1, "scheduler.max_t", self.max_t, "null or an integer >= 1")


@dataclass(frozen=True)
class ExecutionConfig:
    """How the trials of a search use a device: ``single`` (one process per trial), ``pack``
    (trial packs, :mod:`odyssey.packs`) or ``auto``; see ``conf/execution/auto.yaml``."""

    mode: str = "auto"
    members: Any = "auto"  # an integer >= 1, or "auto"
    packs: int = 1
    cpu: float = 1.0
    gpu: float | None = None

    def __post_init__(self) -> None:
        check_fields(self, "execution")
        _check(self.mode in EXECUTION_MODES, "execution.mode", self.mode, f"one of {list(EXECUTION_MODES)}")
        ok = self.members == "auto" or (isinstance(self.members, int) and not isinstance(self.members, bool) and self.members >= 1)
        _check(ok, "execution.members", self.members, "an integer >= 1 or auto")
        _check(self.packs >= 1, "execution.packs", self.packs, "an integer >= 1")
        _check(self.cpu > 0, "execution.cpu", self.cpu, "a number > 0")
        _check(self.gpu is None or self.gpu >= 0, "execution.gpu", self.gpu, "null or a number >= 0")

    def resolved(self, resources: "ResourcesConfig", num_samples: int, max_concurrent: int | None = None) -> "ExecutionConfig":
        """``auto`` made concrete: pack when trials get GPUs, else the CPU default; the members
        per pack (auto: the whole search on a GPU, up to 512; 8 on CPU); the executor's GPUs.
        ``max_concurrent`` (``study.max_concurrent_trials``) caps a search's packs x members: a
        pack's members are trials running at once."""
        on_gpu = resources.gpu > 0 if self.gpu is None else self.gpu > 0
        mode = self.mode if self.mode != "auto" else ("pack" if on_gpu else CPU_DEFAULT_MODE)
        members = self.members
        if members == "auto":
            members = min(num_samples, GPU_PACK_MEMBERS_MAX) if on_gpu else min(num_samples, CPU_PACK_MEMBERS)
        packs = self.packs
        if mode == "pack" and max_concurrent is not None:
            packs = min(packs, max_concurrent)
            members = max(1, min(int(members), max_concurrent // packs))
        gpu = self.gpu if self.gpu is not None else (1.0 if on_gpu else 0.0)
        return dataclasses.replace(self, mode=mode, members=int(members), packs=packs, gpu=gpu)


@dataclass(frozen=True)
class ResourcesConfig:
    """What one trial reserves: CPUs and GPUs (fractions let several trials share a GPU)."""

    cpu: float = 1.0
    gpu: float = 0.0

    def __post_init__(self) -> None:
        check_fields(self, "study.resources_per_trial")
        _check(self.cpu > 0, "study.resources_per_trial.cpu", self.cpu, "a number > 0")
        _check(self.gpu >= 0, "study.resources_per_trial.gpu", self.gpu, "a number >= 0")
        _check(
            self.gpu <= 1 or float(self.gpu).is_integer(),
            "study.resources_per_trial.gpu", self.gpu, "a fraction <= 1 or a whole number",
        )  # fmt: skip


@dataclass(frozen=True)
class StudyConfig:
    """The ``study`` section. ``num_samples`` is the number of trials per (task, variant) search."""

    name: str = "odyssey"
    tasks: list[str] = field(default_factory=lambda: ["adding"])
    variants: list[str] = field(default_factory=lambda: ["vanilla"])
    num_samples: int = 10
    max_concurrent_trials: int | None = None  # null: as many as the cluster's resources allow
    max_concurrent_searches: int | None = None  # (task, variant) searches at once; null: all
    resources_per_trial: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_failures: int = 2  # retries of a failed trial (exception, lost node), then 'failed'
    storage_path: str | None = None  # Ray Tune results + checkpoints; null: ./ray_results (made absolute)
    checkpoint_every: int = 1  # epochs between trial checkpoints (resume, retries)
    progress_interval_s: float = 10.0  # seconds between progress lines
    # true: add the variants not yet in this finished (or running) study's record as new searches,
    # with its recorded budget and tasks; the record says so (odyssey.sweep.identity)
    extend: bool = False

    def __post_init__(self) -> None:
        check_fields(self, "study")
        _check(bool(self.name) and "/" not in self.name, "study.name", self.name, "a non-empty name without '/'")
        _check(len(self.tasks) > 0, "study.tasks", self.tasks, "a non-empty list of task names")
        _check(len(self.variants) > 0, "study.variants", self.variants, "a non-empty list of variant names")
        _check(self.num_samples >= 1, "study.num_samples", self.num_samples, "an integer >= 1")
        _check(
            self.max_concurrent_trials is None or self.max_concurrent_trials >= 1,
            "study.max_concurrent_trials", self.max_concurrent_trials, "null or an integer >= 1",
        )  # fmt: skip
        _check(
            self.max_concurrent_searches is None or self.max_concurrent_searches >= 1,
            "study.max_concurrent_searches", self.max_concurrent_searches, "null or an integer >= 1",
        )  # fmt: skip
        _check(self.max_failures >= 0, "study.max_failures", self.max_failures, "an integer >= 0")
        _check(self.checkpoint_every >= 1, "study.checkpoint_every", self.checkpoint_every, "an integer >= 1")
        _check(self.progress_interval_s > 0, "study.progress_interval_s", self.progress_interval_s, "a number > 0")
        for key in ("tasks", "variants"):
            dupes = sorted({v for v in getattr(self, key) if getattr(self, key).count(v) > 1})
            _check(not dupes, f"study.{key}", getattr(self, key), f"a list without duplicates (repeated: {dupes})")


@dataclass(frozen=True)
class RayConfig:
    """The ``ray`` section: the cluster to run on and the job server of ``odyssey submit``."""

    address: str | None = None  # null: $RAY_ADDRESS or the Ray job's cluster, else a local runtime
    job_server: str | None = None  # null: $RAY_ADDRESS, e.g. http://HEAD:8265

    def __post_init__(self) -> None:
        check_fields(self, "ray")


@dataclass(frozen=True)
class SearchPlan:
    """One (task, variant) search: its own Tuner, its own MLflow parent run."""

    task: str
    variant: str
    base: TrialConfig  # the composed trial config; sampled hyperparameters are applied to it
    primary_metric: str | None  # None only in a plan checked without the data (--dry-run)
    lower_is_better: bool

    @property
    def key(self) -> str:
        """Name of this search's Ray Tune experiment directory (and parent run)."""
        return f"{self.task}__{self.variant}"

    @property
    def metric(self) -> str:
        """The reported metric the scheduler and the progress view rank by."""
        return f"val/{self.primary_metric}"

    @property
    def mode(self) -> str:
        return "min" if self.lower_is_better else "max"


@dataclass(frozen=True)
class SweepConfig:
    """Everything ``odyssey sweep`` needs, checked."""

    study: StudyConfig
    search: SearchConfig
    scheduler: SchedulerConfig
    execution: ExecutionConfig  # resolved: mode is single or pack, members an integer
    space: SearchSpace
    searches: tuple[SearchPlan, ...]
    tracking_uri: str
    outage_grace_s: float  # tracking.outage_grace_s: a longer MLflow outage stops the sweep
    system_metrics: bool  # tracking.system_metrics
    ray_address: str | None  # null: RAY_ADDRESS or a Ray job's cluster, else a local runtime
    storage_path: Path  # absolute
    seed: int
    resume: bool
    overrides: tuple[str, ...]  # the user's Hydra overrides (recorded on the parent runs)
    warnings: tuple[str, ...] = ()  # what a plan checked without the data could not check


def check_no_variant_overrides(overrides: Sequence[str]) -> None:
    """A study's variants come from ``study.variants`` only: a ``variant=`` or ``variant.*=``
    override (or an experiment's ``variant:`` keys) would change every search's cell while the
    searches keep their labels, so it is refused."""
    from odyssey.variant_selection import select, variant_overrides

    given = variant_overrides(overrides)
    if not given:
        explicit = select("sweep", overrides).explicit
        given = [f"variant.{k}={v}" for k, v in sorted(explicit.items())]
        if not given:
            return
        where = "the experiment (or another config file) sets"
    else:
        where = "the override(s)"
    raise ConfigError(
        f"{where} {' '.join(given)}: in a sweep the variants come from study.variants only (a variant override "
        "would change every search's cell under its own label); put a combined variant in a file "
        "(e.g. conf/variant/np_cifg.yaml with `peepholes: false` and `coupled_input_forget: true`, in your "
        "config folder) and list it: study.variants=[vanilla,np_cifg]. odyssey train takes variant=[a,b] "
        "and variant.*=... for single trials"
    )


def load_sweep(overrides: Sequence[str], *, cwd: Path | None = None, need_data: bool = True) -> SweepConfig:
    """Compose ``conf/sweep.yaml`` with ``overrides`` and check the whole study (see module doc).
    ``need_data=False`` (``--dry-run``): a task whose data cannot be read is a warning of the
    plan, not an error (its metric is then unknown)."""
    overrides = list(overrides)
    cwd = (cwd or Path.cwd()).resolve()
    cfg = compose("sweep", overrides)
    check_no_variant_overrides(overrides)
    resume = check_type("resume", cfg.get("resume", False), bool)
    seed = check_type("seed", cfg.get("seed", 0), int)
    study = _study(cfg)
    resume = resume or study.extend  # an extension continues the recorded study
    search = typed(cfg.get("search"), SearchConfig, "search")
    scheduler = typed(cfg.get("scheduler"), SchedulerConfig, "scheduler")
    execution = typed(cfg.get("execution"), ExecutionConfig, "execution").resolved(
        study.resources_per_trial, study.num_samples, study.max_concurrent_trials
    )
    space = translate(_container(cfg, "search_space"), name="search_space")
    _check_names("task", study.tasks)
    _check_names("variant", study.variants)

    task_meta: dict[str, tuple[str | None, bool]] = {}
    warnings: list[str] = []
    searches = []
    for task in study.tasks:
        for variant in study.variants:
            _, base = compose_trial("sweep", overrides + [f"task={task}", f"variant={variant}"])
            # A search is labelled by its study.variants entry: the parent run, the run names and
            # every trial's variant tag then say the same (a file's own `name:` labels odyssey train).
            base = base.replace(variant=dataclasses.replace(base.variant, name=variant))
            _check_space_against(space, base, task, variant)
            if task not in task_meta:
                try:
                    task_meta[task] = _task_meta(base)
                except OdysseyError as exc:
                    if need_data:
                        raise
                    warnings.append(f"task {task}: its data cannot be read, so the real run will refuse it: {exc}")
                    task_meta[task] = (None, True)
            metric, lower = task_meta[task]
            searches.append(SearchPlan(task, variant, base, metric, lower))

    tracking = typed(cfg.get("tracking"), TrackingConfig, "tracking")
    ray_cfg = typed(cfg.get("ray"), RayConfig, "ray")
    storage = Path(study.storage_path).expanduser() if study.storage_path else cwd / "ray_results"
    storage = (cwd / storage).resolve() if not storage.is_absolute() else storage.resolve()
    _check_writable_dir(storage, study.storage_path)
    return SweepConfig(
        study=study,
        search=search,
        scheduler=scheduler,
        execution=execution,
        space=space,
        searches=tuple(searches),
        tracking_uri=tracking.resolved_uri(cwd),
        outage_grace_s=tracking.outage_grace_s,
        system_metrics=tracking.system_metrics,
        ray_address=ray_cfg.address or None,
        storage_path=storage,
        seed=seed,
        resume=resume,
        overrides=tuple(overrides),
        warnings=tuple(warnings),
    )


def describe_sweep(sweep: SweepConfig) -> str:
    """What ``odyssey sweep --dry-run`` prints: the searches, trial counts, resources, the space."""
    study, ex = sweep.study, sweep.execution
    n = len(sweep.searches)
    epochs = sorted({p.base.train.max_epochs for p in sweep.searches})
    if ex.mode == "pack":
        where = f"trial packs: {ex.packs} pack(s) per search of up to {ex.members} trials, {ex.cpu:g} CPU and {ex.gpu:g} GPU each"
        if study.max_concurrent_trials is not None:
            where += f" (at most study.max_concurrent_trials={study.max_concurrent_trials} trials at once per search)"
    else:
        res = study.resources_per_trial
        where = f"one process per trial: {res.cpu:g} CPU and {res.gpu:g} GPU each"
    lines = [
        f"study {study.name!r}: {n} search(es) x {study.num_samples} trial(s) = {n * study.num_samples} trials, "
        f"up to {'/'.join(map(str, epochs))} epochs each",
        f"  search {sweep.search.name}, scheduler {sweep.scheduler.name}, seed {sweep.seed}, resume={str(sweep.resume).lower()}"
        + (", study.extend=true (adds the variants not yet recorded)" if study.extend else ""),
        f"  execution: {where}",
        f"  MLflow {sweep.tracking_uri}; Ray Tune state {sweep.storage_path / study.name}",
        "  searches:",
        *[f"    {p.task}/{p.variant} ({p.metric}, {p.mode})" if p.primary_metric else f"    {p.task}/{p.variant} (metric known once its data is found)"
          for p in sweep.searches],
        "  search space:",
        *[f"    {part}" for part in sweep.space.describe().split("; ")],
    ]
    return "\n".join(lines)


def _study(cfg: DictConfig) -> StudyConfig:
    raw = _container(cfg, "study")
    for key in ("tasks", "variants"):  # accept `study.tasks=adding` as a one-element list
        if isinstance(raw.get(key), str):
            raw[key] = [raw[key]]
    if raw.get("resources_per_trial") is None:
        raw.pop("resources_per_trial", None)
    return typed(raw, StudyConfig, "study")  # resources_per_trial: a ResourcesConfig (check_fields)


def _check_names(group: str, names: Sequence[str]) -> None:
    """Names of a config group must be files ``<config folder>/<group>/<name>.yaml``."""
    available = list(group_options(group))
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigError(f"study.{group}s: unknown {group}(s) {unknown}; available: {available}")


def _check_space_against(space: SearchSpace, base: TrialConfig, task: str, variant: str) -> None:
    """Apply each bound of the space to the trial config: a bound the config refuses fails now."""
    for probe in space.extremes():
        try:
            base.replace(**probe)
        except ConfigError as exc:
            (section, values), = probe.items()
            (key, value), = values.items()
            raise ConfigError(
                f"search_space.params.{section}.{key}: the bound {value!r} is invalid for "
                f"task={task} variant={variant}: {exc}"
            ) from None


def _check_writable_dir(path: Path, setting: str | None) -> None:
    """``path`` must be a writable directory or creatable as one: check by creating what is missing
    and a probe file in it, then removing them all (Ray creates the directory when it starts).

    Raises:
        ConfigError: naming ``study.storage_path``, the directory and the OS's reason.
    """
    missing = []
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        missing.append(ancestor)
        ancestor = ancestor.parent
    created: list[Path] = []
    try:
        for directory in reversed(missing):  # the outermost first
            step = f"cannot create {directory}"
            directory.mkdir()
            created.append(directory)
        step = f"cannot write in {path}"
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"study.storage_path={setting!r} is invalid: {step}: {reason}; expected a writable directory"
        ) from None
    finally:
        for directory in reversed(created):  # the innermost first
            try:
                directory.rmdir()
            except OSError:
                pass  # something else wrote there meanwhile: leave it


def _task_meta(base: TrialConfig) -> tuple[str, bool]:
    """The task's primary metric and direction (builds the task once: this also checks its data)."""
    try:
        task = base.task.build()
    except OdysseyError:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigError(f"task {base.task.name!r} cannot be built: {exc}") from None
    return task.primary_metric, bool(task.lower_is_better)


def _container(cfg: DictConfig, key: str) -> Any:
    node = cfg.get(key)
    if node is None:
        raise ConfigError(f"the sweep config has no '{key}' section")
    try:
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot resolve '{key}': {str(exc).splitlines()[0]}") from None
