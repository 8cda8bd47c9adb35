"""Contract tests for every variant cell (the LSTM family and the sLSTM, the GRU, the simple RNN
and IndRNN, minGRU and minLSTM): gradients, parameter counts, the equations.

The references below are written from the equations (Greff et al. 2017 for the LSTMs, Beck et al.
2024 for the sLSTM, PyTorch's ``nn.GRU`` and ``nn.RNN`` documentation and Cho et al. 2014, Li et
al. 2018 for IndRNN, Feng et al. 2024 for minGRU/minLSTM) and the parameter layouts documented in
``odyssey.cells.layer``, ``.slstm``, ``.gru``, ``.rnn`` and ``.minimal``, step by step and gate
by gate, sharing no code with the implementation.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from odyssey.cells import (
    ACTIVATIONS,
    PRESETS,
    VariantGRU,
    VariantLSTM,
    VariantRNN,
    VariantSpec,
    load_torch_gru_state_dict,
    load_torch_lstm_state_dict,
    load_torch_rnn_state_dict,
    preset,
    variant_layer,
)

ALL = sorted(PRESETS)  # the LSTM presets (slstm too) and the other families' cells
COMBOS = {
    "np+cifg": VariantSpec(peepholes=False, coupled_input_forget=True),
    "cifg+fgr": VariantSpec(coupled_input_forget=True, full_gate_recurrence=True),
    "nig+fgr": VariantSpec(input_gate=False, full_gate_recurrence=True),
    "nfg+nog+sigmoid": VariantSpec(forget_gate=False, output_gate=False, block_activation="sigmoid"),
    "nig+nfg+relu": VariantSpec(input_gate=False, forget_gate=False, output_activation="relu"),
    "nog+noaf": VariantSpec(output_gate=False, output_activation="identity"),  # y = c: dc is dy itself
    "gru+reset_before_product": VariantSpec(family="gru", reset_before_product=True),
    "rnn+relu": VariantSpec(family="rnn", rnn_activation="relu"),
    "indrnn+tanh": VariantSpec(family="rnn", recurrence="diagonal"),
    "slstm+nig+nog": VariantSpec(exponential_gating=True, peepholes=False, input_gate=False, output_gate=False),
    "slstm+nfg+tanh": VariantSpec(exponential_gating=True, peepholes=False, forget_gate=False),
    "slstm+exp_forget": VariantSpec(exponential_gating=True, peepholes=False, output_activation="identity", forget_gate_activation="exp"),
}
SPECS = {**{n: preset(n) for n in ALL}, **COMBOS}
LSTM_SPECS = {n: s for n, s in SPECS.items() if s.family == "lstm"}

ACT = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda v: v,
    "relu": torch.relu,
    "sigmoid4": lambda v: 4 * torch.sigmoid(v) - 2,
    "sigmoid2": lambda v: 2 * torch.sigmoid(v) - 1,
}


def reference(layer: VariantLSTM, x: torch.Tensor, *, force_f: float | None = None) -> torch.Tensor:
    """Unidirectional forward pass from the paper's equations; ``force_f`` pins the forget gate."""
    if layer.spec.exponential_gating:
        return reference_slstm(layer, x)
    s, H = layer.spec, layer.hidden_size
    own_f = s.forget_gate and not s.coupled_input_forget
    blocks = [b for b, on in zip("ifgo", (s.input_gate, own_f, True, s.output_gate)) if on]
    gates = [b for b in blocks if b != "g"]
    rows = lambda w, b: w[blocks.index(b) * H : (blocks.index(b) + 1) * H]  # noqa: E731
    W = {b: rows(layer.weight_ih, b) for b in blocks}
    R = {b: rows(layer.weight_hh, b) for b in blocks}
    bias = {b: rows(layer.bias, b) for b in blocks}
    P = {g: layer.peephole[k] for k, g in enumerate(gates)} if s.peepholes else {}
    Rg = {}
    if s.full_gate_recurrence:
        for a, ga in enumerate(gates):
            for b, gb in enumerate(gates):
                Rg[ga, gb] = layer.weight_gate_hh[a * H : (a + 1) * H, b * H : (b + 1) * H]
    T, B, _ = x.shape
    y = c = x.new_zeros(B, H)
    prev = {g: x.new_zeros(B, H) for g in gates}
    outs = []
    for t in range(T):

        def pre(b):
            v = x[t] @ W[b].T + y @ R[b].T + bias[b]
            if s.full_gate_recurrence and b in gates:
                v = v + sum(prev[g] @ Rg[b, g].T for g in gates)
            return v

        act = {}
        i = torch.sigmoid(pre("i") + P.get("i", 0) * c) if "i" in blocks else 1.0
        if "f" in blocks:
            f = torch.sigmoid(pre("f") + P.get("f", 0) * c)
        else:
            f = 1 - i if s.coupled_input_forget else 1.0
        if force_f is not None:
            f = force_f
        z = ACT[s.block_activation](pre("g"))
        c = z * i + c * f
        o = torch.sigmoid(pre("o") + P.get("o", 0) * c) if "o" in blocks else 1.0
        y = ACT[s.output_activation](c) * o
        act.update(i=i, f=f, o=o)
        prev = {g: act[g] for g in gates}
        outs.append(y)
    return torch.stack(outs)


