"""The CUDA kernels' self-check against ardrop's dense masked references, and the ahead-of-time build.

Holds: ``run_self_check(ext)`` (handed to ``cuda_ext.loader`` by the dispatch in
``ardrop.functional._common``) and ``main`` (``python -m ardrop.functional.kernel_check``).
Imports: torch, ``ardrop.functional.reference`` and ``cuda_ext`` (functions, loader); it
is itself imported only when a CUDA tensor reaches the dispatch, or by the command.

Why a self-check: a kernel that compiles can still be wrong on a given GPU/toolkit pair
(a miscompile, a wrong arch, a stale cache). Before the layers switch to the kernels,
small row and tile problems (ragged, ReLU, bias, all three gradients) are compared with
a float64 dense computation on explicit masks. Why here and not in cuda_ext: the masks
and scales are ``Pattern``'s (through ``ardrop.functional.reference``), written once;
cuda_ext sits below ardrop and may not import it.
"""
from __future__ import annotations

import torch

from ardrop.functional.reference import compact_linear_reference, tile_linear_reference
from cuda_ext import loader
from cuda_ext.functions import compact_linear_with, tile_linear_with

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


def _check(kind, ext, device, gen, x, out_f, in_f, reference, kernel, args, tag):
    """``kernel(ext, x, w, b, *args)`` in fp32 on ``device`` against ``reference(x, w, b, *args)`` in float64."""
    w = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
    b = torch.randn(out_f, generator=gen, dtype=torch.float64)
    x_ref, w_ref, b_ref = _leaf(x), _leaf(w), _leaf(b)
    y_ref = reference(x_ref, w_ref, b_ref, *args, relu=True)
    gy = torch.randn(y_ref.shape, generator=gen, dtype=torch.float64)
    y_ref.backward(gy)
    xk, wk, bk = (_leaf(t.float().to(device)) for t in (x, w, b))
    y = kernel(ext, xk, wk, bk, *args, relu=True)
    y.backward(gy.float().to(device))
    _compare(f"{kind}{tag} forward", y.detach().cpu(), y_ref.detach())
    for name, got, ref in (("x", xk, x_ref), ("weight", wk, w_ref), ("bias", bk, b_ref)):
        _compare(f"{kind}{tag} grad {name}", None if got.grad is None else got.grad.cpu(), ref.grad)


def _check_row(ext, device, gen, batch, out_f, in_f, out_dp, out_off, in_dp, in_off, tag):
    x = torch.randn(batch, len(range(in_off, in_f, in_dp)), generator=gen, dtype=torch.float64)
    _check("row", ext, device, gen, x, out_f, in_f, compact_linear_reference, compact_linear_with,
           (out_dp, out_off, in_dp, in_off, 1.7, 1.3), tag)


def _check_tile(ext, device, gen, batch, out_f, in_f, tile, dp, offset, scale, tag):
    x = torch.randn(batch, in_f, generator=gen, dtype=torch.float64)
    _check("tile", ext, device, gen, x, out_f, in_f, tile_linear_reference, tile_linear_with,
           (dp, offset, tile, scale), tag)


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


def main(argv: list[str] | None = None) -> int:
    """``python -m ardrop.functional.kernel_check``: build the CUDA kernels ahead of time (e.g. at install), check them, report."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--quiet", action="store_true", help="hide the compiler log")
    args = parser.parse_args(argv)
    reason = loader.not_attempted_reason()
    if reason is not None:
        print(f"ardrop cuda_ext: not built: {reason}")
        return 1
    loader.hand_over_self_check(run_self_check)
    print(f"ardrop cuda_ext: building into {loader.build_directory()} ...", flush=True)
    try:
        loader.load(verbose=not args.quiet)
    except loader.CudaExtUnavailable as exc:
        print(f"ardrop cuda_ext: FAILED\n{exc}")
        return 1
    print("ardrop cuda_ext: built and passed the self-check; CUDA layers use it by default")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
