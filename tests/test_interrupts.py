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


def _children(pid: int) -> list[str]:
    """The command names of ``pid``'s descendants (from /proc)."""
    import os

    kids: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        names[int(entry)] = name
        kids.setdefault(int(rest[1]), []).append(int(entry))
    found, todo = [], list(kids.get(pid, []))
    while todo:
        p = todo.pop()
        found.append(names.get(p, "?"))
        todo += kids.get(p, [])
    return found


import pytest  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_ray_starts_ends_the_sweep_with_its_code_and_the_resume_line(tmp_path, sig, code):
    """Measured before #20: SIGINT while the local Ray runtime started was lost (the study ran to
    exit 0), and SIGTERM exited 15 with no word. The signal is sent once the driver has started
    Ray's GCS server (ray.init is running) and before any trial ran."""
    overrides = [
        "study.name=sig-start", "study.tasks=[adding]", "study.variants=[vanilla]", "study.num_samples=1",
        "search_space=tiny", "task.length=10", "task.num_train=8", "task.num_valid=4", "task.num_test=4",
        "train.max_epochs=1", f"study.storage_path={tmp_path / 'ray'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "execution=single",
    ]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "odyssey.sweep.cli", *overrides], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    deadline = time.monotonic() + 180
    while "gcs_server" not in _children(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before Ray started"
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=180)
    name = signal.Signals(sig).name
    assert proc.returncode == code, err[-3000:]
    assert f"{name} received" in err and "Resume with: odyssey sweep study.name=sig-start" in err, err[-3000:]
    assert "1/1 done" not in out  # no trial ran
    assert not any(n in ("gcs_server", "raylet") for n in _children(proc.pid))
