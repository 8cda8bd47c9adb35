"""``VariantLSTM``: one (optionally bidirectional) LSTM layer of any variant.

Equations (Greff et al. 2017; y = block output, c = cell state, ' = previous step)::

    z = g(W_z x + R_z y' + b_z)                     block input
    i = sigma(W_i x + R_i y' + p_i * c' + b_i)      input gate      (NIG: i = 1)
    f = sigma(W_f x + R_f y' + p_f * c' + b_f)      forget gate     (NFG: f = 1; CIFG: f = 1 - i)
    c = z * i + c' * f                              cell state
    o = sigma(W_o x + R_o y' + p_o * c + b_o)       output gate     (NOG: o = 1); p_o reads the *current* c
    y = h(c) * o                                    block output

With ``exponential_gating`` the layer is the sLSTM (Beck et al. 2024): exponential input and
forget gates with a stabilizer m and a normalizer n, y = o * h(c / n); equations in
:mod:`odyssey.cells.slstm`. Same parameters; ``c_n`` is the (stabilized) cell state c.

NIAF: g = identity; NOAF: h = identity; NP: no p terms; FGR: every gate's pre-activation also
gets ``Rg`` times the previous step's activations of all gates. Initial state (y, c, and the
FGR gate activations) is zero.

Parameters (per direction; G = blocks present among i, f, g, o; P = peepholes present among
i, f, o; K = gates with weights of their own among i, f, o)::

    weight_ih       (G*H, I)      row blocks in the order i, f, g, o (absent gates have no rows)
    weight_hh       (G*H, H)      same row blocks
    bias            (G*H,)        same row blocks (one bias, not torch's two)
    peephole        (P, H)        rows in the order i, f, o                    (if P > 0)
    weight_gate_hh  (K*H, K*H)    FGR only: previous gate activations (stacked i, f, o) ->
                                  their pre-activations (same order)

The reverse direction of a bidirectional layer has the same parameters with suffix ``_reverse``.
All parameters are initialised N(0, std^2) with std = 0.1 (the paper's protocol).

Shapes: input (T, B, I) -> outputs (T, B, H * directions) and final state ``(h_n, c_n)``, each
(directions, B, H), taken at each sequence's last step when ``lengths`` is given.
"""

from __future__ import annotations

import functools

import torch

from odyssey.cells.base import RecurrentLayer, torch_layer_weights
from odyssey.cells.fused import FusedRecurrence
from odyssey.cells.recurrence import Layout, forward_loop
from odyssey.cells.slstm import slstm_members_forward
from odyssey.cells.spec import VariantSpec

__all__ = ["VariantLSTM", "load_torch_lstm_state_dict"]


