"""Trial packs on Ray Tune: a pack executor actor per device, every member its own Tune trial.

Design (measured against the alternative in the README): each trial of a packed search is still
an ordinary Ray Tune function trial, so the searcher (random, TPE), the scheduler (FIFO, ASHA),
retries, resume, trial ids and the MLflow run of each member work exactly as for unpacked
trials. The trial is a light *proxy* (it reserves 300 MiB of memory, no CPU): instead of training, it joins a
:class:`PackExecutor` (a Ray actor that holds the device and a
:class:`~odyssey.packs.PackTrainer`) and relays its epochs::

    proxy trial                                   PackExecutor (thread: the pack loop)
    join(trial_id, cfg, checkpoint) ----------->  admitted at the next epoch boundary
    loop: next(trial_id) -- blocks ----------->   when every member waits: run_epoch()
          <-- the member's epoch (metrics, checkpoint, result)
          MLflow + tune.report(...)               (ASHA may stop the proxy here)
    finally: leave(trial_id) ------------------>  member removed before the next epoch

System metrics (``tracking.system_metrics``): MLflow's ``system/*`` metrics are the node's (CPU,
memory, disk, network, and the GPUs pynvml finds), so the executor, which holds the device,
samples them for each member while it is a member, on the member's own run: every member of a
pack shows the same curves for the epochs they shared (the proxy's process trains nothing).

Members leave one by one (budget, early stopping, divergence, ASHA) and Tune starts the next
suggested trial in the freed slot (``max_concurrent_trials`` = members x packs): continuous
batching of trials. A proxy that dies without ``leave`` (a lost node, Tune's force kill) is found
by a liveness check of its actor while the pack waits, and removed; Tune then retries it from its
last checkpoint. An executor that dies (its node lost) is restarted by Ray, and its members'
proxies fail and are retried from their checkpoints.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from odyssey.errors import ServiceError

__all__ = ["PackExecutor", "executor_name", "start_executors", "stop_executors"]


def executor_name(study: str, search_key: str, index: int) -> str:
    return f"odyssey-pack:{study}:{search_key}:{index}"


@dataclass
class _Slot:
    cfg: Any
    resume_from: dict | None
    proxy: Any  # the proxy trial's actor handle (liveness)
    checkpoint_every: int
    waiting: bool = False  # the proxy is blocked in next()
    mailbox: dict | None = None
    in_trainer: bool = False
    left: bool = False
    error: str | None = None
    since: float = field(default_factory=time.monotonic)
    monitor: Any = None  # MLflow's SystemMetricsMonitor on the member's run, or None


class PackExecutor:
    """The pack loop of one device (use as a Ray actor with ``max_concurrency`` > members).

    Args:
        task: the search's task config (built once here: its splits move to the device).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        dtype: ``float32`` or ``float64``.
        capacity: the most members at once.
        liveness_s: how often a waiting pack checks proxies that have not come back.
        system_metrics_s: the sampling interval of the members' system metrics.
    """

    def __init__(self, task, device: str, dtype: str, capacity: int, liveness_s: float = 2.0, system_metrics_s: float = 10.0):
        from odyssey.packs import PackTrainer
        from odyssey.train import DTYPES, resolve_device

        self.capacity, self.liveness_s, self.system_metrics_s = capacity, liveness_s, system_metrics_s
        self.trainer = PackTrainer(task.build(), device=resolve_device(device), dtype=DTYPES[dtype])
        self.slots: dict[str, _Slot] = {}
        self.to_remove: set[str] = set()  # trainer members whose slot is gone (left, died, replaced)
        self.cond = threading.Condition()
        self.failure: str | None = None
        self.epochs_run = 0
        threading.Thread(target=self._loop, name="pack-loop", daemon=True).start()

    # -- called by proxies ----------------------------------------------------------------------

    def load(self) -> int:
        with self.cond:
            return sum(not s.left for s in self.slots.values())

    def stats(self) -> dict:
        with self.cond:
            return {"members": self.load(), "epochs_run": self.epochs_run, "device": str(self.trainer.device)}

    def join(
        self, trial_id: str, cfg, resume_from: dict | None, proxy, checkpoint_every: int = 1, system_metrics: dict | None = None
    ) -> bool:
        """Admit a trial (False when the pack is full). A trial that joins again (a Tune retry)
        replaces its earlier self. ``system_metrics``: ``{"run_id", "tracking_uri", "resumed"}``
        of the member's MLflow run, sampled while it is a member; None: none."""
        with self.cond:
            old = self.slots.get(trial_id)
            if old is None and self.load() >= self.capacity:
                return False
            if old is not None:  # removed from the trainer by the loop; a next() still blocked on it ends
                old.left, old.error = True, f"trial {trial_id} joined again (a retry) and replaced this membership"
                if old.in_trainer:
                    self.to_remove.add(trial_id)
                _stop_monitor(old)
            slot = self.slots[trial_id] = _Slot(cfg, resume_from, proxy, checkpoint_every)
            self.cond.notify_all()
        if system_metrics is not None:  # outside the lock: it starts a thread and may call MLflow
            from odyssey.sweep.trainable import start_system_metrics

            run_id, uri, resumed = system_metrics["run_id"], system_metrics["tracking_uri"], system_metrics["resumed"]
            monitor = start_system_metrics(run_id, uri, resumed=resumed, interval_s=self.system_metrics_s)
            with self.cond:
                slot.monitor = monitor
                if slot.left or self.slots.get(trial_id) is not slot:  # it left meanwhile
                    _stop_monitor(slot)
        return True

    def next(self, trial_id: str) -> dict:
        """Block until this member's next epoch is done; its event as plain data."""
        with self.cond:
            slot = self.slots.get(trial_id)
            if slot is None or slot.left:
                raise RuntimeError(f"trial {trial_id} is not a member of this pack (it left or was never admitted)")
            slot.waiting = True
            self.cond.notify_all()
            while slot.mailbox is None and slot.error is None and self.failure is None:
                self.cond.wait()
            if slot.error or self.failure:
                raise RuntimeError(slot.error or self.failure)
            event, slot.mailbox = slot.mailbox, None
            return event

    def leave(self, trial_id: str) -> None:
        with self.cond:
            slot = self.slots.get(trial_id)
            if slot is not None:
                slot.left = True
                self.cond.notify_all()

    # -- the pack loop ----------------------------------------------------------------------------

    def _ready(self) -> bool:
        live = [s for s in self.slots.values() if not s.left]
        return bool(live) and all(s.waiting and s.mailbox is None for s in live)

    def _apply_membership(self) -> None:
        """Under the lock: drop the members that left, admit the new ones."""
        self._drop_left()
        for key, slot in self.slots.items():
            if not slot.in_trainer:
                self.trainer.add(key, slot.cfg, resume_from=slot.resume_from)
                slot.in_trainer, slot.resume_from = True, None

    def _check_liveness(self) -> None:
        """Under the lock: proxies that neither wait nor left are checked; dead ones are removed."""
        for slot in self.slots.values():
            if slot.left or slot.waiting or time.monotonic() - slot.since < self.liveness_s:
                continue
            if not _alive(slot.proxy):
                slot.left = True

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self._ready():
                    self._check_liveness()
                    self._drop_left()
                    if self._ready():
                        break
                    self.cond.wait(timeout=self.liveness_s)
                try:
                    self._apply_membership()
                except Exception as exc:  # noqa: BLE001 - a member that cannot be admitted fails alone
                    self._fail_new_members(exc)
                    continue
                members = {k: s for k, s in self.slots.items() if not s.left}
            try:
                events = self.trainer.run_epoch()
                payloads = {e.key: _payload(e, members[e.key].checkpoint_every) for e in events}
            except Exception as exc:  # noqa: BLE001 - surfaces in every member's next()
                with self.cond:
                    self.failure = f"the pack failed: {type(exc).__name__}: {exc}"
                    self.cond.notify_all()
                return
            with self.cond:
                self.epochs_run += 1
                for key, payload in payloads.items():
                    slot = self.slots[key]
                    slot.mailbox, slot.waiting, slot.since = payload, False, time.monotonic()
                    if payload["result"] is not None:
                        slot.in_trainer = False  # the trainer let it go; its proxy leaves next
                self.cond.notify_all()

    def _drop_left(self) -> None:
        """Under the lock: forget the slots that left and take their members out of the trainer."""
        for key in [k for k, s in self.slots.items() if s.left]:
            slot = self.slots.pop(key)
            _stop_monitor(slot)
            if slot.in_trainer:
                self.to_remove.add(key)
        for key in self.to_remove:
            self.trainer.remove(key)
        self.to_remove.clear()

    def _fail_new_members(self, exc: Exception) -> None:
        for slot in self.slots.values():
            if not slot.in_trainer and not slot.left:
                slot.error, slot.left = f"cannot join the pack: {type(exc).__name__}: {exc}", True
        self.cond.notify_all()


