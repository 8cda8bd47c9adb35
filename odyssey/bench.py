"""``odyssey bench cells``: forward+backward time of every preset against ``torch.nn.LSTM``.

Each variant is timed on the same shapes as a one-layer ``torch.nn.LSTM`` in the same process
(the other cells against the nearest torch module: ``gru``, ``mingru`` and ``minlstm`` against
``torch.nn.GRU``, ``rnn`` and ``indrnn`` against ``torch.nn.RNN``; ``slstm`` is an LSTM);
they are measured alternately and each reported time is the minimum over repeats (the least
disturbed measurement), so the ratios are robust to other load on the machine. Times are per
sequence: a batch's time divided by the batch size.

On CPU, ``torch.nn.LSTM`` runs oneDNN's fused RNN primitive when PyTorch has it; the table also
gives the ratio to ``torch.nn.LSTM`` with oneDNN off (PyTorch's native ATen loop, the same kind of
step-by-step kernel sequence as ours), column ``vs ATen``. The cells trained by a parallel scan
(``mingru``, ``minlstm``) are also timed against their own sequential recurrence (the same layer
with ``fused=False``), column ``vs seq`` (< 1: the scan is faster).
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from odyssey.cells import PRESETS, preset, variant_layer

__all__ = ["BenchRow", "bench_cells", "main"]


@dataclass(frozen=True)
class BenchRow:
    variant: str
    device: str
    batch: int
    ms_per_seq: float
    ref_ms_per_seq: float  # torch's module of the family (nn.LSTM, nn.GRU, nn.RNN), oneDNN on CPU where available
    aten_ms_per_seq: float | None = None  # the same with oneDNN off (CPU only)
    seq_ms_per_seq: float | None = None  # a scan cell's own sequential recurrence (fused=False)

    @property
    def ratio(self) -> float:
        return self.ms_per_seq / self.ref_ms_per_seq

    @property
    def aten_ratio(self) -> float | None:
        return self.ms_per_seq / self.aten_ms_per_seq if self.aten_ms_per_seq else None

    @property
    def seq_ratio(self) -> float | None:
        return self.ms_per_seq / self.seq_ms_per_seq if self.seq_ms_per_seq else None


def _timer(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _fwd_bwd(module: torch.nn.Module, x: torch.Tensor, *, onednn: bool = True) -> Callable[[], None]:
    def step() -> None:
        module.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mkldnn.flags() warns about TF32 on Intel GPUs
            with torch.backends.mkldnn.flags(enabled=onednn):
                y = module(x)[0]
                y.sum().backward()

    return step


_TORCH_MODULES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN, "mingru": torch.nn.GRU, "minlstm": torch.nn.GRU}
_SCAN_FAMILIES = ("mingru", "minlstm")  # timed against their sequential recurrence too


def bench_cells(
    *,
    variants: list[str] | None = None,
    devices: list[str] | None = None,
    batches: tuple[int, ...] = (1, 32),
    T: int = 100,
    input_size: int = 88,
    hidden_size: int = 100,
    repeats: int = 5,
    progress: Callable[[BenchRow], None] | None = None,
) -> list[BenchRow]:
    """Time every variant against torch's module of its family (T, I, H as in the paper's JSB setting)."""
    variants = variants or list(PRESETS)
    devices = devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    for dev_name in devices:
        device = torch.device(dev_name)
        for batch in batches:
            torch.manual_seed(0)
            x = torch.randn(T, batch, input_size, device=device)
            for name in variants:
                ref = _TORCH_MODULES[preset(name).family](input_size, hidden_size).to(device)
                ref_step = _fwd_bwd(ref, x)
                aten_step = _fwd_bwd(ref, x, onednn=False) if device.type == "cpu" else None
                layer = variant_layer(preset(name), input_size, hidden_size).to(device)
                step = _fwd_bwd(layer, x)
                seq_step = None
                if preset(name).family in _SCAN_FAMILIES:
                    sequential = variant_layer(preset(name), input_size, hidden_size, fused=False).to(device)
                    sequential.load_state_dict(layer.state_dict())
                    seq_step = _fwd_bwd(sequential, x)
                    seq_step()
                step(), ref_step()  # warm-up
                ours, theirs, aten, seq = [], [], [], []
                for _ in range(repeats):  # alternate so all see the same machine state
                    theirs.append(_timer(ref_step, device))
                    ours.append(_timer(step, device))
                    if aten_step is not None:
                        aten.append(_timer(aten_step, device))
                    if seq_step is not None:
                        seq.append(_timer(seq_step, device))
                ms = lambda ts: 1e3 * min(ts) / batch if ts else None  # noqa: E731
                row = BenchRow(name, dev_name, batch, ms(ours), ms(theirs), ms(aten), ms(seq))
                rows.append(row)
                if progress:
                    progress(row)
    return rows


def format_rows(rows: list[BenchRow]) -> str:
    head = f"{'variant':<10} {'device':<6} {'batch':>5} {'ms/seq':>9} {'nn.*':>9} {'ratio':>6} {'vs ATen':>8} {'vs seq':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        aten = f"{r.aten_ratio:>8.2f}" if r.aten_ratio is not None else f"{'-':>8}"
        seq = f"{r.seq_ratio:>7.2f}" if r.seq_ratio is not None else f"{'-':>7}"
        lines.append(
            f"{r.variant:<10} {r.device:<6} {r.batch:>5} {r.ms_per_seq:>9.3f} {r.ref_ms_per_seq:>9.3f} {r.ratio:>6.2f} {aten} {seq}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "study":  # odyssey bench study: see odyssey/bench_study.py
        from odyssey.bench_study import main as study_main

        return study_main(argv[1:])
    parser = argparse.ArgumentParser(prog="odyssey bench", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["cells", "study"], help="what to benchmark (study: odyssey bench study -h)")
    parser.add_argument("--variants", nargs="+", choices=sorted(PRESETS), default=None)
    parser.add_argument("--devices", nargs="+", default=None, help="cpu, cuda (default: all present)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.devices and any(d.startswith("cuda") for d in args.devices) and not torch.cuda.is_available():
        parser.error("--devices names cuda but no CUDA device is present; valid here: cpu")
    print(f"forward+backward per sequence, T={args.seq_len}, I=88, H=100, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; ratio = variant / torch.nn.LSTM "
          "(gru, mingru, minlstm: / nn.GRU; rnn, indrnn: / nn.RNN); vs seq = scan / its sequential recurrence", flush=True)
    print(format_rows([]), flush=True)

    def show(row: BenchRow) -> None:
        print(format_rows([row]).splitlines()[-1], flush=True)

    bench_cells(
        variants=args.variants,
        devices=args.devices,
        batches=tuple(args.batches),
        T=args.seq_len,
        repeats=args.repeats,
        progress=show,
    )
    return 0
