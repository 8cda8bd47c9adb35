"""Train one trial: the paper's protocol as a readable loop.

Protocol (Greff et al. 2017, Sec. 4): online SGD (one sequence per update) with Nesterov
momentum, the step size scaled by (1 - momentum); Gaussian noise on the inputs during training;
weights N(0, 0.1^2); at most 150 epochs; early stopping after 15 epochs without improvement of
the validation metric; the test metric is the one at the best validation epoch.

This module knows nothing of Ray or MLflow: progress leaves through the ``callback`` argument,
which receives one :class:`EpochReport` per epoch. A trial whose loss becomes NaN or infinite
stops at once and returns ``status="diverged"`` with the task's worst metrics, so that a search
over hundreds of trials goes on.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from odyssey.config import TrialConfig
from odyssey.model import SequenceModel, build_model
from odyssey.tasks import Sequence, Task, build_task, collate

__all__ = ["EpochReport", "TrialResult", "device_label", "evaluate", "resolve_device", "train_trial"]

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

    def final_metrics(self) -> dict[str, float]:
        out = {f"test/{k}": v for k, v in self.test.items()}
        out.update({f"best_val/{k}": v for k, v in self.best_val.items()})
        out.update(best_epoch=float(self.best_epoch), epochs=float(self.epochs))
        return out


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


@torch.no_grad()
def evaluate(model: SequenceModel, task: Task, split: list[Sequence], batch_size: int, device) -> dict[str, float]:
    """The task's metrics on a split, pooled over all its scored units (not averaged per batch)."""
    model.eval()
    sums: dict[str, list[float]] = {}
    for start in range(0, len(split), batch_size):
        batch = collate(split[start : start + batch_size]).to(device)
        outputs = model(batch.inputs, batch.lengths)  # (T, B, O)
        for name, (total, count) in task.metric_sums(outputs, batch).items():
            acc = sums.setdefault(name, [0.0, 0])
            acc[0] += float(total)
            acc[1] += int(count)
    return {name: total / max(count, 1) for name, (total, count) in sums.items()}


def _train_epoch(model, task: Task, optimizer, cfg: TrialConfig, gen: torch.Generator, device) -> float:
    """One pass over the shuffled training split; returns the mean loss (NaN if it diverged)."""
    model.train()
    train = task.splits["train"]
    order = torch.randperm(len(train), generator=gen).tolist()
    bs, noise, clip = cfg.train.batch_size, cfg.train.input_noise, cfg.train.clip_norm
    total, batches = 0.0, 0
    for start in range(0, len(order), bs):
        batch = collate([train[k] for k in order[start : start + bs]]).to(device)
        inputs = batch.inputs
        if noise > 0:  # Gaussian input noise, training only
            eps = torch.randn(inputs.shape, generator=gen, dtype=inputs.dtype).to(device)
            inputs = inputs + noise * eps
        loss = task.loss(model(inputs, batch.lengths), batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            return math.nan
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        total += value
        batches += 1
    return total / max(batches, 1)


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
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.train.device)
    task = task or build_task(cfg.task)
    model = build_model(cfg, task).to(device)
    tr = cfg.train
    step = tr.lr * (1 - tr.momentum) if tr.scale_lr_by_momentum else tr.lr
    optimizer = torch.optim.SGD(
        model.parameters(), lr=step, momentum=tr.momentum, nesterov=tr.nesterov and tr.momentum > 0
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    primary = task.primary_metric
    st = {"epoch": 0, "best": None, "best_epoch": 0, "stale": 0, "best_val": {}, "test": {}}
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        gen.set_state(resume_from["generator"])
        st = dict(resume_from["trainer"])

    def checkpoint() -> dict:
        return {
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),  # buffers change in place
            "generator": gen.get_state(),
            "trainer": dict(st),
        }

    bar = _progress_bar(tr.max_epochs, st["epoch"], f"{cfg.variant.label()}/{cfg.task.name}") if progress else None
    status, reason = COMPLETED, "max_epochs"
    while st["epoch"] < tr.max_epochs:
        epoch = st["epoch"] + 1
        train_loss = _train_epoch(model, task, optimizer, cfg, gen, device)
        val = evaluate(model, task, task.splits["valid"], tr.eval_batch_size, device) if math.isfinite(train_loss) else {}
        if not math.isfinite(train_loss) or not math.isfinite(val.get(primary, math.nan)):
            status, reason = DIVERGED, "diverged"
            st["epoch"] = epoch
            break
        improved = st["best"] is None or task.better(val[primary], st["best"])
        if improved:
            st.update(best=val[primary], best_epoch=epoch, stale=0, best_val=val)
            st["test"] = evaluate(model, task, task.splits["test"], tr.eval_batch_size, device)
        else:
            st["stale"] += 1
        st["epoch"] = epoch
        metrics = {"train/loss": train_loss, **{f"val/{k}": v for k, v in val.items()}}
        if bar is not None:
            bar.update(1)
            bar.set_postfix({"loss": f"{train_loss:.4g}", primary: f"{val[primary]:.4g}", "best": st["best_epoch"]})
        if st["stale"] >= tr.patience:
            reason = "early_stopping"
        final = _result(status, reason, st, model) if reason == "early_stopping" or epoch == tr.max_epochs else None
        if callback is not None:
            callback(EpochReport(epoch, metrics, st["best_epoch"], improved, checkpoint, final))
        if final is not None:
            break
    if bar is not None:
        bar.close()
    if status == DIVERGED:
        worst = task.worst_metrics()
        st = {**st, "best_val": worst, "test": worst}
    return _result(status, reason, st, model)


def _result(status: str, reason: str, st: dict, model: SequenceModel) -> TrialResult:
    device = device_label(next(model.parameters()).device)
    return TrialResult(
        status, reason, st["epoch"], st["best_epoch"], model.num_parameters(), st["best_val"], st["test"], device=device
    )


def _progress_bar(total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="epoch", dynamic_ncols=True)
