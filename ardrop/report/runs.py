"""Finding and reading run summaries, and the labels that decide which runs are compared.

Why a protocol fingerprint and not the experiment name alone: two sweeps of one experiment
with another budget (epochs, step limit, optimiser) must never share a table row, and a
custom sweep must still pair up with itself.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


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
    def awaiting_test(self) -> bool:
        """Written after fit but before the test its config asks for, so its test columns are still empty."""
        return self.status == "fit" and bool((self.doc.get("config") or {}).get("test", True))

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


def _accelerator(doc: dict) -> str:
    """``trainer.accelerator`` where it is not the CPU: a GPU sweep of the same experiment is
    its own protocol (its timings never pair with CPU runs), and its name says so."""
    acc = ((doc.get("config") or {}).get("trainer") or {}).get("accelerator")
    return "" if acc in (None, "cpu") else str(acc)


def label_protocols(runs: list[Run]) -> None:
    """Name each protocol by its experiment(s); add the fingerprint only where names would collide."""
    by_fp: dict[str, set] = defaultdict(set)
    device: dict[str, str] = {}
    for r in runs:
        fp = protocol_fingerprint(r.doc)
        by_fp[fp].add(r.experiment or "custom")
        device[fp] = _accelerator(r.doc)  # part of the fingerprint: one per protocol
    names = {fp: "+".join(sorted(exps)) + (f" ({device[fp]})" if device[fp] else "") for fp, exps in by_fp.items()}
    counts = defaultdict(int)
    for n in names.values():
        counts[n] += 1
    for r in runs:
        fp = protocol_fingerprint(r.doc)
        r.protocol = names[fp] if counts[names[fp]] == 1 else f"{names[fp]}#{fp}"


def label_variants(runs: list[Run]) -> None:
    """`bernoulli`, `row`, `tile`; qualified by groups / search only where runs of one kind differ in them.

    Per model family: the MLP and the LSTM default to different groups, and their runs
    never share a table. Only usable runs count: a failed run of another variant (one that
    diverged, say) is only listed, so it must not rename every row of the tables; it gets
    the qualified name itself, where it differs from the usable runs.
    """
    details = defaultdict(set)
    for r in runs:
        if r.status in USABLE:
            details[r.family, r.kind].add(_detail(r))
    for r in runs:
        if r.kind in ("row", "tile") and len(details[r.family, r.kind] | {_detail(r)}) > 1:
            g, method, n = _detail(r)
            r.variant = f"{r.kind} (groups={g}, {method}, N={n})"
        else:
            r.variant = r.kind


def variant_kind(variant: str) -> str:
    """The dropout kind a `label_variants` label names (`row` for `row (groups=1, ...)`).

    Why: the paper's rows and the figures' colours go by kind, not by variant.
    """
    return variant.split(" ")[0]


def _detail(r: Run) -> tuple:
    search = r.choices.get("search") or {}
    return (r.choices.get("groups"), search.get("method"), search.get("max_dp"))
