"""What every recurrent layer shares: parameters per direction, the initialisation, the input
projection of all steps as one product, and the bidirectional wiring with per-sequence lengths.

:class:`RecurrentLayer` is the common base of :class:`~odyssey.cells.VariantLSTM`,
:class:`~odyssey.cells.VariantGRU` and :class:`~odyssey.cells.VariantRNN`. A subclass says which
parameters one direction has (:meth:`RecurrentLayer.parameter_shapes`) and how one direction runs
(:meth:`RecurrentLayer._direction`); the base does the rest, identically for every family:

* parameters ``<name>`` (forward) and ``<name>_reverse`` (bidirectional), registered in the order
  of ``parameter_shapes``, all initialised N(0, std^2) (std = 0.1, the paper's protocol);
* input (T, B, I), optional ``lengths`` (B,) for zero-padded batches; the reverse direction reads
  each sequence backwards within its own length, the padding stays at the end;
* outputs (T, B, H * directions), forward first, and each per-step state's value at each
  sequence's last step, stacked over directions: (directions, B, H).
"""

from __future__ import annotations

import torch
from torch import nn

from odyssey.cells.spec import VariantSpec

__all__ = ["HiddenStateLayer", "RecurrentLayer", "input_projection", "reverse_index", "run_steps", "torch_layer_weights"]


class RecurrentLayer(nn.Module):
    """Base of the variant layers (see the module docstring). Args as :class:`~odyssey.cells.VariantLSTM`."""

    family: str = ""

    def __init__(
        self,
        spec: VariantSpec,
        input_size: int,
        hidden_size: int,
        bidirectional: bool = False,
        *,
        fused: bool = True,
        init_std: float = 0.1,
    ):
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be >= 1, got {input_size} and {hidden_size}")
        if spec.family != self.family:
            raise ValueError(f"{type(self).__name__} builds variant.family={self.family!r}, got {spec.family!r} ({spec.label()})")
        self.spec = spec
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bidirectional = bidirectional
        self.fused = fused
        for sfx in self._suffixes():
            for name, shape in self.parameter_shapes():
                self.register_parameter(name + sfx, nn.Parameter(torch.empty(shape)))
        self.reset_parameters(init_std)

    def parameter_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(name, shape)`` of one direction's parameters, in registration order."""
        raise NotImplementedError

    def _direction(self, x: torch.Tensor, sfx: str) -> tuple[torch.Tensor, ...]:
        """One direction over x (T, B, I) from a zero state: the outputs (T, B, H) first, then any
        other per-step state (the LSTM's cells), each (T, B, H)."""
        raise NotImplementedError

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def direction_weights(self, sfx: str) -> dict[str, torch.Tensor]:
        """One direction's parameters by their base name, each with a member axis of size 1 (the
        form :meth:`members_forward` takes, as in a trial pack)."""
        return {name: getattr(self, name + sfx).unsqueeze(0) for name, _ in self.parameter_shapes()}

    def reset_parameters(self, std: float = 0.1) -> None:
        for p in self.parameters():
            nn.init.normal_(p, 0.0, std)

    def _run(self, x: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(outputs (T, B, H*directions), the final value of each per-step state (directions, B, H))."""
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"expected input (T, B, {self.input_size}), got {tuple(x.shape)}")
        T, B, _ = x.shape
        last = (lengths.to(x.device) - 1) if lengths is not None else torch.full((B,), T - 1, device=x.device)
        batch_idx = torch.arange(B, device=x.device)
        states = self._direction(x, "")
        outs, finals = [states[0]], [[s[last, batch_idx]] for s in states]
        if self.bidirectional:
            rev = reverse_index(T, last)  # (T, B): reverses each sequence within its length
            xr = x.gather(0, rev.unsqueeze(-1).expand_as(x))
            states_r = self._direction(xr, "_reverse")
            outs.append(states_r[0].gather(0, rev.unsqueeze(-1).expand_as(states_r[0])))
            for f, s in zip(finals, states_r):
                f.append(s[last, batch_idx])
        return torch.cat(outs, dim=-1), tuple(torch.stack(f) for f in finals)

    def extra_repr(self) -> str:
        return (
            f"{self.spec.label()}, input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"bidirectional={self.bidirectional}, fused={self.fused}"
        )


class HiddenStateLayer(RecurrentLayer):
    """A layer whose only state is its output h (the GRU, the simple RNN): one direction is
    ``members_forward`` with a member axis of one, and ``forward`` returns ``(outputs, h_n)`` as
    ``nn.GRU`` and ``nn.RNN`` do."""

    @staticmethod
    def members_forward(spec: VariantSpec, x: torch.Tensor, weights: dict[str, torch.Tensor], active=None, hidden=None, steps=None) -> torch.Tensor:
        """M layers at once: x (M, T, B, I), ``weights`` by base name, each (M, ...) -> (M, T, B, H).

        ``active``: the members still running at each step (see ``run_steps``); ``hidden``: each
        member's own hidden size when the weights are padded to H (a family may skip the padded
        units, whose values are exact zeros either way); ``steps``: each member's own number of
        steps in any order, instead of ``active`` (only the compiled LSTM loop is handed it)."""
        raise NotImplementedError

    def _direction(self, x: torch.Tensor, sfx: str) -> tuple[torch.Tensor]:
        return (self.members_forward(self.spec, x.unsqueeze(0), self.direction_weights(sfx))[0],)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: x (T, B, I); lengths (B,) int64 for zero-padded batches (default: all T).

        Returns: outputs (T, B, H*directions), h_n (directions, B, H).
        """
        out, (h_n,) = self._run(x, lengths)
        return out, h_n


