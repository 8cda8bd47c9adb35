"""``VariantMinGRU`` and ``VariantMinLSTM``: the minimal GRU and LSTM of Feng et al. (2024),
"Were RNNs All We Needed?", whose gates see only the input, so the recurrence is linear in h and
runs as a parallel scan over time.

Equations (' = previous step; g keeps the candidate positive)::

    g(a) = a + 1/2 for a >= 0, sigma(a) for a < 0

    minGRU   z = sigma(W_z x + b_z),  h~ = g(W_h x + b_h)
             h = (1 - z) * h' + z * h~
    minLSTM  f = sigma(W_f x + b_f),  i = sigma(W_i x + b_i),  h~ = g(W_h x + b_h)
             f' = f / (f + i),  i' = i / (f + i)
             h = f' * h' + i' * h~

Both are h_t = a_t * h_{t-1} + b_t with a_t in (0, 1) and b_t > 0 depending on x_t alone, from
h_0 = 0. Training runs it as the log-space parallel scan of Heinsen (2023), in Feng et al.'s
log-space form: with A_t = sum_{s<=t} log a_s,

    log h_t = A_t + logcumsumexp_{s<=t}(log b_s - A_s)

(no term for h_0 = 0: the sum starts at s = 1, exactly), where log a and log b come straight from
the pre-activations (log sigma(k) = -softplus(-k); minLSTM: d = softplus(-f~) - softplus(-i~),
log f' = -softplus(d), log i' = -softplus(-d); log g(a) = log(a + 1/2) or log sigma(a)). A
handful of whole-sequence ops replace T small steps. ``fused=False`` runs the sequential
recurrence instead (the reference the scan is tested against).

Parameters (per direction; the reverse direction's have the suffix ``_reverse``; no recurrent
weights)::

    weight_ih   (G*H, I)    minGRU: G = 2, row blocks z, h~;  minLSTM: G = 3, row blocks f, i, h~
    bias        (G*H,)      same row blocks

That is G*H*(I + 1) parameters, initialised N(0, std^2) like every variant's.
Shapes: input (T, B, I) -> outputs (T, B, H * directions), h_n (directions, B, H).

In a trial pack a member's padded units (all-zero weights) have a = b = 1/2 (h -> 1), not zero;
they reach nothing, since every weight reading them is zero, and their gradients are zeroed
(:meth:`odyssey.packs.model.PackedSequenceModel.mask_gradients`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from odyssey.cells.base import HiddenStateLayer, input_projection
from odyssey.cells.spec import VariantSpec

__all__ = ["VariantMinGRU", "VariantMinLSTM", "linear_recurrence", "log_coefficients", "parallel_scan"]


def _g(a: torch.Tensor) -> torch.Tensor:
    return torch.where(a >= 0, a + 0.5, torch.sigmoid(a))


def _log_g(a: torch.Tensor) -> torch.Tensor:
    return torch.where(a >= 0, torch.log(F.relu(a) + 0.5), -F.softplus(-a))


def log_coefficients(family: str, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log a, log b) of h = a * h' + b from the pre-activations ``pre`` (..., G*H)."""
    if family == "mingru":
        k, cand = pre.chunk(2, -1)
        return -F.softplus(k), -F.softplus(-k) + _log_g(cand)  # log(1 - z), log z + log g(h~)
    f, i, cand = pre.chunk(3, -1)
    d = F.softplus(-f) - F.softplus(-i)  # log(i / f)
    return -F.softplus(d), -F.softplus(-d) + _log_g(cand)  # log f', log i' + log g(h~)


def coefficients(family: str, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) of h = a * h' + b, written as the equations (the sequential reference's form)."""
    if family == "mingru":
        k, cand = pre.chunk(2, -1)
        z = torch.sigmoid(k)
        return 1 - z, z * _g(cand)
    f_pre, i_pre, cand = pre.chunk(3, -1)
    f, i = torch.sigmoid(f_pre), torch.sigmoid(i_pre)
    return f / (f + i), i / (f + i) * _g(cand)


def parallel_scan(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t from h_0 = 0 along dim 0, given log a and log b (b > 0): Heinsen's
    log-space scan, log h_t = A_t + logcumsumexp_{s<=t}(log b_s - A_s), A = cumsum(log a)."""
    A = torch.cumsum(log_a, 0)
    return torch.exp(A + torch.logcumsumexp(log_b - A, 0))


def linear_recurrence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The same recurrence step by step along dim 0 (the sequential reference)."""
    h = torch.zeros_like(b[0])
    hs = []
    for a_t, b_t in zip(a.unbind(0), b.unbind(0)):
        h = torch.addcmul(b_t, a_t, h)
        hs.append(h)
    return torch.stack(hs)


class _MinimalLayer(HiddenStateLayer):
    """The shared face of minGRU and minLSTM (module docstring); ``fused=False`` runs the
    sequential recurrence instead of the parallel scan."""

    def parameter_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        G, H, I = len(self.spec.blocks), self.hidden_size, self.input_size
        return [("weight_ih", (G * H, I)), ("bias", (G * H,))]

    @staticmethod
    def members_forward(spec: VariantSpec, x: torch.Tensor, weights: dict[str, torch.Tensor], active=None, hidden=None, steps=None, parallel: bool = True) -> torch.Tensor:
        """M layers at once: x (M, T, B, I), ``weights`` (M, ...) -> (M, T, B, H).

        Every member runs all T steps (``active``, ``hidden`` and ``steps`` are accepted and not
        needed): h_t depends on steps <= t only, and a pack's loss reads no step past a member's own."""
        pre = input_projection(x, weights["weight_ih"], weights["bias"])  # (T, M, B, G*H), one product
        if parallel:
            h = parallel_scan(*log_coefficients(spec.family, pre))
        else:
            h = linear_recurrence(*coefficients(spec.family, pre))
        return h.transpose(0, 1)

    def _direction(self, x: torch.Tensor, sfx: str) -> tuple[torch.Tensor]:
        return (self.members_forward(self.spec, x.unsqueeze(0), self.direction_weights(sfx), parallel=self.fused)[0],)


class VariantMinGRU(_MinimalLayer):
    """One minGRU layer (Feng et al. 2024; equations and parameters in the module docstring), the
    face of :class:`~odyssey.cells.VariantGRU`: ``layer(x, lengths)`` returns ``(outputs (T, B,
    H*directions), h_n (directions, B, H))``.

    Example:
        >>> layer = VariantMinGRU(preset("mingru"), input_size=2, hidden_size=8)
        >>> y, h_n = layer(torch.randn(100, 4, 2))   # y: (100, 4, 8), h_n: (1, 4, 8)
    """

    family = "mingru"


class VariantMinLSTM(_MinimalLayer):
    """One minLSTM layer (Feng et al. 2024; equations and parameters in the module docstring), as
    :class:`VariantMinGRU`."""

    family = "minlstm"
