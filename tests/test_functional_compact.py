import pytest
import torch

from ardrop.functional import compact_linear, compact_linear_reference, row_mask
from tests._linear_cases import grads, rel_err

# (batch, out_features, in_features): ragged widths (not multiples of any dp) included.
SHAPES = [(4, 16, 24), (3, 13, 11), (5, 9, 17)]


def _leaves(b, out_f, in_f, in_dp, in_off, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_in = len(range(in_off, in_f, in_dp))
    x = torch.randn(b, n_in, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(out_f, in_f, generator=g, dtype=dtype, requires_grad=True)
    bias = torch.randn(out_f, generator=g, dtype=dtype, requires_grad=True)
    return x, w, bias


def _check(shape, out_dp, out_off, in_dp, in_off, relu, in_scale=1.0, out_scale=1.0):
    b, out_f, in_f = shape
    x, w, bias = _leaves(*shape, in_dp, in_off, seed=out_dp * 100 + out_off * 10 + in_dp)
    args = (out_dp, out_off, in_dp, in_off, in_scale, out_scale, relu)
    y = compact_linear(x, w, bias, *args)
    gx, gw, gb = grads(y, (x, w, bias))
    # independent oracle: dense, explicit masks, autograd, float64 on the same values
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, bias))
    yr = compact_linear_reference(x64, w64, b64, *args)
    rx, rw, rb = grads(yr.float(), (x64, w64, b64))
    assert y.shape == yr.shape == (b, len(range(out_off, out_f, out_dp)))
    for got, ref in ((y, yr), (gx, rx), (gw, rw), (gb, rb)):
        assert rel_err(got, ref) < 1e-5
    kept = row_mask(out_f, out_dp, out_off)[:, None] & row_mask(in_f, in_dp, in_off)[None, :]
    assert (gw[~kept] == 0).all() and (gb[~row_mask(out_f, out_dp, out_off)] == 0).all()
    assert gw.shape == w.shape and gb.shape == bias.shape


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("out_dp", range(1, 9))
def test_matches_reference_every_out_pattern(shape, out_dp):
    for out_off in range(out_dp):
        for in_dp, in_off in ((1, 0), (out_dp, out_off), (3, (out_off + 1) % 3)):
            _check(shape, out_dp, out_off, in_dp, in_off, relu=bool(out_off % 2), out_scale=out_dp / 1.5)


@pytest.mark.parametrize("in_dp", range(1, 9))
def test_matches_reference_every_in_pattern(in_dp):
    for in_off in range(in_dp):
        _check((4, 13, 17), 2, 1, in_dp, in_off, relu=True, in_scale=1.7)


def test_leading_dims_flattened():
    x, w, bias = _leaves(6, 10, 12, 2, 1)
    x3 = x.detach().reshape(2, 3, -1)
    y = compact_linear(x3, w, bias, 3, 2, 2, 1)
    assert y.shape == (2, 3, 3)
    torch.testing.assert_close(y.reshape(6, -1), compact_linear(x.detach(), w, bias, 3, 2, 2, 1))


def test_no_bias_and_no_input_grad():
    x, w, _ = _leaves(4, 11, 9, 1, 0)
    x = x.detach()
    y = compact_linear(x, w, None, 4, 3, relu=True, out_scale=4.0)
    (gw,) = grads(y, (w,))
    (rw,) = grads(compact_linear_reference(x, w, None, 4, 3, relu=True, out_scale=4.0), (w,))
    assert rel_err(gw, rw) < 1e-5


@pytest.mark.parametrize("cfg", [(1, 0, 1, 0, False), (3, 1, 2, 0, True), (4, 3, 3, 2, False), (2, 0, 5, 4, True)])
def test_gradcheck_float64(cfg):
    out_dp, out_off, in_dp, in_off, relu = cfg
    x, w, bias = _leaves(3, 9, 11, in_dp, in_off, dtype=torch.float64, seed=7)
    fn = lambda x, w, b: compact_linear(x, w, b, out_dp, out_off, in_dp, in_off, 1.3, 2.5, relu)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, bias))


def test_dropped_weights_never_read():
    """Poisoning the dropped part of W must not change anything: it is really skipped."""
    x, w, bias = _leaves(4, 12, 10, 2, 1)
    y = compact_linear(x, w, bias, 3, 1, 2, 1)
    poisoned = w.detach().clone()
    keep = row_mask(12, 3, 1)[:, None] & row_mask(10, 2, 1)[None, :]
    poisoned[~keep] = float("nan")
    assert torch.equal(compact_linear(x.detach(), poisoned, bias.detach(), 3, 1, 2, 1), y.detach())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=(4, 9)), "expects 5"),
        (dict(out_dp=13), "exceeds the 12 units"),
        (dict(out_dp=3, out_offset=3), "offset"),
        (dict(in_dp=0), "dp must be"),
        (dict(out_scale=0.0), "positive"),
        (dict(in_scale=float("nan")), "positive"),
        (dict(bias=(11,)), "bias must have shape"),
        (dict(x_dtype=torch.float64), "dtype"),
        (dict(backend="cuda"), "backend"),
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    w = torch.randn(12, 10)
    bias = torch.randn(*kwargs.pop("bias", (12,)))
    x = torch.randn(*kwargs.pop("x", (4, 5)), dtype=kwargs.pop("x_dtype", torch.float32))
    call = dict(out_dp=2, out_offset=0, in_dp=2, in_offset=1)
    call.update(kwargs)
    with pytest.raises(ValueError, match=match):
        compact_linear(x, w, bias, **call)


@pytest.mark.parametrize("out_dp, out_off", [(3, 0), (3, 2), (4, 1), (5, 4)])
def test_uninitialised_gradient_memory_is_fully_overwritten(monkeypatch, out_dp, out_off):
    """The weight gradient starts from empty memory; poison it to prove every byte is written."""
    real = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda t, **kw: real(t, **kw).fill_(float("nan")))
    x, w, bias = _leaves(4, 13, 11, 1, 0)
    (gw,) = grads(compact_linear(x.detach(), w, bias, out_dp, out_off, relu=True), (w,))
    kept = row_mask(13, out_dp, out_off)
    assert torch.isfinite(gw).all() and (gw[~kept] == 0).all()
