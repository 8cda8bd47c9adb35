"""``VariantRNN``: the simple (Elman) RNN, the cell whose vanishing gradient the LSTM was made to cure.

Equation (PyTorch's ``nn.RNN``; ' = previous step)::

    h = act(W x + R h' + b)          act: tanh (default) or relu (``variant.rnn_activation``)

``recurrence=diagonal`` is IndRNN (Li et al. 2018): each unit reads only its own previous
output, through one recurrent weight of its own::

    h = act(W x + u * h' + b)        u (H,), elementwise (the preset ``indrnn``: act = relu)

The initial state is zero. Through T - t steps the gradient reaching x_t is multiplied by
T - t Jacobians diag(act'(.)) R: with ||R|| < 1 (and |tanh'| <= 1) it decays exponentially with
the lag, which ``odyssey plot gradient-flow`` shows against the LSTM's constant error carousel.

Parameters (per direction; the reverse direction's have the suffix ``_reverse``)::

    weight_ih   (H, I)
    weight_hh   (H, H)    (IndRNN: (H,), the vector u)
    bias        (H,)      nn.RNN's b_ih + b_hh (they only add up)

That is H(I + H + 1) parameters (IndRNN: H(I + 2)), initialised N(0, std^2) like every variant's.
Shapes: input (T, B, I) -> outputs (T, B, H * directions), h_n (directions, B, H).
"""

from __future__ import annotations

import torch

from odyssey.cells.base import HiddenStateLayer, input_projection, run_steps, torch_layer_weights
from odyssey.cells.spec import VariantSpec

__all__ = ["VariantRNN", "load_torch_rnn_state_dict"]


def _tanh_step(x_t, h, w_t):
    """h = tanh(x_t + h' R^T): x_t (n, B, H) = W x + b, h (n, B, H), w_t = R^T (n, H, H)."""
    return torch.tanh(torch.baddbmm(x_t, h, w_t))


def _relu_step(x_t, h, w_t):
    return torch.relu(torch.baddbmm(x_t, h, w_t))


def _tanh_diagonal_step(x_t, h, u):
    """IndRNN: h = tanh(x_t + u * h'): u (n, 1, H)."""
    return torch.tanh(torch.addcmul(x_t, u, h))


def _relu_diagonal_step(x_t, h, u):
    return torch.relu(torch.addcmul(x_t, u, h))


_STEPS = {("tanh", "full"): _tanh_step, ("relu", "full"): _relu_step,
          ("tanh", "diagonal"): _tanh_diagonal_step, ("relu", "diagonal"): _relu_diagonal_step}  # fmt: skip


class VariantRNN(HiddenStateLayer):
    """One Elman RNN layer (equation and parameters in the module docstring), the face of
    :class:`~odyssey.cells.VariantLSTM`: uni- or bidirectional, ``lengths`` for padded batches;
    ``layer(x, lengths)`` returns ``(outputs (T, B, H*directions), h_n (directions, B, H))``.

    Args:
        spec: a ``family=rnn`` spec (``preset("rnn")``; ``rnn_activation=relu`` for ReLU;
            ``preset("indrnn")`` or ``recurrence=diagonal`` for IndRNN).
        input_size, hidden_size, bidirectional, init_std: as :class:`~odyssey.cells.VariantLSTM`.
        fused: accepted for the same signature; the RNN has one path (the loop, recorded by autograd).

    Example:
        >>> layer = VariantRNN(preset("rnn"), input_size=2, hidden_size=8, bidirectional=True)
        >>> y, h_n = layer(torch.randn(100, 4, 2))   # y: (100, 4, 16), h_n: (2, 4, 8)
    """

    family = "rnn"

    def parameter_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        H, I = self.hidden_size, self.input_size
        recurrent = (H,) if self.spec.recurrence == "diagonal" else (H, H)
        return [("weight_ih", (H, I)), ("weight_hh", recurrent), ("bias", (H,))]

    @staticmethod
    def members_forward(spec: VariantSpec, x: torch.Tensor, weights: dict[str, torch.Tensor], active=None, hidden=None, steps=None) -> torch.Tensor:
        """M RNN layers at once: x (M, T, B, I), ``weights`` by base name, each (M, ...) -> (M, T, B, H)."""
        w_hh = weights["weight_hh"]
        xw = input_projection(x, weights["weight_ih"], weights["bias"])  # (T, M, B, H), one product
        step = _STEPS[spec.rnn_activation, spec.recurrence]
        recurrent = w_hh.unsqueeze(1) if spec.recurrence == "diagonal" else w_hh.transpose(1, 2)  # (M, 1, H) | (M, H, H)
        return run_steps(step, xw, (recurrent,), w_hh.shape[-1], active)



def load_torch_rnn_state_dict(layer: VariantRNN, state_dict: dict[str, torch.Tensor], *, index: int = 0) -> None:
    """Load layer ``index`` of an ``nn.RNN`` state dict into ``layer``; ``*_reverse`` keys load
    into a bidirectional layer. The state dict does not record nn.RNN's ``nonlinearity``: build
    the layer with the same one (``rnn_activation``). Our one bias is b_ih + b_hh; the layer then
    gives nn.RNN's outputs and gradients (d b_ih = d b_hh = d bias)."""
    if layer.spec.recurrence != "full":
        raise ValueError("nn.RNN has a full recurrent matrix; this layer is IndRNN (recurrence=diagonal)")
    with torch.no_grad():
        for sfx in layer._suffixes():
            w_ih, w_hh, b_ih, b_hh = torch_layer_weights(state_dict, index, sfx)
            getattr(layer, "weight_ih" + sfx).copy_(w_ih)
            getattr(layer, "weight_hh" + sfx).copy_(w_hh)
            getattr(layer, "bias" + sfx).copy_(b_ih + b_hh)
