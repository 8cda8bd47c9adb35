"""``odyssey bench study``: what a JSB search costs, one trial at a time, packed, and as ``nn.LSTM``.

A random-search sample of N trials from the paper's space (``conf/search_space/odyssey.yaml``:
hidden size, learning rate, momentum, input noise), the paper's protocol (online SGD, Nesterov,
the summed loss), E epochs each, trained three ways in one process, on each device present:

* ``single``: one trial after another with :func:`odyssey.train.train_trial` (what one Ray Tune
  worker does today);
* ``pack``: all N as one :func:`odyssey.packs.train_pack` (``pack_grouped``: one pack per
  distinct hidden size, the alternative to padding; on the CPU, where a pack trains its members
  one by one at their own shapes, the same computation as ``pack``);
* ``nn.LSTM``: the reference, a plain loop of the same protocol around ``torch.nn.LSTM`` (oneDNN on
  CPU, cuDNN on CUDA), with the same data, noise, loss, optimiser and evaluation.

It prints trial-epochs per second of each arm (best of ``repeats`` alternating runs, with the
spread) and the ratios. Every arm runs with the same number of threads (``--threads``, default
1: "at equal threads"). With a GPU it also estimates the paper's whole JSB arm (9 variants x 200
trials x ``--full-epochs`` epochs) from the packed throughput. Needs torch only (no Ray, MLflow).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from odyssey.bench import _timer
from odyssey.config import TrialConfig, compose_trial
from odyssey.noise import gaussian_noise, stream_keys
from odyssey.tasks import Task, build_task
from odyssey.tasks.resident import ResidentSplit
from odyssey.train import EVAL_BATCH_SIZE

__all__ = ["ArmTiming", "bench_study", "main", "reference_trial", "sample_trials"]

ARMS = ("single", "pack", "pack_grouped", "nn.LSTM")


@dataclass(frozen=True)
class ArmTiming:
    arm: str
    device: str
    trials: int
    epochs: int
    seconds: tuple[float, ...]  # one per repeat

    @property
    def trial_epochs_per_s(self) -> float:
        return self.trials * self.epochs / min(self.seconds)

    @property
    def spread(self) -> float:
        """(slowest - fastest) / fastest over the repeats."""
        return (max(self.seconds) - min(self.seconds)) / min(self.seconds)


def sample_trials(n: int, *, epochs: int, seed: int = 0, overrides: tuple[str, ...] = ()) -> list[TrialConfig]:
    """N random-search trials of the paper's JSB space (seeds ``seed..seed+n-1``), E epochs each."""
    from omegaconf import OmegaConf

    from odyssey.sweep.search_space import translate

    cfg, base = compose_trial("sweep", ["task=jsb", *overrides])
    space = translate(OmegaConf.to_container(cfg.search_space, resolve=True))
    base = base.replace(train={"max_epochs": epochs, "patience": epochs + 1})
    rng = np.random.default_rng(seed)
    return [base.replace(**space.decode(space.sample(rng))).replace(seed=seed + i) for i in range(n)]


def reference_trial(cfg: TrialConfig, task: Task, device: torch.device) -> float:
    """One trial of the protocol around ``torch.nn.LSTM`` + ``nn.Linear``; returns the best val NLL."""
    torch.manual_seed(cfg.seed)
    tr = cfg.train
    lstm = torch.nn.LSTM(task.input_size, cfg.model.hidden_size).to(device)
    head = torch.nn.Linear(cfg.model.hidden_size, task.output_size).to(device)
    params = [*lstm.parameters(), *head.parameters()]
    for p in params:
        torch.nn.init.normal_(p, 0.0, cfg.model.init_std)
    step = tr.lr * (1 - tr.momentum) if tr.scale_lr_by_momentum else tr.lr
    opt = torch.optim.SGD(params, lr=step, momentum=tr.momentum, nesterov=tr.nesterov and tr.momentum > 0)
    data = {s: ResidentSplit(task.splits[s], device) for s in ("train", "valid", "test")}
    gen = torch.Generator().manual_seed(cfg.seed)

    def model(x):  # (T, B, I) -> (T, B, O)
        return head(lstm(x)[0])

    def forward(x, lengths):  # what ResidentSplit.metric_totals calls
        return model(x)

    eval_size = tr.eval_batch_size or EVAL_BATCH_SIZE  # oneDNN/cuDNN run batches whole
    best = math.inf
    for epoch in range(1, tr.max_epochs + 1):
        order = torch.randperm(len(data["train"]), generator=gen)
        device_order = order.to(device)
        for k in range(len(order)):
            index = device_order[k : k + 1]
            batch = data["train"].batch(index, data["train"].steps(order[k : k + 1]))
            x = batch.inputs
            if tr.input_noise > 0:
                x = x + tr.input_noise * gaussian_noise(stream_keys(cfg.seed, epoch, index), x.shape[0], x.shape[-1], dtype=x.dtype)
            loss = task.loss(model(x), batch, tr.loss_reduction)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            val = float(data["valid"].metric_totals(forward, task, eval_size)[task.primary_metric])
            if val < best:
                best = val
                data["test"].metric_totals(forward, task, eval_size)
    return best


