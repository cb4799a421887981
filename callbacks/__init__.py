"""Lightning callbacks: the pattern sequence owner and step timing."""
from callbacks.pattern import PatternCallback
from callbacks.timing import StepTimer

__all__ = ["PatternCallback", "StepTimer"]