def reverse_index(T: int, last: torch.Tensor) -> torch.Tensor:
    """(T, B) time indices that reverse steps 0..last[b] of each sequence and keep the padding
    (leading dims of ``last`` pass: (M, 1, B) gives (M, T, B))."""
    t = torch.arange(T, device=last.device).unsqueeze(1)  # (T, 1)
    return torch.where(t <= last, last - t, t)


def input_projection(x: torch.Tensor, w_ih: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """W_m x_{m,t} + b_m for all members and steps as one batched product, batch-major per step.

    x (M, T, B, I), w_ih (M, G*H, I), bias (M, G*H) -> (T, M, B, G*H). A stride-0 member axis (one
    batch shared by all members, as in a pack's evaluation) is read once.
    """
    M, T, B, I = x.shape
    if x.stride(0) == 0 and M > 1:
        flat = torch.matmul(x[0].reshape(1, T * B, I), w_ih.transpose(1, 2)) + bias[:, None, :]
    else:
        flat = torch.baddbmm(bias[:, None, :], x.reshape(M, T * B, I), w_ih.transpose(1, 2))
    return flat.view(M, T, B, -1).transpose(0, 1)


def run_steps(step, xw: torch.Tensor, weights: tuple[torch.Tensor, ...], hidden_size: int, active=None) -> torch.Tensor:
    """The time loop of the reference cells, for M members at once, recorded by autograd.

    ``h_t = step(xw[t], h_{t-1}, *weights)`` from h_{-1} = 0, where xw (T, M, B, G*H) holds the
    input projections, h is (M, B, H) and every weight has the member axis first. ``active`` (T
    non-increasing ints, as in :class:`~odyssey.cells.fused.FusedRecurrence`) runs only the first
    ``active[t]`` members at step t; the others' outputs there are exact zeros (and get no
    gradient). Returns (M, T, B, H).
    """
    T, M, B, _ = xw.shape
    h = xw.new_zeros(M, B, hidden_size)
    ys = []
    for t, x_t in enumerate(xw.unbind(0)):
        n = M if active is None else active[t]
        if n == M:
            h = step(x_t, h, *weights)
        elif n == 0:  # no member runs any more (active never increases)
            ys.extend([h.new_zeros(M, B, hidden_size)] * (T - t))
            break
        else:
            h = torch.cat([step(x_t[:n], h[:n], *(w[:n] for w in weights)), h.new_zeros(M - n, B, hidden_size)])
        ys.append(h)
    return torch.stack(ys, 1)


def torch_layer_weights(state_dict: dict[str, torch.Tensor], index: int, sfx: str) -> tuple[torch.Tensor, ...]:
    """``weight_ih, weight_hh, bias_ih, bias_hh`` of layer ``index`` of a torch RNN/GRU/LSTM state dict."""
    try:
        return tuple(state_dict[f"{name}_l{index}{sfx}"] for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    except KeyError as exc:
        raise ValueError(f"state dict lacks {exc.args[0]!r}; keys: {sorted(state_dict)}") from None
