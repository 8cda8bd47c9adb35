"""Stop signals without Ray: the first one asks every search to stop (the event Ray Tune's loop
watches), the second stops the process at once. The sweep-level behaviour (runs marked
interrupted, exit 130/143, resume) is tested end to end in test_sweep.py."""

from __future__ import annotations

import os
import signal
import stat
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
    # a fresh $HOME and Ray's own default auth mode: its token file must come out private (#20)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    # its own Ray temp folder (short: Ray's sockets live there): ray.init would otherwise join a
    # cluster another test left running (its address file in /tmp/ray) instead of starting one
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    env.update(PYTHONPATH=str(ROOT), HOME=str(tmp_path / "home"), RAY_TMPDIR=ray_tmp)
    proc = subprocess.Popen([sys.executable, "-m", "odyssey.sweep.cli", *overrides], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    deadline = time.monotonic() + 180
    while "gcs_server" not in _children(proc.pid):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the sweep ended before Ray started:\n{proc.communicate()[1][-3000:]}")
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=180)
    name = signal.Signals(sig).name
    assert proc.returncode == code, err[-3000:]
    assert f"{name} received" in err and "Resume with: odyssey sweep study.name=sig-start" in err, err[-3000:]
    assert "1/1 done" not in out  # no trial ran
    assert not any(n in ("gcs_server", "raylet") for n in _children(proc.pid))
    token = tmp_path / "home" / ".ray" / "auth_token"
    assert len(token.read_text()) == 64 and stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700 and "readable by others" not in err
    __import__("shutil").rmtree(ray_tmp, ignore_errors=True)


def test_a_token_file_readable_by_others_gets_one_warning(tmp_path, monkeypatch, capsys):
    from odyssey.sweep.connect import secure_token_file

    token = tmp_path / "token"
    token.write_text("x" * 64)
    token.chmod(0o644)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    assert secure_token_file() == token and secure_token_file() == token
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and f"the Ray token file {token} is readable by others (mode 0644)" in err
    assert f"chmod 600 {token}" in err
    token.chmod(0o600)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert secure_token_file() == token and "warning" not in capsys.readouterr().err
