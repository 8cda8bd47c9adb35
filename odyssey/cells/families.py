"""The layer class of each cell family, and the one constructor the model uses."""

from __future__ import annotations

from odyssey.cells.base import RecurrentLayer
from odyssey.cells.gru import VariantGRU
from odyssey.cells.layer import VariantLSTM
from odyssey.cells.minimal import VariantMinGRU, VariantMinLSTM
from odyssey.cells.rnn import VariantRNN
from odyssey.cells.spec import VariantSpec

__all__ = ["LAYERS", "variant_layer"]

LAYERS: dict[str, type[RecurrentLayer]] = {
    "lstm": VariantLSTM, "gru": VariantGRU, "rnn": VariantRNN, "mingru": VariantMinGRU, "minlstm": VariantMinLSTM,
}  # fmt: skip


def variant_layer(spec: VariantSpec, input_size: int, hidden_size: int, bidirectional: bool = False, **kwargs) -> RecurrentLayer:
    """The layer of ``spec``'s family (:class:`VariantLSTM`, :class:`VariantGRU`, :class:`VariantRNN`,
    :class:`VariantMinGRU` or :class:`VariantMinLSTM`);
    ``kwargs`` (``fused``, ``init_std``) as theirs."""
    return LAYERS[spec.family](spec, input_size, hidden_size, bidirectional, **kwargs)
