"""The compiled CPU time loop (``lstm_loop.cpp``): built on first use, cached, loaded with ctypes.

:class:`~odyssey.cells.fused.FusedRecurrence` runs its step loops through this library on the
CPU at batch 1 (the paper's online SGD), and through the Python loop (ATen ops) otherwise, or when
no library can be had. Both fill the same buffers with the same equations; the tests check one against the other.

* **Build.** The C++ file needs only a C++17 compiler (no PyTorch headers, no ninja): one
  ``-O3 -march=native`` compile of about 1.5 s, once per machine. The shared library is cached as
  ``$XDG_CACHE_HOME/odyssey/kernels/lstm_loop-<key>.so`` (``$ODYSSEY_KERNEL_DIR`` to move it); the
  key hashes the source, the compiler, its flags and the CPU's model and flags, so a cache on a
  shared file system serves each kind of node its own build. The library is written to a temporary
  name and renamed into place, so concurrent workers never load a partial file.
* **Choose.** ``$ODYSSEY_NATIVE=0`` turns it off (the Python loop everywhere); ``$CXX`` names the
  compiler (default: the first of ``c++``, ``g++``, ``clang++`` on PATH).
* **No compiler.** One warning names the reason and the fallback, and the Python loop runs.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from odyssey.cells.recurrence import Layout

__all__ = [
    "NativeUnavailable", "activation", "build_key", "kernel_dir", "loop_for", "lstm_backward", "lstm_forward", "lstm_loop",
    "native_enabled",
]  # fmt: skip

SOURCE = Path(__file__).with_name("lstm_loop.cpp")
FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-std=c++17", "-shared", "-fPIC")
ABI = 5
_P = ctypes.c_void_p


class NativeUnavailable(RuntimeError):
    """The compiled loop cannot be built or loaded here (the message says why)."""


def native_enabled() -> bool:
    """False when ``$ODYSSEY_NATIVE`` is ``0``/``false``/``no``/``off``."""
    return os.environ.get("ODYSSEY_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def kernel_dir() -> Path:
    """``$ODYSSEY_KERNEL_DIR``, else ``$XDG_CACHE_HOME/odyssey/kernels``."""
    if os.environ.get("ODYSSEY_KERNEL_DIR"):
        return Path(os.environ["ODYSSEY_KERNEL_DIR"]).expanduser()
    from odyssey.tasks.cache import user_cache_root

    return user_cache_root() / "kernels"


def _compiler() -> str:
    if os.environ.get("CXX"):
        found = shutil.which(os.environ["CXX"])
        if not found:
            raise NativeUnavailable(f"$CXX={os.environ['CXX']!r} is not an executable compiler")
        return found
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    raise NativeUnavailable("no C++ compiler found (c++, g++ or clang++ on PATH; or set $CXX)")


def _cpu_identity() -> str:
    """The CPU's model and feature flags (what ``-march=native`` compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in lines if ln.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
    return "\n".join(sorted(set(keep)))