def reference_slstm(layer: VariantLSTM, x: torch.Tensor, *, stabilized: bool = True) -> torch.Tensor:
    """The sLSTM's equations (Beck et al. 2024), stabilized with m, or (``stabilized=False``) the
    plain form i = exp(i~), f = sigma(f~) (or exp(f~)); absent gates: i~ = 0, log f = 0, o = 1."""
    s, H = layer.spec, layer.hidden_size
    blocks = [b for b, on in zip("ifgo", (s.input_gate, s.forget_gate, True, s.output_gate)) if on]
    rows = lambda w, b: w[blocks.index(b) * H : (blocks.index(b) + 1) * H]  # noqa: E731
    T, B, _ = x.shape
    y, c, n, m = (x.new_zeros(B, H) for _ in range(4))
    outs = []
    for t in range(T):
        pre = {b: x[t] @ rows(layer.weight_ih, b).T + y @ rows(layer.weight_hh, b).T + rows(layer.bias, b) for b in blocks}
        i_pre = pre.get("i", x.new_zeros(B, H))
        if "f" not in pre:
            log_f_gate = x.new_zeros(B, H)
        elif s.forget_gate_activation == "exp":
            log_f_gate = pre["f"]
        else:
            log_f_gate = torch.log(torch.sigmoid(pre["f"]))
        if stabilized:
            m_new = torch.maximum(i_pre, m + log_f_gate)
            i, f = torch.exp(i_pre - m_new), torch.exp(m + log_f_gate - m_new)
            m = m_new
        else:
            i, f = torch.exp(i_pre), torch.exp(log_f_gate)
        c = f * c + i * ACT[s.block_activation](pre["g"])
        n = f * n + i
        o = torch.sigmoid(pre["o"]) if "o" in pre else 1.0
        y = o * ACT[s.output_activation](c / n)
        outs.append(y)
    return torch.stack(outs)


def reference_min(layer, x: torch.Tensor) -> torch.Tensor:
    """minGRU / minLSTM (Feng et al. 2024) step by step: h = (1 - z) h' + z g(h~), or
    h = f/(f+i) h' + i/(f+i) g(h~), with g(a) = a + 1/2 (a >= 0), sigma(a) (a < 0)."""
    H = layer.hidden_size
    g = lambda a: torch.where(a >= 0, a + 0.5, torch.sigmoid(a))  # noqa: E731
    h = x.new_zeros(x.shape[1], H)
    outs = []
    for x_t in x:
        pre = (x_t @ layer.weight_ih.T + layer.bias).split(H, -1)
        if layer.spec.family == "mingru":
            z = torch.sigmoid(pre[0])
            h = (1 - z) * h + z * g(pre[1])
        else:
            f, i = torch.sigmoid(pre[0]), torch.sigmoid(pre[1])
            h = f / (f + i) * h + i / (f + i) * g(pre[2])
        outs.append(h)
    return torch.stack(outs)


