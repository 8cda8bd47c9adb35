"""Where and with what a trial ran: the facts that decide its numbers bit for bit.

A trial's arithmetic is fixed by its config and seed *and* by the machine: the torch build, the
CPU's instruction set (BLAS and the compiled loop pick their kernels by it), whether the compiled
CPU loop ran and which build of it, the thread count, and on a GPU its model and the CUDA and
cuDNN versions. :func:`provenance` collects them as MLflow tags (names from
:mod:`odyssey.run_schema`); :func:`machine_kind` is the part that must match for two runs of a
trial to agree bitwise, which ``odyssey analyze`` compares across a study's trials.

Needs torch only (it runs where the trial trains: a Ray worker, a pack's executor).
"""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

import torch

from odyssey.run_schema import (
    TAG_COMMIT,
    TAG_COMPILED_LOOP,
    TAG_CPU,
    TAG_CUDA,
    TAG_CUDNN,
    TAG_DEVICE_NAME,
    TAG_MACHINE_KIND,
    TAG_ODYSSEY_VERSION,
    TAG_THREADS,
    TAG_TORCH,
)

__all__ = ["cpu_model", "git_commit", "machine_kind", "provenance"]


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Model", "CPU part"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the odyssey source tree this process imported, when it is a git checkout
    with git on PATH (an installed wheel has none)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def machine_kind(device: torch.device, compiled: str | None) -> str:
    """One line naming what decides a trial's numbers beyond its config: the device model, the
    torch build and the compiled loop's build key (or that it did not run)."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        where = f"{torch.cuda.get_device_name(index)}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    else:
        where = cpu_model()
    return f"{device.type}: {where}; torch {torch.__version__}; compiled loop {compiled or 'off'}"


def provenance(device: torch.device, *, compiled_loop: bool) -> dict[str, str]:
    """The provenance tags of a trial that trained on ``device``; ``compiled_loop``: whether its
    LSTM steps ran in the compiled CPU loop (see :func:`odyssey.train.uses_compiled_loop`)."""
    from odyssey import __version__
    from odyssey.cells import native

    device = torch.device(device)
    key = native.build_key() if compiled_loop else None
    tags = {
        TAG_TORCH: torch.__version__,
        TAG_CPU: cpu_model(),
        TAG_COMPILED_LOOP: key or "off",
        TAG_THREADS: str(torch.get_num_threads()),
        TAG_DEVICE_NAME: torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        TAG_ODYSSEY_VERSION: __version__,
        TAG_MACHINE_KIND: machine_kind(device, key),
    }
    if device.type == "cuda":
        tags[TAG_CUDA] = str(torch.version.cuda)
        tags[TAG_CUDNN] = str(torch.backends.cudnn.version())
    commit = git_commit()
    if commit:
        tags[TAG_COMMIT] = commit
    return tags
