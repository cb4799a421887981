"""Several patterns in one step: each group of samples (or time steps) has its own offset.

Why (docs/learning.md): with one pattern for the whole batch, every sample drops the same
units, so a kept weight's gradient is ``dp`` times the dense one and a dropped weight's is
zero; the update is as coherent as a single sample's and training with the usual learning
rates diverges (the LSTM LM at lr 1). Bernoulli dropout draws a mask per element, and a
Bernoulli mask shared by the whole batch and all time steps diverges the same way, while
one that changes every time step trains like ordinary dropout. So a step here uses ``dp``
offsets of the same ``dp``: along a *group axis* (dim 0: time steps of the LSTM, samples
of the MLP) element ``u`` belongs to group ``g = u mod G`` and uses offset ``(offset + g) mod dp``.
With ``G = dp`` every unit is kept by exactly one group, every weight gets a gradient of
the dense gradient's size, and each group's GEMMs still skip ``(dp-1)/dp`` of the work.

A group is a strided slice ``x[start::stride]`` of the group axis. Its kept block of the
weight is gathered once per step (the gathers of all groups together read the weight
about once), and the weight gradient is one full-size tensor that every group's block
is written into: blocks of distinct groups are disjoint, so nothing is zero-filled and
then added, as separate calls per group would.

Semantics per element are those of the single-pattern ops (masked references in
`ardrop.functional.reference`: ``grouped_linear_reference``, ``grouped_tile_linear_reference``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from ardrop.functional._common import autocast_linear, check_linear_args, check_pattern, check_scale
from ardrop.functional.compact import _scaled_mm
from ardrop.functional.tile import _block_views, _classes, _copy_blocks, _gather, _mm, _scatter
from ardrop.contract.param_reads import flush_params
from ardrop.patterns import Pattern


@dataclass(frozen=True)
class Group:
    """Elements ``start::stride`` of the group axis, and the pattern they use.

    Row ops: output rows ``out_offset::out_dp`` (scaled by ``out_scale``) from input
    columns ``in_offset::in_dp`` (scaled by ``in_scale``). Tile ops use ``out_dp`` and
    ``out_offset`` as the tile pattern's dp and offset and ``out_scale`` as its scale.
    """

    start: int
    stride: int
    out_dp: int = 1
    out_offset: int = 0
    in_dp: int = 1
    in_offset: int = 0
    in_scale: float = 1.0
    out_scale: float = 1.0

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.start::self.stride]


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def _check_groups(x: torch.Tensor, groups) -> None:
    if not groups:
        raise ValueError("grouped ops need at least one group")
    seen = set()
    for g in groups:
        if not isinstance(g, Group):
            raise ValueError(f"groups must be ardrop.functional.Group objects, got {type(g).__name__}")
        if g.stride < 1 or not 0 <= g.start < max(g.stride, 1):
            raise ValueError(f"group start {g.start} must be in 0..stride-1 with stride >= 1, got stride {g.stride}")
        if g.stride != groups[0].stride:
            raise ValueError("all groups of one call must share the same stride")
        if g.start in seen:
            raise ValueError(f"two groups select the same elements (start {g.start}); merge them")
        seen.add(g.start)
    if x.dim() < 2:
        raise ValueError(f"grouped ops need a group axis (dim 0) and features (last dim), got shape {tuple(x.shape)}")


def _check_call(x, weight, bias, groups) -> tuple[int, int]:
    """The checks both grouped ops make before any kernel; returns ``(out_features, in_features)``."""
    check_linear_args(x, weight, bias)
    _check_groups(x, list(groups))
    out_features, in_features = weight.shape
    if x.shape[-1] != in_features:
        raise ValueError(f"input has {x.shape[-1]} features but the layer expects in_features={in_features}")
    return out_features, in_features


def _covers(groups, out_features: int, in_features: int) -> bool:
    """Whether the groups' distinct kept blocks tile the whole weight (then nothing needs zero-filling).

    One call has one ``out_dp`` and one ``in_dp`` (one per site and step), so blocks with
    distinct keys are disjoint and their sizes add up.
    """
    keys = {(g.out_dp, g.out_offset, g.in_dp, g.in_offset) for g in groups}
    total = sum(len(range(o, out_features, od)) * len(range(i, in_features, idp)) for od, o, idp, i in keys)
    return total == out_features * in_features


class _GroupedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups, relu):
        out_features = weight.shape[0]
        dense_out = all(g.out_dp == 1 for g in groups)  # every output column written: no zero fill
        y = x.new_empty(*x.shape[:-1], out_features) if dense_out else x.new_zeros(*x.shape[:-1], out_features)
        saved, blocks = [], {}
        for g in groups:
            key = (g.out_dp, g.out_offset, g.in_dp, g.in_offset)
            wk = blocks.get(key)
            if wk is None:  # groups that share a block share its gather
                wk = blocks[key] = weight[g.out_offset::g.out_dp, g.in_offset::g.in_dp].contiguous()
            xg = _flat(g.rows(x)[..., g.in_offset::g.in_dp])
            alpha = g.in_scale * g.out_scale
            if bias is not None:
                z = torch.addmm(bias[g.out_offset::g.out_dp], xg, wk.t(), beta=g.out_scale, alpha=alpha)
            else:
                z = _scaled_mm(xg, wk.t(), alpha)
            if relu:
                z.relu_()
            g.rows(y)[..., g.out_offset::g.out_dp] = z.view(*g.rows(y).shape[:-1], -1)
            saved += [xg, wk, z]
        ctx.save_for_backward(*saved)
        ctx.cfg = (groups, relu, bias is not None, tuple(x.shape), tuple(weight.shape))
        return y

    @staticmethod
    def backward(ctx, grad_y):
        groups, relu, has_bias, x_shape, w_shape = ctx.cfg
        saved = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dense_in = all(g.in_dp == 1 for g in groups)  # every input column written: no zero fill
        gx = (grad_y.new_empty(x_shape) if dense_in else grad_y.new_zeros(x_shape)) if need_x else None
        gw = gb = None
        if need_w:  # blocks of distinct keys are disjoint: zero-fill only what none of them covers
            gw = grad_y.new_empty(w_shape) if _covers(groups, *w_shape) else grad_y.new_zeros(w_shape)
        if has_bias and need_b:
            rows_covered = sum(len(range(o, w_shape[0], d)) for d, o in {(g.out_dp, g.out_offset) for g in groups})
            gb = grad_y.new_empty(w_shape[0]) if rows_covered == w_shape[0] else grad_y.new_zeros(w_shape[0])
        written_w, written_b = set(), set()
        for n, g in enumerate(groups):
            xg, wk, z = saved[3 * n: 3 * n + 3]
            gz = _flat(g.rows(grad_y)[..., g.out_offset::g.out_dp])
            if relu:
                gz = torch.ops.aten.threshold_backward(gz, z, 0)
            alpha = g.in_scale * g.out_scale
            if need_x:
                gxg = g.rows(gx)[..., g.in_offset::g.in_dp]
                gxg.copy_(_scaled_mm(gz, wk, alpha).view(gxg.shape))
            if need_w:  # the first group of a block writes it, later ones (same offsets) add
                key = (g.out_dp, g.out_offset, g.in_dp, g.in_offset)
                dst = gw[g.out_offset::g.out_dp, g.in_offset::g.in_dp]
                if key in written_w:
                    dst.add_(gz.t() @ xg, alpha=alpha)
                else:
                    dst.copy_(_scaled_mm(gz.t(), xg, alpha))
                    written_w.add(key)
            if gb is not None:
                key = (g.out_dp, g.out_offset)
                dst = gb[g.out_offset::g.out_dp]
                if key in written_b:
                    dst.add_(gz.sum(0), alpha=g.out_scale)
                else:
                    dst.copy_(gz.sum(0) if g.out_scale == 1.0 else gz.sum(0).mul_(g.out_scale))
                    written_b.add(key)
        return gx, gw, gb, None, None


@autocast_linear
def grouped_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups, relu: bool = False):
    """Row patterns, one per group: ``y[G] = act(in_scale * x[G][..., I] @ W[O][:, I].T + b[O]) * out_scale``.

    ``x`` has full width (columns outside a group's ``I`` are never read) and ``y`` too,
    exactly zero outside each group's ``O``. Gradients are full-size, zero outside the
    groups' blocks. The weight is read densely over the step (every group reads its own
    block), so a `LazySGD` gives it dense steps.
    """
    out_features, in_features = _check_call(x, weight, bias, groups)
    for g in groups:
        check_pattern("output (row)", g.out_dp, g.out_offset, out_features)
        check_pattern("input (column)", g.in_dp, g.in_offset, in_features)
        check_scale("in_scale", g.in_scale)
        check_scale("out_scale", g.out_scale)
    flush_params(weight, bias)  # reads stored values: they must be current
    return _GroupedLinear.apply(x, weight, bias, tuple(groups), bool(relu))


class _GroupedTileLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups, t, relu):
        out_features, in_features = weight.shape
        y = x.new_zeros(*x.shape[:-1], out_features)
        saved = []
        for g in groups:
            dp, offset, scale = g.out_dp, g.out_offset, g.out_scale
            classes, _ = _classes(out_features, in_features, t, dp, offset)
            xg = _flat(g.rows(x))
            yg = xg.new_zeros(xg.shape[0], out_features)
            for k in classes:
                wk = weight.new_empty(k.rseg[2], k.cseg[2])
                _copy_blocks(_block_views(wk, t, 0, 0, 1, k.rseg, k.cseg, True),
                             _block_views(weight, t, k.a, k.c, dp, k.rseg, k.cseg))
                xc = _gather(xg, t, k.c, dp, k.cseg)
                _scatter(yg, _mm(xc, wk.t(), scale), t, k.a, dp, k.rseg)
                saved += [wk, xc]
            if bias is not None:
                yg.add_(bias)
            if relu:
                yg.relu_()
            g.rows(y).copy_(yg.view(g.rows(y).shape))
            saved.append(yg)
        ctx.save_for_backward(*saved)
        ctx.cfg = (groups, t, relu, bias is not None, tuple(x.shape), tuple(weight.shape))
        return y

    @staticmethod
    def backward(ctx, grad_y):
        groups, t, relu, has_bias, x_shape, w_shape = ctx.cfg
        saved = list(ctx.saved_tensors)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = grad_y.new_zeros(x_shape) if need_x else None
        offsets = [g.out_offset for g in groups]
        # Every tile lies on exactly one diagonal class: when the groups' offsets are all of
        # one dp's, their kept tiles tile the weight and nothing needs zero-filling.
        covered = len({g.out_dp for g in groups}) == 1 and sorted(set(offsets)) == list(range(groups[0].out_dp))
        gw = (grad_y.new_empty(w_shape) if covered else grad_y.new_zeros(w_shape)) if need_w else None
        gb = grad_y.new_zeros(w_shape[0]) if has_bias and need_b else None
        written = set()
        pos = 0
        for g in groups:
            dp, offset, scale = g.out_dp, g.out_offset, g.out_scale
            classes, _ = _classes(w_shape[0], w_shape[1], t, dp, offset)
            yg = saved[pos + 2 * len(classes)]
            gz = _flat(g.rows(grad_y))
            if relu:
                gz = torch.ops.aten.threshold_backward(gz, yg, 0)
            gxg = gz.new_zeros(gz.shape[0], x_shape[-1]) if need_x else None
            for n, k in enumerate(classes):
                wk, xc = saved[pos + 2 * n], saved[pos + 2 * n + 1]
                gzk = _gather(gz, t, k.a, dp, k.rseg)
                if need_x:
                    _scatter(gxg, _mm(gzk, wk, scale), t, k.c, dp, k.cseg)
                if need_w:  # tiles of distinct offsets are disjoint: the first write copies
                    first = offset not in written
                    for d, s in zip(_block_views(gw, t, k.a, k.c, dp, k.rseg, k.cseg),
                                    _block_views(_mm(gzk.t(), xc, scale), t, 0, 0, 1, k.rseg, k.cseg, True)):
                        if d is not None:
                            d.copy_(s) if first else d.add_(s)
            if need_x:
                g.rows(gx).copy_(gxg.view(g.rows(gx).shape))
            if gb is not None:
                gb.add_(gz.sum(0))
            written.add(offset)
            pos += 2 * len(classes) + 1
        return gx, gw, gb, None, None, None


@lru_cache(maxsize=256)
def _pair_index(dp: int, offsets: tuple) -> tuple:
    """Per (tile-row class a, group g) pair: a, g, and the tile-column class c = (offset_g - a) mod dp."""
    count = len(offsets)
    a = torch.arange(dp).repeat_interleave(count)
    g = torch.arange(count).repeat(dp)
    c = (torch.tensor(offsets)[g] - a) % dp
    every_tile = len(set(offsets)) == dp  # each (a, c) pair once: the weight gradient is a permutation
    return a, g, c, every_tile


def _pad_to(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    if t.shape == (rows, cols):
        return t
    out = t.new_zeros(rows, cols)
    out[: t.shape[0], : t.shape[1]] = t
    return out


class _GroupedTileBatched(torch.autograd.Function):
    """All groups' kept tiles in one batched GEMM: one problem per (tile-row class, group) pair.

    Why: group ``g`` multiplies tile-row class ``a`` of the weight only by its tile-column
    class ``c = (offset_g - a) mod dp``, a dense ``(rows of a) x (columns of c)`` block. The
    weight and input are zero-padded to whole ``tile * dp`` blocks, so every class has the
    same size and all ``dp * G`` blocks are one strided gather each of ``W`` and ``x``, one
    ``bmm``, and one scatter, instead of ``dp * G`` gathers, GEMMs and scatters from Python.
    The padded zeros add nothing, and padded outputs are cut off. Only kept tiles are multiplied.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, dp, offsets, scales, t, relu):
        count, n, n_out, n_in = len(offsets), x.shape[0], weight.shape[0], weight.shape[1]
        rest = x.shape[1:-1]
        r = math.prod(rest)
        blk = t * dp
        mo, m = -(-n_out // blk), -(-n_in // blk)
        nq = -(-n // count)
        a, g, c, every_tile = _pair_index(dp, offsets)
        pairs = a.numel()
        xp = x.new_zeros(nq * count, r, m * blk)
        xp[:n, :, :n_in] = x.reshape(n, r, n_in)
        x_sel = xp.view(nq, count, r, m, dp, t)[:, g, :, :, c, :].reshape(pairs, nq * r, m * t)
        w_sel = _pad_to(weight, mo * blk, m * blk).view(mo, dp, t, m, dp, t)[:, a, :, :, c, :]
        w_sel = w_sel.reshape(pairs, mo * t, m * t)
        scale = x.new_tensor(scales)[g].view(pairs, 1, 1)
        z = torch.bmm(x_sel, w_sel.transpose(1, 2)).mul_(scale)
        yp = x.new_empty(nq, count, r, mo, dp, t)  # every (group, row class) pair is written
        yp[:, g, :, :, a, :] = z.view(pairs, nq, r, mo, t)
        y = yp.view(nq * count, r, mo * blk)[:n, :, :n_out]
        y = y + bias if bias is not None else y.clone()
        if relu:
            y.relu_()
        y = y.reshape(*x.shape[:-1], n_out)
        ctx.save_for_backward(x_sel, w_sel, scale, y if relu else None)
        ctx.cfg = (dp, offsets, t, relu, bias is not None, tuple(x.shape), tuple(weight.shape), every_tile)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x_sel, w_sel, scale, y = ctx.saved_tensors
        dp, offsets, t, relu, has_bias, x_shape, (n_out, n_in), every_tile = ctx.cfg
        count, n = len(offsets), x_shape[0]
        r = math.prod(x_shape[1:-1])
        blk = t * dp
        mo, m = -(-n_out // blk), -(-n_in // blk)
        nq = -(-n // count)
        a, g, c, _ = _pair_index(dp, offsets)
        pairs = a.numel()
        gz = torch.ops.aten.threshold_backward(grad_y, y, 0) if relu else grad_y
        gzp = gz.new_zeros(nq * count, r, mo * blk)
        gzp[:n, :, :n_out] = gz.reshape(n, r, n_out)
        gz_sel = gzp.view(nq, count, r, mo, dp, t)[:, g, :, :, a, :].reshape(pairs, nq * r, mo * t).mul_(scale)
        gx = gw = gb = None
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if need_x:  # group g's input class c meets exactly one row class: a permutation, no sums
            gxp = gz.new_empty(nq, count, r, m, dp, t)
            gxp[:, g, :, :, c, :] = torch.bmm(gz_sel, w_sel).view(pairs, nq, r, m, t)
            gx = gxp.view(nq * count, r, m * blk)[:n, :, :n_in].reshape(x_shape)
        if need_w:
            gwp = (gz.new_empty if every_tile else gz.new_zeros)(mo, dp, t, m, dp, t)
            gwp[:, a, :, :, c, :] = torch.bmm(gz_sel.transpose(1, 2), x_sel).view(pairs, mo, t, m, t)
            gw = gwp.view(mo * blk, m * blk)[:n_out, :n_in]
            gw = gw if gw.is_contiguous() else gw.contiguous()
        if has_bias and need_b:
            gb = gz.reshape(-1, n_out).sum(0)
        return gx, gw, gb, None, None, None, None, None


def _batched_layout(groups) -> bool:
    """The models' layout: groups ``g::G`` for g = 0..G-1, one dp, distinct offsets."""
    count = len(groups)
    return (all(gr.start == k and gr.stride == count for k, gr in enumerate(groups))
            and len({gr.out_dp for gr in groups}) == 1
            and len({gr.out_offset for gr in groups}) == count)


@autocast_linear
def grouped_tile_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups, tile: int = 32,
                        relu: bool = False):
    """Tile patterns, one per group: ``y[G] = act(x[G] @ (scale * W * M_G).T + b)``.

    Each group's ``out_dp``/``out_offset`` is its tile pattern and ``out_scale`` its exact
    inverted-dropout scale; only kept tiles are multiplied. Groups with distinct offsets
    of one dp keep disjoint tiles, so the weight gradient is written once per tile.
    """
    out_features, in_features = _check_call(x, weight, bias, groups)
    for g in groups:
        Pattern("tile", g.out_dp, g.out_offset, tile)
        max_dp = Pattern.max_tile_dp(out_features, in_features, tile)
        if g.out_dp > max_dp:
            raise ValueError(f"tile pattern dp={g.out_dp} exceeds {max_dp}, the number of tile diagonals")
        check_scale("scale", g.out_scale)
    flush_params(weight, bias)
    if _batched_layout(groups) and x.shape[0] >= len(groups):
        return _GroupedTileBatched.apply(x, weight, bias, groups[0].out_dp, tuple(g.out_offset for g in groups),
                                         tuple(float(g.out_scale) for g in groups), int(tile), bool(relu))
    return _GroupedTileLinear.apply(x, weight, bias, tuple(groups), int(tile), bool(relu))
