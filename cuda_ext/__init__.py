"""Custom-CUDA approximate-dropout layers for ardrop (see cuda_ext/README.md).

Holds the package face: ``available()`` (build + self-check on first CUDA use, bool),
``compact_linear_cuda`` / ``tile_linear_cuda`` (the kernels behind
``ardrop.functional.compact_linear`` / ``tile_linear``), ``load()``, ``status()``,
``hand_over_self_check()``. Imports: its own modules (torch and stdlib below them).

This is the lowest project package: it never imports ardrop. ardrop dispatches into it
and hands it the self-check, which compares the kernels with ardrop's references.
"""
from .functions import compact_linear_cuda, tile_linear_cuda
from .loader import (
    CudaExtUnavailable,
    available,
    env_mode,
    hand_over_self_check,
    load,
    status,
    unavailable_reason,
)

__all__ = [
    "CudaExtUnavailable",
    "available",
    "compact_linear_cuda",
    "env_mode",
    "hand_over_self_check",
    "load",
    "status",
    "tile_linear_cuda",
    "unavailable_reason",
]
