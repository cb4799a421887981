"""LazySGD against torch.optim.SGD: same model, same patterns, same data, float64.

The reference is torch's own optimizer updating every weight every step; LazySGD defers
the dropped rows. After every step both models' weights (read through state_dict, which
must flush) and both momentum buffers must agree to float64 rounding.
"""

import copy
import random

import pytest
import torch
import torch.nn.functional as F

from ardrop.nn import ApproxLinear, ApproxMLP
from ardrop.optim import LazySGD
from ardrop.patterns import Pattern

SIZES = (12, 19, 13, 5)  # ragged hidden widths


def _patterns(steps, seed=0, max_dp=6):
    rng = random.Random(seed)
    out = []
    for _ in range(steps):
        step = []
        for width in SIZES[1:-1]:
            dp = rng.randint(1, max_dp)
            step.append(Pattern("row", dp, rng.randrange(dp)))
        out.append(step)
    return out


def _run_pair(hyper, steps=90, window=16, lr_schedule=None, skip_grad_at=(), kind="row"):
    torch.manual_seed(0)
    model = ApproxMLP(SIZES, kind=kind, rates=0.5, tile=4).double()
    ref = copy.deepcopy(model)
    opt = LazySGD(model.parameters(), window=window, verify=True, **hyper)
    ref_opt = torch.optim.SGD(ref.parameters(), **hyper)
    pats = _patterns(steps)
    gen = torch.Generator().manual_seed(1)
    for s in range(steps):
        x = torch.randn(7, SIZES[0], generator=gen, dtype=torch.float64)
        t = torch.randint(0, SIZES[-1], (7,), generator=gen)
        for m, o in ((model, opt), (ref, ref_opt)):
            if lr_schedule is not None:
                for g in o.param_groups:
                    g["lr"] = lr_schedule(s)
            for layer, p in zip(m.hidden, pats[s]):
                layer.site.set_pattern(p if kind == "row" else Pattern("tile", p.dp, p.offset, 4))
            o.zero_grad()
            loss = F.cross_entropy(m(x), t)
            (-loss if hyper.get("maximize") else loss).backward()  # maximize the negated loss
            if s in skip_grad_at:
                m.hidden[1].weight.grad = None  # torch skips such a parameter entirely
            o.step()
    return model, ref, opt, ref_opt


def _assert_same(model, ref, opt, ref_opt, tol=1e-12):
    sd, rsd = model.state_dict(), ref.state_dict()
    for k in sd:
        assert torch.allclose(sd[k], rsd[k], rtol=tol, atol=tol), k
    lazy_state, ref_state = opt.state_dict()["state"], ref_opt.state_dict()["state"]
    assert lazy_state.keys() == ref_state.keys()
    for k in lazy_state:
        a, b = lazy_state[k].get("momentum_buffer"), ref_state[k].get("momentum_buffer")
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=tol, atol=tol), k


HYPERS = [
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-3),
    dict(lr=0.05, momentum=0.9, maximize=True),
    dict(lr=0.05, momentum=0.0, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.0),
]


