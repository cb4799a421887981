"""Tile-dropped (DropConnect-like) linear layer that multiplies kept tiles only.

Tile ``(i, j)`` is kept iff ``(i + j) % dp == offset``. Grouping tile-rows by residue
``a = i mod dp`` turns the kept work into ``dp`` dense GEMMs: the rows ``R_a`` (tile-rows
``i = a (mod dp)``) meet exactly the tile-columns ``C_a`` (``j = offset - a (mod dp)``), so

    y[:, R_a] = scale * x[:, C_a] @ W[R_a][:, C_a].T + b[R_a]

and likewise for both gradients. The kept block of each class is gathered (``1/dp`` of the
weight) through 4-D tile views whose inner runs are whole tile rows, and scattered back
the same way into the full-size, otherwise-zero weight gradient (a recycled buffer in
which only the previous step's tiles are re-zeroed, see `ardrop.contract.grad_buffers`). Ragged edge tiles (a
width that is not a multiple of the tile size) are separate, smaller views of the same
class, so no padding copy is ever made.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ardrop import native
from ardrop.functional._common import (
    autocast_linear,
    check_backend,
    check_int,
    check_linear_args,
    check_scale,
    run_kernels,
)
from ardrop.contract import grad_buffers
from ardrop.contract.grad_buffers import gradient_buffer, register_views, seal
from ardrop.contract.param_reads import DENSE, Region, before_read
from ardrop.patterns import Pattern


@lru_cache(maxsize=4096)
def _segments(n: int, t: int, cls: int, dp: int) -> tuple[int, int, int]:
    """Kept units of tile class ``cls`` along a dimension of ``n``: (full tiles, ragged edge, total).

    Full tiles are ``cls, cls+dp, ...`` below ``n // t``; the edge is the last, partial tile
    when it exists and belongs to the class.
    """
    full_tiles, rag = divmod(n, t)
    count = len(range(cls, full_tiles, dp)) if cls < full_tiles else 0
    edge = rag if rag and full_tiles % dp == cls else 0
    return count, edge, count * t + edge


def _dim_views_of(m: torch.Tensor, dim: int, t: int, cls: int, dp: int, seg, packed: bool = False):
    """Views of ``m`` along ``dim`` for one class: ``[full tiles as (k, t) or None, edge or None]``.

    ``packed`` is the compact side, where the class's tiles sit contiguously at the front.
    """
    count, edge, _ = seg
    full = count if packed else m.shape[dim] // t
    views = [None, None]
    if count:
        v = m.narrow(dim, 0, full * t).unflatten(dim, (full, t))
        if not packed:
            idx = [slice(None)] * v.dim()
            idx[dim] = slice(cls, None, dp)
            v = v[tuple(idx)]
        views[0] = v
    if edge:
        views[1] = m.narrow(dim, full * t, edge)
    return views


def _block_views_of(m: torch.Tensor, t: int, a: int, c: int, dp: int, rseg, cseg, packed: bool = False):
    """Matching pieces (full x full, full x edge, edge x full, edge x edge) of a class block."""
    out = []
    for rv in _dim_views_of(m, 0, t, a, dp, rseg, packed):
        if rv is None:
            out += [None, None]
        else:  # a (k, t, cols) full-tile-row view has its columns at dim 2, an edge at dim 1
            out += _dim_views_of(rv, rv.dim() - 1, t, c, dp, cseg, packed)
    return out


@lru_cache(maxsize=8192)
def _geometry(fn, shape: tuple, stride: tuple, args: tuple):
    """(size, stride, offset) of each view ``fn`` cuts from a tensor of this geometry.

    Why: a step cuts the same few dozen views from the same weights, buffers and
    gradients; building them with narrow/unflatten/slicing costs more Python time than
    some of the small copies they feed. The geometry is worked out once on a meta tensor.
    """
    views = fn(torch.empty_strided(shape, stride, device="meta"), *args)
    return tuple(None if v is None else (tuple(v.shape), v.stride(), v.storage_offset()) for v in views)


def _cut(m: torch.Tensor, fn, *args) -> list:
    base = m.storage_offset()
    return [None if g is None else m.as_strided(g[0], g[1], base + g[2])
            for g in _geometry(fn, tuple(m.shape), m.stride(), args)]


def _dim_views(m: torch.Tensor, dim: int, t: int, cls: int, dp: int, seg, packed: bool = False):
    return _cut(m, _dim_views_of, dim, t, cls, dp, seg, packed)


def _block_views(m: torch.Tensor, t: int, a: int, c: int, dp: int, rseg, cseg, packed: bool = False):
    return _cut(m, _block_views_of, t, a, c, dp, rseg, cseg, packed)


def _copy_blocks(dst_views, src_views) -> None:
    for d, s in zip(dst_views, src_views):
        if d is not None:
            d.copy_(s)


class _TileClass:
    """One residue class: tile-rows ``a (mod dp)`` meet tile-columns ``c = offset - a (mod dp)``."""

    __slots__ = ("a", "c", "rseg", "cseg")

    def __init__(self, a, c, rseg, cseg):
        self.a, self.c, self.rseg, self.cseg = a, c, rseg, cseg


@lru_cache(maxsize=1024)
def _classes(out_features: int, in_features: int, t: int, dp: int, offset: int):
    """(classes with kept tiles, row classes whose rows meet no kept tile at all)."""
    classes, empty_rows = [], []
    for a in range(dp):
        c = (offset - a) % dp
        rseg = _segments(out_features, t, a, dp)
        cseg = _segments(in_features, t, c, dp)
        if rseg[2] and cseg[2]:
            classes.append(_TileClass(a, c, rseg, cseg))
        elif rseg[2]:
            empty_rows.append((a, rseg))
    return tuple(classes), tuple(empty_rows)


def _gather(m: torch.Tensor, t: int, cls: int, dp: int, seg) -> torch.Tensor:
    """Columns of tile class ``cls`` of a 2-D tensor, packed contiguously."""
    out = m.new_empty(m.shape[0], seg[2])
    _copy_blocks(_dim_views(out, 1, t, 0, 1, seg, True), _dim_views(m, 1, t, cls, dp, seg))
    return out


def _scatter(dst: torch.Tensor, src: torch.Tensor, t: int, cls: int, dp: int, seg) -> None:
    _copy_blocks(_dim_views(dst, 1, t, cls, dp, seg), _dim_views(src, 1, t, 0, 1, seg, True))


def _mm(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.addmm(a.new_zeros(()), a, b, beta=0, alpha=alpha)


def _zero_tiles(buf: torch.Tensor, region) -> None:
    """Zero the kept tiles of an earlier step's pattern ``(dp, offset, tile)`` (1/dp of ``buf``)."""
    dp, offset, t = region
    if native.tile_zero_(buf, t, dp, offset):
        return
    for v in tile_region(buf.shape[0], buf.shape[1], t, dp, offset).views(buf):
        v.zero_()


