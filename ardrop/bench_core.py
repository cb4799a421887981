"""The core bench: what ``python -m ardrop.bench`` times, and how (the method is in ``ardrop/bench.py``).

Holds: the benchmarked model pairs (stock torch with Bernoulli dropout, ardrop's
approximate models), their batches, one training step per optimizer, the searched
pattern sequences, the GEMM FLOP model, the interleaved timing protocol and
``bench_one`` (one CPU measurement). Imports: torch, stdlib and, inside functions,
``ardrop.nn``, ``ardrop.optim``, ``ardrop.planning``, ``ardrop.patterns``.

Why a module of its own: the CPU command (``ardrop.bench``), the GPU bench
(``ardrop.bench_gpu``) and the loop bench (``ardrop.bench_loop``) all time these same
workloads, and none of them may import another's entry point (no import cycle).
"""

from __future__ import annotations

import math
import re
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

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


def build_pair(spec: ModelSpec, kind: str, rate: float, tile: int, groups=None):
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


def make_optimizer(model: nn.Module, optimizer: str, momentum: float = 0.9, weight_decay: float = 0.0):
    if optimizer == "lazy":
        from ardrop.optim import LazySGD

        return LazySGD(model.parameters(), lr=0.01, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=momentum, weight_decay=weight_decay,
                           fused=True if optimizer == "fused" else None)


def make_step(model: nn.Module, spec: ModelSpec, batch, optimizer: str, momentum: float = 0.9,
              weight_decay: float = 0.0, clip: float | None = None):
    """One training step; ``clip`` clips the gradient norm as training does (`ardrop.optim.clip`, both sides)."""
    from ardrop.optim.clip import clip_grad_norm_

    opt = make_optimizer(model, optimizer, momentum, weight_decay)
    params = list(model.parameters())
    x, target = batch
    model.train()

    def step():
        out = model(x)
        if spec.family == "lstm":
            out = out[0].reshape(-1, spec.vocab)
        F.cross_entropy(out, target.reshape(-1)).backward()
        if clip is not None:
            clip_grad_norm_(params, clip)
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
    train = dict(momentum=getattr(args, "momentum", 0.9), weight_decay=getattr(args, "weight_decay", 0.0),
                 clip=getattr(args, "clip", None))
    times = time_pair(make_step(base, spec, batch, baseline_optimizer(optimizer), **train),
                      make_step(approx, spec, batch, optimizer, **train), set_step, steps, args.rounds, args.warmup,
                      args.interleave)
    base_mean, base_med = summarize(times["base"])
    approx_mean, approx_med = summarize(times["approx"])
    dense = gemm_flops(spec, kind, [None] * len(seqs), args.tile)
    approx_flops = statistics.fmean(gemm_flops(spec, kind, [seq[s] for _, seq in seqs], args.tile) for s in range(steps))
    realised = {seq.site: 1.0 - statistics.fmean(1.0 / seq[s].dp for s in range(steps)) for _, seq in seqs}
    return {
        "model": spec.name, "kind": kind, "rate": rate, "optimizer": optimizer, **train,
        "batch": spec.batch, "sizes": list(spec.sizes) if spec.family == "mlp" else None,
        "base_ms": base_mean, "approx_ms": approx_mean, "speedup": base_mean / approx_mean,
        "base_median_ms": base_med, "approx_median_ms": approx_med, "speedup_median": base_med / approx_med,
        "ideal_flop_ratio": dense / approx_flops, "steps": steps,
        "expected_ideal_flop_ratio": expected_flop_ratio(spec, kind, [v["probs"] for v in searches.values()],
                                                         args.tile),
        "realised_rate": realised, "search": searches,
        "base_times_s": times["base"], "approx_times_s": times["approx"],
    }


def format_table(rows: list[dict], columns: list[tuple]) -> list[str]:
    """The bench tables: ``columns`` are ``(title, width, key, spec)``, ``spec`` a format spec
    with an optional trailing ``x`` (a ratio); a negative width left-aligns; None prints n/a.

    One printer for the CPU, GPU and loop benches, so their tables read alike.
    """
    def cell(width, text):
        return f"{text:<{-width}}" if width < 0 else f"{text:>{width}}"

    def value(r, key, spec):
        if key is None:  # a spacer
            return ""
        v = r.get(key)
        if v is None:
            return "n/a"
        return format(v, spec[:-1]) + "x" if spec.endswith("x") else format(v, spec)

    head = "".join(cell(w, title) for title, w, _, _ in columns)
    return [head, "-" * len(head)] + ["".join(cell(w, value(r, k, s)) for _, w, k, s in columns) for r in rows]
