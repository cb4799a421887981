import itertools

import pytest
import torch

from ardrop.nn import ApproxMLP, PatternSite
from ardrop.patterns import Pattern
from tests._linear_cases import rel_err

SIZES = (20, 19, 13, 5)  # ragged hidden widths


def _pair(kind, sizes=SIZES, tile=4):
    torch.manual_seed(0)
    fast = ApproxMLP(sizes, kind=kind, rates=0.5, tile=tile, groups=1)
    ref = ApproxMLP(sizes, kind=kind, rates=0.5, tile=tile, backend="reference", groups=1).double()
    ref.load_state_dict({k: v.double() for k, v in fast.state_dict().items()})
    return fast, ref


def _compare(fast, ref, patterns):
    for m in (fast, ref):
        for layer, p in zip(m.hidden, patterns):
            layer.site.set_pattern(p)
    x = torch.randn(6, SIZES[0], requires_grad=True)
    x64 = x.detach().double().requires_grad_()
    y, yr = fast(x), ref(x64)
    assert rel_err(y, yr) < 1e-5
    g = torch.randn(y.shape)
    y.backward(g)
    yr.backward(g.double())
    assert rel_err(x.grad, x64.grad) < 1e-5
    for (name, p), (_, pr) in zip(fast.named_parameters(), ref.named_parameters()):
        assert rel_err(p.grad, pr.grad) < 1e-5, name
    return fast


@pytest.mark.parametrize("dp1", range(1, 9))
def test_compact_chained_row_mlp_matches_reference(dp1):
    fast, ref = _pair("row")
    for off1 in range(dp1):
        for dp2 in (1, 2, 3, 8):
            off2 = (off1 + dp1) % dp2
            fast.zero_grad(), ref.zero_grad()
            _compare(fast, ref, [Pattern("row", dp1, off1), Pattern("row", dp2, off2)])
            w2 = fast.hidden[1].weight.grad
            keep = Pattern("row", dp2, off2).row_mask(13)[:, None] & Pattern("row", dp1, off1).row_mask(19)[None, :]
            assert (w2[~keep] == 0).all()
            assert (fast.head.weight.grad[:, ~Pattern("row", dp2, off2).row_mask(13)] == 0).all()


@pytest.mark.parametrize("dp", range(1, 9))
def test_tile_mlp_matches_reference(dp):
    fast, ref = _pair("tile")
    for off in range(dp):
        fast.zero_grad(), ref.zero_grad()
        second = Pattern("tile", max(1, dp - 2), off % max(1, dp - 2), 4)
        _compare(fast, ref, [Pattern("tile", dp, off, 4), second])


@pytest.mark.parametrize("kind", ["row", "tile", "bernoulli", "none"])
def test_eval_is_plain_dense_mlp(kind):
    m = ApproxMLP(SIZES, kind=kind, rates=(0.3, 0.6), tile=4).eval()
    x = torch.randn(3, 20)
    h = x
    for layer in m.hidden:
        h = torch.relu(h @ layer.weight.T + layer.bias)
    torch.testing.assert_close(m(x), m.head(h))
    assert m(x.reshape(3, 1, 4, 5)).shape == (3, 5)  # images are flattened


def test_sites_in_order_with_rates_and_limits():
    m = ApproxMLP((784, 64, 32, 10), kind="row", rates=(0.3, 0.7))
    sites = [(n, s) for n, s in m.named_modules() if isinstance(s, PatternSite)]
    assert [n for n, _ in sites] == ["hidden.0.site", "hidden.1.site"]
    assert [s.rate for _, s in sites] == [0.3, 0.7]
    assert [s.max_dp for _, s in sites] == [64, 32]
    t = ApproxMLP((784, 64, 32, 10), kind="tile", tile=32)
    assert [l.site.max_dp for l in t.hidden] == [Pattern.max_tile_dp(64, 784), Pattern.max_tile_dp(32, 64)]


