"""Optimizers that know which rows a step's patterns kept."""

from ardrop.optim.lazy_sgd import LazySGD, before_read, flush_params

__all__ = ["LazySGD", "before_read", "flush_params"]
