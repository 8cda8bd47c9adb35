"""The sLSTM (Beck et al. 2024, xLSTM): the LSTM family's ``exponential_gating`` switch.

Equations (after the official xLSTM code, ``slstm/src/vanilla/slstm.py``; ' = previous step)::

    i~, f~, z~, o~ = W x + R y' + b                  pre-activations, row blocks i, f, z, o
    log f = m' + log sigma(f~)                       (forget_gate_activation=exp: m' + f~)
    m = max(i~, log f)                               stabilizer
    i = exp(i~ - m),  f = exp(log f - m)             stabilized exponential gates
    c = f * c' + i * g(z~)                           cell state (g: block_activation)
    n = f * n' + i                                   normalizer state
    y = sigma(o~) * h(c / n)                         output (h: output_activation; identity in the paper)

The initial state is y = c = n = m = 0. Multiplying c and n by the same exp(-m) leaves c / n,
hence y, the value of the unstabilized form (i = exp(i~), f = sigma(f~)), which overflows for
large pre-activations where this one stays finite.

Combinations: without an input gate i~ = 0 (i = exp(-m)); without a forget gate log f = m'
(f = exp(m' - m)); without an output gate o = 1. Peepholes, CIFG and FGR are refused
(:meth:`odyssey.cells.VariantSpec.validate` says why).

Parameters are the LSTM's (:mod:`odyssey.cells.layer`): ``weight_ih`` (G*H, I), ``weight_hh``
(G*H, H), ``bias`` (G*H,), row blocks i, f, z, o (absent gates have no rows): 4H(I + H + 1)
for the preset ``slstm``. The fused LSTM loop and the compiled CPU loop implement the sigmoid
gates only and are bypassed: :class:`SLSTMRecurrence` runs the step loop without recording it and
backpropagates through time by hand (``fused=True``, the default); ``fused=False`` records the
same loop with autograd (the reference it is tested against).

Backward for one step (dy, dc, dn, dm: the gradients reaching y_t, c_t, n_t, m_t; r = c / n)::

    do~ = dy * h(r) * o (1 - o)          dr = h'(r) * dy * o
    dc += dr / n                         dn += -dr * r / n
    di = dc * g(z~) + dn                 df = dc * c' + dn * n'
    dz~ = g'(z~) * dc * i
    dm' = dm - di * i - df * f           (m = max(i~, log f): dm' goes to the larger one)
    di~ = di * i + dm' [i~ >= log f]     dlog f = df * f + dm' [i~ < log f]
    df~ = dlog f * (1 - sigma(f~))       (exp forget gate: dlog f)
    to step t - 1:  dc' = dc * f, dn' = dn * f, dm_{t-1} = dlog f, dy' = R^T dpre
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from odyssey.cells.activations import activation
from odyssey.cells.base import input_projection, run_steps
from odyssey.cells.spec import VariantSpec

__all__ = ["SLSTMRecurrence", "slstm_members_forward"]


def _step_fn(spec: VariantSpec, H: int):
    """One sLSTM step over the state [y, c, n, m] (n, B, 4H): ``step(x_t, state, w_t)`` with
    x_t (n, B, G*H) = W x + b and w_t = R^T (n, H, G*H)."""
    blocks = spec.blocks  # ordered i, f, g, o
    at = {b: k for k, b in enumerate(blocks)}
    g_fn, h_fn = activation(spec.block_activation).fn, activation(spec.output_activation).fn
    exp_forget = spec.forget_gate_activation == "exp"

    def step(x_t, state, w_t):
        y, c, n, m = state.split(H, -1)
        pre = torch.baddbmm(x_t, y, w_t).split(H, -1)
        i_pre = pre[at["i"]] if "i" in at else torch.zeros_like(m)
        if "f" in at:
            log_f = m + (pre[at["f"]] if exp_forget else F.logsigmoid(pre[at["f"]]))
        else:
            log_f = m
        m_new = torch.maximum(i_pre, log_f)
        i = torch.exp(i_pre - m_new)
        f = torch.exp(log_f - m_new)
        c_new = f * c + i * g_fn(pre[at["g"]])
        n_new = f * n + i
        y_new = h_fn(c_new / n_new)
        if "o" in at:
            y_new = torch.sigmoid(pre[at["o"]]) * y_new
        return torch.cat([y_new, c_new, n_new, m_new], -1)

    return step


class SLSTMRecurrence(torch.autograd.Function):
    """``(spec, xw (T, M, B, G*H), w_hh (M, G*H, H)) -> (Y, C)``, each (T, M, B, H), from a zero
    state: the sLSTM's steps with a hand-written backward pass (module docstring). ``xw`` holds
    the input projections W x + b of every step and member."""

    @staticmethod
    def forward(ctx, spec: VariantSpec, xw: torch.Tensor, w_hh: torch.Tensor):
        T, M, B, _ = xw.shape
        H = w_hh.shape[-1]
        at = {b: k for k, b in enumerate(spec.blocks)}
        g_fn, h_fn = activation(spec.block_activation).fn, activation(spec.output_activation).fn
        w_t = w_hh.transpose(1, 2)
        PRE = xw.detach().clone()  # + R y' per step, in place
        Y, C, N, Mx = (xw.new_zeros(T + 1, M, B, H) for _ in range(4))  # [0]: the zero initial state
        I, Fg, Z, HR = (xw.new_empty(T, M, B, H) for _ in range(4))
        O = xw.new_empty(T, M, B, H) if "o" in at else None
        DLF = xw.new_empty(T, M, B, H) if "f" in at and spec.forget_gate_activation == "sigmoid" else None
        WIN = torch.empty(T, M, B, H, dtype=torch.bool, device=xw.device)  # i~ >= log f
        zero = xw.new_zeros(M, B, H)
        for t in range(T):
            pre = PRE[t].baddbmm_(Y[t], w_t).split(H, -1)
            i_pre = pre[at["i"]] if "i" in at else zero
            if "f" not in at:
                log_f = Mx[t]
            elif DLF is None:
                log_f = Mx[t] + pre[at["f"]]
            else:
                log_f = Mx[t] + F.logsigmoid(pre[at["f"]])
                torch.sigmoid(-pre[at["f"]], out=DLF[t])  # d log sigma(f~) / d f~
            m = torch.maximum(i_pre, log_f, out=Mx[t + 1])
            torch.ge(i_pre, log_f, out=WIN[t])
            i, f = torch.exp(i_pre - m, out=I[t]), torch.exp(log_f - m, out=Fg[t])
            z = g_fn(pre[at["g"]], out=Z[t])
            c = torch.mul(Fg[t], C[t], out=C[t + 1]).addcmul_(i, z)
            n = torch.mul(f, N[t], out=N[t + 1]).add_(i)
            hr = h_fn(c / n, out=HR[t])
            if O is not None:
                torch.mul(torch.sigmoid(pre[at["o"]], out=O[t]), hr, out=Y[t + 1])
            else:
                Y[t + 1].copy_(hr)
        ctx.spec = spec
        ctx.save_for_backward(w_hh, Y, C, N, I, Fg, Z, HR, O, DLF, WIN)
        ctx.set_materialize_grads(False)
        return Y[1:], C[1:]

    @staticmethod
    @once_differentiable
    def backward(ctx, dY, dC):
        spec: VariantSpec = ctx.spec
        w_hh, Y, C, N, I, Fg, Z, HR, O, DLF, WIN = ctx.saved_tensors
        T, M, B, H = I.shape
        at = {b: k for k, b in enumerate(spec.blocks)}
        g_bwd, h_bwd = activation(spec.block_activation).backward, activation(spec.output_activation).backward
        dPRE = I.new_zeros(T, M, B, len(at) * H)
        d_pre = dPRE.split(H, -1)
        dc_next = dn_next = dm_next = None
        dy_rec = None
        for t in range(T - 1, -1, -1):
            dy = dY[t] if dY is not None else torch.zeros_like(I[t])
            if dy_rec is not None:
                dy = dy + dy_rec
            hr, n, c = HR[t], N[t + 1], C[t + 1]
            if O is not None:
                o = O[t]
                torch.ops.aten.sigmoid_backward.grad_input(dy * hr, o, grad_input=d_pre[at["o"]][t])
                dhr = dy * o
            else:
                dhr = dy
            dr = h_bwd(dhr, hr)
            dc = dr / n
            dn = -dr * c / (n * n)
            if dc_next is not None:
                dc += dc_next
                dn += dn_next
            if dC is not None:
                dc += dC[t]
            i, f, z = I[t], Fg[t], Z[t]
            g_bwd(dc * i, z, out=d_pre[at["g"]][t])
            gi = (dc * z + dn) * i
            gf = (dc * C[t] + dn * N[t]) * f
            dm = -(gi + gf) if dm_next is None else dm_next - gi - gf
            win = WIN[t]
            if "i" in at:
                torch.add(gi, torch.where(win, dm, 0.0), out=d_pre[at["i"]][t])
            d_log_f = gf + torch.where(win, 0.0, dm)
            if "f" in at:
                if DLF is not None:
                    torch.mul(d_log_f, DLF[t], out=d_pre[at["f"]][t])
                else:
                    d_pre[at["f"]][t].copy_(d_log_f)
            dm_next, dc_next, dn_next = d_log_f, dc * f, dn * f
            if t > 0:
                dy_rec = torch.bmm(dPRE[t], w_hh)  # (M, B, G*H) @ (M, G*H, H)
        d_w_hh = torch.bmm(dPRE.permute(1, 3, 0, 2).reshape(M, -1, T * B), Y[:-1].permute(1, 0, 2, 3).reshape(M, T * B, H))
        return None, dPRE, d_w_hh


def slstm_members_forward(
    spec: VariantSpec, x: torch.Tensor, weights: dict[str, torch.Tensor], active=None, *, fused: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """M sLSTM layers at once: x (M, T, B, I), ``weights`` (``weight_ih``, ``weight_hh``, ``bias``,
    each (M, ...)) -> (Y, C), each (M, T, B, H). ``fused``: :class:`SLSTMRecurrence`, which runs
    every member all T steps (h_t depends on steps <= t only, and a pack's loss reads no step past
    a member's own); else the loop recorded by autograd, which takes ``active`` (see
    :func:`~odyssey.cells.base.run_steps`).

    A trial pack's padded units (all-zero weights) have i~ = f~ = z~ = o~ = 0, so m = 0, i = 1,
    n >= 1 and c = 0: their outputs are exact zeros, as the sigmoid LSTM's."""
    w_hh = weights["weight_hh"]
    H = w_hh.shape[-1]
    xw = input_projection(x, weights["weight_ih"], weights["bias"])  # (T, M, B, G*H), one product
    if fused:
        Y, C = SLSTMRecurrence.apply(spec, xw, w_hh)
        return Y.transpose(0, 1), C.transpose(0, 1)
    states = run_steps(_step_fn(spec, H), xw, (w_hh.transpose(1, 2),), 4 * H, active)  # (M, T, B, 4H)
    return states[..., :H], states[..., H : 2 * H]
