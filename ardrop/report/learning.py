"""Issue 13's learning check: approximate against Bernoulli training loss, step for step (learning.md/.png).

Why single steps and not the logged means: the criterion "never above ln V after the
warm-up" is about every step, and a smoothed or thinned curve could hide a spike.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .compare import Pair, arch_order, comparable_cells, variant_order
from .figures import kind_color, pyplot
from .markdown import fmt_num, machines_line, md_table
from .runs import USABLE, Run


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
    cells = comparable_cells(runs, "lstm", [])
    rows, all_runs = [], []
    window = min(LEARNING_WINDOW, step)
    crit = LearningCriteria(step, warmup, window)
    for c in cells:
        for v in c.approx_variants():
            for p in c.pairs(v):
                # Every run of a repeated (variant, seed), not only the latest: a spike in one
                # realisation must stay visible beside a rerun that did not spike.
                runs_of_seed = c.repeats[v][p.approx.seed]
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
           f"Machine: {machines_line(all_runs)}.", ""]
    header = ["layers x units", "rate", "kind", "seed", f"max loss, steps {warmup + 1}-{step}", "ln V",
              f"Bernoulli loss @{step}", f"approx loss @{step}", "loss ratio",
              f"Bernoulli mean {step - window + 1}-{step}", "approx mean", "mean ratio",
              "Bernoulli val ppl, 1 epoch", "approx val ppl, 1 epoch", "ppl ratio", "verdict"]
    out += [md_table(header, rows), ""]
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
    keys = sorted(panels, key=lambda k: (arch_order(k[1]), k[0], k[2]))
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
    plt = pyplot()
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(max(4.6 * n_cols, 7.0), 3.6 * n_rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for key, (i, j) in where.items():
        ax = axes[i][j]
        ax.set_visible(True)
        chance, last = None, 0
        for r, losses in sorted(panels[key], key=lambda rl: (variant_order(rl[0].variant), str(rl[0].seed))):
            pts = sorted((s, x) for s, x in losses.items() if x is not None)
            xs, ys = [s for s, _ in pts], [x for _, x in pts]
            k = 25
            smooth = [statistics.fmean(ys[max(0, i - k + 1):i + 1]) for i in range(len(ys))]
            ax.plot(xs, smooth, linewidth=1.0, color=kind_color(r.variant), label=f"{r.variant}, seed {r.seed}")
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
