"""`LazySGD`: torch's momentum SGD that writes only the weights a pattern let through.

Why: with momentum, *every* weight moves every step, dropped ones included (their
buffer keeps decaying into the weight). ``torch.optim.SGD`` therefore reads and writes
all parameters, their gradients and buffers each step; at 4096 wide that memory traffic
costs more than the skipped GEMMs save.

A weight that gets no gradient evolves by one fixed linear map of its (buffer, weight)
pair, the same for every element of the parameter::

    buf' = mu * buf + (1 - dampening) * wd * w
    w'   = w - lr * (buf'                      (plain)
                     | wd * w + mu * buf')     (nesterov)

So ``LazySGD`` stores each managed parameter in a moving frame: the true values are
``M @ (stored buffer, stored weight)`` for one 2x2 matrix ``M`` per parameter (float64
scalars, no tensor work). A step multiplies ``M`` by the step's map; only the elements
that received a gradient are written, with the gradient pushed through ``M^-1``. The
values equal ``torch.optim.SGD``'s up to rounding; the frame is folded back into the
tensors (``flush``) after ``window`` steps, or earlier once ``M`` grows ill-conditioned,
which bounds the rounding.

The layers report their reads through `ardrop.contract.param_reads` (`before_read`,
`flush_params`); this optimiser is the other side of that contract (`_note_read`,
`_flush_param`). `LazySGD.state_dict` flushes too. Reads are recorded from one step to the next, not from
``zero_grad``: Lightning zeroes gradients between the forward and the backward. A
parameter that nothing reported gets torch's dense step, one that reported two regions
before one step (gradient accumulation) a step over the whole tensor, so
an unknown use is slower, never wrong, as long as its gradient really is zero outside
the reported region: a loss term on the weight itself or weight tying breaks that (put
such weights in a group with ``lazy=False``, or `mark_dense` them; ``verify=True``
checks it at a cost).
"""

from __future__ import annotations

import gc
import weakref

import torch
from torch.optim.sgd import sgd as torch_sgd

from ardrop import native
from ardrop.checks import check_int
from ardrop.contract.param_reads import DENSE, Current, Region, claim, is_dense_only, owner_of

_MAX_GROWTH = 256.0  # flush once the frame amplifies stored values by more than this


def _whole(view: torch.Tensor, t: torch.Tensor) -> bool:
    """Whether ``view`` is all of ``t``."""
    return view.shape == t.shape and view.data_ptr() == t.data_ptr() and view.stride() == t.stride()


def _fold(p: torch.Tensor, buf: torch.Tensor | None, frame: _Frame) -> None:
    """Write ``M @ (stored buffer, stored weight)`` into the tensors."""
    with torch.no_grad():
        if buf is None:  # momentum 0: the frame only scales the weights
            p.mul_(frame.ww)
        elif frame.bw == 0.0:  # no weight decay: the weights do not feed the buffer
            if frame.ww != 1.0:
                p.mul_(frame.ww)
            p.add_(buf, alpha=frame.wb)
            buf.mul_(frame.bb)
        else:
            old_buf = buf.clone()
            buf.mul_(frame.bb).add_(p, alpha=frame.bw)
            p.mul_(frame.ww).add_(old_buf, alpha=frame.wb)


def _fold_all(frames: dict, versions: dict, state_box: list) -> None:
    """A dropped optimizer's last act: fold every pending frame (``weakref.finalize``)."""
    for p, frame in list(frames.items()):
        if not frame.identity and p._version == versions.get(p):
            _fold(p, state_box[0].get(p, {}).get("momentum_buffer"), frame)
        frame.reset()


class _Frame:
    """``M`` (acting on (buffer, weight)) as float64 scalars, and the steps since the last flush."""

    __slots__ = ("bb", "bw", "wb", "ww", "steps")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.bb, self.bw, self.wb, self.ww = 1.0, 0.0, 0.0, 1.0
        self.steps = 0

    @property
    def identity(self) -> bool:
        return self.bb == 1.0 and self.bw == 0.0 and self.wb == 0.0 and self.ww == 1.0

    @property
    def det(self) -> float:
        return self.bb * self.ww - self.bw * self.wb


