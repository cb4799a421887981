"""``python -m ardrop.bench``: whole training steps, Bernoulli dropout vs approximate dropout.

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
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ardrop.allocator import keep_large_buffers

ALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "17179869184", "MALLOC_TRIM_THRESHOLD_": "17179869184"}
MNIST_IN, MNIST_CLASSES = 784, 10
DEFAULT_PERIOD = {"mlp": 192, "lstm": 24}
NAMED_MLPS = {"mlp2048": (2048, 2048), "mlp4096": (4096, 4096)}


# ---- models -------------------------------------------------------------------------
class TorchLSTMLM(nn.Module):
    """The Bernoulli baseline: Zaremba et al.'s LM in stock torch (one multi-layer nn.LSTM)."""

    def __init__(self, vocab: int, hidden: int, layers: int, rate: float) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab, hidden)
        self.drop = nn.Dropout(rate)
        self.lstm = nn.LSTM(hidden, hidden, layers, dropout=rate if layers > 1 else 0.0)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        out, state = self.lstm(self.drop(self.encoder(tokens)))
        return self.decoder(self.drop(out)), state


@dataclass
class ModelSpec:
    name: str
    family: str  # "mlp" | "lstm"
    sizes: tuple = ()
    layers: int = 0
    hidden: int = 0
    vocab: int = 0
    seq_len: int = 0
    batch: int = 0
    extra: dict = field(default_factory=dict)


def parse_model(name: str, args) -> ModelSpec:
    if name in NAMED_MLPS:
        hidden = NAMED_MLPS[name]
    elif m := re.fullmatch(r"mlp(\d+(?:x\d+)*)", name):
        hidden = tuple(int(v) for v in m.group(1).split("x"))
    elif m := re.fullmatch(r"lstm(\d+)", name):
        return ModelSpec(name, "lstm", layers=int(m.group(1)), hidden=args.lstm_hidden, vocab=args.vocab,
                         seq_len=args.seq_len, batch=args.lstm_batch)
    else:
        raise ValueError(
            f"unknown model {name!r}: use mlp2048, mlp4096, mlpAxB (hidden sizes, e.g. mlp1024x64) or lstmL (e.g. lstm2)"
        )
    if len(hidden) == 1:
        hidden = hidden * 2
    return ModelSpec(name, "mlp", sizes=(MNIST_IN, *hidden, MNIST_CLASSES), batch=args.batch_size)


def build_pair(spec: ModelSpec, kind: str, rate: float, tile: int, groups="dp"):
    """(baseline, approximate) models with the same initial weights where layouts agree."""
    from ardrop.nn import ApproxLSTMLM, ApproxMLP

    torch.manual_seed(0)
    if spec.family == "mlp":
        layers: list[nn.Module] = []
        for k in range(len(spec.sizes) - 1):
            layers.append(nn.Linear(spec.sizes[k], spec.sizes[k + 1]))
            if k < len(spec.sizes) - 2:
                layers += [nn.ReLU(), nn.Dropout(rate)]
        return nn.Sequential(*layers), ApproxMLP(spec.sizes, kind=kind, rates=rate, tile=tile, groups=groups)
    base = TorchLSTMLM(spec.vocab, spec.hidden, spec.layers, rate)
    approx = ApproxLSTMLM(spec.vocab, spec.hidden, spec.layers, kind=kind, rates=rate, tile=tile, groups=groups)
    return base, approx


def make_batch(spec: ModelSpec, gen: torch.Generator):
    if spec.family == "mlp":
        return torch.randn(spec.batch, spec.sizes[0], generator=gen), torch.randint(
            0, spec.sizes[-1], (spec.batch,), generator=gen
        )
    shape = (spec.seq_len, spec.batch)
    return torch.randint(0, spec.vocab, shape, generator=gen), torch.randint(0, spec.vocab, shape, generator=gen)


OPTIMIZERS = ("sgd", "fused", "lazy")


def baseline_optimizer(optimizer: str) -> str:
    """The Bernoulli side's optimizer: LazySGD has no rows to defer there, so it gets torch's SGD."""
    return "sgd" if optimizer == "lazy" else optimizer


def make_optimizer(model: nn.Module, optimizer: str):
    if optimizer == "lazy":
        from ardrop.optim import LazySGD

        return LazySGD(model.parameters(), lr=0.01, momentum=0.9)
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=True if optimizer == "fused" else None)


