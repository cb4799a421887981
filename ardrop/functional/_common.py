"""Argument checks and backend dispatch shared by the skip-the-dropped-work ops.

Holds: the argument checks, the CUDA operator table and dispatch (``cuda_op``,
``kernels_win``, ``run_kernels``) and ``autocast_linear``. Imports: torch, stdlib and
``ardrop.contract.param_reads`` (the LazySGD reads, below the ops); inside functions, on first
use, cuda_ext and ``ardrop.functional.kernel_check`` (the dispatch).

The checks run before any kernel so that a wrong shape or pattern fails with a message
that names the fix, instead of a BLAS size error deep inside backward. They are the one
place the ops' arguments are checked: cuda_ext's wrappers trust them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ardrop.contract.param_reads import before_read, flush_params

BACKENDS = ("auto", "torch")


def check_int(name: str, value, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_pattern(what: str, dp, offset, size: int) -> int:
    """Validate one (dp, offset) pair against a dimension of ``size`` units; returns kept count."""
    check_int(f"{what} dp", dp, 1)
    check_int(f"{what} offset", offset, 0)
    if offset >= dp:
        raise ValueError(f"{what} offset must be in 0..dp-1 = 0..{dp - 1}, got {offset}")
    if dp > size:
        raise ValueError(
            f"{what} pattern dp={dp} exceeds the {size} units it drops from; the largest usable dp "
            f"is {size} (larger ones leave some offsets with nothing kept): search with max_dp <= {size}"
        )
    return len(range(offset, size, dp))


def check_scale(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number (inverted-dropout scale), got {value!r}")
    return value


def check_linear_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise ValueError("input and weight must be tensors")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    if x.dim() < 1:
        raise ValueError("input must have at least one dimension (features last)")
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise ValueError(
                f"bias must have shape [{weight.shape[0]}] (out_features), got {tuple(bias.shape)}"
            )
    for name, t in (("input", x), ("bias", bias)):
        if t is None:
            continue
        if t.dtype != weight.dtype:
            raise ValueError(f"{name} dtype {t.dtype} differs from weight dtype {weight.dtype}; cast one of them")
        if t.device != weight.device:
            raise ValueError(f"{name} is on {t.device} but weight is on {weight.device}; move them together")
    if not weight.dtype.is_floating_point:
        raise ValueError(f"weight must be floating point, got {weight.dtype}")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


# The operator table: op -> its cuda_ext implementation, filled on the first CUDA call. The
# eager torch fallback of each op is the op's own path in compact.py / tile.py (it carries
# the LazySGD regions), taken when ``cuda_op`` returns None; the autotuner gets it from the
# caller (``kernels_win``'s ``torch_op``), since this module cannot import those without a cycle.
_CUDA_OPS: dict[str, Callable] | None = None


def _cuda_ops() -> dict[str, Callable]:
    """The table, built once; hands cuda_ext the self-check its loader runs before first use.

    Imported here, on the first CUDA tensor, so CPU-only use never loads the references the
    check compares against. A broken cuda_ext raises (an ImportError is a bug, not "unavailable").
    """
    global _CUDA_OPS
    if _CUDA_OPS is None:
        import cuda_ext
        from ardrop.functional.kernel_check import run_self_check

        cuda_ext.hand_over_self_check(run_self_check)
        _CUDA_OPS = {
            "compact_linear_cuda": cuda_ext.compact_linear_cuda,
            "tile_linear_cuda": cuda_ext.tile_linear_cuda,
        }
    return _CUDA_OPS


def cuda_op(name: str, x: torch.Tensor, backend: str):
    """The cuda_ext implementation of op ``name`` for this call, or None for the eager torch path.

    None only where the kernels cannot serve: ``backend="torch"``, a tensor not on CUDA, or
    cuda_ext unavailable (its loader alone reads ``ARDROP_CUDA_EXT``: 0/off, auto, require;
    in ``require`` mode unavailability raises).
    """
    if backend == "torch" or not x.is_cuda:
        return None
    ops = _cuda_ops()
    if name not in ops:
        raise ValueError(f"no CUDA implementation of op {name!r}; the table holds {sorted(ops)}")
    import cuda_ext

    return ops[name] if cuda_ext.available() else None


def kernels_win(name: str, op, torch_op, x, weight, bias, *args) -> bool:
    """Whether this call should take the CUDA kernels: ``require`` says yes, ``auto`` measures
    each case (``name``, shapes, dtype, ``args``) once (`cuda_ext.autotune`) against ``torch_op``."""
    from cuda_ext import autotune, loader

    key = autotune.case_key(name, x, weight, bias, *args)

    def make_runs():
        return (autotune.forward_backward(op, x, weight, bias, *args),
                autotune.forward_backward(torch_op, x, weight, bias, *args))

    return autotune.AUTOTUNE.choose(key, make_runs, loader.env_mode()) == autotune.KERNELS


def run_kernels(name: str, tune_name: str, torch_op, x2, weight, bias, args: tuple, backend: str):
    """This call's result from the cuda_ext kernels, or None when the eager torch path should run.

    Why one place: both ops take the kernels on the same terms (`cuda_op`, then `kernels_win`)
    and the kernels read the stored weights, so a LazySGD's pending update is folded in
    first (``before_read`` with no region: a dense read).
    """
    op = cuda_op(name, x2, backend)
    if op is None or not kernels_win(tune_name, op, torch_op, x2, weight, bias, *args):
        return None
    before_read(weight, None)
    before_read(bias, None)
    return op(x2, weight, bias, *args)


_AUTOCAST_CASTS = (torch.float32, torch.float16, torch.bfloat16)  # float64 stays as it is, as in torch.autocast


def autocast_linear(fn):
    """Give a linear op ``fn(x, weight, bias, ...)`` torch.autocast's rules for ``F.linear``.

    Under autocast, floating inputs, weight and bias are cast to the autocast dtype and
    the op runs with autocast off inside, so its GEMMs see one dtype (the BLAS accumulates
    in fp32) and ``check_linear_args`` sees matching operands. The casts are ordinary
    autograd ops: each parameter's gradient comes back in its own dtype. A `LazySGD`'s
    pending update is folded in first, since the cast reads the stored values.
    """
    import functools

    @functools.wraps(fn)
    def wrapper(x, weight, bias=None, *args, **kwargs):
        device = x.device.type
        if not (isinstance(x, torch.Tensor) and torch.is_autocast_enabled(device)):
            return fn(x, weight, bias, *args, **kwargs)
        dtype = torch.get_autocast_dtype(device)
        flush_params(weight, bias)

        def cast(t):
            return t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in _AUTOCAST_CASTS else t

        with torch.autocast(device, enabled=False):
            return fn(cast(x), cast(weight), cast(bias), *args, **kwargs)

    return wrapper
