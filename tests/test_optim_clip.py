"""`ardrop.optim.clip.clip_grad_norm_` against `torch.nn.utils.clip_grad_norm_` (float64, 1e-12).

The reference is torch's own function on a copy of the same gradients; the fast path
reads only the blocks the layers' recycled gradient buffers say they wrote.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from ardrop.contract import grad_buffers as _grad_buffers
from ardrop.nn import ApproxMLP
from ardrop.optim.clip import clip_grad_norm_
from ardrop.patterns import Pattern

SIZES = (24, 40, 36, 5)


def _grads(kind, groups, dps=(3, 2), seed=0):
    torch.manual_seed(seed)
    model = ApproxMLP(SIZES, kind=kind, rates=0.5, tile=4, groups=groups).double()
    for layer, dp in zip(model.hidden, dps):
        layer.site.set_pattern(Pattern(kind, dp, 1, 4))
    x = torch.randn(9, SIZES[0], dtype=torch.float64)
    y = torch.randint(0, SIZES[-1], (9,))
    F.cross_entropy(model(x), y).backward()
    return model


@pytest.mark.parametrize("kind, groups", [("row", 1), ("tile", 1), ("row", "dp"), ("tile", "dp")])
@pytest.mark.parametrize("max_norm", [1e-3, 1e3], ids=["clipped", "under_threshold"])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_equals_torch_clip_grad_norm(kind, groups, max_norm, norm_type):
    model = _grads(kind, groups)
    ref = [p.grad.clone() for p in model.parameters()]
    want = torch.nn.utils.clip_grad_norm_(_with_grads(ref), max_norm, norm_type)
    got = clip_grad_norm_(model.parameters(), max_norm, norm_type)
    assert torch.allclose(got, want, rtol=1e-12, atol=0)
    for p, g in zip(model.parameters(), _REF_GRADS):
        assert torch.allclose(p.grad, g, rtol=1e-12, atol=1e-15)


_REF_GRADS: list = []


def _with_grads(grads):
    """Fresh leaves holding copies of ``grads``: torch's clip works on those (kept in _REF_GRADS)."""
    _REF_GRADS.clear()
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g
        params.append(p)
        _REF_GRADS.append(g)
    return params


def test_single_pattern_reads_only_the_written_blocks_and_keeps_the_buffer_sealed():
    """Row and tile gradients of one pattern per step: the views cover a fraction, and clipping re-seals."""
    for kind in ("row", "tile"):
        model = _grads(kind, 1, dps=(4, 4))
        w = model.hidden[1].weight
        ((views, _),) = _grad_buffers.sealed_blocks([w.grad])
        covered = sum(v.numel() for v in views)
        assert covered < w.numel() / 2, (kind, covered, w.numel())
        clip_grad_norm_(model.parameters(), 1e-6)
        rec = _grad_buffers._BUFFERS[w]
        assert rec.version == rec.tensor._version  # still known: the next step zeroes only this block


def test_a_gradient_written_elsewhere_is_read_whole():
    model = _grads("row", 1, dps=(4, 4))
    w = model.hidden[1].weight
    with torch.no_grad():
        w.grad[0::4].add_(1.0)  # someone else wrote it: its zeros are no longer known
    ((views, _),) = _grad_buffers.sealed_blocks([w.grad])
    assert len(views) == 1 and views[0] is w.grad


def test_lightning_hook_clips_with_the_trainer_value():
    from models.mlp import MLPClassifier

    module = MLPClassifier(hidden=(16, 12), in_features=10, num_classes=3, rates=0.5, groups=1)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    for layer in module.net.hidden:
        layer.site.set_pattern(Pattern("row", 2, 1))
    x = torch.randn(5, 10)
    F.cross_entropy(module(x), torch.randint(0, 3, (5,))).backward()
    ref = [p.grad.clone() for p in module.parameters()]
    torch.nn.utils.clip_grad_norm_(_with_grads(ref), 1e-3)
    module.configure_gradient_clipping(opt, gradient_clip_val=1e-3, gradient_clip_algorithm="norm")
    for p, g in zip(module.parameters(), _REF_GRADS):
        assert torch.allclose(p.grad, g, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind, groups", [("row", 1), ("tile", 1), ("row", "dp"), ("tile", "dp")])
@pytest.mark.parametrize("max_norm", [1e-3, 1e3], ids=["clipped", "under_threshold"])
def test_norms_sealed_by_the_ops_equal_torch(kind, groups, max_norm, monkeypatch):
    """Once a clip asked for them, the ops seal each block's norm; the clip then reads no sealed gradient.

    The result must still be torch's (float64, 1e-12), and the single-pattern ops must
    really hand the norms over (else this would test the read-back path again).
    """
    monkeypatch.setattr(_grad_buffers, "norms_wanted", False)
    clip_grad_norm_(_grads(kind, groups).parameters(), 1e3)  # the first clip asks for the norms
    assert _grad_buffers.norms_wanted
    model = _grads(kind, groups, dps=(2, 3), seed=1)
    carried = [n for _, n in _grad_buffers.sealed_blocks([p.grad for p in model.parameters()])]
    if groups == 1:  # at least the two hidden weights whose ops drop their blocks
        assert sum(n is not None for n in carried) >= 2, carried
    ref = [p.grad.clone() for p in model.parameters()]
    for n, g in zip(carried, ref):
        if n is not None:
            assert torch.allclose(n, torch.linalg.vector_norm(g), rtol=1e-12, atol=0)
    want = torch.nn.utils.clip_grad_norm_(_with_grads(ref), max_norm)
    got = clip_grad_norm_(model.parameters(), max_norm)
    assert torch.allclose(got, want, rtol=1e-12, atol=0)
    for p, g in zip(model.parameters(), _REF_GRADS):
        assert torch.allclose(p.grad, g, rtol=1e-12, atol=1e-15)
    # a scaled gradient's old norm is stale: dropped
    if max_norm < 1 and groups == 1:
        assert all(n is None for _, n in _grad_buffers.sealed_blocks([p.grad for p in model.parameters()]))