def _build(compiler: str, target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.stem + ".", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise NativeUnavailable(f"cannot write the kernel folder {target.parent} ({exc.strerror}); set $ODYSSEY_KERNEL_DIR") from None
    try:
        done = subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise NativeUnavailable(f"{compiler} failed on {SOURCE.name}: {(done.stderr or done.stdout).strip()[-2000:]}")
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeUnavailable(f"{compiler} could not build {SOURCE.name}: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.odyssey_lstm_abi.restype = ctypes.c_int64
    if lib.odyssey_lstm_abi() != ABI:
        raise NativeUnavailable(f"{path} has ABI {lib.odyssey_lstm_abi()}, expected {ABI}")
    for name in ("odyssey_lstm_forward_f32", "odyssey_lstm_forward_f64"):
        getattr(lib, name).argtypes = [_P] * 10
        getattr(lib, name).restype = None
    for name in ("odyssey_lstm_backward_f32", "odyssey_lstm_backward_f64"):
        getattr(lib, name).argtypes = [_P] * 14
        getattr(lib, name).restype = None
    for name in ("odyssey_act_f32", "odyssey_act_f64"):
        getattr(lib, name).argtypes = [ctypes.c_int64, ctypes.c_int64, _P, _P]
        getattr(lib, name).restype = None
    return lib


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | NativeUnavailable:
    """The library, or why not (cached either way: a failed build is not retried per call)."""
    try:
        return _find_or_build()
    except NativeUnavailable as exc:
        return exc


def _find_or_build() -> ctypes.CDLL:
    compiler = _compiler()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeUnavailable(f"{compiler} --version failed: {exc}") from None
    key = hashlib.sha256("\0".join([SOURCE.read_text(), compiler, version, " ".join(FLAGS), _cpu_identity()]).encode()).hexdigest()[:16]
    target = kernel_dir() / f"lstm_loop-{key}.so"
    if not target.exists():
        _build(compiler, target)
    try:
        lib = _load(target)
    except OSError as exc:  # a truncated or foreign file under the key: build it again, once
        target.unlink(missing_ok=True)
        _build(compiler, target)
        try:
            lib = _load(target)
        except OSError:
            raise NativeUnavailable(f"cannot load {target}: {exc}") from None
    lib.odyssey_build_key = key
    return lib


@functools.lru_cache(maxsize=1)
def _warned(reason: str) -> None:
    warnings.warn(f"odyssey: the compiled CPU LSTM loop is unavailable ({reason}); using the Python loop "
                  "(about 2x slower at batch 1). Set ODYSSEY_NATIVE=0 to silence this.", RuntimeWarning, stacklevel=3)  # fmt: skip


def lstm_loop() -> ctypes.CDLL | None:
    """The loaded library, or None (turned off, or unavailable: then one warning says why)."""
    if not native_enabled():
        return None
    lib = _library()
    if isinstance(lib, NativeUnavailable):
        _warned(str(lib))
        return None
    return lib


def build_key() -> str | None:
    """The key of the loaded library (it hashes the source, the compiler, its flags and the
    CPU): two runs with the same key ran the same machine code. None when the loop is off or
    unavailable."""
    lib = lstm_loop()
    return None if lib is None else lib.odyssey_build_key


_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_ACT = {"tanh": 0, "sigmoid": 1, "identity": 2, "relu": 3, "sigmoid4": 4, "sigmoid2": 5}


def loop_for(t: torch.Tensor, batch: int) -> ctypes.CDLL | None:
    """The library when a loop over ``t`` (a float32/float64 CPU tensor) at this batch size runs
    compiled, else None (the Python loop).

    Only batch 1 (online SGD) runs compiled. There the Python loop's ~40 ATen calls per step
    cost more than their arithmetic: the compiled loop measured 0.24x its time at M = 1 and 0.42x
    at M = 8 (H = 100, T = 100, forward + backward, one thread). At batch 2-64 its unblocked
    product is 1.1-5x slower than MKL's, whose per-step overhead the batch amortizes.
    """
    if batch != 1 or t.device.type != "cpu" or t.dtype not in _SUFFIX:
        return None
    return lstm_loop()


def _ptr(t: torch.Tensor | None) -> int | None:
    if t is None:
        return None
    if not t.is_contiguous():
        raise ValueError("the compiled LSTM loop needs contiguous buffers")  # fused.py makes them so
    return t.data_ptr()


def _dims(lay: "Layout", M: int, T: int, B: int, pre_strides: tuple[int, int] = (0, 0)) -> torch.Tensor:
    return torch.tensor(
        [M, T, B, lay.H, lay.n_if, "i" in lay.if_gates, "f" in lay.if_gates, lay.has_o, lay.coupled, lay.peep, lay.fgr,
         _ACT[lay.g.name], _ACT[lay.h.name], *pre_strides],
        dtype=torch.int64,
    )  # fmt: skip


def _int64(values: Sequence[int] | None) -> torch.Tensor | None:
    return None if values is None else torch.tensor(list(values), dtype=torch.int64)


def _peepholes(lay: "Layout", peephole: torch.Tensor | None) -> torch.Tensor | None:
    """(M, K, H): each own gate's peephole row (order i, f, o), contiguous."""
    if not lay.peep:
        return None
    if peephole.shape[1] != lay.K:
        raise ValueError(f"the compiled LSTM loop needs a peephole per own gate ({lay.K}), got {peephole.shape[1]}")
    return peephole.detach().contiguous()


def activation(lib, name: str, x: torch.Tensor) -> torch.Tensor:
    """The compiled loop's activation ``name`` (tanh, sigmoid, ...) of a float32/float64 CPU tensor."""
    x = x.detach().contiguous()
    y = torch.empty_like(x)
    getattr(lib, f"odyssey_act_{_SUFFIX[x.dtype]}")(_ACT[name], x.numel(), _ptr(x), _ptr(y))
    return y


def _weights(lay: "Layout", w_hh: torch.Tensor, w_gate: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """R (M, G*H, H) and, with FGR, Rg (M, K*H, K*H), as stored (the loop reads them in place)."""
    return w_hh.detach().contiguous(), (w_gate.detach().contiguous() if lay.fgr else None)


def lstm_forward(lib, lay: "Layout", PRE, S, ZC, HC, w_hh, w_gate, peephole, steps, hidden) -> None:
    """Fill S, ZC and HC (zeros on entry) from PRE: FusedRecurrence's forward step loop, compiled.

    ``PRE`` (T, M, G*H, 1) may have any strides on its first two axes. ``steps``: each member's
    own number of steps, in any order (None: all T); ``hidden``: each member's own units (None:
    all have ``lay.H``).
    """
    T, M, _, B = PRE.shape
    if B != 1:
        raise ValueError(f"the compiled LSTM loop runs batch 1 only, got {B} (loop_for sends the rest to the Python loop)")
    if PRE.stride(3) != 1 or PRE.stride(2) != B:  # each PRE[t, m] a contiguous (G*H, B) block
        raise ValueError("the compiled LSTM loop needs PRE[t, m] contiguous")
    P = _peepholes(lay, peephole)
    act, hid = _int64(steps), _int64(hidden)
    dims = _dims(lay, M, T, B, (PRE.stride(0), PRE.stride(1)))
    Wh, Wg = _weights(lay, w_hh, w_gate)
    getattr(lib, f"odyssey_lstm_forward_{_SUFFIX[PRE.dtype]}")(
        _ptr(dims), PRE.data_ptr(), _ptr(S), _ptr(ZC), _ptr(HC), _ptr(Wh), _ptr(Wg), _ptr(P), _ptr(act), _ptr(hid)
    )


def lstm_backward(lib, lay: "Layout", S, ZC, HC, w_hh, w_gate, peephole, dY, dC, steps, hidden) -> torch.Tensor:
    """dPRE (T, M, G*H, 1) from the forward buffers and the outputs' gradients dY, dC (each
    (M, T, 1, H) or None): FusedRecurrence's backward step loop, compiled."""
    T, M, _, H, B = ZC[:-1].shape
    Wh, Wg = _weights(lay, w_hh, w_gate)
    R = H + lay.K * H if lay.fgr else H
    dPRE = S.new_zeros(T, M, Wh.shape[1], B)
    DS = S.new_zeros(T, M, R, B)
    if dY is not None:
        DS[:, :, :H] = dY.permute(1, 0, 3, 2)
    dCt = dC.permute(1, 0, 3, 2).contiguous() if dC is not None else None  # (T, M, H, B)
    DCN = S.new_zeros(M, H, B)
    scratch = S.new_empty(2, H, B)
    P = _peepholes(lay, peephole)
    act, hid = _int64(steps), _int64(hidden)
    dims = _dims(lay, M, T, B)
    getattr(lib, f"odyssey_lstm_backward_{_SUFFIX[S.dtype]}")(
        _ptr(dims), _ptr(S), _ptr(ZC), _ptr(HC), _ptr(Wh), _ptr(Wg), _ptr(P), _ptr(DS), _ptr(dPRE), _ptr(dCt),
        _ptr(DCN), _ptr(scratch), _ptr(act), _ptr(hid),
    )  # fmt: skip
    return dPRE
