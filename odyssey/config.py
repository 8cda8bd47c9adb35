"""Typed configuration: Hydra composes YAML, this module turns it into frozen dataclasses.

The entry points (``odyssey train``, ``odyssey sweep``...) call :func:`compose` and then
:func:`trial_config`; nothing below them ever sees a ``DictConfig``. Every check that can
fail does so here, before any training starts, with a :class:`ConfigError` that names the key,
the bad value and the valid choices.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from odyssey.cells import VariantSpec, variant_from_mapping
from odyssey.errors import ConfigError
from odyssey.errors import require as _check
from odyssey.tasks import TaskConfig, task_config_from_mapping
from odyssey.tasks.base import LOSS_REDUCTIONS, LOSS_SUM_OVER_STEPS

__all__ = [
    "ModelConfig",
    "TrainConfig",
    "TrackingConfig",
    "TrialConfig",
    "compose",
    "config_dir",
    "trial_config",
    "typed",
]


@dataclass(frozen=True)
class ModelConfig:
    """Network shape: ``num_layers`` stacked variant layers and the task's output head."""

    hidden_size: int = 100
    num_layers: int = 1
    bidirectional: bool = False
    init_std: float = 0.1  # weights ~ N(0, init_std^2), as in the paper

    def __post_init__(self) -> None:
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
    clip_norm: float | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_batch_size: int = 64
    # The training objective's scale (see odyssey.tasks.base): the paper's sum over each sequence's
    # scored steps, averaged over the minibatch's sequences; or mean_over_steps.
    loss_reduction: str = LOSS_SUM_OVER_STEPS
    dtype: str = "float32"  # float32 | float64 (weights, activations, data)

    def __post_init__(self) -> None:
        _check(self.lr > 0, "train.lr", self.lr, "a float > 0")
        _check(0 <= self.momentum < 1, "train.momentum", self.momentum, "a float in [0, 1)")
        _check(self.input_noise >= 0, "train.input_noise", self.input_noise, "a float >= 0")
        _check(self.max_epochs >= 1, "train.max_epochs", self.max_epochs, "an integer >= 1")
        _check(self.patience >= 1, "train.patience", self.patience, "an integer >= 1")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")
        _check(self.eval_batch_size >= 1, "train.eval_batch_size", self.eval_batch_size, "an integer >= 1")
        _check(
            self.clip_norm is None or self.clip_norm > 0, "train.clip_norm", self.clip_norm, "null or a float > 0"
        )
        ok_device = self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
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

    def resolved_uri(self, root: Path) -> str:
        if self.uri:
            return self.uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{(root / 'mlruns.db').resolve()}"


@dataclass(frozen=True)
class TrialConfig:
    """Everything one training trial needs. Hashable and picklable (Ray ships it to workers)."""

    variant: VariantSpec
    task: TaskConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

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
        for section in ("variant", "task", "model", "train"):
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
# Composition


def config_dir() -> Path:
    """The ``conf/`` directory: ``$ODYSSEY_CONFIG_DIR``, the source tree's, or the installed copy."""
    if os.environ.get("ODYSSEY_CONFIG_DIR"):
        return Path(os.environ["ODYSSEY_CONFIG_DIR"]).resolve()
    source = Path(__file__).resolve().parents[1] / "conf"
    if (source / "train.yaml").is_file():
        return source
    import odyssey.conf  # the installed copy (pyproject maps conf/ to odyssey.conf)

    return Path(list(odyssey.conf.__path__)[0]).resolve()


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides; errors become ConfigError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except HydraException as exc:
        raise ConfigError(_hydra_message(exc)) from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    return cfg


def _hydra_message(exc: Exception) -> str:
    """Hydra's error as one readable line: unknown group options list the valid ones, unknown
    keys list the valid keys of their section."""
    import re

    text = str(exc).strip()
    missing = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if missing:
        group, name = missing.groups()
        options = re.findall(r"^\t(\S+)$", text.split("Available options", 1)[-1].split("Config search path")[0], re.M)
        return f"unknown {group} {name!r}; valid choices: {', '.join(options) or '(none found)'}"
    bad_key = re.search(r"Could not override '([^']+)'", text)
    if bad_key:
        key = bad_key.group(1)
        section = key.split(".", 1)[0]
        schema = {"train": TrainConfig, "model": ModelConfig, "tracking": TrackingConfig, "variant": VariantSpec}
        if section in schema:
            names = sorted(f.name for f in dataclasses.fields(schema[section]))
            return f"unknown key {key!r}; valid keys of '{section}': {', '.join(names)}"
        return f"unknown key {key!r} (use +{key}=... only to add a key the schema knows)"
    return text.splitlines()[0] if text else type(exc).__name__


def typed(node: Any, schema: type, key: str) -> Any:
    """Merge a config node onto a dataclass schema; unknown keys and wrong types fail here."""
    if node is None:
        node = {}
    container = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    names = {f.name for f in dataclasses.fields(schema)}
    unknown = sorted(set(container) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in '{key}'; valid keys: {sorted(names)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), container)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad value in '{key}': {exc.msg if hasattr(exc, 'msg') else exc}") from None
    return schema(**OmegaConf.to_container(merged, resolve=True))


def trial_config(cfg: DictConfig) -> TrialConfig:
    """The typed trial config from a composed ``train`` (or ``sweep``) config."""
    try:
        variant = variant_from_mapping(_container(cfg, "variant"))
        task = task_config_from_mapping(_container(cfg, "task"))
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None
    seed = cfg.get("seed", 0)
    _check(isinstance(seed, int), "seed", seed, "an integer")
    return TrialConfig(
        variant=variant,
        task=task,
        model=typed(cfg.get("model"), ModelConfig, "model"),
        train=typed(cfg.get("train"), TrainConfig, "train"),
        seed=int(seed),
    )


def _container(cfg: DictConfig, key: str) -> dict:
    node = cfg.get(key)
    if node is None:
        raise ConfigError(f"the config has no '{key}' section")
    try:
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot resolve '{key}': {exc}") from None
