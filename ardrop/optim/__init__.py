"""Optimizers that know which rows a step's patterns kept."""

from ardrop.optim.lazy_sgd import DENSE, Current, LazySGD, Region, before_read, flush_params, mark_dense, rows_region

__all__ = ["DENSE", "Current", "LazySGD", "Region", "before_read", "flush_params", "mark_dense", "rows_region"]
