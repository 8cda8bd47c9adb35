"""The compiled CPU time loop (``odyssey/cells/lstm_loop.cpp`` via ``odyssey.cells.native``).

It must compute what the Python loop computes, for every LSTM variant, and a packed member what
the member computes alone, whatever its hidden size, step count and place in the pack. The
Python loop (``ODYSSEY_NATIVE=0``) is the reference; it is itself tested against autograd and
``torch.nn.LSTM`` in ``test_cells.py``.

Tolerances: float64 1e-12 (both loops add the same terms in the same order per element, and
differ only by the exp/tanh approximations, within 3 ulp, and BLAS's order in the step product);
float32 1e-5 relative (a few ulp per op over 9 steps).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from odyssey.cells import PRESETS, VariantLSTM, native, preset
from odyssey.cells.fused import FusedRecurrence
from odyssey.cells.layer import _layout

LSTM_PRESETS = [name for name in PRESETS if preset(name).fused_lstm]  # the sLSTM bypasses the compiled loop
ROOT = Path(__file__).resolve().parents[1]
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


def _available() -> str | None:
    lib = native._library()
    return None if not isinstance(lib, native.NativeUnavailable) else str(lib)


needs_library = pytest.mark.skipif(_available() is not None, reason=f"the compiled loop cannot be built here: {_available()}")


@pytest.fixture
def calls(monkeypatch):
    """Counts the compiled forward and backward calls (so a test knows which loop ran)."""
    counted = {"forward": 0, "backward": 0}
    forward, backward = native.lstm_forward, native.lstm_backward

    def count_forward(*args, **kwargs):
        counted["forward"] += 1
        return forward(*args, **kwargs)

    def count_backward(*args, **kwargs):
        counted["backward"] += 1
        return backward(*args, **kwargs)

    monkeypatch.setattr(native, "lstm_forward", count_forward)
    monkeypatch.setattr(native, "lstm_backward", count_backward)
    return counted


def layer_run(name: str, dtype, *, bidirectional: bool, compiled: bool, monkeypatch, B: int = 1):
    """Outputs, final states and every gradient of one layer on a padded batch."""
    monkeypatch.setenv("ODYSSEY_NATIVE", "1" if compiled else "0")
    torch.manual_seed(3)
    layer = VariantLSTM(preset(name), input_size=3, hidden_size=5, bidirectional=bidirectional, init_std=0.5).to(dtype)
    x = torch.randn(9, B, 3, dtype=dtype, requires_grad=True)
    lengths = torch.tensor([9] + [6] * (B - 1))
    y, (h_n, c_n) = layer(x, lengths)
    (y.sin().sum() + c_n.cos().sum() + (h_n * c_n).sum()).backward()  # dY, dC and both final states
    return [y, h_n, c_n, x.grad, *(p.grad for p in layer.parameters())]


@needs_library
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("name", LSTM_PRESETS)
def test_compiled_loop_equals_the_python_loop(name, bidirectional, dtype, monkeypatch, calls):
    compiled = layer_run(name, dtype, bidirectional=bidirectional, compiled=True, monkeypatch=monkeypatch)
    assert calls == {"forward": 1 + bidirectional, "backward": 1 + bidirectional}
    python = layer_run(name, dtype, bidirectional=bidirectional, compiled=False, monkeypatch=monkeypatch)
    assert calls == {"forward": 1 + bidirectional, "backward": 1 + bidirectional}  # the Python loop ran
    for a, b in zip(compiled, python, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])
    assert compiled[0].abs().max() > 0.1  # not trivially zero


@needs_library
def test_batches_over_one_run_the_python_loop(monkeypatch, calls):
    """Only batch 1 runs compiled (see native.loop_for); a batch of 4 gives the same numbers."""
    layer_run("vanilla", torch.float64, bidirectional=False, compiled=True, monkeypatch=monkeypatch, B=4)
    assert calls == {"forward": 0, "backward": 0}
    x = torch.zeros(1, 2, 1, 3)
    assert native.loop_for(x, 1) is not None
    assert native.loop_for(x, 2) is None
    assert native.loop_for(x.half(), 1) is None
    assert native.loop_for(torch.zeros(1, 2, 1, 3, device="meta"), 1) is None


def _pad(t: torch.Tensor, h: int, H: int, blocks: int, cols_per_hidden: bool) -> torch.Tensor:
    """A (blocks*h, c) tensor as (blocks*H, c') with zero rows (and columns, if per hidden) added."""
    rows = t.reshape(blocks, h, *t.shape[1:])
    out = t.new_zeros(blocks, H, *t.shape[1:])
    out[:, :h] = rows
    out = out.reshape(blocks * H, *t.shape[1:])
    if cols_per_hidden:
        cols = out.shape[1] // h
        wide = out.new_zeros(out.shape[0], cols, H)
        wide[:, :, :h] = out.reshape(out.shape[0], cols, h)
        out = wide.reshape(out.shape[0], cols * H)
    return out


@needs_library
@pytest.mark.parametrize("name", LSTM_PRESETS)
def test_a_packed_member_equals_itself_alone_in_any_order_and_hidden_size(name, monkeypatch, calls):
    """Four members of hidden sizes 3, 5, 2, 5 (padded to 5) and 4, 9, 1, 6 steps (unsorted): each
    member's outputs and gradients equal those of its own layer run alone, by the Python loop."""
    spec, I, H, dtype = preset(name), 3, 5, torch.float64
    hidden, steps = [3, 5, 2, 5], [4, 9, 1, 6]
    torch.manual_seed(5)
    layers = [VariantLSTM(spec, input_size=I, hidden_size=h, init_std=0.5).to(dtype) for h in hidden]
    xs = [torch.randn(9, 1, I, dtype=dtype) for _ in hidden]
    G, K = len(spec.blocks), len(spec.gates)
    packed = {}
    for key in ("weight_ih", "bias", "weight_hh", "peephole", "weight_gate_hh"):
        if not hasattr(layers[0], key):
            packed[key] = None
            continue
        parts = []
        for layer, h in zip(layers, hidden):
            p = getattr(layer, key).detach()
            if key == "weight_ih":
                p = _pad(p, h, H, G, False)
            elif key == "bias":
                p = _pad(p[:, None], h, H, G, False)[:, 0]
            elif key == "weight_hh":
                p = _pad(p, h, H, G, True)
            elif key == "peephole":
                p = _pad(p.t(), h, H, 1, False).t()
            else:  # weight_gate_hh (K*h, K*h)
                p = _pad(p, h, H, K, True)
            parts.append(p)
        packed[key] = torch.stack(parts).requires_grad_()
    x = torch.stack(xs)  # (M, T, 1, I)
    lay = _layout(spec, H)
    w = [packed[k] for k in ("weight_ih", "bias", "weight_hh", "peephole", "weight_gate_hh")]
    Y, C = FusedRecurrence.apply(lay, x, *w, None, tuple(hidden), tuple(steps))
    assert calls["forward"] == 1
    for m, n in enumerate(steps):  # each member's loss reads its own steps and units only
        assert not Y[m, n:].any() and not Y[m, :, :, hidden[m] :].any()
    loss = sum((Y[m, :n, :, : hidden[m]].sin().sum() + C[m, n - 1, :, : hidden[m]].cos().sum()) for m, n in enumerate(steps))
    loss.backward()
    assert calls["backward"] == 1

    monkeypatch.setenv("ODYSSEY_NATIVE", "0")
    for m, (layer, h, n) in enumerate(zip(layers, hidden, steps)):
        y, (_, c_n) = layer(xs[m][:n])
        (y.sin().sum() + c_n.cos().sum()).backward()
        torch.testing.assert_close(Y[m, :n, :, :h], y.detach(), **TOL[dtype])
        for key, alone in layer.named_parameters():
            grad = packed[key].grad[m]
            padded = {
                "weight_ih": lambda g: _pad(g, h, H, G, False),
                "bias": lambda g: _pad(g[:, None], h, H, G, False)[:, 0],
                "weight_hh": lambda g: _pad(g, h, H, G, True),
                "peephole": lambda g: _pad(g.t(), h, H, 1, False).t(),
                "weight_gate_hh": lambda g: _pad(g, h, H, K, True),
            }[key](alone.grad)
            torch.testing.assert_close(grad, padded, **TOL[dtype], msg=lambda s: f"member {m} {key}: {s}")


@needs_library
def test_a_nan_in_one_member_stays_in_that_member(monkeypatch, calls):
    spec, H = preset("vanilla"), 4
    torch.manual_seed(0)
    lay = _layout(spec, H)
    w = [torch.randn(3, 4 * H, 2, dtype=torch.float64), torch.randn(3, 4 * H, dtype=torch.float64),
         torch.randn(3, 4 * H, H, dtype=torch.float64), torch.randn(3, 3, H, dtype=torch.float64)]  # fmt: skip
    x = torch.randn(3, 6, 1, 2, dtype=torch.float64)
    clean, _ = FusedRecurrence.apply(lay, x, *w, None)
    x[1, 2, 0, 0] = float("nan")
    dirty, _ = FusedRecurrence.apply(lay, x, *w, None)
    assert calls["forward"] == 2
    assert torch.equal(dirty[[0, 2]], clean[[0, 2]])
    assert torch.equal(dirty[1, :2], clean[1, :2]) and dirty[1, 2:].isnan().all()


@needs_library
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["tanh", "sigmoid", "sigmoid4", "sigmoid2", "relu", "identity"])
def test_activations_match_torch_within_three_ulp(name, dtype):
    lib = native.lstm_loop()
    grid = torch.cat([torch.linspace(-120, 120, 200_001, dtype=torch.float64), torch.logspace(-30, 2, 3_000, dtype=torch.float64)])
    x = torch.cat([grid, -grid]).to(dtype)
    got = native.activation(lib, name, x)
    ref = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu, "identity": lambda v: v.clone(),
           "sigmoid4": lambda v: 4 * torch.sigmoid(v.double()) - 2, "sigmoid2": lambda v: 2 * torch.sigmoid(v.double()) - 1}[name]  # fmt: skip
    want = ref(x.double()).to(dtype) if name != "relu" else ref(x)
    eps = torch.finfo(dtype).eps
    # 3 ulp of the result (measured: at most 2.2); for k s - k/2 (k = 4, 2), 3 ulp of k: the
    # difference near 0 keeps sigmoid's absolute error, times k
    scale = {"sigmoid4": torch.full_like(want, 4.0), "sigmoid2": torch.full_like(want, 2.0)}.get(name, want.abs())
    err = (got - want).abs()
    tiny = torch.finfo(dtype).tiny * 4  # sigmoid(-100) ~ 4e-44 in float32 is subnormal; ours flushes there
    assert (err <= 3 * eps * scale + tiny).all(), f"worst at x = {x[(err - 3 * eps * scale).argmax()].item()}"
    special = torch.tensor([float("inf"), -float("inf"), float("nan")], dtype=dtype)
    out = native.activation(lib, name, special)
    assert out[2].isnan()
    expected = {"tanh": (1, -1), "sigmoid": (1, 0), "sigmoid4": (2, -2), "sigmoid2": (1, -1)}
    if name in expected:
        hi, lo = expected[name]
        assert out[0] == hi and abs(float(out[1]) - lo) < 1e-30


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """A kernel folder of the test's own; the process's cached library is restored afterwards."""
    monkeypatch.setenv("ODYSSEY_KERNEL_DIR", str(tmp_path / "kernels"))
    native._library.cache_clear()
    native._warned.cache_clear()
    yield tmp_path / "kernels"
    native._library.cache_clear()
    native._warned.cache_clear()