def _stop_monitor(slot: _Slot) -> None:
    """End a member's system metrics (in a thread of its own: it flushes to MLflow)."""
    monitor, slot.monitor = slot.monitor, None
    if monitor is not None:
        threading.Thread(target=monitor.finish, name="system-metrics-finish", daemon=True).start()


def _payload(event, checkpoint_every: int) -> dict:
    """A PackEvent as plain data for the proxy (the checkpoint only when one is due)."""
    report = event.report
    out = {"report": None, "result": event.result}
    if report is not None:
        due = report.result is not None or report.epoch % checkpoint_every == 0
        out["report"] = {
            "epoch": report.epoch,
            "metrics": report.metrics,
            "best_epoch": report.best_epoch,
            "improved": report.improved,
            "checkpoint": report.checkpoint() if due else None,
            "result": report.result,
        }
    return out


def _alive(handle) -> bool:
    """Whether a proxy trial's actor still lives (Ray's control store; a failed lookup counts as alive)."""
    if handle is None:
        return True
    try:
        from ray._private import state

        info = state.actors(actor_id=handle._actor_id.hex())
        return not info or info.get("State") != "DEAD"
    except Exception:  # noqa: BLE001 - unknown: keep waiting rather than drop a live member
        return True


def start_executors(study: str, search_key: str, *, task, device: str, dtype: str, capacity: int, packs: int, cpu: float, gpu: float):
    """The search's pack executors as Ray actors (restarted by Ray if their node dies), and the
    placement group that reserves their devices all at once (so concurrent searches never hold
    half of what each needs). Keep both until the search ends; :func:`stop_executors` after."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundle = {"CPU": cpu, **({"GPU": gpu} if gpu else {})}
    group = placement_group([bundle] * packs, strategy="SPREAD")
    ray.get(group.ready())  # all of this search's devices, or wait for them
    actor = ray.remote(PackExecutor)
    handles = []
    for i in range(packs):
        handles.append(
            actor.options(
                name=executor_name(study, search_key, i),
                num_cpus=cpu,
                num_gpus=gpu,
                max_concurrency=capacity + 8,
                max_restarts=-1,
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i),
            ).remote(task, device, dtype, capacity)
        )
    try:
        ray.get([h.load.remote() for h in handles])  # constructed (the task's data is loaded)
    except ray.exceptions.RayError as exc:
        stop_executors(handles, group)
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        raise ServiceError(
            f"search {search_key}: its pack executor could not start ({lines[-1] if lines else exc}); "
            "check train.device / execution.gpu against the cluster, or run it unpacked with execution=single"
        ) from None
    return handles, group


def stop_executors(handles, group) -> None:
    import ray
    from ray.util.placement_group import remove_placement_group

    for handle in handles:
        ray.kill(handle)
    remove_placement_group(group)
