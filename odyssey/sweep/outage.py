"""The sweep driver through an outage of the MLflow tracking server.

* Trials buffer what they cannot log and send it when the server is back; their checkpoints
  carry what is still unsent (:class:`odyssey.tracking.MlflowTrialLogger`).
* Every MLflow call of the driver goes through :func:`guarded`: retried with backoff while the
  server is unavailable, so a Tune callback never dies of an outage.
* :class:`TrackingWatch` polls the server's ``/health`` while the sweep runs. Past
  ``tracking.outage_grace_s`` of continuous outage it stops the sweep the way a signal does
  (:mod:`odyssey.sweep.interrupts`): every search ends, the runs are marked interrupted when the
  server can be reached in the next ``FINAL_WAIT_S`` (else ``resume=true`` reconciles them), and
  the command exits ``EXIT_TRACKING_DOWN``, resumable.
"""

from __future__ import annotations

import sys
import threading
import time
import urllib.request
from typing import Any, Callable

from odyssey.sweep import interrupts
from odyssey.tracking import call_with_retry, tracking_unavailable

__all__ = ["EXIT_TRACKING_DOWN", "FINAL_WAIT_S", "TrackingWatch", "guarded"]

EXIT_TRACKING_DOWN = 75  # EX_TEMPFAIL: try again later (resume=true)
FINAL_WAIT_S = 60.0  # after the stop, how long the driver still tries to mark its runs
POLL_S = 2.0

_WATCH: list["TrackingWatch"] = []  # the running sweep's watch (callbacks are plain, pickled data)


class TrackingWatch:
    """Polls ``uri``'s ``/health`` (http(s) URIs; a local SQLite store has no outages to watch)
    in a daemon thread while the ``with`` block runs; see the module doc."""

    def __init__(self, uri: str, grace_s: float, *, poll_s: float = POLL_S):
        self.uri, self.grace_s, self.poll_s = uri, grace_s, poll_s
        self.down_since: float | None = None
        self.stopped_at: float | None = None  # when this watch stopped the sweep
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "TrackingWatch":
        _WATCH[:] = [self]
        if self.uri.startswith(("http://", "https://")):
            self._thread = threading.Thread(target=self._poll, daemon=True, name="odyssey-tracking-watch")
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        _WATCH.clear()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=5) as response:
                return response.status == 200
        except (OSError, ValueError):
            return False

    def _poll(self) -> None:
        while not self._done.wait(self.poll_s):
            now = time.monotonic()
            if self.healthy():
                if self.down_since is not None:
                    _say(f"MLflow tracking server {self.uri} is back after {now - self.down_since:.0f} s")
                self.down_since = None
                continue
            if self.down_since is None:
                self.down_since = now
                _say(
                    f"MLflow tracking server {self.uri} is unreachable: trials keep training and buffer their "
                    f"metrics; the sweep stops (resumable) if this lasts {self.grace_s:.0f} s (tracking.outage_grace_s)"
                )
            elif now - self.down_since > self.grace_s and self.stopped_at is None:
                self.stopped_at = now
                why = f"MLflow tracking server {self.uri} unreachable for {now - self.down_since:.0f} s"
                if interrupts.request_stop(why, EXIT_TRACKING_DOWN):
                    _say(f"{why}: stopping every search of the study")

    def give_up(self) -> bool:
        """For a driver call retrying through an outage: stop once the sweep is being stopped and
        the final wait is over (then resume=true reconciles what could not be written)."""
        if not interrupts.stop_requested():
            return False
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()
        return time.monotonic() - self.stopped_at > FINAL_WAIT_S


def guarded(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, an MLflow call of the driver, retried while the tracking server is
    unavailable; raises :class:`TrackingDown` (naming ``what``) once the running sweep gives up."""
    watch = _WATCH[0] if _WATCH else None
    told: list[bool] = []

    def on_wait(exc: BaseException) -> None:
        if not told:
            told.append(True)
            _say(f"MLflow unavailable while trying to {what}; retrying ({str(exc).splitlines()[0][:200]})")

    try:
        return call_with_retry(fn, *args, give_up=watch.give_up if watch else _never, on_wait=on_wait, **kwargs)
    except Exception as exc:
        if tracking_unavailable(exc):
            raise TrackingDown(f"could not {what}: the MLflow tracking server is unavailable") from exc
        raise


class TrackingDown(RuntimeError):
    """A driver call that the sweep gave up on during an outage (what it would have written is
    reconciled by ``resume=true``)."""


def _never() -> bool:
    return False


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
