"""Markdown pieces the report's tables share: numbers with their spread, tables, machine and protocol lines.

Why a protocol line under every table: a reader must see the budget a row was measured
under (epochs, steps, optimiser, tested checkpoint) without opening the configs.
"""
from __future__ import annotations

from .runs import Run


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


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machines_line(runs: list[Run]) -> str:
    seen = sorted({(m.get("cpu"), m.get("torch_threads"), m.get("cuda_device"), m.get("torch"))
                   for m in (r.doc.get("machine") or {} for r in runs)}, key=str)
    parts = []
    for cpu, threads, cuda, torch_v in seen:
        s = f"{cpu or 'unknown CPU'}, {threads} torch threads, torch {torch_v}"
        parts.append(s + (f", {cuda}" if cuda else ""))
    return "; ".join(parts) or "unknown"


def protocol_line(cell_runs: list[Run]) -> str:
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
