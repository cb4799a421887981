"""Fused CPU passes for the optimizer's memory-bound work, compiled on first use.

Holds the package face: the passes (``passes``), the loader's public names (``library``)
and the wiring of the self-check (``selfcheck``) into the loader. Imports: its own modules.

Why: once the GEMMs shrink with the pattern, what is left of a CPU training step is
mostly memory traffic over weights, momentum buffers and gradients. Torch does one pass
per elementwise op, so a LazySGD region step (``w += kw*g`` then ``buf += kb*g``) reads
the gradient twice. Fused passes cut that traffic: with them the 784-2048-2048-10 MLP at
rate 0.5 went from x2.86/x2.83 to x2.94/x2.99 over Bernoulli dropout (`ardrop.bench`,
alternating processes on one day), the 4096 MLP at rate 0.7 from x4.55 to x4.84 before
`frame_step_` was added. For tile patterns, `tile_axpy2_` does a LazySGD step over every
kept tile in one call (the torch path runs two ops per tile class and edge piece):
2048 tile 0.7 went from x1.97/x1.95 to x2.08/x2.07 (alternating processes, one day), with
the wider vectors of ``-march=native`` included.

How the C library is built, cached, loaded and switched (``ARDROP_NATIVE``): see
``library``.
"""

from __future__ import annotations

from ardrop.native import library, selfcheck
from ardrop.native.library import (
    LIB_NAME,
    NativeUnavailable,
    available,
    build_directory,
    compiler,
    env_mode,
    load,
)
from ardrop.native.passes import axpy2_, frame_step_, scatter_cols_, tile_axpy2_, tile_zero_

# Any import of a submodule runs this file first, so no pass is called before the check is wired.
library.hand_over_self_check(selfcheck.run_self_check)


__all__ = [
    "LIB_NAME",
    "NativeUnavailable",
    "available",
    "axpy2_",
    "build_directory",
    "compiler",
    "env_mode",
    "frame_step_",
    "load",
    "scatter_cols_",
    "tile_axpy2_",
    "tile_zero_",
]
