"""Train one trial: the paper's protocol as a readable loop.

Protocol (Greff et al. 2017, Sec. 4, as in their library PyLSTM): online SGD (one sequence per
update) with Nesterov momentum, the step size scaled by (1 - momentum); the objective is a
sequence's loss summed over its scored steps, averaged over a minibatch's sequences
(``train.loss_reduction``); fresh Gaussian noise on the inputs at every presentation; every
weight (biases, peepholes and the output layer included) N(0, 0.1^2); at most 150 epochs; early
stopping after 15 epochs without a strict improvement of the validation metric; the test metric
is the one at the best validation epoch.

Where it deviates from PyLSTM, on purpose: torch's Nesterov SGD keeps the look-ahead weights
(theta + mu v), so validation sees those, not theta (the difference is one momentum step); the
first epoch's validation is the first "best" (PyLSTM also logs the untrained network); the
adding problem's MSE has no factor 1/2. Gradient clipping: ``clip_value`` clips each value to
[-c, c] (the paper's TIMIT search drew clipping to [-1, 1] or none), then ``clip_norm`` rescales
the whole gradient to at most that norm; either or both may be set.

GPU hygiene, for a trial and a pack alike: the splits stay on the device
(:class:`~odyssey.tasks.resident.ResidentSplit`), the input noise is drawn there from a
counter-based stream (:mod:`odyssey.noise`, the same numbers on any device and in any batch),
losses are summed on the device and divergence is checked once per epoch, and evaluation is
batched with one host sync per split.

This module knows nothing of Ray or MLflow: progress leaves through the ``callback`` argument,
which receives one :class:`EpochReport` per epoch. A trial whose loss becomes NaN or infinite
stops at once and returns ``status="diverged"`` with the task's worst metrics, so that a search
over hundreds of trials goes on.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from odyssey.cells import native
from odyssey.config import TrialConfig
from odyssey.model import SequenceModel, build_model
from odyssey.noise import gaussian_noise, stream_keys
from odyssey.provenance import provenance
from odyssey.tasks import Task, build_task
from odyssey.tasks.resident import ResidentSplit

__all__ = [
    "EpochReport", "TrialResult", "deterministic_cuda", "device_label", "evaluate", "input_noise", "resolve_device",
    "train_epoch", "train_trial", "trial_checkpoint", "trial_provenance", "trial_state", "uses_compiled_loop",
]  # fmt: skip

COMPLETED, DIVERGED = "completed", "diverged"


@dataclass(frozen=True)
class EpochReport:
    """What the trainer tells its caller after each epoch's validation."""

    epoch: int  # 1-based
    metrics: dict[str, float]  # "train/loss" and "val/<metric>" for each task metric
    best_epoch: int
    improved: bool  # this epoch is the new best on the validation primary metric
    _checkpoint: Callable[[], dict] = field(repr=False, compare=False, default=dict)
    # Set on the trial's last epoch (budget or early stopping reached): the result that
    # train_trial is about to return, so that a caller can record it before anything (a Ray Tune
    # scheduler, say) stops the trial at this report.
    result: "TrialResult | None" = None

    def checkpoint(self) -> dict:
        """A ``torch.save``-able state that ``train_trial(resume_from=...)`` continues from."""
        return self._checkpoint()


@dataclass(frozen=True)
class TrialResult:
    status: str  # "completed" | "diverged"
    stop_reason: str  # "max_epochs" | "early_stopping" | "diverged"
    epochs: int
    best_epoch: int
    params_count: int
    best_val: dict[str, float]  # validation metrics at the best epoch
    test: dict[str, float]  # test metrics at the best epoch
    budget_reached: bool = True  # the trial ended by its own protocol (not cut short)
    device: str = "cpu"  # where it trained: "cpu" or "cuda:N (<GPU name>)"
    # Run tags (odyssey.provenance): torch, CPU, compiled loop, threads, GPU, versions.
    provenance: dict[str, str] = field(default_factory=dict, compare=False)

    def final_metrics(self) -> dict[str, float]:
        out = {f"test/{k}": v for k, v in self.test.items()}
        out.update({f"best_val/{k}": v for k, v in self.best_val.items()})
        out.update(best_epoch=float(self.best_epoch), epochs=float(self.epochs))
        return out


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def step_size(tr) -> float:
    """The SGD step: the paper's ``lr * (1 - momentum)`` (PyLSTM's scaled Nesterov step), or ``lr``."""
    return tr.lr * (1 - tr.momentum) if tr.scale_lr_by_momentum else tr.lr