def reference_gru(layer: VariantGRU, x: torch.Tensor) -> torch.Tensor:
    """nn.GRU's equations (or Cho et al.'s reset-before-product form), one unit row block at a time."""
    H = layer.hidden_size
    W = dict(zip("run", layer.weight_ih.split(H)))
    R = dict(zip("run", layer.weight_hh.split(H)))
    b = dict(zip("run", layer.bias.split(H)))
    h = x.new_zeros(x.shape[1], H)
    outs = []
    for x_t in x:
        r = torch.sigmoid(x_t @ W["r"].T + h @ R["r"].T + b["r"])
        u = torch.sigmoid(x_t @ W["u"].T + h @ R["u"].T + b["u"])
        if layer.spec.reset_before_product:
            n = torch.tanh(x_t @ W["n"].T + (r * h) @ R["n"].T + b["n"])
        else:
            n = torch.tanh(x_t @ W["n"].T + b["n"] + r * (h @ R["n"].T + layer.bias_hn))
        h = (1 - u) * n + u * h
        outs.append(h)
    return torch.stack(outs)


def reference_rnn(layer: VariantRNN, x: torch.Tensor) -> torch.Tensor:
    """h = act(W x + R h' + b) (IndRNN: act(W x + u * h' + b)), step by step."""
    act = {"tanh": torch.tanh, "relu": torch.relu}[layer.spec.rnn_activation]
    h = x.new_zeros(x.shape[1], layer.hidden_size)
    outs = []
    for x_t in x:
        rec = h * layer.weight_hh if layer.spec.recurrence == "diagonal" else h @ layer.weight_hh.T
        h = act(x_t @ layer.weight_ih.T + rec + layer.bias)
        outs.append(h)
    return torch.stack(outs)


REFERENCES = {"lstm": reference, "gru": reference_gru, "rnn": reference_rnn, "mingru": reference_min, "minlstm": reference_min}


def expected_params(name: str, I: int, H: int) -> int:
    """Parameter counts written out per variant (G blocks of W, R, b; P peepholes; FGR's 9 H^2;
    the GRU's three blocks and nn.GRU's b_hn; the RNN's one block)."""
    full = 4 * H * (I + H + 1)
    three = 3 * H * (I + H + 1)
    return {
        "gru": three + H,
        "gru+reset_before_product": three,
        "rnn": H * (I + H + 1),
        "vanilla": full + 3 * H,
        "nig": three + 2 * H,
        "nfg": three + 2 * H,
        "nog": three + 2 * H,
        "niaf": full + 3 * H,
        "noaf": full + 3 * H,
        "np": full,
        "cifg": three + 2 * H,
        "fgr": full + 3 * H + 9 * H * H,
        "lstm1997": three,
        "slstm": full,  # vanilla's blocks, no peepholes
        "indrnn": H * (I + 1) + H,  # W, b and the vector u
        "mingru": 2 * H * (I + 1),  # W, b for z and h~; no recurrent weights
        "minlstm": 3 * H * (I + 1),  # f, i, h~
    }[name]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def final_states(result) -> tuple[torch.Tensor, ...]:
    """The final states of a layer's ``(outputs, state)``: (h_n, c_n) for an LSTM, (h_n,) otherwise."""
    state = result[1]
    return tuple(state) if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("name", [*ALL, "gru+reset_before_product"])
def test_parameter_count_matches_formula(name):
    layer = variant_layer(SPECS[name], input_size=88, hidden_size=100)
    n = sum(p.numel() for p in layer.parameters())
    assert n == expected_params(name, 88, 100) == SPECS[name].num_parameters(88, 100)
    bi = variant_layer(SPECS[name], input_size=88, hidden_size=100, bidirectional=True)
    assert sum(p.numel() for p in bi.parameters()) == 2 * n


@pytest.mark.parametrize("name", list(SPECS))
def test_forward_matches_equations(name):
    layer = variant_layer(SPECS[name], input_size=3, hidden_size=5).double()
    x = torch.randn(7, 2, 3, dtype=torch.double)
    result = layer(x)
    torch.testing.assert_close(result[0], REFERENCES[SPECS[name].family](layer, x))
    torch.testing.assert_close(final_states(result)[0][0], result[0][-1])


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_gradcheck(name, bidirectional):
    layer = variant_layer(SPECS[name], input_size=3, hidden_size=4, bidirectional=bidirectional).double()
    x = torch.randn(5, 2, 3, dtype=torch.double, requires_grad=True)
    lengths = torch.tensor([5, 3])
    params = tuple(layer.parameters())

    def f(x, *ps):
        result = torch.func.functional_call(layer, dict(zip([n for n, _ in layer.named_parameters()], ps)), (x, lengths))
        return result[0], *final_states(result)

    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("name", list(LSTM_SPECS))
