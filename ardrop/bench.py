"""``python -m ardrop.bench``: whole training steps, Bernoulli dropout vs approximate dropout.

Holds: the command line (options, their checks, the table, the JSON record) and the
method, below. Imports: torch, stdlib, ``ardrop.allocator`` and ``ardrop.bench_core``
(the workloads and the timing); inside functions, ``ardrop.bench_gpu`` (``--device
cuda``), ``ardrop.bench_loop`` (``--loop``), ``ardrop.native`` and ``ardrop.nn.site``.

A step is forward, backward, an SGD step with momentum 0.9 and ``zero_grad()``, because
that is what training pays for: skipped GEMMs only matter next to everything that is not
skipped (torch's optimizer still updates every weight, gradients are full-size).

Method, and why:
- The baseline is plain torch (``nn.Linear``/``nn.LSTM`` with ``nn.Dropout``), not our
  own code, so the comparison is with what a user would otherwise write.
- Approximate patterns come from the real searched distribution of each site's rate
  (``ardrop.search.search`` + ``ardrop.sequence.PatternSequence``, one per site). Step
  times depend on the pattern, so a round is one full sequence period of ``--repeats``
  steps (the realised dp counts match the distribution), repeated ``--rounds`` times; the
  estimate is the per-position median over rounds, averaged over the period. That is the
  mean time per training step, robust to outliers from a noisy machine. The MLP's middle
  layer costs ``kept1 * kept2``, so its period must also sample how the two sites' dps
  pair up: 24 steps gave a FLOP ideal anywhere in x2.8-x4.0 over seeds (2048 wide, rate
  0.5), 192 steps stay within a few percent of the distribution's expectation, printed
  as ``E ideal`` beside the period's own ``ideal``.
- Denormal floats are flushed to zero on both sides (``--denormals keep`` to not). The
  steps train on one fixed batch, which both models eventually fit so closely that
  gradients underflow into denormals, and x86 computes on those ~100x slower: without
  the flush a (dp=1, dp=1) step went from 18 to 80 ms after ~250 steps. Real training
  on fresh data stays far from that range.
- Both sides run in the same process, interleaved, after warm-up. By default each side
  runs one whole period at a time and the sides alternate every period (AB, BA, ...), each
  block after one untimed step: consecutive steps of one model are what training runs,
  while alternating every step (``--interleave step``) starts every step in the other
  model's cache footprint, which taxes the side with the smaller working set most.
  Alternating periods (well under a second each) still cancels drift of the machine.
- Both sides run under the same glibc allocator settings: without raised mmap and trim
  thresholds every buffer of 32 MB or more is returned to the OS each step and
  page-faulted back, which taxes the two sides unequally. The command raises both in
  its own process (`ardrop.allocator`), as ``python -m ardrop.train`` does.
- ``--optimizers sgd,fused,lazy`` adds opt-in columns: *both* sides with torch's fused SGD
  (``fused=True``), and ``ardrop.optim.LazySGD`` (the same updates, dropped rows deferred)
  on the approximate side against torch's SGD on the Bernoulli side. The ``sgd``
  (for-each-parameter, both sides) measurement is always the primary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from ardrop.allocator import keep_large_buffers
from ardrop.bench_core import OPTIMIZERS, bench_one, format_table, parse_model

ALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "17179869184", "MALLOC_TRIM_THRESHOLD_": "17179869184"}


# ---- command line --------------------------------------------------------------------
def _max_dp(text: str):
    """``auto`` or an integer (checked in `validate`)."""
    return text if text == "auto" else int(text)


def csv(cast):
    return lambda s: [cast(v) for v in s.split(",") if v]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ardrop.bench", description=__doc__.split("\n")[0])
    p.add_argument("--models", type=csv(str), default=["mlp2048", "mlp4096"],
                   help="mlp2048, mlp4096, mlp1024x64, mlp1024x1024, mlpAxB, lstm2, lstm3 (comma separated)")
    p.add_argument("--rates", type=csv(float), default=[0.5, 0.7])
    p.add_argument("--kinds", type=csv(str), default=["row", "tile"])
    p.add_argument("--batch-size", type=int, default=128, help="MLP batch size")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed steps per round, one pattern-sequence period (default: 192 for MLPs, whose two "
                        "chained sites need a long period to sample their joint distribution; 24 for LSTMs, "
                        "whose sites cost independently, so only each site's dp counts matter)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the period; per-position median")
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--interleave", choices=("period", "step"), default="period",
                   help="alternate the sides every period (default: each model in its own steady state) "
                        "or every step (each step starts in the other model's cache footprint)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--max-dp", type=_max_dp, default="auto",
                   help="largest pattern N searched per site: auto (floor(1/(1-p)) + 1, the training default) "
                        "or a number; capped by the site's shape")
    p.add_argument("--method", choices=("sgd", "maxent"), default="sgd", help="pattern-distribution search")
    p.add_argument("--tile", type=int, default=32)
    p.add_argument("--groups", default=None,
                   help="patterns per step on the approximate side: dp (one per offset) or 1 (the paper's); "
                        "default: the model family's (MLP 1, LSTM dp)")
    p.add_argument("--optimizers", type=csv(str), default=["sgd"],
                   help="sgd (torch.optim.SGD on both sides, primary), fused (fused=True on both sides), "
                        "lazy (ardrop.optim.LazySGD on the approximate side, torch SGD on the Bernoulli side)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum on both sides")
    p.add_argument("--weight-decay", type=float, default=0.0, help="SGD weight decay on both sides")
    p.add_argument("--clip", type=float, default=None,
                   help="gradient-norm clipping on both sides (ardrop.optim.clip, what training uses), "
                        "e.g. 1.0 as the MLP configs; default: none. --loop sets these three from the config")
    p.add_argument("--lstm-hidden", type=int, default=1000)
    p.add_argument("--vocab", type=int, default=10000)
    p.add_argument("--seq-len", type=int, default=35)
    p.add_argument("--lstm-batch", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="output path (default outputs/bench/bench-<time>.json)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--denormals", choices=("flush", "keep"), default="flush",
                   help="flush (default): denormal floats become zero on both sides, as in real training's "
                        "magnitudes; keep: IEEE denormals, which the repeated fixed batch eventually produces")
    p.add_argument("--loop", choices=("trainer",), default=None,
                   help="trainer: time the real Lightning loop (ardrop.train's configs, Trainer.fit) for each model, "
                        "Bernoulli and approximate interleaved, beside the core bench (models by config name, e.g. "
                        "mlp_2048x2048, lstm2)")
    p.add_argument("--loop-steps", type=int, default=None, help="timed steps per fit (default 60 MLP, 20 LSTM)")
    p.add_argument("--loop-warmup", type=int, default=5, help="untimed steps at the start of each fit")
    p.add_argument("--override", action="append", default=None, metavar="KEY=VALUE",
                   help="a Hydra override for both sides of --loop (repeatable), e.g. model.optimizer=lazy_sgd")
    p.add_argument("--default-allocator", "--no-reexec", dest="no_reexec", action="store_true",
                   help="leave glibc's mmap/trim thresholds at their defaults (both sides alike)")
    return p


def validate(args) -> None:
    for k in args.kinds:
        if k not in ("row", "tile"):
            raise ValueError(f"--kinds takes row and/or tile, got {k!r}")
    for o in args.optimizers:
        if o not in OPTIMIZERS:
            raise ValueError(f"--optimizers takes {', '.join(OPTIMIZERS)}, got {o!r}")
    repeats = 1 if args.repeats is None else args.repeats  # None: the model family's default period
    for name, v in (("--repeats", repeats), ("--rounds", args.rounds), ("--batch-size", args.batch_size),
                    ("--max-dp", 1 if args.max_dp == "auto" else args.max_dp)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    from ardrop.nn.site import check_groups

    if args.groups is not None:
        args.groups = check_groups(int(args.groups) if str(args.groups).isdigit() else args.groups)
    if args.loop_steps is not None and args.loop_steps < 3:
        raise ValueError(f"--loop-steps must be >= 3, got {args.loop_steps}")
    if args.loop_warmup < 1:
        raise ValueError(f"--loop-warmup must be >= 1 (the first steps pay one-off costs), got {args.loop_warmup}")
    if args.loop:
        from ardrop.bench_loop import config_model_name

        for m in args.models:
            config_model_name(m)
    if args.clip is not None and not args.clip > 0:
        raise ValueError(f"--clip must be > 0 (a gradient-norm threshold), got {args.clip}")
    if args.weight_decay < 0 or not 0 <= args.momentum < 1:
        raise ValueError(f"need --weight-decay >= 0 and 0 <= --momentum < 1, got {args.weight_decay}, {args.momentum}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")


TABLE = [("model", -14, "model", ""), ("kind", -6, "kind", ""), ("rate", 5, "rate", ".2f"),
         ("optim", 7, "optimizer", ""), ("bern ms", 10, "base_ms", ".2f"), ("approx ms", 11, "approx_ms", ".2f"),
         ("speedup", 9, "speedup", ".2fx"), ("(median)", 10, "speedup_median", ".2fx"),
         ("ideal", 8, "ideal_flop_ratio", ".2fx"), ("E ideal", 9, "expected_ideal_flop_ratio", ".2fx")]


def print_table(rows) -> None:
    print("\n".join(format_table(rows, TABLE)))


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    validate(args)
    if args.device == "cuda":
        from ardrop.bench_gpu import run_gpu_bench

        return run_gpu_bench(args)
    allocator = keep_large_buffers() if not args.no_reexec else False
    if not allocator:
        print("warning: glibc's allocator thresholds are not raised; large buffers are returned to the OS every "
              "step, timings are distorted", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.denormals == "flush" and not torch.set_flush_denormal(True):
        print("warning: this CPU cannot flush denormals; timings may include slow denormal arithmetic",
              file=sys.stderr)
    from ardrop import native

    native_kernels = native.available()  # the approximate side's fused CPU passes (ARDROP_NATIVE)
    print(f"# fused CPU kernels: {'on' if native_kernels else 'off (torch path)'}", flush=True)
    if args.loop:
        from ardrop.bench_loop import run_loop_bench

        rows = run_loop_bench(args)["results"]
        return _write(args, rows, allocator, native_kernels, prefix="loop")
    specs = [parse_model(m, args) for m in args.models]
    rows = []
    for spec in specs:
        for kind in args.kinds:
            for rate in args.rates:
                for optimizer in args.optimizers:
                    rows.append(bench_one(spec, kind, rate, optimizer, args))
                    r = rows[-1]
                    print(f"# {spec.name} {kind} {rate} {optimizer}: {r['base_ms']:.2f} -> {r['approx_ms']:.2f} ms "
                          f"(x{r['speedup']:.2f}, ideal x{r['ideal_flop_ratio']:.2f})", flush=True)
    print_table(rows)
    return _write(args, rows, allocator, native_kernels)


def _write(args, rows, allocator, native_kernels, prefix="bench") -> dict:
    result = {
        "config": {**vars(args), "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "allocator_env": {k: os.environ.get(k) for k in ALLOC_ENV}, "large_buffers_kept": allocator,
                   "native_kernels": native_kernels},
        "results": rows,
    }
    path = args.json or os.path.join("outputs", "bench", time.strftime(f"{prefix}-%Y%m%d-%H%M%S.json"))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        sys.exit(f"error: {err}")
