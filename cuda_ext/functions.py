"""Autograd wrappers around the CUDA kernels.

``compact_linear_cuda`` and ``tile_linear_cuda`` have exactly the signatures and
semantics of ``ardrop.functional.compact_linear`` / ``tile_linear`` (see
docs/architecture.md), so the core can dispatch CUDA tensors here. They are ordinary
``torch.autograd.Function``s: gradients reach ``param.grad`` through autograd (DDP,
clipping, AMP scaling and optimizers see them), grad-input is skipped when the input
needs no gradient (first layer), and the tensors saved for backward are the compact
ones. Under CUDA autocast the operands are cast to the autocast dtype first, like
``F.linear``, so the kernels see one dtype and the casts' backward returns fp32
gradients to fp32 parameters.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from . import loader

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _device_ctx(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _check_pattern(prefix: str, dp: Any, offset: Any) -> None:
    _check_int(f"{prefix}dp", dp, 1)
    _check_int(f"{prefix}offset", offset, 0)
    if offset >= dp:
        raise ValueError(f"{prefix}offset={offset} must be < {prefix}dp={dp} (offsets are 0..dp-1)")


def _check_scale(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive float, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be finite and > 0 (a total/kept ratio), got {value!r}")
    return v


def _prepare(op: str, ext: Any, x: Any, weight: Any, bias: Any):
    """Validates tensors, applies autocast casting; returns (x, weight, bias)."""
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise ValueError(f"{op}: bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if x.dim() < 1 or weight.dim() != 2:
        raise ValueError(
            f"{op}: x must be [..., features] and weight [out, in]; got x {tuple(x.shape)}, "
            f"weight {tuple(weight.shape)}"
        )
    emulated = bool(getattr(ext, "emulated", False))
    tensors = [("x", x), ("weight", weight)] + ([("bias", bias)] if bias is not None else [])
    for name, t in tensors:
        if not t.is_cuda and not emulated:
            raise ValueError(
                f"{op}: {name} is on {t.device}; the CUDA kernels need CUDA tensors "
                "(use ardrop.functional for CPU tensors)"
            )
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(
            f"{op}: bias must have shape [{weight.shape[0]}] (out_features), got {tuple(bias.shape)}"
        )
    if x.is_cuda and torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    for name, t in tensors:
        if t.dtype not in _DTYPES:
            raise ValueError(f"{op}: {name} has dtype {t.dtype}; use float32, float16 or bfloat16")
    dtypes = {t.dtype for t in (x, weight) + ((bias,) if bias is not None else ())}
    if len(dtypes) != 1:
        raise ValueError(
            f"{op}: x, weight and bias must share one dtype, got "
            f"{sorted(str(d) for d in dtypes)}; cast them or run under torch.autocast"
        )
    return x, weight, bias


class _ExtLinearFn(torch.autograd.Function):
    """One wrapper for both kernels: ``op`` is "row" or "tile", whose binding functions
    ``{op}_forward(x, w, b, *geom, relu, stream)`` and ``{op}_backward(...)`` share a shape."""

    @staticmethod
    def forward(ctx, x, weight, bias, ext, op, geom, relu):
        with _device_ctx(x):
            y = getattr(ext, f"{op}_forward")(x, weight, bias, *geom, relu, _stream(x))
        ctx.ext, ctx.op, ctx.geom, ctx.relu, ctx.has_bias = ext, op, geom, relu, bias is not None
        ctx.save_for_backward(x, weight, y if relu else None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, weight, y = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        with _device_ctx(grad_y):
            gx, gw, gb = getattr(ctx.ext, f"{ctx.op}_backward")(
                grad_y, y, x, weight, *ctx.geom, ctx.relu,
                need_x, need_w, need_b and ctx.has_bias, _stream(grad_y))
        return gx, gw, gb, None, None, None, None


def _no_autocast(x: torch.Tensor):
    return torch.autocast("cuda", enabled=False) if x.is_cuda else contextlib.nullcontext()


def compact_linear_with(ext, x, weight, bias, out_dp, out_offset, in_dp, in_offset,
                        in_scale=1.0, out_scale=1.0, relu=False):
    """compact_linear on an explicit extension module (the self-check and tests use it)."""
    op = "compact_linear_cuda"
    _check_pattern("out_", out_dp, out_offset)
    _check_pattern("in_", in_dp, in_offset)
    in_scale = _check_scale("in_scale", in_scale)
    out_scale = _check_scale("out_scale", out_scale)
    x, weight, bias = _prepare(op, ext, x, weight, bias)
    out_f, in_f = weight.shape
    if out_offset >= out_f:
        raise ValueError(
            f"{op}: out_offset={out_offset} keeps no output rows of {out_f}; "
            f"use a pattern with dp <= out_features"
        )
    if in_offset >= in_f:
        raise ValueError(
            f"{op}: in_offset={in_offset} keeps no input columns of {in_f}; "
            f"use a pattern with dp <= in_features"
        )
    n_in = len(range(in_offset, in_f, in_dp))
    if x.shape[-1] != n_in:
        raise ValueError(
            f"{op}: x has {x.shape[-1]} columns but the input pattern (dp={in_dp}, "
            f"offset={in_offset}) keeps {n_in} of {in_f}; pass the compact input "
            "(the previous row-dropped layer's output) or in_dp=1 for a dense input"
        )
    geom = (out_dp, out_offset, in_dp, in_offset, in_scale, out_scale)
    lead = x.shape[:-1]
    with _no_autocast(x):
        y = _ExtLinearFn.apply(x.reshape(-1, n_in), weight, bias, ext, "row", geom, bool(relu))
    return y.reshape(*lead, y.shape[-1])


def kept_tile_elements(out_f: int, in_f: int, dp: int, offset: int, tile: int) -> int:
    """Number of weights in kept tiles: sum over tile pairs of the (ragged) tile areas."""
    rows = [min(tile, out_f - i * tile) for i in range(-(-out_f // tile))]
    cols = [min(tile, in_f - j * tile) for j in range(-(-in_f // tile))]
    return sum(r * c for i, r in enumerate(rows) for j, c in enumerate(cols)
               if (i + j) % dp == offset)


def tile_linear_with(ext, x, weight, bias, dp, offset, tile=32, scale=None, relu=False):
    """tile_linear on an explicit extension module (the self-check and tests use it)."""
    op = "tile_linear_cuda"
    _check_pattern("", dp, offset)
    _check_int("tile", tile, 1)
    if tile > 2**30:
        raise ValueError(f"{op}: tile={tile} is too large; use tile <= 2**30")
    x, weight, bias = _prepare(op, ext, x, weight, bias)
    out_f, in_f = weight.shape
    if scale is None:  # the exact inverted-dropout ratio, as in ardrop.functional
        kept = kept_tile_elements(out_f, in_f, dp, offset, tile)
        if kept == 0:
            raise ValueError(
                f"{op}: tile pattern dp={dp} offset={offset} keeps no tile of a {out_f}x{in_f} "
                f"weight with tile={tile}; use dp <= the number of tile diagonals"
            )
        scale = out_f * in_f / kept
    scale = _check_scale("scale", scale)
    if x.shape[-1] != in_f:
        raise ValueError(
            f"{op}: x has {x.shape[-1]} features but weight expects {in_f} "
            "(tile_linear takes the dense input)"
        )
    lead = x.shape[:-1]
    with _no_autocast(x):
        y = _ExtLinearFn.apply(x.reshape(-1, in_f), weight, bias, ext, "tile", (dp, offset, tile, scale),
                                bool(relu))
    return y.reshape(*lead, out_f)


def compact_linear_cuda(x, weight, bias, out_dp, out_offset, in_dp, in_offset,
                        in_scale=1.0, out_scale=1.0, relu=False):
    """``compact_linear`` on the CUDA kernels (builds them on first use).

    y = act(in_scale * x @ weight[O][:, I].T + bias[O]) * out_scale with
    O = range(out_offset, out_features, out_dp), I = range(in_offset, in_features, in_dp);
    x is compact [..., len(I)], y compact [..., len(O)]. Weight/bias gradients are
    full-size and exactly zero outside O x I / O. Raises
    ``loader.CudaExtUnavailable`` when the kernels cannot be used here.
    """
    return compact_linear_with(loader.load(), x, weight, bias, out_dp, out_offset, in_dp,
                               in_offset, in_scale, out_scale, relu)


def tile_linear_cuda(x, weight, bias, dp, offset, tile=32, scale=None, relu=False):
    """``tile_linear`` on the CUDA kernels (builds them on first use).

    y = act(x @ (scale * weight * M).T + bias) with M the tile mask of
    Pattern("tile", dp, offset, tile); only kept tiles are loaded and multiplied, and
    dropped tiles get an exactly zero weight gradient. ``scale=None`` is the exact
    ratio out*in / kept weights.
    """
    return tile_linear_with(loader.load(), x, weight, bias, dp, offset, tile, scale, relu)
