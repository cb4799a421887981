"""Lightning callbacks: the pattern sequence owner, step timing and the divergence guard."""
from callbacks.divergence import DivergenceGuard, TrainingDiverged
from callbacks.pattern import PatternCallback
from callbacks.timing import StepTimer

__all__ = ["DivergenceGuard", "PatternCallback", "StepTimer", "TrainingDiverged"]
