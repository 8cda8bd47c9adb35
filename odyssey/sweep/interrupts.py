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
handlers are installed by :func:`handle_stop_signals`: ``odyssey sweep`` installs them before its
first line (a signal while the config is checked, the study claimed or Ray started ends the
command with the same exit code and resume line, at the next :func:`raise_if_stopped`), and
:func:`keep_handlers_through_ray_init` stops ``ray.init`` from replacing them (Ray 2.60 sets a
SIGTERM handler that exits 15, or 1 for a local head node, with no word).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator, Sequence

from odyssey.errors import OdysseyError

__all__ = [
    "SweepFailed",
    "SweepInterrupted",
    "handle_stop_signals",
    "handling_signals",
    "install_tune_hook",
    "keep_handlers_through_ray_init",
    "raise_if_stopped",
    "resume_command_for",
    "request_stop",
    "stop_reason",
    "stop_requested",
]

_STOP = threading.Event()
_REASON: list[tuple[str, int]] = []  # (why, exit code) of the first stop request
_HANDLING: list[str] = []  # the resume hints of the handle_stop_signals blocks now running


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


def resume_command_for(overrides: Sequence[str]) -> str:
    """The command that continues the sweep of ``overrides`` (the same ones, plus ``resume=true``)."""
    import shlex

    kept = [o for o in overrides if not o.startswith(("resume=", "+resume="))]
    command = "odyssey submit" if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") else "odyssey sweep"
    return " ".join([command, *map(shlex.quote, kept), "resume=true"])


def handling_signals() -> bool:
    """Whether a :func:`handle_stop_signals` block is running (its stop requests are this sweep's)."""
    return bool(_HANDLING)


def raise_if_stopped(study: str, resume_hint: str) -> None:
    """End a sweep that was asked to stop before its searches started: :class:`SweepInterrupted`
    with the signal's exit code (130, 143) and the resume line."""
    reason = stop_reason()
    if reason is not None:
        why, code = reason
        raise SweepInterrupted(f"study {study!r} interrupted ({why}) before its searches started. Resume with: {resume_hint}", exit_code=code)


@contextlib.contextmanager
def keep_handlers_through_ray_init() -> Iterator[None]:
    """Around ``ray.init``: Ray 2.60 sets its own SIGTERM handler there (``sys.exit(15)`` in the
    driver, or, where the driver starts a local head node, kill the node's processes and exit 1),
    which would end the sweep with no word and no resume line. While :func:`handle_stop_signals`
    runs, Ray's setter does nothing and ours are put back afterwards. SIGINT needs nothing: Ray
    defers it to the handler it found (ours) until its critical section ends."""
    if not _HANDLING or threading.current_thread() is not threading.main_thread():
        yield
        return
    import ray._private.utils as ray_utils

    ours = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    setter = getattr(ray_utils, "set_sigterm_handler", None)  # absent in another Ray: ours come back after
    if setter is not None:
        ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        if setter is not None:
            ray_utils.set_sigterm_handler = setter
        for s, handler in ours.items():
            signal.signal(s, handler)


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
    _HANDLING.append(resume_hint)
    try:
        yield
    finally:
        _HANDLING.pop()
        for s, handler in previous.items():
            signal.signal(s, handler)
