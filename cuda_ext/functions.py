"""Autograd wrappers around the CUDA kernels.

Holds: ``compact_linear_with`` / ``tile_linear_with`` (an explicit extension module: the
self-check, the emulator tests) and ``compact_linear_cuda`` / ``tile_linear_cuda`` (the
module ``loader.load()`` built). Imports: torch, stdlib and ``cuda_ext.loader``.

They compute exactly ``ardrop.functional.compact_linear`` / ``tile_linear`` (see
docs/architecture.md), so the core can dispatch CUDA tensors here. They are ordinary
``torch.autograd.Function``s: gradients reach ``param.grad`` through autograd (DDP,
clipping, AMP scaling and optimizers see them), grad-input is skipped when the input
needs no gradient (first layer), and the tensors saved for backward are the compact
ones. Under CUDA autocast the operands are cast to the autocast dtype first, like
``F.linear``, so the kernels see one dtype and the casts' backward returns fp32
gradients to fp32 parameters.

Arguments are checked once, where they enter: ``ardrop.functional``'s ops check shapes,
patterns and scales with messages that name the fix, and they are the only caller that
reaches here with a pattern. What only the kernels require is checked here (CUDA
tensors, the three kernel dtypes), and the binding's ``TORCH_CHECK``s refuse anything
that would index out of bounds, whoever calls.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from . import loader

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _device_ctx(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0


def _prepare(op: str, ext: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """What only the kernels require: device tensors (host ones for the emulator), autocast's
    casts, and one of the kernel dtypes; returns (x, weight, bias)."""
    emulated = bool(getattr(ext, "emulated", False))
    tensors = [("x", x), ("weight", weight)] + ([("bias", bias)] if bias is not None else [])
    for name, t in tensors:
        if not t.is_cuda and not emulated:
            raise ValueError(
                f"{op}: {name} is on {t.device}; the CUDA kernels need CUDA tensors "
                "(use ardrop.functional for CPU tensors)"
            )
    if x.is_cuda and torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    for name, t in tensors:
        if t.dtype not in _DTYPES:
            raise ValueError(f"{op}: {name} has dtype {t.dtype}; use float32, float16 or bfloat16")
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
    x, weight, bias = _prepare("compact_linear_cuda", ext, x, weight, bias)
    geom = (out_dp, out_offset, in_dp, in_offset, float(in_scale), float(out_scale))
    lead = x.shape[:-1]
    with _no_autocast(x):
        y = _ExtLinearFn.apply(x.reshape(-1, x.shape[-1]), weight, bias, ext, "row", geom, bool(relu))
    return y.reshape(*lead, y.shape[-1])


def tile_linear_with(ext, x, weight, bias, dp, offset, tile, scale, relu=False):
    """tile_linear on an explicit extension module (the self-check and tests use it).

    ``scale`` is required: the exact inverted-dropout ratio is ``Pattern.tile_scale``'s,
    which ``ardrop.functional.tile_linear`` resolves before it dispatches here.
    """
    if tile > 2**30:  # the kernels' int index arithmetic (tile * tile index) must not overflow
        raise ValueError(f"tile_linear_cuda: tile={tile} is too large; use tile <= 2**30")
    x, weight, bias = _prepare("tile_linear_cuda", ext, x, weight, bias)
    lead = x.shape[:-1]
    with _no_autocast(x):
        y = _ExtLinearFn.apply(x.reshape(-1, x.shape[-1]), weight, bias, ext, "tile",
                                (dp, offset, tile, float(scale)), bool(relu))
    return y.reshape(*lead, y.shape[-1])


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


def tile_linear_cuda(x, weight, bias, dp, offset, tile, scale, relu=False):
    """``tile_linear`` on the CUDA kernels (builds them on first use).

    y = act(x @ (scale * weight * M).T + bias) with M the tile mask of
    Pattern("tile", dp, offset, tile); only kept tiles are loaded and multiplied, and
    dropped tiles get an exactly zero weight gradient. ``scale`` is the caller's
    (``Pattern.tile_scale`` for exact inverted dropout).
    """
    return tile_linear_with(loader.load(), x, weight, bias, dp, offset, tile, scale, relu)
