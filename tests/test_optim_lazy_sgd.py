"""LazySGD against torch.optim.SGD: same model, same patterns, same data, float64.

The reference is torch's own optimizer updating every weight every step; LazySGD defers
the dropped rows. After every step both models' weights (read through state_dict, which
must flush) and both momentum buffers must agree to float64 rounding.
"""

import copy
import pickle
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


def _run_pair(hyper, steps=90, window=16, lr_schedule=None, skip_grad_at=(), kind="row", clip=None, events=None):
    """``events[s](model, ref, opt, ref_opt) -> (opt, ref_opt)`` runs before step ``s`` (e.g. a load)."""
    torch.manual_seed(0)
    model = ApproxMLP(SIZES, kind=kind, rates=0.5, tile=4, groups=1).double()
    ref = copy.deepcopy(model)
    opt = LazySGD(model.parameters(), window=window, verify=True, **hyper)
    ref_opt = torch.optim.SGD(ref.parameters(), **hyper)
    pats = _patterns(steps)
    gen = torch.Generator().manual_seed(1)
    for s in range(steps):
        if events and s in events:
            opt, ref_opt = events[s](model, ref, opt, ref_opt)
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
            if clip is not None:  # in place: LazySGD must read the clipped gradient, not the op's copy
                torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
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
def test_lazy_sgd_equals_torch_sgd(hyper, native_mode):
    _assert_same(*_run_pair(hyper))


def test_lr_schedule_and_window_boundaries():
    """A learning rate that changes every step, with windows of 1, 5 and longer than the run."""
    for window in (1, 5, 500):
        _assert_same(*_run_pair(dict(lr=0.05, momentum=0.9, weight_decay=1e-3), steps=40, window=window,
                                lr_schedule=lambda s: 0.05 * (1 + s) ** -0.5))


def test_clipped_gradients():
    _assert_same(*_run_pair(dict(lr=0.05, momentum=0.9), steps=30, clip=0.05))


def test_a_parameter_without_grad_is_skipped_as_torch_does():
    _assert_same(*_run_pair(dict(lr=0.05, momentum=0.9), steps=30, skip_grad_at=(3, 4, 17)))


def test_tile_layers_are_lazy_too(native_mode):
    _assert_same(*_run_pair(dict(lr=0.05, momentum=0.9), steps=20, kind="tile"))
    _assert_same(*_run_pair(dict(lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True), steps=20, kind="tile"))


def _written_by_step(model, layer, opt, x, patterns):
    """Run one step per entry of ``patterns``; which stored elements (weight or buffer) did the last write?"""
    for pats in patterns:
        for site_layer, p in zip(model.hidden if hasattr(model, "hidden") else [model], pats):
            site_layer.site.set_pattern(p)
        opt.zero_grad()
        model(x).square().sum().backward()
        stored = (layer.weight.detach().clone(), opt.state[layer.weight]["momentum_buffer"].clone()
                  if layer.weight in opt.state else None)
        has_grad = layer.weight.grad != 0
        opt.step()
    buf = opt.state[layer.weight]["momentum_buffer"]
    written = (layer.weight.detach() != stored[0]) | (buf != stored[1])
    assert torch.equal(written, has_grad)  # exactly the elements with a gradient were written
    return written


def test_only_the_read_region_is_written(native_mode):
    """Dropped rows, and dropped tiles, stay untouched until a flush (they still move: momentum)."""
    torch.manual_seed(0)
    x = torch.randn(3, 16, dtype=torch.float64)
    cases = [(ApproxLinear(16, 12, kind="row", rate=0.5, groups=1), Pattern("row", 3, 1)),
             (ApproxLinear(16, 12, kind="tile", rate=0.5, tile=4, groups=1), Pattern("tile", 3, 2, 4))]
    for layer, pattern in cases:
        layer = layer.double()
        opt = LazySGD(layer.parameters(), lr=0.1, momentum=0.9)
        # a dense step makes every buffer nonzero; then the frame is not the identity any more
        dense = Pattern(pattern.kind, 1, 0, pattern.tile)
        written = _written_by_step(layer, layer, opt, x, [[dense], [pattern], [pattern]])
        if pattern.kind == "row":
            kept = pattern.row_mask(12).bool()[:, None].expand(12, 16)
        else:
            kept = pattern.tile_mask(12, 16).bool()
        assert torch.equal(written, kept), pattern
        frozen = layer.weight.detach().clone()
        opt.flush()
        assert not torch.equal(layer.weight.detach()[~kept], frozen[~kept])  # momentum moved them