register_views(_zero_tiles, lambda buf, key: tile_region(buf.shape[0], buf.shape[1], key[2], key[0], key[1]).views(buf))


@lru_cache(maxsize=1024)
def tile_region(out_features: int, in_features: int, t: int, dp: int, offset: int) -> Region:
    """The kept tiles, for a `LazySGD` to update only those (whole tile rows, never split cache lines)."""
    classes, _ = _classes(out_features, in_features, t, dp, offset)

    def views(m):
        return [v for k in classes for v in _block_views(m, t, k.a, k.c, dp, k.rseg, k.cseg) if v is not None]

    def fused_axpy2(w, b, g, kw, kb):
        return native.tile_axpy2_(w, b, g, kw, kb, t, dp, offset)

    return Region(("tile", dp, offset, t), views, fused_axpy2=fused_axpy2)


class _TileLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, dp, offset, t, scale, relu, w_cur, b_cur):
        out_features, in_features = weight.shape
        classes, empty_rows = _classes(out_features, in_features, t, dp, offset)
        if b_cur is not None:
            bias = b_cur.new(lambda m: m)  # current values (a LazySGD's pending update folded in)
        batch = x.shape[0]
        # rows meeting no kept tile (only when dp > tile columns) output just the bias
        y = x.new_zeros(batch, out_features) if empty_rows else x.new_empty(batch, out_features)
        saved = []
        for k in classes:
            wk = weight.new_empty(k.rseg[2], k.cseg[2])
            packed = _block_views(wk, t, 0, 0, 1, k.rseg, k.cseg, True)
            if w_cur is not None:
                w_cur.copy(packed, lambda m, k=k: _block_views(m, t, k.a, k.c, dp, k.rseg, k.cseg))
            else:
                _copy_blocks(packed, _block_views(weight, t, k.a, k.c, dp, k.rseg, k.cseg))
            xc = _gather(x, t, k.c, dp, k.cseg)
            _scatter(y, _mm(xc, wk.t(), scale), t, k.a, dp, k.rseg)
            saved += [wk, xc]
        if bias is not None:  # one pass over y, not a gather per class
            y.add_(bias)
        if relu:
            y.relu_()
        ctx.save_for_backward(x, weight, y if relu else None, *saved)
        ctx.cfg = (dp, offset, t, scale, relu, bias is not None)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, y, *saved = ctx.saved_tensors
        dp, offset, t, scale, relu, has_bias = ctx.cfg
        classes, _ = _classes(weight.shape[0], weight.shape[1], t, dp, offset)
        gz = torch.ops.aten.threshold_backward(grad_y, y, 0) if relu else grad_y
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        # grad_x columns of a class with no kept tile stay zero; zero-fill only then.
        full_cover = sum(k.cseg[2] for k in classes) == x.shape[1]
        gx = (x.new_empty(x.shape) if full_cover else x.new_zeros(x.shape)) if need_x else None
        gw = gradient_buffer(weight, (dp, offset, t), _zero_tiles) if need_w else None
        norms = [] if need_w and grad_buffers.norms_wanted else None
        for n, k in enumerate(classes):
            wk, xc = saved[2 * n], saved[2 * n + 1]
            gzk = _gather(gz, t, k.a, dp, k.rseg)
            if need_x:
                _scatter(gx, _mm(gzk, wk, scale), t, k.c, dp, k.cseg)
            if need_w:
                gwk = _mm(gzk.t(), xc, scale)  # exactly the class's kept elements, packed
                _copy_blocks(_block_views(gw, t, k.a, k.c, dp, k.rseg, k.cseg),
                             _block_views(gwk, t, 0, 0, 1, k.rseg, k.cseg, True))
                if norms is not None:  # while it is in cache, for a gradient clip
                    norms.append(torch.linalg.vector_norm(gwk))
        if need_w:
            seal(weight, gw, torch.linalg.vector_norm(torch.stack(norms)) if norms else None)
        gb = gz.sum(0) if has_bias and need_b else None
        return gx, gw, gb, None, None, None, None, None, None, None


