import pytest
import torch
import torch.nn.functional as F

from ardrop.nn import ApproxLinear
from ardrop.patterns import Pattern
from tests._linear_cases import grads, rel_err


def _pair(kind, relu, out_f=13, in_f=11, tile=4):
    torch.manual_seed(0)
    fast = ApproxLinear(in_f, out_f, kind=kind, rate=0.5, tile=tile, relu=relu, groups=1)
    ref = ApproxLinear(in_f, out_f, kind=kind, rate=0.5, tile=tile, relu=relu, backend="reference", groups=1).double()
    ref.load_state_dict({k: v.double() for k, v in fast.state_dict().items()})
    return fast, ref


@pytest.mark.parametrize("kind", ["row", "tile"])
@pytest.mark.parametrize("dp", range(1, 9))
def test_fast_matches_reference(kind, dp):
    fast, ref = _pair(kind, relu=dp % 2 == 0)
    if dp > fast.site.max_dp:
        pytest.skip("dp beyond this shape")
    x = torch.randn(5, 11, requires_grad=True)
    x64 = x.detach().double().requires_grad_()
    for offset in range(dp):
        for m in (fast, ref):
            m.site.set_pattern(Pattern(kind, dp, offset, 4))
        y, yr = fast(x), ref(x64)
        assert rel_err(y, yr) < 1e-5
        got = grads(y, (x, fast.weight, fast.bias))
        want = grads(yr, (x64, ref.weight, ref.bias))
        for g, r in zip(got, want):
            assert rel_err(g, r) < 1e-5
        if kind == "row" and dp > 1:
            dropped = ~Pattern("row", dp, offset).row_mask(13)
            assert (y[:, dropped] == 0).all()
            assert (got[1][dropped] == 0).all() and (got[2][dropped] == 0).all()


@pytest.mark.parametrize("kind", ["row", "tile", "bernoulli", "none"])
def test_eval_is_dense_without_scaling(kind):
    m = ApproxLinear(11, 13, kind=kind, rate=0.5, tile=4, relu=True).eval()
    if m.site.structured:
        m.site.set_pattern(Pattern(kind, 3, 1, 4))
    x = torch.randn(4, 11)
    torch.testing.assert_close(m(x), torch.relu(F.linear(x, m.weight, m.bias)))


def test_bernoulli_and_none_in_training():
    torch.manual_seed(1)
    m = ApproxLinear(50, 400, kind="bernoulli", rate=0.5)
    y = m(torch.randn(8, 50))
    frac = (y == 0).float().mean().item()
    assert 0.4 < frac < 0.6
    n = ApproxLinear(5, 6, kind="none")
    x = torch.randn(2, 5)
    torch.testing.assert_close(n(x), F.linear(x, n.weight, n.bias))


def test_bernoulli_step_seed_makes_masks_a_function_of_the_seed():
    """Same step seed: the same mask whatever the global RNG did; another seed: another mask."""
    m = ApproxLinear(30, 200, kind="bernoulli", rate=0.3)
    x = torch.randn(16, 30)
    dense = F.linear(x, m.weight, m.bias)
    outs = []
    for seed, global_seed in ((5, 0), (5, 123), (6, 0)):
        torch.manual_seed(global_seed)
        m.site.set_step_seed(seed)
        outs.append(m(x))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    kept = outs[0] != 0
    assert 0.62 < kept.float().mean().item() < 0.78  # keep probability 0.7
    torch.testing.assert_close(outs[0][kept], dense[kept] / 0.7)  # inverted-dropout scaling
    m.eval()
    torch.testing.assert_close(m(x), dense)  # evaluation ignores the seed: dense, unscaled
    with pytest.raises(ValueError, match="step seed"):
        m.site.set_step_seed(-1)


def test_training_without_pattern_raises():
    m = ApproxLinear(5, 6, kind="row")
    with pytest.raises(RuntimeError, match="no pattern"):
        m(torch.randn(2, 5))


def test_bad_inputs_raise_value_error():
    m = ApproxLinear(5, 6, kind="row")
    m.site.set_pattern(Pattern("row", 2, 0))
    with pytest.raises(ValueError, match="expects inputs with 5 features"):
        m(torch.randn(2, 7))
    with pytest.raises(ValueError, match="exceeds"):
        m.site.set_pattern(Pattern("row", 7, 0))
    t = ApproxLinear(10, 12, kind="tile", tile=4)
    with pytest.raises(ValueError, match="exceeds"):
        t.site.set_pattern(Pattern("tile", t.site.max_dp + 1, 0, 4))
    with pytest.raises(ValueError, match="backend"):
        ApproxLinear(5, 6, backend="dense")
    with pytest.raises(ValueError, match="kind"):
        ApproxLinear(5, 6, kind="gaussian")
    with pytest.raises(ValueError, match="in_features"):
        ApproxLinear(0, 6)


def test_site_limits():
    assert ApproxLinear(10, 12, kind="row").site.max_dp == 12
    assert ApproxLinear(10, 12, kind="tile", tile=4).site.max_dp == Pattern.max_tile_dp(12, 10, 4)