def test_bad_configuration_raises_value_error():
    with pytest.raises(ValueError, match="dropout sites"):
        ApproxMLP(SIZES, rates=(0.5,))
    with pytest.raises(ValueError, match="rate"):
        ApproxMLP(SIZES, rates=1.0)
    with pytest.raises(ValueError, match="sizes"):
        ApproxMLP((784,))
    m = ApproxMLP(SIZES, kind="row")
    for layer in m.hidden:
        layer.site.set_pattern(Pattern("row", 2, 1))
    with pytest.raises(ValueError, match="expects inputs with 20 features"):
        m(torch.randn(2, 21))


def test_row_training_steps_skip_and_learn():
    """A few SGD steps through the compact chain reduce the loss (gradients reach .grad)."""
    torch.manual_seed(0)
    m = ApproxMLP((20, 32, 32, 3), kind="row")
    x, t = torch.randn(64, 20), torch.randint(0, 3, (64,))
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for step, (d1, d2) in zip(range(40), itertools.cycle([(2, 3), (1, 2), (3, 1)])):
        for layer, d in zip(m.hidden, (d1, d2)):
            layer.site.set_pattern(Pattern("row", d, step % d))
        loss = torch.nn.functional.cross_entropy(m(x), t)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])


@pytest.fixture
def poisoned_empty(monkeypatch):
    """``new_empty`` returns NaNs: an element an op leaves unwritten (and forgot to zero) shows up."""
    full = torch.Tensor.new_full

    def new_empty(self, *size, **kw):
        shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        return full(self, tuple(shape), float("nan"), **kw)

    monkeypatch.setattr(torch.Tensor, "new_empty", new_empty)


@pytest.mark.parametrize("kind", ["row", "tile"])
@pytest.mark.parametrize("pats", [((3, 1), (5, 2)), ((2, 0), (1, 0)), ((4, 3), (2, 1)), ((1, 0), (3, 2))])
def test_grouped_mlp_matches_per_sample_reference(kind, pats, poisoned_empty):
    """groups="dp": sample b uses offset (offset + b mod G) mod dp; forward and gradients
    equal dense layers with those explicit masks, in float64."""
    torch.manual_seed(0)
    sizes = (30, 40, 24, 5)
    fast = ApproxMLP(sizes, kind=kind, tile=4, groups="dp").double()
    x = torch.randn(13, 30, dtype=torch.double)
    for layer, (dp, off) in zip(fast.hidden, pats):
        layer.site.set_pattern(Pattern(kind, dp, off, 4))
    y = fast(x)
    (y * torch.arange(5.0, dtype=torch.double)).sum().backward()
    count = max(dp for dp, _ in pats) if kind == "row" else None
    params = [p.detach().clone().requires_grad_() for p in fast.parameters()]
    w1, b1, w2, b2, w3, b3 = params
    h = x
    for (w, b), (dp, off) in zip(((w1, b1), (w2, b2)), pats):
        rows = []
        for s in range(h.shape[0]):
            g = s % (count if kind == "row" else dp)
            o = (off + g) % dp
            if kind == "row":
                keep = torch.tensor([j % dp == o for j in range(w.shape[0])], dtype=torch.double)
                rows.append(torch.relu(h[s] @ w.t() + b) * keep * (w.shape[0] / keep.sum()))
            else:
                keep = torch.tensor([[((i // 4) + (j // 4)) % dp == o for j in range(w.shape[1])]
                                     for i in range(w.shape[0])], dtype=torch.double)
                rows.append(torch.relu(h[s] @ (w * keep * (keep.numel() / keep.sum())).t() + b))
        h = torch.stack(rows)
    yr = h @ w3.t() + b3
    (yr * torch.arange(5.0, dtype=torch.double)).sum().backward()
    assert torch.allclose(y, yr, atol=1e-12)
    for p, r in zip(fast.parameters(), params):
        assert torch.allclose(p.grad, r.grad, atol=1e-12)
