"""Optimizers that know which rows a step's patterns kept.

The read contract they rely on lives in `ardrop.contract`; its names are re-exported here
because users reach for them beside the optimiser. Imports: torch, `ardrop.contract`, `ardrop.native`.
"""

from ardrop.contract.param_reads import DENSE, Current, Region, before_read, flush_params, mark_dense, rows_region
from ardrop.optim.lazy_sgd import LazySGD

__all__ = ["DENSE", "Current", "LazySGD", "Region", "before_read", "flush_params", "mark_dense", "rows_region"]
