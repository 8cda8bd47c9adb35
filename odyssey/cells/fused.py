"""The fast time loop: feature-major buffers and a hand-written backward pass (BPTT).

:class:`FusedRecurrence` computes the same function as :func:`odyssey.cells.recurrence.forward_loop`
(the readable loop that autograd records), at a fraction of the cost:

* **Feature-major layout.** Every per-step tensor is ``(rows, B)``: the pre-activations of a step
  are ``(G*H, B)`` with contiguous row blocks ``[i, f | g | o]``, so each gate, and the i/f pair,
  is one contiguous block and every elementwise op runs over a flat array (a ``(B, G*H)`` layout
  makes them strided, about 3x slower per op at B = 32). The recurrent product is
  ``W_rec (G*H, S) @ state (S, B)``.
* **Buffers written in place.** The forward pass writes each step's activations straight into
  the buffers the backward pass reads (``out=`` ops); nothing is stacked after the loop::

      PRE (T, G*H, B)         W x_t + b (one batched product), then + R y' and the peepholes
      S   (T+1, H + K*H, B)   S[t+1] = [y_t; i_t; f_t; o_t] (own gates only); S[0] = 0
      ZC  (T+1, 2, H, B)      ZC[t] = [z_t; c_{t-1}], the factors of i and f in c; c_{-1} = 0
      HC  (T, H, B)           h(c_t)  (with no output gate, y_t itself: a view of S)

  The recurrent state is ``S[t][:H]`` (``y'``), or all of ``S[t]`` with full gate recurrence, whose
  recurrent matrix ``[R | Rg]`` (see :func:`odyssey.cells.recurrence.recurrent_weight`) then
  maps the previous gate activations too: still one matrix product per step.
* **Backward step by step, in cache.** The per-step factors (sigma', h', ...) are formed inside
  the reverse loop from the buffers above; the gradients of the weights and of the input are
  large products over all steps after the loop.
* **Two step loops, one set of buffers.** On the CPU at batch 1 both step loops run compiled
  (:mod:`odyssey.cells.native`, ``lstm_loop.cpp``: a packed member computes only its own units
  and steps there); elsewhere they are the ATen ops of :func:`_python_forward` and
  :func:`_python_backward`. Both fill the buffers above with the equations below.

Measured on 2 CPU cores at T = 100, I = 88, H = 100 (``odyssey bench cells``): at batch 32 (this
module's ATen loop) 1.5-2.2x ``torch.nn.LSTM`` (oneDNN's fused kernel) for the variants, 3.3x for
FGR, and 0.66-0.87x PyTorch's own step-by-step LSTM (oneDNN off), with ~25 small kernel launches
per step; at batch 1 (the compiled loop) 0.8-1.0x ``torch.nn.LSTM``, FGR 1.7x.

Backward equations for one step (dy, dc: gradients reaching y_t and c_t; ' = previous step)::

    do   = dy * h(c)                      dpre_o = do * o (1 - o)
    dc  += dy * o * h'(c) + dpre_o * p_o  (plus what c_t passes to step t+1: dc' below)
    dpre_g = g'(z) * dc * i
    dpre_i = i (1 - i) * dc * z           (CIFG: dc * (z - c'))
    dpre_f = f (1 - f) * dc * c'
    dc'  = dc * f + dpre_i * p_i + dpre_f * p_f          (CIFG: f = 1 - i)
    dy'  = R^T dpre                       (FGR: [dy'; ds'] = [R | Rg]^T dpre, and ds' adds to
                                           the gate activations' gradients of step t - 1)
"""

from __future__ import annotations

import functools
import gc

import torch
from torch.autograd.function import once_differentiable

from odyssey.cells import native
from odyssey.cells.recurrence import Layout, recurrent_weight

__all__ = ["FusedRecurrence"]

_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input


def _steps(buffer: torch.Tensor, rows: slice | None = None) -> tuple[torch.Tensor, ...]:
    """Per-step views ``buffer[t][:, rows]`` (made once: indexing inside the loop costs a Python call)."""
    return (buffer if rows is None else buffer[:, :, rows]).unbind(0)


