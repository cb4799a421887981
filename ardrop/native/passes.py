"""The fused CPU passes: each checks that its tensors fit the C kernels, then makes one call.

Holds: ``axpy2_``, ``frame_step_``, ``scatter_cols_``, ``tile_axpy2_``, ``tile_zero_``.
Imports: torch and ``ardrop.native.library`` (the library they call).

Each returns True when the C kernel did the work and False when the caller must run its
torch ops (no compiler, ``ARDROP_NATIVE=0``, a non-CPU tensor, a dtype other than
float32/float64, rows that are not contiguous); they never write when they return False.
"""

from __future__ import annotations

import torch

from ardrop.native.library import DTYPE_SUFFIX, lib_or_none


def _rows_layout(t: torch.Tensor):
    """(rows, cols, row_stride) when ``t`` is rows of contiguous elements, else None."""
    if t.dim() == 0:
        return None
    if t.dim() == 1:
        return (1, t.shape[0], t.shape[0]) if t.stride(0) == 1 or t.shape[0] <= 1 else None
    expected = 1
    for size, stride in zip(reversed(t.shape[1:]), reversed(t.stride()[1:])):
        if size != 1 and stride != expected:
            return None
        expected *= size
    return t.shape[0], expected, t.stride(0)


def _written(*tensors: torch.Tensor) -> None:
    """Bump version counters as torch's in-place ops do (autograd's saved-tensor checks rely on them)."""
    torch.autograd.graph.increment_version(tensors)


def _kernel_suffix(*tensors: torch.Tensor) -> str | None:
    """The kernels' dtype suffix when the tensors are non-empty CPU tensors of one float dtype, else None."""
    suffix = DTYPE_SUFFIX.get(tensors[0].dtype)
    if suffix is None or any(t.dtype != tensors[0].dtype or t.device.type != "cpu" or t.numel() == 0
                             for t in tensors):
        return None
    return suffix


def axpy2_(w: torch.Tensor, b: torch.Tensor, g: torch.Tensor, kw: float, kb: float) -> bool:
    """``w += kw * g; b += kb * g`` in one pass. False (nothing written): use the torch path.

    Takes CPU float32/float64 tensors of one shape whose rows are contiguous (whole
    tensors, row-strided views); anything else returns False.
    """
    dtype = _kernel_suffix(w, b, g)
    if dtype is None or not (w.shape == b.shape == g.shape):
        return False
    layouts = [_rows_layout(t) for t in (w, b, g)]
    if None in layouts:
        return False
    lib = lib_or_none()
    if lib is None:
        return False
    (rows, cols, rs_w), (_, _, rs_b), (_, _, rs_g) = layouts
    getattr(lib, f"ardrop_axpy2_{dtype}")(w.data_ptr(), b.data_ptr(), g.data_ptr(), rows, cols, rs_w, rs_b, rs_g,
                                          float(kw), float(kb), torch.get_num_threads())
    _written(w, b)
    return True


def frame_step_(w: torch.Tensor, b: torch.Tensor, g: torch.Tensor, frame, kick) -> bool:
    """``b, w = bb*b + bw*w + eb*g, wb*b + ww*w + ew*g`` over whole contiguous tensors, one pass.

    ``frame`` is ``(bb, bw, wb, ww)``, ``kick`` is ``(eb, ew)``. False (nothing written):
    use the torch path.
    """
    dtype = _kernel_suffix(w, b, g)
    if (dtype is None or not (w.shape == b.shape == g.shape)
            or not (w.is_contiguous() and b.is_contiguous() and g.is_contiguous())):
        return False
    lib = lib_or_none()
    if lib is None:
        return False
    getattr(lib, f"ardrop_frame_step_{dtype}")(w.data_ptr(), b.data_ptr(), g.data_ptr(), g.numel(),
                                               *map(float, frame), *map(float, kick), torch.get_num_threads())
    _written(w, b)
    return True


def scatter_cols_(dst: torch.Tensor, src: torch.Tensor, step: int, offset: int) -> bool:
    """Whole rows: ``dst.zero_(); dst[:, offset::step] = src`` in one write pass.

    False (nothing written): use the torch path. Takes CPU float32/float64 2-D tensors
    whose rows are contiguous, ``src`` holding exactly the kept columns.
    """
    dtype = _kernel_suffix(dst, src)
    if (dtype is None or dst.dim() != 2 or src.dim() != 2
            or not (1 <= step and 0 <= offset < step)
            or tuple(src.shape) != (dst.shape[0], len(range(offset, dst.shape[1], step)))):
        return False
    layouts = _rows_layout(dst), _rows_layout(src)
    if None in layouts:
        return False
    lib = lib_or_none()
    if lib is None:
        return False
    (rows, cols, rs_dst), (_, _, rs_src) = layouts
    getattr(lib, f"ardrop_scatter_cols_{dtype}")(dst.data_ptr(), src.data_ptr(), rows, cols, rs_dst, rs_src,
                                                 step, offset, torch.get_num_threads())
    _written(dst)
    return True


def _tile_args(tensors, tile: int, dp: int, offset: int):
    """(rows, cols, row stride) for the tile kernels, or None: 2-D tensors of one shape and
    one row stride with contiguous rows, and a valid pattern."""
    first = tensors[0]
    if (first.dim() != 2 or not (1 <= tile and 1 <= dp and 0 <= offset < dp)
            or any(t.shape != first.shape or t.stride() != first.stride() for t in tensors)
            or (first.stride(1) != 1 and first.shape[1] > 1)
            or (first.stride(0) < first.shape[1] and first.shape[0] > 1)):  # overlapping rows (expanded)
        return None
    return first.shape[0], first.shape[1], first.stride(0)


def tile_axpy2_(w: torch.Tensor, b: torch.Tensor, g: torch.Tensor, kw: float, kb: float,
                tile: int, dp: int, offset: int) -> bool:
    """`axpy2_` over the kept tiles of pattern ``(dp, offset)`` with ``tile x tile`` tiles, one pass.

    Tile ``(i, j)`` is kept iff ``(i + j) % dp == offset``. Takes whole 2-D CPU tensors of one
    shape and strides with contiguous rows; anything else returns False (nothing written).
    """
    dtype = _kernel_suffix(w, b, g)
    args = _tile_args((w, b, g), tile, dp, offset) if dtype is not None else None
    lib = lib_or_none() if args is not None else None
    if lib is None:
        return False
    getattr(lib, f"ardrop_tile_axpy2_{dtype}")(w.data_ptr(), b.data_ptr(), g.data_ptr(), *args, tile, dp, offset,
                                               float(kw), float(kb), torch.get_num_threads())
    _written(w, b)
    return True


def tile_zero_(d: torch.Tensor, tile: int, dp: int, offset: int) -> bool:
    """Zero the kept tiles of pattern ``(dp, offset)``; False (nothing written): use the torch path."""
    dtype = _kernel_suffix(d)
    args = _tile_args((d,), tile, dp, offset) if dtype is not None else None
    lib = lib_or_none() if args is not None else None
    if lib is None:
        return False
    getattr(lib, f"ardrop_tile_zero_{dtype}")(d.data_ptr(), *args, tile, dp, offset, torch.get_num_threads())
    _written(d)
    return True
