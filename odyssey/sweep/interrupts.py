"""Stopping a sweep: SIGINT (Ctrl-C), SIGTERM (``docker stop``, systemd, ``odyssey stop ID``) and
an outage of the tracking server all end the *whole* sweep the same way.

1. The first signal (or :func:`request_stop`) sets one process-wide :class:`threading.Event`.
   Every search's Tune loop watches it (it is the event Ray Tune's own ``tune.run`` watches for
   Ctrl-C, see :func:`install_tune_hook`), so each search ends at its next step: Tune saves its
   experiment state with the running trials still unfinished (``resume=true`` continues them
   from their last epoch checkpoint), then stops the trial actors.
2. The driver marks the runs that did not end ``interrupted`` (MLflow status ``KILLED``), says
   how to resume and exits with ``128 + signal`` (130 for SIGINT, 143 for SIGTERM).
3. A second signal stops at once (``os._exit``): nothing more is written, and ``resume=true``
   picks up from whatever was saved.

Searches run in worker threads; only the main thread handles signals (Python's rule), so the
handlers are installed by :func:`handle_stop_signals` around the driver's main loop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

from odyssey.errors import OdysseyError

__all__ = [
    "SweepFailed",
    "SweepInterrupted",
    "handle_stop_signals",
    "install_tune_hook",
    "request_stop",
    "stop_reason",
    "stop_requested",
]

_STOP = threading.Event()
_REASON: list[tuple[str, int]] = []  # (why, exit code) of the first stop request


class SweepInterrupted(OdysseyError):
    """The sweep was stopped (a signal, or the tracking server gone past its grace time); its runs
    are marked interrupted and ``resume=true`` continues it."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class SweepFailed(OdysseyError):
    """Every trial of the sweep failed: a problem of the setup, not of a hyperparameter."""

    exit_code = 1


def request_stop(why: str, exit_code: int) -> bool:
    """Ask every search to end at its next step; True for the first request."""
    if _STOP.is_set():
        return False
    _REASON.append((why, exit_code))
    _STOP.set()
    return True


def stop_requested() -> bool:
    return _STOP.is_set()


def stop_reason() -> tuple[str, int] | None:
    return _REASON[0] if _REASON else None


def reset() -> None:
    """Forget a previous stop (a new sweep in the same process, e.g. the tests)."""
    _STOP.clear()
    _REASON.clear()


def install_tune_hook() -> None:
    """Make Ray Tune's run loop watch our stop event instead of installing its own SIGINT handler.

    ``ray.tune.tune.run`` ends its loop when the event that ``_setup_signal_catching()`` returns is
    set, then saves the experiment with unfinished trials (what ``Tuner.restore`` resumes). That
    event is the only clean way to end a Tune run from outside: a ``Stopper.stop_all`` instead
    marks the running trials TERMINATED and the searcher finished, so a resume would skip them.
    """
    from ray.tune import tune as tune_module

    if not hasattr(tune_module, "_setup_signal_catching"):  # pragma: no cover - a Ray upgrade
        raise RuntimeError(
            "ray.tune.tune._setup_signal_catching is gone: this Ray version needs a new stop hook "
            "(odyssey.sweep.interrupts)"
        )
    tune_module._setup_signal_catching = lambda: _STOP


@contextlib.contextmanager
def handle_stop_signals(resume_hint: str) -> Iterator[None]:
    """SIGINT/SIGTERM stop the sweep (see the module doc) while the block runs; previous handlers
    come back afterwards. Outside the main thread (nothing to install) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        name = signal.Signals(signum).name
        if request_stop(f"{name} received", 128 + signum):
            print(
                f"\n{name}: stopping every search of the study (running trials keep their last epoch "
                f"checkpoint); {name} again stops at once. Resume with: {resume_hint}",
                file=sys.stderr,
                flush=True,
            )
            return
        print(f"\n{name} again: stopping now. Resume with: {resume_hint}", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