def _torch_tile(x2, weight, bias, dp, offset, tile, scale, relu):
    """The torch path on its own (no LazySGD involved): the autotuner's other side."""
    return _TileLinear.apply(x2, weight, bias, dp, offset, tile, scale, relu, None, None)


@autocast_linear
def tile_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dp: int,
    offset: int,
    tile: int = 32,
    scale: float | None = None,
    relu: bool = False,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """``act(x @ (scale * W * M).T + b)`` with ``M`` the tile mask, multiplying kept tiles only.

    ``scale=None`` uses the pattern's exact inverted-dropout scale ``out*in / kept``.
    The weight gradient is full-size and exactly zero on dropped tiles.
    """
    check_linear_args(x, weight, bias)
    check_backend(backend)
    check_int("tile size", tile, 1)
    out_features, in_features = weight.shape
    pattern = Pattern("tile", dp, offset, tile)  # validates dp, offset
    max_dp = Pattern.max_tile_dp(out_features, in_features, tile)
    if dp > max_dp:
        raise ValueError(
            f"tile pattern dp={dp} exceeds {max_dp}, the number of {tile}x{tile} tile diagonals of a "
            f"{out_features}x{in_features} weight; search with max_dp <= {max_dp}"
        )
    scale = pattern.tile_scale(out_features, in_features) if scale is None else check_scale("scale", scale)
    if x.shape[-1] != in_features:
        raise ValueError(
            f"input has {x.shape[-1]} features but the layer expects in_features={in_features} "
            "(a tile-dropped layer takes a dense input)"
        )
    relu = bool(relu)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features)
    y = run_kernels("tile_linear_cuda", "tile", _torch_tile, x2, weight, bias, (dp, offset, tile, scale, relu), backend)
    if y is None:  # the eager torch path: a LazySGD learns where this step's gradient lives
        w_cur = before_read(weight, tile_region(out_features, in_features, tile, dp, offset))
        b_cur = before_read(bias, DENSE)
        y = _TileLinear.apply(x2, weight, bias, dp, offset, tile, scale, relu, w_cur, b_cur)
    return y.reshape(*lead, out_features)
