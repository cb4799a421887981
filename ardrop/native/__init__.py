"""Fused CPU passes for the optimizer's memory-bound work, compiled on first use.

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

The kernels are plain C (``kernels.c``) built with the system C compiler into a cache
directory keyed by the source, the flags, the compiler and the CPU (they are built with
``-march=native``), and loaded with ctypes:
no torch headers, so the build takes about a second. They use OpenMP and are loaded
after torch, so they share torch's OpenMP runtime and its thread pool. A build
that ends up with a second OpenMP runtime in the process (the two pools would fight
over the cores), a failed build or a failed self-check leaves the torch path in place
and warns once.

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
import warnings
from pathlib import Path

import torch

from ardrop.build_switch import switch_mode
from ardrop.patterns import Pattern

SOURCE = Path(__file__).resolve().parent / "kernels.c"
# -fno-tree-loop-distribute-patterns: GCC would turn a 32-float zeroing run into a memset call.
CFLAGS = ("-O3", "-fPIC", "-shared", "-fopenmp", "-std=c11", "-fno-tree-loop-distribute-patterns")
# Wider vectors: 10% off the optimizer's passes (the cache key names the CPU, so a cache
# shared across machines never hands one CPU's build to another). Dropped if the compiler refuses.
ARCH_FLAGS = ("-march=native",)
LIB_NAME = "libardrop_native.so"

_DTYPES = {torch.float32: "f32", torch.float64: "f64"}


class NativeUnavailable(RuntimeError):
    """The native kernels cannot be used here; the message says why and what to do."""


def env_mode() -> str:
    return switch_mode("ARDROP_NATIVE", "torch path", "build the fused CPU kernels on first use")


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
    for suffix in _DTYPES.values():
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


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lib: ctypes.CDLL | None = None
        self.failure: str | None = None
        self.warned = False


_STATE = _State()


def load() -> ctypes.CDLL:
    """The built, self-checked library; raises NativeUnavailable with the reason otherwise."""
    if env_mode() == "off":
        raise NativeUnavailable("disabled by ARDROP_NATIVE=0: the torch path is used")
    lib = _STATE.lib
    if lib is not None:
        return lib
    with _STATE.lock:
        if _STATE.lib is not None:
            return _STATE.lib
        if _STATE.failure is not None:
            raise NativeUnavailable(_STATE.failure)
        try:
            lib = _load_library(_build())
            _STATE.lib = lib  # the self-check calls through the public functions
            _self_check()
        except Exception as exc:
            _STATE.lib = None
            _STATE.failure = (f"ardrop's fused CPU kernels are not used: {exc}\n"
                              "  The torch path is used instead (correct, somewhat slower).")
            raise NativeUnavailable(_STATE.failure) from exc
        return lib


def _lib_or_none() -> ctypes.CDLL | None:
    """The library, or None (warns once) where it cannot be used; raises in ``require`` mode."""
    lib = _STATE.lib
    if lib is not None and env_mode() != "off":
        return lib
    try:
        return load()
    except NativeUnavailable as exc:
        mode = env_mode()
        if mode == "require":
            raise
        if mode == "auto" and not _STATE.warned:
            _STATE.warned = True
            warnings.warn(str(exc), RuntimeWarning, stacklevel=3)
        return None


def available() -> bool:
    return _lib_or_none() is not None


def _rows_layout(t: torch.Tensor):
    """(rows, cols, row_stride) when ``t`` is rows of contiguous elements, else None."""
    if t.dim() == 0:
        return None
    if t.dim() == 1:
        return (1, t.shape[0], t.shape[0]) if t.stride(0) == 1 or t.shape[0] <= 1 else None
    expected = 1
    for size, stride in zip(reversed(t.shape[1:]), reversed(t.stride()[1:])):
        if size != 1 and stride != expected:
            return None
        expected *= size
    return t.shape[0], expected, t.stride(0)


def _written(*tensors: torch.Tensor) -> None:
    """Bump version counters as torch's in-place ops do (autograd's saved-tensor checks rely on them)."""
    torch.autograd.graph.increment_version(tensors)


def _kernel_suffix(*tensors: torch.Tensor) -> str | None:
    """The kernels' dtype suffix when the tensors are non-empty CPU tensors of one float dtype, else None."""
    suffix = _DTYPES.get(tensors[0].dtype)
    if suffix is None or any(t.dtype != tensors[0].dtype or t.device.type != "cpu" or t.numel() == 0
                             for t in tensors):
        return None
    return suffix


