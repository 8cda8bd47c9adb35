"""Train many trials of one search at once: :func:`train_pack` and the :class:`PackTrainer` engine.

A pack runs the protocol of :func:`odyssey.train.train_trial` for M members in lock step: each
pack update is member m's k-th minibatch for every m, as one forward and backward pass of the
:class:`~odyssey.packs.model.PackedSequenceModel` and one :class:`~odyssey.packs.optim.PackedSGD`
step. Every member keeps everything that makes its trial its own:

* its initial weights (``torch.manual_seed(seed)`` then the model, as ``train_trial``);
* its data order (its own ``torch.Generator``) and its input noise (the counter-based stream of
  :mod:`odyssey.noise`, keyed by its seed, epoch and sequence);
* its hyperparameters (hidden size, step size, momentum, Nesterov, noise, batch size, clipping
  by norm and by value, epochs, patience) and its own epoch counter, early stopping and best-epoch test metrics.

Two ways to train the members, chosen by the device (``PackTrainer(stacked=...)``):

* **Per member (the CPU).** Each member keeps its own :class:`~odyssey.model.SequenceModel` and
  ``torch.optim.SGD``, and every epoch runs :func:`odyssey.train.train_epoch` and
  :func:`odyssey.train.evaluate` on them: the very code of ``train_trial``, on tensors of the
  member's own shapes. So a member's metrics, best epoch, status and weights are *bit for bit*
  those of the same trial alone, whatever the other members are, in any order, whenever they
  join or leave, and when one diverges. (Padded shapes would not do: BLAS picks its blocking, and
  ATen its vector lanes and tails, by shape, so padding changes the order of a member's sums; at
  the paper's learning rates online SGD amplifies a 1e-7 difference to 0.1-0.5 NLL in 15 epochs.)
* **Stacked (CUDA).** The members' weights are stacked and padded to the largest hidden size
  (:class:`~odyssey.packs.model.PackedSequenceModel`), and each update is one forward and backward
  of all members and one :class:`~odyssey.packs.optim.PackedSGD` step. Minibatches are padded to
  the longest sequence of the update and to the largest batch size, with masks, so the extra
  steps and columns contribute exact zeros: a member's numbers are those of the same trial alone
  up to float rounding (summation order), and deterministic for a given pack
  (:func:`odyssey.train.deterministic_cuda`). A pack update takes as many steps as its longest
  sequence (JSB: 25-160 steps, mean 61), and the padded columns are computed too.

Members leave at epoch ends (early stopping, budget, divergence, or :meth:`PackTrainer.remove`),
and new ones join there (stacked: the pack's tensors are rebuilt from the members' own states).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import torch

from odyssey.config import TrialConfig
from odyssey.errors import ConfigError
from odyssey.model import build_model
from odyssey.tasks import Task, build_task
from odyssey.tasks.resident import ResidentSplit
from odyssey.train import (
    COMPLETED,
    DIVERGED,
    DTYPES,
    EpochReport,
    TrialResult,
    deterministic_cuda,
    device_label,
    eval_batch_size,
    evaluate,
    input_noise,
    resolve_device,
    resumed_stop_reason,
    step_size,
    train_epoch,
    trial_checkpoint,
    trial_provenance,
    trial_state,
)

from odyssey.packs.model import PackedSequenceModel
from odyssey.packs.optim import PackedSGD

__all__ = ["PackEvent", "PackTrainer", "train_pack"]


@dataclass(frozen=True)
class PackEvent:
    """What one member did in a pack epoch: its report (None when it diverged) and, when the
    member ended in this epoch, its result."""

    key: Hashable
    report: EpochReport | None
    result: TrialResult | None


@dataclass
class _Member:
    key: Hashable
    cfg: TrialConfig
    gen: torch.Generator  # the data order, as in train_trial
    st: dict  # train_trial's trainer state: epoch, best, best_epoch, stale, best_val, test
    state: dict[str, torch.Tensor] | None  # own weights while not in the stacked tensors
    buffers: dict[str, torch.Tensor] | None  # own momentum buffers, likewise
    params_count: int
    model: torch.nn.Module | None = None  # per-member packs: its own model and optimizer
    optimizer: torch.optim.Optimizer | None = None


def _family(cfg: TrialConfig) -> dict:
    """What members of one pack must share, by name (the rest may differ member by member)."""
    return {
        "task": cfg.task,
        "variant": cfg.variant.switches(),
        "model.num_layers": cfg.model.num_layers,
        "model.bidirectional": cfg.model.bidirectional,
        "train.loss_reduction": cfg.train.loss_reduction,
        "train.dtype": cfg.train.dtype,
        "train.device": cfg.train.device,
    }


def check_pack(configs: Sequence[TrialConfig]) -> None:
    """One :class:`ConfigError` if ``configs`` cannot share a pack (naming the first difference)."""
    if not configs:
        raise ConfigError("a pack needs at least one trial config; got none")
    first = _family(configs[0])
    for j, cfg in enumerate(configs[1:], start=1):
        for key, value in _family(cfg).items():
            if value != first[key]:
                what = "task" if key == "task" else "variant" if key == "variant" else key
                shown = lambda v: v.name if key == "task" else v  # noqa: E731
                raise ConfigError(
                    f"members of one pack must share their {what}: member 0 has {shown(first[key])!r}, member {j} "
                    f"has {shown(value)!r}; pack each (task, variant) search on its own"
                )


class PackTrainer:
    """The pack engine: :meth:`add` and :meth:`remove` members, :meth:`run_epoch` trains them.

    Args:
        task: the task every member trains on (its splits are made resident on ``device`` once).
        device, dtype: where and in what precision the pack trains.
        stacked: train the members as one stacked, padded model (default: on CUDA), else each
            with its own model, bit for bit as alone (default: on the CPU); see the module doc.
    """

    def __init__(self, task: Task, *, device: torch.device, dtype: torch.dtype, stacked: bool | None = None):
        self.task, self.device, self.dtype = task, torch.device(device), dtype
        self.stacked = self.device.type != "cpu" if stacked is None else stacked
        deterministic_cuda(self.device)
        self.data = {name: ResidentSplit(task.splits[name], device, dtype) for name in ("train", "valid", "test")}
        self._members: list[_Member] = []
        self._model: PackedSequenceModel | None = None
        self._opt: PackedSGD | None = None
        self._version = 0  # bumped whenever the stacked tensors change membership
        self._ended: list[PackEvent] = []  # members admitted with nothing left to train

    def __len__(self) -> int:
        return len(self._members) + len(self._ended)

    @property
    def keys(self) -> list[Hashable]:
        return [m.key for m in self._members]

    def add(self, key: Hashable, cfg: TrialConfig, *, resume_from: dict | None = None) -> None:
        """Admit a trial; it trains from the next :meth:`run_epoch`. ``resume_from`` is a
        checkpoint of ``train_trial`` or of a pack (the same format)."""
        if any(m.key == key for m in self._members):
            raise ValueError(f"pack member {key!r} is already in the pack")
        if self._members:
            check_pack([self._members[0].cfg, cfg])
        member = self._stacked_member(key, cfg, resume_from) if self.stacked else self._own_member(key, cfg, resume_from)
        done = resumed_stop_reason(member.st, cfg.train)
        if done is not None:  # its checkpoint was its last epoch: it ends without training
            self._ended.append(PackEvent(key, None, self._result(member, COMPLETED, done, member.st)))
            return
        self._sync_out()  # the members already training keep their state through the rebuild
        self._members.append(member)
        self._model = None  # rebuilt at the next epoch

    def _own_member(self, key: Hashable, cfg: TrialConfig, resume_from: dict | None) -> _Member:
        """A member with its own model and optimizer, as ``train_trial`` builds them."""
        model, optimizer, gen, st = trial_state(cfg, self.task, self.device, resume_from)
        return _Member(key, cfg, gen, st, None, None, model.num_parameters(), model, optimizer)

    def _stacked_member(self, key: Hashable, cfg: TrialConfig, resume_from: dict | None) -> _Member:
        """A member whose own (CPU) state waits for the next build of the stacked tensors."""
        torch.manual_seed(cfg.seed)  # the same initial weights as train_trial
        model = build_model(cfg, self.task)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        buffers = None
        gen = torch.Generator().manual_seed(cfg.seed)
        st = {"epoch": 0, "best": None, "best_epoch": 0, "stale": 0, "best_val": {}, "test": {}}
        if resume_from is not None:
            state = {k: v.detach().clone() for k, v in resume_from["model"].items()}
            saved = resume_from["optimizer"]["state"]
            if saved:
                buffers = {k: saved[i]["momentum_buffer"].detach().clone() for i, k in enumerate(state)}
            gen.set_state(resume_from["generator"])
            st = dict(resume_from["trainer"])
        count = sum(v.numel() for v in state.values())
        return _Member(key, cfg, gen, st, state, buffers, count)

    def remove(self, key: Hashable) -> None:
        """Take a member out (a scheduler stopped it); the others continue unchanged. Unknown
        keys are ignored."""
        self._leave({key})

    # -- stacked tensors ----------------------------------------------------------------------

    def _sync_out(self) -> None:
        """Copy every member's weights and momentum out of the stacked tensors (they are dropped
        next: membership changes rebuild them)."""
        if self._model is None:
            return
        for j, m in enumerate(self._members):
            m.state = self._model.member_state(j)
            m.buffers = {k: self._model.member_tensor(k, j, b).cpu() for k, b in zip(self._model.keys, self._opt.buffers)}

    def _build(self) -> None:
        members = self._members
        first = members[0].cfg
        self._model = PackedSequenceModel(
            first.variant,
            self.task.input_size,
            self.task.output_size,
            num_layers=first.model.num_layers,
            bidirectional=first.model.bidirectional,
            hidden_sizes=[m.cfg.model.hidden_size for m in members],
            states=[m.state for m in members],
            device=self.device,
            dtype=self.dtype,
        )
        model = self._model
        buffers = None
        if any(m.buffers is not None for m in members):
            zeros = lambda m: {k: torch.zeros_like(v) for k, v in m.state.items()}  # noqa: E731
            own = [m.buffers if m.buffers is not None else zeros(m) for m in members]
            buffers = [model.stack([b[k] for b in own], k, device=self.device, dtype=self.dtype) for k in model.keys]
        trs = [m.cfg.train for m in members]
        clip = [tr.clip_norm if tr.clip_norm is not None else math.inf for tr in trs]
        clip_values = [tr.clip_value if tr.clip_value is not None else math.inf for tr in trs]
        self._opt = PackedSGD(
            model.parameters(),
            step_sizes=torch.tensor([step_size(tr) for tr in trs], dtype=torch.float64),
            momenta=torch.tensor([tr.momentum for tr in trs], dtype=torch.float64),
            nesterov=torch.tensor([tr.nesterov and tr.momentum > 0 for tr in trs]),
            clip_norms=torch.tensor(clip, dtype=torch.float64) if any(tr.clip_norm is not None for tr in trs) else None,
            clip_values=torch.tensor(clip_values, dtype=torch.float64) if any(tr.clip_value is not None for tr in trs) else None,
            buffers=buffers,
        )
        for m in members:
            m.state = m.buffers = None  # the stacked tensors hold them now
        self._version += 1

    # -- one epoch -----------------------------------------------------------------------------

    def run_epoch(self) -> list[PackEvent]:
        """Train every member for one epoch of its own, validate, and return one event per member.

        Members that end (budget, early stopping, divergence) leave the pack here.
        """
        ended, self._ended = self._ended, []
        if not self._members:
            return ended
        return ended + self._train_members()

    def _train_members(self) -> list[PackEvent]:
        if self.stacked and self._model is None:
            self._build()
        members, task = self._members, self.task
        train_loss = self._train_epoch() if self.stacked else self._train_each()
        finite = [j for j, loss in enumerate(train_loss) if math.isfinite(loss)]
        val = self._evaluate("valid") if self.stacked else self._evaluate_each("valid", finite)
        primary = task.primary_metric
        events, improved = [], []
        for j, m in enumerate(members):
            epoch = m.st["epoch"] + 1
            if not math.isfinite(train_loss[j]) or not math.isfinite(val[primary][j]):
                m.st["epoch"] = epoch
                worst = task.worst_metrics()
                st = {**m.st, "best_val": worst, "test": worst}
                events.append(PackEvent(m.key, None, self._result(m, DIVERGED, "diverged", st)))
                continue
            mine = {name: values[j] for name, values in val.items()}
            better = m.st["best"] is None or task.better(mine[primary], m.st["best"])
            if better:
                m.st.update(best=mine[primary], best_epoch=epoch, stale=0, best_val=mine)
                improved.append(j)
            else:
                m.st["stale"] += 1
            m.st["epoch"] = epoch
            events.append(PackEvent(m.key, None, None))  # filled in below
        test = (self._evaluate("test") if self.stacked else self._evaluate_each("test", improved)) if improved else {}
        for j in improved:
            members[j].st["test"] = {name: values[j] for name, values in test.items()}
        for j, m in enumerate(members):
            if events[j].result is not None:  # diverged
                continue
            tr, st = m.cfg.train, m.st
            metrics = {"train/loss": train_loss[j], **{f"val/{k}": v[j] for k, v in val.items()}}
            reason = "early_stopping" if st["stale"] >= tr.patience else "max_epochs"
            final = self._result(m, COMPLETED, reason, st) if reason == "early_stopping" or st["epoch"] >= tr.max_epochs else None
            report = EpochReport(st["epoch"], metrics, st["best_epoch"], j in improved, self._checkpointer(j), final)
            events[j] = PackEvent(m.key, report, final)
        ended = {e.key for e in events if e.result is not None}
        if ended:
            self._leave(ended)
        return events

    def _leave(self, keys: set) -> None:
        """Members leave; the rest keep their state (copied out) for the next build."""
        self._sync_out()
        self._members = [m for m in self._members if m.key not in keys]
        self._model = None

    def _result(self, m: _Member, status: str, reason: str, st: dict) -> TrialResult:
        return TrialResult(
            status, reason, st["epoch"], st["best_epoch"], m.params_count, st["best_val"], st["test"],
            device=device_label(self.device), provenance=trial_provenance(m.cfg, self.device),
        )  # fmt: skip

    def _checkpointer(self, j: int) -> Callable[[], dict]:
        """Member j's checkpoint in ``train_trial``'s format (valid until the pack changes)."""
        version, m = self._version, self._members[j]
        if not self.stacked:
            return lambda: trial_checkpoint(m.model, m.optimizer, m.gen, m.st)

        def checkpoint() -> dict:
            if m.state is not None:  # left the pack after this epoch: its own copies
                state, buffers = m.state, m.buffers
            elif version == self._version:
                state = self._model.member_state(j)
                buffers = {k: self._model.member_tensor(k, j, b).cpu() for k, b in zip(self._model.keys, self._opt.buffers)}
            else:
                raise RuntimeError(f"the checkpoint of pack member {m.key!r} was asked for after the pack changed")
            return {
                "model": state,
                "optimizer": _sgd_state_dict(m.cfg, state, buffers),
                "generator": m.gen.get_state(),
                "trainer": dict(m.st),
            }

        return checkpoint

    def _train_each(self) -> list[float]:
        """One epoch of every member with its own model: ``train_trial``'s epoch, member by member."""
        data = self.data["train"]
        return [train_epoch(m.model, self.task, m.optimizer, m.cfg, data, m.gen, m.st["epoch"] + 1) for m in self._members]

    def _evaluate_each(self, split: str, which: Sequence[int]) -> dict[str, list[float]]:
        """Members ``which``'s metrics on a split, each with its own model at its own evaluation
        batch size, as ``train_trial``; NaN for the others."""
        out: dict[str, list[float]] = {}
        for j in which:
            m = self._members[j]
            for name, value in evaluate(m.model, self.task, self.data[split], eval_batch_size(m.cfg, self.device)).items():
                out.setdefault(name, [math.nan] * len(self._members))[j] = value
        return out

    def _train_epoch(self) -> list[float]:
        """One epoch of every stacked member; returns each member's mean training loss (one host sync)."""
        members, data, model, opt, task = self._members, self.data["train"], self._model, self._opt, self.task
        M, N = len(members), len(data)
        sizes = [m.cfg.train.batch_size for m in members]
        updates = [math.ceil(N / b) for b in sizes]
        K, B = max(updates), max(sizes)
        # index[k, m] = member m's k-th minibatch (its own permutation), padding rows elsewhere
        index = torch.full((K, M, B), data.padding_index, dtype=torch.int64)
        for j, m in enumerate(members):
            order = torch.randperm(N, generator=m.gen)
            padded = torch.cat([order, torch.full((updates[j] * sizes[j] - N,), data.padding_index)])
            index[: updates[j], j, : sizes[j]] = padded.view(updates[j], sizes[j])
        steps = data.host_lengths[index].amax(dim=(1, 2)).clamp_min(1).tolist()  # (K,) on the host
        everyone = all(u == K for u in updates)
        active = (torch.arange(K)[:, None] < torch.tensor(updates)[None]).to(self.device)  # (K, M)
        host_index, index = index, index.to(self.device)
        seeds = torch.tensor([m.cfg.seed for m in members], device=self.device)[:, None]
        epochs = torch.tensor([m.st["epoch"] + 1 for m in members], device=self.device)[:, None]
        noise = [m.cfg.train.input_noise for m in members]
        std = torch.tensor(noise, dtype=self.dtype, device=self.device).view(M, 1, 1, 1)
        reduction = members[0].cfg.train.loss_reduction
        total = torch.zeros(M, dtype=torch.float64, device=self.device)
        member_steps = data.host_lengths[host_index].amax(dim=2)  # (K, M): each member's own steps
        for k in range(K):
            batch = data.batch(index[k], steps[k])  # (M, T, B, ...)
            inputs = input_noise(batch, index[k], seeds, epochs, std) if any(noise) else batch.inputs
            losses = task.loss(model(inputs, batch.lengths, member_steps[k]), batch, reduction)  # (M,)
            opt.zero_grad()
            losses.sum().backward()  # members are independent: each gets its own gradient
            model.mask_gradients()
            opt.step(None if everyone else active[k])
            total += torch.where(active[k], losses.detach().double(), 0.0)
        return (total / torch.tensor(updates, dtype=torch.float64, device=self.device)).tolist()

    @torch.no_grad()
    def _evaluate(self, split: str) -> dict[str, list[float]]:
        """Every stacked member's metrics on a split, each batch shared by all members (one host sync)."""
        size = min(eval_batch_size(m.cfg, self.device) for m in self._members)
        metrics = self.data[split].metric_totals(self._model, self.task, size)  # shared inputs: (M,) each
        return {name: values.tolist() for name, values in metrics.items()}


