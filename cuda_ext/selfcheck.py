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


def _check_row(ext, device, gen, batch, out_f, in_f, out_dp, out_off, in_dp, in_off, tag):
    w = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
    b = torch.randn(out_f, generator=gen, dtype=torch.float64)
    rows, cols = torch.arange(out_off, out_f, out_dp), torch.arange(in_off, in_f, in_dp)
    xc = torch.randn(batch, len(cols), generator=gen, dtype=torch.float64)
    gy = torch.randn(batch, len(rows), generator=gen, dtype=torch.float64)
    in_s, out_s = 1.7, 1.3
    x_ref, w_ref, b_ref = _leaf(xc), _leaf(w), _leaf(b)
    z = in_s * x_ref @ w_ref[rows][:, cols].T + b_ref[rows]
    y_ref = torch.relu(z) * out_s
    y_ref.backward(gy)
    xk, wk, bk = (_leaf(t.float().to(device)) for t in (xc, w, b))
    y = compact_linear_with(ext, xk, wk, bk, out_dp, out_off, in_dp, in_off, in_s, out_s, relu=True)
    y.backward(gy.float().to(device))
    _compare(f"row{tag} forward", y.detach().cpu(), y_ref.detach())
    _compare(f"row{tag} grad x", None if xk.grad is None else xk.grad.cpu(), x_ref.grad)
    _compare(f"row{tag} grad weight", None if wk.grad is None else wk.grad.cpu(), w_ref.grad)
    _compare(f"row{tag} grad bias", None if bk.grad is None else bk.grad.cpu(), b_ref.grad)


def _check_tile(ext, device, gen, batch, out_f, in_f, tile, dp, offset, scale, tag):
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
    _compare(f"tile{tag} forward", y.detach().cpu(), y_ref.detach())
    _compare(f"tile{tag} grad x", None if xk.grad is None else xk.grad.cpu(), x_ref.grad)
    _compare(f"tile{tag} grad weight", None if wk.grad is None else wk.grad.cpu(), w_ref.grad)
    _compare(f"tile{tag} grad bias", None if bk.grad is None else bk.grad.cpu(), b_ref.grad)


def run_self_check(ext, device: torch.device | str | None = None) -> None:
    """Raise AssertionError naming the first mismatch; return None when all agree.

    A one-block case of each op (13 x 11 rows, ragged; a 37 x 29 weight in 8 x 8 tiles),
    then multi-block grids in every dimension (rows: batch 130 x 300 x 270, which on a
    large GPU runs the 128 x 128 block configuration and on a small one the 64 x 64 one;
    tiles: 150 x 140 in 32 x 32 tiles), so a kernel that is right only inside one block
    does not pass.
    """
    if device is None:
        device = "cpu" if getattr(ext, "emulated", False) else "cuda"
    gen = torch.Generator().manual_seed(1234)
    _check_row(ext, device, gen, 5, 13, 11, 3, 1, 2, 1, "")
    _check_tile(ext, device, gen, 5, 37, 29, 8, 3, 2, 2.9, "")
    _check_row(ext, device, gen, 130, 300, 270, 2, 1, 3, 2, " (multi-block)")
    _check_tile(ext, device, gen, 70, 150, 140, 32, 2, 1, 2.1, " (multi-block)")