def axpy2_(w: torch.Tensor, b: torch.Tensor, g: torch.Tensor, kw: float, kb: float) -> bool:
    """``w += kw * g; b += kb * g`` in one pass. False (nothing written): use the torch path.

    Takes CPU float32/float64 tensors of one shape whose rows are contiguous (whole
    tensors, row-strided views); anything else returns False.
    """
    dtype = _kernel_suffix(w, b, g)
    if dtype is None or not (w.shape == b.shape == g.shape):
        return False
    layouts = [_rows_layout(t) for t in (w, b, g)]
    if None in layouts:
        return False
    lib = _lib_or_none()
    if lib is None:
        return False
    (rows, cols, rs_w), (_, _, rs_b), (_, _, rs_g) = layouts
    getattr(lib, f"ardrop_axpy2_{dtype}")(w.data_ptr(), b.data_ptr(), g.data_ptr(), rows, cols, rs_w, rs_b, rs_g,
                                          float(kw), float(kb), torch.get_num_threads())
    _written(w, b)
    return True


def frame_step_(w: torch.Tensor, b: torch.Tensor, g: torch.Tensor, frame, kick) -> bool:
    """``b, w = bb*b + bw*w + eb*g, wb*b + ww*w + ew*g`` over whole contiguous tensors, one pass.

    ``frame`` is ``(bb, bw, wb, ww)``, ``kick`` is ``(eb, ew)``. False (nothing written):
    use the torch path.
    """
    dtype = _kernel_suffix(w, b, g)
    if (dtype is None or not (w.shape == b.shape == g.shape)
            or not (w.is_contiguous() and b.is_contiguous() and g.is_contiguous())):
        return False
    lib = _lib_or_none()
    if lib is None:
        return False
    getattr(lib, f"ardrop_frame_step_{dtype}")(w.data_ptr(), b.data_ptr(), g.data_ptr(), g.numel(),
                                               *map(float, frame), *map(float, kick), torch.get_num_threads())
    _written(w, b)
    return True


def scatter_cols_(dst: torch.Tensor, src: torch.Tensor, step: int, offset: int) -> bool:
    """Whole rows: ``dst.zero_(); dst[:, offset::step] = src`` in one write pass.

    False (nothing written): use the torch path. Takes CPU float32/float64 2-D tensors
    whose rows are contiguous, ``src`` holding exactly the kept columns.
    """
    dtype = _kernel_suffix(dst, src)
    if (dtype is None or dst.dim() != 2 or src.dim() != 2
            or not (1 <= step and 0 <= offset < step)
            or tuple(src.shape) != (dst.shape[0], len(range(offset, dst.shape[1], step)))):
        return False
    layouts = _rows_layout(dst), _rows_layout(src)
    if None in layouts:
        return False
    lib = _lib_or_none()
    if lib is None:
        return False
    (rows, cols, rs_dst), (_, _, rs_src) = layouts
    getattr(lib, f"ardrop_scatter_cols_{dtype}")(dst.data_ptr(), src.data_ptr(), rows, cols, rs_dst, rs_src,
                                                 step, offset, torch.get_num_threads())
    _written(dst)
    return True


def _tile_args(tensors, tile: int, dp: int, offset: int):
    """(rows, cols, row stride) for the tile kernels, or None: 2-D tensors of one shape and
    one row stride with contiguous rows, and a valid pattern."""
    first = tensors[0]
    if (first.dim() != 2 or not (1 <= tile and 1 <= dp and 0 <= offset < dp)
            or any(t.shape != first.shape or t.stride() != first.stride() for t in tensors)
            or (first.stride(1) != 1 and first.shape[1] > 1)
            or (first.stride(0) < first.shape[1] and first.shape[0] > 1)):  # overlapping rows (expanded)
        return None
    return first.shape[0], first.shape[1], first.stride(0)


def tile_axpy2_(w: torch.Tensor, b: torch.Tensor, g: torch.Tensor, kw: float, kb: float,
                tile: int, dp: int, offset: int) -> bool:
    """`axpy2_` over the kept tiles of pattern ``(dp, offset)`` with ``tile x tile`` tiles, one pass.

    Tile ``(i, j)`` is kept iff ``(i + j) % dp == offset``. Takes whole 2-D CPU tensors of one
    shape and strides with contiguous rows; anything else returns False (nothing written).
    """
    dtype = _kernel_suffix(w, b, g)
    args = _tile_args((w, b, g), tile, dp, offset) if dtype is not None else None
    lib = _lib_or_none() if args is not None else None
    if lib is None:
        return False
    getattr(lib, f"ardrop_tile_axpy2_{dtype}")(w.data_ptr(), b.data_ptr(), g.data_ptr(), *args, tile, dp, offset,
                                               float(kw), float(kb), torch.get_num_threads())
    _written(w, b)
    return True


