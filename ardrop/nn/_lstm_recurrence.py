"""LSTM recurrences used by `ApproxLSTMLM`: fused, from precomputed gates, and a plain oracle.

Gate order everywhere is torch's ``(i, f, g, o)`` stacked along the ``4H`` rows of the
weights, so the same parameters work with all three.

* `lstm_layer_fused` calls torch's own one-layer LSTM (oneDNN on CPU for fp32, cuDNN on
  GPU). Its input GEMM runs over whatever input width it is given, which is how row
  dropout skips the dropped input columns: the caller hands it the compact input and the
  matching columns of ``W_ih``.
* `lstm_from_gates` runs the recurrence when the input projection was computed outside
  (the block-sparse ``tile_linear`` of tile dropout). torch's fused kernels always do
  their own dense input GEMM, so feeding them precomputed gates would need a ``4H x 4H``
  identity GEMM, 4x the work tile dropout is trying to halve. This is a hand-written
  forward and backward (BPTT) instead of per-step autograd: per step only one small GEMM
  and a few elementwise ops, and the ``W_hh`` gradient is one large GEMM over all steps.
  Its per-step ``h W_hh^T`` (and ``dgates W_hh`` in backward) is a skinny GEMM (batch
  rows); on CPU it runs on oneDNN's blocked copy of ``W_hh``, made once per call, as the
  fused kernel does: 1.7 ms instead of 3.0 ms for 20 x 1000 by 1000 x 4000 on 2 cores,
  against ~5 ms per reorder (`_SkinnyMatmul`).
* `lstm_layer_reference` is the textbook per-step loop under autograd: the test oracle.
"""

from __future__ import annotations

import functools

import torch
from torch import _VF


def fp32_under_autocast(fn):
    """Run a recurrence in fp32 with autocast off when autocast is on (inputs and outputs fp32).

    Why: torch's own fused LSTM cannot run under CPU bf16 autocast (oneDNN finds no
    primitive, for a stock ``nn.LSTM`` too), and the recurrence carries state across
    every time step, where low precision compounds: autocast keeps such reductions in fp32.
    The projections around it still run in the autocast dtype.
    """
    @functools.wraps(fn)
    def wrapper(*args):
        device = next(a for a in args if isinstance(a, torch.Tensor)).device.type
        if not torch.is_autocast_enabled(device):
            return fn(*args)
        with torch.autocast(device, enabled=False):
            return fn(*[a.float() if isinstance(a, torch.Tensor) and a.dtype in (torch.float16, torch.bfloat16)
                        else a for a in args])

    return wrapper


@fp32_under_autocast
def lstm_layer_fused(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """One layer through torch's fused LSTM. ``x [T, B, in]``, ``h0/c0 [B, H]``."""
    out, h_n, c_n = _VF.lstm(
        x, (h0.unsqueeze(0), c0.unsqueeze(0)), [w_ih, w_hh, b_ih, b_hh],
        True, 1, 0.0, True, False, False,
    )
    return out, h_n[0], c_n[0]


class _SkinnyMatmul:
    """``x @ w.T`` for many ``x`` of ``rows`` rows against one ``w``, on oneDNN's packed ``w`` where it can.

    Falls back to a plain matmul off CPU, for dtypes other than fp32, and where this torch
    build has no oneDNN linear ops (the results agree to fp32 rounding).
    """

    def __init__(self, w: torch.Tensor, rows: int) -> None:
        self.w, self.packed = w, None
        if w.device.type == "cpu" and w.dtype == torch.float32 and torch.backends.mkldnn.is_available():
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), rows)
            except (AttributeError, RuntimeError):  # op missing from this build: plain matmul
                self.packed = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return x @ self.w.t()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")