class VariantLSTM(RecurrentLayer):
    """One LSTM layer whose structure follows from a :class:`VariantSpec`.

    Args:
        spec: the variant's switches (see :func:`odyssey.cells.preset`).
        input_size: I, features per step.
        hidden_size: H, LSTM blocks per direction.
        bidirectional: add a reverse-direction layer; outputs are concatenated (forward first).
        fused: use the hand-written backward pass (fast, default); ``False`` records the loop
            with autograd (slower, supports double backward).
        init_std: std of the normal initialisation.

    Example:
        >>> layer = VariantLSTM(preset("cifg"), input_size=88, hidden_size=100)
        >>> y, (h_n, c_n) = layer(torch.randn(60, 1, 88))   # y: (60, 1, 100)
    """

    family = "lstm"

    @property
    def layout(self) -> Layout:
        """The structure of this variant's step (fixed by the spec and H; built once per pair)."""
        return _layout(self.spec, self.hidden_size)

    def parameter_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        spec, H, I = self.spec, self.hidden_size, self.input_size
        G, P, K = len(spec.blocks), len(spec.peephole_gates), len(spec.gates)
        shapes = [("weight_ih", (G * H, I)), ("weight_hh", (G * H, H)), ("bias", (G * H,))]
        if P:
            shapes.append(("peephole", (P, H)))
        if spec.full_gate_recurrence:
            shapes.append(("weight_gate_hh", (K * H, K * H)))
        return shapes

    @staticmethod
    def members_forward(spec: VariantSpec, x: torch.Tensor, weights: dict[str, torch.Tensor], active=None, hidden=None, steps=None) -> torch.Tensor:
        """M layers' outputs at once: x (M, T, B, I), ``weights`` by base name each (M, ...) -> (M, T, B, H).
        ``active``, ``hidden``, ``steps``: see :class:`~odyssey.cells.fused.FusedRecurrence` (a trial pack's members)."""
        if spec.exponential_gating:  # the sLSTM: its own loop, every member all T steps (no compiled loop)
            return slstm_members_forward(spec, x, weights, active)[0]
        lay = _layout(spec, weights["weight_hh"].shape[-1])
        get = weights.get
        w = (get("weight_ih"), get("bias"), get("weight_hh"), get("peephole"), get("weight_gate_hh"))
        Y, _ = FusedRecurrence.apply(lay, x, *w, active, None if hidden is None else tuple(hidden), steps)
        return Y

    def _direction(self, x: torch.Tensor, sfx: str) -> tuple[torch.Tensor, torch.Tensor]:
        w_ih, bias, w_hh = (getattr(self, name + sfx) for name in ("weight_ih", "bias", "weight_hh"))
        peephole, w_gate = getattr(self, "peephole" + sfx, None), getattr(self, "weight_gate_hh" + sfx, None)
        if self.spec.exponential_gating:  # the sLSTM: its own loops (hand-written backward, or autograd's)
            Y, C = slstm_members_forward(self.spec, x.unsqueeze(0), self.direction_weights(sfx), fused=self.fused)
            return Y[0], C[0]
        if self.fused:  # a pack of one: every weight gets a member axis of size 1
            one = lambda t: None if t is None else t.unsqueeze(0)  # noqa: E731
            Y, C = FusedRecurrence.apply(self.layout, x.unsqueeze(0), *map(one, (w_ih, bias, w_hh, peephole, w_gate)))
            return Y[0], C[0]
        T, B, _ = x.shape
        # The input projection of all steps at once: (T*B, I) @ (I, G*H).
        xw = torch.addmm(bias, x.reshape(T * B, -1), w_ih.t()).view(T, B, -1)
        return forward_loop(self.layout, xw, w_hh, peephole, w_gate)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Args: x (T, B, I); lengths (B,) int64 for zero-padded batches (default: all T).

        Returns: outputs (T, B, H*directions), (h_n, c_n) each (directions, B, H).
        """
        out, (h_n, c_n) = self._run(x, lengths)
        return out, (h_n, c_n)


@functools.lru_cache(maxsize=64)
def _layout(spec: VariantSpec, hidden_size: int) -> Layout:
    return Layout.of(spec, hidden_size)


def load_torch_lstm_state_dict(layer: VariantLSTM, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a one-layer ``torch.nn.LSTM`` state dict into a layer without peepholes.

    ``torch.nn.LSTM`` computes the ``np`` variant: gates i, f, g, o in the same row order as
    ours, with two biases that add up to our one. Bidirectional state dicts (``*_reverse``) load
    into bidirectional layers. The layer then gives the same outputs and gradients.
    """
    spec = layer.spec
    if spec.peephole_gates or spec.full_gate_recurrence or spec.blocks != ("i", "f", "g", "o"):
        raise ValueError(
            f"torch.nn.LSTM has all four blocks, no peepholes and no gate recurrence; variant "
            f"{spec.label()!r} does not match (use 'np')"
        )
    if (spec.block_activation, spec.output_activation) != ("tanh", "tanh"):
        raise ValueError("torch.nn.LSTM uses g = h = tanh")
    with torch.no_grad():
        for sfx in layer._suffixes():
            w_ih, w_hh, b_ih, b_hh = torch_layer_weights(state_dict, 0, sfx)
            b = b_ih + b_hh
            getattr(layer, "weight_ih" + sfx).copy_(w_ih)
            getattr(layer, "weight_hh" + sfx).copy_(w_hh)
            getattr(layer, "bias" + sfx).copy_(b)
