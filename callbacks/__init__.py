"""Lightning callbacks: the pattern sequence owner, step timing, the divergence guard, per-site diagnostics
and the per-run summary file.

Imports: torch, Lightning, omegaconf, `ardrop` (never `models` or `datamodules`: they meet the
LightningModule through its hooks and duck-typed attributes such as ``chance_loss``).
"""
from callbacks.diagnostics import SiteDiagnostics
from callbacks.divergence import DivergenceGuard, TrainingDiverged
from callbacks.pattern import PatternCallback
from callbacks.run_summary import RunSummary
from callbacks.timing import StepTimer

__all__ = ["DivergenceGuard", "PatternCallback", "RunSummary", "SiteDiagnostics", "StepTimer", "TrainingDiverged"]
