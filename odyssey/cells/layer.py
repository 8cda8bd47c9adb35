"""``VariantLSTM``: one (optionally bidirectional) LSTM layer of any variant.

Equations (Greff et al. 2017; y = block output, c = cell state, ' = previous step)::

    z = g(W_z x + R_z y' + b_z)                     block input
    i = sigma(W_i x + R_i y' + p_i * c' + b_i)      input gate      (NIG: i = 1)
    f = sigma(W_f x + R_f y' + p_f * c' + b_f)      forget gate     (NFG: f = 1; CIFG: f = 1 - i)
    c = z * i + c' * f                              cell state
    o = sigma(W_o x + R_o y' + p_o * c + b_o)       output gate     (NOG: o = 1); p_o reads the *current* c
    y = h(c) * o                                    block output

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

import torch
from torch import nn

from odyssey.cells.fused import FusedRecurrence
from odyssey.cells.recurrence import Layout, forward_loop
from odyssey.cells.spec import VariantSpec

__all__ = ["VariantLSTM", "load_torch_lstm_state_dict"]


class VariantLSTM(nn.Module):
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

    def __init__(
        self,
        spec: VariantSpec,
        input_size: int,
        hidden_size: int,
        bidirectional: bool = False,
        *,
        fused: bool = True,
        init_std: float = 0.1,
    ):
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be >= 1, got {input_size} and {hidden_size}")
        self.spec = spec
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bidirectional = bidirectional
        self.fused = fused
        self.layout = Layout.of(spec, hidden_size)
        H, G, P, K = hidden_size, len(spec.blocks), len(spec.peephole_gates), len(spec.gates)
        for sfx in self._suffixes():
            self.register_parameter("weight_ih" + sfx, nn.Parameter(torch.empty(G * H, input_size)))
            self.register_parameter("weight_hh" + sfx, nn.Parameter(torch.empty(G * H, H)))
            self.register_parameter("bias" + sfx, nn.Parameter(torch.empty(G * H)))
            if P:
                self.register_parameter("peephole" + sfx, nn.Parameter(torch.empty(P, H)))
            if spec.full_gate_recurrence:
                self.register_parameter("weight_gate_hh" + sfx, nn.Parameter(torch.empty(K * H, K * H)))
        self.reset_parameters(init_std)

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def reset_parameters(self, std: float = 0.1) -> None:
        for p in self.parameters():
            nn.init.normal_(p, 0.0, std)

    def _direction(self, x: torch.Tensor, sfx: str) -> tuple[torch.Tensor, torch.Tensor]:
        w_ih, bias, w_hh = (getattr(self, name + sfx) for name in ("weight_ih", "bias", "weight_hh"))
        peephole, w_gate = getattr(self, "peephole" + sfx, None), getattr(self, "weight_gate_hh" + sfx, None)
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
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"expected input (T, B, {self.input_size}), got {tuple(x.shape)}")
        T, B, _ = x.shape
        last = (lengths.to(x.device) - 1) if lengths is not None else torch.full((B,), T - 1, device=x.device)
        batch_idx = torch.arange(B, device=x.device)
        Y, C = self._direction(x, "")
        outs, hs, cs = [Y], [Y[last, batch_idx]], [C[last, batch_idx]]
        if self.bidirectional:
            rev = _reverse_index(T, last)  # (T, B): reverses each sequence within its length
            xr = x.gather(0, rev.unsqueeze(-1).expand_as(x))
            Yr, Cr = self._direction(xr, "_reverse")
            outs.append(Yr.gather(0, rev.unsqueeze(-1).expand_as(Yr)))
            hs.append(Yr[last, batch_idx])
            cs.append(Cr[last, batch_idx])
        return torch.cat(outs, dim=-1), (torch.stack(hs), torch.stack(cs))

    def extra_repr(self) -> str:
        return (
            f"{self.spec.label()}, input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"bidirectional={self.bidirectional}, fused={self.fused}"
        )


def _reverse_index(T: int, last: torch.Tensor) -> torch.Tensor:
    """(T, B) time indices that reverse steps 0..last[b] of each sequence and keep the padding."""
    t = torch.arange(T, device=last.device).unsqueeze(1)  # (T, 1)
    return torch.where(t <= last, last - t, t)


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
            try:
                w_ih, w_hh = state_dict[f"weight_ih_l0{sfx}"], state_dict[f"weight_hh_l0{sfx}"]
                b = state_dict[f"bias_ih_l0{sfx}"] + state_dict[f"bias_hh_l0{sfx}"]
            except KeyError as exc:
                raise ValueError(f"state dict lacks {exc.args[0]!r}; keys: {sorted(state_dict)}") from None
            getattr(layer, "weight_ih" + sfx).copy_(w_ih)
            getattr(layer, "weight_hh" + sfx).copy_(w_hh)
            getattr(layer, "bias" + sfx).copy_(b)