def test_compact_chaining_skips_dropped_input_columns():
    """The second layer's update touches its kept rows' kept columns only."""
    torch.manual_seed(0)
    model = ApproxMLP((6, 12, 10, 3), kind="row", rates=0.5, groups=1).double()
    opt = LazySGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(64, 6, dtype=torch.float64)
    dense, sparse = (Pattern("row", 1, 0), Pattern("row", 1, 0)), (Pattern("row", 3, 2), Pattern("row", 2, 1))
    written = _written_by_step(model, model.hidden[1], opt, x, [dense, sparse, sparse])
    region = torch.zeros(10, 12, dtype=torch.bool)
    region[1::2, 2::3] = True
    assert written[region].sum() >= 5 and not written[~region].any()  # (dead ReLUs give zero gradients)


@pytest.mark.parametrize("kind, tie", [("row", False), ("tile", False), ("row", True)])
def test_lstm_lm_with_lazy_sgd_equals_torch_sgd(kind, tie):
    """Every read path of the LM (fused layers, compact/tile consumers, dense dp=1 and eval
    paths, an embedding tied to the decoder) must see current weights."""
    from ardrop.nn import ApproxLSTMLM

    torch.manual_seed(0)
    ref = ApproxLSTMLM(11, 8, 2, kind=kind, rates=0.5, tile=4, tie_weights=tie).double()
    model = copy.deepcopy(ref)  # a copy must keep the tied weight dense too
    hyper = dict(lr=0.3, momentum=0.9, weight_decay=1e-3)
    opt, ref_opt = LazySGD(model.parameters(), verify=True, **hyper), torch.optim.SGD(ref.parameters(), **hyper)
    rng, gen = random.Random(2), torch.Generator().manual_seed(3)
    for s in range(25):
        tokens = torch.randint(0, 11, (5, 3), generator=gen)
        pats = []
        for site in model.sites:
            dp = rng.randint(1, min(4, site.max_dp))
            pats.append(Pattern(kind, dp, rng.randrange(dp), 4))
        for m, o in ((model, opt), (ref, ref_opt)):
            m.train(s % 7 != 6)  # an eval-mode step now and then: dense reads
            for site, p in zip(m.sites, pats):
                site.set_pattern(p)
            o.zero_grad()
            logits, _ = m(tokens)
            F.cross_entropy(logits.reshape(-1, 11), tokens.reshape(-1)).backward()
            o.step()
    _assert_same(model, ref, opt, ref_opt)
    model.eval()
    ref.eval()
    assert torch.allclose(model(tokens)[0], ref(tokens)[0], rtol=1e-12, atol=1e-12)


def _row_layer_pair():
    """A small row layer on LazySGD, its copy on torch SGD, and an input."""
    torch.manual_seed(0)
    layer = ApproxLinear(6, 8, kind="row", rate=0.5, groups=1).double()
    ref = copy.deepcopy(layer)
    opt, ref_opt = LazySGD(layer.parameters(), lr=0.1, momentum=0.9), torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    return layer, ref, opt, ref_opt, torch.randn(3, 6, dtype=torch.float64)


def test_an_unroutable_read_gets_a_dense_step():
    """``before_read(p, None)`` (a kernel reading the stored tensor) flushes and steps densely."""
    from ardrop.optim import before_read

    layer, ref, opt, ref_opt, x = _row_layer_pair()
    for s in range(4):
        for m, o in ((layer, opt), (ref, ref_opt)):
            m.site.set_pattern(Pattern("row", 2, s % 2))
            o.zero_grad()
            m(x).square().sum().backward()
            if m is layer and s == 3:
                before_read(m.weight, None)
                assert torch.allclose(m.weight, ref.weight, rtol=1e-12, atol=1e-12)  # made current at once
            o.step()
    assert opt._frames[layer.weight].identity  # the dense step left nothing pending
    _assert_same(layer, ref, opt, ref_opt)


def test_rows_really_are_deferred():
    """The point of the optimizer: a dropped row's weights stay untouched until it is read."""
    torch.manual_seed(0)
    layer = ApproxLinear(6, 8, kind="row", rate=0.5, groups=1).double()
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


