import pytest
import torch

from ardrop.functional import tile_linear, tile_linear_reference
from ardrop.patterns import Pattern
from tests._linear_cases import grads, rel_err

# (batch, out_features, in_features, tile): divisible and ragged edge tiles, both dims.
SHAPES = [(4, 16, 24, 4), (3, 13, 11, 3), (5, 20, 14, 4), (2, 7, 30, 5), (3, 40, 9, 8)]


def _leaves(b, out_f, in_f, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, in_f, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(out_f, in_f, generator=g, dtype=dtype, requires_grad=True)
    bias = torch.randn(out_f, generator=g, dtype=dtype, requires_grad=True)
    return x, w, bias


def _check(shape, dp, offset, relu):
    b, out_f, in_f, t = shape
    x, w, bias = _leaves(b, out_f, in_f, seed=dp * 10 + offset)
    y = tile_linear(x, w, bias, dp, offset, t, None, relu)
    gx, gw, gb = grads(y, (x, w, bias))
    x64, w64, b64 = (v.detach().double().requires_grad_() for v in (x, w, bias))
    yr = tile_linear_reference(x64, w64, b64, dp, offset, t, None, relu)
    rx, rw, rb = grads(yr.float(), (x64, w64, b64))
    for got, ref in ((y, yr), (gx, rx), (gw, rw), (gb, rb)):
        assert rel_err(got, ref) < 1e-5
    mask = Pattern("tile", dp, offset, t).tile_mask(out_f, in_f)
    assert (gw[~mask] == 0).all()
    assert gw.shape == w.shape


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dp", range(1, 9))
def test_matches_reference_every_pattern(shape, dp):
    b, out_f, in_f, t = shape
    if dp > Pattern.max_tile_dp(out_f, in_f, t):
        pytest.skip("dp exceeds the number of tile diagonals of this shape")
    for offset in range(dp):
        _check(shape, dp, offset, relu=bool(offset % 2))


def test_rows_without_kept_tiles_get_bias_only():
    """A 1-tile-column weight with dp=3: some tile-rows meet no kept tile at all."""
    x, w, bias = _leaves(3, 12, 4)
    y = tile_linear(x, w, bias, 3, 0, 4)
    torch.testing.assert_close(y[:, 4:], bias[4:].expand(3, -1).detach(), rtol=0, atol=0)
    gx, gw, gb = grads(y, (x, w, bias))
    rx, rw, rb = grads(tile_linear_reference(x, w, bias, 3, 0, 4), (x, w, bias))
    for got, ref in ((gx, rx), (gw, rw), (gb, rb)):
        assert rel_err(got, ref) < 1e-6


@pytest.mark.parametrize("cfg", [(1, 0, False), (2, 1, True), (3, 2, False), (5, 0, True)])
def test_gradcheck_float64(cfg):
    dp, offset, relu = cfg
    x, w, bias = _leaves(3, 10, 9, dtype=torch.float64, seed=3)
    fn = lambda x, w, b: tile_linear(x, w, b, dp, offset, 3, None, relu)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, bias))


def test_no_bias_no_input_grad_and_dropped_tiles_never_read():
    x, w, _ = _leaves(4, 17, 13)
    x = x.detach()
    y = tile_linear(x, w, None, 3, 1, 4)
    (gw,) = grads(y, (w,))
    (rw,) = grads(tile_linear_reference(x, w, None, 3, 1, 4), (w,))
    assert rel_err(gw, rw) < 1e-5
    poisoned = w.detach().clone()
    poisoned[~Pattern("tile", 3, 1, 4).tile_mask(17, 13)] = float("nan")
    assert torch.equal(tile_linear(x, poisoned, None, 3, 1, 4), y.detach())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=(4, 9)), "expects in_features=10"),
        (dict(dp=6), "exceeds 5"),
        (dict(dp=2, offset=2), "offset"),
        (dict(tile=0), "tile size"),
        (dict(scale=-1.0), "positive"),
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    w = torch.randn(12, 10)
    x = torch.randn(*kwargs.pop("x", (4, 10)))
    call = dict(dp=2, offset=0, tile=4)
    call.update(kwargs)
    with pytest.raises(ValueError, match=match):
        tile_linear(x, w, None, **call)
