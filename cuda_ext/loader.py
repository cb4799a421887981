"""Build and cache the ardrop CUDA extension, and publish it once it passed the self-check it was handed.

Holds: the sources, flags and cache key; ``load``/``available``/``unavailable_reason``/
``status``; ``hand_over_self_check``. Imports: torch, stdlib and ``cuda_ext._lazy_build``
(never ardrop: ardrop dispatches into this package).

Why a JIT build: the kernels must match the local GPU architecture and the installed
torch/CUDA pair, so they are compiled with ``torch.utils.cpp_extension.load`` on first
use (or ahead of time with ``python -m ardrop.functional.kernel_check``) into a cache
directory keyed by torch version, CUDA version, Python version and a hash of the sources;
a later process reuses the built module without recompiling.

The build is never attempted where ``torch.cuda.is_available()`` is False, so CPU
machines (and CPU-only torch builds) never invoke nvcc. A freshly built module must
also pass a small self-check against a dense masked reference before the layers use it;
the check is ardrop's (``ardrop.functional.kernel_check``: it compares with ardrop's
references), handed over by ardrop's dispatch before its first CUDA call. If the build
or the check fails, the layers keep the torch GPU path and one warning says why.

``ARDROP_CUDA_EXT`` selects the behaviour: ``0``/``off`` never builds (torch GPU path),
``1``/``auto`` (default) builds on first CUDA use and falls back on failure,
``require`` raises instead of falling back. ``ARDROP_CUDA_CACHE`` overrides the cache
directory (default ``$XDG_CACHE_HOME/ardrop/cuda_ext`` or ``~/.cache/ardrop/cuda_ext``).
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ._lazy_build import LazyBuild

EXT_NAME = "ardrop_cuda_ext"
PACKAGE_DIR = Path(__file__).resolve().parent
KERNEL_DIR = PACKAGE_DIR / "kernels"
SOURCES = (
    PACKAGE_DIR / "binding.cpp",
    KERNEL_DIR / "row_linear.cu",
    KERNEL_DIR / "tile_linear.cu",
)
HEADERS = tuple(sorted(KERNEL_DIR.glob("*.h")) + sorted(KERNEL_DIR.glob("*.cuh")))
CXX_FLAGS = ("-O3",)
NVCC_FLAGS = ("-O3", "--expt-relaxed-constexpr", "-lineinfo")


class CudaExtUnavailable(RuntimeError):
    """The CUDA extension cannot be used here; the message says why and what to do."""


def env_mode() -> str:
    """Return "off", "auto" or "require" from ``ARDROP_CUDA_EXT``."""
    return _KERNELS.mode()


def cache_root() -> Path:
    """Directory holding one build directory per (torch, CUDA, Python, sources)."""
    explicit = os.environ.get("ARDROP_CUDA_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ardrop" / "cuda_ext"


def source_hash() -> str:
    """Hash of every source, header and flag, so an edited kernel triggers a rebuild."""
    digest = hashlib.sha256()
    for path in (*SOURCES, *HEADERS):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(repr((CXX_FLAGS, NVCC_FLAGS)).encode())
    return digest.hexdigest()[:16]


def build_directory() -> Path:
    """The cache directory this torch/CUDA/Python/source combination builds into."""
    tag = (
        f"{EXT_NAME}-torch{torch.__version__}-cuda{torch.version.cuda}"
        f"-py{sys.version_info[0]}{sys.version_info[1]}-{source_hash()}"
    )
    return cache_root() / re.sub(r"[^A-Za-z0-9._-]", "_", tag)


def not_attempted_reason() -> str | None:
    """Why no build is attempted in this process (None if a build may be attempted).

    Checked on every call, so changing ``ARDROP_CUDA_EXT`` takes effect at once.
    """
    return _KERNELS.not_attempted()


def _no_cuda_reason() -> str | None:
    if not torch.cuda.is_available():
        return (
            "CUDA is not available (torch.cuda.is_available() is False: no GPU, no "
            "driver, or a CPU-only torch build); the CUDA extension is only built and "
            "used on CUDA machines, everything else runs the torch path unchanged"
        )
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        return (
            "no CUDA toolkit found (torch.utils.cpp_extension.CUDA_HOME is None): install "
            "nvcc matching torch.version.cuda or set CUDA_HOME, then retry"
        )
    return None


def _build(verbose: bool) -> Any:
    from torch.utils import cpp_extension

    build_dir = build_directory()
    build_dir.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=EXT_NAME,
        sources=[str(p) for p in SOURCES],
        extra_cflags=list(CXX_FLAGS),
        extra_cuda_cflags=list(NVCC_FLAGS),
        build_directory=str(build_dir),
        verbose=verbose,
    )


def _build_failure_text(exc: BaseException) -> str:
    return (
        f"building the ardrop CUDA extension failed: {type(exc).__name__}: {exc}\n"
        f"  build directory: {build_directory()}\n"
        f"  sources: {', '.join(str(p) for p in SOURCES)}\n"
        "  The layers fall back to the torch GPU path. To fix: make nvcc for "
        f"CUDA {torch.version.cuda} and a host compiler accepted by torch available "
        "(CUDA_HOME, PATH), then rerun `python -m ardrop.functional.kernel_check` to see the full log; "
        "or set ARDROP_CUDA_EXT=0 to stop trying."
    )


def _sources_present() -> None:
    """An incomplete install (sources left out of a wheel) is a clear fallback, not a FileNotFoundError."""
    missing = [str(p) for p in (*SOURCES, *HEADERS) if not p.is_file()]
    if missing or not HEADERS:
        raise _MissingSources(
            f"the ardrop CUDA extension's sources are missing ({', '.join(missing) or 'no headers in ' + str(KERNEL_DIR)}): "
            "this install is incomplete. The layers fall back to the torch GPU path. To fix: reinstall ardrop "
            "from a complete wheel or source tree (cuda_ext/kernels/*.cu, *.cuh, *.h must be installed), or set "
            "ARDROP_CUDA_EXT=0 to stop trying."
        )


class _MissingSources(Exception):
    """Its message is the whole explanation (no build was attempted)."""


def _explain(stage: str, exc: BaseException) -> str:
    if isinstance(exc, _MissingSources):
        return str(exc)
    if stage == "build":
        return _build_failure_text(exc)
    return (
        f"the ardrop CUDA extension built in {build_directory()} but failed its "
        f"self-check against the dense masked reference: {exc}\n"
        "  The layers fall back to the torch GPU path. Please report this with "
        "your GPU model and torch/CUDA versions; ARDROP_CUDA_EXT=0 silences it."
    )


_KERNELS: LazyBuild[Any] = LazyBuild(
    env_var="ARDROP_CUDA_EXT", off_means="torch GPU path", auto_means="build the CUDA kernels on first use",
    disabled="disabled by ARDROP_CUDA_EXT=0: the layers use the torch GPU path",
    unavailable=CudaExtUnavailable, explain=_explain, not_attempted=_no_cuda_reason,
    no_check=(
        "no self-check has been handed to cuda_ext.loader, so the kernels are not used: they are checked "
        "against ardrop's dense masked references before first use, and cuda_ext cannot import ardrop. "
        "Use them through ardrop.functional (compact_linear, tile_linear), which hands the check over, or "
        "call cuda_ext.loader.hand_over_self_check(ardrop.functional.kernel_check.run_self_check) first."
    ),
)


def hand_over_self_check(check: Callable[[Any], None]) -> None:
    """The check a freshly built module must pass before any op uses it (``check(module)`` raises on a mismatch).

    Why handed over: the check compares the kernels with ardrop's dense masked references
    (``ardrop.functional.kernel_check``), and cuda_ext sits below ardrop. ardrop's
    dispatch hands it over before its first CUDA call.
    """
    _KERNELS.hand_over_check(check)


def _build_from_sources(verbose: bool = False) -> Any:
    _sources_present()
    return _build(verbose)


def load(verbose: bool = False) -> Any:
    """Return the built, self-checked extension module, building it on first call.

    Raises CudaExtUnavailable with the reason when it cannot be used. A build or
    self-check failure is remembered for the rest of the process (no retry storm).
    """
    return _KERNELS.load(lambda: _build_from_sources(verbose))


def available() -> bool:
    """True when the CUDA kernels are built and self-checked (building them if needed).

    Never raises in the default mode: a failure warns once and returns False so the
    caller keeps the torch path. With ARDROP_CUDA_EXT=require a failure raises.
    """
    return _KERNELS.usable(_build_from_sources, stacklevel=2) is not None


def unavailable_reason() -> str | None:
    """None when available(), else the text explaining why not (does not raise)."""
    try:
        load()
        return None
    except CudaExtUnavailable as exc:
        return str(exc)


def status() -> dict[str, Any]:
    """One-look summary for logs and bug reports."""
    reason = unavailable_reason()
    return {
        "available": reason is None,
        "reason": reason,
        "mode": env_mode(),
        "build_directory": str(build_directory()),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def _reset_for_tests() -> None:
    _KERNELS.reset()