def _expanded_peepholes(lay: Layout, peephole: torch.Tensor | None, B: int):
    """The peephole rows as contiguous ``(M, n_if, H, B)`` and ``(M, H, B)`` blocks (flat elementwise ops)."""
    if not lay.peep:
        return None, None
    M, n_if = peephole.shape[0], lay.n_if
    p_if = peephole[:, :n_if, :, None].expand(M, n_if, lay.H, B).contiguous() if n_if else None
    p_o = peephole[:, n_if, :, None].expand(M, lay.H, B).contiguous() if lay.has_o else None
    return p_if, p_o


def _input_projection(x: torch.Tensor, w_ih: torch.Tensor, bias: torch.Tensor, member_major: bool = False) -> torch.Tensor:
    """PRE[t, m] = W_m x_{m,t} + b_m for all steps and members: (T, M, G*H, B), one batched GEMM.

    ``x`` is (M, T, B, I); a stride-0 member axis (one batch shared by all members, as in a
    pack's evaluation) becomes a single (M*G*H, I) @ (I, T*B) product. ``member_major`` (batch 1,
    for the compiled loop, which takes any strides): a view of an (M, T, G*H) product, whose
    permutation into the step-major layout was 10% of a packed JSB epoch.
    """
    M, T, B, I = x.shape
    rows = w_ih.shape[1]
    if member_major and B == 1:  # (M, T, G*H) from one batched GEMM, seen as (T, M, G*H, 1): no copy
        return torch.baddbmm(bias.unsqueeze(1), x.reshape(M, T, I), w_ih.transpose(1, 2)).unsqueeze(-1).transpose(0, 1)
    if M == 1:  # straight into the feature-major layout: no copy afterwards
        return torch.baddbmm(bias[0, None, :, None], w_ih[0].expand(T, rows, I), x[0].transpose(1, 2)).unsqueeze(1)
    if x.stride(0) == 0:
        flat = torch.mm(w_ih.reshape(M * rows, I), x[0].reshape(T * B, I).t()).view(M, rows, T, B)
    else:
        flat = torch.bmm(w_ih, x.reshape(M, T * B, I).transpose(1, 2)).view(M, rows, T, B)
    out = x.new_empty(T, M, rows, B)
    torch.add(flat.permute(2, 0, 1, 3), bias[None, :, :, None], out=out)
    return out


def _whole(v: torch.Tensor) -> torch.Tensor:
    return v


def _step_product(out: torch.Tensor, w: torch.Tensor, w_t: torch.Tensor | None, s: torch.Tensor) -> None:
    """``out += w @ s`` for (M, R, C) @ (M, C, B), in place; with ``w_t`` (B = 1) as
    ``out^T += s^T @ w_t``: the same numbers, a row-vector-times-matrix product per member."""
    if w_t is None:
        out.baddbmm_(w, s)
    else:
        out.transpose(1, 2).baddbmm_(s.transpose(1, 2), w_t)


def _gc_paused(fn):
    """Run ``fn`` with Python's cyclic garbage collector paused.

    The loops hold thousands of small tensor views (acyclic, freed by reference counting); left on,
    the collector sweeps over them mid-loop, which cost about 10% of a fused forward+backward.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return wrapper


def _member_steps(active: tuple[int, ...], M: int) -> list[int]:
    """Each member's number of steps from a prefix schedule (``active[t]`` members run step t)."""
    return [sum(1 for n in active if n > m) for m in range(M)]


def _prefix_schedule(steps, T: int) -> tuple[int, ...] | None:
    """The prefix schedule of per-member ``steps`` when they are sorted longest first, else None
    (every member runs all T steps: exact too, since nothing reads a member's steps past its own)."""
    steps = [int(s) for s in steps]
    if any(a < b for a, b in zip(steps, steps[1:])):
        return None
    return tuple(sum(1 for s in steps if s > t) for t in range(T))