def test_a_step_over_the_whole_tensor_leaves_true_values_with_the_fused_kernel(native_mode):
    """Dense reads and whole-row writes cover every element: with the fused kernel the step
    writes true values (identity frame, so the next read needs no gather); without it the
    frame keeps the pending update. Both equal torch's SGD."""
    torch.manual_seed(0)
    model = ApproxMLP((6, 8, 5), kind="row", rates=0.5, groups=1).double()
    ref = copy.deepcopy(model)
    opt = LazySGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x = torch.randn(3, 6, dtype=torch.float64)
    for p in (Pattern("row", 1, 0), Pattern("row", 2, 1), Pattern("row", 1, 0)):
        for m, o in ((model, opt), (ref, ref_opt)):
            m.hidden[0].site.set_pattern(p)
            o.zero_grad()
            m(x).sum().backward()
            o.step()
    # the hidden weight was read densely, the head's every row in strided columns (whole rows)
    for w in (model.hidden[0].weight, model.head.weight):
        assert opt._frames[w].identity == (native_mode == "native")
    _assert_same(model, ref, opt, ref_opt)


def test_eval_forward_sees_current_weights():
    torch.manual_seed(0)
    model = ApproxMLP(SIZES, kind="row", rates=0.5, groups=1).double()
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
    model = ApproxMLP(SIZES, kind="row", rates=0.5, groups=1).double()
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
    layer = ApproxLinear(6, 8, kind="row", rate=0.5, groups=1).double()
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
    ref_state = ref_opt.state_dict()["state"]
    for loaded in (fresh, torch_opt):
        state = loaded.state_dict()["state"]
        assert state.keys() == ref_state.keys()
        for k in ref_state:
            assert torch.allclose(state[k]["momentum_buffer"], ref_state[k]["momentum_buffer"], rtol=1e-12, atol=1e-12)


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


WD = dict(lr=0.05, momentum=0.9, weight_decay=1e-2)  # weight decay: the hardest frame to undo


def _raw(model):
    """The stored tensors as they are (no flush), for checks that must not fold a frame themselves."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("hyper", [dict(lr=0.05, momentum=0.9), WD], ids=["plain", "weight_decay"])
def test_model_load_state_dict_with_pending_updates(hyper):
    """A checkpoint loaded into the model mid-run replaces the weights; the pending update must not land on top."""
    snap = {}

    def save(model, ref, opt, ref_opt):
        snap.update({k: v.clone() for k, v in ref.state_dict().items()})
        return opt, ref_opt

    def load(model, ref, opt, ref_opt):
        assert any(not f.identity for f in opt._frames.values())  # the test really has pending updates
        model.load_state_dict(snap)
        ref.load_state_dict(snap)
        return opt, ref_opt

    _assert_same(*_run_pair(hyper, steps=40, window=500, events={10: save, 25: load}))


def test_optimizer_load_state_dict_with_pending_updates():
    """Loading only the optimizer's state mid-run: the weights keep their pending update, the buffers are replaced."""
    snap = {}

    def save(model, ref, opt, ref_opt):
        snap["state"] = copy.deepcopy(ref_opt.state_dict())
        return opt, ref_opt

    def load(model, ref, opt, ref_opt):
        assert any(not f.identity for f in opt._frames.values())
        opt.load_state_dict(copy.deepcopy(snap["state"]))
        ref_opt.load_state_dict(copy.deepcopy(snap["state"]))
        return opt, ref_opt

    _assert_same(*_run_pair(WD, steps=40, window=500, events={10: save, 25: load}))


@pytest.mark.parametrize("keep_old", [False, True], ids=["dropped", "still_referenced"])
def test_a_replaced_optimizer_hands_over_its_pending_updates(keep_old):
    """Lightning rebuilds optimizers: the old one's pending update is folded in, not lost."""
    old = []

    def rebuild(model, ref, opt, ref_opt):
        assert any(not f.identity for f in opt._frames.values())
        if keep_old:
            old.append(opt)  # still alive: the new one takes the parameters over
        new = LazySGD(model.parameters(), window=500, verify=True, **WD)
        return new, torch.optim.SGD(ref.parameters(), **WD)

    model, ref, opt, ref_opt = _run_pair(WD, steps=40, window=500, events={20: rebuild})
    _assert_same(model, ref, opt, ref_opt)
    if keep_old:  # the old one now steps those parameters as torch does (densely), without a frame
        assert not old[0]._frames