LOAD_AND_RUN = (
    "import torch, sys; from odyssey.cells import native, VariantLSTM, preset; "
    "assert native.lstm_loop() is not None; torch.manual_seed(0); l = VariantLSTM(preset('vanilla'), 2, 3).double(); "
    "print(float(l(torch.ones(4, 1, 2, dtype=torch.float64))[0].sum()))"
)


@needs_library
def test_the_library_is_built_once_shared_by_concurrent_workers_and_rebuilt_when_corrupt(tmp_path):
    """Two first uses at once (Ray workers on one node) write under temporary names and rename:
    both load it, one file remains. A truncated or foreign file under the key (a crash, a copied
    cache) is rebuilt by the next process, which then computes what the first ones did."""
    env = {**os.environ, "ODYSSEY_KERNEL_DIR": str(tmp_path / "k"), "PYTHONPATH": str(ROOT), "ODYSSEY_NATIVE": "1"}
    run = [sys.executable, "-c", LOAD_AND_RUN]
    procs = [subprocess.Popen(run, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert outs[0][0] == outs[1][0] and float(outs[0][0]) != 0.0
    (so,) = (tmp_path / "k").iterdir()  # no temporary file left
    assert so.name.startswith("lstm_loop-") and so.suffix == ".so"
    stamp = so.stat().st_mtime_ns
    so.write_bytes(b"not a shared library")
    again = subprocess.run(run, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout == outs[0][0]
    assert so.stat().st_size > 1000  # rebuilt
    assert [f.name for f in (tmp_path / "k").iterdir()] == [so.name] and so.stat().st_mtime_ns != stamp


@needs_library
def test_a_cached_library_is_loaded_not_built_again(fresh_library):
    assert native.lstm_loop() is not None
    (so,) = fresh_library.iterdir()
    stamp = so.stat().st_mtime_ns
    native._library.cache_clear()
    assert native.lstm_loop() is not None
    assert so.stat().st_mtime_ns == stamp


def test_no_compiler_warns_once_and_the_python_loop_runs(fresh_library, monkeypatch, tmp_path, calls):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CXX", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert native.lstm_loop() is None
        assert native.lstm_loop() is None
        out = layer_run("cifg", torch.float64, bidirectional=False, compiled=True, monkeypatch=monkeypatch)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "no C++ compiler found" in messages[0] and "Python loop" in messages[0], messages
    assert calls == {"forward": 0, "backward": 0}
    assert out[0].abs().max() > 0.1


def test_an_unwritable_kernel_folder_or_a_missing_cxx_is_named(fresh_library, monkeypatch, tmp_path, calls):
    locked = tmp_path / "locked"
    locked.write_text("a file where the folder should be")
    monkeypatch.setenv("ODYSSEY_KERNEL_DIR", str(locked / "kernels"))
    with pytest.warns(RuntimeWarning, match=r"cannot write the kernel folder .*locked/kernels.*ODYSSEY_KERNEL_DIR"):
        assert native.lstm_loop() is None
    native._library.cache_clear()
    native._warned.cache_clear()
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    with pytest.warns(RuntimeWarning, match=r"\$CXX=.*no-such-c\+\+.* is not an executable compiler"):
        assert native.lstm_loop() is None
    out = layer_run("vanilla", torch.float32, bidirectional=False, compiled=True, monkeypatch=monkeypatch)
    assert calls == {"forward": 0, "backward": 0}
    assert out[0].abs().max() > 0.1


def test_a_failing_compiler_is_named_with_its_message(fresh_library, monkeypatch, tmp_path):
    cxx = tmp_path / "broken-c++"
    cxx.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo broken 1.0; exit 0; fi\necho 'fatal: out of licences' >&2\nexit 1\n")
    cxx.chmod(0o755)
    monkeypatch.setenv("CXX", str(cxx))
    with pytest.warns(RuntimeWarning, match=r"broken-c\+\+ failed on lstm_loop.cpp: fatal: out of licences"):
        assert native.lstm_loop() is None
    assert not list(fresh_library.glob("*.so")) and not list(fresh_library.glob("*.tmp"))


def test_odyssey_native_0_turns_it_off(monkeypatch):
    monkeypatch.setenv("ODYSSEY_NATIVE", "0")
    assert not native.native_enabled() and native.lstm_loop() is None
    assert native.loop_for(torch.zeros(1, 2, 1, 3), 1) is None
    monkeypatch.setenv("ODYSSEY_NATIVE", "1")
    assert native.native_enabled()
