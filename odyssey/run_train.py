"""``odyssey train [overrides]``: one trial from ``conf/train.yaml``, with progress, logged to MLflow."""

from __future__ import annotations

import sys
from pathlib import Path

from odyssey.config import (
    TRAIN_GROUPS,
    TrackingConfig,
    cfg_job,
    check_device_available,
    take_config_dirs,
    compose_trial,
    groups_help,
    print_composed,
    typed,
)
from odyssey.errors import ServiceError
from odyssey.run_schema import check_store
from odyssey.tasks import build_task
from odyssey.tracking import (
    ROLE_TRAIN,
    STATUS_FAILED,
    TAG_ROLE,
    MlflowTrialLogger,
    quiet_mlflow_urls,
    trial_tags,
    where_to_look,
)
from odyssey.train import train_trial

__all__ = ["main"]


def main(argv: list[str]) -> int:
    argv = take_config_dirs(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(
            "usage: odyssey train [--cfg job] [--config-dir DIR] [KEY=VALUE ...]   (Hydra overrides of conf/train.yaml)\n"
            "  e.g. odyssey train variant=cifg task=jsb model.hidden_size=50 train.lr=1e-3 seed=1\n"
            "  --cfg job         print the composed config (YAML) and exit\n"
            "  --config-dir DIR  your own config folder (variant/, task/ ...), searched before the package's;\n"
            "                    ./conf is searched by default\n"
            "  keys: seed, train.*, model.*, task.*, tracking.*\n" + groups_help(TRAIN_GROUPS)
        )
        return 0
    argv, show = cfg_job(argv)
    if show:
        print_composed("train", argv)
        return 0
    quiet_mlflow_urls()
    cfg, trial = compose_trial("train", argv)
    tracking = typed(cfg.get("tracking"), TrackingConfig, "tracking")
    check_device_available(trial.train.device, cuda_devices=_cuda_devices())
    task = build_task(trial.task)  # data errors surface here, before a run is created
    logger = None
    if tracking.enabled:
        uri = tracking.resolved_uri(Path.cwd())
        check_store(uri)  # one line for a server that does not answer or a URI MLflow cannot use
        logger = _start_logger(uri, tracking.experiment, trial, task)
        print(f"MLflow: run {logger.run_id} in experiment {tracking.experiment!r} at {uri}", file=sys.stderr)
        experiment_id = logger.client.get_run(logger.run_id).info.experiment_id
        print(where_to_look(uri, experiment_id), file=sys.stderr)
    try:
        result = train_trial(trial, callback=logger, task=task, progress=True)
    except BaseException:
        if logger is not None:
            logger.finish(None, STATUS_FAILED)
        raise
    if logger is not None:
        logger.finish(result, result.status)
    summary = ", ".join(f"{k}={v:.6g}" for k, v in result.final_metrics().items())
    print(f"{trial.variant.label()} on {trial.task.name}: {result.status} ({result.stop_reason}); {summary}")
    return 0


def _cuda_devices() -> int:
    """The CUDA devices this process can use (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _start_logger(uri: str, experiment: str, trial, task) -> MlflowTrialLogger:
    from odyssey.model import build_model

    params = build_model(trial, task).num_parameters()
    tags = trial_tags(trial, primary_metric=task.primary_metric, lower_is_better=task.lower_is_better, params_count=params)
    tags[TAG_ROLE] = ROLE_TRAIN
    tags.update(task.data_tags())
    try:
        return MlflowTrialLogger.start(uri, experiment, trial, tags=tags, run_name=f"{trial.variant.label()}-{trial.task.name}")
    except Exception as exc:  # connection refused, bad URI, server error
        raise ServiceError(f"cannot record the run in MLflow at {uri!r}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from None
