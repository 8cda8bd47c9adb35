"""Stop signals without Ray: the first one asks every search to stop (the event Ray Tune's loop
watches), the second stops the process at once. The sweep-level behaviour (runs marked
interrupted, exit 130/143, resume) is tested end to end in test_sweep.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DRIVER = """
import sys, time
from odyssey.sweep import interrupts
with interrupts.handle_stop_signals("odyssey sweep study.name=x resume=true"):
    print("READY", flush=True)
    while not interrupts.stop_requested():
        time.sleep(0.05)
    print("STOP", interrupts.stop_reason(), flush=True)
    if len(sys.argv) > 1:  # a slow shutdown that a second signal cuts short
        time.sleep(60)
print("CLEAN EXIT", flush=True)
"""


def start(*args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "READY"
    return proc


def test_first_signal_requests_a_stop_and_names_the_resume_command():
    proc = start()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0  # the driver itself decides how to end (the sweep exits 143)
    assert "STOP ('SIGTERM received', 143)" in out and "CLEAN EXIT" in out
    assert "SIGTERM: stopping every search" in err and "Resume with: odyssey sweep study.name=x resume=true" in err


def test_a_second_ctrl_c_stops_at_once():
    proc = start("slow")
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().startswith("STOP ('SIGINT received', 130)")
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and time.monotonic() - started < 5  # not the 60 s shutdown
    assert "CLEAN EXIT" not in out and "SIGINT again: stopping now" in err


def test_request_stop_keeps_the_first_reason():
    from odyssey.sweep import interrupts

    interrupts.reset()
    try:
        assert interrupts.request_stop("MLflow unreachable", 75) is True
        assert interrupts.request_stop("SIGINT received", 130) is False
        assert interrupts.stop_reason() == ("MLflow unreachable", 75) and interrupts.stop_requested()
    finally:
        interrupts.reset()
    assert not interrupts.stop_requested()