def test_fused_backward_equals_autograd(name):
    fused = VariantLSTM(SPECS[name], input_size=4, hidden_size=6, bidirectional=True)
    plain = VariantLSTM(SPECS[name], input_size=4, hidden_size=6, bidirectional=True, fused=False)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(9, 3, 4)
    lengths = torch.tensor([9, 4, 7])
    inputs = []
    for layer in (fused, plain):
        inputs.append(x.clone().requires_grad_())
        out, (h, c) = layer(inputs[-1], lengths)
        (out.sin().sum() + h.square().sum() + c.sum()).backward()
    torch.testing.assert_close(inputs[0].grad, inputs[1].grad)
    for (n, a), b in zip(fused.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=n)


@pytest.mark.parametrize(
    "bidirectional, T, B, I, H, dtype",
    [
        (False, 20, 4, 6, 8, torch.float32),
        (True, 20, 4, 6, 8, torch.float32),
        (False, 100, 32, 88, 100, torch.float32),  # the bench's shape
        (True, 100, 32, 88, 100, torch.float64),
    ],
    ids=["uni", "bi", "uni-bench-shape", "bi-bench-shape-f64"],
)
def test_np_equals_torch_lstm(bidirectional, T, B, I, H, dtype):
    """Outputs, states and every gradient to 1e-5. Weight gradients are sums of T*B products, so in
    float32 their rounding grows with the sum (measured: 3e-5 on entries of magnitude ~50 at the
    bench's shape); they are compared relative to their largest entry. In float64 all agree to 1e-10."""
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    ref = torch.nn.LSTM(I, H, bidirectional=bidirectional).to(dtype)
    ours = VariantLSTM(preset("np"), I, H, bidirectional=bidirectional).to(dtype)
    load_torch_lstm_state_dict(ours, ref.state_dict())
    x1 = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    y1, (h1, c1) = ref(x1)
    y2, (h2, c2) = ours(x2)
    for a, b in ((y2, y1), (h2, h1), (c2, c1)):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    g = torch.randn_like(y1)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, atol=tol, rtol=tol)

    def close_to_scale(a, b):
        torch.testing.assert_close(a, b, atol=tol * max(1.0, b.abs().max().item()), rtol=tol)

    for sfx in ("", "_reverse") if bidirectional else ("",):
        for name in ("weight_ih", "weight_hh"):
            close_to_scale(getattr(ours, name + sfx).grad, getattr(ref, f"{name}_l0{sfx}").grad)
        for torch_bias in ("bias_ih_l0", "bias_hh_l0"):  # d/d(b_ih) = d/d(b_hh) = d/d(our one bias)
            close_to_scale(getattr(ours, "bias" + sfx).grad, getattr(ref, torch_bias + sfx).grad)


TORCH_REFERENCE = {
    "gru": (torch.nn.GRU, {}, VariantGRU, load_torch_gru_state_dict),
    "rnn": (torch.nn.RNN, {"nonlinearity": "tanh"}, VariantRNN, load_torch_rnn_state_dict),
    "rnn+relu": (torch.nn.RNN, {"nonlinearity": "relu"}, VariantRNN, load_torch_rnn_state_dict),
}


def our_torch_bias_grads(layer, family: str, sfx: str) -> tuple[torch.Tensor, torch.Tensor]:
    """d b_ih and d b_hh of torch's layout from our gradients (see the loaders' docstrings)."""
    g = getattr(layer, "bias" + sfx).grad
    if family == "rnn":
        return g, g
    H = layer.hidden_size
    return g, torch.cat([g[: 2 * H], getattr(layer, "bias_hn" + sfx).grad])


