"""`DivergenceGuard`: stop a run that is training garbage, with a message that says why.

Why: a diverged language model keeps stepping for hours at the cost of a healthy one
(issue 13: the single-pattern LSTM swung between 8 and 15 nats for a whole epoch). The
guard stops at the first non-finite loss, or once the mean loss of the last ``window``
steps after ``warmup_steps`` is above the loss of a uniform guess (``pl_module.chance_loss``,
``ln(classes)``), which no learning model stays above.
"""
from __future__ import annotations

import math
from collections import deque

import pytorch_lightning as pl
import torch

from ardrop.checks import check_int


class TrainingDiverged(RuntimeError):
    """Raised by `DivergenceGuard`; the message names the step, the loss and what to change."""


_ADVICE = ("lower model.lr, keep trainer.gradient_clip_val set, use dropout.groups=dp (several patterns per "
           "step) or a smaller search.max_dp; checkpoints written so far are kept")


class DivergenceGuard(pl.Callback):
    def __init__(self, warmup_steps: int = 100, window: int = 20):
        check_int("DivergenceGuard warmup_steps", warmup_steps, 0)
        check_int("DivergenceGuard window", window)
        self.warmup_steps, self.window = warmup_steps, window
        self._losses: deque[float] = deque(maxlen=window)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        value = float(loss.detach())
        step = trainer.global_step
        if not math.isfinite(value):
            raise TrainingDiverged(f"training loss is {value} at step {step}: the run diverged; {_ADVICE}")
        self._losses.append(value)
        chance = getattr(pl_module, "chance_loss", None)
        if chance is None or step <= self.warmup_steps or len(self._losses) < self.window:
            return
        mean = sum(self._losses) / len(self._losses)
        if mean > chance:
            raise TrainingDiverged(
                f"training diverged at step {step}: the mean loss of the last {self.window} steps is {mean:.3f}, "
                f"above {chance:.3f}, the loss of a uniform guess; {_ADVICE}"
            )
