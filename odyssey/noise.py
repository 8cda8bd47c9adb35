"""Counter-based Gaussian input noise: the same numbers on CPU and GPU, alone or in a pack.

The paper adds fresh Gaussian noise to the inputs at every presentation of a training sequence.
Drawing it from a stateful generator would tie the numbers to the order of the draws: a trial
trained in a pack (beside other members, on another device) would see different noise from the
same trial trained alone. Here the noise of one element is a pure function of where it is::

    noise[t, k] of sequence n, presented in epoch e, to the trial with seed s
        = N(0, 1) draw number (t * I + k) of the stream keyed by (s, e, n)

The key and the counter go through a 32-bit integer hash (murmur3's finaliser, with products
split so that no intermediate value leaves int64), giving two uniform numbers per element that
Box-Muller turns into one standard normal. Every op is elementwise integer arithmetic or a
float64 ``log``/``cos``, so CPU and CUDA agree to float rounding, and a batch of any shape
(``(M, T, B, I)`` for a pack of M members) is one vectorized computation with no host sync.
"""

from __future__ import annotations

import math

import torch

__all__ = ["gaussian_noise", "stream_keys"]

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _mul32(h, c: int):
    """(h * c) mod 2^32 for h in [0, 2^32) (a tensor or an int): split c in 16-bit halves so
    products stay < 2^48."""
    lo, hi = c & 0xFFFF, c >> 16
    if isinstance(h, int):
        return (h * lo + (((h * hi) & 0xFFFF) << 16)) & _MASK32
    out = h * hi
    out.bitwise_and_(0xFFFF).bitwise_left_shift_(16)
    return out.add_(h * lo).bitwise_and_(_MASK32)


def _mix32(h):
    """murmur3's 32-bit finaliser: a bijection of [0, 2^32) with full avalanche (tensor or int)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _combine(key, value):
    return _mix32((key ^ ((value + _GOLDEN) & _MASK32)) & _MASK32)


def stream_keys(seed: torch.Tensor | int, epoch: torch.Tensor | int, sequence: torch.Tensor) -> torch.Tensor:
    """The key of each (seed, epoch, sequence) stream, int64 in [0, 2^32); broadcasts its arguments.

    With an int seed and epoch (one trial) their part of the key is hashed in Python: the same
    integers, without a dozen tensor ops per update."""
    sequence = sequence.to(torch.int64)
    if isinstance(seed, int) and isinstance(epoch, int):
        key = _combine(_combine(_mix32(seed & _MASK32), (seed >> 32) & _MASK32), epoch & _MASK32)
        return _combine(key, sequence & _MASK32)
    like = torch.zeros_like(sequence)
    seed = like + torch.as_tensor(seed, dtype=torch.int64, device=sequence.device)
    epoch = like + torch.as_tensor(epoch, dtype=torch.int64, device=sequence.device)
    key = _mix32(seed & _MASK32)
    key = _combine(key, (seed >> 32) & _MASK32)
    key = _combine(key, epoch & _MASK32)
    return _combine(key, sequence & _MASK32)


def gaussian_noise(keys: torch.Tensor, steps: int, features: int, *, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise for each stream key: keys (..., B) -> (..., T, B, I), time-major.

    Element (t, k) of a sequence's noise depends only on its key and on ``t * I + k``, so a
    sequence gets the same noise whatever the batch it sits in and however long the batch is.
    """
    device = keys.device
    # counters 2n and 2n + 1 of element n = t * I + k, side by side: both uniforms in one pass
    counter = torch.arange(2 * steps * features, device=device, dtype=torch.int64).view(steps, 1, features, 2)
    k = keys.unsqueeze(-2).unsqueeze(-1).unsqueeze(-1)  # (..., 1, B, 1, 1)
    h = _combine(k, counter).to(torch.float64)  # (..., T, B, I, 2)
    # 32-bit uniforms in (0, 1): u1 never 0 (log), both exact in float64.
    u1 = h[..., 0].add(0.5).mul_(1.0 / 4294967296.0)
    u2 = h[..., 1].mul(1.0 / 4294967296.0)
    z = torch.log(u1).mul_(-2.0).sqrt_().mul_(torch.cos(u2.mul_(2.0 * math.pi)))
    return z.to(dtype)