def device_label(device: torch.device) -> str:
    """``cpu``, or ``cuda:N (<GPU name>)``: recorded with each trial, so a study shows where it ran."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one (e.g. the GPU Ray gave a trial), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but no CUDA device is visible to this process")
    return torch.device(name)


EVAL_BATCH_SIZE = 64  # train.eval_batch_size: null where batches pay (the Python loop, oneDNN, cuDNN)


def eval_batch_size(cfg: TrialConfig, device: torch.device) -> int:
    """``train.eval_batch_size``, or when it is null: 1 where the compiled CPU LSTM loop runs
    (:mod:`odyssey.cells.native`, batch 1 only), else ``EVAL_BATCH_SIZE`` (64).

    Measured on 2 CPU cores (JSB, a pack of 8 trials, one epoch): the pack's epoch took 6.1 s
    evaluating one sequence at a time against 7.2 s at 64 (the batched ATen steps of the Python
    loop), with the same metrics to 6 digits.
    """
    if cfg.train.eval_batch_size is not None:
        return cfg.train.eval_batch_size
    if cfg.variant.fused_lstm and torch.device(device).type == "cpu" and native.lstm_loop() is not None:
        return 1
    return EVAL_BATCH_SIZE


def uses_compiled_loop(cfg: TrialConfig, device: torch.device) -> bool:
    """Whether the trial's LSTM steps run in the compiled CPU loop (batch 1 on the CPU, in
    training or in evaluation), for its provenance."""
    if not cfg.variant.fused_lstm or torch.device(device).type != "cpu" or native.lstm_loop() is None:
        return False
    return cfg.train.batch_size == 1 or eval_batch_size(cfg, device) == 1


def trial_provenance(cfg: TrialConfig, device: torch.device) -> dict[str, str]:
    """The provenance tags of a trial trained here (:func:`odyssey.provenance.provenance`)."""
    return provenance(device, compiled_loop=uses_compiled_loop(cfg, device))


@torch.no_grad()
def evaluate(model: SequenceModel, task: Task, split: ResidentSplit, batch_size: int) -> dict[str, float]:
    """The task's metrics on a split, pooled over all its scored units (not averaged per batch).

    The sums stay on the device until the end: one host sync per evaluation, not per batch.
    """
    model.eval()
    return {name: float(value) for name, value in split.metric_totals(model, task, batch_size).items()}


def input_noise(batch, index: torch.Tensor, seed, epoch, std) -> torch.Tensor:
    """The inputs of a training batch plus ``std`` times the batch's counter-based N(0, 1) noise.

    ``index`` (..., B) are the batch's sequence numbers and ``seed``/``epoch``/``std`` broadcast
    against its leading dims, so that one call serves a trial and a pack alike; padding gets none.
    """
    keys = stream_keys(seed, epoch, index)  # (..., B)
    steps, features = batch.inputs.shape[-3], batch.inputs.shape[-1]
    eps = gaussian_noise(keys, steps, features, dtype=batch.inputs.dtype)  # (..., T, B, I)
    return torch.addcmul(batch.inputs, eps * batch.mask.unsqueeze(-1), std)


def _train_epoch(model, task: Task, optimizer, cfg: TrialConfig, data: ResidentSplit, order: torch.Tensor, epoch: int):
    """One pass over the training split in ``order`` (a CPU permutation).

    Returns the mean loss over the epoch's updates as a device scalar: losses are summed on the
    device, and divergence (a NaN or an infinite loss) is checked once per epoch by the caller.
    """
    model.train()
    tr = cfg.train
    device_order = order.to(data.device)
    std = torch.tensor(tr.input_noise, dtype=data.inputs.dtype, device=data.device)
    total = torch.zeros((), dtype=torch.float64, device=data.device)
    batches = 0
    for start in range(0, len(order), tr.batch_size):
        index = device_order[start : start + tr.batch_size]
        batch = data.batch(index, data.steps(order[start : start + tr.batch_size]))
        inputs = input_noise(batch, index, cfg.seed, epoch, std) if tr.input_noise > 0 else batch.inputs
        loss = task.loss(model(inputs, batch.lengths), batch, tr.loss_reduction)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tr.clip_value is not None:
            torch.nn.utils.clip_grad_value_(model.parameters(), tr.clip_value)
        if tr.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tr.clip_norm)
        optimizer.step()
        total += loss.detach()
        batches += 1
    return total / max(batches, 1)


def deterministic_cuda(device: torch.device) -> None:
    """On CUDA, ask torch for deterministic algorithms (where it offers them; a warning, not an
    error, where it does not) and cuBLAS for its deterministic workspace, so that a trial, or a
    pack, computes the same numbers every time it runs on the same kind of GPU. A no-op on CPU,
    whose kernels are deterministic already."""
    if torch.device(device).type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS first starts
    torch.use_deterministic_algorithms(True, warn_only=True)
    # ... but without its NaN fill of every torch.empty: the fused loop's buffers are written
    # before they are read, and the fill would cost a pass over each.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def trial_state(cfg: TrialConfig, task: Task, device: torch.device, resume_from: dict | None = None):
    """A trial's starting point: ``(model, optimizer, generator, trainer state)``.

    The initial weights come from ``torch.manual_seed(cfg.seed)`` (drawn on the CPU: the same
    weights on any device), the data order from its own generator seeded likewise; ``resume_from``
    (a :func:`trial_checkpoint`) replaces all four. A trial alone and a pack's member on the CPU
    (:mod:`odyssey.packs.trainer`) both start here, so they are the same trial bit for bit.
    """
    torch.manual_seed(cfg.seed)
    tr = cfg.train
    model = build_model(cfg, task).to(device=device, dtype=DTYPES[tr.dtype])
    optimizer = torch.optim.SGD(
        model.parameters(), lr=step_size(tr), momentum=tr.momentum, nesterov=tr.nesterov and tr.momentum > 0
    )
    gen = torch.Generator().manual_seed(cfg.seed)  # the data order; the noise is counter-based
    st = {"epoch": 0, "best": None, "best_epoch": 0, "stale": 0, "best_val": {}, "test": {}}
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        gen.set_state(resume_from["generator"])
        st = dict(resume_from["trainer"])
    return model, optimizer, gen, st


def trial_checkpoint(model: SequenceModel, optimizer, gen: torch.Generator, st: dict) -> dict:
    """A ``torch.save``-able state that ``train_trial(resume_from=...)`` continues from."""
    return {
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),  # buffers change in place
        "generator": gen.get_state(),
        "trainer": dict(st),
    }


def train_epoch(model, task: Task, optimizer, cfg: TrialConfig, data: ResidentSplit, gen: torch.Generator, epoch: int) -> float:
    """One epoch of one trial in its own data order (drawn from ``gen``); its mean training loss
    (one host sync). What ``train_trial`` and a pack's member on the CPU both run."""
    order = torch.randperm(len(data), generator=gen)
    return float(_train_epoch(model, task, optimizer, cfg, data, order, epoch))


