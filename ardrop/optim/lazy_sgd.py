"""`LazySGD`: torch's momentum SGD, updating only the rows a row pattern kept.

Why: with momentum, *every* weight moves every step, dropped ones included (their
buffer keeps decaying into the weight). ``torch.optim.SGD`` therefore reads and writes
all parameters, their gradients and buffers each step; with row dropout at 4096 wide
that memory traffic costs more than the skipped GEMMs save.

A row that gets no gradient evolves by a fixed linear map of its (buffer, weight) pair,
the same for every element of the step::

    buf' = mu * buf + (1 - dampening) * wd * w
    w'   = w - lr * (buf'                      (plain)
                     | wd * w + mu * buf')     (nesterov)

So the update of a dropped row can wait: ``LazySGD`` keeps, per parameter, the product
of the maps since each row was last brought up to date, and applies it (one 2x2 product
per row) when the row is next read. The values equal ``torch.optim.SGD``'s up to
rounding; the touched rows themselves are updated by torch's own ``sgd`` functional.

The contract with the layers: `compact_linear` calls `before_read(weight, dp, offset)`
before it reads rows ``offset::dp``; that brings them up to date and records that only
those rows get a gradient this step. Every other read must see current values, so
ardrop's layers call `flush_params` on their dense paths (eval, dp=1) and before their
``state_dict``; `LazySGD.state_dict` flushes too. Code of your own that reads weights
between steps (an EMA, a custom metric) calls ``optimizer.flush()`` first. A parameter
that nothing reported (or that reported two different patterns before one step, as with
gradient accumulation) gets an ordinary dense step, so an unknown use is slower, never
wrong, as long as its gradient really is zero outside the reported rows: a loss term on
the weight itself breaks that (put such weights in a group with ``lazy=False``;
``verify=True`` checks it at a cost).
"""

from __future__ import annotations

import weakref

import torch
from torch.optim.sgd import sgd as torch_sgd
from torch.utils.weak import WeakTensorKeyDictionary

_OWNERS = WeakTensorKeyDictionary()  # parameter -> weakref to the LazySGD managing it
_DENSE = (1, 0)


def _identity_maps() -> torch.Tensor:
    return torch.eye(2, dtype=torch.float64).unsqueeze(0)


def _row_shape(p: torch.Tensor) -> tuple:
    """Shape that broadcasts one coefficient per row over the rest of ``p``."""
    return (-1,) + (1,) * (p.dim() - 1)


def before_read(param: torch.Tensor, dp: int = 1, offset: int = 0) -> None:
    """Bring rows ``offset::dp`` of ``param`` up to date and note them as this step's rows."""
    if param is None:
        return
    ref = _OWNERS.get(param)
    opt = ref() if ref is not None else None
    if opt is not None:
        opt._prepare(param, dp, offset)


def flush_params(*params) -> None:
    """Bring every row of these parameters up to date (no-op for unmanaged ones)."""
    for p in params:
        if p is None:
            continue
        ref = _OWNERS.get(p)
        opt = ref() if ref is not None else None
        if opt is not None:
            opt._flush_param(p)


class _Rows:
    """Per-parameter bookkeeping: when each row was last current, and the pending maps.

    ``n`` counts the steps applied to the parameter (torch skips a parameter whose grad
    is None, and so does this). Row ``r`` holds its values as of step ``last[r]``;
    ``maps[i]`` carries a row from step ``base + i`` to step ``n`` (float64, 2x2).
    """

    def __init__(self, rows: int, device) -> None:
        self.n = 0
        self.base = 0
        self.last = torch.zeros(rows, dtype=torch.long, device=device)
        self.bscale = torch.ones(rows, dtype=torch.float64, device=device)  # buffers' pending factor
        self.maps = _identity_maps()
        self.stale = False
        self.coupled = False  # a pending map mixes weight into buffer (weight decay)

    def reset(self) -> None:
        self.last.fill_(self.n)
        self.base = self.n
        self.maps = _identity_maps()
        self.stale = False
        self.coupled = False