def test_deepcopy_and_pickle_see_current_weights():
    model, ref, opt, ref_opt = _run_pair(WD, steps=20, window=500)
    assert any(not f.identity for f in opt._frames.values())
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        got, want = _raw(clone), _raw(ref)
        for k in want:
            assert torch.allclose(got[k], want[k], rtol=1e-12, atol=1e-12), k


@pytest.mark.parametrize("ema", [False, True], ids=["swa_mean", "ema"])
def test_averaged_model_after_flush_equals_torch_sgd(ema):
    """`torch.optim.swa_utils.AveragedModel` reads parameters directly, past the read contract: after
    ``optimizer.flush()`` (the documented call before such a read) it averages torch SGD's weights."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    kw = {"multi_avg_fn": get_ema_multi_avg_fn(0.7)} if ema else {}
    avgs, stale = {}, []

    def update(model, ref, opt, ref_opt):
        if not avgs:
            avgs["lazy"], avgs["ref"] = AveragedModel(model, **kw), AveragedModel(ref, **kw)
        raw = [p.detach().clone() for p in model.parameters()]  # what a read without the flush sees
        opt.flush()
        stale.append(any(not torch.equal(r, p) for r, p in zip(raw, model.parameters())))
        avgs["lazy"].update_parameters(model)
        avgs["ref"].update_parameters(ref)
        return opt, ref_opt

    _assert_same(*_run_pair(WD, steps=40, window=500, events={s: update for s in range(5, 40)}))
    assert sum(stale) > 10  # the flushes really folded pending updates: unflushed reads would be stale
    for a, b in zip(avgs["lazy"].parameters(), avgs["ref"].parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_a_foreign_write_is_honoured_or_refused(weight_decay):
    """``p.copy_`` behind the optimizer's back: exact without weight decay, a clear error with it."""
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=weight_decay)

    def write(model, ref, opt, ref_opt):
        pending = [name for name, p in model.named_parameters() if not opt._frames[p].identity]
        assert pending
        with torch.no_grad():  # not through ApproxMLP.load_state_dict: nothing flushes first
            for m in (model, ref):
                p = dict(m.named_parameters())[pending[0]]
                p.copy_(torch.linspace(-0.1, 0.1, p.numel(), dtype=p.dtype).view_as(p))
        return opt, ref_opt

    if weight_decay:
        with pytest.raises(RuntimeError, match="optimizer.flush"):
            _run_pair(hyper, steps=30, window=500, events={20: write})
    else:
        _assert_same(*_run_pair(hyper, steps=30, window=500, events={20: write}))


@pytest.mark.parametrize("shape, tile", [((12, 16), 4), ((13, 18), 4), ((70, 45), 32)])
def test_regions_cover_exactly_the_kept_elements(shape, tile):
    """The optimizer writes what a region's views cover: that must be the pattern's kept set."""
    from ardrop.functional.tile import tile_region
    from ardrop.optim import rows_region

    for dp in range(1, 5):
        for off in range(dp):
            m = torch.zeros(shape)
            for v in tile_region(*shape, tile, dp, off).views(m):
                v.add_(1)
            assert torch.equal(m, Pattern("tile", dp, off, tile).tile_mask(*shape)), (dp, off)
            for in_dp, in_off in ((1, 0), (3, 1)):
                m = torch.zeros(shape)
                for v in rows_region(dp, off, in_dp, in_off).views(m):
                    v.add_(1)
                expect = Pattern("row", dp, off).row_mask(shape[0])[:, None] * Pattern("row", in_dp, in_off).row_mask(shape[1])
                assert torch.equal(m, expect), (dp, off, in_dp, in_off)


def test_lightning_order_forward_zero_grad_backward_stays_lazy():
    """Lightning's closure zeroes gradients between the forward and the backward; the reads
    recorded in the forward must survive that, and evaluation forwards record nothing."""
    layer, ref, opt, ref_opt, x = _row_layer_pair()
    for s in range(5):
        for m, o in ((layer, opt), (ref, ref_opt)):
            with torch.no_grad():
                m.eval()
                m(x)  # a validation forward between steps
                m.train()
            m.site.set_pattern(Pattern("row", 2, 0) if s else Pattern("row", 1, 0))
            loss = m(x).square().sum()
            o.zero_grad()
            loss.backward()
            if m is layer:
                before = m.weight.detach()[1::2].clone()
            o.step()
    assert torch.equal(layer.weight.detach()[1::2], before)  # the dropped rows were not written
    _assert_same(layer, ref, opt, ref_opt)
