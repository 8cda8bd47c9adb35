"""A split kept on the training device, padded once; a batch is one index gather.

The trainer (and a trial pack) would otherwise collate every minibatch on the host and copy it
to the device: one host-to-device copy per update, which serialises a GPU loop. A
:class:`ResidentSplit` pads the whole split once into sequence-major tensors on the device, plus
one all-zero padding row at index ``N`` (what a pack's empty batch columns point to), and builds
a time-major :class:`Batch` for any index tensor of shape ``(..., B)``: a trial's minibatch
``(B,)``, or a pack's minibatches ``(M, B)``, one per member.

Sequence lengths stay on the host as well, so the number of steps of a batch is known without a
device sync.
"""

from __future__ import annotations

import torch

from odyssey.tasks.base import Batch, Sequence, collate

__all__ = ["ResidentSplit"]


class ResidentSplit:
    """One split on ``device``: inputs (N+1, T_max, I), targets (N+1, T_max[, O]), mask (N+1, T_max).

    Args:
        sequences: the split's examples.
        device: where the tensors live.
        dtype: floating dtype of the inputs and of float targets.
    """

    def __init__(self, sequences: list[Sequence], device: torch.device | str, dtype: torch.dtype = torch.float32):
        if not sequences:
            raise ValueError("a split needs at least one sequence")
        padded = collate(list(sequences))  # (T, N, ...) time-major on the host
        empty = lambda t: torch.zeros((1, *t.shape[1:]), dtype=t.dtype)  # noqa: E731 - the padding row

        def resident(t: torch.Tensor, cast: bool) -> torch.Tensor:
            t = t.transpose(0, 1)  # (N, T, ...)
            t = torch.cat([t, empty(t)])
            return t.to(device=device, dtype=dtype if cast and t.is_floating_point() else t.dtype).contiguous()

        self.inputs = resident(padded.inputs, True)
        self.targets = resident(padded.targets, True)
        self.mask = resident(padded.mask, False)
        self.host_lengths = torch.cat([padded.lengths, torch.zeros(1, dtype=torch.int64)])  # (N+1,), CPU
        self.lengths = self.host_lengths.to(device)
        self.size = len(sequences)
        self.padding_index = self.size
        self.device = torch.device(device)

    def __len__(self) -> int:
        return self.size

    def steps(self, host_index: torch.Tensor) -> int:
        """The longest sequence among ``host_index`` (a CPU tensor): the batch's number of steps."""
        return max(int(self.host_lengths[host_index].max()), 1)

    def batch(self, index: torch.Tensor, steps: int) -> Batch:
        """The batch of sequences ``index`` (..., B) (on the device), cut to ``steps`` steps.

        Returns a :class:`Batch` with inputs (..., T, B, I), targets (..., T, B[, O]), mask
        (..., T, B) and lengths (..., B) (0 for the padding row), all on the device.
        """

        def gather(t: torch.Tensor) -> torch.Tensor:
            picked = t[:, :steps][index]  # (..., B, T, ...)
            return picked.transpose(index.dim() - 1, index.dim()).contiguous()  # (..., T, B, ...)

        return Batch(gather(self.inputs), gather(self.targets), gather(self.mask), self.lengths[index])

    def metric_totals(self, model, task, batch_size: int) -> dict[str, torch.Tensor]:
        """``task``'s metrics of ``model`` over the whole split, pooled over its scored units.

        The split goes through ``model(inputs, lengths)`` in order, ``batch_size`` sequences at a
        time; the sums stay on the device (no host sync). A model's outputs (T, B, O) give scalar
        metrics, a pack's (M, T, B, O) one value per member.
        """
        totals: dict[str, list] = {}
        for start in range(0, self.size, batch_size):
            stop = min(start + batch_size, self.size)
            index = torch.arange(start, stop, device=self.device)
            batch = self.batch(index, self.steps(torch.arange(start, stop)))
            for name, (total, count) in task.metric_totals(model(batch.inputs, batch.lengths), batch).items():
                acc = totals.setdefault(name, [0, 0])
                acc[0], acc[1] = acc[0] + total.double(), acc[1] + count
        return {name: total / torch.clamp_min(torch.as_tensor(count), 1) for name, (total, count) in totals.items()}
