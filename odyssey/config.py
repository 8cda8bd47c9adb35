"""Typed configuration: Hydra composes YAML, this module turns it into frozen dataclasses.

The entry points (``odyssey train``, ``odyssey sweep``...) call :func:`compose` and then
:func:`trial_config`; nothing below them ever sees a ``DictConfig``. Every check that can
fail does so here, before any training starts, with a :class:`ConfigError` that names the key,
the bad value and the valid choices.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import math
import numbers
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from odyssey.cells import VariantSpec, variant_from_mapping
from odyssey.errors import ConfigError
from odyssey.errors import require as _check
from odyssey.tasks import TaskConfig, task_config_from_mapping
from odyssey.tasks.base import LOSS_REDUCTIONS, LOSS_SUM_OVER_STEPS

# One config group per axis of variation: conf/<group>/<option>.yaml (and the same in a user's folder).
CONFIG_GROUPS = ("experiment", "variant", "task", "model", "protocol", "search_space", "search", "scheduler", "execution", "resources")
SWEEP_GROUPS = CONFIG_GROUPS
TRAIN_GROUPS = ("variant", "task", "model", "protocol")

__all__ = [
    "ModelConfig",
    "TrainConfig",
    "TrackingConfig",
    "TrialConfig",
    "check_device_available",
    "check_fields",
    "check_type",
    "compose",
    "compose_trial",
    "config_dir",
    "config_schemas",
    "config_search_path",
    "group_options",
    "register_schemas",
    "take_config_dirs",
    "user_config_dirs",
    "trial_config",
    "typed",
    "valid_top_level_keys",
]


@dataclass(frozen=True)
class ModelConfig:
    """Network shape: ``num_layers`` stacked variant layers and the task's output head."""

    hidden_size: int = 100
    num_layers: int = 1
    bidirectional: bool = False
    init_std: float = 0.1  # weights ~ N(0, init_std^2), as in the paper

    def __post_init__(self) -> None:
        check_fields(self, "model")
        _check(self.hidden_size >= 1, "model.hidden_size", self.hidden_size, "an integer >= 1")
        _check(self.num_layers >= 1, "model.num_layers", self.num_layers, "an integer >= 1")
        _check(self.init_std > 0, "model.init_std", self.init_std, "a float > 0")


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation protocol. Defaults are the paper's (online SGD with Nesterov momentum)."""

    lr: float = 1e-3
    momentum: float = 0.9
    input_noise: float = 0.0  # std of Gaussian noise added to the inputs, training only
    max_epochs: int = 150
    patience: int = 15  # early stopping: epochs without validation improvement
    batch_size: int = 1  # 1 = online SGD (the paper); >1 = padded, masked minibatches
    nesterov: bool = True
    scale_lr_by_momentum: bool = True  # the paper's step size is lr * (1 - momentum)
    clip_norm: float | None = None  # rescale the gradient to this norm (all parameters together)
    clip_value: float | None = None  # clip each gradient value to [-clip_value, clip_value] (the paper's TIMIT: 1)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Sequences per evaluation batch; null: 1 on the CPU where the compiled LSTM loop runs (it
    # runs batch 1 only, and beat batched ATen steps), else 64 (odyssey.train.eval_batch_size).
    eval_batch_size: int | None = None
    # The training objective's scale (see odyssey.tasks.base): the paper's sum over each sequence's
    # scored steps, averaged over the minibatch's sequences; or mean_over_steps.
    loss_reduction: str = LOSS_SUM_OVER_STEPS
    dtype: str = "float32"  # float32 | float64 (weights, activations, data)

    def __post_init__(self) -> None:
        check_fields(self, "train")
        _check(self.lr > 0, "train.lr", self.lr, "a float > 0")
        _check(0 <= self.momentum < 1, "train.momentum", self.momentum, "a float in [0, 1)")
        _check(self.input_noise >= 0, "train.input_noise", self.input_noise, "a float >= 0")
        _check(self.max_epochs >= 1, "train.max_epochs", self.max_epochs, "an integer >= 1")
        _check(self.patience >= 1, "train.patience", self.patience, "an integer >= 1")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")
        _check(
            self.eval_batch_size is None or self.eval_batch_size >= 1, "train.eval_batch_size", self.eval_batch_size,
            "null or an integer >= 1",
        )  # fmt: skip
        _check(
            self.clip_norm is None or self.clip_norm > 0, "train.clip_norm", self.clip_norm, "null or a float > 0"
        )
        _check(
            self.clip_value is None or self.clip_value > 0, "train.clip_value", self.clip_value, "null or a float > 0"
        )
        ok_device = self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device) is not None
        _check(ok_device, "train.device", self.device, "auto, cpu, cuda or cuda:N")
        _check(
            self.loss_reduction in LOSS_REDUCTIONS, "train.loss_reduction", self.loss_reduction,
            f"one of {list(LOSS_REDUCTIONS)}",
        )  # fmt: skip
        _check(self.dtype in ("float32", "float64"), "train.dtype", self.dtype, "float32 or float64")