def make_step(model: nn.Module, spec: ModelSpec, batch, optimizer: str):
    opt = make_optimizer(model, optimizer)
    x, target = batch
    model.train()

    def step():
        out = model(x)
        if spec.family == "lstm":
            out = out[0].reshape(-1, spec.vocab)
        F.cross_entropy(out, target.reshape(-1)).backward()
        opt.step()
        opt.zero_grad()

    return step


# ---- patterns and the FLOP ideal ------------------------------------------------------
def site_sequences(model, rate, steps, args):
    """One searched distribution and one pattern sequence per site (SPEC section 1), via `ardrop.planning.plan`."""
    from ardrop.planning import plan

    made = plan(model, steps, args.seed, {"method": args.method, "max_dp": args.max_dp}, rate=rate)
    return [(site, made.sequences[name]) for name, site in made.sites], made.results


def gemm_flops(spec: ModelSpec, kind: str, patterns, tile: int) -> float:
    """GEMM FLOPs of one training step (forward, grad-input where needed, grad-weight).

    ``patterns`` holds one Pattern (or None = dense) per site in site order.
    """
    from ardrop.patterns import Pattern

    def kept_fraction(p, rows, cols, dropped_dim):
        if p is None or p.dp == 1:
            return 1.0
        if p.kind == "row":
            return p.num_kept_rows(dropped_dim) / dropped_dim
        return p.num_kept_weights(rows, cols) / (rows * cols)

    if spec.family == "mlp":
        s, b = spec.sizes, spec.batch
        total = 0.0
        kept = [s[0]] + [
            (Pattern.num_kept_rows(p, s[k + 1]) if (kind == "row" and p is not None and p.dp > 1) else s[k + 1])
            for k, p in enumerate(patterns)
        ] + [s[-1]]
        for k in range(len(s) - 1):
            gemms = 2 if k == 0 else 3  # the first layer needs no input gradient
            if kind == "tile" and k < len(patterns):
                work = s[k] * s[k + 1] * kept_fraction(patterns[k], s[k + 1], s[k], None)
            else:
                work = kept[k] * kept[k + 1]
            total += 2.0 * b * work * gemms
        return total
    n, h, v = spec.seq_len * spec.batch, spec.hidden, spec.vocab
    total = 0.0
    for k in range(spec.layers):
        f = kept_fraction(patterns[k], 4 * h, h, h) if patterns else 1.0
        total += 2.0 * n * 4 * h * h * (f + 1.0) * 3  # W_ih on kept inputs, W_hh untouched
    f = kept_fraction(patterns[spec.layers], v, h, h) if patterns else 1.0
    return total + 2.0 * n * v * h * f * 3


def expected_flop_ratio(spec: ModelSpec, kind: str, site_probs, tile: int) -> float:
    """Dense GEMM FLOPs over their expectation under the searched distributions.

    Why next to the period's own ratio: the MLP's middle layer costs ``kept1 * kept2``,
    so a short period's ratio depends on how the two independent shuffles happen to pair
    up (x2.8-x4.0 over seeds for 24 steps of the 2048 MLP at rate 0.5). This is the
    number a long training run averages to; the timed period should be close to it.
    """
    from itertools import product

    from ardrop.patterns import Pattern

    choices = [[(p / dp, Pattern(kind, dp, off, tile)) for dp, p in enumerate(probs, 1) if p > 0
                for off in range(dp)] for probs in site_probs]
    expected = sum(math.prod(w for w, _ in combo) * gemm_flops(spec, kind, [pat for _, pat in combo], tile)
                   for combo in product(*choices))
    return gemm_flops(spec, kind, [None] * len(site_probs), tile) / expected


# ---- timing --------------------------------------------------------------------------
def time_pair(base_step, approx_step, set_step, steps, rounds, warmup, interleave="period"):
    """Interleaved timings: ``t[side][round][position]`` in seconds.

    ``interleave="period"`` times a whole period of one side, then of the other (the
    order swaps every round), each block after one untimed step; ``"step"`` alternates
    the sides every step (AB, BA, ...).
    """
    for w in range(warmup):
        set_step(w % steps)
        approx_step()
        base_step()
    times = {"base": [], "approx": []}
    order = (("base", base_step), ("approx", approx_step))
    for r in range(rounds):
        row = {"base": [], "approx": []}

        def timed(side, fn):
            t0 = time.perf_counter()
            fn()
            row[side].append(time.perf_counter() - t0)

        if interleave == "step":
            for s in range(steps):
                set_step(s)
                for side, fn in order if s % 2 == 0 else order[::-1]:
                    timed(side, fn)
        else:
            for side, fn in order if r % 2 == 0 else order[::-1]:
                set_step(steps - 1)
                fn()  # untimed: back to this model's own steady state
                for s in range(steps):
                    set_step(s)
                    timed(side, fn)
        for side in times:
            times[side].append(row[side])
    return times


