"""Row-dropped linear layer that never touches dropped rows or dropped input columns.

``compact_linear`` multiplies only the kept block ``W[O][:, I]`` (O = kept outputs,
I = kept inputs of a row-dropped producer), in forward, grad-input and grad-weight.
Kept rows are a leading-dimension-strided view of ``W``, which BLAS reads in place;
kept columns need one gather of the kept block only (``|O| * |I|`` elements).

The weight gradient is still handed to autograd as a full-size tensor, exactly zero
outside ``O x I``, because DDP buckets, clipping, AMP scalers and optimizers all expect
``param.grad`` to have the parameter's shape. It is a recycled buffer (see
`ardrop.contract.grad_buffers`): only the previous step's rows are re-zeroed, not the whole matrix.
The compact GEMM writes straight into a strided view of it when the view is
BLAS-compatible, so there is no second pass.
"""

from __future__ import annotations

import torch

from ardrop import native
from ardrop.functional._common import (
    autocast_linear,
    check_backend,
    check_linear_args,
    check_pattern,
    check_scale,
    run_kernels,
)
from ardrop.contract import grad_buffers
from ardrop.contract.grad_buffers import gradient_buffer, register_views, seal
from ardrop.contract.param_reads import LINE_FLOATS, before_read, rows_region


def _rows(t: torch.Tensor, dp: int, offset: int) -> torch.Tensor:
    """Rows ``offset, offset+dp, ...`` as a view (row stride ``dp * row``, inner stride 1)."""
    return t if dp == 1 else t[offset::dp]


def _zero_block_rows(buf: torch.Tensor, region) -> None:
    """Zero the rows of an earlier step's block (whole rows: strided columns touch every line anyway)."""
    _rows(buf, region[0], region[1]).zero_()


register_views(_zero_block_rows, lambda buf, key: [_rows(buf, key[0], key[1])])


def _rows_overwrite(dp: int, offset: int):
    """Whether writing whole rows ``offset::dp`` covers an earlier block of `_zero_block_rows`.

    Rows ``o'::d'`` lie within ``offset::dp`` iff ``dp`` divides ``d'`` and ``o' % dp == offset``;
    then re-zeroing them first would be a wasted pass (a dense step after any pattern, say).
    """
    def overwrites(earlier) -> bool:
        zeroer, key = earlier
        return zeroer is _zero_block_rows and key[0] % dp == 0 and key[1] % dp == offset

    return overwrites


def _kept_block(weight: torch.Tensor, current, out_dp, out_off, in_dp, in_off) -> torch.Tensor:
    """``W[O][:, I]``; ``current`` (from a LazySGD) folds the optimizer's pending update into the gather."""
    if current is not None:
        return current.new(lambda t: _rows(t, out_dp, out_off)[:, in_off::in_dp])
    rows = _rows(weight, out_dp, out_off)
    if in_dp == 1:
        return rows  # BLAS reads the strided rows in place
    return rows[:, in_off::in_dp].contiguous()  # gather of kept elements only


def _scaled_mm(a: torch.Tensor, b: torch.Tensor, alpha: float, out: torch.Tensor | None = None):
    """``alpha * a @ b`` in one GEMM (alpha folded into BLAS, no extra elementwise pass)."""
    if alpha == 1.0:
        return torch.mm(a, b, out=out) if out is not None else torch.mm(a, b)
    zero = a.new_zeros(())
    if out is not None:
        return torch.addmm(zero, a, b, beta=0, alpha=alpha, out=out)
    return torch.addmm(zero, a, b, beta=0, alpha=alpha)


