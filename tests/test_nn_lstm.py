"""ApproxLSTMLM: the fast path against an independent dense masked oracle.

The oracle is ``backend="reference"`` run in float64: explicit Pattern masks, full dense
matrices and a plain per-step LSTM, sharing no code with the fast path (torch's fused
LSTM, the gates-to-states recurrence, compact_linear / tile_linear).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ardrop.nn import PatternSite
from ardrop.nn._lstm_recurrence import lstm_from_gates
from ardrop.nn.lstm import ApproxLSTMLM
from ardrop.patterns import Pattern

V = 13
# (hidden, tile): hidden 11 is ragged for every dp in 2..8 and for tile 3; hidden 8 with
# tile 2 divides evenly on W_ih but leaves a ragged decoder edge (13 rows).
SHAPES = [(11, 3), (8, 2)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    denom = b.norm().item()
    return (a - b).norm().item() / denom if denom > 0 else a.norm().item()


def _pair(kind, layers, hidden, tile, seed=0, tie=False, groups=1):
    torch.manual_seed(seed)
    fast = ApproxLSTMLM(V, hidden, layers, kind=kind, rates=0.5, tile=tile, tie_weights=tie, groups=groups)
    ref = ApproxLSTMLM(V, hidden, layers, kind=kind, rates=0.5, tile=tile, tie_weights=tie, backend="reference",
                       groups=groups)
    ref.load_state_dict(fast.state_dict())
    return fast, ref.double()


def _set(model, patterns):
    for site, p in zip(model.sites, patterns):
        site.set_pattern(p)


def _run(model, tokens, seed):
    """Forward + backward of a loss touching logits and both states; returns values and grads."""
    dtype = next(model.parameters()).dtype
    g = torch.Generator().manual_seed(seed)
    layers, batch, hidden = model.num_layers, tokens.shape[1], model.hidden_size
    h0 = (torch.randn(layers, batch, hidden, generator=g) * 0.5).to(dtype).requires_grad_()
    c0 = (torch.randn(layers, batch, hidden, generator=g) * 0.5).to(dtype).requires_grad_()
    model.zero_grad(set_to_none=True)
    logits, (h, c) = model(tokens, (h0, c0))
    weights = [torch.randn(t.shape, generator=g).to(dtype) for t in (logits, h, c)]
    loss = sum((t * w).sum() for t, w in zip((logits, h, c), weights))
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    grads["h0"], grads["c0"] = h0.grad, c0.grad
    return {"logits": logits, "h": h, "c": c}, grads


def _compare(fast, ref, tokens, seed):
    out_f, grad_f = _run(fast, tokens, seed)
    out_r, grad_r = _run(ref, tokens, seed)
    for name in out_r:
        assert _rel(out_f[name], out_r[name]) < 1e-5, name
    assert grad_f.keys() == grad_r.keys()
    for name in grad_r:
        assert grad_f[name] is not None, name
        assert _rel(grad_f[name], grad_r[name]) < 1e-5, name


@pytest.mark.parametrize("hidden,tile", SHAPES)
@pytest.mark.parametrize("layers", [2, 3])
@pytest.mark.parametrize("kind", ["row", "tile"])
@pytest.mark.parametrize("dp", range(1, 9))
@pytest.mark.parametrize("groups", [1, "dp"])
def test_fast_matches_reference_every_dp_and_offset(kind, layers, hidden, tile, dp, groups):
    fast, ref = _pair(kind, layers, hidden, tile, seed=dp, groups=groups)
    g = torch.Generator().manual_seed(100 * dp + layers)
    steps, batch = int(torch.randint(2, 6, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g))
    tokens = torch.randint(0, V, (steps, batch), generator=g)
    for offset in range(dp):
        # every site sees every offset over the loop, and neighbouring sites differ
        patterns = [Pattern(kind, dp, (offset + s) % dp, tile) for s in range(layers + 1)]
        _set(fast, patterns)
        _set(ref, patterns)
        _compare(fast, ref, tokens, seed=offset)


@pytest.mark.parametrize("kind", ["row", "tile"])
@pytest.mark.parametrize("groups", [1, 2, "dp"])
def test_mixed_dps_per_site_and_tied_weights(kind, groups):
    hidden, tile = 11, 3
    for tie in (False, True):
        fast, ref = _pair(kind, 3, hidden, tile, seed=7, tie=tie, groups=groups)
        patterns = [Pattern(kind, dp, off, tile) for dp, off in ((3, 2), (1, 0), (5, 1), (2, 1))]
        _set(fast, patterns)
        _set(ref, patterns)
        tokens = torch.randint(0, V, (5, 2), generator=torch.Generator().manual_seed(3))
        _compare(fast, ref, tokens, seed=11)
        assert (fast.decoder.weight is fast.encoder.weight) == tie


def _dropped_inputs_mask(pattern: Pattern, weight: torch.Tensor) -> torch.Tensor:
    """True where the weight element may not be touched by this step."""
    if pattern.kind == "row":
        return ~pattern.row_mask(weight.shape[1]).expand_as(weight)
    return ~pattern.tile_mask(*weight.shape)


@pytest.mark.parametrize("kind", ["row", "tile"])
def test_dropped_weights_get_exactly_zero_grad(kind):
    fast, _ = _pair(kind, 2, 11, 3, seed=1)
    patterns = [Pattern(kind, 3, s % 3, 3) for s in range(3)]
    _set(fast, patterns)
    tokens = torch.randint(0, V, (4, 3), generator=torch.Generator().manual_seed(0))
    _run(fast, tokens, seed=0)
    consumers = [layer.weight_ih for layer in fast.layers] + [fast.decoder.weight]
    for pattern, weight in zip(patterns, consumers):
        dropped = _dropped_inputs_mask(pattern, weight)
        assert dropped.any() and (~dropped).any()
        assert torch.equal(weight.grad[dropped], torch.zeros_like(weight.grad[dropped]))
        assert (weight.grad[~dropped] != 0).any()
    for layer in fast.layers:  # the recurrence is never dropped
        assert (layer.weight_hh.grad != 0).all()


@pytest.mark.parametrize("kind", ["row", "tile"])
@pytest.mark.parametrize("groups", [1, "dp"])
def test_matches_an_independent_dense_lstm_with_explicit_masks(kind, groups):
    """Outputs and every gradient against a per-time-step LSTM written here from the
    equations, with the masks built here: it shares no code with the model's `_layer`,
    `_decode` or group code. groups=1: every time step uses the step's offset; groups="dp":
    time step t uses offset (offset + t mod dp) mod dp."""
    torch.manual_seed(4)
    hidden, tile, steps = 10, 2, 7
    site_patterns = [(3, 2), (2, 1), (3, 0)]  # distinct per site: a site wired to the wrong layer shows
    model = ApproxLSTMLM(V, hidden, 2, kind=kind, rates=0.5, tile=tile, groups=groups).double()
    _set(model, [Pattern(kind, dp, off, tile) for dp, off in site_patterns])
    tokens = torch.randint(0, V, (steps, 2))
    logits, _ = model(tokens)
    weight = torch.linspace(-1, 1, V, dtype=torch.double)
    (logits * weight).sum().backward()

    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    x = params["encoder.weight"][tokens]
    h = [torch.zeros(2, hidden, dtype=torch.double) for _ in range(2)]
    c = [torch.zeros(2, hidden, dtype=torch.double) for _ in range(2)]
    expected = []
    for t in range(steps):
        v = x[t]
        for k in range(3):
            dp, off = site_patterns[k]
            o = (off + t) % dp if groups == "dp" else off
            w = params[f"layers.{k}.weight_ih"] if k < 2 else params["decoder.weight"]
            if kind == "row":
                keep = torch.tensor([j % dp == o for j in range(hidden)], dtype=torch.double)
                proj = (v * keep * (hidden / keep.sum())) @ w.t()
            else:
                keep = torch.tensor([[((i // tile) + (j // tile)) % dp == o for j in range(w.shape[1])]
                                     for i in range(w.shape[0])], dtype=torch.double)
                proj = v @ (w * keep * (keep.numel() / keep.sum())).t()
            if k == 2:
                expected.append(proj + params["decoder.bias"])
                break
            z = proj + params[f"layers.{k}.bias_ih"] + h[k] @ params[f"layers.{k}.weight_hh"].t() \
                + params[f"layers.{k}.bias_hh"]
            i, f, g, o_ = z.chunk(4, 1)
            c[k] = torch.sigmoid(f) * c[k] + torch.sigmoid(i) * torch.tanh(g)
            h[k] = torch.sigmoid(o_) * torch.tanh(c[k])
            v = h[k]
    expected = torch.stack(expected)
    (expected * weight).sum().backward()
    assert _rel(logits.detach(), expected.detach()) < 1e-12
    for n, p in model.named_parameters():
        assert _rel(p.grad, params[n].grad) < 1e-10, n
    assert names  # (every parameter above was compared)


def _dense_torch_lm(model: ApproxLSTMLM):
    """Independent dense model built from torch.nn with the same parameters."""
    lstm = nn.LSTM(model.hidden_size, model.hidden_size, model.num_layers)
    with torch.no_grad():
        for k, layer in enumerate(model.layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(lstm, f"{name}_l{k}").copy_(getattr(layer, name))
    return lstm


@pytest.mark.parametrize("kind", ["row", "tile", "bernoulli", "none"])
def test_eval_is_dense_without_mask_or_scale(kind):
    torch.manual_seed(0)
    model = ApproxLSTMLM(V, 9, 2, kind=kind, rates=0.5, tile=2)
    if kind in ("row", "tile"):
        _set(model, [Pattern(kind, 3, 1, 2)] * 3)
    model.eval()
    tokens = torch.randint(0, V, (6, 2))
    lstm = _dense_torch_lm(model)
    with torch.no_grad():
        logits, (h, c) = model(tokens)
        out, (h_ref, c_ref) = lstm(model.encoder(tokens))
        logits_ref = model.decoder(out)
    assert _rel(logits, logits_ref) < 1e-6 and _rel(h, h_ref) < 1e-6 and _rel(c, c_ref) < 1e-6
    model.train()
    if kind in ("row", "tile"):  # training really does drop: the outputs change
        assert not torch.allclose(model(tokens)[0], logits)


def test_training_without_pattern_is_an_error():
    model = ApproxLSTMLM(V, 8, 2, kind="row")
    with pytest.raises(RuntimeError, match="set_pattern"):
        model(torch.zeros(3, 2, dtype=torch.long))


def test_bernoulli_matches_reference_with_same_rng():
    fast, ref = _pair("bernoulli", 2, 10, 2, seed=0)
    ref.float()
    tokens = torch.randint(0, V, (5, 3))
    torch.manual_seed(42)
    out_f = fast(tokens)[0]
    torch.manual_seed(42)
    out_r = ref(tokens)[0]
    assert _rel(out_f, out_r) < 1e-5
    torch.manual_seed(43)
    assert not torch.allclose(fast(tokens)[0], out_f)  # a different draw drops differently


def test_state_carries_across_calls():
    torch.manual_seed(0)
    model = ApproxLSTMLM(V, 7, 3, kind="none")
    tokens = torch.randint(0, V, (6, 2))
    full, (h, c) = model(tokens)
    first, state = model(tokens[:4])
    second, (h2, c2) = model(tokens[4:], state)
    assert _rel(torch.cat([first, second]), full) < 1e-6
    assert _rel(h2, h) < 1e-6 and _rel(c2, c) < 1e-6


@pytest.mark.parametrize("kind", ["row", "tile"])
def test_gradcheck_float64(kind):
    torch.manual_seed(0)
    model = ApproxLSTMLM(5, 4, 2, kind=kind, tile=2).double()
    _set(model, [Pattern(kind, dp, off, 2) for dp, off in ((2, 1), (3, 0), (2, 0))])
    tokens = torch.randint(0, 5, (3, 2))
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in model.named_parameters())
    h0 = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)

    def f(h0, *ps):
        logits, (h, c) = torch.func.functional_call(model, dict(zip(names, ps)), (tokens, (h0, torch.zeros_like(h0))))
        return logits, h, c

    assert torch.autograd.gradcheck(f, (h0, *params))


def test_gradcheck_recurrence_from_gates():
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(s, generator=g, dtype=torch.float64) for s in ((4, 2, 12), (2, 3), (2, 3), (12, 3), (12,))]
    args = [a.requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lstm_from_gates, args)


def test_sites_are_named_in_data_flow_order_with_shape_limits():
    model = ApproxLSTMLM(50, 40, 3, kind="tile", tile=8)
    sites = [(n, m) for n, m in model.named_modules() if isinstance(m, PatternSite)]
    assert [n for n, _ in sites] == ["sites.0", "sites.1", "sites.2", "sites.3"]
    assert [m.max_dp for _, m in sites] == [Pattern.max_tile_dp(160, 40, 8)] * 3 + [Pattern.max_tile_dp(50, 40, 8)]
    row = ApproxLSTMLM(50, 40, 2, kind="row", rates=[0.3, 0.5, 0.7])
    assert [s.max_dp for s in row.sites] == [40, 40, 40]
    assert [s.rate for s in row.sites] == [0.3, 0.5, 0.7]
    assert [s.rate for s in ApproxLSTMLM(50, 40, 2, rates=np.array([0.1, 0.2, 0.3])).sites] == [0.1, 0.2, 0.3]


def test_bad_input_raises_clear_value_errors():
    model = ApproxLSTMLM(V, 8, 2, kind="row")
    _set(model, [Pattern("row", 2, 0)] * 3)
    with pytest.raises(ValueError, match=r"shape \[T, B\]"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \[T, B\]"):
        model(torch.zeros(4, 2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="dtype"):
        model(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="LongTensor"):
        model([[1, 2]])
    with pytest.raises(ValueError, match=r"0\.\.12"):
        model(torch.full((3, 2), V, dtype=torch.long))
    with pytest.raises(ValueError, match="state h"):
        model(torch.zeros(3, 2, dtype=torch.long), (torch.zeros(2, 3, 8), torch.zeros(2, 3, 8)))
    with pytest.raises(ValueError, match="4 dropout sites"):
        ApproxLSTMLM(V, 8, 3, rates=[0.5, 0.5])
    with pytest.raises(ValueError, match="rate"):
        ApproxLSTMLM(V, 8, 2, rates=1.0)
    with pytest.raises(ValueError, match="sequence of numbers, one for each of the 3 dropout sites"):
        ApproxLSTMLM(V, 8, 2, rates="0.5")
    with pytest.raises(ValueError, match="backend"):
        ApproxLSTMLM(V, 8, 2, backend="cuda")
    with pytest.raises(ValueError, match="kind"):
        ApproxLSTMLM(V, 8, 2, kind="gaussian")
    with pytest.raises(ValueError, match="largest usable dp 8"):
        model.sites[0].set_pattern(Pattern("row", 9, 0))
    tiled = ApproxLSTMLM(V, 8, 2, kind="tile", tile=4)
    limit = Pattern.max_tile_dp(V, 8, 4)
    with pytest.raises(ValueError, match=f"largest usable dp {limit}"):
        tiled.sites[2].set_pattern(Pattern("tile", limit + 1, 0, 4))


@pytest.mark.parametrize("onednn", [True, False])
def test_recurrence_from_gates_fp32_matches_float64_oracle(onednn, monkeypatch):
    """The per-step GEMMs on oneDNN's packed W_hh (and the plain fallback) against the float64 loop."""
    from ardrop.nn import _lstm_recurrence as rec

    if onednn and not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    if not onednn:
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert (rec._SkinnyMatmul(torch.randn(8, 4), 3).packed is not None) == onednn
    g = torch.Generator().manual_seed(1)
    steps, batch, hid = 9, 5, 48
    args = [torch.randn(s, generator=g) * 0.5 for s in ((steps, batch, 4 * hid), (batch, hid), (batch, hid),
                                                           (4 * hid, hid), (4 * hid,))]
    fast = [a.clone().requires_grad_() for a in args]
    ref = [a.double().requires_grad_() for a in args]
    out_f = lstm_from_gates(*fast)
    out_r = rec.lstm_gates_reference(*ref)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in out_r]
    sum((o.double() * w).sum() for o, w in zip(out_f, weights)).backward()
    sum((o * w).sum() for o, w in zip(out_r, weights)).backward()
    for a, b in zip(out_f, out_r):
        assert _rel(a, b) < 1e-5
    for a, b in zip(fast, ref):
        assert _rel(a.grad, b.grad) < 1e-5
