"""Table 1 (MNIST MLPs) and Table 2 (PTB LSTMs) in the paper's layout, our runs beside the paper's numbers."""
from __future__ import annotations

import re
from collections import defaultdict

from ardrop import paper_numbers as paper

from .compare import arch_order, comparable_cells, mean_std
from .markdown import fmt_ms, fmt_num, machines_line, md_table, protocol_line
from .runs import Run, variant_kind


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


def _coverage(cells, paper_rows: list[tuple], row_of, metric: str) -> list[str]:
    """Which of the paper's rows we have measured, with how many seeds, and which not at all.

    Why in the table file: the tables list only what ran, so a missing size or rate would
    otherwise go unnoticed by a reader comparing them with the paper.
    ``row_of(cell, kind)`` maps one of our cells to the paper's row key (None: no paper row). A
    pair counts only when both runs were tested (``metric`` in their final numbers), as the
    paper's rows are test numbers.
    """
    seen = defaultdict(list)
    for c in cells:
        for v in c.approx_variants():
            key = row_of(c, variant_kind(v))
            seeds = [str(p.base.seed) for p in c.pairs(v)
                     if p.base.final(metric) is not None and p.approx.final(metric) is not None]
            if key is not None and seeds:
                seen[key].append(f"{v} ({c.protocol}): seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}")
    rows = [[" / ".join(map(str, k)), "; ".join(seen[k]) or "**no tested pair**"] for k in paper_rows]
    missing = [k for k in paper_rows if not seen[k]]
    return ["## Coverage of the paper's rows", "",
            f"{len(paper_rows) - len(missing)} of the paper's {len(paper_rows)} rows have at least one tested pair of "
            "runs (approximate and Bernoulli, same seed) here.", "", md_table(["paper row", "our pairs"], rows), ""]


def _sections(cells, header: list[str], row, experiment: str) -> list[str]:
    """One section per protocol: its protocol and machine lines, then a row per (cell, approximate variant).

    ``row(cell, variant, base_runs, approx_runs)`` gives the table-specific columns. The table's own
    experiment comes first: it is the paper's protocol, and the other sections (a learning check, an older
    variant) qualify it rather than lead.
    """
    out = []
    own = {c.protocol for c in cells for by_seed in c.runs.values() for r in by_seed.values()
           if r.experiment == experiment}
    for protocol in sorted({c.protocol for c in cells}, key=lambda p: (p not in own, p)):
        rows, all_runs = [], []
        for c in (c for c in cells if c.protocol == protocol):
            base = list(c.runs["bernoulli"].values())
            for v in c.approx_variants():
                approx = list(c.runs[v].values())
                all_runs += base + approx
                rows.append(row(c, v, base, approx))
        out += [f"## Protocol `{protocol}`", "", protocol_line(all_runs), "", f"Machine: {machines_line(all_runs)}.", "",
                md_table(header, rows), ""]
    return out


_TESTED_AS = ("as each run tested it: the best-validation checkpoint under the default `test_ckpt=best`, the last "
              "weights under `test_ckpt=last`; each protocol line says which")


def paper_table2_row(arch: str, rate) -> dict | None:
    """The paper's Table 2 row for one of our LSTM sizes (``"<layers>x<units>"``) and rate; None where it has none.

    Why a lookup here: the paper's rows are keyed by layer count at its one width
    (`paper_numbers.TABLE2_HIDDEN`), ours by the size label, and both the table and
    `figures.table2_fig` need the match.
    """
    sizes = re.fullmatch(r"(\d+)x(\d+)", arch)
    if sizes is None or int(sizes[2]) != paper.TABLE2_HIDDEN or not isinstance(rate, float):
        return None
    return paper.TABLE2.get((int(sizes[1]), rate))


def _preamble(title: str, intro: str, metric: str, target: str) -> list[str]:
    return [f"# {title}", "", intro, "", _DEFINITIONS.format(metric=metric, target=target), ""]