@pytest.mark.parametrize("hyper", HYPERS, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_lazy_sgd_equals_torch_sgd(hyper):
    _assert_same(*_run_pair(hyper))


def test_lr_schedule_and_window_boundaries():
    """A learning rate that changes every step, with windows of 1, 5 and longer than the run."""
    for window in (1, 5, 500):
        _assert_same(*_run_pair(dict(lr=0.05, momentum=0.9, weight_decay=1e-3), steps=40, window=window,
                                lr_schedule=lambda s: 0.05 * (1 + s) ** -0.5))


def test_a_parameter_without_grad_is_skipped_as_torch_does():
    _assert_same(*_run_pair(dict(lr=0.05, momentum=0.9), steps=30, skip_grad_at=(3, 4, 17)))


def test_tile_layers_get_dense_steps():
    _assert_same(*_run_pair(dict(lr=0.05, momentum=0.9), steps=20, kind="tile"))


def test_rows_really_are_deferred():
    """The point of the optimizer: a dropped row's weights stay untouched until it is read."""
    torch.manual_seed(0)
    layer = ApproxLinear(6, 8, kind="row", rate=0.5).double()
    opt = LazySGD(layer.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(3, 6, dtype=torch.float64)
    for p in (Pattern("row", 1, 0), Pattern("row", 2, 0), Pattern("row", 2, 0)):
        layer.site.set_pattern(p)
        opt.zero_grad()
        layer(x).sum().backward()
        opt.step()
    before = layer.weight.detach()[1::2].clone()
    layer.site.set_pattern(Pattern("row", 2, 0))
    opt.zero_grad()
    layer(x).sum().backward()
    opt.step()
    assert torch.equal(layer.weight.detach()[1::2], before)  # deferred, not written
    opt.flush()
    assert not torch.equal(layer.weight.detach()[1::2], before)  # momentum moved them


def test_eval_forward_sees_current_weights():
    torch.manual_seed(0)
    model = ApproxMLP(SIZES, kind="row", rates=0.5).double()
    ref = copy.deepcopy(model)
    opt = LazySGD(model.parameters(), lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(4, SIZES[0], dtype=torch.float64)
    for pats in _patterns(6, seed=3):
        for m, o in ((model, opt), (ref, ref_opt)):
            for layer, p in zip(m.hidden, pats):
                layer.site.set_pattern(p)
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    model.eval()
    ref.eval()
    assert torch.allclose(model(x), ref(x), rtol=1e-12, atol=1e-12)


def test_gradient_accumulation_with_two_patterns_falls_back_to_dense():
    torch.manual_seed(0)
    model = ApproxMLP(SIZES, kind="row", rates=0.5).double()
    ref = copy.deepcopy(model)
    opt = LazySGD(model.parameters(), lr=0.1, momentum=0.9, verify=True)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(4, SIZES[0], dtype=torch.float64)
    pats = _patterns(10, seed=5)
    for s in range(0, 10, 2):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            for micro in (pats[s], pats[s + 1]):
                for layer, p in zip(m.hidden, micro):
                    layer.site.set_pattern(p)
                m(x).square().sum().backward()
            o.step()
    _assert_same(model, ref, opt, ref_opt)


def test_verify_catches_gradient_outside_the_reported_rows():
    torch.manual_seed(0)
    layer = ApproxLinear(6, 8, kind="row", rate=0.5).double()
    opt = LazySGD(layer.parameters(), lr=0.1, momentum=0.9, verify=True)
    x = torch.randn(3, 6, dtype=torch.float64)
    for step in range(2):
        layer.site.set_pattern(Pattern("row", 2, 1))
        opt.zero_grad()
        loss = layer(x).sum() + (step == 1) * layer.weight.square().sum()  # a penalty on every row
        loss.backward()
        if step == 1:
            with pytest.raises(RuntimeError, match="lazy=False"):
                opt.step()
        else:
            opt.step()


def test_checkpoint_round_trip_matches_torch_state():
    model, ref, opt, ref_opt = _run_pair(dict(lr=0.05, momentum=0.9), steps=25)
    fresh = LazySGD(copy.deepcopy(model).parameters(), lr=0.05, momentum=0.9)
    fresh.load_state_dict(opt.state_dict())
    torch_opt = torch.optim.SGD(copy.deepcopy(model).parameters(), lr=0.05, momentum=0.9)
    torch_opt.load_state_dict(opt.state_dict())  # the saved state is plain torch SGD state


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=0.0), "learning rate"),
        (dict(lr=0.1, momentum=-1.0), "momentum"),
        (dict(lr=0.1, weight_decay=-1.0), "weight_decay"),
        (dict(lr=0.1, nesterov=True), "nesterov"),
        (dict(lr=0.1, window=0), "window"),
    ],
)
def test_bad_arguments(kwargs, match):
    layer = ApproxLinear(4, 4)
    with pytest.raises(ValueError, match=match):
        LazySGD(layer.parameters(), **kwargs)


def test_one_parameter_one_optimizer():
    layer = ApproxLinear(4, 4)
    keep = LazySGD(layer.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="another LazySGD"):
        LazySGD(layer.parameters(), lr=0.1)
    del keep
