"""Step time and throughput, measured around each training batch (forward+backward+step)."""
from __future__ import annotations

import time

import pytorch_lightning as pl


class StepTimer(pl.Callback):
    """Logs `time/step_ms` and `time/samples_per_s` per step, `time/epoch_s` per epoch.

    A "sample" is whatever `pl_module.samples_in(batch)` counts (examples for the MLP,
    tokens for the language model); without that method, the batch's first dimension.
    """

    def __init__(self, skip_first: int = 1):
        self.skip_first = skip_first  # the first steps pay one-off allocation costs
        self._t0 = self._epoch_t0 = None

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch_t0 = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        dt = time.perf_counter() - self._t0
        if trainer.global_step <= self.skip_first:
            return
        counter = getattr(pl_module, "samples_in", None)
        n = counter(batch) if counter else len(batch[0])
        pl_module.log("time/step_ms", dt * 1e3, on_step=True, on_epoch=False, batch_size=1)
        pl_module.log("time/samples_per_s", n / dt, on_step=True, on_epoch=False, batch_size=1)

    def on_train_epoch_end(self, trainer, pl_module):
        if self._epoch_t0 is not None:
            pl_module.log("time/epoch_s", time.perf_counter() - self._epoch_t0, on_step=False, on_epoch=True)
