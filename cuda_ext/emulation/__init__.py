"""Build the host-emulated extension (binding.cpp + host_emulator.cpp, CPU, fp32).

Why: lets machines without a GPU run the real binding, the real kernel bodies and the
autograd wrappers end to end (see host_emulator.cpp). Never used by the layers; only
tests and kernel developers call it. Imports: torch's cpp_extension, `cuda_ext.loader`.
"""
from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from ..loader import PACKAGE_DIR, SOURCES, HEADERS

EMU_SOURCE = Path(__file__).resolve().parent / "host_emulator.cpp"


def build_emulated(build_directory: str | Path, verbose: bool = False) -> Any:
    """Compile and import the emulated extension (module attribute ``emulated`` is True)."""
    from torch.utils import cpp_extension

    build_directory = Path(build_directory)
    build_directory.mkdir(parents=True, exist_ok=True)
    module = cpp_extension.load(
        name="ardrop_cuda_ext_emulated",
        sources=[str(SOURCES[0]), str(EMU_SOURCE)],
        extra_cflags=["-O2", "-DARDROP_HOST_EMULATION", "-Wno-unknown-pragmas", "-pthread"],
        extra_ldflags=["-pthread"],
        build_directory=str(build_directory),
        with_cuda=False,
        verbose=verbose,
    )
    return module


def set_sm_count(module: Any, n: int) -> None:
    """Choose the row config the emulator launches (1: always 128x128, huge: 64x64)."""
    lib = ctypes.CDLL(module.__file__)
    lib.ardrop_emu_set_sm_count(ctypes.c_int(n))


__all__ = ["build_emulated", "set_sm_count", "EMU_SOURCE", "PACKAGE_DIR", "HEADERS"]
