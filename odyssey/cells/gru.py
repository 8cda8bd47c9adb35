"""``VariantGRU``: the gated recurrent unit (Cho et al. 2014), a reference cell beside the LSTMs.

Equations (PyTorch's ``nn.GRU``; r = reset gate, u = update gate, ' = previous step)::

    r = sigma(W_r x + R_r h' + b_r)
    u = sigma(W_u x + R_u h' + b_u)
    n = tanh(W_n x + b_n + r * (R_n h' + b_hn))        candidate
    h = (1 - u) * n + u * h'                           output and state

``reset_before_product`` (the original paper's form) applies the reset gate to h' before the
product: n = tanh(W_n x + R_n (r * h') + b_n). The initial state is zero.

``nn.GRU`` has two biases per block (b_i*, b_h*). In r and u they only add up, so one bias does;
in nn.GRU's n the reset gate multiplies b_hn, which is therefore a parameter of its own
(``bias_hn``); in the original form it adds to b_n and is not needed.

Parameters (per direction; the reverse direction's have the suffix ``_reverse``)::

    weight_ih   (3H, I)    row blocks r, u, n (nn.GRU's order r, z, n)
    weight_hh   (3H, H)    same row blocks
    bias        (3H,)      b_r, b_u, b_n  (nn.GRU: b_ir + b_hr, b_iz + b_hz, b_in)
    bias_hn     (H,)       nn.GRU's b_hn (not with reset_before_product)

That is 3H(I + H + 1) (+ H) parameters, initialised N(0, std^2) like every variant's.
Shapes: input (T, B, I) -> outputs (T, B, H * directions), h_n (directions, B, H).
"""

from __future__ import annotations

import torch

from odyssey.cells.base import HiddenStateLayer, input_projection, run_steps, torch_layer_weights
from odyssey.cells.spec import VariantSpec

__all__ = ["VariantGRU", "load_torch_gru_state_dict"]


def _step_torch_form(x_t, h, w_t, b_hn):
    """One nn.GRU step: x_t (n, B, 3H) = W x + b, h (n, B, H), w_t = R^T (n, H, 3H), b_hn (n, 1, H)."""
    H = h.shape[-1]
    rec = torch.bmm(h, w_t)  # (n, B, 3H): R h'
    r, u = torch.sigmoid(x_t[..., : 2 * H] + rec[..., : 2 * H]).chunk(2, dim=-1)
    n = torch.tanh(torch.addcmul(x_t[..., 2 * H :], r, rec[..., 2 * H :] + b_hn))
    return torch.addcmul(n, u, h - n)  # (1 - u) n + u h'


def _step_reset_before(x_t, h, w_t):
    """One step of Cho et al.'s form: n = tanh(W_n x + b_n + R_n (r * h'))."""
    H = h.shape[-1]
    r, u = torch.sigmoid(torch.baddbmm(x_t[..., : 2 * H], h, w_t[..., : 2 * H])).chunk(2, dim=-1)
    n = torch.tanh(torch.baddbmm(x_t[..., 2 * H :], r * h, w_t[..., 2 * H :]))
    return torch.addcmul(n, u, h - n)


class VariantGRU(HiddenStateLayer):
    """One GRU layer (equations and parameters in the module docstring), the face of
    :class:`~odyssey.cells.VariantLSTM`: uni- or bidirectional, ``lengths`` for padded batches;
    ``layer(x, lengths)`` returns ``(outputs (T, B, H*directions), h_n (directions, B, H))``.

    Args:
        spec: a ``family=gru`` spec (``preset("gru")``; ``reset_before_product`` for Cho et al.'s form).
        input_size, hidden_size, bidirectional, init_std: as :class:`~odyssey.cells.VariantLSTM`.
        fused: accepted for the same signature; the GRU has one path (the loop, recorded by autograd).

    Example:
        >>> layer = VariantGRU(preset("gru"), input_size=2, hidden_size=8)
        >>> y, h_n = layer(torch.randn(100, 4, 2))   # y: (100, 4, 8), h_n: (1, 4, 8)
    """

    family = "gru"

    def parameter_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        H, I = self.hidden_size, self.input_size
        shapes = [("weight_ih", (3 * H, I)), ("weight_hh", (3 * H, H)), ("bias", (3 * H,))]
        return shapes + ([("bias_hn", (H,))] if self.spec.extra_bias else [])

    @staticmethod
    def members_forward(spec: VariantSpec, x: torch.Tensor, weights: dict[str, torch.Tensor], active=None, hidden=None, steps=None) -> torch.Tensor:
        """M GRU layers at once: x (M, T, B, I), ``weights`` by base name, each (M, ...) -> (M, T, B, H)."""
        w_hh = weights["weight_hh"]
        xw = input_projection(x, weights["weight_ih"], weights["bias"])  # (T, M, B, 3H), one product
        w_t = w_hh.transpose(1, 2)  # (M, H, 3H)
        if spec.reset_before_product:
            return run_steps(_step_reset_before, xw, (w_t,), w_hh.shape[-1], active)
        return run_steps(_step_torch_form, xw, (w_t, weights["bias_hn"].unsqueeze(1)), w_hh.shape[-1], active)



def load_torch_gru_state_dict(layer: VariantGRU, state_dict: dict[str, torch.Tensor], *, index: int = 0) -> None:
    """Load layer ``index`` of an ``nn.GRU`` state dict into ``layer`` (nn.GRU's form, not
    ``reset_before_product``); ``*_reverse`` keys load into a bidirectional layer.

    Rows r, z, n are ours r, u, n; b_r = b_ir + b_hr, b_u = b_iz + b_hz, b_n = b_in, bias_hn = b_hn.
    The layer then gives nn.GRU's outputs and gradients (d b_ih = d bias, d b_hh = [d b_r, d b_u, d bias_hn]).
    """
    if layer.spec.reset_before_product:
        raise ValueError("nn.GRU applies the reset gate after the product (r * (R_n h' + b_hn)); this layer has reset_before_product=true")
    H = layer.hidden_size
    with torch.no_grad():
        for sfx in layer._suffixes():
            w_ih, w_hh, b_ih, b_hh = torch_layer_weights(state_dict, index, sfx)
            getattr(layer, "weight_ih" + sfx).copy_(w_ih)
            getattr(layer, "weight_hh" + sfx).copy_(w_hh)
            getattr(layer, "bias" + sfx).copy_(torch.cat([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H :]]))
            getattr(layer, "bias_hn" + sfx).copy_(b_hh[2 * H :])

