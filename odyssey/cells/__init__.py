"""LSTM variants: specs of orthogonal switches, presets, and the layer that implements them.

Public API::

    from odyssey.cells import preset, VariantSpec, VariantLSTM
    layer = VariantLSTM(preset("cifg"), input_size=88, hidden_size=100, bidirectional=True)
    outputs, (h_n, c_n) = layer(x)          # x: (T, B, 88) -> outputs: (T, B, 200)
"""

from odyssey.cells.activations import ACTIVATIONS, Activation, activation
from odyssey.cells.layer import VariantLSTM, load_torch_lstm_state_dict
from odyssey.cells.spec import PRESETS, VariantSpec, preset, variant_from_mapping

__all__ = [
    "ACTIVATIONS",
    "PRESETS",
    "Activation",
    "VariantLSTM",
    "VariantSpec",
    "activation",
    "load_torch_lstm_state_dict",
    "preset",
    "variant_from_mapping",
]
