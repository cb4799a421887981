"""The whole report: every table and figure, `runs.csv`, `report.md`, and `--collect`'s copies.

Why one function owns the output folder: `report.md` must say what was written and what
was skipped (and why), so every writer reports back here.
"""
from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path
from typing import Callable

from .figures import fig5, fig6, patterns_fig, table2_fig
from .learning import LEARNING_STEP, learning_fig, learning_table
from .runs import BUSY_CORES, USABLE, Run, find_summaries
from .tables import table1, table2


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
    """Copy each finished summary to ``dest/<experiment>-<model>-<variant>-r<rate>-s<seed>-<run id>.json``.

    The run id in the name keeps names unique and makes a second collect of the same runs
    rewrite the same files instead of adding copies. A run still testing is left out and named
    through ``progress``: its copy would keep empty test columns until someone collects again.
    """
    dest.mkdir(parents=True, exist_ok=True)
    written, pending = [], []
    for r in runs:
        if r.awaiting_test:
            pending.append(r)
            continue
        name = "-".join(_slug(x) for x in (r.experiment or "run", r.model, r.variant, f"r{r.rate_label}",
                                             f"s{r.seed}", r.run_id[:8])) + ".json"
        target = dest / name
        if target.resolve() != r.path.resolve():
            shutil.copyfile(r.path, target)
        written.append(target)
    progress(f"collected {len(written)} summaries into {dest}")
    for r in pending:
        progress(f"not collected: {r.path} trained but is not tested yet; collect again once its status is tested")
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
        if r.awaiting_test:
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
                       ("table2.png", lambda p: table2_fig(runs, p, notes)),
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
