"""`python -m ardrop.report <run dirs, sweep dirs or summary files...> --out docs/results`.

Builds the paper's Table 1 / Table 2 and Figs. 5 / 6 (plus Table 2 per seed and the
searched pattern distributions) from the runs' `summary.json` files alone, which
`callbacks.RunSummary` writes. Why only those: they are a few kB each, so the evidence can
be committed (`--collect docs/results/runs`) and the tables rebuilt from the copies on any
machine, without checkpoints, TensorBoard events or Lightning. This module uses the standard
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

Modules: `runs` (finding summaries, protocols, variants), `compare` (pairs and their
numbers), `markdown`, `tables`, `figures`, `learning` (issue 13's check), `build` (the
output folder), `cli`.

Imports: the standard library, matplotlib (only when drawing) and `ardrop.paper_numbers`;
nothing from the training stack.
"""
from __future__ import annotations

from .build import RUN_COLUMNS, build_report, collect, runs_rows
from .cli import main
from .compare import Cell, Pair, build_cells, mean_std, time_to, value_at
from .figures import fig5, fig6, patterns_fig
from .learning import (LEARNING_STEP, LEARNING_WARMUP, LearningCriteria, learning_fig, learning_layout,
                       learning_panels, learning_table, step_losses)
from .markdown import protocol_line
from .runs import (SUMMARY_FORMAT, SUMMARY_NAME, USABLE, ReportError, Run, find_summaries, label_protocols,
                   label_variants, protocol_fingerprint)
from .tables import table1, table2

__all__ = [
    "RUN_COLUMNS", "build_report", "collect", "runs_rows", "main", "Cell", "Pair", "build_cells", "mean_std",
    "time_to", "value_at", "fig5", "fig6", "patterns_fig", "LEARNING_STEP", "LEARNING_WARMUP", "LearningCriteria",
    "learning_fig", "learning_layout", "learning_panels", "learning_table", "step_losses", "protocol_line",
    "SUMMARY_FORMAT", "SUMMARY_NAME", "USABLE", "ReportError", "Run", "find_summaries", "label_protocols",
    "label_variants", "protocol_fingerprint", "table1", "table2",
]
