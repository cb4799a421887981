"""The lazy-build state machine of the optional compiled kernels (CPU and CUDA), and their off/auto/require switch.

Holds: ``switch_mode`` (one environment variable, one meaning for every compiled part)
and ``LazyBuild`` (build on first use, check before first use, share, remember a failure,
warn once). Imports: stdlib only, so both loaders can use it: ``cuda_ext.loader`` and
``ardrop.native.library`` (ardrop may import cuda_ext; cuda_ext never imports ardrop).

Why one machine: the fused CPU passes and the CUDA kernels promise the same things, and
two copies of the rules drifted apart before (which failures warn, when the switch is
read). A user learns the switch once: ``0``/``off`` never builds, ``1``/``auto`` (the
default) builds on first use and falls back to the torch path on failure, ``require``
makes a failure an error.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from typing import Generic, TypeVar

_OFF = {"0", "off", "false", "no"}
_AUTO = {"", "1", "auto", "on", "true", "yes"}

T = TypeVar("T")


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


class LazyBuild(Generic[T]):
    """One compiled library: built on first use, published only once its check passed.

    The rules both loaders keep:
    - The switch and ``not_attempted`` are read on every call, so changing the
      environment variable takes effect at once (the GPU bench flips it per step).
    - A build or check failure is remembered for the process (no rebuild storm on every
      call) and warned about once, in ``auto`` mode only; ``require`` raises instead.
    - The check runs before anyone else sees the library. It may call the owner's public
      functions, which call ``load`` again: the checking thread (the only one holding the
      lock) gets the candidate, every other thread waits for the verdict.
    - The check is handed over by the owner of the reference it compares against
      (``hand_over_check``): for the CUDA kernels that is ardrop, which cuda_ext must not import.

    ``explain(stage, exc)`` turns a failure at ``stage`` ("build" or "check") into the
    text users see; ``unavailable`` is the owner's exception type.
    """

    def __init__(self, *, env_var: str, off_means: str, auto_means: str, disabled: str,
                 unavailable: type[Exception], explain: Callable[[str, BaseException], str],
                 not_attempted: Callable[[], str | None] = lambda: None,
                 check: Callable[[T], None] | None = None, no_check: str = "") -> None:
        self.env_var, self.off_means, self.auto_means = env_var, off_means, auto_means
        self.disabled, self.unavailable, self.explain = disabled, unavailable, explain
        self.not_attempted_extra, self.check, self.no_check = not_attempted, check, no_check
        self.lock = threading.RLock()
        self.value: T | None = None  # built and checked
        self.failure: str | None = None  # build or check failure (sticky)
        self.warned = False
        self._candidate: T | None = None  # built, under check (seen only by the lock holder)

    def mode(self) -> str:
        return switch_mode(self.env_var, self.off_means, self.auto_means)

    def hand_over_check(self, check: Callable[[T], None]) -> None:
        """The check a freshly built library must pass; takes effect at the next build."""
        with self.lock:
            self.check = check

    def not_attempted(self) -> str | None:
        """Why no build is attempted now (None if one may be): the switch, then the owner's reasons."""
        if self.mode() == "off":
            return self.disabled
        return self.not_attempted_extra()

    def load(self, build: Callable[[], T]) -> T:
        """The checked library, building and checking it with ``build`` on first call.

        Raises ``unavailable`` with the reason when it cannot be used.
        """
        reason = self.not_attempted()
        if reason is not None:
            raise self.unavailable(reason)
        value = self.value
        if value is not None:
            return value
        with self.lock:
            if self.value is not None:
                return self.value
            if self._candidate is not None:  # the check's own calls
                return self._candidate
            if self.failure is not None:
                raise self.unavailable(self.failure)
            check = self.check
            if check is None:  # not a failure of the library: a later hand-over may still succeed
                raise self.unavailable(self.no_check)
            try:
                candidate = build()
            except Exception as exc:  # compiler/linker errors arrive as several types
                self.failure = self.explain("build", exc)
                raise self.unavailable(self.failure) from exc
            self._candidate = candidate
            try:
                check(candidate)
            except Exception as exc:
                self.failure = self.explain("check", exc)
                raise self.unavailable(self.failure) from exc
            finally:
                self._candidate = None
            self.value = candidate
            return candidate

    def usable(self, build: Callable[[], T], stacklevel: int = 1) -> T | None:
        """The library, or None where it cannot be used (a failure warns once); raises in ``require`` mode.

        ``stacklevel`` counts from the caller of ``usable``, as for ``warnings.warn``.
        """
        try:
            return self.load(build)
        except self.unavailable as exc:
            mode = self.mode()
            if mode == "require":
                raise
            with self.lock:
                if mode == "auto" and self.failure is not None and not self.warned:
                    self.warned = True
                    warnings.warn(str(exc), RuntimeWarning, stacklevel=stacklevel + 1)
            return None

    def reset(self) -> None:
        """Forget the library and any failure (tests); the handed-over check stays."""
        with self.lock:
            self.value = None
            self.failure = None
            self.warned = False