def train_trial(
    cfg: TrialConfig,
    *,
    callback: Callable[[EpochReport], None] | None = None,
    resume_from: dict | None = None,
    task: Task | None = None,
    progress: bool = False,
) -> TrialResult:
    """Train one trial and return its result; deterministic on CPU for a given ``cfg.seed``.

    Args:
        cfg: the typed trial config.
        callback: called with an :class:`EpochReport` after every epoch.
        resume_from: a dict from :meth:`EpochReport.checkpoint`; training continues after its epoch.
        task: a prebuilt task (else built from ``cfg.task``).
        progress: show a progress bar on stderr.
    """
    device = resolve_device(cfg.train.device)
    deterministic_cuda(device)
    task = task or build_task(cfg.task)
    tr = cfg.train
    model, optimizer, gen, st = trial_state(cfg, task, device, resume_from)
    data = {name: ResidentSplit(task.splits[name], device, DTYPES[tr.dtype]) for name in ("train", "valid", "test")}
    primary = task.primary_metric

    def checkpoint() -> dict:
        return trial_checkpoint(model, optimizer, gen, st)

    eval_size = eval_batch_size(cfg, device)
    bar = _progress_bar(tr.max_epochs, st["epoch"], f"{cfg.variant.label()}/{cfg.task.name}") if progress else None
    status, reason = COMPLETED, resumed_stop_reason(st, tr) or "max_epochs"
    while st["epoch"] < tr.max_epochs and reason != "early_stopping":
        epoch = st["epoch"] + 1
        train_loss = train_epoch(model, task, optimizer, cfg, data["train"], gen, epoch)
        val = evaluate(model, task, data["valid"], eval_size) if math.isfinite(train_loss) else {}
        if not math.isfinite(train_loss) or not math.isfinite(val.get(primary, math.nan)):
            status, reason = DIVERGED, "diverged"
            st["epoch"] = epoch
            break
        improved = st["best"] is None or task.better(val[primary], st["best"])
        if improved:
            st.update(best=val[primary], best_epoch=epoch, stale=0, best_val=val)
            st["test"] = evaluate(model, task, data["test"], eval_size)
        else:
            st["stale"] += 1
        st["epoch"] = epoch
        metrics = {"train/loss": train_loss, **{f"val/{k}": v for k, v in val.items()}}
        if bar is not None:
            bar.update(1)
            bar.set_postfix({"loss": f"{train_loss:.4g}", primary: f"{val[primary]:.4g}", "best": st["best_epoch"]})
        if st["stale"] >= tr.patience:
            reason = "early_stopping"
        final = _result(status, reason, st, model, trial_provenance(cfg, device)) if reason == "early_stopping" or epoch == tr.max_epochs else None
        if callback is not None:
            callback(EpochReport(epoch, metrics, st["best_epoch"], improved, checkpoint, final))
        if final is not None:
            break
    if bar is not None:
        bar.close()
    if status == DIVERGED:
        worst = task.worst_metrics()
        st = {**st, "best_val": worst, "test": worst}
    return _result(status, reason, st, model, trial_provenance(cfg, device))


def resumed_stop_reason(st: dict, tr) -> str | None:
    """Why a trial resumed from ``st`` has nothing left to train (its last checkpoint was its
    final epoch), or None: ``max_epochs`` or ``early_stopping``."""
    if st["stale"] >= tr.patience:
        return "early_stopping"
    return "max_epochs" if st["epoch"] >= tr.max_epochs else None


def _result(status: str, reason: str, st: dict, model: SequenceModel, tags: dict[str, str]) -> TrialResult:
    device = device_label(next(model.parameters()).device)
    return TrialResult(
        status, reason, st["epoch"], st["best_epoch"], model.num_parameters(), st["best_val"], st["test"], device=device,
        provenance=tags,
    )  # fmt: skip


def _progress_bar(total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="epoch", dynamic_ncols=True)
