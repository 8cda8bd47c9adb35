"""Named activation functions for the block input (g) and the block output (h).

Each :class:`Activation` carries its function and its backward rule written in terms of the
function's *output* y = f(x), so the hand-written backward pass of :mod:`odyssey.cells.fused`
needs to keep only the activations, not their inputs. Both take an optional ``out`` tensor,
which the fused time loop uses to write straight into its per-step buffers.

=============  ======================  ================================
name           y = f(x)                dL/dx given dL/dy and y
=============  ======================  ================================
``tanh``       tanh(x)                 dL/dy * (1 - y^2)
``sigmoid``    sigma(x)                dL/dy * y (1 - y)
``identity``   x                       dL/dy
``relu``       max(x, 0)               dL/dy * [y > 0]
``sigmoid4``   4 sigma(x) - 2          dL/dy * 4 s (1 - s), s = (y + 2) / 4   (LSTM 1997 g)
``sigmoid2``   2 sigma(x) - 1          dL/dy * 2 s (1 - s), s = (y + 1) / 2   (LSTM 1997 h)
=============  ======================  ================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["ACTIVATIONS", "Activation", "activation"]

_aten = torch.ops.aten
Tensor = torch.Tensor


@dataclass(frozen=True)
class Activation:
    """An elementwise function ``fn(x, out=None)`` and ``backward(grad_y, y, out=None)``, its
    vector-Jacobian product given the output ``y``. With ``out`` the result is written there."""

    name: str
    fn: Callable[..., Tensor]
    backward: Callable[..., Tensor]


def _unary(op, backward_op) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    """An ATen op with an ``out=`` form and its ``*_backward`` op (whose out form is ``grad_input``)."""

    def fn(x: Tensor, out: Optional[Tensor] = None) -> Tensor:
        return op(x) if out is None else op(x, out=out)

    def backward(grad: Tensor, y: Tensor, out: Optional[Tensor] = None) -> Tensor:
        return backward_op.default(grad, y) if out is None else backward_op.grad_input(grad, y, grad_input=out)

    return fn, backward


def _identity(x: Tensor, out: Optional[Tensor] = None) -> Tensor:
    return x if out is None else out.copy_(x)


def _identity_backward(grad: Tensor, y: Tensor, out: Optional[Tensor] = None) -> Tensor:
    return grad if out is None else out.copy_(grad)


def _relu(x: Tensor, out: Optional[Tensor] = None) -> Tensor:
    return torch.relu(x) if out is None else torch.clamp_min(x, 0.0, out=out)


def _relu_backward(grad: Tensor, y: Tensor, out: Optional[Tensor] = None) -> Tensor:
    if out is None:
        return _aten.threshold_backward(grad, y, 0)
    return _aten.threshold_backward.grad_input(grad, y, 0, grad_input=out)


def _squash(scale: float) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    """y = scale * sigma(x) - scale / 2: the LSTM 1997 squashing functions (scale 4 and 2)."""

    def fn(x: Tensor, out: Optional[Tensor] = None) -> Tensor:
        if out is None:
            return scale * torch.sigmoid(x) - scale / 2
        return torch.sigmoid(x, out=out).mul_(scale).sub_(scale / 2)

    def backward(grad: Tensor, y: Tensor, out: Optional[Tensor] = None) -> Tensor:
        s = (y + scale / 2) / scale
        if out is None:
            return _aten.sigmoid_backward(grad * scale, s)
        return _aten.sigmoid_backward.grad_input(grad * scale, s, grad_input=out)

    return fn, backward


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("tanh", *_unary(torch.tanh, _aten.tanh_backward)),
        Activation("sigmoid", *_unary(torch.sigmoid, _aten.sigmoid_backward)),
        Activation("identity", _identity, _identity_backward),
        Activation("relu", _relu, _relu_backward),
        Activation("sigmoid4", *_squash(4.0)),
        Activation("sigmoid2", *_squash(2.0)),
    )
}


def activation(name: str) -> Activation:
    """The activation called ``name``; an unknown name raises ValueError listing the valid ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid activations: {sorted(ACTIVATIONS)}") from None