def _arm(name: str, cfgs: list[TrialConfig], task: Task, device: torch.device) -> Callable[[], None]:
    from odyssey.packs import train_pack
    from odyssey.train import train_trial

    on = [c.replace(train={"device": str(device)}) for c in cfgs]
    groups: dict[int, list[TrialConfig]] = {}
    for c in on:
        groups.setdefault(c.model.hidden_size, []).append(c)

    def single() -> None:
        for c in on:
            train_trial(c, task=task)

    def pack() -> None:
        train_pack(on, task=task)

    def pack_grouped() -> None:
        for group in groups.values():
            train_pack(group, task=task)

    def reference() -> None:
        for c in on:
            reference_trial(c, task, device)

    arms = {"single": single, "pack": pack, "pack_grouped": pack_grouped, "nn.LSTM": reference}
    if name not in arms:
        raise ValueError(f"unknown arm {name!r}; valid arms: {list(ARMS)}")
    return arms[name]


def bench_study(
    *,
    trials: int = 8,
    epochs: int = 1,
    devices: list[str] | None = None,
    arms: tuple[str, ...] = ARMS,
    repeats: int = 2,
    seed: int = 0,
    overrides: tuple[str, ...] = (),
    progress: Callable[[ArmTiming], None] | None = None,
) -> list[ArmTiming]:
    """Time each arm on each device (alternating, ``repeats`` times); see the module docstring."""
    devices = devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    cfgs = sample_trials(trials, epochs=epochs, seed=seed, overrides=overrides)
    task = build_task(cfgs[0].task)
    out = []
    for name in devices:
        device = torch.device(name)
        fns = {arm: _arm(arm, cfgs, task, device) for arm in arms}
        times: dict[str, list[float]] = {arm: [] for arm in arms}
        for _ in range(repeats):
            for arm in arms:
                times[arm].append(_timer(fns[arm], device))
        for arm in arms:
            row = ArmTiming(arm, name, trials, epochs, tuple(times[arm]))
            out.append(row)
            if progress:
                progress(row)
    return out


def format_rows(rows: list[ArmTiming], *, full_epochs: int = 150) -> str:
    lines = [f"{'device':<6} {'arm':<13} {'trial-epochs/s':>14} {'spread':>7} {'vs nn.LSTM':>10} {'vs single':>9}", "-" * 64]
    by = {(r.device, r.arm): r for r in rows}
    for r in rows:
        ref, single = by.get((r.device, "nn.LSTM")), by.get((r.device, "single"))
        vs = lambda other: f"{r.trial_epochs_per_s / other.trial_epochs_per_s:.2f}" if other else "-"  # noqa: E731
        lines.append(
            f"{r.device:<6} {r.arm:<13} {r.trial_epochs_per_s:>14.3f} {100 * r.spread:>6.0f}% {vs(ref):>10} {vs(single):>9}"
        )
    for r in rows:
        if r.device.startswith("cuda") and r.arm == "pack":
            hours = 9 * 200 * full_epochs / r.trial_epochs_per_s / 3600
            lines.append(
                f"estimate, the paper's JSB arm (9 x 200 trials x {full_epochs} epochs) packed on one {r.device} "
                f"at this pack size: {hours:.2f} GPU-hours"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from odyssey.config import take_config_dirs

    argv = take_config_dirs(argv)
    parser = argparse.ArgumentParser(
        prog="odyssey bench study", description=__doc__.splitlines()[0],
        epilog="--config-dir DIR: your own config folder (variant/ ...), searched before the package's",
    )  # fmt: skip
    parser.add_argument("--trials", type=int, default=8, help="N trials of the search (default 8)")
    parser.add_argument("--epochs", type=int, default=1, help="E epochs per trial (default 1)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every arm (default 1)")
    parser.add_argument("--devices", nargs="+", default=None, help="cpu, cuda (default: all present)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--full-epochs", type=int, default=150, help="epochs per trial in the full-arm estimate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default="vanilla", help="the variant of the search (conf/variant/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides of the trial config, after --")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.epochs < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--trials, --epochs, --repeats and --threads must be >= 1")
    if args.devices and any(d.startswith("cuda") for d in args.devices) and not torch.cuda.is_available():
        parser.error("--devices names cuda but no CUDA device is present; valid here: cpu")
    torch.set_num_threads(args.threads)
    print(f"JSB search ({args.variant}), paper protocol and space: {args.trials} trials x {args.epochs} epoch(s), "
          f"{args.threads} thread(s), torch {torch.__version__}, best of {args.repeats}", flush=True)  # fmt: skip
    rows = bench_study(
        trials=args.trials, epochs=args.epochs, devices=args.devices, arms=tuple(args.arms),
        repeats=args.repeats, seed=args.seed, overrides=(f"variant={args.variant}", *args.overrides),
        progress=lambda r: print(f"  {r.device} {r.arm}: {', '.join(f'{s:.2f}s' for s in r.seconds)}", flush=True),
    )  # fmt: skip
    print(format_rows(rows, full_epochs=args.full_epochs))
    return 0