@pytest.mark.parametrize("name", list(TORCH_REFERENCE))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_reference_cells_equal_torch_after_loading_its_weights(name, bidirectional):
    """Two stacked layers against a 2-layer ``nn.GRU`` / ``nn.RNN``: outputs, final states and every
    gradient to 1e-5 in float32 (weight gradients relative to their largest entry, as above)."""
    torch_cls, kwargs, ours_cls, load = TORCH_REFERENCE[name]
    T, B, I, H, D, tol = 20, 4, 6, 8, 2 if bidirectional else 1, 1e-5
    ref = torch_cls(I, H, num_layers=2, bidirectional=bidirectional, **kwargs)
    ours = [ours_cls(SPECS[name], I if k == 0 else H * D, H, bidirectional) for k in range(2)]
    for k, layer in enumerate(ours):
        load(layer, ref.state_dict(), index=k)
    x1 = torch.randn(T, B, I, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    y1, h1 = ref(x1)
    mid, h2_first = ours[0](x2)
    y2, h2_second = ours[1](mid)
    torch.testing.assert_close(y2, y1, atol=tol, rtol=tol)
    torch.testing.assert_close(torch.cat([h2_first, h2_second]), h1, atol=tol, rtol=tol)  # (layers*D, B, H)
    g = torch.randn_like(y1)
    ((y1 * g).sum() + h1.sum()).backward()
    ((y2 * g).sum() + h2_first.sum() + h2_second.sum()).backward()
    torch.testing.assert_close(x2.grad, x1.grad, atol=tol, rtol=tol)

    def close_to_scale(a, b, msg):
        torch.testing.assert_close(a, b, atol=tol * max(1.0, b.abs().max().item()), rtol=tol, msg=msg)

    for k, layer in enumerate(ours):
        for sfx in ("", "_reverse") if bidirectional else ("",):
            for w in ("weight_ih", "weight_hh"):
                close_to_scale(getattr(layer, w + sfx).grad, getattr(ref, f"{w}_l{k}{sfx}").grad, f"{w}_l{k}{sfx}")
            for mine, theirs in zip(our_torch_bias_grads(layer, SPECS[name].family, sfx), ("bias_ih", "bias_hh")):
                close_to_scale(mine, getattr(ref, f"{theirs}_l{k}{sfx}").grad, f"{theirs}_l{k}{sfx}")


def test_loading_nn_gru_weights_into_the_reset_before_product_form_is_refused():
    with pytest.raises(ValueError, match="reset_before_product"):
        load_torch_gru_state_dict(VariantGRU(SPECS["gru+reset_before_product"], 3, 4), torch.nn.GRU(3, 4).state_dict())


@pytest.mark.parametrize(
    "switches, bad",
    [
        (dict(family="gru", peepholes=False), "variant.peepholes=False"),
        (dict(family="gru", full_gate_recurrence=True, forget_gate=False), "variant.forget_gate=False, variant.full_gate_recurrence=True"),
        (dict(family="rnn", block_activation="relu"), "variant.block_activation='relu'"),
        (dict(family="rnn", reset_before_product=True), "variant.reset_before_product=True"),
        (dict(rnn_activation="relu"), "variant.rnn_activation='relu'"),
    ],
    ids=["np-on-gru", "fgr+nfg-on-gru", "block-activation-on-rnn", "gru-switch-on-rnn", "rnn-switch-on-lstm"],
)
def test_another_familys_switches_are_refused_in_one_line(switches, bad):
    with pytest.raises(ValueError) as info:
        VariantSpec(**switches)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{bad} set on variant.family={switches.get('family', 'lstm')!r}")
    # ...and it says which switches apply to which family.
    assert "lstm: input_gate, forget_gate, output_gate, peepholes, coupled_input_forget, full_gate_recurrence" in message
    assert "gru: reset_before_product; rnn: rnn_activation" in message


@pytest.mark.parametrize(
    "switches, match",
    [(dict(family="lstm2"), "valid families: \\['lstm', 'gru', 'rnn', 'mingru', 'minlstm'\\]"), (dict(family="rnn", rnn_activation="sigmoid"), "tanh', 'relu")],
)
def test_unknown_family_or_rnn_activation_lists_the_valid_ones(switches, match):
    with pytest.raises(ValueError, match=match):
        VariantSpec(**switches)


def test_a_layer_refuses_another_familys_spec():
    with pytest.raises(ValueError, match="VariantGRU builds variant.family='gru', got 'lstm'"):
        VariantGRU(preset("vanilla"), 3, 4)


def test_loading_torch_weights_into_peephole_variant_is_refused():
    with pytest.raises(ValueError, match="np"):
        load_torch_lstm_state_dict(VariantLSTM(preset("vanilla"), 3, 4), torch.nn.LSTM(3, 4).state_dict())


def test_nfg_equals_vanilla_with_forget_gate_forced_to_one():
    vanilla = VariantLSTM(preset("vanilla"), 3, 5).double()
    nfg = VariantLSTM(preset("nfg"), 3, 5).double()
    H = 5
    keep = lambda w: torch.cat([w[:H], w[2 * H :]])  # noqa: E731  drop vanilla's f rows
    with torch.no_grad():
        nfg.weight_ih.copy_(keep(vanilla.weight_ih))
        nfg.weight_hh.copy_(keep(vanilla.weight_hh))
        nfg.bias.copy_(keep(vanilla.bias))
        nfg.peephole.copy_(vanilla.peephole[[0, 2]])
    x = torch.randn(8, 2, 3, dtype=torch.double)
    torch.testing.assert_close(nfg(x)[0], reference(vanilla, x, force_f=1.0))
    with torch.no_grad():  # and the same through the real vanilla layer with f saturated at 1
        vanilla.weight_ih[H : 2 * H] = 0
        vanilla.weight_hh[H : 2 * H] = 0
        vanilla.peephole[1] = 0
        vanilla.bias[H : 2 * H] = 50.0  # sigmoid(50) = 1 - 2e-22
    torch.testing.assert_close(nfg(x)[0], vanilla(x)[0])


def test_cifg_forget_gate_is_one_minus_input_gate():
    cifg = VariantLSTM(preset("cifg"), 3, 4).double()
    x = torch.randn(6, 2, 3, dtype=torch.double)
    _, C = cifg._direction(x, "")
    # Recover i from the layer's own parameters at each step and check c = z*i + c'*(1-i).
    H, y_prev, c_prev = 4, torch.zeros(2, 4, dtype=torch.double), torch.zeros(2, 4, dtype=torch.double)
    for t in range(6):
        pre = x[t] @ cifg.weight_ih.T + y_prev @ cifg.weight_hh.T + cifg.bias
        i = torch.sigmoid(pre[:, :H] + cifg.peephole[0] * c_prev)
        z = torch.tanh(pre[:, H : 2 * H])
        f = (C[t] - z * i) / c_prev if t > 0 else None
        if f is not None:
            torch.testing.assert_close(f, 1 - i)
        c_prev = C[t]
        o = torch.sigmoid(pre[:, 2 * H :] + cifg.peephole[1] * c_prev)
        y_prev = torch.tanh(c_prev) * o
    assert cifg.weight_ih.shape[0] == 3 * H  # no forget-gate weights of its own


@pytest.mark.parametrize("name", ALL)
def test_bidirectional_reverse_direction_reads_each_sequence_backwards(name):
    layer = variant_layer(preset(name), 3, 4, bidirectional=True).double()
    x = torch.randn(6, 2, 3, dtype=torch.double)
    lengths = torch.tensor([6, 4])
    result = layer(x, lengths)
    out, h = result[0], final_states(result)[0]
    for b, n in enumerate(lengths.tolist()):
        rev = x[:n, b : b + 1].flip(0)
        yr = layer._direction(rev, "_reverse")[0]
        torch.testing.assert_close(out[:n, b, 4:], yr[:, 0].flip(0))
        fw = layer._direction(x[:n, b : b + 1], "")[0]
        torch.testing.assert_close(h[0, b], fw[-1, 0])  # final forward state at the true length
        torch.testing.assert_close(h[1, b], yr[-1, 0])  # and the reverse one, after reading x_0


def test_fgr_gate_recurrence_is_zero_at_first_step_and_matters_later():
    layer = VariantLSTM(preset("fgr"), 3, 4).double()
    x = torch.randn(5, 1, 3, dtype=torch.double)
    y1 = layer(x)[0]
    with torch.no_grad():
        layer.weight_gate_hh.zero_()
    y0 = layer(x)[0]
    torch.testing.assert_close(y1[0], y0[0])  # previous gate activations are 0 at t = 0
    assert (y1[1:] - y0[1:]).abs().max() > 1e-6


@pytest.mark.parametrize(
    "switches, match",
    [
        (dict(coupled_input_forget=True, input_gate=False), "needs variant.input_gate=true"),
        (dict(coupled_input_forget=True, forget_gate=False), "contradicts"),
        (dict(input_gate=False, forget_gate=False, output_gate=False, full_gate_recurrence=True, peepholes=False), "at least one gate"),
        (dict(input_gate=False, forget_gate=False, output_gate=False), "peepholes=true needs"),
        (dict(block_activation="softsign"), "valid activations"),
    ],
)
def test_nonsense_combinations_are_refused(switches, match):
    with pytest.raises(ValueError, match=match):
        VariantSpec(**switches)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="valid variants: .*cifg.*vanilla"):
        preset("lstm2000")