@dataclass(frozen=True)
class TrackingConfig:
    """Where MLflow records runs. ``uri: null`` means ``$MLFLOW_TRACKING_URI`` or a local SQLite file."""

    uri: str | None = None
    experiment: str = "odyssey"
    enabled: bool = True
    # A sweep rides out tracking-server outages (trials buffer their metrics); one longer than
    # this stops the sweep cleanly, its runs resumable (odyssey.sweep.outage).
    outage_grace_s: float = 600.0
    system_metrics: bool = True  # sweep trials: MLflow's CPU, memory and GPU utilisation metrics

    def __post_init__(self) -> None:
        check_fields(self, "tracking")
        _check(self.outage_grace_s > 0, "tracking.outage_grace_s", self.outage_grace_s, "a number of seconds > 0")

    def resolved_uri(self, root: Path) -> str:
        """``uri``, else :func:`odyssey.run_schema.default_tracking_uri` in ``root``."""
        from odyssey.run_schema import default_tracking_uri

        return self.uri or default_tracking_uri(root)


@dataclass(frozen=True)
class TrialConfig:
    """Everything one training trial needs. Hashable and picklable (Ray ships it to workers)."""

    variant: VariantSpec
    task: TaskConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", check_type("seed", self.seed, int))

    def replace(self, **sections: Any) -> "TrialConfig":
        """Return a copy with fields of sections replaced, e.g. ``replace(train={"lr": 0.1})``."""
        changes = {}
        for name, values in sections.items():
            current = getattr(self, name)
            changes[name] = dataclasses.replace(current, **values) if isinstance(values, dict) else values
        return dataclasses.replace(self, **changes)

    def flat_params(self) -> dict[str, Any]:
        """The effective config as flat ``section.key`` pairs, plus the four searched
        hyperparameters under their bare names (the paper's units) for MLflow params."""
        flat: dict[str, Any] = {"seed": self.seed}
        # The variant's own switches only: a GRU run does not record the LSTM's peepholes.
        flat.update({f"variant.{k}": v for k, v in {"name": self.variant.name, **self.variant.switches()}.items()})
        for section in ("task", "model", "train"):
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                flat[f"{section}.{key}"] = value
        flat.update(
            hidden_size=self.model.hidden_size,
            lr=self.train.lr,
            momentum=self.train.momentum,
            input_noise=self.train.input_noise,
        )
        return flat


# --------------------------------------------------------------------------------------------
# Strict field types: every config dataclass checks its own fields against its type hints, so
# that values from YAML, the command line, a search space or ``replace()`` are checked alike.


