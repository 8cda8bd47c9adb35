"""Named activation functions for the block input (g) and the block output (h).

Each :class:`Activation` carries its function and its backward rule written in terms of the
function's *output* y = f(x), so the hand-written backward pass of
:mod:`odyssey.cells.recurrence` needs to keep only the activations, not their inputs.

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
from typing import Callable

import torch

__all__ = ["ACTIVATIONS", "Activation", "activation"]

_aten = torch.ops.aten


@dataclass(frozen=True)
class Activation:
    """An elementwise function ``fn(x)`` and ``backward(grad_y, y)``, its vector-Jacobian product."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _squash(scale: float):
    """y = scale * sigma(x) - scale / 2: the LSTM 1997 squashing functions (scale 4 and 2)."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        return scale * torch.sigmoid(x) - scale / 2

    def backward(grad: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = (y + scale / 2) / scale
        return _aten.sigmoid_backward(grad * scale, s)

    return fn, backward


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("tanh", torch.tanh, _aten.tanh_backward),
        Activation("sigmoid", torch.sigmoid, _aten.sigmoid_backward),
        Activation("identity", lambda x: x, lambda grad, y: grad),
        Activation("relu", torch.relu, lambda grad, y: _aten.threshold_backward(grad, y, 0)),
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
