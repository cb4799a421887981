"""The command line of `python -m ardrop.report`: argument checks, progress on stderr, exit codes."""
from __future__ import annotations

import argparse
import sys

from .build import build_report
from .learning import LEARNING_STEP, LEARNING_WARMUP
from .runs import ReportError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ardrop.report",
        description="Tables 1-2, Figs. 5-6 and the searched pattern distributions from runs' summary.json files.")
    ap.add_argument("inputs", nargs="+", help="run directories, sweep directories (searched recursively) or "
                    "summary files, e.g. outputs/multiruns/table1 docs/results/runs")
    ap.add_argument("--out", default="docs/results", help="output directory (default: docs/results)")
    ap.add_argument("--collect", metavar="DIR", help="also copy every finished summary found into DIR with a readable "
                    "unique name (to commit them, e.g. docs/results/runs); runs still testing are named, not copied")
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
