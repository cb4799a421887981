"""Build, load and publish the fused CPU kernels' C library (``kernels.c``).

Holds: the source, flags and cache key, ``NativeUnavailable``, ``env_mode``, ``load``,
``lib_or_none``, ``available`` and ``hand_over_self_check``. Imports: torch, stdlib and
``cuda_ext._lazy_build`` (the one lazy-build state machine both compiled parts share).

The kernels are plain C built with the system C compiler into a cache directory keyed by
the source, the flags, the compiler and the CPU (they are built with ``-march=native``),
and loaded with ctypes: no torch headers, so the build takes about a second. They use
OpenMP and are loaded after torch, so they share torch's OpenMP runtime and its thread
pool. A build that ends up with a second OpenMP runtime in the process (the two pools
would fight over the cores), a failed build or a failed self-check leaves the torch path
in place and warns once.

``ARDROP_NATIVE`` selects the behaviour: ``0``/``off`` never builds (torch path),
``1``/``auto`` (default) builds on first use and falls back on failure, ``require``
raises instead. ``ARDROP_NATIVE_CACHE`` overrides the cache directory (default
``$XDG_CACHE_HOME/ardrop/native`` or ``~/.cache/ardrop/native``); ``CC`` picks the compiler.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from cuda_ext._lazy_build import LazyBuild

SOURCE = Path(__file__).resolve().parent / "kernels.c"
# -fno-tree-loop-distribute-patterns: GCC would turn a 32-float zeroing run into a memset call.
CFLAGS = ("-O3", "-fPIC", "-shared", "-fopenmp", "-std=c11", "-fno-tree-loop-distribute-patterns")
# Wider vectors: 10% off the optimizer's passes (the cache key names the CPU, so a cache
# shared across machines never hands one CPU's build to another). Dropped if the compiler refuses.
ARCH_FLAGS = ("-march=native",)
LIB_NAME = "libardrop_native.so"

DTYPE_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}  # the kernels' names end in these


class NativeUnavailable(RuntimeError):
    """The native kernels cannot be used here; the message says why and what to do."""


def env_mode() -> str:
    return _KERNELS.mode()


def compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or cc
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build_directory() -> Path:
    explicit = os.environ.get("ARDROP_NATIVE_CACHE")
    if explicit:
        root = Path(explicit).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ardrop" / "native"
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(repr((CFLAGS, ARCH_FLAGS, compiler(), platform.machine(), _cpu_identity())).encode())
    return root / digest.hexdigest()[:16]


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags (Linux), else the platform."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    keys = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in info.splitlines() if line.split(":")[0].strip() in keys}))


def _openmp_runtimes() -> set[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux; empty elsewhere)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    return {line.split()[-1] for line in maps.splitlines()
            if any(n in line.rsplit("/", 1)[-1] for n in ("libgomp", "libiomp", "libomp"))}


def _build() -> Path:
    cc = compiler()
    if cc is None:
        raise NativeUnavailable("no C compiler found (cc, gcc or clang on PATH, or CC): install one, "
                                "or set ARDROP_NATIVE=0 to use the torch path without trying")
    out_dir = build_directory()
    lib = out_dir / LIB_NAME
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{LIB_NAME}.{os.getpid()}.{threading.get_ident()}"
    for flags in ((*CFLAGS, *ARCH_FLAGS), CFLAGS):  # without the arch flags if the compiler refuses them
        cmd = [cc, *flags, str(SOURCE), "-o", str(tmp)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NativeUnavailable(f"running the C compiler failed: {exc}\n  command: {' '.join(cmd)}") from exc
        if done.returncode == 0:
            break
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise NativeUnavailable(f"compiling {SOURCE.name} failed (exit {done.returncode}):\n"
                                f"  command: {' '.join(cmd)}\n{done.stderr.strip()[-2000:]}")
    os.replace(tmp, lib)  # atomic: a concurrent process sees a whole library or none
    return lib


def _load_library(path: Path) -> ctypes.CDLL:
    before = _openmp_runtimes()
    lib = ctypes.CDLL(str(path))
    after = _openmp_runtimes()
    if after - before:  # ours resolved to a runtime torch does not use (or torch uses none)
        raise NativeUnavailable(
            f"the built library loaded its own OpenMP runtime {sorted(after - before)} next to torch's "
            f"({sorted(before) or 'none'}); two thread pools would compete for the cores. "
            "Set ARDROP_NATIVE=0, or CC to a compiler whose OpenMP runtime matches torch's")
    c_i64, c_dbl, c_ptr = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
    for suffix in DTYPE_SUFFIX.values():
        fn = getattr(lib, f"ardrop_axpy2_{suffix}")
        fn.argtypes = [c_ptr, c_ptr, c_ptr, c_i64, c_i64, c_i64, c_i64, c_i64, c_dbl, c_dbl, ctypes.c_int]
        fn.restype = None
        fn = getattr(lib, f"ardrop_frame_step_{suffix}")
        fn.argtypes = [c_ptr, c_ptr, c_ptr, c_i64, *[c_dbl] * 6, ctypes.c_int]
        fn.restype = None
        fn = getattr(lib, f"ardrop_scatter_cols_{suffix}")
        fn.argtypes = [c_ptr, c_ptr, c_i64, c_i64, c_i64, c_i64, c_i64, c_i64, ctypes.c_int]
        fn.restype = None
        fn = getattr(lib, f"ardrop_tile_axpy2_{suffix}")
        fn.argtypes = [c_ptr, c_ptr, c_ptr, *[c_i64] * 6, c_dbl, c_dbl, ctypes.c_int]
        fn.restype = None
        fn = getattr(lib, f"ardrop_tile_zero_{suffix}")
        fn.argtypes = [c_ptr, *[c_i64] * 6, ctypes.c_int]
        fn.restype = None
    lib.ardrop_omp_max_threads.restype = ctypes.c_int
    return lib


def _build_and_load() -> ctypes.CDLL:
    return _load_library(_build())


_KERNELS: LazyBuild[ctypes.CDLL] = LazyBuild(
    env_var="ARDROP_NATIVE", off_means="torch path", auto_means="build the fused CPU kernels on first use",
    disabled="disabled by ARDROP_NATIVE=0: the torch path is used", unavailable=NativeUnavailable,
    explain=lambda stage, exc: (f"ardrop's fused CPU kernels are not used: {exc}\n"
                                "  The torch path is used instead (correct, somewhat slower)."),
)


def hand_over_self_check(check: Callable[[ctypes.CDLL], None]) -> None:
    """The check the library must pass before first use (the package wires ``selfcheck.run_self_check``).

    Why handed over rather than imported: the check calls the public passes, which call
    ``lib_or_none`` here, so importing it would make a cycle.
    """
    _KERNELS.hand_over_check(check)


def load() -> ctypes.CDLL:
    """The built, self-checked library; raises NativeUnavailable with the reason otherwise."""
    return _KERNELS.load(_build_and_load)


def lib_or_none() -> ctypes.CDLL | None:
    """The library, or None (warns once) where it cannot be used; raises in ``require`` mode."""
    return _KERNELS.usable(_build_and_load, stacklevel=3)


def available() -> bool:
    return lib_or_none() is not None


def _reset_for_tests() -> None:
    _KERNELS.reset()