class _LSTMFromGates(torch.autograd.Function):
    """Recurrence given ``gx = x W_ih^T + b_ih`` for every step.

    Saved for backward: the activated gates, the cell states and ``tanh(c)``; the output
    doubles as the previous hidden states for the ``W_hh`` gradient.
    """

    @staticmethod
    def forward(ctx, gx, h0, c0, w_hh, b_hh):
        steps, batch, four_h = gx.shape
        hid = four_h // 4
        gates = gx + b_hh  # becomes the activated gates, step by step, in place
        cells = gx.new_empty(steps, batch, hid)
        tanh_c = gx.new_empty(steps, batch, hid)
        out = gx.new_empty(steps, batch, hid)
        recur = _SkinnyMatmul(w_hh, batch)
        h, c = h0, c0
        for t in range(steps):
            g = gates[t]
            g.add_(recur(h))
            g[:, : 2 * hid].sigmoid_()
            g[:, 2 * hid : 3 * hid].tanh_()
            g[:, 3 * hid :].sigmoid_()
            c_t = cells[t]
            torch.mul(g[:, hid : 2 * hid], c, out=c_t)
            c_t.addcmul_(g[:, :hid], g[:, 2 * hid : 3 * hid])
            torch.tanh(c_t, out=tanh_c[t])
            torch.mul(g[:, 3 * hid :], tanh_c[t], out=out[t])
            h, c = out[t], c_t
        ctx.save_for_backward(gates, cells, tanh_c, out, h0, c0, w_hh)
        return out, out[-1].clone(), cells[-1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_hn, d_cn):
        gates, cells, tanh_c, out, h0, c0, w_hh = ctx.saved_tensors
        steps, batch, hid = out.shape
        gi, gf, gg, go = gates.split(hid, dim=2)
        c_prev = torch.cat([c0.unsqueeze(0), cells[:-1]])
        # Per-step gradient of the pre-activation gates is [dc, dc, dc, dh] * coef: the
        # coefficients do not depend on the backward recursion, so compute them for all
        # steps in a few large elementwise ops instead of many small ones in the loop.
        coef = torch.cat(
            [gg * gi * (1 - gi), c_prev * gf * (1 - gf), gi * (1 - gg * gg), tanh_c * go * (1 - go)], dim=2
        ).view(steps, batch, 4, hid)
        dc_from_h = go * (1 - tanh_c * tanh_c)
        d_gates = gates.new_empty(steps, batch, 4, hid)
        dh, dc = d_hn, d_cn
        back = _SkinnyMatmul(w_hh.t(), batch)  # dgates @ W_hh
        for t in range(steps - 1, -1, -1):
            dh_t = d_out[t] + dh
            dc_t = torch.addcmul(dc, dh_t, dc_from_h[t])
            torch.mul(dc_t.unsqueeze(1), coef[t, :, :3], out=d_gates[t, :, :3])
            torch.mul(dh_t, coef[t, :, 3], out=d_gates[t, :, 3])
            dc = dc_t * gf[t]
            dh = back(d_gates[t].view(batch, 4 * hid))
        d_gates = d_gates.view(steps, batch, 4 * hid)
        d_w = d_b = None
        if ctx.needs_input_grad[3]:
            h_prev = torch.cat([h0.unsqueeze(0), out[:-1]]).view(steps * batch, hid)
            d_w = d_gates.view(steps * batch, 4 * hid).t() @ h_prev
        if ctx.needs_input_grad[4]:
            d_b = d_gates.sum(dim=(0, 1))
        return d_gates, dh, dc, d_w, d_b


@fp32_under_autocast
def lstm_from_gates(gx, h0, c0, w_hh, b_hh):
    """Recurrence over precomputed input gates ``gx [T, B, 4H]`` -> ``(out, h_n, c_n)``."""
    return _LSTMFromGates.apply(gx, h0, c0, w_hh, b_hh)


def lstm_layer_reference(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """Plain per-step LSTM under autograd; slow, obviously correct, the oracle."""
    return lstm_gates_reference(x @ w_ih.t() + b_ih, h0, c0, w_hh, b_hh)


def lstm_gates_reference(gx, h0, c0, w_hh, b_hh):
    """The oracle's recurrence over given input projections ``gx [T, B, 4H]``."""
    h, c = h0, c0
    outs = []
    for t in range(gx.shape[0]):
        z = gx[t] + h @ w_hh.t() + b_hh
        i, f, g, o = z.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs), h, c