class _CompactLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, out_dp, out_off, in_dp, in_off, in_scale, out_scale, relu, w_cur, b_cur):
        wk = _kept_block(weight, w_cur, out_dp, out_off, in_dp, in_off)
        alpha = in_scale * out_scale
        if bias is not None:
            bk = b_cur.new(lambda t: _rows(t, out_dp, out_off)) if b_cur is not None else _rows(bias, out_dp, out_off)
            # relu(z) * s == relu(z * s) for s > 0: scale folded into the GEMM's alpha/beta.
            y = torch.addmm(bk, x, wk.t(), beta=out_scale, alpha=alpha)
        else:
            y = _scaled_mm(x, wk.t(), alpha)
        if relu:
            y.relu_()
        ctx.save_for_backward(x, weight, wk, y if relu else None)
        ctx.cfg = (out_dp, out_off, in_dp, in_off, alpha, out_scale, relu, bias is not None)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, wk, y = ctx.saved_tensors
        out_dp, out_off, in_dp, in_off, alpha, out_scale, relu, has_bias = ctx.cfg
        gz = torch.ops.aten.threshold_backward(grad_y, y, 0) if relu else grad_y
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _scaled_mm(gz, wk, alpha)
        if ctx.needs_input_grad[1]:
            whole_rows = in_dp < LINE_FLOATS  # the write below covers the kept rows entirely
            gw = gradient_buffer(weight, (out_dp, out_off, in_dp, in_off), _zero_block_rows,
                                 _rows_overwrite(out_dp, out_off) if whole_rows else None)
            rows = _rows(gw, out_dp, out_off)
            if in_dp == 1:  # the compact GEMM writes the kept rows in place, no second pass
                block = _scaled_mm(gz.t(), x, alpha, out=rows)
            else:
                block = _scaled_mm(gz.t(), x, alpha)
                if not whole_rows:  # a wide stride: touch only the kept columns' cache lines
                    rows[:, in_off::in_dp].copy_(block)
                elif not native.scatter_cols_(rows, block, in_dp, in_off):
                    rows.zero_()  # (the fused kernel does both in one write pass)
                    rows[:, in_off::in_dp].copy_(block)
            # the block's norm while it is in cache, for a gradient clip (`grad_buffers.want_norms`)
            seal(weight, gw, torch.linalg.vector_norm(block) if grad_buffers.norms_wanted else None)
        if has_bias and ctx.needs_input_grad[2]:
            gb = grad_y.new_zeros(weight.shape[0])
            torch.sum(gz, 0, out=_rows(gb, out_dp, out_off))
            if out_scale != 1.0:
                gb.mul_(out_scale)
        return gx, gw, gb, None, None, None, None, None, None, None, None, None


def _torch_compact(x2, weight, bias, out_dp, out_offset, in_dp, in_offset, in_scale, out_scale, relu):
    """The torch path on its own (no LazySGD involved): the autotuner's other side."""
    return _CompactLinear.apply(x2, weight, bias, out_dp, out_offset, in_dp, in_offset, in_scale, out_scale, relu,
                                None, None)


@autocast_linear
def compact_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out_dp: int = 1,
    out_offset: int = 0,
    in_dp: int = 1,
    in_offset: int = 0,
    in_scale: float = 1.0,
    out_scale: float = 1.0,
    relu: bool = False,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """``act(in_scale * x @ W[O][:, I].T + b[O]) * out_scale`` over the kept block only.

    ``O = range(out_offset, out_features, out_dp)``, ``I = range(in_offset, in_features, in_dp)``.
    ``x`` is ``[..., |I|]`` (the compact output of a row-dropped producer; ``in_dp=1`` for a
    dense input); the result is ``[..., |O|]``. Weight and bias gradients are full-size and
    exactly zero outside the kept block.
    """
    check_linear_args(x, weight, bias)
    check_backend(backend)
    out_features, in_features = weight.shape
    n_out = check_pattern("output (row)", out_dp, out_offset, out_features)
    n_in = check_pattern("input (column)", in_dp, in_offset, in_features)
    in_scale = check_scale("in_scale", in_scale)
    out_scale = check_scale("out_scale", out_scale)
    if x.shape[-1] != n_in:
        raise ValueError(
            f"input has {x.shape[-1]} features but the layer expects {n_in}: in_features={in_features} "
            f"with input pattern dp={in_dp} offset={in_offset} keeps {n_in} columns "
            "(pass the producer's compact output and its pattern, or in_dp=1 for a dense input)"
        )
    relu = bool(relu)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, n_in)
    y = run_kernels("compact_linear_cuda", "compact", _torch_compact, x2, weight, bias,
                    (out_dp, out_offset, in_dp, in_offset, in_scale, out_scale, relu), backend)
    if y is None:
        # A LazySGD learns where this step's gradient lives, and hands back its pending update.
        w_cur = before_read(weight, rows_region(out_dp, out_offset, in_dp, in_offset))
        b_cur = before_read(bias, rows_region(out_dp, out_offset))
        y = _CompactLinear.apply(x2, weight, bias, out_dp, out_offset, in_dp, in_offset, in_scale, out_scale, relu,
                                 w_cur, b_cur)
    return y.reshape(*lead, n_out)
