"""The packed model: M members' :class:`~odyssey.model.SequenceModel` weights stacked on a leading
member axis, padded to the largest hidden size, run as one model.

Stacking (HFTA's horizontal fusion, FlashRNN's many small LSTMs in one kernel): every parameter of
a member's ``SequenceModel`` (same variant, task, layers and direction; any hidden size H_m)
becomes one slice of a tensor ``(M, *shape with H_max)``. Each time step is then one batched
product for all members (the family's ``members_forward``: for LSTMs
:class:`~odyssey.cells.fused.FusedRecurrence` with M > 1), and the input
projection of all members and steps one batched GEMM.

Exact masking of different hidden sizes: a member's padded units (j >= H_m) have all-zero
weights in every row and column, so their pre-activations are exactly 0, hence z = g(0) = 0 for
every block activation (tanh, identity, 4 sigma - 2), c = 0 and y = h(0) * o = 0 exactly. They
feed nothing forward (their columns are zero) and receive no gradient except through FGR's
gate-activation columns (sigma(0) = 1/2 != 0): :meth:`PackedSequenceModel.mask_gradients` zeroes
every padded entry of every gradient, so padded weights stay exactly zero through training and a
member computes the same function as alone. The reference cells pad the same way: a GRU's padded
units have r = u = sigma(0) = 1/2 and n = tanh(0 + r * 0) = 0, so h = n/2 + h'/2 stays 0 from
h = 0; an RNN's h = tanh(0) = relu(0) = 0 (IndRNN's u is zero there too); an sLSTM's padded units
have m = 0, i = 1, n >= 1 and c = 0, so y = 0. The minGRU's and minLSTM's padded units are not
zero (a = b = 1/2, h -> 1), but every weight that reads them is zero, so they reach nothing
either, and their gradients are zeroed. Shapes per member follow ``odyssey/cells/layer.py``
(``gru.py``, ``rnn.py``, ``minimal.py``; IndRNN's ``weight_hh`` is a vector (H,)).
"""

from __future__ import annotations

import re
from typing import Sequence

import torch

from odyssey.cells import LAYERS, VariantSpec, native
from odyssey.cells.base import reverse_index

__all__ = ["PackedSequenceModel", "param_dims"]

_LAYER_KEY = re.compile(r"layers\.(\d+)\.(weight_ih|weight_hh|bias|bias_hn|peephole|weight_gate_hh)(_reverse)?$")


def param_dims(key: str, spec: VariantSpec, *, input_size: int, output_size: int, directions: int) -> list[tuple[int, bool]]:
    """Each dimension of parameter ``key`` as ``(blocks, per_hidden)``: ``per_hidden`` dims are
    ``blocks`` row blocks of H units (padded per block); the others have ``blocks`` entries."""
    G, P, K = len(spec.blocks), len(spec.peephole_gates), len(spec.gates)
    if key == "head.weight":
        return [(output_size, False), (directions, True)]
    if key == "head.bias":
        return [(output_size, False)]
    match = _LAYER_KEY.match(key)
    if match is None:
        raise ValueError(f"unknown parameter {key!r} of a SequenceModel")
    layer, name = int(match.group(1)), match.group(2)
    inputs = (input_size, False) if layer == 0 else (directions, True)
    columns = [(1, True)] if spec.recurrent_columns is None else []  # IndRNN's weight_hh is the vector u (H,)
    return {
        "weight_ih": [(G, True), inputs],
        "weight_hh": [(G, True), *columns],
        "bias": [(G, True)],
        "bias_hn": [(1, True)],
        "peephole": [(P, False), (1, True)],
        "weight_gate_hh": [(K, True), (K, True)],
    }[name]


def _blocked(dims: list[tuple[int, bool]], hidden: int) -> list[int]:
    return [n for blocks, per_hidden in dims for n in ((blocks, hidden) if per_hidden else (blocks,))]


def _hidden_slices(dims: list[tuple[int, bool]], hidden: int) -> tuple[slice, ...]:
    return tuple(s for _, per_hidden in dims for s in ((slice(None), slice(0, hidden)) if per_hidden else (slice(None),)))