def _python_forward(lay: Layout, PRE, S, ZC, HC, w_rec, w_rec_t, peephole, active) -> None:
    """The forward step loop in ATen ops: fills S, ZC and HC (see the module docstring)."""
    T, M, _, B = PRE.shape
    H, n_if, rows, blocks = lay.H, lay.n_if, lay.state_rows, lay.pre_blocks
    gemv = w_rec_t is not None and B == 1 and M > 1
    Z, C = ZC[:-1, :, 0], ZC[:, :, 1]
    p_if, p_o = _expanded_peepholes(lay, peephole, B)
    pres = PRE.unbind(0)
    pre_if = PRE[:, :, blocks["if"]].view(T, M, n_if, H, B).unbind(0) if n_if else None
    pre_g, pre_o = _steps(PRE, blocks["g"]), _steps(PRE, blocks["o"]) if lay.has_o else None
    ys, cs, zs, hcs = _steps(S, rows["y"]), _steps(C), _steps(Z), _steps(HC)
    cs_if = C.unsqueeze(2).unbind(0) if p_if is not None else None  # (M, 1, H, B): c' per i/f row
    state = S.unbind(0) if lay.fgr else ys  # what each step's recurrent product reads
    gate = {g: _steps(S, rows[g]) for g in ("if", *lay.if_gates, "o") if g in rows}
    g_fn, h_fn = lay.g.fn, lay.h.fn
    has_i, has_f = "i" in lay.if_gates, "f" in lay.if_gates
    for t in range(T):
        n = M if active is None else active[t]
        if n == 0:
            break
        cut = _whole if n == M else (lambda v: v[:n])  # noqa: E731 - the members still running
        _step_product(cut(pres[t]), cut(w_rec), cut(w_rec_t) if gemv else None, cut(state[t]))  # + R y'
        c_prev, c, z = cut(cs[t]), cut(cs[t + 1]), cut(zs[t])
        if n_if:
            if p_if is not None:
                cut(pre_if[t]).addcmul_(cut(p_if), cut(cs_if[t]))
            torch.sigmoid(cut(pre_if[t]).view(n, n_if * H, B), out=cut(gate["if"][t + 1]))
        i = cut(gate["i"][t + 1]) if has_i else None
        f = cut(gate["f"][t + 1]) if has_f else None
        g_fn(cut(pre_g[t]), out=z)
        if lay.coupled:  # c = z*i + c'*(1 - i) = c' + i*(z - c')
            torch.addcmul(c_prev, i, z - c_prev, out=c)
        elif i is not None and f is not None:
            torch.mul(z, i, out=c).addcmul_(c_prev, f)
        elif i is not None:
            torch.addcmul(c_prev, z, i, out=c)
        elif f is not None:
            torch.addcmul(z, c_prev, f, out=c)
        else:
            torch.add(z, c_prev, out=c)
        hc = cut(hcs[t])
        h_fn(c, out=hc)
        if lay.has_o:  # the output-gate peephole reads the current cell
            if p_o is not None:
                cut(pre_o[t]).addcmul_(cut(p_o), c)
            torch.mul(hc, torch.sigmoid(cut(pre_o[t]), out=cut(gate["o"][t + 1])), out=cut(ys[t + 1]))


