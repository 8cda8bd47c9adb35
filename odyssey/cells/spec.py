"""Variant specs: a variant is a small frozen set of orthogonal switches.

A spec names its cell ``family``: ``lstm`` (the default, every switch below), or one of the
cells beside it: ``gru`` (Cho et al. 2014, PyTorch's ``nn.GRU`` equations; see
:mod:`odyssey.cells.gru`), ``rnn`` (the simple Elman RNN, or IndRNN's diagonal recurrence; see
:mod:`odyssey.cells.rnn`), and ``mingru`` / ``minlstm`` (Feng et al. 2024, gates that see only
the input, trained by a parallel scan; see :mod:`odyssey.cells.minimal`). Each switch belongs to
one family (:data:`FAMILY_SWITCHES`); another family's switch set away from its default is
refused.

The LSTM presets are vanilla LSTM and the eight variants of Greff et al. (2017), plus the
original LSTM of Hochreiter & Schmidhuber (1997):

=========  ==================================================================
preset     difference from ``vanilla`` (all gates, peepholes, g = h = tanh)
=========  ==================================================================
nig        no input gate (i = 1)
nfg        no forget gate (f = 1)
nog        no output gate (o = 1)
niaf       no input activation function (g = identity)
noaf       no output activation function (h = identity)
np         no peepholes
cifg       coupled input and forget gate (f = 1 - i)
fgr        full gate recurrence (each gate sees all gates' previous activations)
lstm1997   no forget gate, no peepholes, g = 4 sigma - 2, h = 2 sigma - 1
=========  ==================================================================

the sLSTM of the xLSTM (Beck et al. 2024; ``exponential_gating``, see :mod:`odyssey.cells.slstm`):

=========  ==================================================================
slstm      exponential gating with stabilizer and normalizer, no peepholes, h = identity
=========  ==================================================================

and the other families' cells ``gru`` (``family=gru``, ``nn.GRU``'s reset-after-product form),
``rnn`` (``family=rnn``, h = tanh(W x + R h' + b)), ``indrnn`` (Li et al. 2018, ``family=rnn``,
``recurrence=diagonal``, h = relu(W x + u * h' + b)), ``mingru`` and ``minlstm``.

Any other combination of switches is allowed as long as it makes sense; :meth:`VariantSpec.validate`
says why one does not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from odyssey.cells.activations import ACTIVATIONS

__all__ = ["FAMILIES", "FAMILY_SWITCHES", "PRESETS", "RECURRENCES", "RNN_ACTIVATIONS", "VariantSpec", "preset", "variant_from_mapping"]

FAMILIES = ("lstm", "gru", "rnn", "mingru", "minlstm")
RNN_ACTIVATIONS = ("tanh", "relu")  # nn.RNN's nonlinearity choices
RECURRENCES = ("full", "diagonal")  # the RNN's R h' (a matrix) or u * h' (IndRNN: a vector)
FORGET_GATE_ACTIVATIONS = ("sigmoid", "exp")  # the sLSTM's forget gate: log f = log sigma(f~) or f~
# Which switches apply to which family (``family`` and ``name`` apply to all).
FAMILY_SWITCHES: dict[str, tuple[str, ...]] = {
    "lstm": (
        "input_gate", "forget_gate", "output_gate", "peepholes", "coupled_input_forget",
        "full_gate_recurrence", "block_activation", "output_activation", "exponential_gating",
        "forget_gate_activation",
    ),
    "gru": ("reset_before_product",),
    "rnn": ("rnn_activation", "recurrence"),
    "mingru": (),
    "minlstm": (),
}  # fmt: skip
# Row blocks of weight_ih/weight_hh/bias of the other families (the LSTM's follow its switches).
_BLOCKS = {"gru": ("r", "u", "n"), "rnn": ("h",), "mingru": ("z", "h"), "minlstm": ("f", "i", "h")}
# The LSTM switches that exponential gating refuses, and why (one line each).
_NOT_WITH_EXPONENTIAL_GATING = {
    "peepholes": "the gates would read the unnormalized cell c (scaled by exp(-m)), which has no fixed meaning",
    "coupled_input_forget": "f = 1 - i needs i in [0, 1]; the exponential input gate is unbounded",
    "full_gate_recurrence": "the exponential gate activations are unbounded and scaled by the stabilizer",
}


@dataclass(frozen=True)
class VariantSpec:
    """The switches that define a variant. Defaults are vanilla LSTM.

    Attributes:
        family: the cell: ``lstm`` | ``gru`` | ``rnn``. The switches below apply to one family
            each (:data:`FAMILY_SWITCHES`); the others must keep their defaults.
        input_gate: i is computed; otherwise i = 1.
        forget_gate: f exists; otherwise f = 1 (the cell never forgets).
        output_gate: o is computed; otherwise o = 1.
        peepholes: the gates see the cell state (p_i, p_f read c', p_o reads c).
        coupled_input_forget: f = 1 - i, with no forget-gate weights of its own.
        full_gate_recurrence: each gate's pre-activation also gets the previous step's
            activations of all gates (i, f, o) through ``weight_gate_hh``.
        block_activation: g, applied to the block input z.
        output_activation: h, applied to the cell state before the output gate.
        reset_before_product: GRU only: the original form of Cho et al. (2014),
            n = tanh(W_n x + R_n (r * h') + b_n), instead of nn.GRU's n = tanh(W_n x + b_in +
            r * (R_n h' + b_hn)) (which needs the extra bias b_hn).
        exponential_gating: LSTM only: the sLSTM (Beck et al. 2024): i = exp(i~ - m), f = exp(log f - m)
            with the stabilizer m and the normalizer n, y = o * h(c / n) (see
            :mod:`odyssey.cells.slstm`). Without an input gate i~ = 0; without a forget gate
            log f = 0; without an output gate o = 1. Refuses peepholes, CIFG and FGR.
        forget_gate_activation: LSTM with exponential gating only: ``sigmoid`` (log f = log
            sigma(f~), the default) or ``exp`` (log f = f~).
        rnn_activation: RNN only: h = act(W x + R h' + b), ``tanh`` or ``relu`` (as ``nn.RNN``).
        recurrence: RNN only: ``full`` (R h', R (H, H)) or ``diagonal`` (IndRNN, Li et al. 2018:
            u * h', u (H,)).
        name: an optional label; by default :meth:`label` derives one from the switches.
    """

    family: str = "lstm"
    input_gate: bool = True
    forget_gate: bool = True
    output_gate: bool = True
    peepholes: bool = True
    coupled_input_forget: bool = False
    full_gate_recurrence: bool = False
    block_activation: str = "tanh"
    output_activation: str = "tanh"
    reset_before_product: bool = False
    exponential_gating: bool = False
    forget_gate_activation: str = "sigmoid"
    rnn_activation: str = "tanh"
    recurrence: str = "full"
    name: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError (naming the switches and why) for a combination that makes no sense."""
        if self.family not in FAMILIES:
            raise ValueError(f"variant.family={self.family!r} is unknown; valid families: {list(FAMILIES)}")
        defaults = VariantSpec.__dataclass_fields__
        foreign = [
            f"variant.{k}={getattr(self, k)!r}"
            for fam, keys in FAMILY_SWITCHES.items() if fam != self.family
            for k in keys if getattr(self, k) != defaults[k].default
        ]  # fmt: skip
        if foreign:
            applies = "; ".join(f"{fam}: {', '.join(keys) or '(none)'}" for fam, keys in FAMILY_SWITCHES.items())
            raise ValueError(
                f"{', '.join(foreign)} set on variant.family={self.family!r}; "
                f"switches per family: {applies} (another family's switches keep their defaults)"
            )
        if self.rnn_activation not in RNN_ACTIVATIONS:
            raise ValueError(f"variant.rnn_activation={self.rnn_activation!r} is unknown; valid: {list(RNN_ACTIVATIONS)}")
        if self.recurrence not in RECURRENCES:
            raise ValueError(f"variant.recurrence={self.recurrence!r} is unknown; valid: {list(RECURRENCES)}")
        if self.forget_gate_activation not in FORGET_GATE_ACTIVATIONS:
            raise ValueError(
                f"variant.forget_gate_activation={self.forget_gate_activation!r} is unknown; valid: {list(FORGET_GATE_ACTIVATIONS)}"
            )
        if self.family != "lstm":
            return
        if self.exponential_gating:
            refused = [k for k in _NOT_WITH_EXPONENTIAL_GATING if getattr(self, k)]
            if refused:
                k = refused[0]
                valid = ", ".join(s for s in FAMILY_SWITCHES["lstm"] if s not in _NOT_WITH_EXPONENTIAL_GATING)
                raise ValueError(
                    f"variant.exponential_gating=true (family lstm, the sLSTM) refuses variant.{k}=true: "
                    f"{_NOT_WITH_EXPONENTIAL_GATING[k]}; switches valid with it: {valid}"
                )
        elif self.forget_gate_activation != "sigmoid":
            raise ValueError(
                f"variant.forget_gate_activation={self.forget_gate_activation!r} needs variant.exponential_gating=true "
                "(family lstm): the Greff et al. forget gate is a sigmoid"
            )
        for key in ("block_activation", "output_activation"):
            value = getattr(self, key)
            if value not in ACTIVATIONS:
                raise ValueError(f"variant.{key}={value!r} is unknown; valid activations: {sorted(ACTIVATIONS)}")
        if self.coupled_input_forget and not self.input_gate:
            raise ValueError(
                "variant.coupled_input_forget=true needs variant.input_gate=true: the coupled forget "
                "gate is f = 1 - i, so without an input gate it would be a constant 0 (the cell would forget everything)"
            )
        if self.coupled_input_forget and not self.forget_gate:
            raise ValueError(
                "variant.coupled_input_forget=true defines the forget gate as f = 1 - i, which contradicts "
                "variant.forget_gate=false; set forget_gate=true (or drop the coupling)"
            )
        if self.full_gate_recurrence and not self.gates:
            raise ValueError(
                "variant.full_gate_recurrence=true needs at least one gate (input, forget or output): "
                "there are no gate activations to feed back"
            )
        if self.peepholes and not self.gates:
            raise ValueError("variant.peepholes=true needs at least one gate for the peepholes to feed")

    # Which gates have weights of their own, in the parameter layout's order.
    @property
    def gates(self) -> tuple[str, ...]:
        """LSTM gates with weights of their own among ('i', 'f', 'o'), in that order (none for GRU/RNN)."""
        if self.family != "lstm":
            return ()
        own_f = self.forget_gate and not self.coupled_input_forget
        return tuple(g for g, on in (("i", self.input_gate), ("f", own_f), ("o", self.output_gate)) if on)

    @property
    def blocks(self) -> tuple[str, ...]:
        """Row blocks of ``weight_ih``/``weight_hh``/``bias``: for an LSTM the gates present and g,
        ordered i, f, g, o; for a GRU r, u, n; for an RNN h."""
        if self.family != "lstm":
            return _BLOCKS[self.family]
        return tuple(b for b in ("i", "f", "g", "o") if b == "g" or b in self.gates)

    @property
    def fused_lstm(self) -> bool:
        """An LSTM that runs :class:`~odyssey.cells.fused.FusedRecurrence` (and the compiled CPU
        loop): every LSTM but the sLSTM, whose loop autograd records."""
        return self.family == "lstm" and not self.exponential_gating

    @property
    def recurrent_columns(self) -> int | None:
        """Columns of ``weight_hh`` per row block: H (a full matrix), 1 (IndRNN's diagonal u, one
        entry per unit: ``weight_hh`` is (H,)), 0 (minGRU, minLSTM: no ``weight_hh``); None = H."""
        if self.family in ("mingru", "minlstm"):
            return 0
        if self.family == "rnn" and self.recurrence == "diagonal":
            return 1
        return None

    @property
    def peephole_gates(self) -> tuple[str, ...]:
        """Rows of ``peephole``: the gates among (i, f, o) that have a peephole."""
        return self.gates if self.peepholes else ()

    @property
    def extra_bias(self) -> bool:
        """The GRU's b_hn, which nn.GRU's form needs inside r * (R_n h' + b_hn)."""
        return self.family == "gru" and not self.reset_before_product

    def num_parameters(self, input_size: int, hidden_size: int) -> int:
        """Exactly the parameters the equations need: G*H*(I + R + 1) + P*H (+ (K*H)^2 for FGR;
        + H for nn.GRU's b_hn) with R = H recurrent columns (IndRNN: R = 1; minGRU, minLSTM:
        R = 0). GRU: G = 3; RNN: G = 1; minGRU: G = 2; minLSTM: G = 3."""
        g, p, k = len(self.blocks), len(self.peephole_gates), len(self.gates)
        r = hidden_size if self.recurrent_columns is None else self.recurrent_columns
        n = g * hidden_size * (input_size + r + 1) + p * hidden_size
        if self.extra_bias:
            n += hidden_size
        if self.full_gate_recurrence:
            n += (k * hidden_size) ** 2
        return n

    def label(self) -> str:
        """The preset name if the switches match one, else the presets it combines (``np+cifg``),
        else the family and its switches (``gru+reset_before_product=True``)."""
        if self.name:
            return self.name
        switches = self.switches()
        for name, spec in PRESETS.items():
            if spec.switches() == switches:
                return name
        if self.family != "lstm":
            base = PRESETS[self.family].switches() if self.family in PRESETS else VariantSpec(family=self.family).switches()
            return "+".join([self.family] + [f"{k}={v}" for k, v in switches.items() if base[k] != v])
        base = "slstm" if self.exponential_gating else "vanilla"  # an sLSTM reads as slstm+its differences
        vanilla = PRESETS["vanilla"].switches()
        diff = {k: v for k, v in switches.items() if PRESETS[base].switches()[k] != v}
        parts = [base] if base != "vanilla" else []
        for name in ("nig", "nfg", "nog", "niaf", "noaf", "np", "cifg", "fgr"):
            delta = {k: v for k, v in PRESETS[name].switches().items() if vanilla[k] != v}
            if delta.items() <= diff.items():
                parts.append(name)
                for k in delta:
                    diff.pop(k)
        parts += [f"{k}={v}" for k, v in diff.items()]
        return "+".join(parts) if parts else "vanilla"

    def switches(self) -> dict[str, Any]:
        """The family and the switches that apply to it, without the label: what defines the cell
        (and what a run records as ``variant.*`` params)."""
        return {"family": self.family, **{k: getattr(self, k) for k in FAMILY_SWITCHES[self.family]}}


PRESETS: dict[str, VariantSpec] = {
    "vanilla": VariantSpec(),
    "nig": VariantSpec(input_gate=False),
    "nfg": VariantSpec(forget_gate=False),
    "nog": VariantSpec(output_gate=False),
    "niaf": VariantSpec(block_activation="identity"),
    "noaf": VariantSpec(output_activation="identity"),
    "np": VariantSpec(peepholes=False),
    "cifg": VariantSpec(coupled_input_forget=True),
    "fgr": VariantSpec(full_gate_recurrence=True),
    "lstm1997": VariantSpec(
        forget_gate=False, peepholes=False, block_activation="sigmoid4", output_activation="sigmoid2"
    ),
    "slstm": VariantSpec(exponential_gating=True, peepholes=False, output_activation="identity"),
    "gru": VariantSpec(family="gru"),
    "rnn": VariantSpec(family="rnn"),
    "indrnn": VariantSpec(family="rnn", recurrence="diagonal", rnn_activation="relu"),
    "mingru": VariantSpec(family="mingru"),
    "minlstm": VariantSpec(family="minlstm"),
}


def preset(name: str) -> VariantSpec:
    """The spec of a preset variant; an unknown name raises ValueError listing the presets."""
    try:
        return dataclasses.replace(PRESETS[name], name=name)
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; valid variants: {sorted(PRESETS)}") from None


def variant_from_mapping(mapping: Mapping[str, Any]) -> VariantSpec:
    """A spec from a config mapping (a ``conf/variant/*.yaml``); unknown keys and wrong types fail."""
    fields = {f.name: f for f in dataclasses.fields(VariantSpec)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in 'variant'; valid keys: {sorted(fields)}")
    for key, value in mapping.items():
        if key in ("family", "block_activation", "output_activation", "rnn_activation", "recurrence", "forget_gate_activation"):
            ok = isinstance(value, str)
        elif key == "name":
            ok = value is None or isinstance(value, str)
        else:
            ok = isinstance(value, bool)
        if not ok:
            raise ValueError(f"variant.{key}={value!r} has the wrong type: expected {fields[key].type}")
    return VariantSpec(**mapping)