def check_fields(config: Any, section: str) -> None:
    """Check every field of the frozen config dataclass ``config`` against its type hint (see
    :func:`check_type`), storing the normalised value (an int given for a float becomes a float).

    Call it first in ``__post_init__``; ``section`` prefixes the key in errors (``train.lr``).
    """
    for name, hint in _field_hints(type(config)).items():
        object.__setattr__(config, name, check_type(f"{section}.{name}", getattr(config, name), hint))


def check_type(key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the type ``hint``, or one ConfigError naming key, value and type.

    Booleans are real booleans (not ``"no"``, ``"yes"`` or ``1``); integers are not booleans or
    floats; floats (ints accepted) and any other number are finite; strings are strings; ``list[X]``
    checks each item; ``X | None`` also accepts null; a config dataclass accepts a mapping of its
    fields (:func:`typed`).

    Example:
        >>> check_type("train.lr", 1, float)
        1.0
        >>> check_type("resume", "no", bool)
        Traceback (most recent call last):
        ...
        odyssey.errors.ConfigError: resume='no' is invalid: expected true or false
    """
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_value(key, value, inner, "null or ")
    return _check_value(key, value, hint, "")


def _check_value(key: str, value: Any, hint: Any, prefix: str) -> Any:
    def need(ok: bool, expected: str) -> None:
        _check(ok, key, value, prefix + expected)

    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is bool:
        need(isinstance(value, bool), "true or false")
        return value
    if hint is int:
        need(is_number and isinstance(value, numbers.Integral), "an integer")
        return int(value)
    if hint is float:
        need(is_number, "a float")
        need(math.isfinite(value), "a finite float")
        return float(value)
    if hint is str:
        need(isinstance(value, str), "a string")
        return value
    if typing.get_origin(hint) is list:
        need(isinstance(value, (list, tuple)), "a list")
        (item,) = typing.get_args(hint)
        return [check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        need(isinstance(value, Mapping), f"a mapping of {', '.join(f.name for f in dataclasses.fields(hint))}")
        return typed(value, hint, key)
    need(not is_number or math.isfinite(value), "a finite number")  # Any: the field checks the rest
    return value


@functools.lru_cache(maxsize=None)
def _field_hints(schema: type) -> dict[str, Any]:
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def check_device_available(device: str, *, cuda_devices: int, where: str = "this machine") -> None:
    """Refuse a ``train.device`` that ``where`` cannot give: ``cuda`` without a CUDA device, or
    ``cuda:N`` with ``cuda_devices <= N``. ``auto`` and ``cpu`` are always available.

    Example:
        >>> check_device_available("cuda:0", cuda_devices=1)
        >>> check_device_available("cuda", cuda_devices=0)
        Traceback (most recent call last):
        ...
        odyssey.errors.ConfigError: train.device='cuda' is invalid: CUDA is not available on this machine; valid here: auto, cpu
    """
    valid = ["auto", "cpu"]
    if cuda_devices > 0:
        valid += ["cuda"] + [f"cuda:{i}" for i in range(cuda_devices)]
    if device in valid:
        return
    if cuda_devices > 0:
        reason = f"{where} has {cuda_devices} CUDA device(s)"
        shown = valid if cuda_devices <= 4 else valid[:4] + [f"... cuda:{cuda_devices - 1}"]
    else:
        reason, shown = f"CUDA is not available on {where}", valid
    raise ConfigError(f"train.device={device!r} is invalid: {reason}; valid here: {', '.join(shown)}")


# --------------------------------------------------------------------------------------------
# Composition


CONFIG_PATH_ENV = "ODYSSEY_CONFIG_PATH"
USER_CONF = "conf"  # ./conf: a folder of the user's own configs, found by convention


def config_dir() -> Path:
    """The package's own ``conf/``: the source tree's, or the installed copy (``odyssey.conf``)."""
    source = Path(__file__).resolve().parents[1] / "conf"
    if (source / "train.yaml").is_file():
        return source
    import odyssey.conf  # the installed copy (pyproject maps conf/ to odyssey.conf)

    return Path(list(odyssey.conf.__path__)[0]).resolve()


def user_config_dirs() -> list[Path]:
    """The user's config folders, searched before the package's ``conf/`` (the first that has a
    file wins; groups list the options of all of them):

    1. every ``--config-dir DIR`` of the command line, in order (:func:`take_config_dirs` puts
       them in ``$ODYSSEY_CONFIG_PATH``, so Ray workers and subprocesses see them too);
    2. ``$ODYSSEY_CONFIG_PATH``: folders separated by ``os.pathsep``; relative ones are relative to
       the current directory, and ``pkg://module`` names a folder shipped as a Python module
       (what ``odyssey submit`` does with the user's folders);
    3. ``./conf``, when it holds any config group folder (``variant/``, ``experiment/`` ...) and is
       not the package's own.

    Each folder is laid out like the package's: ``variant/mine.yaml``, ``experiment/x.yaml``.
    """
    dirs = [_resolve_config_entry(entry) for entry in config_path_entries()]
    local = Path.cwd() / USER_CONF
    if local.is_dir() and any((local / g).is_dir() for g in CONFIG_GROUPS):
        dirs.append(local.resolve())
    package = config_dir()
    unique: list[Path] = []
    for d in dirs:
        if d != package and d not in unique:
            unique.append(d)
    return unique


def config_path_entries() -> list[str]:
    """The entries of ``$ODYSSEY_CONFIG_PATH`` (``os.pathsep``-separated; ``pkg://x`` stays one)."""
    entries: list[str] = []
    for part in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep):
        if entries and entries[-1] == "pkg" and part.startswith("//"):
            entries[-1] += ":" + part
        elif part:
            entries.append(part)
    return entries


def config_search_path() -> tuple[Path, ...]:
    """Where configs are looked up, first match wins: :func:`user_config_dirs`, then the package's."""
    return (*user_config_dirs(), config_dir())


def _resolve_config_entry(entry: str) -> Path:
    if entry.startswith("pkg://"):
        import importlib.util

        name = entry[len("pkg://"):]
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"${CONFIG_PATH_ENV}: {entry}: no importable folder {name!r}")
        return Path(list(spec.submodule_search_locations)[0]).resolve()
    path = Path(entry).expanduser().resolve()
    return _checked_config_dir(path, f"${CONFIG_PATH_ENV} entry {entry!r}")


def _checked_config_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ConfigError(f"{what}: {path} is not a folder (a config folder holds variant/, task/, experiment/ ... folders)")
    if not any((path / g).is_dir() for g in CONFIG_GROUPS) and not any((path / f"{n}.yaml").is_file() for n in ("train", "sweep")):
        raise ConfigError(
            f"{what}: {path} has none of the config group folders {', '.join(g + '/' for g in CONFIG_GROUPS)}"
            " and no primary config (train.yaml, sweep.yaml); point it at the folder that holds them,"
            " e.g. ./conf, not at conf/variant"
        )
    return path


def take_config_dirs(argv: Sequence[str]) -> list[str]:
    """Take every ``--config-dir DIR`` (or ``--config-dir=DIR``, Hydra's ``-cd DIR``) out of
    ``argv``, check each folder and put them first in ``$ODYSSEY_CONFIG_PATH`` (in the given
    order); returns the rest of ``argv``."""
    rest, dirs, args = [], [], list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("--config-dir", "-cd"):
            if not args:
                raise ConfigError(f"{arg} needs a folder: {arg} DIR")
            dirs.append(args.pop(0))
        elif arg.startswith(("--config-dir=", "-cd=")):
            dirs.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    if dirs:
        checked = list(dict.fromkeys(str(_checked_config_dir(Path(d).expanduser().resolve(), f"--config-dir {d}")) for d in dirs))
        before = config_path_entries()
        os.environ[CONFIG_PATH_ENV] = os.pathsep.join(checked + [e for e in before if e not in checked])
    return rest


def group_options(group: str) -> dict[str, Path]:
    """The options of a config group, name -> file, over the whole search path (first wins)."""
    options: dict[str, Path] = {}
    for directory in config_search_path():
        for path in sorted((directory / group).glob("*.yaml")):
            options.setdefault(path.stem, path)
    return dict(sorted(options.items()))


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides. Hydra's errors, malformed YAML
    and top-level keys the config does not have (``+foo=1``) become one-line ConfigErrors."""
    cfg = _hydra_compose(config_search_path(), config_name, tuple(overrides))
    valid = valid_top_level_keys(config_name)
    unknown = sorted(set(cfg) - valid)
    if unknown:
        raise ConfigError(
            f"unknown top-level key(s) {unknown} in the {config_name!r} config; valid top-level keys: {sorted(valid)}"
        )
    return cfg




def groups_help(groups: Sequence[str]) -> str:
    """The config groups and their options, one line each, as ``--help`` lists them."""
    package = config_dir()
    lines = ["config groups (GROUP=OPTION; variant=[a,b] combines variants):"]
    for group in groups:
        options = [name + ("" if path.parent.parent == package else "*") for name, path in group_options(group).items()]
        lines.append(f"  {group:<13} {', '.join(options)}")
    users = user_config_dirs()
    where = ", ".join(map(str, users)) if users else "none (./conf, --config-dir DIR or $" + CONFIG_PATH_ENV + ")"
    lines.append(f"  * from your config folders, searched before the package's: {where}")
    return "\n".join(lines)


def cfg_job(argv: Sequence[str]) -> tuple[list[str], bool]:
    """Take Hydra's ``--cfg job`` (or ``--cfg=job``) out of ``argv``: (the rest, whether it was there)."""
    rest, show, args = [], False, list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("--cfg=job", "-c=job") or (arg in ("--cfg", "-c") and args and args[0] == "job"):
            show = True
            if "=" not in arg:
                args.pop(0)
        elif arg in ("--cfg", "-c") or arg.startswith(("--cfg=", "-c=")):
            raise ConfigError(f"{arg} {args[0] if args else ''}: only --cfg job is supported (the composed config)")
        else:
            rest.append(arg)
    return rest, show


def print_composed(config_name: str, overrides: Sequence[str]) -> None:
    """``--cfg job``: the composed config as YAML (it composes again: the same keys, no groups)."""
    print(OmegaConf.to_yaml(compose(config_name, overrides), resolve=True), end="")


def valid_top_level_keys(config_name: str) -> frozenset[str]:
    """The top-level keys of ``conf/<config_name>.yaml`` composed without overrides: its own keys
    and the node of each group in its defaults list (optional groups such as ``experiment`` and
    ``resources`` write into these nodes, never new ones)."""
    return _default_top_level_keys(config_search_path(), config_name)


@functools.lru_cache(maxsize=16)
def _default_top_level_keys(search_path: tuple[Path, ...], config_name: str) -> frozenset[str]:
    return frozenset(_hydra_compose(search_path, config_name, ()))


def config_schemas() -> dict[str, type]:
    """Each config section and the dataclass that is its schema: the one place its keys, types,
    defaults and checks live (the YAML files state only what differs from these defaults)."""
    from odyssey.sweep.study import ExecutionConfig, RayConfig, SchedulerConfig, SearchConfig, StudyConfig

    return {
        "variant": VariantSpec, "model": ModelConfig, "train": TrainConfig, "tracking": TrackingConfig,
        "study": StudyConfig, "search": SearchConfig, "scheduler": SchedulerConfig,
        "execution": ExecutionConfig, "ray": RayConfig,
    }  # fmt: skip


@functools.cache
def register_schemas() -> None:
    """Register (once per process) every section's defaults with Hydra's ConfigStore as ``schema/<section>``, which
    ``conf/train.yaml`` and ``conf/sweep.yaml`` put first in their defaults lists
    (``- schema/train@train``), so that each group option lists only its differences.

    The nodes are the dataclasses' defaults as plain mappings, not OmegaConf structured configs:
    OmegaConf would convert ``"no"`` to ``false`` and ``"1"`` to ``1`` on the way in, while
    :func:`check_type` refuses both with the key's name when :func:`typed` builds the dataclass."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for section, schema in config_schemas().items():
        store.store(group="schema", name=section, node=dataclasses.asdict(schema()), provider="odyssey")
    from odyssey.tasks.plugins import plugin_task_nodes

    for name, node in plugin_task_nodes().items():  # task=<name> for tasks of other packages
        store.store(group="task", name=name, node=node, provider="odyssey task plugins")


_HYDRA_LOCK = threading.RLock()


def _hydra_compose(search_path: tuple[Path, ...], config_name: str, overrides: tuple[str, ...]) -> DictConfig:
    """Hydra's compose over ``search_path`` (first match wins; the last folder is the package's)."""
    import yaml
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    try:
        with _HYDRA_LOCK:  # Hydra's state is process-global; the sweep's searches run in threads
            GlobalHydra.instance().clear()
            register_schemas()
            *users, package = search_path
            with initialize_config_dir(config_dir=str(package), version_base="1.3"):
                if users:
                    _search_first(users)
                return hydra_compose(config_name=config_name, overrides=list(overrides))
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_message(exc)) from None
    except HydraException as exc:
        if isinstance(exc.__cause__, yaml.YAMLError):
            raise ConfigError(_yaml_message(exc.__cause__)) from None
        raise ConfigError(_hydra_message(exc, config_name)) from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config: {_first_line(exc)}") from None


def _search_first(folders: Sequence[Path]) -> None:
    """Put ``folders`` before the primary config dir in the initialised Hydra's search path.

    ``hydra.searchpath`` appends after the primary dir, so the package's files would win; and with
    a user folder as the primary dir Hydra misses a primary config found only on its searchpath
    (its config cache keeps the first miss). So the loader's own search path gets the folders
    prepended, and its repository is rebuilt from it."""
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    search_path = loader.get_search_path()
    for folder in folders:  # each before "main": in the given order
        search_path.prepend(provider="odyssey user configs", path=f"file://{folder}", anchor=SearchPathQuery(provider="main"))
    loader.repository.initialize_sources(search_path)  # type: ignore[attr-defined]  (ConfigLoaderImpl)


def _yaml_message(exc: Exception) -> str:
    """A YAML parser error as one line: the file, the line and the parser's problem, e.g.
    ``malformed YAML in conf/x.yaml, line 4, column 1: expected ',' or ']', but got '<stream end>'
    (while parsing a flow sequence started at line 3)``."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or _first_line(exc)
    if mark is None:
        return f"malformed YAML: {problem}"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:
        started = f" started at line {context_mark.line + 1}" if context_mark is not None else ""
        problem = f"{problem} ({context}{started})"
    return f"malformed YAML in {mark.name}, line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "msg", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _hydra_message(exc: Exception, config_name: str) -> str:
    """Hydra's error as one readable line: unknown group options list the valid ones, unknown
    keys list the valid keys of their section (or the valid top-level keys)."""
    text = str(exc).strip()
    ambiguous = re.search(r"Ambiguous value for argument '([^'=]+)=([^']*)'", text)
    if ambiguous:  # a comma list is Hydra's multirun sweep syntax
        key, value = ambiguous.groups()
        if key.lstrip("+~") == "variant":
            return (
                f"{key}={value} is ambiguous (a comma list is Hydra's multirun syntax): to combine variants in one "
                f"trial write {key}=[{value}]; to compare them, run a study with study.variants=[{value}]"
            )
        return (
            f"{key}={value} is ambiguous (a comma list is Hydra's multirun syntax, which odyssey does not run): give "
            f"one value, or a list as {key}=[{value}] where the key takes a list; a study searches values (search_space)"
        )
    lexer = re.search(r"LexerNoViableAltException: (\S+)", text)
    if lexer and lexer.group(1).startswith("-"):  # --variant cifg: an argparse habit
        flag = lexer.group(1).lstrip("-")
        return f"{lexer.group(1)} is not an option: configs are set as KEY=VALUE overrides, e.g. {flag}=... (see --help)"
    if lexer:
        return f"cannot parse the override {lexer.group(1)!r}: expected KEY=VALUE, e.g. variant=cifg or train.lr=1e-3"
    missing = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if missing:
        group, name = missing.groups()
        options = re.findall(r"^\t(\S+)$", text.split("Available options", 1)[-1].split("Config search path")[0], re.M)
        return f"unknown {group} {name!r}; valid choices: {', '.join(options) or '(none found)'}"
    bad_key = re.search(r"Could not override '([^']+)'", text)
    if bad_key:
        key = bad_key.group(1)
        section = key.split(".", 1)[0]
        schema = config_schemas()
        if section in schema:
            names = sorted(f.name for f in dataclasses.fields(schema[section]))
            return f"unknown key {key!r}; valid keys of '{section}': {', '.join(names)}"
        if "." not in key:
            return f"unknown top-level key {key!r}; valid top-level keys: {sorted(valid_top_level_keys(config_name))}"
        return f"unknown key {key!r} (use +{key}=... only to add a key the schema knows)"
    return text.splitlines()[0] if text else type(exc).__name__