def summarize(per_round):
    """(robust mean per step, plain median) in ms."""
    per_pos = [statistics.median(col) for col in zip(*per_round)]
    flat = [t for r in per_round for t in r]
    return 1e3 * sum(per_pos) / len(per_pos), 1e3 * statistics.median(flat)


def bench_one(spec, kind, rate, optimizer, args):
    base, approx = build_pair(spec, kind, rate, args.tile, args.groups)
    steps = args.repeats or DEFAULT_PERIOD[spec.family]
    seqs, searches = site_sequences(approx, rate, steps, args)

    def set_step(s):
        for site, seq in seqs:
            site.set_pattern(seq[s])

    gen = torch.Generator().manual_seed(args.seed)
    batch = make_batch(spec, gen)
    times = time_pair(make_step(base, spec, batch, baseline_optimizer(optimizer)),
                      make_step(approx, spec, batch, optimizer), set_step, steps, args.rounds, args.warmup,
                      args.interleave)
    base_mean, base_med = summarize(times["base"])
    approx_mean, approx_med = summarize(times["approx"])
    dense = gemm_flops(spec, kind, [None] * len(seqs), args.tile)
    approx_flops = statistics.fmean(gemm_flops(spec, kind, [seq[s] for _, seq in seqs], args.tile) for s in range(steps))
    realised = {seq.site: 1.0 - statistics.fmean(1.0 / seq[s].dp for s in range(steps)) for _, seq in seqs}
    return {
        "model": spec.name, "kind": kind, "rate": rate, "optimizer": optimizer,
        "batch": spec.batch, "sizes": list(spec.sizes) if spec.family == "mlp" else None,
        "base_ms": base_mean, "approx_ms": approx_mean, "speedup": base_mean / approx_mean,
        "base_median_ms": base_med, "approx_median_ms": approx_med, "speedup_median": base_med / approx_med,
        "ideal_flop_ratio": dense / approx_flops, "steps": steps,
        "expected_ideal_flop_ratio": expected_flop_ratio(spec, kind, [v["probs"] for v in searches.values()],
                                                         args.tile),
        "realised_rate": realised, "search": searches,
        "base_times_s": times["base"], "approx_times_s": times["approx"],
    }


# ---- command line --------------------------------------------------------------------
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
    p.add_argument("--max-dp", type=int, default=8, help="largest pattern N searched per site (capped by shape)")
    p.add_argument("--method", choices=("sgd", "maxent"), default="sgd", help="pattern-distribution search")
    p.add_argument("--tile", type=int, default=32)
    p.add_argument("--groups", default="dp",
                   help="patterns per step on the approximate side: dp (the default, one per offset) or 1 (the paper's)")
    p.add_argument("--optimizers", type=csv(str), default=["sgd"],
                   help="sgd (torch.optim.SGD on both sides, primary), fused (fused=True on both sides), "
                        "lazy (ardrop.optim.LazySGD on the approximate side, torch SGD on the Bernoulli side)")
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
                    ("--max-dp", args.max_dp)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    from ardrop.nn.site import check_groups

    args.groups = check_groups(int(args.groups) if str(args.groups).isdigit() else args.groups)
    if args.loop_steps is not None and args.loop_steps < 3:
        raise ValueError(f"--loop-steps must be >= 3, got {args.loop_steps}")
    if args.loop_warmup < 1:
        raise ValueError(f"--loop-warmup must be >= 1 (the first steps pay one-off costs), got {args.loop_warmup}")
    if args.loop:
        from ardrop.bench_loop import config_model_name

        for m in args.models:
            config_model_name(m)
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")


def print_table(rows) -> None:
    head = (f"{'model':<14}{'kind':<6}{'rate':>5}{'optim':>7}{'bern ms':>10}{'approx ms':>11}{'speedup':>9}"
            f"{'(median)':>10}{'ideal':>8}{'E ideal':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<14}{r['kind']:<6}{r['rate']:>5.2f}{r['optimizer']:>7}{r['base_ms']:>10.2f}"
              f"{r['approx_ms']:>11.2f}{r['speedup']:>8.2f}x{r['speedup_median']:>9.2f}x{r['ideal_flop_ratio']:>7.2f}x"
              f"{r['expected_ideal_flop_ratio']:>8.2f}x")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    validate(args)
    if args.device == "cuda":
        from cuda_ext.bench_gpu import run_gpu_bench

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
