"""`site_linear`: one linear map with one dropout site applied, for every kind and backend.

Why one function: `ApproxLinear` (dropout on its outputs), the LSTM's input projections and
its decoder (dropout on their inputs) all make the same choice each step: dense (eval,
dp 1, ``none``), Bernoulli, one pattern per group of samples or time steps, one pattern
for the whole batch, each with the fast op or the masked dense reference. Written once,
the three callers cannot drift apart.

``side="out"``: a row pattern drops output units (``y = drop(act(x @ W.T + b))``);
``side="in"``: it drops input units (``y = act(drop(x) @ W.T + b)``). A tile pattern drops
weight tiles either way. The reference backend computes every unit and applies the
explicit masks of `ardrop.functional.reference`; it shares no code with the fast ops.

Imports: torch, `ardrop.functional`, `ardrop.contract`, `ardrop.nn.site`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ardrop.contract.param_reads import flush_params
from ardrop.functional import compact_linear, tile_linear
from ardrop.functional.grouped import Group, grouped_linear, grouped_tile_linear
from ardrop.functional.reference import pattern_linear_reference
from ardrop.nn.site import PatternSite

SIDES = ("in", "out")


def dense_linear(x: torch.Tensor, weight, bias, relu: bool = False) -> torch.Tensor:
    """``act(x @ W.T + b)`` on current values (a `LazySGD`'s pending update folded in first)."""
    flush_params(weight, bias)
    y = F.linear(x, weight, bias)
    return torch.relu(y) if relu else y


def site_linear(site: PatternSite, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
                side: str, backend: str = "fast", relu: bool = False) -> torch.Tensor:
    """``x @ W.T + b`` (then ReLU if ``relu``) with ``site``'s dropout of this step; ``x`` is ``[..., in]``."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if site.kind == "bernoulli":
        if side == "in":
            return dense_linear(site.bernoulli(x), weight, bias, relu)
        return site.bernoulli(dense_linear(x, weight, bias, relu))
    found = site.group_patterns(x.shape[0]) if x.dim() > 1 else None
    if found is not None:
        if backend == "reference":
            return _grouped_reference(found, x, weight, bias, side, relu)
        return _grouped_fast(found, x, weight, bias, side, site.tile, relu)
    pattern = site.active_pattern()
    if pattern is None:
        return dense_linear(x, weight, bias, relu)
    if backend == "reference":
        flush_params(weight, bias)
        return pattern_linear_reference(x, weight, bias, pattern, side, relu)
    out_features, in_features = weight.shape
    dp, off = pattern.dp, pattern.offset
    if pattern.kind == "row" and side == "out":
        yc = compact_linear(x, weight, bias, dp, off, 1, 0, 1.0, pattern.row_scale(out_features), relu)
        y = yc.new_zeros(*yc.shape[:-1], out_features)
        y[..., off::dp] = yc  # dropped outputs are exactly zero, never computed
        return y
    if pattern.kind == "row":  # input side: only the kept columns are read and multiplied
        return compact_linear(x[..., off::dp], weight, bias, 1, 0, dp, off, in_scale=pattern.row_scale(in_features),
                              relu=relu)
    lead = x.shape[:-1]
    y = tile_linear(x.reshape(-1, in_features), weight, bias, dp, off, pattern.tile,
                    pattern.tile_scale(out_features, in_features), relu)
    return y.view(*lead, out_features)


def _grouped_fast(found, x, weight, bias, side: str, tile: int, relu: bool) -> torch.Tensor:
    """Elements ``start::stride`` of dim 0 use their group's pattern (see `ardrop.functional.grouped`)."""
    out_features, in_features = weight.shape
    if found[0][2].kind == "tile":
        groups = [Group(start, stride, p.dp, p.offset, out_scale=p.tile_scale(out_features, in_features))
                  for start, stride, p in found]
        return grouped_tile_linear(x, weight, bias, groups, tile, relu)
    if side == "out":
        groups = [Group(start, stride, p.dp, p.offset, out_scale=p.row_scale(out_features))
                  for start, stride, p in found]
    else:
        groups = [Group(start, stride, in_dp=p.dp, in_offset=p.offset, in_scale=p.row_scale(in_features))
                  for start, stride, p in found]
    return grouped_linear(x, weight, bias, groups, relu)


def _grouped_reference(found, x, weight, bias, side: str, relu: bool) -> torch.Tensor:
    """Dense, each group's explicit mask on its own slice of dim 0."""
    flush_params(weight, bias)
    y = x.new_empty(*x.shape[:-1], weight.shape[0])
    for start, stride, p in found:
        y[start::stride] = pattern_linear_reference(x[start::stride], weight, bias, p, side, relu)
    return y
