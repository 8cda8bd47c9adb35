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
for the preset ``slstm``. The step loop is recorded by autograd (the fused backward pass and the
compiled CPU loop implement the sigmoid gates only and are bypassed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from odyssey.cells.activations import activation
from odyssey.cells.base import input_projection, run_steps
from odyssey.cells.spec import VariantSpec

__all__ = ["slstm_members_forward"]


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


def slstm_members_forward(spec: VariantSpec, x: torch.Tensor, weights: dict[str, torch.Tensor], active=None) -> tuple[torch.Tensor, torch.Tensor]:
    """M sLSTM layers at once: x (M, T, B, I), ``weights`` (``weight_ih``, ``weight_hh``, ``bias``,
    each (M, ...)) -> (Y, C), each (M, T, B, H). ``active``: see :func:`~odyssey.cells.base.run_steps`.

    A trial pack's padded units (all-zero weights) have i~ = f~ = z~ = o~ = 0, so m = 0, i = 1,
    n >= 1 and c = 0: their outputs are exact zeros, as the sigmoid LSTM's."""
    w_hh = weights["weight_hh"]
    H = w_hh.shape[-1]
    xw = input_projection(x, weights["weight_ih"], weights["bias"])  # (T, M, B, G*H), one product
    states = run_steps(_step_fn(spec, H), xw, (w_hh.transpose(1, 2),), 4 * H, active)  # (M, T, B, 4H)
    return states[..., :H], states[..., H : 2 * H]
