"""Fig. 5 (speedup and accuracy against rate), Fig. 6 (validation perplexity against wall time), Table 2's
per-seed pairs (speedup against the perplexity difference at equal time), P(dp) bars.

matplotlib is imported only when a figure is drawn, so reading and tabulating runs needs
nothing beyond the standard library.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from ardrop import paper_numbers as paper

from .compare import Cell, Pair, arch_order, comparable_cells, mean_std, variant_order
from .runs import USABLE, Run, variant_kind
from .tables import paper_table2_row


_COLORS = {"bernoulli": "tab:blue", "row": "tab:red", "tile": "tab:green"}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on the machines that build reports
    import matplotlib.pyplot as plt

    return plt


def kind_color(variant: str, i: int = 0) -> str:
    """Bernoulli blue, row red, tile green in every figure; other variants by their index."""
    return _COLORS.get(variant, f"C{3 + i}")


def shared_legend(fig, axes) -> list[str]:
    """One legend under all panels, each label once, in the order of ``axes``; returns the labels.

    Why under the panels: inside a panel the legend covered points.
    """
    handles: dict[str, object] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=3, fontsize=7, frameon=False)
    return list(handles)


_SEED_LINES = ("-", "--", ":", "-.")
_SEED_MARKERS = ("o", "s", "^", "D", "v")


def seed_style(i: int) -> dict:
    """Line style and marker of the i-th seed in a figure where a variant keeps its colour.

    Why two cycles of coprime length (4 and 5): a line style alone repeats at the fifth seed,
    so seeds 0 and 4 looked the same; the pair stays distinct for 20 seeds.
    """
    return {"linestyle": _SEED_LINES[i % len(_SEED_LINES)], "marker": _SEED_MARKERS[i % len(_SEED_MARKERS)]}


def _busiest_protocol(groups: dict[str, list], figure: str, what: str, notes: list[str]) -> str:
    """The protocol with the most entries (ties: the later name); the others are named in ``notes``.

    Why one protocol per figure: runs of different protocols (budgets, defaults) are not comparable.
    """
    protocol = max(groups, key=lambda p: (len(groups[p]), p))
    if len(groups) > 1:
        notes.append(f"{figure}: protocol {protocol} drawn (most {what}); also available: "
                     f"{', '.join(sorted(set(groups) - {protocol}))}")
    return protocol


def fig5(runs: list[Run], path: Path, arch: str, notes: list[str]) -> str | None:
    """Speedup and test accuracy against rate for one MLP size; None (and the reason) when runs are missing."""
    cells = [c for c in comparable_cells(runs, "mlp", []) if c.arch == arch and isinstance(c.rate, float)]
    by_protocol = defaultdict(list)
    for c in cells:
        by_protocol[c.protocol].append(c)
    usable = {p: cs for p, cs in by_protocol.items() if len(cs) >= 2}
    if not usable:
        have = sorted({r.rate_label for r in runs if r.family == "mlp" and r.arch == arch})
        return (f"needs Bernoulli and approximate runs of the {arch} MLP at two or more rates under one "
                f"protocol; found rates {have or 'none'} for {arch}")
    protocol = _busiest_protocol(usable, "fig5.png", "rates", notes)
    cs = sorted(usable[protocol], key=lambda c: c.rate)
    variants = _fig5_variants(cs, notes)
    plt = pyplot()
    fig, (ax_s, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
    for v in variants:
        kind = variant_kind(v)
        xs, ms, ss = [], [], []
        for c in cs:
            m, s, _ = mean_std([p.speedup() for p in c.pairs(v)])
            if m is not None:
                xs.append(c.rate), ms.append(m), ss.append(s or 0.0)
        ax_s.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, color=kind_color(kind), label=f"{v} (ours)")
        pp = sorted((r, val[2]) for (a, r, k), val in paper.TABLE1.items() if a == arch and k == kind)
        if pp:
            ax_s.plot(*zip(*pp), linestyle="none", marker="s", mfc="none", color=kind_color(kind), label=f"{kind} (paper)")
    if arch == "2048x2048":  # the paper's text gives its Fig. 5's speedup range, without saying which kind
        (r0, s0), (r1, s1) = sorted(paper.FIG5_SPEEDUP_RANGE.items())
        ax_s.plot([r0, r1], [s0, s1], linestyle="--", color="grey", marker="s", mfc="none",
                  label="paper's text: range at 0.3 and 0.7")
    ax_s.axhline(1.0, color="grey", linewidth=0.8)
    ax_s.set(xlabel="drop rate", ylabel="training-time speedup vs Bernoulli", title=f"{arch}: speedup")
    for v in ["bernoulli", *variants]:
        kind = variant_kind(v)
        xs, ms, ss = [], [], []
        for c in cs:
            m, s, _ = mean_std([r.final("test_acc") for r in c.runs.get(v, {}).values()])
            if m is not None:
                xs.append(c.rate), ms.append(100 * m), ss.append(100 * (s or 0.0))
        ax_a.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, color=kind_color(kind), label=f"{v} (ours)")
        # the paper's Bernoulli accuracy differs per row of its table; its approximate rows are drawn once per kind
        pp = sorted((r, val[1]) for (a, r, k), val in paper.TABLE1.items() if a == arch and k == kind)
        if pp:
            ax_a.plot(*zip(*pp), linestyle="none", marker="s", mfc="none", color=kind_color(kind), label=f"{kind} (paper)")
    ax_a.set(xlabel="drop rate", ylabel="test accuracy %", title=f"{arch}: accuracy")
    for ax in (ax_s, ax_a):
        ax.grid(alpha=0.3)
    # one legend under both panels (the accuracy panel has every entry but the speedup panel's paper range):
    # inside, it covered points
    labels = shared_legend(fig, [ax_a, ax_s])
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
        by_kind[variant_kind(v)].append(v)
    chosen = []
    for kind in sorted(by_kind, key=variant_order):
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
    # The paper's Fig. 6 is the 3-layer LSTM: prefer it, then the runs made for this figure (experiment=fig6,
    # validated 10 times over a whole epoch), which more seeds of a half-epoch Table 2 sweep must not displace;
    # then the group with most runs, then the most validations.
    key = max(usable, key=lambda k: (k[1].startswith("3x"), any(r.experiment == "fig6" for r in usable[k]), len(usable[k]),
                                     min(len(r.curve("val_ppl")) for r in usable[k]), k))
    if len(usable) > 1:
        notes.append(f"fig6.png: {key[1]} ({key[0]}) drawn; also available: "
                     f"{', '.join(f'{a} ({p})' for p, a in sorted(set(usable) - {key}))}")
    rs = sorted(usable[key], key=lambda r: (variant_order(r.variant), str(r.seed)))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    variants = list(dict.fromkeys(r.variant for r in rs))
    seeds = list(dict.fromkeys(str(r.seed) for r in rs))
    for r in rs:
        t, v = zip(*r.curve("val_ppl"))
        ax.plot(t, v, markersize=3, color=kind_color(r.variant, variants.index(r.variant)),
                **seed_style(seeds.index(str(r.seed))), label=f"{r.variant}, seed {r.seed}")
    ax.set(xlabel="training wall time (s, validation excluded)", ylabel="validation perplexity",
           title=f"Fig. 6 — LSTM {key[1]}, rate {rate:g}, protocol {key[0]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ours = "; ".join(f"{v} x{s:.2f}" if s is not None else f"{v} —" for v, s in fig6_speedups(rs).items())
    theirs = ", ".join(f"{k} x{s:.2f}" for k, s in paper.FIG6_SPEEDUP.items())
    fig.text(0.01, 0.01, f"Time to the worse of the two best validation perplexities, Bernoulli / approximate: "
             f"{ours or '—'}.\nThe paper's Fig. 6 (its convergence speedup, GPU): {theirs}.", fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def fig6_speedups(rs: list[Run]) -> dict[str, float | None]:
    """Per approximate variant of Fig. 6's runs: Bernoulli time / approximate time to the pair's target, mean over seeds.

    The target is the worse of the two runs' best validation perplexities (both reach it), the
    same as Table 2's time-to-target column; it is the nearest we have to the paper's
    "convergence speedup" of its Fig. 6.
    """
    base = {r.seed: r for r in rs if r.kind == "bernoulli"}
    out = {}
    for v in dict.fromkeys(r.variant for r in rs if r.kind in ("row", "tile")):
        pairs = [Pair(base[r.seed], r) for r in rs if r.variant == v and r.seed in base]
        out[v] = mean_std([p.time_to_target_ratio("val_ppl", False, None) for p in pairs])[0]
    return out


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
    plt = pyplot()
    kinds = sorted(dists, key=variant_order)
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


_RATE_MARKERS = ("o", "s", "^", "D", "v", "P")


def table2_points(runs: list[Run], notes: list[str]) -> tuple[str | None, list[dict]]:
    """Table 2's per-seed pairs: ``(protocol, [{arch, rate, variant, seed, speedup, eq_val_ppl}, ...])``.

    Why per seed: a Table 2 cell is a mean over seeds, and the seeds of one cell spread
    widely (a single half-epoch LSTM speedup moves by about ±0.15 between seeds), so the
    figure shows each pair beside the means. The protocol with the most pairs is drawn;
    the others are named in ``notes``.
    """
    cells = [c for c in comparable_cells(runs, "lstm", []) if isinstance(c.rate, float)]
    by_protocol = defaultdict(list)
    for c in cells:
        for v in c.approx_variants():
            for p in c.pairs(v):
                by_protocol[c.protocol].append({
                    "arch": c.arch, "rate": c.rate, "variant": v, "seed": p.approx.seed,
                    "speedup": p.speedup(), "eq_val_ppl": p.at_equal_time("val_ppl")})
    if not by_protocol:
        return None, []
    protocol = _busiest_protocol(by_protocol, "table2.png", "pairs", notes)
    return protocol, by_protocol[protocol]


def table2_fig(runs: list[Run], path: Path, notes: list[str]) -> str | None:
    """Per seed, speedup against the validation-perplexity difference at equal time, one panel per LSTM size."""
    protocol, points = table2_points(runs, notes)
    points = [p for p in points if p["speedup"] is not None and p["eq_val_ppl"] is not None]
    if not points:
        return ("needs LSTM runs with Bernoulli and row/tile dropout at the same size, rate, seed and protocol, "
                "timed on one machine and validated during training (experiment=table2)")
    archs = sorted({p["arch"] for p in points}, key=arch_order)
    rates = sorted({p["rate"] for p in points})
    variants = sorted({p["variant"] for p in points}, key=variant_order)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(archs), figsize=(6 * len(archs), 4.6), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for i, v in enumerate(variants):
            kind = variant_kind(v)
            for j, rate in enumerate(rates):
                pts = [p for p in points if p["arch"] == arch and p["variant"] == v and p["rate"] == rate]
                if not pts:
                    continue
                style = {"color": kind_color(kind, i), "marker": _RATE_MARKERS[j % len(_RATE_MARKERS)]}
                ax.scatter([p["speedup"] for p in pts], [p["eq_val_ppl"] for p in pts], s=18, alpha=0.55,
                           **style)
                mx, my = (mean_std([p[k] for p in pts])[0] for k in ("speedup", "eq_val_ppl"))
                ax.scatter([mx], [my], s=110, edgecolors="black", linewidths=1.2,
                           label=f"{v}, rate {rate:g}: mean of {len(pts)}", **style)
                pp = paper_table2_row(arch, rate)
                if pp and kind in pp["speedup"]:
                    ax.axvline(pp["speedup"][kind], ymax=0.06, color=style["color"], linewidth=2)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.axvline(1.0, color="grey", linewidth=0.8)
        ax.set(xlabel="training-time speedup vs Bernoulli (same seed)",
               ylabel="Δ validation perplexity at equal time", title=f"LSTM {arch}")
        ax.grid(alpha=0.3)
    labels = shared_legend(fig, axes[0])  # inside, it covered the seeds with the worst perplexity differences
    fig.suptitle(f"Table 2 per seed (protocol {protocol}). Below 0: the approximate run has the lower validation "
                 "perplexity at equal training time.\nSmall markers are seeds, large ones their means; the ticks on "
                 "the x axis are the paper's speedups (GPU).", fontsize=9)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * math.ceil(len(labels) / 3), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