def _sgd_state_dict(cfg: TrialConfig, state: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor] | None) -> dict:
    """``torch.optim.SGD.state_dict()`` of the member's optimizer, so ``train_trial`` can resume it."""
    tr = cfg.train
    template = torch.optim.SGD(
        [torch.nn.Parameter(torch.empty(0)) for _ in state], lr=step_size(tr), momentum=tr.momentum,
        nesterov=tr.nesterov and tr.momentum > 0,
    ).state_dict()  # fmt: skip
    if tr.momentum != 0 and buffers is not None:
        template["state"] = {i: {"momentum_buffer": buffers[k].clone()} for i, k in enumerate(state)}
    return template


def train_pack(
    configs: Sequence[TrialConfig],
    *,
    task: Task | None = None,
    callback: Callable[[int, EpochReport], None] | None = None,
    pack_size: int | None = None,
    stacked: bool | None = None,
) -> list[TrialResult]:
    """Train ``configs`` as one pack until every member has ended; their results, in order.

    Args:
        configs: trials of one (task, variant) search; they may differ in every searched
            hyperparameter (hidden size, step size, momentum, noise, batch size, clipping, epochs).
        task: a prebuilt task (else built from the configs' task).
        callback: ``callback(member_index, report)`` after each member's epoch, as
            ``train_trial``'s callback (none for the epoch in which a member diverges).
        pack_size: at most this many members train at once (default: all); the others join as
            members leave, in order (continuous batching).
        stacked: see :class:`PackTrainer` (default: stacked on CUDA, per member on the CPU).

    On the CPU each result is ``train_trial(configs[i])``'s bit for bit; stacked, up to float
    rounding (see the module doc).

    Example:
        >>> results = train_pack([cfg.replace(seed=s) for s in range(8)])  # doctest: +SKIP
    """
    configs = list(configs)
    check_pack(configs)
    if pack_size is not None and (isinstance(pack_size, bool) or not isinstance(pack_size, int) or pack_size < 1):
        raise ConfigError(f"pack_size={pack_size!r} is invalid: expected an integer >= 1 (or None: all members at once)")
    first = configs[0]
    task = task or build_task(first.task)
    trainer = PackTrainer(task, device=resolve_device(first.train.device), dtype=DTYPES[first.train.dtype], stacked=stacked)
    queue = list(enumerate(configs))
    results: list[TrialResult | None] = [None] * len(configs)
    limit = pack_size or len(configs)
    while queue or len(trainer):
        while queue and len(trainer) < limit:
            index, cfg = queue.pop(0)
            trainer.add(index, cfg)
        for event in trainer.run_epoch():
            if event.report is not None and callback is not None:
                callback(event.key, event.report)
            if event.result is not None:
                results[event.key] = event.result
    return results  # type: ignore[return-value]