@pytest.mark.parametrize(
    "spec, label",
    [
        (VariantSpec(), "vanilla"),
        (VariantSpec(peepholes=False), "np"),
        (VariantSpec(peepholes=False, coupled_input_forget=True), "np+cifg"),
        (VariantSpec(output_activation="relu"), "output_activation=relu"),
        (dataclasses.replace(preset("lstm1997"), name=None), "lstm1997"),
        (VariantSpec(family="gru"), "gru"),
        (VariantSpec(family="gru", reset_before_product=True), "gru+reset_before_product=True"),
        (VariantSpec(family="rnn", rnn_activation="relu"), "rnn+rnn_activation=relu"),
    ],
)
def test_labels(spec, label):
    assert spec.label() == label


def test_input_shape_error_names_expected_shape():
    with pytest.raises(ValueError, match=r"\(T, B, 3\)"):
        VariantLSTM(preset("vanilla"), 3, 4)(torch.randn(5, 2, 7))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_backward_rule_matches_autograd(name):
    act = ACTIVATIONS[name]
    x = (torch.linspace(-3, 3, 61, dtype=torch.double) + 0.013).requires_grad_()  # no point at relu's kink
    y = act.fn(x)
    torch.testing.assert_close(y.detach(), ACT[name](x.detach()))
    grad = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, grad)
    torch.testing.assert_close(act.backward(grad, y.detach()), expected)
    # The out= forms the fused loop uses write the same values into the given tensor.
    out = torch.full((2, 61), float("nan"), dtype=torch.double)
    assert act.fn(x.detach(), out=out[1]).data_ptr() == out[1].data_ptr()
    act.backward(grad, y.detach(), out=out[0])
    torch.testing.assert_close(out[1], y.detach())
    torch.testing.assert_close(out[0], expected)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(SPECS))