def tile_zero_(d: torch.Tensor, tile: int, dp: int, offset: int) -> bool:
    """Zero the kept tiles of pattern ``(dp, offset)``; False (nothing written): use the torch path."""
    dtype = _kernel_suffix(d)
    args = _tile_args((d,), tile, dp, offset) if dtype is not None else None
    lib = _lib_or_none() if args is not None else None
    if lib is None:
        return False
    getattr(lib, f"ardrop_tile_zero_{dtype}")(d.data_ptr(), *args, tile, dp, offset, torch.get_num_threads())
    _written(d)
    return True


def _self_check() -> None:
    """The kernels against torch on small ragged row views, both dtypes, both thread paths."""
    gen = torch.Generator().manual_seed(0)
    for dtype in _DTYPES:
        for rows, cols in ((7, 5), (301, 257)):  # one thread, then the parallel path
            w, b, g = (torch.randn(rows, cols + 3, generator=gen, dtype=dtype) for _ in range(3))
            w_ref = w[1::2, :cols] + 0.25 * g[1::2, :cols]
            b_ref = b[1::2, :cols] - 1.5 * g[1::2, :cols]
            if not axpy2_(w[1::2, :cols], b[1::2, :cols], g[1::2, :cols], 0.25, -1.5):
                raise NativeUnavailable("self-check: the kernel refused a row-strided view")
            tol = 1e-6 if dtype == torch.float32 else 1e-12
            if not (torch.allclose(w[1::2, :cols], w_ref, rtol=tol, atol=tol)
                    and torch.allclose(b[1::2, :cols], b_ref, rtol=tol, atol=tol)):
                raise NativeUnavailable(f"self-check: axpy2 on {dtype} disagrees with torch")
            w, b, g = (torch.randn(rows, cols, generator=gen, dtype=dtype) for _ in range(3))
            b_ref, w_ref = 0.9 * b + 0.01 * w + 1.0 * g, -0.09 * b + 0.999 * w - 0.1 * g
            if not frame_step_(w, b, g, (0.9, 0.01, -0.09, 0.999), (1.0, -0.1)) or not (
                    torch.allclose(w, w_ref, rtol=tol, atol=tol) and torch.allclose(b, b_ref, rtol=tol, atol=tol)):
                raise NativeUnavailable(f"self-check: frame_step on {dtype} disagrees with torch")
            dst, ref = torch.randn(rows, cols + 3, generator=gen, dtype=dtype), torch.zeros(rows, cols, dtype=dtype)
            src = torch.randn(rows, len(range(2, cols, 3)), generator=gen, dtype=dtype)
            ref[:, 2::3] = src
            if not scatter_cols_(dst[:, :cols], src, 3, 2) or not torch.equal(dst[:, :cols], ref):
                raise NativeUnavailable(f"self-check: scatter_cols on {dtype} disagrees with torch")
            w, b, g = (torch.randn(rows, cols, generator=gen, dtype=dtype) for _ in range(3))
            keep = Pattern("tile", 3, 1, 4).tile_mask(rows, cols).bool()  # the reference semantics
            w_ref, b_ref = torch.where(keep, w + 0.5 * g, w), torch.where(keep, b - 2.0 * g, b)
            if not tile_axpy2_(w, b, g, 0.5, -2.0, 4, 3, 1) or not (
                    torch.allclose(w, w_ref, rtol=tol, atol=tol) and torch.allclose(b, b_ref, rtol=tol, atol=tol)):
                raise NativeUnavailable(f"self-check: tile_axpy2 on {dtype} disagrees with torch")
            g_ref = torch.where(keep, torch.zeros((), dtype=dtype), g)
            if not tile_zero_(g, 4, 3, 1) or not torch.equal(g, g_ref):
                raise NativeUnavailable(f"self-check: tile_zero on {dtype} disagrees with torch")


def _reset_for_tests() -> None:
    with _STATE.lock:
        _STATE.lib = None
        _STATE.failure = None
        _STATE.warned = False
