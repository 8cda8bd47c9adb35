"""Variant cells: specs of orthogonal switches, presets, and the layers that implement them.

The LSTM family (:class:`VariantLSTM`, every Greff et al. variant and the xLSTM's sLSTM) and,
beside it, :class:`VariantGRU` (``nn.GRU``'s equations), :class:`VariantRNN` (Elman, and IndRNN),
:class:`VariantMinGRU` and :class:`VariantMinLSTM` (Feng et al. 2024, a parallel scan). All share one
face (:class:`~odyssey.cells.base.RecurrentLayer`); :func:`variant_layer` builds a spec's layer.

Public API::

    from odyssey.cells import preset, VariantSpec, VariantLSTM, variant_layer
    layer = VariantLSTM(preset("cifg"), input_size=88, hidden_size=100, bidirectional=True)
    outputs, (h_n, c_n) = layer(x)          # x: (T, B, 88) -> outputs: (T, B, 200)
    gru = variant_layer(preset("gru"), 88, 100)
    outputs, h_n = gru(x)                   # outputs: (T, B, 100), h_n: (1, B, 100)
"""

from odyssey.cells.activations import ACTIVATIONS, Activation, activation
from odyssey.cells.base import RecurrentLayer
from odyssey.cells.families import LAYERS, variant_layer
from odyssey.cells.gru import VariantGRU, load_torch_gru_state_dict
from odyssey.cells.layer import VariantLSTM, load_torch_lstm_state_dict
from odyssey.cells.minimal import VariantMinGRU, VariantMinLSTM
from odyssey.cells.rnn import VariantRNN, load_torch_rnn_state_dict
from odyssey.cells.spec import FAMILIES, FAMILY_SWITCHES, PRESETS, VariantSpec, preset, variant_from_mapping

__all__ = [
    "ACTIVATIONS",
    "FAMILIES",
    "FAMILY_SWITCHES",
    "LAYERS",
    "PRESETS",
    "Activation",
    "RecurrentLayer",
    "VariantGRU",
    "VariantLSTM",
    "VariantMinGRU",
    "VariantMinLSTM",
    "VariantRNN",
    "VariantSpec",
    "activation",
    "load_torch_gru_state_dict",
    "load_torch_lstm_state_dict",
    "load_torch_rnn_state_dict",
    "preset",
    "variant_from_mapping",
    "variant_layer",
]
