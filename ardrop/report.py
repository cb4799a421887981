"""`python -m ardrop.report <run dirs, sweep dirs or summary files...> --out docs/results`.

Builds the paper's Table 1 / Table 2 and Figs. 5 / 6 (plus the searched pattern
distributions) from the runs' `summary.json` files alone, which `callbacks.RunSummary`
writes. Why only those: they are a few kB each, so the evidence can be committed
(`--collect docs/results/runs`) and the tables rebuilt from the copies on any machine,
without checkpoints, TensorBoard events or Lightning. This module uses the standard
library and matplotlib (imported only when a figure is drawn), nothing from the training
stack.

How runs are compared:
- Runs pair up when they share the model, the rate, the seed and the *protocol*: the
  composed config without what a sweep varies between the compared runs (dropout kind and
  its settings, seed, paths, loggers, callbacks). Different budgets (epochs, step limits,
  optimiser) are different protocols and are never mixed; each gets its own table section.
- Speedup: Bernoulli training wall time / approximate training wall time for the same
  seed, then mean (and std) over seeds. Training time is `timing.train_time_s`
  (validation, sanity check and test excluded; see callbacks/run_summary.py). A pair whose
  machines differ (CPU model or torch threads) gets no speedup.
- Quality at equal wall time: both runs' validation curves interpolated linearly (over
  training time) at T = the shorter of the two training times; the difference
  approximate - Bernoulli, mean over seeds.
- Time to target: the target is `--target-acc` / `--target-ppl` if given, else per pair
  the worse of the two runs' best validation values (so both reach it); the first time
  each curve reaches it (linear interpolation between validations), then the ratio
  Bernoulli / approximate, mean over seeds.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import re
import shutil
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ardrop import paper_numbers as paper

SUMMARY_FORMAT = "ardrop-run-summary"  # the "format" field of callbacks.RunSummary's files (same value there)
SUMMARY_NAME = "summary.json"
USABLE = ("tested", "fit")  # statuses whose numbers go into tables; "failed" runs are only listed
# A run during whose training other work kept this many cores busy (``timing.other_cpu_cores``)
# is named in the notes: a quarter of a core is ~12% of a 2-core machine, beyond the drift
# between clean runs of one config here.
BUSY_CORES = 0.25

# What a sweep changes between the runs it compares: left out of the protocol fingerprint.
_VOLATILE_TOP = ("seed", "rate", "output_dir", "data_dir", "ckpt_path", "test", "test_ckpt", "dropout", "search",
                 "callbacks", "logger", "hydra", "experiment")
_VOLATILE = {
    "model": ("kind", "groups", "backend", "tile", "rates", "hidden", "num_layers"),  # sizes: the tables' rows
    "data": ("shuffle_seed", "data_dir", "verify"),
    "trainer": ("enable_progress_bar", "enable_model_summary", "default_root_dir", "logger", "callbacks"),
}


class ReportError(ValueError):
    """Bad input to the report (a path without summaries, a file that is not one); the message says what to do."""


# --------------------------------------------------------------------------------------
# Reading summaries
# --------------------------------------------------------------------------------------
@dataclass
class Run:
    path: Path
    doc: dict
    protocol: str = ""  # filled by `label_protocols`
    variant: str = ""  # filled by `label_variants`

    @property
    def choices(self) -> dict:
        return self.doc.get("choices") or {}

    @property
    def run_id(self) -> str:
        return str(self.doc.get("run_id") or self.path)

    @property
    def status(self) -> str:
        return str(self.doc.get("status"))

    @property
    def family(self) -> str:
        return str(self.choices.get("family"))

    @property
    def arch(self) -> str:
        return str(self.choices.get("arch"))

    @property
    def model(self) -> str:
        return str(self.choices.get("model_choice") or self.choices.get("model"))

    @property
    def kind(self) -> str:
        return str(self.choices.get("dropout"))

    @property
    def rate(self):
        r = self.choices.get("rate")
        return tuple(r) if isinstance(r, list) else r

    @property
    def rate_label(self) -> str:
        r = self.rate
        return f"[{', '.join(f'{x:g}' for x in r)}]" if isinstance(r, tuple) else ("-" if r is None else f"{r:g}")

    @property
    def seed(self):
        return self.choices.get("seed")

    @property
    def experiment(self) -> str | None:
        return self.choices.get("experiment")

    @property
    def train_time(self) -> float | None:
        return (self.doc.get("timing") or {}).get("train_time_s")

    @property
    def step_median(self) -> float | None:
        return (self.doc.get("timing") or {}).get("step_median_s")

    def final(self, key: str):
        return (self.doc.get("final") or {}).get(key)

    @property
    def machine_key(self) -> tuple:
        m = self.doc.get("machine") or {}
        return (m.get("cpu"), m.get("torch_threads"), m.get("cuda_device"))

    def curve(self, metric: str) -> list[tuple[float, float]]:
        pts = [(p["train_time_s"], p[metric]) for p in self.doc.get("curve") or []
               if p.get(metric) is not None and p.get("train_time_s") is not None]
        return sorted(pts)


def _is_summary(doc) -> bool:
    return isinstance(doc, dict) and doc.get("format") == SUMMARY_FORMAT


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


_NO_SUMMARY_HINT = (
    "runs write <output_dir>/summary.json when the RunSummary callback is on (callbacks.run_summary in "
    "conf/callbacks/default.yaml); train first (e.g. `python -m ardrop.train -m experiment=table1`), or pass the "
    "directory holding the runs or the copies made with --collect"
)


def find_summaries(inputs: list[str | Path], progress: Callable[[str], None] = lambda s: None) -> tuple[list[Run], list[str]]:
    """Every run summary under ``inputs`` (directories searched recursively for ``*.json``).

    Returns the runs (one per run id: a run found both in its sweep directory and as a
    collected copy counts once) and notes about files that were passed over.
    """
    if not inputs:
        raise ReportError("no input given: pass run directories, sweep directories or summary files")
    notes: list[str] = []
    found: dict[str, Run] = {}
    for raw in inputs:
        src = Path(raw)
        if not src.exists():
            raise ReportError(f"{src}: no such file or directory; {_NO_SUMMARY_HINT}")
        if src.is_file():
            doc = _load(src)
            if not _is_summary(doc):
                raise ReportError(f"{src}: not a run summary (no \"format\": \"{SUMMARY_FORMAT}\"); {_NO_SUMMARY_HINT}")
            candidates = [(src, doc)]
        else:
            candidates = []
            for f in sorted(src.rglob("*.json")):
                doc = _load(f)
                if _is_summary(doc):
                    candidates.append((f, doc))
                elif f.name == SUMMARY_NAME:
                    notes.append(f"{f}: unreadable or not a run summary, skipped")
            if not candidates:
                raise ReportError(f"{src}: no run summaries found under it; {_NO_SUMMARY_HINT}")
        progress(f"{src}: {len(candidates)} run summar{'y' if len(candidates) == 1 else 'ies'}")
        for f, doc in candidates:
            run = Run(f, doc)
            old = found.get(run.run_id)
            # The same run twice (sweep dir and a collected copy): keep the latest write.
            if old is None or str(doc.get("written_at", "")) > str(old.doc.get("written_at", "")):
                found[run.run_id] = run
    runs = sorted(found.values(), key=lambda r: str(r.path))
    label_protocols(runs)
    label_variants(runs)
    return runs, notes


def _strip(cfg: dict) -> dict:
    out = {k: v for k, v in cfg.items() if k not in _VOLATILE_TOP}
    for section, keys in _VOLATILE.items():
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    return out


def protocol_fingerprint(doc: dict) -> str:
    """A short hash of the config without what the compared runs may differ in."""
    blob = json.dumps(_strip(doc.get("config") or {}), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:6]


def label_protocols(runs: list[Run]) -> None:
    """Name each protocol by its experiment(s); add the fingerprint only where names would collide."""
    by_fp: dict[str, set] = defaultdict(set)
    for r in runs:
        by_fp[protocol_fingerprint(r.doc)].add(r.experiment or "custom")
    names = {fp: "+".join(sorted(exps)) for fp, exps in by_fp.items()}
    counts = defaultdict(int)
    for n in names.values():
        counts[n] += 1
    for r in runs:
        fp = protocol_fingerprint(r.doc)
        r.protocol = names[fp] if counts[names[fp]] == 1 else f"{names[fp]}#{fp}"


def label_variants(runs: list[Run]) -> None:
    """`bernoulli`, `row`, `tile`; qualified by groups / search only where runs of one kind differ in them.

    Per model family: the MLP and the LSTM default to different groups, and their runs
    never share a table.
    """
    details = defaultdict(set)
    for r in runs:
        details[r.family, r.kind].add(_detail(r))
    for r in runs:
        if r.kind in ("row", "tile") and len(details[r.family, r.kind]) > 1:
            g, method, n = _detail(r)
            r.variant = f"{r.kind} (groups={g}, {method}, N={n})"
        else:
            r.variant = r.kind


def _detail(r: Run) -> tuple:
    search = r.choices.get("search") or {}
    return (r.choices.get("groups"), search.get("method"), search.get("max_dp"))


# --------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------
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
    runs: dict[str, dict] = field(default_factory=lambda: defaultdict(dict))  # variant -> seed -> Run

    def pairs(self, variant: str) -> list[Pair]:
        base = self.runs.get("bernoulli", {})
        return [Pair(base[s], r) for s, r in sorted(self.runs.get(variant, {}).items(), key=lambda kv: str(kv[0]))
                if s in base]

    def approx_variants(self) -> list[str]:
        return sorted((v for v in self.runs if v not in ("bernoulli", "none")), key=_variant_order)


def _variant_order(v: str):
    return ({"row": 0, "tile": 1}.get(v.split(" ")[0], 2), v)


def _arch_order(arch: str):
    nums = [int(x) for x in re.findall(r"\d+", arch)]
    return (math.prod(nums) if nums else 0, nums, arch)


def build_cells(runs: list[Run], family: str, notes: list[str]) -> list[Cell]:
    cells: dict[tuple, Cell] = {}
    for r in runs:
        if r.family != family or r.status not in USABLE:
            continue
        key = (r.protocol, r.arch, r.rate)
        cell = cells.setdefault(key, Cell(r.protocol, family, r.arch, r.rate, r.rate_label))
        prev = cell.runs[r.variant].get(r.seed)
        if prev is not None:
            notes.append(f"{family} {r.arch} rate {r.rate_label} {r.variant} seed {r.seed} ({r.protocol}): two runs "
                         f"({prev.path} and {r.path}); the later one is used")
            if str(r.doc.get("written_at", "")) < str(prev.doc.get("written_at", "")):
                continue
        cell.runs[r.variant][r.seed] = r
    return sorted(cells.values(), key=lambda c: (c.protocol, str(c.rate_label), _arch_order(c.arch)))


# --------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------
def fmt_ms(mean, std, n, scale=1.0, digits=2, prefix="", sign=False) -> str:
    """``mean ± std (n=k)``, the form the tables use (and the tests parse); ``sign``: always a + or -."""
    if mean is None:
        return "—"
    s = f"{prefix}{mean * scale:{'+' if sign else ''}.{digits}f}"
    if std is not None:
        s += f" ± {std * scale:.{digits}f}"
    return s + f" (n={n})"


def fmt_num(x, digits=2, sign=False, prefix="") -> str:
    if x is None:
        return "—"
    return f"{prefix}{x:+.{digits}f}" if sign else f"{prefix}{x:.{digits}f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _machines(runs: list[Run]) -> str:
    seen = sorted({(m.get("cpu"), m.get("torch_threads"), m.get("cuda_device"), m.get("torch"))
                   for m in (r.doc.get("machine") or {} for r in runs)}, key=str)
    parts = []
    for cpu, threads, cuda, torch_v in seen:
        s = f"{cpu or 'unknown CPU'}, {threads} torch threads, torch {torch_v}"
        parts.append(s + (f", {cuda}" if cuda else ""))
    return "; ".join(parts) or "unknown"


def _protocol_line(cell_runs: list[Run]) -> str:
    cfg = (cell_runs[0].doc.get("config") or {}) if cell_runs else {}
    tr, data, model = cfg.get("trainer") or {}, cfg.get("data") or {}, cfg.get("model") or {}
    steps = sorted({r.doc.get("timing", {}).get("steps") for r in cell_runs if r.doc.get("timing")}, key=str)
    bits = [f"max_epochs {tr.get('max_epochs')}", f"max_steps {tr.get('max_steps')}"]
    if tr.get("limit_train_batches") is not None:
        bits.append(f"limit_train_batches {tr.get('limit_train_batches')}")
    if tr.get("limit_val_batches") == 0:
        bits.append("no validation (limit_val_batches 0)")
    else:
        bits.append(f"val_check_interval {tr.get('val_check_interval')}")
    bits.append(f"batch {data.get('batch_size')}" + (f" x {data.get('seq_len')} tokens" if data.get("seq_len") else ""))
    bits.append(f"{model.get('optimizer')} lr {model.get('lr')}, momentum {model.get('momentum')}, schedule "
                f"{model.get('schedule')}, clip {tr.get('gradient_clip_val')}")
    bits.append(f"training steps per run: {', '.join(map(str, steps))}")
    tested = sorted({str(c.get("test_ckpt", "best")) if c.get("test", True) else "not tested"
                     for c in ((r.doc.get("config") or {}) for r in cell_runs)})
    bits.append(f"tested checkpoint: {', '.join(tested)}")
    return "; ".join(bits)


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------
_DEFINITIONS = (
    "Mean ± sample std over seeds, n = runs (or pairs). Speedup: Bernoulli training wall time / approximate "
    "training wall time for the same seed (validation, sanity check and test excluded), mean over seeds; step x: "
    "the same ratio of median step times. At equal time: validation {metric} of the approximate run minus the "
    "Bernoulli run's, both interpolated at the shorter run's training time. Time-to-target x: Bernoulli time / "
    "approximate time to reach {target} on the validation curve."
)


def _pair_columns(pairs, metric: str, higher_is_better: bool, target, equal_time_scale: float = 1.0) -> list[str]:
    """The four per-seed pair columns both tables share: speedup, step x, Δ at equal time, time-to-target x."""
    return [
        fmt_ms(*mean_std([p.speedup() for p in pairs]), prefix="x"),
        fmt_ms(*mean_std([p.step_speedup() for p in pairs]), prefix="x"),
        fmt_ms(*mean_std([p.at_equal_time(metric) for p in pairs]), scale=equal_time_scale, sign=True),
        fmt_ms(*mean_std([p.time_to_target_ratio(metric, higher_is_better, target) for p in pairs]), prefix="x"),
    ]


def table1(runs: list[Run], notes: list[str], target_acc: float | None = None) -> str | None:
    cells = [c for c in build_cells(runs, "mlp", notes) if "bernoulli" in c.runs and c.approx_variants()]
    if not cells:
        return None
    target = (f"{100 * target_acc:.2f}% accuracy" if target_acc is not None
              else "the lower of the two runs' best validation accuracies")
    out = ["# Table 1: MNIST MLPs, approximate vs Bernoulli dropout", "",
           "Our runs (test accuracy as each run tested it: the best-validation checkpoint under the default "
           "`test_ckpt=best`, the last weights under `test_ckpt=last`; each protocol line says which) next to the "
           "paper's Table 1 (Caffe, GPU, "
           "60K iterations; each paper row has its own Bernoulli run).", "",
           _DEFINITIONS.format(metric="accuracy (pp)", target=target), ""]
    header = ["rate", "size", "kind", "Bernoulli acc %", "approx acc %", "Δ pp", "speedup", "step x",
              "Δ pp at equal time", "time-to-target x", "paper Bernoulli %", "paper approx % (Δ)", "paper speedup"]
    for protocol in sorted({c.protocol for c in cells}):
        pcells = [c for c in cells if c.protocol == protocol]
        rows = []
        all_runs = []
        for c in pcells:
            base = list(c.runs["bernoulli"].values())
            b_mean, b_std, b_n = mean_std([r.final("test_acc") for r in base])
            for v in c.approx_variants():
                approx = list(c.runs[v].values())
                all_runs += base + approx
                a_mean, a_std, a_n = mean_std([r.final("test_acc") for r in approx])
                pp = paper.TABLE1.get((c.arch, c.rate, v.split(" ")[0])) if isinstance(c.rate, float) else None
                delta = None if a_mean is None or b_mean is None else 100 * (a_mean - b_mean)
                rows.append([
                    c.rate_label, c.arch, v, fmt_ms(b_mean, b_std, b_n, 100), fmt_ms(a_mean, a_std, a_n, 100),
                    fmt_num(delta, sign=True), *_pair_columns(c.pairs(v), "val_acc", True, target_acc, 100),
                    f"{pp[0]:.2f}" if pp else "—", f"{pp[1]:.2f} ({pp[1] - pp[0]:+.2f})" if pp else "—",
                    f"x{pp[2]:.2f}" if pp else "—",
                ])
        out += [f"## Protocol `{protocol}`", "", _protocol_line(all_runs), "", f"Machine: {_machines(all_runs)}.", "",
                _md_table(header, rows), ""]
    return "\n".join(out)


def table2(runs: list[Run], notes: list[str], target_ppl: float | None = None) -> str | None:
    cells = [c for c in build_cells(runs, "lstm", notes) if "bernoulli" in c.runs and c.approx_variants()]
    if not cells:
        return None
    target = (f"perplexity {target_ppl:g}" if target_ppl is not None
              else "the higher of the two runs' best validation perplexities")
    out = ["# Table 2: PTB word LSTM language models, approximate vs Bernoulli dropout", "",
           "Our runs (test perplexity and word accuracy as each run tested it: the best-validation checkpoint "
           "under the default `test_ckpt=best`, the last weights under `test_ckpt=last`; each protocol line says "
           "which) next to the paper's "
           "Table 2 (Caffe, GPU, 110K iterations on an 8.8K-word corpus, 1000 units per layer). The paper's LM "
           "score is not perplexity (its formula was lost; lower is better, an untrained model scores about 105); "
           "compare it only as approximate vs Bernoulli.", "",
           _DEFINITIONS.format(metric="perplexity", target=target), ""]
    header = ["layers x units", "rate", "kind", "Bernoulli test ppl", "approx test ppl", "ppl ratio",
              "Bernoulli word acc %", "approx word acc %", "Δ pp", "speedup", "step x", "Δ val ppl at equal time",
              "time-to-target x", "paper score B / approx", "paper acc % B / approx", "paper speedup"]
    for protocol in sorted({c.protocol for c in cells}):
        rows, all_runs = [], []
        for c in (c for c in cells if c.protocol == protocol):
            base = list(c.runs["bernoulli"].values())
            bp = mean_std([r.final("test_ppl") for r in base])
            ba = mean_std([r.final("test_acc") for r in base])
            layers, hidden = (int(x) for x in c.arch.split("x")) if re.fullmatch(r"\d+x\d+", c.arch) else (None, None)
            for v in c.approx_variants():
                approx = list(c.runs[v].values())
                all_runs += base + approx
                ap = mean_std([r.final("test_ppl") for r in approx])
                aa = mean_std([r.final("test_acc") for r in approx])
                ratio = None if ap[0] is None or bp[0] is None else ap[0] / bp[0]
                dacc = None if aa[0] is None or ba[0] is None else 100 * (aa[0] - ba[0])
                pp = (paper.TABLE2.get((layers, c.rate)) if hidden == paper.TABLE2_HIDDEN and isinstance(c.rate, float)
                      else None)
                kind = v.split(" ")[0]
                rows.append([
                    c.arch, c.rate_label, v, fmt_ms(*bp), fmt_ms(*ap), fmt_num(ratio, 3),
                    fmt_ms(*ba, scale=100), fmt_ms(*aa, scale=100), fmt_num(dacc, sign=True),
                    *_pair_columns(c.pairs(v), "val_ppl", False, target_ppl),
                    f"{pp['metric']['bernoulli']} / {pp['metric'][kind]}" if pp and kind in pp["metric"] else "—",
                    f"{pp['acc']['bernoulli']} / {pp['acc'][kind]}" if pp and kind in pp["acc"] else "—",
                    f"x{pp['speedup'][kind]:.2f}" if pp and kind in pp["speedup"] else "—",
                ])
        out += [f"## Protocol `{protocol}`", "", _protocol_line(all_runs), "", f"Machine: {_machines(all_runs)}.", "",
                _md_table(header, rows), ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------
_COLORS = {"bernoulli": "tab:blue", "row": "tab:red", "tile": "tab:green"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on the machines that build reports
    import matplotlib.pyplot as plt

    return plt


def _color(variant: str, i: int = 0) -> str:
    """Bernoulli blue, row red, tile green in every figure; other variants by their index."""
    return _COLORS.get(variant, f"C{3 + i}")


def fig5(runs: list[Run], path: Path, arch: str, notes: list[str]) -> str | None:
    """Speedup and test accuracy against rate for one MLP size; None (and the reason) when runs are missing."""
    cells = [c for c in build_cells(runs, "mlp", []) if c.arch == arch and isinstance(c.rate, float)
             and "bernoulli" in c.runs and c.approx_variants()]
    by_protocol = defaultdict(list)
    for c in cells:
        by_protocol[c.protocol].append(c)
    usable = {p: cs for p, cs in by_protocol.items() if len(cs) >= 2}
    if not usable:
        have = sorted({r.rate_label for r in runs if r.family == "mlp" and r.arch == arch})
        return (f"needs Bernoulli and approximate runs of the {arch} MLP at two or more rates under one "
                f"protocol; found rates {have or 'none'} for {arch}")
    protocol = max(usable, key=lambda p: (len(usable[p]), p))
    if len(usable) > 1:
        notes.append(f"fig5.png: protocol {protocol} drawn (most rates); also available: "
                     f"{', '.join(sorted(set(usable) - {protocol}))}")
    cs = sorted(usable[protocol], key=lambda c: c.rate)
    variants = _fig5_variants(cs, notes)
    plt = _pyplot()
    fig, (ax_s, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
    for v in variants:
        kind = v.split(" ")[0]
        xs, ms, ss = [], [], []
        for c in cs:
            m, s, _ = mean_std([p.speedup() for p in c.pairs(v)])
            if m is not None:
                xs.append(c.rate), ms.append(m), ss.append(s or 0.0)
        ax_s.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, color=_color(kind), label=f"{v} (ours)")
        pp = sorted((r, val[2]) for (a, r, k), val in paper.TABLE1.items() if a == arch and k == kind)
        if pp:
            ax_s.plot(*zip(*pp), linestyle="none", marker="s", mfc="none", color=_color(kind), label=f"{kind} (paper)")
    ax_s.axhline(1.0, color="grey", linewidth=0.8)
    ax_s.set(xlabel="drop rate", ylabel="training-time speedup vs Bernoulli", title=f"{arch}: speedup")
    for v in ["bernoulli", *variants]:
        kind = v.split(" ")[0]
        xs, ms, ss = [], [], []
        for c in cs:
            m, s, _ = mean_std([r.final("test_acc") for r in c.runs.get(v, {}).values()])
            if m is not None:
                xs.append(c.rate), ms.append(100 * m), ss.append(100 * (s or 0.0))
        ax_a.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, color=_color(kind), label=f"{v} (ours)")
        # the paper's Bernoulli accuracy differs per row of its table; its approximate rows are drawn once per kind
        pp = sorted((r, val[1]) for (a, r, k), val in paper.TABLE1.items() if a == arch and k == kind)
        if pp:
            ax_a.plot(*zip(*pp), linestyle="none", marker="s", mfc="none", color=_color(kind), label=f"{kind} (paper)")
    ax_a.set(xlabel="drop rate", ylabel="test accuracy %", title=f"{arch}: accuracy")
    for ax in (ax_s, ax_a):
        ax.grid(alpha=0.3)
    # one legend under both panels (the accuracy panel has every entry): inside, it covered points
    handles, labels = ax_a.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(f"Fig. 5 — MNIST MLP {arch}, protocol {protocol}", fontsize=10)
    fig.tight_layout(rect=(0, 0.07 + 0.025 * math.ceil(len(labels) / 3), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def _fig5_variants(cells: list[Cell], notes: list[str]) -> list[str]:
    """One approximate variant per kind: the one measured at the most rates (then the most pairs, then the newest).

    Why: a results folder keeps superseded variants (other groups, N or search) for the
    record; drawn together they hide the curve a reader wants, the one the tables lead with.
    """
    by_kind = defaultdict(list)
    for v in {v for c in cells for v in c.approx_variants()}:
        by_kind[v.split(" ")[0]].append(v)
    chosen = []
    for kind in sorted(by_kind, key=_variant_order):
        def score(v):
            pairs = [p for c in cells for p in c.pairs(v)]
            rates = sum(1 for c in cells if c.pairs(v))
            newest = max((str(p.approx.doc.get("written_at", "")) for p in pairs), default="")
            return rates, len(pairs), newest, v
        ranked = sorted(by_kind[kind], key=score, reverse=True)
        chosen.append(ranked[0])
        if len(ranked) > 1:
            notes.append(f"fig5.png: {ranked[0]} drawn for {kind} (most rates); left out: {', '.join(ranked[1:])}")
    return chosen


def fig6(runs: list[Run], path: Path, rate: float, notes: list[str]) -> str | None:
    """Validation perplexity against training wall time, approximate vs Bernoulli, for one LSTM at one rate."""
    cands = [r for r in runs if r.family == "lstm" and r.status in USABLE and r.rate == rate
             and len(r.curve("val_ppl")) >= 2]
    groups = defaultdict(list)
    for r in cands:
        groups[(r.protocol, r.arch)].append(r)
    usable = {k: rs for k, rs in groups.items()
              if any(r.kind == "bernoulli" for r in rs) and any(r.kind in ("row", "tile") for r in rs)}
    if not usable:
        return (f"needs LSTM runs at rate {rate:g}, Bernoulli and approximate, each validated at least twice "
                f"during training (experiment=fig6); found {len(cands)} LSTM run(s) at that rate with curves")
    # The paper's Fig. 6 is the 3-layer LSTM: prefer it, then the group with most runs, then the most validations.
    key = max(usable, key=lambda k: (k[1].startswith("3x"), len(usable[k]),
                                     min(len(r.curve("val_ppl")) for r in usable[k]), k))
    if len(usable) > 1:
        notes.append(f"fig6.png: {key[1]} ({key[0]}) drawn; also available: "
                     f"{', '.join(f'{a} ({p})' for p, a in sorted(set(usable) - {key}))}")
    rs = sorted(usable[key], key=lambda r: (_variant_order(r.variant), str(r.seed)))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    variants = []
    for r in rs:
        if r.variant not in variants:
            variants.append(r.variant)
        i = variants.index(r.variant)
        t, v = zip(*r.curve("val_ppl"))
        ax.plot(t, v, marker="o", markersize=3, color=_color(r.variant, i), label=f"{r.variant}, seed {r.seed}")
    ax.set(xlabel="training wall time (s, validation excluded)", ylabel="validation perplexity",
           title=f"Fig. 6 — LSTM {key[1]}, rate {rate:g}, protocol {key[0]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def patterns_fig(runs: list[Run], path: Path) -> str | None:
    """The searched distributions P(dp), one panel per kind, grouped bars per rate."""
    dists: dict[str, dict[tuple, list[float]]] = defaultdict(dict)
    for r in runs:
        for site in r.doc.get("patterns") or []:
            if site.get("probs"):
                key = (site["rate"], site.get("method"), site["N"])
                dists[site["kind"]].setdefault(key, site["probs"])
    if not dists:
        return "needs runs with row or tile dropout (their summaries hold the searched distributions)"
    plt = _pyplot()
    kinds = sorted(dists, key=_variant_order)
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        items = sorted(dists[kind].items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2]))
        width = 0.8 / len(items)
        for j, ((rate, method, n), probs) in enumerate(items):
            xs = [k + 1 + (j - (len(items) - 1) / 2) * width for k in range(len(probs))]
            achieved = sum(p * (k / (k + 1)) for k, p in enumerate(probs))
            ax.bar(xs, probs, width=width, label=f"rate {rate:g} ({method}, N={n}, achieved {achieved:.3f})")
        n_max = max(k[2] for k in dists[kind])
        ax.set_xticks(range(1, n_max + 1))
        ax.set(xlabel="pattern size dp (keeps 1 in dp)", ylabel="P(dp)", title=f"{kind} patterns: searched distribution")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------------------
# Issue 13's learning check: step-for-step training loss against Bernoulli
# --------------------------------------------------------------------------------------
LEARNING_STEP = 1000  # the step at which the loss is compared with Bernoulli's
LEARNING_WARMUP = 100  # after this step the loss must stay below ln V
LEARNING_LOSS_TOL = 0.05  # approximate loss at LEARNING_STEP at most 5% above Bernoulli's
LEARNING_PPL_TOL = 0.10  # one-epoch validation perplexity at most 10% above Bernoulli's
LEARNING_WINDOW = 100  # the smoother comparison: mean loss of the last this many steps up to LEARNING_STEP


def step_losses(r: Run) -> dict[int, float | None] | None:
    """Every training step's loss, or None unless the run kept all of them.

    Why only then: the max-after-warm-up criterion is about *every* step; a thinned curve
    (``log_every_n_steps`` > 1 or a summary that halved its points) could hide a spike.
    """
    lc = r.doc.get("loss_curve") or {}
    tr = (r.doc.get("config") or {}).get("trainer") or {}
    if lc.get("every_n_log_steps") != 1 or tr.get("log_every_n_steps") != 1:
        return None
    return {int(p[0]): p[2] for p in lc.get("points") or []}


def _full_epoch(r: Run) -> bool:
    tr = (r.doc.get("config") or {}).get("trainer") or {}
    return tr.get("max_steps") in (-1, None) and tr.get("limit_train_batches") in (None, 1, 1.0)


def _last_val(r: Run, metric: str) -> float | None:
    pts = [p for p in r.doc.get("curve") or [] if p.get(metric) is not None]
    return pts[-1][metric] if pts else None


def _chance_loss(r: Run) -> float | None:
    """ln V, the loss of a uniform guess over the run's vocabulary."""
    vocab = r.choices.get("vocab_size")
    return math.log(vocab) if vocab else None


