"""What the ops, the layers and the optimiser agree on, below all three.

- `param_reads`: where a step reads each parameter (`before_read`, `Region`, `Current`) and how
  deferred values are made current (`flush_params`, `FlushesLazyParams`, `mark_dense`).
- `grad_buffers`: the recycled full-size gradient buffers and which of their views a step wrote
  (read by region-aware clipping).

Imports: torch only. `ardrop.functional`, `ardrop.nn` and `ardrop.optim` import this package;
it imports none of them.
"""
