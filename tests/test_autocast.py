"""Mixed precision: every layer and model family under ``torch.autocast`` (CPU bf16) and Lightning's bf16-mixed.

The reference is the same model with ``backend="reference"`` (dense layers with explicit
masks, through ``F.linear``, which autocast casts natively) under the same autocast, so
both sides round to bf16; the tolerance is a half-precision one. Gradients come back in
each parameter's own dtype (fp32), as torch.autocast promises.
"""
import copy

import pytest
import torch

from ardrop.nn import ApproxLinear, ApproxLSTMLM, ApproxMLP
from ardrop.patterns import Pattern
from ardrop.train import run
from conftest import compose_cfg, small_overrides


def _set(model, kind, dp=2, offset=1):
    for mod in model.modules():
        if getattr(mod, "structured", False):
            mod.set_pattern(Pattern(kind, dp, offset, 8))


def _close(a, b, what):
    """Half-precision agreement, in norm: a unit whose pre-activation sits near 0 can flip its
    ReLU in one rounding and not the other, which moves single elements a lot and the norm little."""
    a, b = a.float(), b.float()
    err, scale = torch.linalg.vector_norm(a - b).item(), torch.linalg.vector_norm(b).item()
    assert err <= 0.02 * scale + 1e-4, f"{what}: error norm {err:.3g} against norm {scale:.3g}"


def _build(family, kind, groups, backend):
    torch.manual_seed(0)
    if family == "mlp":
        return ApproxMLP((20, 48, 40, 5), kind=kind, tile=8, groups=groups, backend=backend), torch.randn(12, 20)
    if family == "linear":
        return ApproxLinear(20, 48, kind=kind, tile=8, groups=groups, backend=backend, relu=True), torch.randn(12, 20)
    return ApproxLSTMLM(50, 32, 2, kind=kind, tile=8, groups=groups, backend=backend), torch.randint(0, 50, (6, 4))


@pytest.mark.parametrize("family", ["mlp", "linear", "lstm"])
@pytest.mark.parametrize("kind", ["row", "tile"])
@pytest.mark.parametrize("groups", [1, "dp"])
def test_bf16_autocast_matches_the_masked_reference(family, kind, groups):
    fast, x = _build(family, kind, groups, "fast")
    ref, _ = _build(family, kind, groups, "reference")
    ref.load_state_dict(fast.state_dict())
    outs = []
    for m in (fast, ref):
        _set(m, kind)
        with torch.autocast("cpu", torch.bfloat16):
            out = m(x)
            out = out[0] if isinstance(out, tuple) else out
            loss = (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum()
        loss.backward()
        outs.append(out)
    assert outs[0].dtype == torch.bfloat16  # the autocast dtype, as F.linear gives
    _close(outs[0], outs[1], "output")
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert p.grad.dtype == p.dtype == torch.float32, name
        _close(p.grad, q.grad, f"grad {name}")


@pytest.mark.parametrize("model, dropout", [("mlp_1024x64", "row"), ("mlp_1024x64", "tile"),
                                            ("lstm2", "row"), ("lstm2", "tile")])
def test_lightning_bf16_mixed_trains(synth_data, tmp_path, model, dropout):
    """``python -m ardrop.train experiment=smoke trainer.precision=bf16-mixed`` for every family and kind."""
    cfg = compose_cfg(small_overrides(synth_data, tmp_path, model, dropout)
                      + ["experiment=smoke", "trainer.precision=bf16-mixed", "logger=none", "test=false"])
    score = run(cfg)
    assert score is not None and score == score  # a finite validation metric, not NaN
