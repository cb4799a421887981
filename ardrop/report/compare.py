"""Pairs of runs (Bernoulli against approximate, same protocol, model, rate and seed) and what they measure.

Why pairs per seed: one seed gives both runs the same batches in the same order, so
the ratio of their times and the difference of their curves is the dropout's effect, and
mean +- std over seeds is over those per-seed effects.
"""
from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from .runs import USABLE, Run, variant_kind


def mean_std(values: list[float]) -> tuple[float | None, float | None, int]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


def value_at(curve: list[tuple[float, float]], t: float) -> float | None:
    """The curve's value at training time ``t``: linear between validations, the last value after the last one.

    None before the first validation: nothing is known there.
    """
    if not curve or t < curve[0][0] - 1e-9:
        return None
    for (t0, v0), (t1, v1) in zip(curve, curve[1:]):
        if t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return curve[-1][1]


def time_to(curve: list[tuple[float, float]], target: float, higher_is_better: bool) -> float | None:
    """First training time at which the curve reaches ``target`` (linear between validations), or None."""
    def reached(v):
        return v >= target if higher_is_better else v <= target

    prev = None
    for t, v in curve:
        if reached(v):
            if prev is None or v == prev[1]:
                return t
            t0, v0 = prev
            return t0 + (t - t0) * (target - v0) / (v - v0)
        prev = (t, v)
    return None


@dataclass
class Pair:
    """A Bernoulli run and an approximate run with the same protocol, model, rate and seed."""
    base: Run
    approx: Run

    def speedup(self) -> float | None:
        tb, ta = self.base.train_time, self.approx.train_time
        if not tb or not ta or self.base.machine_key != self.approx.machine_key:
            return None
        return tb / ta

    def step_speedup(self) -> float | None:
        sb, sa = self.base.step_median, self.approx.step_median
        if not sb or not sa or self.base.machine_key != self.approx.machine_key:
            return None
        return sb / sa

    def at_equal_time(self, metric: str) -> float | None:
        tb, ta = self.base.train_time, self.approx.train_time
        if tb is None or ta is None:
            return None
        t = min(tb, ta)
        vb, va = value_at(self.base.curve(metric), t), value_at(self.approx.curve(metric), t)
        return None if vb is None or va is None else va - vb

    def time_to_target_ratio(self, metric: str, higher_is_better: bool, target: float | None) -> float | None:
        cb, ca = self.base.curve(metric), self.approx.curve(metric)
        if not cb or not ca:
            return None
        if target is None:
            best = max if higher_is_better else min
            target = (min if higher_is_better else max)(best(v for _, v in cb), best(v for _, v in ca))
        tb, ta = time_to(cb, target, higher_is_better), time_to(ca, target, higher_is_better)
        return None if not tb or not ta else tb / ta


@dataclass
class Cell:
    """All runs of one (protocol, family, arch, rate), by variant and seed."""
    protocol: str
    family: str
    arch: str
    rate: object
    rate_label: str
    runs: dict[str, dict] = field(default_factory=lambda: defaultdict(dict))  # variant -> seed -> Run (the latest)
    # variant -> seed -> every run, oldest first: the tables compare the latest run of a repeated
    # (variant, seed), but the learning check lists them all (a spike in one realisation stays visible)
    repeats: dict[str, dict] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))

    def pairs(self, variant: str) -> list[Pair]:
        base = self.runs.get("bernoulli", {})
        return [Pair(base[s], r) for s, r in sorted(self.runs.get(variant, {}).items(), key=lambda kv: str(kv[0]))
                if s in base]

    def approx_variants(self) -> list[str]:
        return sorted((v for v in self.runs if v not in ("bernoulli", "none")), key=variant_order)


def variant_order(v: str):
    return ({"row": 0, "tile": 1}.get(variant_kind(v), 2), v)


def arch_order(arch: str):
    nums = [int(x) for x in re.findall(r"\d+", arch)]
    return (math.prod(nums) if nums else 0, nums, arch)


def build_cells(runs: list[Run], family: str, notes: list[str]) -> list[Cell]:
    cells: dict[tuple, Cell] = {}
    for r in runs:
        if r.family != family or r.status not in USABLE:
            continue
        key = (r.protocol, r.arch, r.rate)
        cell = cells.setdefault(key, Cell(r.protocol, family, r.arch, r.rate, r.rate_label))
        cell.repeats[r.variant][r.seed].append(r)
        cell.repeats[r.variant][r.seed].sort(key=lambda x: str(x.doc.get("started_at")))
        prev = cell.runs[r.variant].get(r.seed)
        if prev is not None:
            notes.append(f"{family} {r.arch} rate {r.rate_label} {r.variant} seed {r.seed} ({r.protocol}): two runs "
                         f"({prev.path} and {r.path}); the later one is used")
            if str(r.doc.get("written_at", "")) < str(prev.doc.get("written_at", "")):
                continue
        cell.runs[r.variant][r.seed] = r
    return sorted(cells.values(), key=lambda c: (c.protocol, str(c.rate_label), arch_order(c.arch)))


def comparable_cells(runs: list[Run], family: str, notes: list[str]) -> list[Cell]:
    """Cells with a Bernoulli run and at least one approximate variant: the only ones a comparison can use."""
    return [c for c in build_cells(runs, family, notes) if "bernoulli" in c.runs and c.approx_variants()]

