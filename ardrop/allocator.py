"""Keep large freed buffers inside the process (glibc ``mallopt``), from inside the process.

Why: by default glibc serves every allocation above its mmap threshold (at most 32 MB) with
a fresh ``mmap`` and returns it with ``munmap`` when freed, and trims the heap top back
to the OS. A training step allocates and frees the same large activations and gradients
every step, so each one is page-faulted in again: a 64 MB buffer took 26 ms to fill
instead of 8 ms here. Raising both thresholds is what ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` in the environment do; setting them with ``mallopt`` at start
gives ``python -m ardrop.train`` and ``python -m ardrop.bench`` the same allocator without
a wrapper script, on both sides of every comparison.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30  # larger than any buffer these models allocate; within mallopt's int range
ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_state = {"done": None}


def keep_large_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds once per process. False where there is no glibc.

    Settings already in the environment win (a user who tuned them keeps their values).
    """
    if _state["done"] is not None:
        return _state["done"]
    ok = False
    if os.name == "posix":
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to set
            mallopt = None
        if mallopt is not None:
            ok = True
            if os.environ.get(ENV[0]) is None:
                ok = bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and ok
            if os.environ.get(ENV[1]) is None:
                ok = bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD)) and ok
    _state["done"] = ok
    return ok
