"""GPU benchmark: cuda_ext kernels vs the torch GPU path vs Bernoulli dropout.

Holds: ``run_gpu_bench`` and its timers and table. Imports: torch, stdlib,
``ardrop.bench_core`` (the workloads) and, inside ``run_gpu_bench``, ``cuda_ext.loader``
and ``ardrop.functional.kernel_check`` (the self-check it hands the loader).

Called by ``python -m ardrop.bench --device cuda`` (same arguments as the CPU bench).
It reuses the core bench's models, searched pattern sequences, step definition
(forward, backward, SGD with momentum, zero_grad) and FLOP model, and times three
variants of every (model, kind, rate) in one process, interleaved step by step in a
rotating order:

* ``bernoulli``: stock torch layers with ``nn.Dropout`` (the paper's baseline);
* ``torch``: the approximate-dropout model on the torch GPU path
  (``ardrop.functional`` with the CUDA extension switched off via ARDROP_CUDA_EXT=0);
* ``cuda_ext``: the same model on this package's kernels (the default on a GPU).

Each step is timed with CUDA events (device time, not launch time) after warm-up; the
estimate per variant is the per-position median over rounds averaged over one pattern
period (every dp of the searched distribution is represented), plus the plain median.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import time
from contextlib import contextmanager
from typing import Any, Callable

import torch

from ardrop import bench_core

VARIANTS = ("bernoulli", "torch", "cuda_ext")


@contextmanager
def _torch_path(enabled: bool):
    """Route ardrop.functional to the torch path (ARDROP_CUDA_EXT=0 is read per call)."""
    if not enabled:
        yield
        return
    old = os.environ.get("ARDROP_CUDA_EXT")
    os.environ["ARDROP_CUDA_EXT"] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["ARDROP_CUDA_EXT"]
        else:
            os.environ["ARDROP_CUDA_EXT"] = old


class _CudaTimer:
    def __init__(self) -> None:
        self.pending: list[tuple[str, int, Any, Any]] = []

    def __call__(self, name: str, pos: int, fn: Callable[[], None]) -> None:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        self.pending.append((name, pos, start, end))

    def collect(self) -> list[tuple[str, int, float]]:
        torch.cuda.synchronize()
        out = [(n, p, s.elapsed_time(e) / 1e3) for n, p, s, e in self.pending]
        self.pending.clear()
        return out


class _WallTimer(_CudaTimer):
    """perf_counter stand-in so the plumbing can be tested on a CPU."""

    def __call__(self, name, pos, fn):
        t0 = time.perf_counter()
        fn()
        self.pending.append((name, pos, t0, time.perf_counter()))

    def collect(self):
        out = [(n, p, e - s) for n, p, s, e in self.pending]
        self.pending.clear()
        return out


def _bench_one(spec, kind, rate, optimizer, args, device, timer, use_ext):
    base, approx = bench_core.build_pair(spec, kind, rate, args.tile)
    approx_torch = copy.deepcopy(approx)
    base, approx, approx_torch = (m.to(device) for m in (base, approx, approx_torch))
    steps = args.repeats or bench_core.DEFAULT_PERIOD[spec.family]  # None: the family's sequence period, as on CPU
    seqs, searches = bench_core.site_sequences(approx, rate, steps, args)
    seqs_torch, _ = bench_core.site_sequences(approx_torch, rate, steps, args)

    def set_step(s):
        for site, seq in (*seqs, *seqs_torch):
            site.set_pattern(seq[s])

    gen = torch.Generator().manual_seed(args.seed)
    batch = tuple(t.to(device) for t in bench_core.make_batch(spec, gen))
    step_base = bench_core.make_step(base, spec, batch, bench_core.baseline_optimizer(optimizer))
    step_torch_raw = bench_core.make_step(approx_torch, spec, batch, optimizer)
    step_ext = bench_core.make_step(approx, spec, batch, optimizer)

    def step_torch():
        with _torch_path(True):
            step_torch_raw()

    fns = {"bernoulli": step_base, "torch": step_torch}
    if use_ext:
        fns["cuda_ext"] = step_ext
    names = list(fns)
    for w in range(args.warmup):
        set_step(w % steps)
        for name in names:
            fns[name]()
    timer.collect()
    per_round: dict[str, list[list[float]]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for s in range(steps):
            set_step(s)
            k = s % len(names)
            for name in names[k:] + names[:k]:  # rotate who goes first
                timer(name, s, fns[name])
        row: dict[str, list[float]] = {n: [0.0] * steps for n in names}
        for name, pos, sec in timer.collect():
            row[name][pos] = sec
        for n in names:
            per_round[n].append(row[n])
    stats = {n: bench_core.summarize(per_round[n]) for n in names}
    dense = bench_core.gemm_flops(spec, kind, [None] * len(seqs), args.tile)
    approx_flops = statistics.fmean(
        bench_core.gemm_flops(spec, kind, [seq[s] for _, seq in seqs], args.tile) for s in range(steps)
    )
    out = {
        "model": spec.name, "kind": kind, "rate": rate, "optimizer": optimizer,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "batch": spec.batch, "sizes": list(spec.sizes) if spec.family == "mlp" else None,
        "ideal_flop_ratio": dense / approx_flops, "search": searches,
    }
    for n in VARIANTS:
        mean, med = stats.get(n, (None, None))
        out[f"{n}_ms"], out[f"{n}_median_ms"] = mean, med
        out[f"{n}_times_s"] = per_round.get(n)
    b = out["bernoulli_ms"]
    out["speedup_torch"] = b / out["torch_ms"]
    out["speedup_cuda_ext"] = b / out["cuda_ext_ms"] if use_ext else None
    out["cuda_ext_vs_torch"] = out["torch_ms"] / out["cuda_ext_ms"] if use_ext else None
    return out


GPU_TABLE = [("model", -14, "model", ""), ("kind", -6, "kind", ""), ("rate", 5, "rate", ".2f"),
             ("bern ms", 10, "bernoulli_ms", ".3f"), ("torch ms", 10, "torch_ms", ".3f"),
             ("ext ms", 10, "cuda_ext_ms", ".3f"), ("x torch", 9, "speedup_torch", ".2fx"),
             ("x ext", 8, "speedup_cuda_ext", ".2fx"), ("ext/torch", 10, "cuda_ext_vs_torch", ".2fx"),
             ("ideal", 8, "ideal_flop_ratio", ".2fx")]


def print_gpu_table(rows: list[dict]) -> None:
    print("\n".join(bench_core.format_table(rows, GPU_TABLE)))


def _run(args, device: torch.device, timer, use_ext: bool) -> list[dict]:
    rows = []
    for spec in (bench_core.parse_model(m, args) for m in args.models):
        for kind in args.kinds:
            for rate in args.rates:
                for optimizer in args.optimizers:
                    r = _bench_one(spec, kind, rate, optimizer, args, device, timer, use_ext)
                    rows.append(r)
                    print(f"# {spec.name} {kind} {rate} {optimizer}: bernoulli {r['bernoulli_ms']:.3f} ms, "
                          f"torch {r['torch_ms']:.3f} ms, cuda_ext "
                          f"{'n/a' if r['cuda_ext_ms'] is None else format(r['cuda_ext_ms'], '.3f') + ' ms'}",
                          flush=True)
    return rows


def run_gpu_bench(args) -> list[dict]:
    """Time all three variants for every model/kind/rate/optimizer in ``args``.

    ``args`` is the ``python -m ardrop.bench`` namespace (models, kinds, rates,
    optimizers, batch_size, repeats, rounds, warmup, max_dp, method, tile, seed, json,
    lstm_* sizes). Returns one dict per configuration and writes them as JSON (``--json``
    or outputs/bench/bench-gpu-<time>.json). When the kernels are unavailable the
    cuda_ext columns are None and the reason is reported.
    """
    if not torch.cuda.is_available():
        raise ValueError(
            "--device cuda needs a CUDA device (torch.cuda.is_available() is False); "
            "run the CPU benchmark with --device cpu"
        )
    from ardrop.functional.kernel_check import run_self_check
    from cuda_ext import loader

    loader.hand_over_self_check(run_self_check)  # as ardrop's dispatch does before its first CUDA call
    use_ext = loader.available()
    reason = None if use_ext else loader.unavailable_reason()
    if reason:
        print(f"# cuda_ext unavailable, timing bernoulli and torch only: {reason}")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on every side
    device = torch.device("cuda", torch.cuda.current_device())
    rows = _run(args, device, _CudaTimer(), use_ext)
    print_gpu_table(rows)
    result = {
        "config": {**vars(args), "torch": torch.__version__, "cuda": torch.version.cuda,
                   "device": torch.cuda.get_device_name(device), "cuda_ext": loader.status()},
        "results": rows,
    }
    path = getattr(args, "json", None) or os.path.join(
        "outputs", "bench", time.strftime("bench-gpu-%Y%m%d-%H%M%S.json"))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    print(f"wrote {path}")
    return rows