@dataclass(frozen=True)
class LearningCriteria:
    """Where issue 13's criteria read the curves: the comparison step, the warm-up, the mean's window."""

    step: int
    warmup: int
    window: int


def _learning_row(c, v, p: Pair, seed: str, crit: LearningCriteria) -> list[str] | None:
    """The learning table's row for one pair (None when a curve lacks single-step losses)."""
    lb, la = step_losses(p.base), step_losses(p.approx)
    if lb is None or la is None:
        return None
    step, warmup, window = crit.step, crit.warmup, crit.window
    chance = _chance_loss(p.approx)
    after = [x for s, x in la.items() if warmup < s <= step]
    worst = None if not after else (math.inf if any(x is None for x in after) else max(after))
    at_b, at_a = lb.get(step), la.get(step)
    ratio = None if at_b is None or at_a is None else at_a / at_b
    win_b = [lb.get(s) for s in range(step - window + 1, step + 1)]
    win_a = [la.get(s) for s in range(step - window + 1, step + 1)]
    mb = statistics.fmean(win_b) if None not in win_b else None
    ma = statistics.fmean(win_a) if None not in win_a else None
    wratio = None if mb is None or ma is None else ma / mb
    vb, va = _last_val(p.base, "val_ppl"), _last_val(p.approx, "val_ppl")
    epoch = _full_epoch(p.base) and _full_epoch(p.approx) and vb is not None and va is not None
    vratio = va / vb if epoch else None
    checks = [worst is not None and chance is not None and worst < chance,
              ratio is not None and ratio <= 1 + LEARNING_LOSS_TOL]
    if epoch:
        checks.append(vratio <= 1 + LEARNING_PPL_TOL)
    short = max(la, default=0) < step
    verdict = f"too short ({max(la, default=0)} steps)" if short else ("✓" if all(checks) else "✗")
    return [c.arch, c.rate_label, v, seed, fmt_num(worst, 2), fmt_num(chance, 2),
            fmt_num(at_b, 3), fmt_num(at_a, 3), fmt_num(ratio, 3),
            fmt_num(mb, 3), fmt_num(ma, 3), fmt_num(wratio, 3),
            fmt_num(vb, 1) if epoch else "—", fmt_num(va, 1) if epoch else "—",
            fmt_num(vratio, 3), verdict]


