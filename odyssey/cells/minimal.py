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
h_0 = 0, with a and b formed without cancellation (Feng et al.'s log-space form: a = sigma(-k)
rather than 1 - sigma(k); minLSTM: d = softplus(-f~) - softplus(-i~) = log(i / f), f' = sigma(-d),
i' = sigma(d)). Training runs the recurrence as a parallel scan over time
(:func:`parallel_scan`): a two-level blocked associative scan of the pairs (a, b) under
(a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2): the ~sqrt(T) chunks of ~sqrt(T) steps are scanned all
at once from a zero start (their products kept), then the chunk ends pass their carries on, and
one elementwise product adds each chunk's carry: about 2 sqrt(T) steps of whole-chunk ops instead
of T small ones, the same arithmetic, and h_0 = 0 exactly (no term for it). Heinsen's log-space
scan, log h_t = A_t + logcumsumexp_{s<=t}(log b_s - A_s) with A = cumsum(log a)
(:func:`log_space_scan`), computes the same, but its ``logcumsumexp`` (forward and backward)
is slow on the CPU at larger batches (README, "The 2026 cells"). ``fused=False`` runs the
sequential recurrence instead (the reference the scan is tested against).

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

import math

import torch
import torch.nn.functional as F

from odyssey.cells.base import HiddenStateLayer, input_projection
from odyssey.cells.spec import VariantSpec

__all__ = ["VariantMinGRU", "VariantMinLSTM", "coefficients", "linear_recurrence", "log_coefficients", "log_space_scan", "parallel_scan"]


def _g(a: torch.Tensor) -> torch.Tensor:
    return torch.where(a >= 0, a + 0.5, torch.sigmoid(a))


def _log_g(a: torch.Tensor) -> torch.Tensor:
    return torch.where(a >= 0, torch.log(F.relu(a) + 0.5), -F.softplus(-a))


def log_coefficients(family: str, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log a, log b) of h = a * h' + b from the pre-activations ``pre`` (..., G*H), for
    :func:`log_space_scan`."""
    if family == "mingru":
        k, cand = pre.chunk(2, -1)
        return -F.softplus(k), -F.softplus(-k) + _log_g(cand)  # log(1 - z), log z + log g(h~)
    f, i, cand = pre.chunk(3, -1)
    d = F.softplus(-f) - F.softplus(-i)  # log(i / f)
    return -F.softplus(d), -F.softplus(-d) + _log_g(cand)  # log f', log i' + log g(h~)


def coefficients(family: str, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) of h = a * h' + b from the pre-activations ``pre`` (..., G*H): minGRU a = 1 - z =
    sigma(-k), b = z g(h~); minLSTM a = f' = sigma(-d), b = i' g(h~) = sigma(d) g(h~), d = log(i / f)."""
    if family == "mingru":
        k, cand = pre.chunk(2, -1)
        return torch.sigmoid(-k), torch.sigmoid(k) * _g(cand)
    f, i, cand = pre.chunk(3, -1)
    d = F.softplus(-f) - F.softplus(-i)  # log(i / f)
    return torch.sigmoid(-d), torch.sigmoid(d) * _g(cand)


def log_space_scan(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t from h_0 = 0 along dim 0, given log a and log b (b > 0): Heinsen's
    log-space scan, log h_t = A_t + logcumsumexp_{s<=t}(log b_s - A_s), A = cumsum(log a)."""
    A = torch.cumsum(log_a, 0)
    return torch.exp(A + torch.logcumsumexp(log_b - A, 0))


def parallel_scan(a: torch.Tensor, b: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t from h_0 = 0 along dim 0 as a two-level blocked scan (module
    docstring): chunks of ``chunk`` steps (default ~sqrt(T)). a, b (T, ...) -> h (T, ...)."""
    T = a.shape[0]
    L = chunk or max(1, math.isqrt(T))
    K = -(-T // L)  # chunks
    if K * L > T:  # pad with identity steps (a = 1, b = 0), cut off at the end
        a = torch.cat([a, a.new_ones(K * L - T, *a.shape[1:])])
        b = torch.cat([b, b.new_zeros(K * L - T, *b.shape[1:])])
    # (L, K, ...): step j of every chunk is one contiguous tensor
    a_steps = a.view(K, L, *a.shape[1:]).transpose(0, 1).contiguous().unbind(0)
    b_steps = b.view(K, L, *b.shape[1:]).transpose(0, 1).contiguous().unbind(0)
    h, p = b_steps[0], a_steps[0]
    hs, ps = [h], [p]
    for a_j, b_j in zip(a_steps[1:], b_steps[1:]):  # every chunk's own scan from 0, at once
        h = torch.addcmul(b_j, a_j, h)
        p = p * a_j
        hs.append(h)
        ps.append(p)
    carry = torch.zeros_like(h[0])
    carries = [carry]
    for h_end, p_end in zip(h.unbind(0)[:-1], p.unbind(0)[:-1]):  # each chunk's end passes its carry on
        carry = torch.addcmul(h_end, p_end, carry)
        carries.append(carry)
    out = torch.addcmul(torch.stack(hs), torch.stack(ps), torch.stack(carries).unsqueeze(0))  # (L, K, ...)
    return out.transpose(0, 1).reshape(K * L, *out.shape[2:])[:T]


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
        a, b = coefficients(spec.family, pre)
        h = parallel_scan(a, b) if parallel else linear_recurrence(a, b)
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