def typed(node: Any, schema: type, key: str) -> Any:
    """The config dataclass ``schema`` from a config node: unknown keys fail here, and wrong
    types and bad values in the dataclass itself (:func:`check_fields`)."""
    if node is None:
        node = {}
    try:
        container = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot resolve '{key}': {_first_line(exc)}") from None
    names = {f.name for f in dataclasses.fields(schema)}
    unknown = sorted(set(container) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in '{key}'; valid keys: {sorted(names)}")
    return schema(**container)


def compose_trial(config_name: str, overrides: Sequence[str]) -> tuple[DictConfig, TrialConfig]:
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` and type its trial config, with the
    checks that need to know how the variant was selected (:mod:`odyssey.variant_selection`): a
    switch of another family is refused whatever its value, variants of two families cannot be
    combined, and a variant file names its variant (``variant=gruish`` is labelled ``gruish``)."""
    from odyssey.cells import FAMILIES
    from odyssey.variant_selection import select

    cfg = compose(config_name, overrides)
    selection = select(config_name, overrides)
    family = (cfg.get("variant") or {}).get("family", "lstm")
    if family in FAMILIES:  # else trial_config names the unknown family
        selection.check(family)
    trial = trial_config(cfg)
    label = selection.label()
    if label is not None and trial.variant.name is None:
        trial = trial.replace(variant=dataclasses.replace(trial.variant, name=label))
    return cfg, trial


def trial_config(cfg: DictConfig) -> TrialConfig:
    """The typed trial config from a composed ``train`` (or ``sweep``) config (the entry points use
    :func:`compose_trial`, which also checks how the variant was selected)."""
    try:
        variant = variant_from_mapping(_container(cfg, "variant"))
        task = task_config_from_mapping(_container(cfg, "task"))
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None
    return TrialConfig(
        variant=variant,
        task=task,
        model=typed(cfg.get("model"), ModelConfig, "model"),
        train=typed(cfg.get("train"), TrainConfig, "train"),
        seed=cfg.get("seed", 0),
    )


def _container(cfg: DictConfig, key: str) -> dict:
    node = cfg.get(key)
    if node is None:
        raise ConfigError(f"the config has no '{key}' section")
    try:
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot resolve '{key}': {_first_line(exc)}") from None
