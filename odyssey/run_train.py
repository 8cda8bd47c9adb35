"""``odyssey train [overrides]``: one trial from ``conf/train.yaml``, with progress, logged to MLflow
(with its ``config.yaml``); ``odyssey train --from-run RUN_ID`` reruns a recorded one (:mod:`odyssey.rerun`)."""

from __future__ import annotations

import sys
from pathlib import Path

from odyssey.config import (
    TRAIN_GROUPS,
    TrackingConfig,
    cfg_job,
    check_device_available,
    take_config_dirs,
    compose,
    compose_trial,
    groups_help,
    print_composed,
    typed,
)
from odyssey.errors import ConfigError, ServiceError
from odyssey.run_schema import CONFIG_ARTIFACT, TAG_REPRODUCED, TAG_SOURCE_RUN, TAG_THREADS, check_store
from odyssey.tasks import build_task
from odyssey.tracking import (
    ROLE_TRAIN,
    STATUS_FAILED,
    TAG_ROLE,
    MlflowTrialLogger,
    config_yaml,
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
            "  --from-run RUN_ID rebuild a recorded trial from its MLflow run (its config.yaml; the store from\n"
            "                    tracking.uri=... or $MLFLOW_TRACKING_URI), train it again and report whether its\n"
            "                    metrics equal the recorded ones (exit 1 if not); key=value overrides of the trial\n"
            "                    (train.max_epochs=300: go on past its budget) make it a new run naming its source\n"
            "  --config-dir DIR  your own config folder (variant/, task/ ...), searched before the package's;\n"
            "                    ./conf is searched by default\n"
            "  keys: seed, train.*, model.*, task.*, tracking.*\n" + groups_help(TRAIN_GROUPS)
        )
        return 0
    argv, source_run = _take_from_run(argv)
    argv, show = cfg_job(argv)
    if show:
        print_composed("train", argv)
        return 0
    quiet_mlflow_urls()
    source = None
    if source_run is not None:  # the trial's config comes from the run; tracking.* from the command line
        cfg = compose("train", [a for a in argv if a.startswith("tracking.")])
        tracking = typed(cfg.get("tracking"), TrackingConfig, "tracking")
        source, trial = _recorded(tracking.resolved_uri(Path.cwd()), source_run, [a for a in argv if not a.startswith("tracking.")])
    else:
        cfg, trial = compose_trial("train", argv)
        tracking = typed(cfg.get("tracking"), TrackingConfig, "tracking")
    check_device_available(trial.train.device, cuda_devices=_cuda_devices())
    task = build_task(trial.task)  # data errors surface here, before a run is created
    logger = None
    if tracking.enabled:
        uri = tracking.resolved_uri(Path.cwd())
        check_store(uri)  # one line for a server that does not answer or a URI MLflow cannot use
        logger = _start_logger(uri, tracking.experiment, trial, task, source)
        print(f"MLflow: run {logger.run_id} in experiment {tracking.experiment!r} at {uri}", file=sys.stderr)
        experiment_id = logger.client.get_run(logger.run_id).info.experiment_id
        print(where_to_look(uri, experiment_id), file=sys.stderr)
    epochs: list[dict[str, float]] = []

    def callback(report) -> None:
        epochs.append(report.metrics)
        if logger is not None:
            logger(report)

    try:
        result = train_trial(trial, callback=callback, task=task, progress=True)
    except BaseException:
        if logger is not None:
            logger.finish(None, STATUS_FAILED)
        raise
    comparison = None
    if source is not None:
        from odyssey.rerun import compare_with_run

        run, recorded, uri = source
        comparison = compare_with_run(_client(uri), run, epochs, result, same_config=trial == recorded)
    if logger is not None:
        extra = {TAG_REPRODUCED: str(comparison.equal).lower()} if comparison is not None else None
        logger.finish(result, result.status, extra_tags=extra)
    summary = ", ".join(f"{k}={v:.6g}" for k, v in result.final_metrics().items())
    print(f"{trial.variant.label()} on {trial.task.name}: {result.status} ({result.stop_reason}); {summary}")
    if comparison is not None:
        print(f"run {source_run}: {comparison.summary()}")
        return 0 if comparison.equal else 1
    return 0


def _take_from_run(argv: list[str]) -> tuple[list[str], str | None]:
    """``--from-run RUN_ID`` (or ``--from-run=RUN_ID``) out of ``argv``."""
    rest, run_id = [], None
    items = iter(argv)
    for arg in items:
        if arg == "--from-run":
            run_id = next(items, None)
            if not run_id or run_id.startswith("-") or "=" in run_id:
                raise ConfigError("--from-run needs a run id: odyssey train --from-run RUN_ID [tracking.uri=URI] [key=value ...]")
        elif arg.startswith("--from-run="):
            run_id = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return rest, run_id


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _recorded(uri: str, run_id: str, overrides: list[str]):
    """The recorded run (with its own unmodified config and the URI) and the trial to train."""
    from odyssey.rerun import recorded_trial
    from odyssey.run_schema import check_store

    check_store(uri, existing=True)
    client = _client(uri)
    run, trial = recorded_trial(client, run_id, overrides)
    _, original = recorded_trial(client, run_id) if overrides else (run, trial)
    threads = run.data.tags.get(TAG_THREADS, "")
    if threads.isdigit() and int(threads) > 0:  # as many threads as the recorded trial had
        import torch

        torch.set_num_threads(int(threads))
    return (run, original, uri), trial


def _cuda_devices() -> int:
    """The CUDA devices this process can use (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _start_logger(uri: str, experiment: str, trial, task, source=None) -> MlflowTrialLogger:
    """The run of this trial, with its ``config.yaml`` (what ``--from-run`` rebuilds it from);
    ``source``: the recorded run it was rebuilt from (tagged ``odyssey.source_run``)."""
    from odyssey.model import build_model

    params = build_model(trial, task).num_parameters()
    tags = trial_tags(trial, primary_metric=task.primary_metric, lower_is_better=task.lower_is_better, params_count=params)
    tags[TAG_ROLE] = ROLE_TRAIN
    tags.update(task.data_tags())
    if source is not None:
        tags[TAG_SOURCE_RUN] = source[0].info.run_id
    try:
        logger = MlflowTrialLogger.start(uri, experiment, trial, tags=tags, run_name=f"{trial.variant.label()}-{trial.task.name}")
        logger.client.log_text(logger.run_id, config_yaml(trial), CONFIG_ARTIFACT)
        return logger
    except Exception as exc:  # connection refused, bad URI, server error
        raise ServiceError(f"cannot record the run in MLflow at {uri!r}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from None
