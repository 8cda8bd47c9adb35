"""Nesterov SGD for a pack: one vectorized step for all members, each with its own hyperparameters.

For member m with step size s_m (the paper's ``lr * (1 - momentum)``), momentum mu_m and its
gradient g, as ``torch.optim.SGD(momentum=mu, nesterov=...)`` (no dampening, no weight decay)::

    buf = mu * buf + g                       (buf starts at 0, so the first buf is g, as in torch)
    d   = g + mu * buf   (Nesterov)   or   buf   (classical momentum)
    p   = p - s * d

Optional gradient clipping per member, as ``train_trial``: first each value to [-v, v]
(``torch.nn.utils.clip_grad_value_``), then the norm, as ``torch.nn.utils.clip_grad_norm_`` over
that member's parameters: g *= min(1, c / (||g|| + 1e-6)). A member that is not ``active`` in an
update (it has run out of minibatches this epoch) keeps its weights and momentum unchanged.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["PackedSGD"]


class PackedSGD:
    """The step of :mod:`odyssey.packs.optim` over stacked (M, ...) parameters.

    Args:
        params: the pack's parameters, each (M, ...).
        step_sizes, momenta: (M,) per member.
        nesterov: (M,) bool per member.
        clip_norms: (M,) per member, ``inf`` for no clipping (None: nobody clips).
        clip_values: (M,) per member, ``inf`` for no value clipping (None: nobody clips values).
        buffers: momentum buffers to continue from (each like its parameter), else zeros.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        *,
        step_sizes: torch.Tensor,
        momenta: torch.Tensor,
        nesterov: torch.Tensor,
        clip_norms: torch.Tensor | None = None,
        clip_values: torch.Tensor | None = None,
        buffers: Sequence[torch.Tensor] | None = None,
    ):
        self.params = list(params)
        device, dtype = self.params[0].device, self.params[0].dtype
        self.step_sizes = step_sizes.to(device=device, dtype=dtype)
        self.momenta = momenta.to(device=device, dtype=dtype)
        self.nesterov = nesterov.to(device=device, dtype=torch.bool)
        self.clip_norms = None if clip_norms is None else clip_norms.to(device=device, dtype=dtype)
        self.clip_values = None if clip_values is None else clip_values.to(device=device, dtype=dtype)
        self.buffers = [torch.zeros_like(p) for p in self.params] if buffers is None else [b.detach().clone() for b in buffers]
        # True/False when every member has the same Nesterov switch (the step then runs in place), else None.
        flags = set(self.nesterov.tolist())
        self._uniform_nesterov = flags.pop() if len(flags) == 1 else None

    def _bcast(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.view(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def step(self, active: torch.Tensor | None = None) -> None:
        """One update of every member (``active``: (M,) bool, the members that update)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        if self.clip_values is not None:
            bounds = [self._bcast(self.clip_values, g) for g in grads]
            grads = [g.clamp(-c, c) for g, c in zip(grads, bounds)]
        if self.clip_norms is not None:
            norm = torch.sqrt(sum(g.pow(2).flatten(1).sum(1) for g in grads))  # (M,)
            coef = (self.clip_norms / (norm + 1e-6)).clamp(max=1.0)
            grads = [g * self._bcast(coef, g) for g in grads]
        everyone = active is None
        nesterov = self._uniform_nesterov
        for p, g, buf in zip(self.params, grads, self.buffers):
            mu, step = self._bcast(self.momenta, p), self._bcast(self.step_sizes, p)
            if everyone and nesterov is not None:  # in place: 2-3 passes over the weights
                torch.addcmul(g, mu, buf, out=buf)  # mu * buf + g
                p.addcmul_(step, torch.addcmul(g, mu, buf) if nesterov else buf, value=-1.0)
                continue
            new_buf = torch.addcmul(g, mu, buf)  # mu * buf + g
            d = torch.where(self._bcast(self.nesterov, p), torch.addcmul(g, mu, new_buf), new_buf)
            new_p = torch.addcmul(p, step, d, value=-1.0)
            if everyone:
                buf.copy_(new_buf)
                p.copy_(new_p)
            else:
                on = self._bcast(active, p)
                buf.copy_(torch.where(on, new_buf, buf))
                p.copy_(torch.where(on, new_p, p))

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
