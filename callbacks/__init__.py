"""Lightning callbacks: the pattern sequence owner, step timing, the divergence guard and per-site diagnostics."""
from callbacks.diagnostics import SiteDiagnostics
from callbacks.divergence import DivergenceGuard, TrainingDiverged
from callbacks.pattern import PatternCallback
from callbacks.timing import StepTimer

__all__ = ["DivergenceGuard", "PatternCallback", "SiteDiagnostics", "StepTimer", "TrainingDiverged"]
