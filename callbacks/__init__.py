"""Lightning callbacks: the pattern sequence owner, step timing, the divergence guard, per-site diagnostics
and the per-run summary file."""
from callbacks.diagnostics import SiteDiagnostics
from callbacks.divergence import DivergenceGuard, TrainingDiverged
from callbacks.pattern import PatternCallback
from callbacks.run_summary import RunSummary
from callbacks.timing import StepTimer

__all__ = ["DivergenceGuard", "PatternCallback", "RunSummary", "SiteDiagnostics", "StepTimer", "TrainingDiverged"]
