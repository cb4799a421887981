"""Custom-CUDA approximate-dropout layers for ardrop (see cuda_ext/README.md).

Entry points: ``available()`` (build + self-check on first CUDA use, bool),
``compact_linear_cuda`` / ``tile_linear_cuda`` (same contract as
``ardrop.functional.compact_linear`` / ``tile_linear``), ``load()``, ``status()``.
"""
from .functions import compact_linear_cuda, tile_linear_cuda
from .loader import CudaExtUnavailable, available, env_mode, load, status, unavailable_reason

__all__ = [
    "CudaExtUnavailable",
    "available",
    "compact_linear_cuda",
    "env_mode",
    "load",
    "status",
    "tile_linear_cuda",
    "unavailable_reason",
]
