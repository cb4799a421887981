"""The fused CPU passes against torch, run once before the library is first used.

Holds: ``run_self_check``. Imports: torch, ``ardrop.patterns`` (the tile mask, written
once) and ``ardrop.native`` (``library``, ``passes``). The package hands it to the
loader (``library.hand_over_self_check``), which runs it on a freshly built library.

Why through the public passes and not the raw library: they hold the layout logic
(strides, views, dtype suffix) that a wrong build or a wrong wrapper would get wrong.
"""

from __future__ import annotations

import ctypes

import torch

from ardrop.native.library import DTYPE_SUFFIX, NativeUnavailable
from ardrop.native.passes import axpy2_, frame_step_, scatter_cols_, tile_axpy2_, tile_zero_
from ardrop.patterns import Pattern


def run_self_check(lib: ctypes.CDLL) -> None:
    """The kernels against torch on small ragged row views, both dtypes, both thread paths.

    ``lib`` is the candidate under check; the passes reach it through the loader, which
    hands it to the checking thread only.
    """
    gen = torch.Generator().manual_seed(0)
    for dtype in DTYPE_SUFFIX:
        for rows, cols in ((7, 5), (301, 257)):  # one thread, then the parallel path
            w, b, g = (torch.randn(rows, cols + 3, generator=gen, dtype=dtype) for _ in range(3))
            w_ref = w[1::2, :cols] + 0.25 * g[1::2, :cols]
            b_ref = b[1::2, :cols] - 1.5 * g[1::2, :cols]
            if not axpy2_(w[1::2, :cols], b[1::2, :cols], g[1::2, :cols], 0.25, -1.5):
                raise NativeUnavailable("self-check: the kernel refused a row-strided view")
            tol = 1e-6 if dtype == torch.float32 else 1e-12
            if not (torch.allclose(w[1::2, :cols], w_ref, rtol=tol, atol=tol)
                    and torch.allclose(b[1::2, :cols], b_ref, rtol=tol, atol=tol)):
                raise NativeUnavailable(f"self-check: axpy2 on {dtype} disagrees with torch")
            w, b, g = (torch.randn(rows, cols, generator=gen, dtype=dtype) for _ in range(3))
            b_ref, w_ref = 0.9 * b + 0.01 * w + 1.0 * g, -0.09 * b + 0.999 * w - 0.1 * g
            if not frame_step_(w, b, g, (0.9, 0.01, -0.09, 0.999), (1.0, -0.1)) or not (
                    torch.allclose(w, w_ref, rtol=tol, atol=tol) and torch.allclose(b, b_ref, rtol=tol, atol=tol)):
                raise NativeUnavailable(f"self-check: frame_step on {dtype} disagrees with torch")
            dst, ref = torch.randn(rows, cols + 3, generator=gen, dtype=dtype), torch.zeros(rows, cols, dtype=dtype)
            src = torch.randn(rows, len(range(2, cols, 3)), generator=gen, dtype=dtype)
            ref[:, 2::3] = src
            if not scatter_cols_(dst[:, :cols], src, 3, 2) or not torch.equal(dst[:, :cols], ref):
                raise NativeUnavailable(f"self-check: scatter_cols on {dtype} disagrees with torch")
            w, b, g = (torch.randn(rows, cols, generator=gen, dtype=dtype) for _ in range(3))
            keep = Pattern("tile", 3, 1, 4).tile_mask(rows, cols).bool()  # the reference semantics
            w_ref, b_ref = torch.where(keep, w + 0.5 * g, w), torch.where(keep, b - 2.0 * g, b)
            if not tile_axpy2_(w, b, g, 0.5, -2.0, 4, 3, 1) or not (
                    torch.allclose(w, w_ref, rtol=tol, atol=tol) and torch.allclose(b, b_ref, rtol=tol, atol=tol)):
                raise NativeUnavailable(f"self-check: tile_axpy2 on {dtype} disagrees with torch")
            g_ref = torch.where(keep, torch.zeros((), dtype=dtype), g)
            if not tile_zero_(g, 4, 3, 1) or not torch.equal(g, g_ref):
                raise NativeUnavailable(f"self-check: tile_zero on {dtype} disagrees with torch")