def table1(runs: list[Run], notes: list[str], target_acc: float | None = None) -> str | None:
    cells = comparable_cells(runs, "mlp", notes)
    if not cells:
        return None
    target = (f"{100 * target_acc:.2f}% accuracy" if target_acc is not None
              else "the lower of the two runs' best validation accuracies")
    out = _preamble("Table 1: MNIST MLPs, approximate vs Bernoulli dropout",
                    f"Our runs (test accuracy {_TESTED_AS}) next to the paper's Table 1 (Caffe, GPU, 60K iterations; "
                    "each paper row has its own Bernoulli run).", "accuracy (pp)", target)
    header = ["rate", "size", "kind", "Bernoulli acc %", "approx acc %", "Δ pp", "speedup", "step x",
              "Δ pp at equal time", "time-to-target x", "paper Bernoulli %", "paper approx % (Δ)", "paper speedup"]

    def row(c, v, base, approx):
        b_mean, b_std, b_n = mean_std([r.final("test_acc") for r in base])
        a_mean, a_std, a_n = mean_std([r.final("test_acc") for r in approx])
        pp = paper.TABLE1.get((c.arch, c.rate, variant_kind(v))) if isinstance(c.rate, float) else None
        delta = None if a_mean is None or b_mean is None else 100 * (a_mean - b_mean)
        return [
            c.rate_label, c.arch, v, fmt_ms(b_mean, b_std, b_n, 100), fmt_ms(a_mean, a_std, a_n, 100),
            fmt_num(delta, sign=True), *_pair_columns(c.pairs(v), "val_acc", True, target_acc, 100),
            f"{pp[0]:.2f}" if pp else "—", f"{pp[1]:.2f} ({pp[1] - pp[0]:+.2f})" if pp else "—",
            f"x{pp[2]:.2f}" if pp else "—",
        ]

    paper_rows = sorted(paper.TABLE1, key=lambda k: (arch_order(k[0]), k[1], k[2]))
    covered = _coverage(cells, paper_rows, lambda c, kind: (c.arch, c.rate, kind), "test_acc")
    return "\n".join(out + _sections(cells, header, row, "table1") + covered)


def table2(runs: list[Run], notes: list[str], target_ppl: float | None = None) -> str | None:
    cells = comparable_cells(runs, "lstm", notes)
    if not cells:
        return None
    target = (f"perplexity {target_ppl:g}" if target_ppl is not None
              else "the higher of the two runs' best validation perplexities")
    out = _preamble("Table 2: PTB word LSTM language models, approximate vs Bernoulli dropout",
                    f"Our runs (test perplexity and word accuracy {_TESTED_AS}) next to the paper's Table 2 (Caffe, "
                    "GPU, 110K iterations on an 8.8K-word corpus, 1000 units per layer). The paper's LM score is not "
                    "perplexity (its formula was lost; lower is better, an untrained model scores about 105); compare "
                    "it only as approximate vs Bernoulli.", "perplexity", target)
    header = ["layers x units", "rate", "kind", "Bernoulli test ppl", "approx test ppl", "ppl ratio",
              "Bernoulli word acc %", "approx word acc %", "Δ pp", "speedup", "step x", "Δ val ppl at equal time",
              "time-to-target x", "paper score B / approx", "paper acc % B / approx", "paper speedup"]

    def row(c, v, base, approx):
        bp = mean_std([r.final("test_ppl") for r in base])
        ba = mean_std([r.final("test_acc") for r in base])
        ap = mean_std([r.final("test_ppl") for r in approx])
        aa = mean_std([r.final("test_acc") for r in approx])
        ratio = None if ap[0] is None or bp[0] is None else ap[0] / bp[0]
        dacc = None if aa[0] is None or ba[0] is None else 100 * (aa[0] - ba[0])
        pp = paper_table2_row(c.arch, c.rate)
        kind = variant_kind(v)
        return [
            c.arch, c.rate_label, v, fmt_ms(*bp), fmt_ms(*ap), fmt_num(ratio, 3),
            fmt_ms(*ba, scale=100), fmt_ms(*aa, scale=100), fmt_num(dacc, sign=True),
            *_pair_columns(c.pairs(v), "val_ppl", False, target_ppl),
            f"{pp['metric']['bernoulli']} / {pp['metric'][kind]}" if pp and kind in pp["metric"] else "—",
            f"{pp['acc']['bernoulli']} / {pp['acc'][kind]}" if pp and kind in pp["acc"] else "—",
            f"x{pp['speedup'][kind]:.2f}" if pp and kind in pp["speedup"] else "—",
        ]

    def paper_row(c, kind):
        sizes = re.fullmatch(r"(\d+)x(\d+)", c.arch)
        if sizes is None or int(sizes[2]) != paper.TABLE2_HIDDEN:
            return None
        return (f"{sizes[1]}x{sizes[2]}", c.rate, kind)

    paper_rows = [(f"{layers}x{paper.TABLE2_HIDDEN}", rate, kind) for layers, rate in sorted(paper.TABLE2)
                  for kind in ("row", "tile")]
    covered = _coverage(cells, paper_rows, paper_row, "test_ppl")
    return "\n".join(out + _sections(cells, header, row, "table2") + covered)