def learning_table(runs: list[Run], step: int = LEARNING_STEP, warmup: int = LEARNING_WARMUP) -> str | None:
    """Issue 13's LSTM criteria per (approximate, Bernoulli) pair of the same protocol, size, rate and seed."""
    cells = [c for c in build_cells(runs, "lstm", []) if "bernoulli" in c.runs and c.approx_variants()]
    rows, all_runs = [], []
    window = min(LEARNING_WINDOW, step)
    crit = LearningCriteria(step, warmup, window)
    for c in cells:
        for v in c.approx_variants():
            # Every run of a repeated (variant, seed), not only the latest: a spike in one
            # realisation must stay visible beside a rerun that did not spike.
            repeats = defaultdict(list)
            for r in runs:
                if (r.family == "lstm" and r.status in USABLE and r.variant == v
                        and (r.protocol, r.arch, r.rate) == (c.protocol, c.arch, c.rate)):
                    repeats[r.seed].append(r)
            for p in c.pairs(v):
                runs_of_seed = sorted(repeats[p.approx.seed], key=lambda r: str(r.doc.get("started_at")))
                for i, approx in enumerate(runs_of_seed):
                    seed = str(approx.seed)
                    if len(runs_of_seed) > 1:
                        seed += f" (run {i + 1} of {len(runs_of_seed)}, {str(approx.doc.get('started_at'))[:10]})"
                    row = _learning_row(c, v, Pair(p.base, approx), seed, crit)
                    if row is not None:
                        rows.append(row)
                        all_runs += [p.base, approx]
    if not rows:
        return None
    out = ["# Learning check (issue 13): approximate vs Bernoulli dropout, step for step", "",
           "LSTM runs that kept every step's training loss (`experiment=learning_lstm`). Each row is one approximate "
           "run and the Bernoulli run of the same size, rate, seed and protocol; the same seed gives both the same "
           "batches in the same order.", "",
           f"Criteria (✓ when all hold): the approximate run's training loss stays below ln V (a uniform guess) at "
           f"every step after step {warmup} up to step {step}; its loss at step {step} is at most "
           f"{100 * LEARNING_LOSS_TOL:g}% above Bernoulli's at that step; for runs of one full epoch, its validation "
           f"perplexity at the end of the epoch is at most {100 * LEARNING_PPL_TOL:g}% above Bernoulli's. The mean "
           f"of steps {step - window + 1}-{step} is shown beside the single step, which one batch can move. A run "
           "repeated with the same seed and config is listed every time it ran (tiny float differences between "
           "hosts grow over a run), so a spike in one run stays beside a rerun that had none.", "",
           f"Machine: {_machines(all_runs)}.", ""]
    header = ["layers x units", "rate", "kind", "seed", f"max loss, steps {warmup + 1}-{step}", "ln V",
              f"Bernoulli loss @{step}", f"approx loss @{step}", "loss ratio",
              f"Bernoulli mean {step - window + 1}-{step}", "approx mean", "mean ratio",
              "Bernoulli val ppl, 1 epoch", "approx val ppl, 1 epoch", "ppl ratio", "verdict"]
    out += [_md_table(header, rows), ""]
    return "\n".join(out)