def _python_backward(lay: Layout, S, ZC, HC, w_rec, peephole, dY, dC, active) -> torch.Tensor:
    """The backward step loop in ATen ops; returns dPRE (T, M, G*H, B)."""
    Z, C = ZC[:-1, :, 0], ZC[:, :, 1]
    T, M, H, B = Z.shape
    n_if, rows, blocks = lay.n_if, lay.state_rows, lay.pre_blocks
    w_rec_t = w_rec.transpose(1, 2).contiguous()  # a transposed view would make each step's product 1.7x slower
    gemv = B == 1 and M > 1  # then d_state^T += dpre^T W reads W itself
    alloc = Z.new_zeros if active is not None else Z.new_empty
    dPRE = alloc(T, M, w_rec.shape[1], B)  # gradient of the pre-activations (M, G*H, B) per step
    p_if, p_o = _expanded_peepholes(lay, peephole, B)
    p_if_rows = p_if.unbind(1) if p_if is not None else ()

    dpres = dPRE.unbind(0)
    dpre_if = dPRE[:, :, blocks["if"]].view(T, M, n_if, H, B).unbind(0) if n_if else None
    dpre_g, dpre_o = _steps(dPRE, blocks["g"]), _steps(dPRE, blocks["o"]) if lay.has_o else None
    # DS[t] = the gradient reaching the state S[t+1] (y_t, and with FGR the gate activations):
    # dY's share, copied in here, plus R^T dpre from step t+1, added in place in the loop.
    DS = Z.new_zeros(T, M, w_rec.shape[2], B)
    if dY is not None:
        DS[:, :, :H] = dY.permute(1, 0, 3, 2)
    d_states = DS.unbind(0)
    dys = _steps(DS, rows["y"]) if lay.fgr else d_states  # without FGR, DS holds y's rows only
    d_gate = {g: _steps(DS, rows[g]) for g in (*lay.if_gates, "o") if g in rows} if lay.fgr else {}
    dcs = dC.permute(1, 0, 3, 2).unbind(0) if dC is not None else None
    cs, zs, hcs = _steps(C), _steps(Z), _steps(HC)
    gate = {g: _steps(S, rows[g]) for g in ("if", *lay.if_gates, "o") if g in rows}
    both_if = lay.if_gates == ("i", "f") and not lay.coupled  # d[i, f] = dc * [z, c'] in one op
    zcs = ZC[:-1].unbind(0) if both_if else None
    d_gate_if = _steps(DS, rows["if"]) if both_if and lay.fgr else None
    g_bwd, h_bwd = lay.g.backward, lay.h.backward
    has_i, has_f = "i" in lay.if_gates, "f" in lay.if_gates

    def act_grad(name: str, t: int, a: torch.Tensor, b: torch.Tensor, cut) -> torch.Tensor:
        """a * b: the gradient reaching gate ``name``'s activation (+ FGR's share from step t+1)."""
        return torch.addcmul(cut(d_gate[name][t]), a, b) if name in d_gate else a * b

    dc_next = None  # gradient reaching c_t from step t+1
    for t in range(T - 1, -1, -1):
        n = M if active is None else active[t]
        if n == 0:
            continue
        cut = _whole if n == M else (lambda v: v[:n])  # noqa: E731 - the members running at step t
        if t < T - 1 and (active is None or active[t + 1]):
            n1 = M if active is None else active[t + 1]
            to = _whole if n1 == M else (lambda v: v[:n1])  # noqa: E731 - those still running at t+1
            _step_product(to(d_states[t]), to(w_rec_t), to(w_rec) if gemv else None, to(dpres[t + 1]))
        dy = cut(dys[t])
        c_prev, z, hc = cut(cs[t]), cut(zs[t]), cut(hcs[t])
        if lay.has_o:
            o = cut(gate["o"][t + 1])
            _sigmoid_backward(act_grad("o", t, dy, hc, cut), o, grad_input=cut(dpre_o[t]))
            dc = h_bwd(dy * o, hc)
            if p_o is not None:
                dc.addcmul_(cut(dpre_o[t]), cut(p_o))
        else:
            dc = h_bwd(dy, hc)  # (identity h: dy itself; DS[t] is not read again)
        if dc_next is not None:
            if dc_next.shape[0] == n:
                dc += dc_next
            else:  # members whose sequences ended at t+1 get nothing from step t+1
                dc[: dc_next.shape[0]] += dc_next
        if dcs is not None:
            dc += cut(dcs[t])
        i = cut(gate["i"][t + 1]) if has_i else None
        g_bwd(dc * i if i is not None else dc, z, out=cut(dpre_g[t]))
        d_if = cut(dpre_if[t]) if n_if else None
        if both_if:
            dc2 = dc.unsqueeze(1)  # (n, 1, H, B) against [z; c'] (n, 2, H, B)
            zc = cut(zcs[t])
            d_act = dc2 * zc if d_gate_if is None else torch.addcmul(cut(d_gate_if[t]).view(n, 2, H, B), dc2, zc)
            _sigmoid_backward(d_act, cut(gate["if"][t + 1]).view(n, 2, H, B), grad_input=d_if)
        elif n_if:
            for k, name in enumerate(lay.if_gates):
                factor = (z - c_prev if lay.coupled else z) if name == "i" else c_prev
                _sigmoid_backward(act_grad(name, t, dc, factor, cut), cut(gate[name][t + 1]), grad_input=d_if[:, k])
        # What c_{t-1} receives: through c = ... + c' f, and through the i/f peepholes.
        if lay.coupled:
            dc_next = torch.addcmul(dc, dc, i, value=-1.0)  # dc * (1 - i)
        elif has_f:
            dc_next = dc * cut(gate["f"][t + 1])
        else:
            dc_next = dc
        for k, p in enumerate(p_if_rows):
            dc_next = torch.addcmul(dc_next, d_if[:, k], cut(p))
    return dPRE


