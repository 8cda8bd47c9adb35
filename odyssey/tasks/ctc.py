"""Sequence labelling with CTC (Graves et al. 2006): loss, best-path decoding, character error rate.

A CTC example is a :class:`~odyssey.tasks.base.Sequence` with inputs (T, I), mask (T,) all True
(every frame is read) and targets (T,) int64 holding the label sequence l_1..l_U (each in 1..C-1)
in its first U entries and 0 after: class 0 is the blank, so the zero padding of
:func:`~odyssey.tasks.base.collate` is no label, and U = the number of non-zero entries. A
sequence needs T >= U + (its repeated adjacent labels): otherwise no alignment exists and its CTC
loss is infinite (the loaders drop such examples; see :func:`feasible`).

Loss: ``torch.nn.functional.ctc_loss`` of the log-softmax outputs, -ln p(l | x), summed over the
alignments; as a per-step loss it sits on a sequence's first step (0 elsewhere), so the task's
``sum_over_steps`` reduction is the mean over sequences of -ln p(l | x). An infinite loss (an
impossible alignment, or underflow) is left infinite, never zeroed: the trainer's divergence
check (NaN or infinite) stops the trial with the worst metrics.

Decoding: best path, the most likely class of every frame with repeats merged and blanks removed
(``1 1 0 1 2 2`` -> ``1 1 2``). Metric ``cer`` (primary, lower is better): the edit distance
(Levenshtein: insertions, deletions, substitutions cost 1) of the decoding from the reference,
summed over a split and divided by the total reference length. Worst value 1.0, the CER of
emitting nothing (every character deleted); a model can exceed it by inserting.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from odyssey.tasks.base import Batch, Task

__all__ = ["BLANK", "CTCTask", "best_path", "edit_distance", "feasible"]

BLANK = 0


def feasible(labels: np.ndarray | list[int], frames: int) -> bool:
    """Whether ``frames`` frames can emit ``labels`` under CTC: T >= U + repeated adjacent labels."""
    labels = np.asarray(labels)
    repeats = int((labels[1:] == labels[:-1]).sum()) if len(labels) > 1 else 0
    return frames >= len(labels) + repeats


def best_path(classes: np.ndarray) -> np.ndarray:
    """Collapse a frame-wise class path (T,): merge repeats, then drop blanks."""
    classes = np.asarray(classes)
    if classes.size == 0:
        return classes
    keep = np.concatenate([[True], classes[1:] != classes[:-1]]) & (classes != BLANK)
    return classes[keep]


def edit_distance(hypothesis: np.ndarray | list[int], reference: np.ndarray | list[int]) -> int:
    """Levenshtein distance (unit costs), one numpy row per reference symbol.

    Row i holds D[i, j], the distance of reference[:i] from hypothesis[:j]. With
    ``t[j] = min(D[i-1, j] + 1, D[i-1, j-1] + (ref[i-1] != hyp[j-1]))`` and ``t[0] = i``, the
    insertions are ``D[i, j] = min_{k <= j} t[k] + (j - k)``: a running minimum of ``t - j``.
    """
    hyp, ref = np.asarray(hypothesis), np.asarray(reference)
    cols = np.arange(len(hyp) + 1)
    row = cols.copy()  # D[0, j] = j
    for i, r in enumerate(ref, start=1):
        t = np.empty_like(row)
        t[0] = i
        t[1:] = np.minimum(row[1:] + 1, row[:-1] + (hyp != r))
        row = np.minimum.accumulate(t - cols) + cols
    return int(row[-1])


class CTCTask(Task):
    """A CTC task: subclasses set ``name``, ``input_size`` and ``output_size`` (labels + blank)."""

    metric_names: ClassVar[tuple[str, ...]] = ("cer",)
    primary_metric: ClassVar[str] = "cer"
    lower_is_better: ClassVar[bool] = True
    worst_value: ClassVar[float] = 1.0

    @staticmethod
    def _flat(outputs: torch.Tensor, batch: Batch):
        """Outputs (..., T, B, O) as (T, N, O) with N = prod(...) * B, and the matching (N, T)
        targets, (N,) target lengths, (N,) frame counts."""
        lead, (T, B, O) = outputs.shape[:-3], outputs.shape[-3:]
        flat = outputs.reshape(-1, T, B, O).transpose(0, 1).reshape(T, -1, O)  # (T, N, O)
        targets = batch.targets.expand((*lead, T, B)).reshape(-1, T, B).transpose(1, 2).reshape(-1, T)  # (N, T)
        frames = batch.mask.expand((*lead, T, B)).reshape(-1, T, B).sum(dim=1).reshape(-1)  # (N,)
        return flat, targets, (targets != BLANK).sum(dim=1), frames

    def sequence_losses(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """-ln p(labels | inputs) of each sequence: (..., B); 0 for columns without frames."""
        flat, targets, target_lengths, frames = self._flat(outputs, batch)
        log_probs = F.log_softmax(flat, dim=-1)
        has_frames = frames > 0
        losses = F.ctc_loss(
            log_probs, targets, frames.clamp_min(1), target_lengths, blank=BLANK, reduction="none", zero_infinity=False
        )  # (N,)
        losses = torch.where(has_frames, losses, losses.new_zeros(()))  # a pack's padding column
        return losses.reshape(outputs.shape[:-3] + outputs.shape[-2:-1])

    def step_losses(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        per_sequence = self.sequence_losses(outputs, batch)  # (..., B)
        rest = per_sequence.new_zeros(per_sequence.shape[:-1] + (outputs.shape[-3] - 1, per_sequence.shape[-1]))
        return torch.cat([per_sequence.unsqueeze(-2), rest], dim=-2)  # (..., T, B): on the first step

    def metric_totals(self, outputs: torch.Tensor, batch: Batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        flat, targets, target_lengths, frames = self._flat(outputs.detach(), batch)
        paths = flat.argmax(dim=-1).T.cpu().numpy()  # (N, T)
        targets, target_lengths, frames = targets.cpu().numpy(), target_lengths.cpu().numpy(), frames.cpu().numpy()
        errors = np.array(
            [edit_distance(best_path(paths[n, : frames[n]]), targets[n, : target_lengths[n]]) for n in range(len(frames))]
        )
        shape = outputs.shape[:-3] + outputs.shape[-2:-1]  # (..., B)
        total = torch.as_tensor(errors, dtype=torch.float64).reshape(shape).sum(dim=-1)
        count = torch.as_tensor(target_lengths, dtype=torch.int64).reshape(shape).sum(dim=-1)
        return {"cer": (total.to(outputs.device), count.to(outputs.device))}

    def decode(self, outputs: torch.Tensor, batch: Batch) -> list[np.ndarray]:
        """The best-path label sequences of one model's outputs (T, B, O), one per column."""
        paths = outputs.detach().argmax(dim=-1).T.cpu().numpy()  # (B, T)
        frames = batch.mask.sum(dim=0).cpu().numpy()
        return [best_path(paths[b, : frames[b]]) for b in range(len(frames))]
