"""The read contract between ardrop's layers and an optimiser that defers dropped weights.

Why its own module: the autograd ops (`ardrop.functional`) and the layers (`ardrop.nn`) must
say where they read a parameter, and `ardrop.optim.LazySGD` must act on it, but an op should
not depend on an optimiser, nor the optimiser on the ops. Both import this module; it imports
only torch.

The contract: before a layer reads a parameter it calls `before_read(param, region)`, which
records where this step's gradient can be nonzero and returns a `Current` (or None when the
stored values are current): the layer reads current values through it, into the compact
block it gathers anyway. Every other read must see current values, so ardrop's layers call
`flush_params` on their dense paths (eval, dp=1) and before their ``state_dict``
(`FlushesLazyParams`). Code of your own that reads weights between steps (an EMA, a custom
metric) calls ``optimizer.flush()`` first. A weight read by code that does not report
(weight tying) is `mark_dense`-ed: it is never deferred.

An optimiser takes part by `claim`-ing parameters; it must provide ``_note_read(param,
region)`` and ``_flush_param(param)``. A parameter nobody claimed costs one dict lookup.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch.utils.weak import WeakTensorKeyDictionary

_OWNERS = WeakTensorKeyDictionary()  # parameter -> weakref to the optimiser deferring it
_DENSE_ONLY = WeakTensorKeyDictionary()  # parameters read by code that does not report (tied weights)


def claim(param: torch.Tensor, owner) -> None:
    """``owner`` (an optimiser) defers ``param`` from now on; reads are reported to it."""
    _OWNERS[param] = weakref.ref(owner)


def owner_of(param: torch.Tensor):
    """The live optimiser deferring ``param``, or None."""
    ref = _OWNERS.get(param)
    return ref() if ref is not None else None


def is_dense_only(param: torch.Tensor) -> bool:
    """Whether `mark_dense` excluded ``param`` from deferral."""
    return param in _DENSE_ONLY


class Region:
    """Where a layer read a parameter (and so where its gradient can be nonzero).

    ``views(t)`` returns the views of a tensor shaped like the parameter that cover the
    region; ``key`` identifies it, so two reads of the same region count as one.
    ``write_views`` (default: ``views``) is what a step writes: it may cover more, where
    the gradient is zero, when that is cheaper (see `rows_region`).
    """

    __slots__ = ("key", "views", "write_views", "fused_axpy2")

    def __init__(self, key: tuple, views: Callable[[torch.Tensor], list], write_views=None,
                 fused_axpy2=None) -> None:
        self.key, self.views = key, views
        self.write_views = write_views or views
        self.fused_axpy2 = fused_axpy2  # (w, b, g, kw, kb) -> bool: the update in one kernel call, if it can

    def __eq__(self, other) -> bool:
        return isinstance(other, Region) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


DENSE = Region(("dense",), lambda t: [t])


LINE_FLOATS = 16  # a 64-byte cache line of float32: below this column stride, whole rows are cheaper


def rows_region(dp: int, offset: int, in_dp: int = 1, in_offset: int = 0) -> Region:
    """Rows ``offset::dp`` and, of those, columns ``in_offset::in_dp`` (any trailing dims whole).

    A step writes the whole kept rows when ``in_dp`` is below a cache line's worth of
    floats: a column stride that small touches every line of the row anyway, and the
    contiguous pass vectorises (measured 2.1 -> 1.4 ms for 1365 rows of 4096 at stride 3).
    Adding the gradient's exact zeros leaves the other columns as they were.
    """
    if dp == 1 and in_dp == 1:
        return DENSE

    def views(t):
        v = t[offset::dp]
        return [v if in_dp == 1 else v[:, in_offset::in_dp]]

    def rows(t):
        return [t[offset::dp]]

    return Region(("rows", dp, offset, in_dp, in_offset), views, rows if in_dp < LINE_FLOATS else None)


class Current:
    """Reads current values of a parameter held in a moving frame: ``ww * w + wb * buf``."""

    __slots__ = ("param", "buf", "wb", "ww")

    def __init__(self, param, buf, wb: float, ww: float) -> None:
        self.param, self.buf, self.wb, self.ww = param, buf, wb, ww

    def into(self, dst: torch.Tensor, w_view: torch.Tensor, b_view: torch.Tensor | None) -> torch.Tensor:
        """Write the current values of ``w_view`` (a view of the parameter) into ``dst``."""
        with torch.no_grad():
            if self.ww == 1.0 and b_view is not None:
                return torch.add(w_view, b_view, alpha=self.wb, out=dst)
            torch.mul(w_view, self.ww, out=dst)
            return dst if b_view is None or self.wb == 0.0 else dst.add_(b_view, alpha=self.wb)

    def new(self, view: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Current values of ``view(param)`` as a new contiguous tensor."""
        w_view = view(self.param)
        b_view = view(self.buf) if self.buf is not None else None
        return self.into(torch.empty(w_view.shape, dtype=w_view.dtype, device=w_view.device), w_view, b_view)

    def copy(self, dst_views, views: Callable[[torch.Tensor], list]) -> None:
        """``dst.copy_(current values)`` for matching lists of destination and parameter views."""
        b_views = views(self.buf) if self.buf is not None else None
        for k, (d, w) in enumerate(zip(dst_views, views(self.param))):
            if d is not None:
                self.into(d, w, b_views[k] if b_views is not None else None)


def before_read(param: torch.Tensor | None, region: Region | None = DENSE) -> Current | None:
    """Note that ``param`` is read (and gets its gradient) in ``region`` this step.

    Returns how to read its current values, or None when the stored values are current.
    ``region=None`` is a read that cannot go through `Current` (a kernel reading the
    stored tensor): the values are made current and the parameter gets a dense step.
    """
    if param is None:
        return None
    opt = owner_of(param)
    return opt._note_read(param, region) if opt is not None else None


def flush_params(*params) -> None:
    """Make the stored values of these parameters current (no-op for unmanaged ones)."""
    for p in params:
        if p is None:
            continue
        opt = owner_of(p)
        if opt is not None:
            opt._flush_param(p)


def _flush_module(module, *args) -> None:
    flush_params(*module.parameters())


class FlushesLazyParams:
    """Mixin for modules whose parameters a `LazySGD` may hold in its moving frame.

    Whole-module reads and writes see true values: ``state_dict``, ``load_state_dict``
    (a pending update must be folded in *before* new values replace the stored ones,
    else it lands on top of them) and ``copy.deepcopy``/pickling. Call
    ``_flush_hooks()`` in ``__init__``.
    """

    def _flush_hooks(self) -> None:
        self.register_state_dict_pre_hook(_flush_module)
        self.register_load_state_dict_pre_hook(_flush_module)

    def __getstate__(self):
        flush_params(*self.parameters())
        return super().__getstate__()


def mark_dense(param: torch.Tensor) -> None:
    """Never defer ``param``: code that does not report its reads also uses it (weight tying)."""
    _DENSE_ONLY[param] = True
    flush_params(param)
