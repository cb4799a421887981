"""Self-check run once after the extension is built (and by the emulator tests).

Why: a kernel that compiles can still be wrong on a given GPU/toolkit pair (a
miscompile, a wrong arch, a stale cache). Before the layers switch to the kernels,
one tiny row problem and one tiny tile problem (ragged, ReLU, bias, all three
gradients) are compared with a float64 dense computation on explicit masks.
"""
from __future__ import annotations

import torch

from .functions import compact_linear_with, tile_linear_with

_TOL = 1e-4


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    den = ref.abs().max().item()
    return (got.double() - ref).abs().max().item() / max(den, 1e-12)


def _compare(name: str, got: torch.Tensor | None, ref: torch.Tensor) -> None:
    if got is None:
        raise AssertionError(f"{name}: no gradient returned")
    if got.shape != ref.shape:
        raise AssertionError(f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}")
    err = _rel_err(got, ref)
    if not err < _TOL:
        raise AssertionError(f"{name}: relative error {err:.3g} >= {_TOL}")


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def run_self_check(ext, device: torch.device | str | None = None) -> None:
    """Raise AssertionError naming the first mismatch; return None when all agree."""
    if device is None:
        device = "cpu" if getattr(ext, "emulated", False) else "cuda"
    gen = torch.Generator().manual_seed(1234)
    # Row: 13 outputs (dp=3, offset=1 -> rows 1,4,7,10), 11 inputs (dp=2, offset=1).
    out_f, in_f, batch = 13, 11, 5
    w = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
    b = torch.randn(out_f, generator=gen, dtype=torch.float64)
    rows, cols = torch.arange(1, out_f, 3), torch.arange(1, in_f, 2)
    xc = torch.randn(batch, len(cols), generator=gen, dtype=torch.float64)
    gy = torch.randn(batch, len(rows), generator=gen, dtype=torch.float64)
    in_s, out_s = 1.7, 1.3
    x_ref, w_ref, b_ref = _leaf(xc), _leaf(w), _leaf(b)
    z = in_s * x_ref @ w_ref[rows][:, cols].T + b_ref[rows]
    y_ref = torch.relu(z) * out_s
    y_ref.backward(gy)
    xk, wk, bk = (_leaf(t.float().to(device)) for t in (xc, w, b))
    y = compact_linear_with(ext, xk, wk, bk, 3, 1, 2, 1, in_s, out_s, relu=True)
    y.backward(gy.float().to(device))
    _compare("row forward", y.detach().cpu(), y_ref.detach())
    _compare("row grad x", None if xk.grad is None else xk.grad.cpu(), x_ref.grad)
    _compare("row grad weight", None if wk.grad is None else wk.grad.cpu(), w_ref.grad)
    _compare("row grad bias", None if bk.grad is None else bk.grad.cpu(), b_ref.grad)

    # Tile: 37 x 29 weight, 8x8 tiles (ragged edges), dp=3, offset=2.
    out_f, in_f, tile, dp, offset, scale = 37, 29, 8, 3, 2, 2.9
    w = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
    b = torch.randn(out_f, generator=gen, dtype=torch.float64)
    x = torch.randn(batch, in_f, generator=gen, dtype=torch.float64)
    gy = torch.randn(batch, out_f, generator=gen, dtype=torch.float64)
    ti = torch.arange(out_f).div(tile, rounding_mode="floor")
    tj = torch.arange(in_f).div(tile, rounding_mode="floor")
    mask = ((ti[:, None] + tj[None, :]) % dp == offset).double()
    x_ref, w_ref, b_ref = _leaf(x), _leaf(w), _leaf(b)
    y_ref = torch.relu(x_ref @ (scale * w_ref * mask).T + b_ref)
    y_ref.backward(gy)
    xk, wk, bk = (_leaf(t.float().to(device)) for t in (x, w, b))
    y = tile_linear_with(ext, xk, wk, bk, dp, offset, tile, scale, relu=True)
    y.backward(gy.float().to(device))
    _compare("tile forward", y.detach().cpu(), y_ref.detach())
    _compare("tile grad x", None if xk.grad is None else xk.grad.cpu(), x_ref.grad)
    _compare("tile grad weight", None if wk.grad is None else wk.grad.cpu(), w_ref.grad)
    _compare("tile grad bias", None if bk.grad is None else bk.grad.cpu(), b_ref.grad)
