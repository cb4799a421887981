"""Recycled weight-gradient buffers: every step's ``param.grad`` equals the masked reference.

The ops reuse one full-size buffer per weight and re-zero only the previous step's block,
so a bug shows up as a stale value from an *earlier* step. Each test therefore runs many
steps on one weight with changing patterns and checks every step against the float64
dense masked reference, including the hand-offs that must not reuse the buffer.
"""

import random

import pytest
import torch

from ardrop.functional import compact_linear, compact_linear_reference, tile_linear, tile_linear_reference
from ardrop.contract import grad_buffers as _grad_buffers

OUT_F, IN_F = 70, 45  # ragged for every dp > 1 and for the 8x8 tiles below


def _compact_case(rng):
    out_dp, in_dp = rng.randint(1, 5), rng.choice([1, 1, 2, 3])
    return (out_dp, rng.randrange(out_dp), in_dp, rng.randrange(in_dp))


def _tile_case(rng):
    dp = rng.randint(1, 5)
    return (dp, rng.randrange(dp))


def _run(kind, w, b, case, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "row":
        out_dp, out_off, in_dp, in_off = case
        x = torch.randn(6, len(range(in_off, IN_F, in_dp)), generator=g)
        y = compact_linear(x, w, b, out_dp, out_off, in_dp, in_off, 1.5, 2.0, True)
        x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
        yr = compact_linear_reference(x64, w64, b64, out_dp, out_off, in_dp, in_off, 1.5, 2.0, True)
    else:
        dp, off = case
        x = torch.randn(6, IN_F, generator=g)
        y = tile_linear(x, w, b, dp, off, tile=8, relu=True)
        x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
        yr = tile_linear_reference(x64, w64, b64, dp, off, tile=8, relu=True)
    up = torch.randn(y.shape, generator=g)
    (y * up).sum().backward()
    (rw,) = torch.autograd.grad((yr * up.double()).sum(), w64)
    return rw


def _leaf(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(OUT_F, IN_F, generator=g))
    b = torch.nn.Parameter(torch.randn(OUT_F, generator=g))
    return w, b


def _err(got, ref):
    return ((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("kind", ["row", "tile"])
def test_every_step_matches_reference_while_buffer_is_recycled(kind, native_mode):
    rng = random.Random(7)
    w, b = _leaf(1)
    ptrs, prev = set(), None
    for step in range(60):
        case = _compact_case(rng) if kind == "row" else _tile_case(rng)
        if step % 7 == 3:
            case = prev  # the same block twice in a row: nothing to re-zero
        rw = _run(kind, w, b, case, step)
        assert _err(w.grad, rw) < 1e-5, (step, case)
        assert (w.grad.double()[rw == 0] == 0).all(), (step, case)  # no stale block survives
        ptrs.add(w.grad.data_ptr())
        w.grad = b.grad = None  # what optimizer.zero_grad() does by default
        prev = case
    assert len(ptrs) == 1  # the same memory every step: nothing was allocated or zero-filled anew


@pytest.mark.parametrize("kind", ["row", "tile"])
def test_held_gradient_is_never_overwritten(kind):
    rng = random.Random(3)
    w, b = _leaf(2)
    kept = []
    for step in range(12):
        case = _compact_case(rng) if kind == "row" else _tile_case(rng)
        rw = _run(kind, w, b, case, step)
        kept.append((w.grad, w.grad.clone(), rw))
        w.grad = None
    for grad, snapshot, rw in kept:  # a saved gradient keeps its values and memory
        assert torch.equal(grad, snapshot)
        assert _err(grad, rw) < 1e-5


@pytest.mark.parametrize("kind", ["row", "tile"])
def test_in_place_edits_and_accumulation_are_not_trusted(kind):
    """Clipping, AMP unscaling, DDP copy-back or ``grad.add_`` may write outside the block."""
    rng = random.Random(5)
    w, b = _leaf(3)
    for step in range(20):
        case = _compact_case(rng) if kind == "row" else _tile_case(rng)
        if step % 4 == 1:  # accumulate two patterns into one gradient
            r1 = _run(kind, w, b, case, step)
            case2 = _compact_case(rng) if kind == "row" else _tile_case(rng)
            r2 = _run(kind, w, b, case2, 1000 + step)
            assert _err(w.grad, r1 + r2) < 1e-5
        else:
            rw = _run(kind, w, b, case, step)
            assert _err(w.grad, rw) < 1e-5
        if step % 3 == 0:
            w.grad.add_(1.0)  # dirty every element, then hand the buffer back
        w.grad = b.grad = None


def test_disabled_switch_allocates_fresh_gradients(monkeypatch):
    monkeypatch.setattr(_grad_buffers, "enabled", False)
    w, b = _leaf(4)
    ptrs = []
    for step in range(3):
        rw = _run("row", w, b, (3, step, 1, 0), step)
        assert _err(w.grad, rw) < 1e-5
        ptrs.append(w.grad)  # keep them alive so addresses cannot repeat by chance
        w.grad = None
    assert len({p.data_ptr() for p in ptrs}) == 3


def test_row_and_tile_ops_sharing_a_weight_zero_each_others_blocks(native_mode):
    rng = random.Random(11)
    w, b = _leaf(5)
    for step in range(30):
        kind = rng.choice(["row", "tile"])
        case = _compact_case(rng) if kind == "row" else _tile_case(rng)
        rw = _run(kind, w, b, case, step)
        assert _err(w.grad, rw) < 1e-5, (step, kind, case)
        assert (w.grad.double()[rw == 0] == 0).all(), (step, kind, case)
        w.grad = b.grad = None
