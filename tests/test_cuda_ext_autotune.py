"""The kernels-or-torch choice per case (`cuda_ext.autotune`), on CPU with an injected timer.

The timer stands in for CUDA events: it runs the closure (so the timed work really is the
op's forward and backward) and returns the time the test assigns to that side.
"""
import pytest
import torch

from cuda_ext import autotune
from cuda_ext.autotune import KERNELS, TORCH, Autotune, forward_backward


def _tuner(times):
    calls = []

    def timer(fn):
        fn()  # the closure must run: forward and backward on copies
        side = "kernels" if len(calls) % 2 == 0 else "torch"
        calls.append(side)
        return times[side]

    return Autotune(timer), calls


@pytest.mark.parametrize("times, want", [({"kernels": 1.0, "torch": 2.0}, KERNELS),
                                         ({"kernels": 3.0, "torch": 2.0}, TORCH)])
def test_the_faster_side_is_chosen_and_cached(times, want):
    tuner, calls = _tuner(times)
    ran = []
    make = lambda: (lambda: ran.append("k"), lambda: ran.append("t"))  # noqa: E731
    assert tuner.choose(("case", 1), make, "auto") == want
    assert tuner.choose(("case", 1), make, "auto") == want  # cached: no second measurement
    assert calls == ["kernels", "torch"] and ran == ["k", "t"]
    assert tuner.timings[("case", 1)] == (times["kernels"], times["torch"])


def test_each_case_is_measured_once_and_require_skips_measuring():
    tuner, calls = _tuner({"kernels": 1.0, "torch": 2.0})
    make = lambda: (lambda: None, lambda: None)  # noqa: E731
    for dp in (2, 3, 2, 3):
        tuner.choose(("compact", (8, 4), dp), make, "auto")
    assert len(calls) == 4  # two cases, two sides each
    assert tuner.choose(("compact", (8, 4), 9), make, "require") == KERNELS
    assert len(calls) == 4 and ("compact", (8, 4), 9) not in tuner.choices


def test_timed_closures_touch_copies_not_the_parameters():
    from ardrop.functional.compact import _torch_compact

    w = torch.nn.Parameter(torch.randn(6, 5))
    b = torch.nn.Parameter(torch.randn(6))
    x = torch.randn(3, 5)
    run = forward_backward(_torch_compact, x, w, b, 2, 1, 1, 0, 1.0, 1.0, True)
    run()
    assert w.grad is None and b.grad is None  # the real parameters never saw a gradient


@pytest.mark.parametrize("no_grad", [torch.no_grad, torch.inference_mode])
def test_a_case_first_seen_without_autograd_is_timed_forward_only(no_grad):
    """Lightning validates under inference_mode: the first GPU validation of an MLP raised
    "element 0 of tensors does not require grad" when the tuner ran a backward there."""
    from ardrop.functional.compact import _torch_compact

    w, b = torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(6))
    with no_grad():
        x = torch.randn(3, 5)
        eval_key = autotune.case_key("compact", x, w, b, 2, 1)
        forward_backward(_torch_compact, x, w, b, 2, 1, 1, 0, 1.0, 1.0, True)()
    train_key = autotune.case_key("compact", x, w, b, 2, 1)
    assert eval_key != train_key  # a forward-only timing never decides a training call


def test_dispatch_uses_the_choice(monkeypatch):
    """compact_linear with a fake CUDA op: the tuner's verdict decides which side runs."""
    import ardrop.functional._common as common
    from ardrop.functional import compact_linear
    from cuda_ext import loader

    used = []

    def fake_kernels(x2, weight, bias, *args):
        used.append("kernels")
        from ardrop.functional.compact import _torch_compact
        return _torch_compact(x2, weight, bias, *args)

    monkeypatch.setattr(common, "cuda_op", lambda name, x, backend: fake_kernels)
    monkeypatch.setattr(loader, "env_mode", lambda: "auto")
    for verdict in (TORCH, KERNELS):
        seq = iter([1.0, 2.0] if verdict == KERNELS else [2.0, 1.0])  # (kernels ms, torch ms)
        monkeypatch.setattr(autotune, "AUTOTUNE", Autotune(lambda fn: next(seq)))  # times without running
        used.clear()
        w, b, x = torch.randn(6, 5), torch.randn(6), torch.randn(3, 5)
        y = compact_linear(x, w, b, 2, 1)
        assert y.shape == (3, 3)
        assert used == (["kernels"] if verdict == KERNELS else [])
