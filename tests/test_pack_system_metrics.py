"""System metrics of packed trials (``tracking.system_metrics``): the pack executor, which holds
the device, samples MLflow's ``system/*`` metrics (the node's CPU, memory, disk, network, GPUs)
on each member's own run while it is a member. The executor runs in-process here (as in its Ray
actor, minus Ray), on the session's MLflow server, sampling every 0.3 s instead of 10 s."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from odyssey.config import compose, trial_config

SMALL = ["task.length=10", "task.num_train=24", "task.num_valid=12", "task.num_test=12", "model.hidden_size=4",
         "train.max_epochs=100000", "train.patience=100000", "train.device=cpu"]  # fmt: skip
KEYS = ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes")


def _monitors_running() -> int:
    return sum(t.name in ("SystemMetricsMonitor", "system-metrics-finish") for t in threading.enumerate())


def _drive(executor, members: list[str], seconds: float) -> None:
    """Run pack epochs for ``seconds``: each member's proxy waits for its epoch, as in a sweep."""
    end = time.monotonic() + seconds
    with ThreadPoolExecutor(len(members)) as pool:
        while time.monotonic() < end:
            for event in pool.map(executor.next, members):
                assert event["report"] is not None and event["result"] is None


def test_pack_executor_logs_system_metrics_on_each_members_run(mlflow_server):
    from mlflow import MlflowClient

    from odyssey.sweep.pack_executor import PackExecutor
    from odyssey.tracking import get_or_create_experiment

    client = MlflowClient(mlflow_server)
    exp = get_or_create_experiment(client, "pack-system-metrics")
    runs = {f"t{i}": client.create_run(exp, run_name=f"vanilla-{i:03d}").info.run_id for i in range(3)}
    cfgs = [trial_config(compose("train", [*SMALL, f"seed={i}"])) for i in range(3)]
    executor = PackExecutor(cfgs[0].task, "cpu", "float32", capacity=3, system_metrics_s=0.3)
    for (key, run_id), cfg in zip(runs.items(), cfgs):
        metrics = None if key == "t2" else {"run_id": run_id, "tracking_uri": mlflow_server, "resumed": False}
        assert executor.join(key, cfg, None, None, 1, metrics)  # t2: tracking.system_metrics=false

    _drive(executor, ["t0", "t1", "t2"], 1.5)
    executor.leave("t0")  # its monitor stops when the pack lets it go; t1's goes on
    t0_left = time.time()
    _drive(executor, ["t1", "t2"], 1.5)
    executor.leave("t1")
    executor.leave("t2")
    deadline = time.monotonic() + 30
    while executor.load() or executor.slots or _monitors_running():  # dropped at the loop's next wait
        assert time.monotonic() < deadline, "the members' monitors did not stop"
        time.sleep(0.1)

    last = {}
    for key in ("t0", "t1"):
        metrics = client.get_run(runs[key]).data.metrics
        assert all(k in metrics for k in KEYS), sorted(metrics)
        history = client.get_metric_history(runs[key], KEYS[0])
        assert len(history) >= 2 and all(0 <= m.value <= 100 for m in history)
        last[key] = max(m.timestamp for m in history) / 1000
    assert last["t0"] < t0_left + 1.0 < last["t1"]  # t0 stopped when it left, t1 went on sampling
    assert not [k for k in client.get_run(runs["t2"]).data.metrics if k.startswith("system/")]