def learning_panels(runs: list[Run]) -> dict[tuple, list[tuple[Run, dict]]]:
    """The learning figure's panels: (protocol, arch, rate) -> [(run, its step losses)], Bernoulli and approximate.

    The protocol is part of the key because a 1000-step run and a one-epoch run of the same size
    and rate are different comparisons; each gets its own row of panels.
    """
    panels = defaultdict(list)
    for r in runs:
        losses = step_losses(r) if r.family == "lstm" and r.status in USABLE else None
        if losses:
            panels[(r.protocol, r.arch, r.rate_label)].append((r, losses))
    return {k: rs for k, rs in panels.items() if any(r.kind == "bernoulli" for r, _ in rs) and len(rs) > 1}


def learning_layout(panels: dict) -> dict[tuple, tuple[int, int]]:
    """Each panel's (row, column): a row per (protocol, size), smaller sizes first; a column per rate."""
    keys = sorted(panels, key=lambda k: (_arch_order(k[1]), k[0], k[2]))
    rows = list(dict.fromkeys((k[0], k[1]) for k in keys))
    rates = sorted({k[2] for k in keys})
    return {k: (rows.index((k[0], k[1])), rates.index(k[2])) for k in keys}


def learning_fig(runs: list[Run], path: Path, step: int = LEARNING_STEP, warmup: int = LEARNING_WARMUP) -> str | None:
    """Training loss (running mean of 25 steps) against step: one row of panels per (protocol, size), one column per rate."""
    panels = learning_panels(runs)
    if not panels:
        return ("needs LSTM runs that kept every step's loss (experiment=learning_lstm), Bernoulli and approximate "
                "at the same size and rate")
    where = learning_layout(panels)
    n_rows, n_cols = (1 + max(rc[i] for rc in where.values()) for i in (0, 1))
    plt = _pyplot()
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(max(4.6 * n_cols, 7.0), 3.6 * n_rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for key, (i, j) in where.items():
        ax = axes[i][j]
        ax.set_visible(True)
        chance, last = None, 0
        for r, losses in sorted(panels[key], key=lambda rl: (_variant_order(rl[0].variant), str(rl[0].seed))):
            pts = sorted((s, x) for s, x in losses.items() if x is not None)
            xs, ys = [s for s, _ in pts], [x for _, x in pts]
            k = 25
            smooth = [statistics.fmean(ys[max(0, i - k + 1):i + 1]) for i in range(len(ys))]
            ax.plot(xs, smooth, linewidth=1.0, color=_color(r.variant), label=f"{r.variant}, seed {r.seed}")
            chance = _chance_loss(r) or chance
            last = max(last, xs[-1] if xs else 0)
        if chance:
            ax.axhline(chance, color="grey", linestyle="--", linewidth=0.8, label="ln V")
        ax.axvline(warmup, color="grey", linestyle=":", linewidth=0.8)
        ax.axvline(step, color="black", linestyle=":", linewidth=0.8)
        ax.set(xlabel="step", ylabel="training loss (25-step mean)",
               title=f"LSTM {key[1]}, rate {key[2]} ({last} steps)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Training loss, approximate vs Bernoulli dropout, step for step", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------------------
# Runs list, collection, the whole report
# --------------------------------------------------------------------------------------
RUN_COLUMNS = ["file", "status", "protocol", "experiment", "family", "model", "arch", "variant", "rate", "seed",
               "steps", "train_time_s", "validation_s", "step_median_ms", "test_acc", "test_ppl", "test_loss",
               "best_val", "cpu", "torch_threads", "other_cpu_cores", "git_commit", "error"]


def runs_rows(runs: list[Run]) -> list[dict]:
    rows = []
    for r in runs:
        t = r.doc.get("timing") or {}
        m = r.doc.get("machine") or {}
        best = r.final("best_val") or {}
        rows.append({
            "file": str(r.path), "status": r.status, "protocol": r.protocol, "experiment": r.experiment or "",
            "family": r.family, "model": r.model, "arch": r.arch, "variant": r.variant, "rate": r.rate_label,
            "seed": r.seed, "steps": t.get("steps"), "train_time_s": t.get("train_time_s"),
            "validation_s": t.get("validation_s"),
            "step_median_ms": None if t.get("step_median_s") is None else round(1e3 * t["step_median_s"], 3),
            "test_acc": r.final("test_acc"), "test_ppl": r.final("test_ppl"), "test_loss": r.final("test_loss"),
            "best_val": f"{best.get('metric')}={best.get('value')}" if best else "", "cpu": m.get("cpu"),
            "torch_threads": m.get("torch_threads"), "other_cpu_cores": t.get("other_cpu_cores"),
            "git_commit": (m.get("git_commit") or "")[:10],
            "error": r.doc.get("error") or "",
        })
    return rows


def _slug(s) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", str(s)).strip("-") or "x"


def collect(runs: list[Run], dest: Path, progress: Callable[[str], None] = lambda s: None) -> list[Path]:
    """Copy each summary to ``dest/<experiment>-<model>-<variant>-r<rate>-s<seed>-<run id>.json``.

    The run id in the name keeps names unique and makes a second collect of the same runs
    rewrite the same files instead of adding copies.
    """
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for r in runs:
        name = "-".join(_slug(x) for x in (r.experiment or "run", r.model, r.variant, f"r{r.rate_label}",
                                             f"s{r.seed}", r.run_id[:8])) + ".json"
        target = dest / name
        if target.resolve() != r.path.resolve():
            shutil.copyfile(r.path, target)
        written.append(target)
    progress(f"collected {len(written)} summaries into {dest}")
    return written


def build_report(inputs: list[str | Path], out: str | Path, *, collect_dir: str | Path | None = None,
                 fig5_arch: str = "2048x2048", fig6_rate: float = 0.5, target_acc: float | None = None,
                 target_ppl: float | None = None, learning_step: int = LEARNING_STEP,
                 progress: Callable[[str], None] = lambda s: None) -> dict:
    """Read the summaries under ``inputs`` and write the tables, figures and run list into ``out``.

    Returns ``{"written": [paths], "skipped": {name: reason}, "notes": [...], "runs": n}``.
    """
    runs, notes = find_summaries(inputs, progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if collect_dir is not None:
        collect(runs, Path(collect_dir), progress)
    failed = [r for r in runs if r.status not in USABLE]
    for r in failed:
        notes.append(f"{r.path}: status {r.status} ({r.doc.get('error') or 'no error recorded'}); left out of tables")
    for r in runs:
        cores = (r.doc.get("timing") or {}).get("other_cpu_cores")
        if cores is not None and cores >= BUSY_CORES:
            of = (r.doc.get("machine") or {}).get("affinity")
            notes.append(f"{r.path}: other work kept {cores:.2f} CPU cores busy while it trained"
                         + (f" (of {of})" if of else "") + "; its training time and the speedups it enters are "
                         "not clean speed evidence")
        if r.status == "fit" and (r.doc.get("config") or {}).get("test", True):
            notes.append(f"{r.path}: trained but not tested yet (a run still testing, or one stopped during its "
                         "test); its test columns are empty until the run writes its summary again")
    written, skipped = [], {}

    def put_text(name: str, text: str | None, why: str):
        if text is None:
            skipped[name] = why
            progress(f"skipped {name}: {why}")
        else:
            (out / name).write_text(text, encoding="utf-8")
            written.append(out / name)
            progress(f"wrote {out / name}")

    put_text("table1.md", table1(runs, notes, target_acc),
             "needs MNIST MLP runs with Bernoulli and row/tile dropout at the same size, rate and protocol "
             "(experiment=table1)")
    put_text("table2.md", table2(runs, notes, target_ppl),
             "needs LSTM runs with Bernoulli and row/tile dropout at the same size, rate and protocol "
             "(experiment=table2)")
    put_text("learning.md", learning_table(runs, learning_step),
             "needs LSTM runs that kept every step's loss, Bernoulli and row/tile at the same size, rate and protocol "
             "(experiment=learning_lstm)")
    for name, draw in (("fig5.png", lambda p: fig5(runs, p, fig5_arch, notes)),
                       ("learning.png", lambda p: learning_fig(runs, p, learning_step)),
                       ("fig6.png", lambda p: fig6(runs, p, fig6_rate, notes)),
                       ("patterns.png", lambda p: patterns_fig(runs, p))):
        why = draw(out / name)
        if why is None:
            written.append(out / name)
            progress(f"wrote {out / name}")
        else:
            skipped[name] = why
            progress(f"skipped {name}: {why}")

    rows = runs_rows(runs)
    with open(out / "runs.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=RUN_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    written.append(out / "runs.csv")
    index = ["# Report", "", f"Built by `python -m ardrop.report` from {len(runs)} run summaries "
             f"({len(runs) - len(failed)} usable): {', '.join(f'`{i}`' for i in inputs)}.", "",
             "## Written", ""] + [f"- `{p.name}`" for p in written]
    index += ["", "## Skipped", ""] + ([f"- `{k}`: {v}" for k, v in skipped.items()] or ["- nothing"])
    index += ["", "## Notes", ""] + ([f"- {n}" for n in notes] or ["- none"]) + [""]
    (out / "report.md").write_text("\n".join(index), encoding="utf-8")
    written.append(out / "report.md")
    progress(f"wrote {out / 'runs.csv'} and {out / 'report.md'} ({len(runs)} runs)")
    return {"written": written, "skipped": skipped, "notes": notes, "runs": len(runs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ardrop.report",
        description="Tables 1-2, Figs. 5-6 and the searched pattern distributions from runs' summary.json files.")
    ap.add_argument("inputs", nargs="+", help="run directories, sweep directories (searched recursively) or "
                    "summary files, e.g. outputs/multiruns/table1 docs/results/runs")
    ap.add_argument("--out", default="docs/results", help="output directory (default: docs/results)")
    ap.add_argument("--collect", metavar="DIR", help="also copy every summary found into DIR with a readable unique "
                    "name (to commit them, e.g. docs/results/runs)")
    ap.add_argument("--fig5-model", default="2048x2048", help="MLP hidden sizes drawn in fig5.png (default 2048x2048)")
    ap.add_argument("--fig6-rate", type=float, default=0.5, help="LSTM rate drawn in fig6.png (default 0.5)")
    ap.add_argument("--target-acc", type=float, help="time-to-target accuracy for Table 1, as a fraction (e.g. 0.98); "
                    "default: per pair, the lower of the two best validation accuracies")
    ap.add_argument("--target-ppl", type=float, help="time-to-target validation perplexity for Table 2; default: "
                    "per pair, the higher of the two best validation perplexities")
    ap.add_argument("--learning-step", type=int, default=LEARNING_STEP,
                    help=f"the step at which learning.md compares training losses (default {LEARNING_STEP})")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    args = ap.parse_args(argv)
    if args.target_acc is not None and not 0 < args.target_acc <= 1:
        ap.error(f"--target-acc is a fraction in (0, 1], got {args.target_acc}")
    if args.learning_step <= LEARNING_WARMUP:
        ap.error(f"--learning-step must be above the warm-up of {LEARNING_WARMUP} steps, got {args.learning_step}")
    progress = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    try:
        result = build_report(args.inputs, args.out, collect_dir=args.collect, fig5_arch=args.fig5_model,
                              fig6_rate=args.fig6_rate, target_acc=args.target_acc, target_ppl=args.target_ppl,
                              learning_step=args.learning_step,
                              progress=progress)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{result['runs']} runs -> {len(result['written'])} files in {args.out}"
          + (f"; skipped: {', '.join(result['skipped'])}" if result["skipped"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