def test_cuda_matches_cpu(name):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    cpu = variant_layer(SPECS[name], 5, 6, bidirectional=True).double()
    gpu = variant_layer(SPECS[name], 5, 6, bidirectional=True).double().cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(7, 3, 5, dtype=torch.double)
    lengths = torch.tensor([7, 5, 2])
    for layer, xs in ((cpu, x), (gpu, x.cuda())):
        out, _ = layer(xs, lengths)
        out.square().sum().backward()
    torch.testing.assert_close(gpu(x.cuda(), lengths)[0].cpu(), cpu(x, lengths)[0])
    for (n, a), b in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(b.grad.cpu(), a.grad, msg=n)


def test_bench_command_prints_a_ratio_row_per_variant_and_batch(capsys):
    from odyssey.bench import main

    assert main(["cells", "--variants", "np", "fgr", "--batches", "1", "2", "--seq-len", "3", "--repeats", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("np ", "fgr "))]
    assert [(r[0], r[1], int(r[2])) for r in rows] == [("np", "cpu", 1), ("fgr", "cpu", 1), ("np", "cpu", 2), ("fgr", "cpu", 2)]
    for r in rows:  # ms/seq, nn.LSTM ms/seq, ratio, ratio vs ATen: positive and consistent
        ours, ref, ratio, aten = map(float, r[3:7])
        assert ours > 0 and ref > 0 and aten > 0
        assert ratio == pytest.approx(ours / ref, rel=0.02, abs=0.01)
        assert r[7] == "-"  # no sequential twin: the LSTMs' loop is their only form


def test_bench_times_a_scan_cell_against_nn_gru_and_its_sequential_recurrence(capsys):
    from odyssey.bench import bench_cells, format_rows

    rows = bench_cells(variants=["mingru", "indrnn"], batches=(1,), T=4, input_size=3, hidden_size=5, repeats=1)
    mingru, indrnn = rows
    assert mingru.seq_ms_per_seq > 0 and mingru.seq_ratio == pytest.approx(mingru.ms_per_seq / mingru.seq_ms_per_seq)
    assert indrnn.seq_ms_per_seq is None and indrnn.seq_ratio is None
    line = format_rows([mingru]).splitlines()[-1].split()
    assert line[0] == "mingru" and float(line[7]) == pytest.approx(mingru.seq_ratio, abs=0.01)
