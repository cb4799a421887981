"""Step time and throughput, measured around each training batch (forward+backward+step)."""
from __future__ import annotations

import time

import pytorch_lightning as pl

from callbacks._cadence import logs_this_step


class StepTimer(pl.Callback):
    """Logs `time/step_ms` and `time/samples_per_s`, means over the steps since the last log, and `time/epoch_s`.

    A "sample" is whatever `pl_module.samples_in(batch)` counts (examples for the MLP,
    tokens for the language model); without that method, the batch's first dimension.
    It logs at Lightning's own cadence (`trainer.log_every_n_steps`): a `log` call costs
    about as much per step as a small layer, so logging every step would slow what it measures.
    """

    def __init__(self, skip_first: int = 1):
        self.skip_first = skip_first  # the first steps pay one-off allocation costs
        self._t0 = self._epoch_t0 = None
        self._sum_s, self._sum_n, self._count = 0.0, 0, 0

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch_t0 = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        dt = time.perf_counter() - self._t0
        if trainer.global_step <= self.skip_first:
            return
        counter = getattr(pl_module, "samples_in", None)
        self._sum_s += dt
        self._sum_n += counter(batch) if counter else len(batch[0])
        self._count += 1
        if logs_this_step(trainer):  # the step Lightning writes
            pl_module.log("time/step_ms", 1e3 * self._sum_s / self._count, on_step=True, on_epoch=False, batch_size=1)
            pl_module.log("time/samples_per_s", self._sum_n / self._sum_s, on_step=True, on_epoch=False, batch_size=1)
            self._sum_s, self._sum_n, self._count = 0.0, 0, 0

    def on_train_epoch_end(self, trainer, pl_module):
        if self._epoch_t0 is not None:
            pl_module.log("time/epoch_s", time.perf_counter() - self._epoch_t0, on_step=False, on_epoch=True)
