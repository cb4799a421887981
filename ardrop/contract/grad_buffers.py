"""Recycled full-size weight-gradient buffers for the skip-the-dropped-work ops.

Why: ``param.grad`` must be full-size (DDP, clipping, AMP and optimizers expect it), but
only the kept block is non-zero. Allocating and zero-filling a fresh full-size gradient
every step costs as much as the kept GEMMs themselves at 4096 wide, and the memory is
cold. A step's gradient differs from the previous one only on the two kept blocks, so
each weight keeps one buffer: before reuse only the *previous* block is zeroed, then the
op writes its new block. ``optimizer.zero_grad()`` (``set_to_none=True``, torch's
default) hands the buffer back.

The buffer is reused only when nothing else can see it, else a fresh zero tensor is used:
- someone still holds it (``param.grad`` was not set to None, a saved reference, a
  gradient-accumulation step): checked with the storage's use count;
- it was written in place since the op filled it (clipping, AMP unscaling, DDP's
  copy-back, a hand-written ``grad.add_``): checked with the tensor version counter,
  which every alias shares; the whole buffer is then zeroed, because the zeros outside
  the block are no longer known to be zeros.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.weak import WeakTensorKeyDictionary

_use_count = getattr(torch._C, "_storage_Use_Count", None)


class _Buffer:
    __slots__ = ("tensor", "region", "version", "idle_count", "norm")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.region = None  # (zeroer, key) of the block written last, or None: all zero
        self.version = tensor._version
        self.norm = None  # 2-norm of the sealed block, when its op computed it (`seal`)
        self.idle_count = _storage_count(tensor)  # the count when only this record holds it

    def idle(self) -> bool:
        return _storage_count(self.tensor) == self.idle_count


_BUFFERS = WeakTensorKeyDictionary()  # weight -> _Buffer
_VIEWS: dict = {}  # zero_region function -> views(buf, key): the views that can be non-zero
enabled = True  # module switch (tests measure against a fresh zero tensor with it off)
norms_wanted = False  # set by the first gradient-norm clip: ops then seal their block's norm too


def want_norms() -> None:
    """Ask the ops to hand over each sealed block's 2-norm from now on (`sealed_blocks`).

    Why: an op has its weight-gradient block in cache (compact, before the scatter into the
    full-size buffer) when it writes it; a clip that reads the written views afterwards
    reads them from memory, strided: 2.5 ms of the 2048 MLP's 25 ms tile step at dp 4.
    Asked for by the first clip, so runs that never clip pay nothing.
    """
    global norms_wanted
    norms_wanted = True


def register_views(zero_region: Callable, views: Callable[[torch.Tensor, object], list]) -> None:
    """Say which views of a buffer a region key covers (those ``zero_region`` would zero)."""
    _VIEWS[zero_region] = views


def sealed_blocks(grads: list) -> list:
    """Per gradient, ``(views, norm)``: the views outside which it is exactly zero (``[g]``
    when that is not known) and the 2-norm its op sealed with it (a 0-d tensor, or None).

    Both are known for ardrop's recycled buffers that were sealed by the op that wrote them
    and not written since: a gradient norm or a clip then reads and scales only the kept
    block, or nothing at all when the norm is known. One lookup serves both, since a clip
    needs both.
    """
    out = []
    for g, rec in zip(grads, _records(grads)):
        sealed = (rec is not None and rec.region is not None and rec.version == rec.tensor._version
                  and rec.tensor.shape == g.shape and rec.tensor.stride() == g.stride())
        fn = _VIEWS.get(rec.region[0]) if sealed else None
        views = fn(g, rec.region[1]) if fn is not None else None
        out.append(([g] if views is None else [v for v in views if v is not None], rec.norm if sealed else None))
    return out


def reseal(grads: list) -> None:
    """After an in-place scale of the written views only: the zeros outside are still zeros.

    The sealed norm is dropped (the values changed); the block is still the only non-zero part.
    """
    for rec in _records(grads):
        if rec is not None and rec.region is not None and rec.version != -1:
            rec.version = rec.tensor._version
            rec.norm = None


def _records(grads: list) -> list:
    """Per gradient, the record of the recycled buffer it is (matched by storage address), or None."""
    by_ptr = {rec.tensor.data_ptr(): rec for rec in _BUFFERS.values()}
    return [by_ptr.get(g.data_ptr()) for g in grads]


def _storage_count(t: torch.Tensor) -> int:
    return _use_count(t.untyped_storage()._cdata)


def _fresh(weight: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(weight, memory_format=torch.contiguous_format)


def gradient_buffer(
    weight: torch.Tensor,
    region,
    zero_region: Callable[[torch.Tensor, object], None],
    overwrites: Callable[[tuple], bool] | None = None,
) -> torch.Tensor:
    """A contiguous tensor shaped like ``weight``, zero everywhere except possibly ``region``.

    The caller then writes the whole of ``region`` and calls `seal`. ``region`` is any
    hashable key for the block; ``zero_region(buf, key)`` zeroes the block of an earlier key.
    ``overwrites((zero_region, key))``, when given, says that the caller's write will cover
    that earlier block anyway (zeros included), so it is not zeroed first.
    """
    if not enabled or _use_count is None:
        return _fresh(weight)
    rec = _BUFFERS.get(weight)
    if rec is None or (rec.tensor.shape, rec.tensor.dtype, rec.tensor.device) != (
            weight.shape, weight.dtype, weight.device):  # new, or replaced by another shape or type
        rec = _BUFFERS[weight] = _Buffer(_fresh(weight))
    elif not rec.idle():
        return _fresh(weight)  # still in use elsewhere
    elif rec.tensor._version != rec.version:
        rec.tensor.zero_()  # written in place since: its zeros are not known any more
    elif rec.region is not None and rec.region != (zero_region, region) and not (
            overwrites is not None and overwrites(rec.region)):
        rec.region[0](rec.tensor, rec.region[1])  # the op that wrote it knows its block's shape
    rec.region = (zero_region, region)
    rec.version = -1  # not sealed: a fill that stops half-way must not be trusted
    rec.norm = None
    return rec.tensor.detach()  # an alias: autograd can take it as param.grad without a copy


def seal(weight: torch.Tensor, grad: torch.Tensor, norm: torch.Tensor | None = None) -> None:
    """Record that ``grad`` (from `gradient_buffer`) now holds exactly its region's block.

    ``norm``: the block's 2-norm, when the op computed it (see `want_norms`).
    """
    rec = _BUFFERS.get(weight)
    if rec is not None and rec.tensor.data_ptr() == grad.data_ptr():
        rec.version = rec.tensor._version
        rec.norm = norm
