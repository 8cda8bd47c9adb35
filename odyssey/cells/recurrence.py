"""The time loop of one variant layer, with a hand-written backward pass (BPTT).

The layer computes the input projection of all steps as one matrix product before calling this
module; here only the recurrent part runs step by step. Two paths share :func:`forward_loop`:

* ``autograd``: the loop runs with autograd recording it (simple; supports double backward).
* ``fused``: :class:`VariantRecurrence` runs the loop without recording, then back-propagates by
  hand, step by step, and forms the weight gradients after the loop as a few large matrix
  products over all steps. This is the fast default.

Pre-activation rows per step are laid out ``[i, f | g | o]`` (absent gates have no rows), so the
sigmoid gates read before the cell update (i and f, the "if" block) are contiguous and handled by
one op. With full gate recurrence the recurrent state is ``[y', s']`` where s' stacks the previous
gate activations (i, f, o); :func:`recurrent_weight` builds the matching (G*H, H + K*H) matrix
``[R | Rg placed in the gate rows]``, so each step still does one matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from odyssey.cells.activations import Activation, activation
from odyssey.cells.spec import VariantSpec

__all__ = ["Layout", "VariantRecurrence", "forward_loop", "recurrent_weight"]

_sigmoid_backward = torch.ops.aten.sigmoid_backward


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
    def g_rows(self) -> slice:
        return slice(self.n_if * self.H, (self.n_if + 1) * self.H)

    @property
    def o_rows(self) -> slice:
        return slice((self.n_if + 1) * self.H, (self.n_if + 2) * self.H)


def recurrent_weight(lay: Layout, w_hh: torch.Tensor, w_gate: torch.Tensor | None) -> torch.Tensor:
    """The matrix applied to the recurrent state: R (G*H, H), or for FGR [R | Rg'] (G*H, H + K*H)
    where Rg' has Rg's rows in the gate rows and zeros in the g rows."""
    if not lay.fgr:
        return w_hh
    split = lay.n_if * lay.H
    g_zeros = w_gate.new_zeros(lay.H, w_gate.shape[1])
    return torch.cat([w_hh, torch.cat([w_gate[:split], g_zeros, w_gate[split:]])], dim=1)


def forward_loop(lay: Layout, xw, w_hh, peephole, w_gate, save: bool = False):
    """Run the recurrence over xw (T, B, G*H) from a zero state.

    Returns (Y, C), each (T, B, H). With ``save``, returns the tuple the backward pass needs:
    (Y, C, Z, HC, GIF, O, S) with Z = g(.) (T, B, H), HC = h(C), GIF the i/f activations
    (T, B, n_if, H) or None, O (T, B, H) or None, S the recurrent states (T, B, H [+ K*H]).

    The loop body avoids tensor indexing (slow in Python): the steps and the gate blocks come
    from ``unbind``/``split``, one call each.
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
    ys, cs, zs, hcs, is_, fs, os_, states = [], [], [], [], [], [], [], []
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
        if fgr:
            state = torch.cat([v for v in (y, i if ii is not None else None, f if fi is not None else None, o) if v is not None], 1)
        else:
            state = y
        ys.append(y)
        cs.append(c)
        if save:
            zs.append(z)
            hcs.append(hc)
            is_.append(i)
            fs.append(f)
            os_.append(o)
            states.append(state)
    Y, C = torch.stack(ys), torch.stack(cs)
    if not save:
        return Y, C
    gif = [torch.stack(v) for v, idx in ((is_, ii), (fs, fi)) if idx is not None]
    GIF = torch.stack(gif, dim=2) if gif else None
    O = torch.stack(os_) if oi is not None else None
    S = torch.stack(states) if fgr else Y
    return Y, C, torch.stack(zs), torch.stack(hcs), GIF, O, S


class VariantRecurrence(torch.autograd.Function):
    """(xw, w_hh, peephole, w_gate) -> (Y, C) with a hand-written backward pass."""

    @staticmethod
    def forward(ctx, lay: Layout, xw, w_hh, peephole, w_gate):
        with torch.no_grad():
            Y, C, Z, HC, GIF, O, S = forward_loop(lay, xw, w_hh, peephole, w_gate, save=True)
        ctx.lay = lay
        ctx.save_for_backward(w_hh, peephole, w_gate, C, Z, HC, GIF, O, S)
        return Y, C

    @staticmethod
    @once_differentiable
    def backward(ctx, dY, dC):
        lay: Layout = ctx.lay
        w_hh, peephole, w_gate, C, Z, HC, GIF, O, S = ctx.saved_tensors
        K = _backward_factors(lay, peephole, C, Z, HC, GIF, O)
        T, B, H = C.shape
        n_if, n_a = lay.n_if, lay.n_if + 1  # blocks [i, f | g] whose gradient is dc * factor
        w_rec = recurrent_weight(lay, w_hh, w_gate)
        dXW = C.new_empty(T, B, w_rec.shape[0])  # gradient of the pre-activations, all steps
        d_state = C.new_zeros(B, w_rec.shape[1])  # gradient reaching [y_t, s_t] from step t+1
        dc_rec = C.new_zeros(B, H)  # gradient reaching c_t from step t+1
        p_if = peephole[:n_if] if lay.peep and n_if else None
        p_o = peephole[n_if] if lay.peep and lay.has_o else None
        for t in range(T - 1, -1, -1):
            dy = d_state[:, :H] if dY is None else dY[t] + d_state[:, :H]
            dc = torch.addcmul(dc_rec, dy, K.c[t])
            if dC is not None:
                dc = dc + dC[t]
            if lay.fgr:  # s_t = [i, f, o] also feeds step t+1's gates through Rg
                d_s = d_state[:, H:] * K.gate_d[t]  # (B, K*H): their pre-activations' share
                if p_o is not None:  # the o-peephole reads c_t
                    dc = torch.addcmul(dc, d_s[:, n_if * H :], p_o)
            torch.mul(dc.unsqueeze(1), K.a[t], out=dXW[t, :, : n_a * H].view(B, n_a, H))
            if lay.has_o:
                torch.mul(dy, K.o[t], out=dXW[t, :, lay.o_rows])
            dc_rec = dc * K.r[t]
            if lay.fgr:
                if n_if:
                    dXW[t, :, : n_if * H] += d_s[:, : n_if * H]
                    if p_if is not None:
                        dc_rec = dc_rec + (d_s[:, : n_if * H].view(B, n_if, H) * p_if).sum(1)
                if lay.has_o:
                    dXW[t, :, lay.o_rows] += d_s[:, n_if * H :]
            d_state = dXW[t] @ w_rec
        d_w_rec = _flat(dXW[1:]).t() @ _flat(S[:-1])  # (G*H, H [+ K*H]); the state at t = -1 is 0
        d_w_hh = d_w_rec[:, :H]
        d_w_gate = None
        if lay.fgr:
            d_gate = d_w_rec[:, H:]
            d_w_gate = torch.cat([d_gate[: n_if * H], d_gate[(n_if + 1) * H :]])
        d_peep = None
        if peephole is not None:
            rows = []
            if n_if:
                rows.append((dXW[..., : n_if * H].view(T, B, n_if, H) * K.c_prev.unsqueeze(2)).sum((0, 1)))
            if lay.has_o:
                rows.append((dXW[..., lay.o_rows] * C).sum((0, 1)).unsqueeze(0))
            d_peep = torch.cat(rows)
        return None, dXW, d_w_hh, d_peep, d_w_gate


@dataclass
class _Factors:
    """Per-step factors of the backward pass, computed for all steps at once before the loop.

    With dy the gradient reaching y_t and dc the total gradient reaching c_t::

        dc          = dc_rec + dy * c          (through y = h(c) o and the o-peephole)
        d[i, f, g]  = dc * a                   (a: (T, B, n_if + 1, H))
        d[o]        = dy * o
        dc_rec(t-1) = dc * r                   (through c = ... + c' f and the i/f peepholes)
    """

    c: torch.Tensor
    a: torch.Tensor
    o: torch.Tensor | None
    r: torch.Tensor
    c_prev: torch.Tensor
    gate_d: torch.Tensor | None  # FGR: sigmoid'(.) of the gates [i, f, o], (T, B, K*H)


def _backward_factors(lay: Layout, peephole, C, Z, HC, GIF, O) -> _Factors:
    T, B, H = C.shape
    ones = torch.ones_like(C)
    c_prev = torch.cat([C.new_zeros(1, B, H), C[:-1]])
    h_d = lay.h.backward(ones, HC)  # h'(c)
    g_d = lay.g.backward(ones, Z)  # g'(z)
    n_if = lay.n_if
    p_if = peephole[:n_if] if lay.peep and n_if else None
    p_o = peephole[n_if] if lay.peep and lay.has_o else None
    if lay.has_o:
        o_d = O * (1 - O)
        k_o = HC * o_d
        k_c = O * h_d if p_o is None else O * h_d + k_o * p_o
    else:
        o_d = k_o = None
        k_c = h_d
    i = GIF[:, :, lay.if_gates.index("i")] if "i" in lay.if_gates else None
    blocks, k_r = [], None
    if n_if:
        gif_d = GIF * (1 - GIF)
        srcs = {"i": Z - c_prev if lay.coupled else Z, "f": c_prev}
        k_if = gif_d * torch.stack([srcs[g] for g in lay.if_gates], dim=2)  # (T, B, n_if, H)
        blocks.append(k_if)
        if p_if is not None:
            k_r = (k_if * p_if).sum(2)
    blocks.append((g_d * i if i is not None else g_d).unsqueeze(2))
    if "f" in lay.if_gates:
        f_part = GIF[:, :, -1]
    elif lay.coupled:
        f_part = 1 - i
    else:
        f_part = ones
    k_r = f_part if k_r is None else f_part + k_r
    gate_d = None
    if lay.fgr:
        parts = ([gif_d.reshape(T, B, -1)] if n_if else []) + ([o_d] if lay.has_o else [])
        gate_d = torch.cat(parts, dim=2)
    return _Factors(k_c, torch.cat(blocks, dim=2), k_o, k_r, c_prev, gate_d)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])
