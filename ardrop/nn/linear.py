"""`ApproxLinear`: a linear layer whose dropout skips the dropped work.

``kind="row"`` drops output neurons (dropout on the layer's outputs), ``kind="tile"`` drops
weight tiles (DropConnect), ``"bernoulli"`` is ordinary ``F.dropout`` on the outputs and
``"none"`` drops nothing. The pattern comes from the layer's ``site`` (set each step from
outside), so the layer itself holds no random state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ardrop.functional import compact_linear
from ardrop.checks import check_int
from ardrop.contract.param_reads import FlushesLazyParams
from ardrop.patterns import DEFAULT_TILE, Pattern
from ardrop.nn.site import PatternSite
from ardrop.nn.site_linear import site_linear

LAYER_BACKENDS = ("fast", "reference")


def check_layer_backend(backend: str) -> str:
    if backend not in LAYER_BACKENDS:
        raise ValueError(f"backend must be one of {LAYER_BACKENDS}, got {backend!r}")
    return backend


def site_max_dp(kind: str, out_features: int, in_features: int, tile: int) -> int:
    """Largest usable dp: every offset must keep at least one row / tile."""
    if kind == "row":
        return Pattern.max_row_dp(out_features)
    if kind == "tile":
        return Pattern.max_tile_dp(out_features, in_features, tile)
    return 1


def check_width(x: torch.Tensor, expected: int, what: str) -> None:
    if x.dim() < 1 or x.shape[-1] != expected:
        got = x.shape[-1] if x.dim() else "a scalar"
        raise ValueError(f"{what} expects inputs with {expected} features in the last dimension, got {got}")


class ApproxLinear(FlushesLazyParams, nn.Module):
    """``y = dropout(act(x @ W.T + b))`` where row/tile dropout never computes dropped work."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        kind: str = "row",
        rate: float = 0.5,
        tile: int = DEFAULT_TILE,
        relu: bool = False,
        backend: str = "fast",
        groups: int | str = "dp",
    ) -> None:
        super().__init__()
        check_int("in_features", in_features)
        check_int("out_features", out_features)
        self.in_features, self.out_features = in_features, out_features
        self.relu = bool(relu)
        self.backend = check_layer_backend(backend)
        self.site = PatternSite(kind, rate, site_max_dp(kind, out_features, in_features, tile), tile, groups)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()
        self._flush_hooks()  # saving, loading and copying see a LazySGD's pending rows

    def reset_parameters(self) -> None:
        """Same initialisation as ``nn.Linear``, so swapping layers keeps training behaviour."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def kind(self) -> str:
        return self.site.kind

    def forward_compact(self, x, in_dp: int = 1, in_offset: int = 0, in_scale: float = 1.0):
        """Row kind only: ``(compact output, dp, offset)`` for a consumer that stays compact.

        ``x`` may itself be compact (the kept columns ``in_offset::in_dp``), which is how
        `ApproxMLP` chains row-dropped layers without ever materialising dropped units.
        """
        if self.kind not in ("row", "none"):
            raise ValueError(f"forward_compact needs a row (or none) layer, this one is {self.kind!r}")
        p = self.site.active_pattern()
        dp, off = (1, 0) if p is None else (p.dp, p.offset)
        scale = 1.0 if p is None else p.row_scale(self.out_features)
        y = compact_linear(x, self.weight, self.bias, dp, off, in_dp, in_offset, in_scale, scale, self.relu)
        return y, dp, off

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_width(x, self.in_features, "ApproxLinear")
        return site_linear(self.site, x, self.weight, self.bias, side="out", backend=self.backend, relu=self.relu)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, relu={self.relu}, backend={self.backend}"
        )
