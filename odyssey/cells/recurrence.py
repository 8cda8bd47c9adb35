"""The structure of a variant's time step, and the readable reference loop.

The layer computes the input projection of all steps as one matrix product; the recurrent part
runs step by step, on one of two paths:

* :func:`forward_loop` (here): the equations written out for ``(B, H)`` tensors, recorded by
  autograd. Simple, supports double backward; the reference the fast path is tested against.
* :class:`odyssey.cells.fused.FusedRecurrence`: the same function with feature-major buffers and a
  hand-written backward pass. The fast default.

Pre-activation rows per step are laid out ``[i, f | g | o]`` (absent gates have no rows). With
full gate recurrence the recurrent state is ``[y', s']`` where s' stacks the previous gate
activations (i, f, o); :func:`recurrent_weight` builds the matching (G*H, H + K*H) matrix
``[R | Rg placed in the gate rows]``, so each step still does one matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from odyssey.cells.activations import Activation, activation
from odyssey.cells.spec import VariantSpec

__all__ = ["Layout", "forward_loop", "recurrent_weight"]


@dataclass(frozen=True)
class Layout:
    """The structure of a variant's step, fixed when the layer is built."""

    H: int
    if_gates: tuple[str, ...]  # own gates among ('i', 'f'), in that order: rows [0, n_if*H)
    has_o: bool  # output gate rows come last
    coupled: bool  # f = 1 - i
    peep: bool  # peephole rows: one per own gate, order i, f, o
    fgr: bool
    g: Activation
    h: Activation

    @classmethod
    def of(cls, spec: VariantSpec, hidden_size: int) -> "Layout":
        return cls(
            H=hidden_size,
            if_gates=tuple(g for g in spec.gates if g in "if"),
            has_o="o" in spec.gates,
            coupled=spec.coupled_input_forget,
            peep=bool(spec.peephole_gates),
            fgr=spec.full_gate_recurrence,
            g=activation(spec.block_activation),
            h=activation(spec.output_activation),
        )

    @property
    def n_if(self) -> int:
        return len(self.if_gates)

    @property
    def K(self) -> int:
        """Gates with weights of their own (the FGR state size is K*H)."""
        return self.n_if + self.has_o

    @property
    def pre_blocks(self) -> dict[str, slice]:
        """Row blocks of a step's pre-activations: ``if`` (the i/f gates present), ``g``, ``o``."""
        H, n = self.H, self.n_if
        return {"if": slice(0, n * H), "g": slice(n * H, (n + 1) * H), "o": slice((n + 1) * H, (n + 2) * H)}

    @property
    def state_rows(self) -> dict[str, slice]:
        """Row blocks of ``[y; s]``: ``y``, then each own gate's activation (i, f, o) and ``if``.
        The recurrent state is ``y`` (``[y; s]`` with FGR)."""
        H = self.H
        gates = self.if_gates + (("o",) if self.has_o else ())
        rows = {"y": slice(0, H), "if": slice(H, H + self.n_if * H)}
        rows.update({g: slice(H + k * H, H + (k + 1) * H) for k, g in enumerate(gates)})
        return rows


def recurrent_weight(lay: Layout, w_hh: torch.Tensor, w_gate: torch.Tensor | None) -> torch.Tensor:
    """The matrix applied to the recurrent state: R (G*H, H), or for FGR [R | Rg'] (G*H, H + K*H)
    where Rg' has Rg's rows in the gate rows and zeros in the g rows. Leading (member) dims pass."""
    if not lay.fgr:
        return w_hh
    split = lay.n_if * lay.H
    g_zeros = w_gate.new_zeros(*w_gate.shape[:-2], lay.H, w_gate.shape[-1])
    return torch.cat([w_hh, torch.cat([w_gate[..., :split, :], g_zeros, w_gate[..., split:, :]], dim=-2)], dim=-1)


def forward_loop(lay: Layout, xw, w_hh, peephole, w_gate):
    """Run the recurrence over xw (T, B, G*H) from a zero state; returns (Y, C), each (T, B, H).

    Every op is an ordinary differentiable one, so autograd records the loop (the ``fused=False``
    path of :class:`odyssey.cells.VariantLSTM`).
    """
    T, B, _ = xw.shape
    H = lay.H
    w_rec_t = recurrent_weight(lay, w_hh, w_gate).t()
    blocks = lay.if_gates + ("g",) + (("o",) if lay.has_o else ())
    at = {name: k for k, name in enumerate(blocks)}
    ii, fi, gi, oi = at.get("i"), at.get("f"), at["g"], at.get("o")
    p = dict(zip(lay.if_gates + (("o",) if lay.has_o else ()), peephole.unbind(0))) if lay.peep else {}
    p_i, p_f, p_o = p.get("i"), p.get("f"), p.get("o")
    g_fn, h_fn, coupled, fgr = lay.g.fn, lay.h.fn, lay.coupled, lay.fgr
    state = xw.new_zeros(B, H + (lay.K * H if fgr else 0))  # [y', s']
    c = xw.new_zeros(B, H)
    ys, cs = [], []
    i = f = o = None
    for x_t in xw.unbind(0):
        pre = torch.addmm(x_t, state, w_rec_t).split(H, 1)  # G blocks of (B, H)
        c_prev = c
        if ii is not None:
            i = torch.sigmoid(pre[ii] if p_i is None else torch.addcmul(pre[ii], p_i, c_prev))
        if fi is not None:
            f = torch.sigmoid(pre[fi] if p_f is None else torch.addcmul(pre[fi], p_f, c_prev))
        z = g_fn(pre[gi])
        if coupled:
            c = torch.addcmul(c_prev, i, z - c_prev)  # z*i + c'*(1 - i)
        else:
            zi = z * i if i is not None else z
            c = torch.addcmul(zi, c_prev, f) if f is not None else zi + c_prev
        hc = h_fn(c)
        if oi is not None:  # the output-gate peephole reads the current cell
            o = torch.sigmoid(pre[oi] if p_o is None else torch.addcmul(pre[oi], p_o, c))
            y = hc * o
        else:
            y = hc
        if fgr:  # the next step also sees this step's gate activations
            state = torch.cat([v for v in (y, i if ii is not None else None, f if fi is not None else None, o) if v is not None], 1)
        else:
            state = y
        ys.append(y)
        cs.append(c)
    return torch.stack(ys), torch.stack(cs)