class LazySGD(torch.optim.Optimizer):
    """``torch.optim.SGD`` semantics, writing only the reported regions (see module doc).

    Args are torch's, plus ``lazy`` (per group; False gives plain dense steps),
    ``window`` (steps after which the frame is folded back into the tensors) and
    ``verify`` (check that gradients vanish outside the reported regions).
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False,
                 lazy: bool = True, window: int = 64, verify: bool = False) -> None:
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"learning rate must be a number > 0, got {lr!r}")
        if momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0 (as in torch.optim.SGD)")
        self.window = check_int("window", window)
        self.verify = bool(verify)
        self._frames: dict[torch.Tensor, _Frame] = {}
        self._versions: dict[torch.Tensor, int] = {}  # each parameter's version counter after our last write
        self._pending: dict[torch.Tensor, set] = {}
        self._state_box: list = [None]  # the finalizer's view of self.state (load_state_dict replaces it)
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, lazy=lazy)
        super().__init__(params, defaults)
        self._state_box[0] = self.state
        # An optimizer dropped with updates pending (Lightning rebuilding it, a user's
        # `del`) folds them into the tensors as it goes, instead of losing them.
        weakref.finalize(self, _fold_all, self._frames, self._versions, self._state_box)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            other = owner_of(p)
            if other is not None and other is not self:
                gc.collect()  # an unreferenced optimizer in a reference cycle: let it fold and go
                other = owner_of(p)
            if other is not None and other is not self:
                other._release(p)  # still alive: it hands over with true values and steps p densely
            claim(p, self)
            self._frames[p] = _Frame()
            self._versions[p] = p._version

    def _release(self, p: torch.Tensor) -> None:
        """Give up deferring ``p`` (another LazySGD takes it): fold its frame, step it densely from now on."""
        self._flush_param(p)
        self._frames.pop(p, None)
        self._versions.pop(p, None)
        self._pending.pop(p, None)

    def _check_external_write(self, p: torch.Tensor, frame: _Frame) -> None:
        """Handle a write to ``p`` that did not go through this optimizer (``p.copy_``, a foreign load).

        The written values are true weights. The true buffer is ``bb * buf + bw * w_old``:
        without weight decay (``bw = 0``) it is recovered exactly, and ardrop's layers
        flush before their own ``load_state_dict``, so only a foreign write with weight
        decay cannot be honoured; that raises rather than step from a wrong buffer.
        """
        if p._version == self._versions.get(p, p._version):
            return
        if not frame.identity:
            buf = self._buffer(p)
            if buf is not None and frame.bw != 0.0:
                raise RuntimeError(
                    f"a parameter of shape {tuple(p.shape)} was overwritten while LazySGD held a pending update "
                    "with weight decay, so its momentum buffer cannot be recovered. Call optimizer.flush() before "
                    "writing parameters yourself (ardrop's layers do this in load_state_dict), or use "
                    "torch.optim.SGD (model.optimizer=sgd)."
                )
            if buf is not None and frame.bb != 1.0:
                with torch.no_grad():
                    buf.mul_(frame.bb)
            frame.reset()
        self._versions[p] = p._version

    # ---- reads ------------------------------------------------------------------------
    def _buffer(self, p):
        return self.state.get(p, {}).get("momentum_buffer")

    def _note_read(self, p: torch.Tensor, region: Region) -> Current | None:
        frame = self._frames.get(p)
        if frame is None:
            return None
        self._check_external_write(p, frame)
        if region is None or is_dense_only(p):
            self._flush_param(p)
            region = None  # recorded as an unreported use: a dense step
        if torch.is_grad_enabled() and p.requires_grad:  # (an evaluation forward leaves no gradient)
            self._pending.setdefault(p, set()).add(region)
        if frame.wb == 0.0 and frame.ww == 1.0:
            return None
        return Current(p, self._buffer(p), frame.wb, frame.ww)

    @torch.no_grad()
    def _flush_param(self, p: torch.Tensor) -> None:
        """Fold the frame into the tensors: stored values become the true ones."""
        frame = self._frames.get(p)
        if frame is None:
            return
        self._check_external_write(p, frame)
        if not frame.identity:
            _fold(p, self._buffer(p), frame)
        frame.reset()
        self._versions[p] = p._version

    @torch.no_grad()
    def flush(self) -> None:
        """Make every managed parameter's stored values current (before reading weights outside training)."""
        for p in self._frames:
            self._flush_param(p)

    # ---- torch.optim.Optimizer API ---------------------------------------------------------
    @torch.no_grad()
    def state_dict(self):
        self.flush()
        return super().state_dict()

    def load_state_dict(self, state_dict) -> None:
        # Pending updates belong to the weights as they are: fold them first, as torch's SGD
        # would have written them already. Weights replaced since (a model loaded by foreign
        # code) are true values themselves, and their buffers are about to be replaced.
        for p, frame in self._frames.items():
            if p._version == self._versions.get(p):
                self._flush_param(p)
            else:
                frame.reset()
        lazy = [g["lazy"] for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, was_lazy in zip(self.param_groups, lazy):
            group.setdefault("lazy", was_lazy)  # a torch.optim.SGD state dict has no "lazy"
        self._state_box[0] = self.state
        for p, frame in self._frames.items():
            frame.reset()
            self._versions[p] = p._version
        self._pending.clear()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pending, self._pending = self._pending, {}
        for group in self.param_groups:
            hyper = {k: group[k] for k in ("weight_decay", "momentum", "lr", "dampening", "nesterov", "maximize")}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("LazySGD takes dense gradients (its laziness comes from the patterns)")
                frame = self._frames.get(p)
                if frame is not None:
                    self._check_external_write(p, frame)
                regions = pending.get(p, set())
                first = hyper["momentum"] != 0 and self._buffer(p) is None
                if frame is None or not group["lazy"] or first or not regions or None in regions:
                    self._dense_step(p, hyper)
                else:
                    region = regions.pop() if len(regions) == 1 else DENSE
                    if self.verify:
                        self._check_zero_outside(p, region)
                    self._region_step(p, frame, region, hyper)
                    self._versions[p] = p._version
                    if frame.steps >= self.window or abs(frame.det) * _MAX_GROWTH < 1.0:
                        self._flush_param(p)
                if frame is not None:
                    self._versions[p] = p._version
        return loss

    def _dense_step(self, p: torch.Tensor, hyper: dict) -> None:
        self._flush_param(p)
        buf = self._buffer(p) if hyper["momentum"] != 0 else None
        if buf is not None and native.frame_step_(p.detach(), buf, p.grad, *self._step_map(hyper)):
            # One fused pass (weight decay, momentum and update together) instead of
            # torch's four over weight, gradient and buffer: the same step map a region
            # step applies, from the identity frame the flush left.
            return
        bufs = [buf]
        torch_sgd([p], [p.grad], bufs, foreach=False, **hyper)
        if hyper["momentum"] != 0:
            self.state[p]["momentum_buffer"] = bufs[0]

    @staticmethod
    def _step_map(hyper: dict):
        """(A, e): one step acts on (buffer, weight) as ``A @ (b, w) + e * grad``."""
        mu, wd, lr, d = hyper["momentum"], hyper["weight_decay"], hyper["lr"], hyper["dampening"]
        sign = -1.0 if hyper["maximize"] else 1.0
        if mu == 0:  # no buffer: w' = (1 - lr wd) w - lr g
            return (1.0, 0.0, 0.0, 1.0 - lr * wd), (0.0, -lr * sign)
        c = (1.0 - d) * wd
        if hyper["nesterov"]:  # dampening is 0 here
            return (mu, c, -lr * mu * mu, 1.0 - lr * (wd + mu * c)), (sign, -lr * (1.0 + mu) * sign)
        return (mu, c, -lr * mu, 1.0 - lr * c), ((1.0 - d) * sign, -lr * (1.0 - d) * sign)

    def _region_step(self, p: torch.Tensor, frame: _Frame, region: Region, hyper: dict) -> None:
        (abb, abw, awb, aww), (eb, ew) = self._step_map(hyper)
        bb = abb * frame.bb + abw * frame.wb
        bw = abb * frame.bw + abw * frame.ww
        wb = awb * frame.bb + aww * frame.wb
        ww = awb * frame.bw + aww * frame.ww
        buf = self._buffer(p) if hyper["momentum"] != 0 else None
        w_views = region.write_views(p) if region.fused_axpy2 is None else None
        if (buf is not None and w_views is not None and len(w_views) == 1 and _whole(w_views[0], p)
                and native.frame_step_(p.detach(), buf, p.grad, (bb, bw, wb, ww), (eb, ew))):
            # The step writes every element anyway (a dense read, or whole rows of every
            # row): one fused pass writes true values, and the identity frame spares the
            # next read its buffer stream (and a gather, where the rows are read in place).
            frame.reset()
            return
        if buf is None:
            kb, kw = 0.0, ew / ww
        else:  # the gradient enters the stored values through the inverse frame
            det = bb * ww - bw * wb
            kb, kw = (ww * eb - bw * ew) / det, (bb * ew - wb * eb) / det
        fused = buf is not None and kw != 0.0 and kb != 0.0
        if not (fused and region.fused_axpy2 is not None and region.fused_axpy2(p.detach(), buf, p.grad, kw, kb)):
            # (a fused region, tile blocks, updates in one call instead of two torch ops per view)
            self._views_step(p, buf, region, w_views, kw, kb, fused)
        frame.bb, frame.bw, frame.wb, frame.ww = bb, bw, wb, ww
        frame.steps += 1

    @staticmethod
    def _views_step(p, buf, region: Region, w_views, kw: float, kb: float, fused: bool) -> None:
        w_views = w_views if w_views is not None else region.write_views(p)
        g_views = region.write_views(p.grad)
        b_views = region.write_views(buf) if buf is not None else [None] * len(g_views)
        for g, w, b in zip(g_views, w_views, b_views):
            if fused and native.axpy2_(w, b, g, kw, kb):
                continue  # one fused pass: the gradient is read once
            if kw != 0.0:  # 0 in the step after a flush without weight decay: the frame carries it
                w.add_(g, alpha=kw)
            if b is not None and kb != 0.0:
                b.add_(g, alpha=kb)

    @staticmethod
    def _check_zero_outside(p: torch.Tensor, region: Region) -> None:
        g = p.grad.clone()
        for v in region.views(g):
            v.zero_()
        if g.any():
            raise RuntimeError(
                f"LazySGD(verify=True): a parameter of shape {tuple(p.shape)} has gradient outside the region "
                f"{region.key} its layer reported; another use of the weight (a loss term on it, weight "
                "tying) also contributes. Put it in a param group with lazy=False."
            )