class LazySGD(torch.optim.Optimizer):
    """``torch.optim.SGD`` semantics, with dropped rows' updates deferred (see module doc).

    Args are torch's, plus ``lazy`` (per group; False gives plain dense steps),
    ``window`` (steps after which every row is brought up to date, which bounds the
    products' length) and ``verify`` (check that gradients vanish outside reported rows).
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
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        self.window = window
        self.verify = bool(verify)
        self._rows: dict[torch.Tensor, _Rows] = {}
        self._pending: dict[torch.Tensor, set] = {}
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, lazy=lazy)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            if p.dim() < 1:
                continue
            if p in _OWNERS and _OWNERS[p]() not in (None, self):
                raise ValueError("a parameter is already managed by another LazySGD; give each parameter one optimizer")
            _OWNERS[p] = weakref.ref(self)
            self._rows[p] = _Rows(p.shape[0], p.device)

    # ---- the deferred map ------------------------------------------------------------
    @staticmethod
    def _step_map(group: dict) -> torch.Tensor:
        """The 2x2 map of one step with zero gradient, acting on (buffer, weight)."""
        mu, wd, lr = group["momentum"], group["weight_decay"], group["lr"]
        c = (1.0 - group["dampening"]) * wd
        if mu == 0:
            return torch.tensor([[0.0, 0.0], [0.0, 1.0 - lr * wd]], dtype=torch.float64)
        e1, e2 = (mu * mu, wd + mu * c) if group["nesterov"] else (mu, c)
        return torch.tensor([[mu, c], [-lr * e1, 1.0 - lr * e2]], dtype=torch.float64)

    def _catch_up(self, p: torch.Tensor, st: _Rows, dp: int, offset: int, weights_only: bool = False) -> None:
        """Apply the pending maps to rows ``offset::dp``.

        ``weights_only`` (a read before the forward) brings the weights up to date and,
        when no weight decay couples them, leaves the buffers' pending factor in
        ``st.bscale``: the step folds it into its own buffer pass, which saves one pass
        over the rows.
        """
        buf = self.state.get(p, {}).get("momentum_buffer")
        if not st.stale and (weights_only or buf is None):
            return  # nothing deferred (the common case for parameters read densely every step)
        w = p[offset::dp]
        shape = _row_shape(p)
        rows = st.last[offset::dp]
        bscale = st.bscale[offset::dp]
        if st.stale and int((rows - st.base).min()) < len(st.maps) - 1:
            m = st.maps[rows - st.base]  # [rows, 2, 2], float64
            if buf is None:
                w.mul_(m[:, 1, 1].to(p.dtype).view(shape))
            else:
                b = buf[offset::dp]
                if st.coupled:
                    self._apply_bscale(b, bscale, shape)
                    m = m.to(p.dtype)
                    old_b = b.clone()
                    b.mul_(m[:, 0, 0].view(shape)).addcmul_(w, m[:, 0, 1].view(shape))
                    w.mul_(m[:, 1, 1].view(shape)).addcmul_(old_b, m[:, 1, 0].view(shape))
                else:  # no weight decay: m01 = 0 and m11 = 1 exactly
                    w.addcmul_(b, (m[:, 1, 0] * bscale).to(p.dtype).view(shape))
                    bscale.mul_(m[:, 0, 0])
            rows.fill_(st.n)
        if buf is not None and not weights_only:
            self._apply_bscale(buf[offset::dp], bscale, shape)
        if dp == 1 and st.stale:
            st.reset()

    @staticmethod
    def _apply_bscale(b: torch.Tensor, bscale: torch.Tensor, shape) -> None:
        if bool((bscale != 1.0).any()):
            b.mul_(bscale.to(b.dtype).view(shape))
            bscale.fill_(1.0)

    @torch.no_grad()
    def _prepare(self, p: torch.Tensor, dp: int, offset: int) -> None:
        st = self._rows.get(p)
        if st is None:
            return
        self._catch_up(p, st, dp, offset, weights_only=True)
        self._pending.setdefault(p, set()).add((dp, offset) if dp > 1 else _DENSE)

    @torch.no_grad()
    def _flush_param(self, p: torch.Tensor) -> None:
        st = self._rows.get(p)
        if st is not None:
            self._catch_up(p, st, 1, 0)

    @torch.no_grad()
    def flush(self) -> None:
        """Bring every managed row up to date (before reading weights outside training)."""
        for p in self._rows:
            self._flush_param(p)

    # ---- torch.optim.Optimizer API ---------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        self._pending.clear()
        super().zero_grad(set_to_none)

    @torch.no_grad()
    def state_dict(self):
        self.flush()
        return super().state_dict()

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        for st in self._rows.values():
            st.n = 0
            st.reset()
            st.bscale.fill_(1.0)  # the loaded buffers are current
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
            plain = hyper["momentum"] != 0 and not (hyper["weight_decay"] or hyper["dampening"]
                                                    or hyper["nesterov"] or hyper["maximize"])
            step_map = None
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("LazySGD takes dense gradients (its laziness comes from the row patterns)")
                st = self._rows.get(p)
                rec = pending.get(p, set())
                first = hyper["momentum"] != 0 and "momentum_buffer" not in self.state[p]
                if st is None or not group["lazy"] or first or len(rec) != 1 or _DENSE in rec:
                    self._dense_step(p, st, hyper)
                    continue
                (dp, offset), = rec
                if self.verify:
                    self._check_zero_outside(p, dp, offset)
                self._catch_up(p, st, dp, offset, weights_only=plain)
                w, g = p[offset::dp], p.grad[offset::dp]
                b = self.state[p]["momentum_buffer"][offset::dp] if hyper["momentum"] != 0 else None
                if plain:  # buf = g + mu * (pending factor) * buf; w -= lr * buf: two passes
                    bscale = st.bscale[offset::dp]
                    torch.addcmul(g, b, (hyper["momentum"] * bscale).to(p.dtype).view(_row_shape(p)), out=b)
                    bscale.fill_(1.0)
                    w.add_(b, alpha=-hyper["lr"])
                else:
                    bufs = [b]
                    torch_sgd([w], [g], bufs, foreach=False, **hyper)
                if step_map is None:
                    step_map = self._step_map(group)
                st.n += 1
                st.last[offset::dp] = st.n
                st.maps = torch.cat([step_map @ st.maps, _identity_maps()])
                st.stale = True
                st.coupled = st.coupled or hyper["weight_decay"] != 0
                if st.n - st.base >= self.window:
                    self._catch_up(p, st, 1, 0)
        return loss

    def _dense_step(self, p: torch.Tensor, st: _Rows | None, hyper: dict) -> None:
        if st is not None:
            self._catch_up(p, st, 1, 0)
        buf = self.state[p].get("momentum_buffer") if hyper["momentum"] != 0 else None
        bufs = [buf]
        torch_sgd([p], [p.grad], bufs, foreach=False, **hyper)
        if hyper["momentum"] != 0:
            self.state[p]["momentum_buffer"] = bufs[0]
        if st is not None:
            st.n += 1
            st.reset()

    @staticmethod
    def _check_zero_outside(p: torch.Tensor, dp: int, offset: int) -> None:
        g = p.grad.clone()
        g[offset::dp] = 0
        if g.any():
            raise RuntimeError(
                f"LazySGD(verify=True): a parameter of shape {tuple(p.shape)} has gradient outside the rows "
                f"{offset}::{dp} its layer reported; another use of the weight (a loss term on it, weight "
                "tying) also contributes. Put it in a param group with lazy=False."
            )
