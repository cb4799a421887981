"""Build, cache and self-check the ardrop CUDA extension.

Why a JIT build: the kernels must match the local GPU architecture and the installed
torch/CUDA pair, so they are compiled with ``torch.utils.cpp_extension.load`` on first
use (or ahead of time with ``python -m cuda_ext.loader``) into a cache directory keyed
by torch version, CUDA version, Python version and a hash of the sources; a later
process reuses the built module without recompiling.

The build is never attempted where ``torch.cuda.is_available()`` is False, so CPU
machines (and CPU-only torch builds) never invoke nvcc. A freshly built module must
also pass a small self-check against a dense masked reference before the layers use it;
if the build or the check fails, the layers keep the torch GPU path and one warning
says why.

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
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

from ardrop.build_switch import switch_mode

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
    return switch_mode("ARDROP_CUDA_EXT", "torch GPU path", "build the CUDA kernels on first use")


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


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.module: Any = None  # built and self-checked
        self.failure: str | None = None  # build or self-check failure (sticky)
        self.warned = False


_STATE = _State()


def not_attempted_reason() -> str | None:
    """Why no build is attempted in this process (None if a build may be attempted).

    Checked on every call, so changing ``ARDROP_CUDA_EXT`` takes effect at once.
    """
    if env_mode() == "off":
        return "disabled by ARDROP_CUDA_EXT=0: the layers use the torch GPU path"
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
        "(CUDA_HOME, PATH), then rerun `python -m cuda_ext.loader` to see the full log; "
        "or set ARDROP_CUDA_EXT=0 to stop trying."
    )


def load(verbose: bool = False) -> Any:
    """Return the built, self-checked extension module, building it on first call.

    Raises CudaExtUnavailable with the reason when it cannot be used. A build or
    self-check failure is remembered for the rest of the process (no retry storm).
    """
    reason = not_attempted_reason()
    if reason is not None:
        raise CudaExtUnavailable(reason)
    with _STATE.lock:
        if _STATE.module is not None:
            return _STATE.module
        if _STATE.failure is not None:
            raise CudaExtUnavailable(_STATE.failure)
        missing = [str(p) for p in (*SOURCES, *HEADERS) if not p.is_file()]
        if missing or not HEADERS:
            _STATE.failure = (
                f"the ardrop CUDA extension's sources are missing ({', '.join(missing) or 'no headers in ' + str(KERNEL_DIR)}): "
                "this install is incomplete. The layers fall back to the torch GPU path. To fix: reinstall ardrop "
                "from a complete wheel or source tree (cuda_ext/kernels/*.cu, *.cuh, *.h must be installed), or set "
                "ARDROP_CUDA_EXT=0 to stop trying."
            )
            raise CudaExtUnavailable(_STATE.failure)
        try:
            module = _build(verbose)
        except Exception as exc:  # compiler/linker errors arrive as several types
            _STATE.failure = _build_failure_text(exc)
            raise CudaExtUnavailable(_STATE.failure) from exc
        try:
            from .selfcheck import run_self_check

            run_self_check(module)
        except Exception as exc:
            _STATE.failure = (
                f"the ardrop CUDA extension built in {build_directory()} but failed its "
                f"self-check against the dense masked reference: {exc}\n"
                "  The layers fall back to the torch GPU path. Please report this with "
                "your GPU model and torch/CUDA versions; ARDROP_CUDA_EXT=0 silences it."
            )
            raise CudaExtUnavailable(_STATE.failure) from exc
        _STATE.module = module
        return module


def available() -> bool:
    """True when the CUDA kernels are built and self-checked (building them if needed).

    Never raises in the default mode: a failure warns once and returns False so the
    caller keeps the torch path. With ARDROP_CUDA_EXT=require a failure raises.
    """
    mode = env_mode()
    try:
        load()
        return True
    except CudaExtUnavailable as exc:
        if mode == "require":
            raise
        with _STATE.lock:
            if _STATE.failure is not None and not _STATE.warned:
                _STATE.warned = True
                warnings.warn(str(exc), RuntimeWarning, stacklevel=2)
        return False


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
    with _STATE.lock:
        _STATE.module = None
        _STATE.failure = None
        _STATE.warned = False


def main(argv: list[str] | None = None) -> int:
    """``python -m cuda_ext.loader``: build ahead of time (e.g. at install) and report."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--quiet", action="store_true", help="hide the compiler log")
    args = parser.parse_args(argv)
    reason = not_attempted_reason()
    if reason is not None:
        print(f"ardrop cuda_ext: not built: {reason}")
        return 1
    print(f"ardrop cuda_ext: building into {build_directory()} ...", flush=True)
    try:
        load(verbose=not args.quiet)
    except CudaExtUnavailable as exc:
        print(f"ardrop cuda_ext: FAILED\n{exc}")
        return 1
    print("ardrop cuda_ext: built and passed the self-check; CUDA layers use it by default")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
