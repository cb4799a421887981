"""Autograd ops that skip dropped work, and their masked dense references.

``compact_linear`` (row patterns, compact activations) and ``tile_linear`` (tile
patterns) run forward, grad-input and grad-weight on the kept part only. On CUDA tensors
they dispatch to ``cuda_ext`` when it is built and passed its self-check.
Imports: torch, `ardrop.contract`, `ardrop.patterns`, `ardrop.checks`, `ardrop.native`, `cuda_ext`.
"""

from ardrop.functional.compact import compact_linear
from ardrop.functional.reference import (
    compact_linear_reference,
    expand_compact,
    row_dropout_reference,
    row_mask,
    tile_linear_reference,
)
from ardrop.functional.tile import tile_linear

__all__ = [
    "compact_linear",
    "compact_linear_reference",
    "expand_compact",
    "row_dropout_reference",
    "row_mask",
    "tile_linear",
    "tile_linear_reference",
]