def pad(t: torch.Tensor, dims: list[tuple[int, bool]], hidden: int, padded: int) -> torch.Tensor:
    """A member's tensor with H = ``hidden`` inside zeros of H = ``padded`` (each row block padded)."""
    if hidden == padded:
        return t
    out = t.new_zeros(_blocked(dims, padded))
    out[_hidden_slices(dims, hidden)] = t.reshape(_blocked(dims, hidden))
    return out.reshape([b * padded if h else b for b, h in dims])


def unpad(t: torch.Tensor, dims: list[tuple[int, bool]], hidden: int, padded: int) -> torch.Tensor:
    """The inverse of :func:`pad`: a member's own tensor (a copy) from its padded slice."""
    blocked = t.reshape(_blocked(dims, padded))[_hidden_slices(dims, hidden)]
    return blocked.reshape([b * hidden if h else b for b, h in dims]).clone()


class PackedSequenceModel:
    """M members of one variant/task/shape family as one model.

    Args:
        spec, input_size, output_size, num_layers, bidirectional: shared by every member.
        hidden_sizes: H_m of each member.
        states: each member's ``SequenceModel.state_dict()`` (their own shapes).
        device, dtype: where the stacked weights live.

    ``params[key]`` is (M, *shape at H_max), a leaf tensor with ``requires_grad``; ``keys`` keeps
    the members' state-dict order (which is also their ``parameters()`` order).
    """

    def __init__(
        self,
        spec: VariantSpec,
        input_size: int,
        output_size: int,
        *,
        num_layers: int,
        bidirectional: bool,
        hidden_sizes: Sequence[int],
        states: Sequence[dict[str, torch.Tensor]],
        device: torch.device | str,
        dtype: torch.dtype,
    ):
        if len(states) != len(hidden_sizes) or not states:
            raise ValueError("a pack needs one state dict per hidden size, and at least one member")
        self.spec, self.input_size, self.output_size = spec, input_size, output_size
        self.num_layers, self.bidirectional = num_layers, bidirectional
        self.directions = 2 if bidirectional else 1
        self.hidden_sizes = list(hidden_sizes)
        self.H = max(self.hidden_sizes)
        self.members_forward = LAYERS[spec.family].members_forward
        self.keys = list(states[0])
        # (layer, direction suffix) -> {parameter's base name: its key}: what members_forward takes.
        self._direction_keys: dict[tuple[int, str], dict[str, str]] = {}
        for key in self.keys:
            match = _LAYER_KEY.match(key)
            if match:
                self._direction_keys.setdefault((int(match.group(1)), match.group(3) or ""), {})[match.group(2)] = key
        self.dims = {k: self._dims(k) for k in self.keys}
        self.params = {k: self.stack([s[k] for s in states], k, device=device, dtype=dtype).requires_grad_() for k in self.keys}
        self._padding, self._padding_exact = None, False  # padded entries of each parameter (True)
        if len(set(self.hidden_sizes)) > 1:  # padded entries exist: their gradients are zeroed
            ones = [{k: torch.ones_like(s[k], dtype=torch.bool) for k in self.keys} for s in states]
            self._padding = {k: ~self.stack([o[k] for o in ones], k, device=device, dtype=torch.bool) for k in self.keys}

    def _dims(self, key: str) -> list[tuple[int, bool]]:
        return param_dims(key, self.spec, input_size=self.input_size, output_size=self.output_size, directions=self.directions)

    @property
    def members(self) -> int:
        return len(self.hidden_sizes)

    def stack(self, tensors: Sequence[torch.Tensor], key: str, *, device=None, dtype=None) -> torch.Tensor:
        """Members' tensors of parameter ``key`` (their own shapes) as one padded (M, ...) tensor."""
        dims = self._dims(key)
        padded = [pad(t.detach().to(device=device, dtype=dtype), dims, h, self.H) for t, h in zip(tensors, self.hidden_sizes)]
        return torch.stack(padded)

    def member_tensor(self, key: str, m: int, t: torch.Tensor | None = None) -> torch.Tensor:
        """Member ``m``'s own copy of ``params[key]`` (or of ``t``, a tensor laid out like it)."""
        source = self.params[key] if t is None else t
        return unpad(source[m].detach(), self.dims[key], self.hidden_sizes[m], self.H)

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        """Member ``m``'s ``SequenceModel.state_dict()``, on the CPU."""
        return {k: self.member_tensor(k, m).cpu() for k in self.keys}

    def mask_gradients(self) -> None:
        """Zero every padded entry of every gradient (see the module docstring).

        After a forward pass of the compiled CPU LSTM loop there is nothing to zero: it writes no
        padded unit, so every padded activation, state and gradient is an exact zero (a member
        with a NaN aside, which the trainer ends at the epoch's end)."""
        if self._padding is None or self._padding_exact:
            return
        for k, p in self.params.items():
            if p.grad is not None:
                p.grad.masked_fill_(self._padding[k], 0.0)

    def parameters(self) -> list[torch.Tensor]:
        return [self.params[k] for k in self.keys]

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, member_steps: torch.Tensor | None = None) -> torch.Tensor:
        """x (M, T, B, I), or (T, B, I) shared by all members; lengths (M, B) or (B,) -> (M, T, B, O).

        ``member_steps`` (M,) (a CPU tensor): the steps each member's batch really has. The
        members are then run longest first, and each step computes only those still running
        (the rest of their outputs are zeros: the loss masks them): a pack update costs the
        sum of its members' lengths, not M times the longest.
        """
        M = self.members
        if x.dim() == 3:
            x = x.unsqueeze(0).expand(M, *x.shape)  # stride 0: the input projection is one GEMM
        if lengths.dim() == 1:
            lengths = lengths.unsqueeze(0).expand(M, -1)
        params, active, inverse, hidden, steps = self.params, None, None, self.hidden_sizes, None
        self._padding_exact = compiled = self._any_order(x)
        if member_steps is not None and compiled:
            steps = member_steps.tolist()  # the compiled LSTM loop skips each member's own tail
        elif member_steps is not None:
            order = torch.sort(member_steps, descending=True, stable=True).indices
            ordered = member_steps[order]
            active = tuple((ordered[None, :] > torch.arange(x.shape[1])[:, None]).sum(1).tolist())  # (T,)
            if not torch.equal(order, torch.arange(M)):
                device_order = order.to(x.device)
                params = {k: v.index_select(0, device_order) for k, v in params.items()}  # autograd scatters back
                x, lengths = x.index_select(0, device_order), lengths.index_select(0, device_order)
                inverse = torch.argsort(order).to(x.device)
                hidden = [self.hidden_sizes[m] for m in order.tolist()]
        out = self._run(params, x, lengths, {"active": active, "hidden": hidden, "steps": steps})
        return out if inverse is None else out.index_select(0, inverse)

    __call__ = forward

    def _any_order(self, x: torch.Tensor) -> bool:
        """Whether the members' layers take per-member step counts in any order (no sorting, which
        costs a copy of every weight per update): the compiled CPU LSTM loop, at batch 1."""
        return self.spec.fused_lstm and native.loop_for(x, x.shape[2]) is not None

    def _run(self, params: dict[str, torch.Tensor], x: torch.Tensor, lengths: torch.Tensor, schedule: dict) -> torch.Tensor:
        M, T, B, _ = x.shape
        last = (lengths.to(x.device) - 1).unsqueeze(1)  # (M, 1, B)
        for k in range(self.num_layers):
            outs = [self._direction(params, x, k, "", schedule)]
            if self.bidirectional:
                rev = reverse_index(T, last)  # (M, T, B): reverses each sequence within its length
                xr = x.gather(1, rev.unsqueeze(-1).expand(*rev.shape, x.shape[-1]))
                yr = self._direction(params, xr, k, "_reverse", schedule)
                outs.append(yr.gather(1, rev.unsqueeze(-1).expand_as(yr)))
            x = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]  # (M, T, B, H * directions)
        w, b = params["head.weight"], params["head.bias"]  # (M, O, F), (M, O)
        out = torch.baddbmm(b.unsqueeze(1), x.reshape(M, T * B, -1), w.transpose(1, 2))
        return out.view(M, T, B, -1)

    def _direction(self, params: dict[str, torch.Tensor], x: torch.Tensor, layer: int, sfx: str, schedule: dict) -> torch.Tensor:
        weights = {name: params[key] for name, key in self._direction_keys[layer, sfx].items()}
        return self.members_forward(self.spec, x, weights, **schedule)  # (M, T, B, H)
