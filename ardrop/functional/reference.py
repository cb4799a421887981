"""Masked dense references: the same functions as the fast ops, written the obvious way.

Every unit is computed, then the explicit masks of ``ardrop.patterns.Pattern`` zero the
dropped part and the same inverted-dropout scale is applied. Autograd differentiates
these, so their gradients are an independent check of the hand-written backward passes
(they work in float64 for gradcheck-grade comparisons).
"""

from __future__ import annotations

import torch

from ardrop.patterns import Pattern


def row_mask(n: int, dp: int, offset: int, device=None) -> torch.Tensor:
    """Keep mask of a row pattern; dp == 1 keeps everything."""
    if dp == 1:
        return torch.ones(n, dtype=torch.bool, device=device)
    return Pattern("row", dp, offset).row_mask(n).to(device)


def expand_compact(xc: torch.Tensor, n: int, dp: int, offset: int) -> torch.Tensor:
    """Dense ``[..., n]`` tensor holding ``xc`` at the kept positions and zeros elsewhere."""
    mask = row_mask(n, dp, offset, xc.device)
    dense = xc.new_zeros(*xc.shape[:-1], n)
    dense[..., mask] = xc
    return dense


def compact_linear_reference(
    x, weight, bias, out_dp=1, out_offset=0, in_dp=1, in_offset=0, in_scale=1.0, out_scale=1.0, relu=False
):
    """Dense masked version of ``compact_linear`` (same compact input and output shapes)."""
    out_features, in_features = weight.shape
    mo = row_mask(out_features, out_dp, out_offset, weight.device)
    mi = row_mask(in_features, in_dp, in_offset, weight.device)
    xd = expand_compact(x, in_features, in_dp, in_offset)
    w = weight * (mo[:, None] & mi[None, :]).to(weight.dtype)
    z = in_scale * (xd @ w.t())
    if bias is not None:
        z = z + bias * mo.to(bias.dtype)
    if relu:
        z = torch.relu(z)
    y = z * out_scale * mo.to(z.dtype)
    return y[..., mo]


def row_dropout_reference(y: torch.Tensor, dp: int, offset: int) -> torch.Tensor:
    """Full-width row dropout of an activation: keep ``r % dp == offset``, scale by total/kept."""
    n = y.shape[-1]
    if dp == 1:
        return y
    p = Pattern("row", dp, offset)
    return y * p.row_mask(n).to(y.device, y.dtype) * p.row_scale(n)


def tile_linear_reference(x, weight, bias, dp, offset, tile=32, scale=None, relu=False):
    """``act(x @ (scale * W * M).T + b)`` with the explicit element mask ``M``."""
    out_features, in_features = weight.shape
    p = Pattern("tile", dp, offset, tile)
    mask = p.tile_mask(out_features, in_features).to(weight.device, weight.dtype)
    if scale is None:
        scale = p.tile_scale(out_features, in_features)
    z = x @ (scale * weight * mask).t()
    if bias is not None:
        z = z + bias
    return torch.relu(z) if relu else z


def pattern_linear_reference(x, weight, bias, pattern: Pattern, side: str = "out", relu: bool = False):
    """``act(x @ W.T + b)`` with one pattern applied by its explicit mask, every unit computed.

    Row patterns drop output units (``side="out"``, after the activation) or input units
    (``side="in"``); tile patterns mask the weight. The scale is the pattern's exact
    inverted-dropout scale (kept over total units or weights).
    """
    if pattern.kind == "tile":
        return tile_linear_reference(x, weight, bias, pattern.dp, pattern.offset, pattern.tile, None, relu)
    if side == "in":
        n = weight.shape[1]
        x = x * (pattern.row_mask(n).to(x.device, x.dtype) * pattern.row_scale(n))
    z = torch.nn.functional.linear(x, weight, bias)  # what autocast casts as one op, as a dense layer would
    if relu:
        z = torch.relu(z)
    return row_dropout_reference(z, pattern.dp, pattern.offset) if side == "out" else z
