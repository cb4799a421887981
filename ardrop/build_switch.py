"""The off/auto/require switch shared by the optional compiled kernels (CPU and CUDA).

Both read an environment variable with the same meanings, so a user learns it once:
``0``/``off`` never builds, ``1``/``auto`` (the default) builds on first use and falls
back to the torch path on failure, ``require`` makes a failure an error.
"""

from __future__ import annotations

import os

_OFF = {"0", "off", "false", "no"}
_AUTO = {"", "1", "auto", "on", "true", "yes"}


def switch_mode(var: str, off_means: str, auto_means: str) -> str:
    """"off", "auto" or "require" from ``var``; anything else is a ValueError naming the choices."""
    raw = os.environ.get(var, "auto")
    value = raw.strip().lower()
    if value in _OFF:
        return "off"
    if value in _AUTO:
        return "auto"
    if value == "require":
        return "require"
    raise ValueError(
        f"{var}={raw!r} is not understood: use 0 ({off_means}), 1 or auto ({auto_means}, the default) "
        "or require (fail loudly if they cannot be built)"
    )
