"""Per-case choice between the CUDA kernels and the torch GPU path, by measurement.

Why: the kernels skip dropped work but their inner loop is plain FP32 FMA, while the
torch path (gathers plus cuBLAS) uses tensor cores in half precision. Which is faster
depends on the GPU, the dtype, the shape and dp, so, as ``torch.backends.cudnn.benchmark``
does, the first call of each case (op, shapes, dtype, pattern, ReLU, bias) times one
forward+backward of both on copies of its inputs, with CUDA events, and every later call
of that case uses the faster. ``ARDROP_CUDA_EXT=require`` always takes the kernels and
``ARDROP_CUDA_EXT=0`` never builds them (the torch path); only ``auto`` measures.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import torch

KERNELS, TORCH = "kernels", "torch"


def cuda_event_timer(fn: Callable[[], None], repeats: int = 3) -> float:
    """Median milliseconds of ``fn`` on the current CUDA stream, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


class Autotune:
    """Cache of (case key) -> KERNELS or TORCH. ``timer(fn) -> ms`` is injectable for tests."""

    def __init__(self, timer: Callable[[Callable[[], None]], float] = cuda_event_timer) -> None:
        self.timer = timer
        self.choices: dict[tuple, str] = {}
        self.timings: dict[tuple, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def choose(self, key: tuple, make_runs: Callable[[], tuple[Callable, Callable]], mode: str) -> str:
        """``make_runs()`` builds the two timed closures (kernels, torch path): only for a new case."""
        if mode == "require":
            return KERNELS
        found = self.choices.get(key)  # the common case: one dict lookup per call
        if found is not None:
            return found
        with self._lock:
            found = self.choices.get(key)
            if found is not None:
                return found
            kernels, torch_path = make_runs()
            t_kernels, t_torch = self.timer(kernels), self.timer(torch_path)
            choice = KERNELS if t_kernels <= t_torch else TORCH
            self.choices[key], self.timings[key] = choice, (t_kernels, t_torch)
            return choice

    def clear(self) -> None:
        with self._lock:
            self.choices.clear()
            self.timings.clear()


AUTOTUNE = Autotune()


def forward_backward(op: Callable, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *args):
    """A closure running ``op`` as the call being tuned will run, on detached copies.

    Where autograd records (training), forward and backward; where it does not (Lightning's
    validation and test run under ``torch.inference_mode``), forward only: a backward there
    would raise, and the forward alone is what those calls cost. No parameter or LazySGD is
    touched. `case_key` keeps the two apart, so an eval-time choice never serves training.
    """
    xs, ws = x.detach().clone(), weight.detach().clone()
    bs = None if bias is None else bias.detach().clone()
    if not torch.is_grad_enabled():
        def forward_only() -> None:
            op(xs, ws, bs, *args)

        return forward_only
    xs.requires_grad_(x.requires_grad)
    ws.requires_grad_(True)
    if bs is not None:
        bs.requires_grad_(True)

    def run() -> None:
        y = op(xs, ws, bs, *args)
        y.backward(torch.ones_like(y))
        xs.grad = ws.grad = None
        if bs is not None:
            bs.grad = None

    return run


def case_key(op_name: str, x: torch.Tensor, weight: torch.Tensor, bias, *pattern) -> tuple:
    return (op_name, tuple(x.shape), tuple(weight.shape), x.dtype, str(x.device), bias is not None,
            torch.is_grad_enabled(), *pattern)