class FusedRecurrence(torch.autograd.Function):
    """``(x (M, T, B, I), w_ih (M, G*H, I), bias (M, G*H), w_hh (M, G*H, H), peephole (M, P, H),
    w_gate (M, K*H, K*H)) -> (Y, C)``, each (M, T, B, H), from a zero state.

    M independent layers (a trial pack's members, M = 1 for one layer) advance together: each
    step is one batched product ``(M, G*H, S) @ (M, S, B)`` and one set of elementwise ops over
    all members. Members share nothing, so each one's outputs and gradients are its own.

    ``active`` (optional, a tuple of T non-increasing ints) says how many members, a prefix of the
    member axis, still run at each step: a pack sorts its members by sequence length, so step t
    computes only the members whose sequences are longer than t. The others' outputs and
    gradients at those steps are exact zeros (their losses do not read them). ``steps``
    (optional, M ints, any order) says the same per member: the compiled loop takes it as it is,
    so a pack need not sort its members (the Python loop turns sorted ``steps`` into ``active``,
    and runs every member all T steps otherwise).

    ``hidden`` (optional, M ints): each member's own hidden size when the weights are padded to H
    (a pack's members). The compiled loop computes only those units; the Python loop computes
    the padded ones too, whose values are exact zeros (see :mod:`odyssey.packs.model`).

    On the CPU at batch 1 the step loops run compiled (:mod:`odyssey.cells.native`), elsewhere as
    ATen ops; both fill the same buffers with the same equations.

    With B = 1 (online SGD) and M > 1 the step product is formed as ``s^T W^T``, a row vector
    times a matrix per member, which CPU BLAS runs about twice as fast as ``W s``.
    """

    @staticmethod
    @_gc_paused
    def forward(ctx, lay: Layout, x, w_ih, bias, w_hh, peephole, w_gate, active=None, hidden=None, steps=None):
        M, T, B, _ = x.shape
        H = lay.H
        lib = native.loop_for(x, B)
        if lib:  # the compiled loop takes each member's own number of steps, in any order
            steps = steps if steps is not None else (None if active is None else _member_steps(active, M))
            active = None
        elif steps is not None:  # the Python loop takes a prefix of the member axis per step
            active = _prefix_schedule(steps, T)
        if not lib:  # the compiled loop reads w_hh and w_gate as they are
            w_rec = recurrent_weight(lay, w_hh, w_gate)  # (M, G*H, S)
            w_rec_t = w_rec.transpose(1, 2).contiguous() if B == 1 and M > 1 else None  # (M, S, G*H)
        # The input projections of all steps, in the feature-major layout: PRE[t] = W x_t + b
        # (M, G*H, B); each step then adds R y' in place.
        PRE = _input_projection(x, w_ih, bias, member_major=lib is not None)
        # Skipped steps and (compiled loop) padded units stay exact zeros.
        alloc = x.new_zeros if active is not None or steps is not None or lib else x.new_empty
        S = alloc(T + 1, M, H + lay.K * H, B)
        S[0].zero_()
        # ZC[t] = [z_t; c_{t-1}]: the factors of the i and f gates in c = z*i + c'*f, side by side, so
        # the backward pass forms both gates' gradients with one op.
        ZC = alloc(T + 1, M, 2, H, B)
        ZC[0, :, 1].zero_()
        HC = alloc(T, M, H, B) if lay.has_o else S[1:, :, :H]  # no output gate: y = h(c)
        if lib:
            native.lstm_forward(lib, lay, PRE, S, ZC, HC if lay.has_o else None, w_hh, w_gate, peephole, steps, hidden)
        else:
            _python_forward(lay, PRE, S, ZC, HC, w_rec, w_rec_t, peephole, active)
        ctx.lay, ctx.active, ctx.hidden, ctx.steps = lay, active, hidden, steps
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, w_ih, w_hh, peephole, w_gate, S, ZC, HC)
        C = ZC[:, :, 1]
        return S[1:, :, :H].permute(1, 0, 3, 2), C[1:].permute(1, 0, 3, 2)

    @staticmethod
    @once_differentiable
    @_gc_paused
    def backward(ctx, dY, dC):
        lay: Layout = ctx.lay
        active = ctx.active
        x, w_ih, w_hh, peephole, w_gate, S, ZC, HC = ctx.saved_tensors
        Z, C = ZC[:-1, :, 0], ZC[:, :, 1]
        T, M, H, B = Z.shape
        n_if, blocks = lay.n_if, lay.pre_blocks
        lib = native.loop_for(Z, B)
        if lib:
            dPRE = native.lstm_backward(lib, lay, S, ZC, HC if lay.has_o else None, w_hh, w_gate, peephole, dY, dC, ctx.steps, ctx.hidden)
        else:
            dPRE = _python_backward(lay, S, ZC, HC, recurrent_weight(lay, w_hh, w_gate), peephole, dY, dC, active)
        # Gradients of the weights and the input: sums over all steps, as large batched products
        # over dPRE laid out (M, G*H, T*B) once.
        T_B = T * B
        d_pre = dPRE.permute(1, 2, 0, 3).reshape(M, -1, T_B)  # (M, G*H, T*B)
        states = (S[:-1] if lay.fgr else S[:-1, :, :H]).permute(1, 2, 0, 3).reshape(M, -1, T_B)  # (M, S, T*B)
        d_w_hh, d_w_gate = torch.bmm(d_pre, states[:, :H].transpose(1, 2)), None
        if lay.fgr:  # Rg maps the gate activations into the gate rows only (not the g rows)
            gate_rows = [d_pre[:, blocks["if"]], d_pre[:, blocks["o"]]] if lay.has_o else [d_pre[:, blocks["if"]]]
            d_w_gate = torch.cat([torch.bmm(d, states[:, H:].transpose(1, 2)) for d in gate_rows if d.shape[1]], dim=1)
        d_peep = None
        if peephole is not None:
            parts = []
            if n_if:
                parts.append((dPRE[:, :, blocks["if"]].view(T, M, n_if, H, B) * C[:-1, :, None]).sum((0, 4)))
            if lay.has_o:
                parts.append((dPRE[:, :, blocks["o"]] * C[1:]).sum((0, 3))[:, None])
            d_peep = torch.cat(parts, dim=1)
        d_x = None
        if ctx.needs_input_grad[1]:
            d_x = torch.bmm(d_pre.transpose(1, 2), w_ih).view(M, T, B, -1)
        d_w_ih = torch.bmm(d_pre, x.reshape(M, T_B, -1))
        return None, d_x, d_w_ih, d_pre.sum(2), d_w_hh, d_peep, d_w_gate, None, None, None
