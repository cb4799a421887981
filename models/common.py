"""What the LightningModules share: the optimiser and schedule built from hparams, region-aware clipping.

Imports: torch, Lightning, omegaconf, `ardrop` (never `callbacks` or `datamodules`).
"""
from __future__ import annotations

import math
import torch
from pytorch_lightning.callbacks import StochasticWeightAveraging, WeightAveraging
from omegaconf import DictConfig, ListConfig, OmegaConf


SCHEDULES = ("none", "inv", "cosine", "step")


def hparams_of(loc: dict, **overrides) -> dict:
    """A constructor's ``locals()`` as plain hyperparameters (what ``save_hyperparameters`` stores)."""
    out = {k: plain(v) for k, v in loc.items() if k not in ("self", "__class__", "net")}
    out.update(plain(loc.get("net", {})))
    return {**out, **{k: plain(v) for k, v in overrides.items()}}


def plain(value):
    """OmegaConf containers (also inside a dict) -> plain Python, so hparams and layer args are ordinary lists."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


OPTIMIZERS = ("sgd", "lazy_sgd")


def check_optimizer(name: str) -> str:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: set model.optimizer to one of {OPTIMIZERS}")
    return name


def make_sgd(params, lr: float, momentum: float, weight_decay: float, nesterov: bool,
             optimizer: str = "sgd") -> torch.optim.Optimizer:
    """torch's SGD, or `ardrop.optim.LazySGD`: the same updates, writing only the weights a
    pattern kept (much less memory traffic for wide pattern-dropped layers)."""
    if lr <= 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    check_optimizer(optimizer)
    if optimizer == "lazy_sgd":
        from ardrop.optim import LazySGD

        return LazySGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def make_schedule(optimizer, schedule: str, *, gamma: float = 1e-4, power: float = 0.75,
                  total_steps: int | None = None, decay: float = 1.0, decay_start: int = 0):
    """Learning-rate policies as Lightning scheduler configs.

    - inv:    Caffe's `lr * (1 + gamma * iter) ** -power`, per step (the paper used Caffe).
    - cosine: cosine decay to 0 over all training steps, per step.
    - step:   multiply by `decay` every epoch from `decay_start` on (Zaremba et al. 2014).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {SCHEDULES}")
    if schedule == "none":
        return None
    if schedule == "inv":
        fn, interval = (lambda it: (1.0 + gamma * it) ** (-power)), "step"
    elif schedule == "cosine":
        if not total_steps or not math.isfinite(total_steps):
            raise ValueError("the cosine schedule needs a finite number of training steps (trainer.max_epochs/max_steps)")
        fn, interval = (lambda it: 0.5 * (1.0 + math.cos(math.pi * min(it, total_steps) / total_steps))), "step"
    else:
        fn, interval = (lambda ep: decay ** max(0, ep + 1 - decay_start)), "epoch"
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, fn), "interval": interval}


_SCHEDULE_KEYS = ("gamma", "power", "decay", "decay_start")


class SkipsZeroGradientBlocks:
    """LightningModule mixin: the optimiser and clipping of a model with pattern-dropout sites.

    ``configure_optimizers`` builds `make_sgd` and `make_schedule` from the module's
    hparams (``lr, momentum, weight_decay, nesterov, optimizer, schedule`` and whichever
    schedule parameters it has). ``trainer.gradient_clip_val`` (norm) clips through
    `ardrop.optim.clip`: the same result as Lightning's own clipping
    (``torch.nn.utils.clip_grad_norm_``), but the norm and the scale read only the gradient
    blocks the step wrote. Value clipping and anything unknown go to Lightning's ``clip_gradients``.
    """

    def configure_optimizers(self):
        h = self.hparams
        opt = make_sgd(self.parameters(), h.lr, h.momentum, h.weight_decay, h.nesterov, h.optimizer)
        sched = make_schedule(opt, h.schedule, total_steps=self.trainer.estimated_stepping_batches,
                              **{k: h[k] for k in _SCHEDULE_KEYS if k in h})
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}

    def on_fit_start(self):
        # Lightning's weight-averaging callbacks (EMA, SWA) read every parameter straight from the
        # module after optimiser steps, past ardrop's read contract: with a `LazySGD` they would
        # average stale values. Then each step ends with the frames folded (torch SGD's cost).
        super().on_fit_start()
        self._flush_after_step = any(isinstance(cb, (WeightAveraging, StochasticWeightAveraging))
                                     for cb in self.trainer.callbacks)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if getattr(self, "_flush_after_step", False):
            flush = getattr(getattr(optimizer, "optimizer", optimizer), "flush", None)
            if flush is not None:
                flush()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if gradient_clip_val and (gradient_clip_algorithm or "norm") == "norm":
            from ardrop.optim.clip import clip_grad_norm_

            params = [p for group in optimizer.param_groups for p in group["params"]]
            clip_grad_norm_(params, gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)


def _writes_this_step(trainer) -> bool:
    """Lightning's own test of whether it writes step metrics now (``log_every_n_steps``); True if unknown.

    The callbacks ask the same (`callbacks._cadence`); the Lightning parts do not import each other.
    """
    connector = getattr(trainer, "_logger_connector", None)
    decide = getattr(type(connector), "should_update_logs", None)
    return True if connector is None or decide is None else bool(connector.should_update_logs)


class LogsTrainLoss:
    """LightningModule mixin: the training loss at Lightning's log cadence, and its epoch mean.

    Why not ``self.log("train_loss", on_step=True, on_epoch=True)`` every step: each call
    costs a few hundred microseconds in Lightning's result collection (it moves the stored
    value's whole state to the value's device, `_ResultMetric.to`), several percent of a
    10 ms MLP step, and Lightning writes only the value of every ``log_every_n_steps``-th
    step anyway. The epoch mean, weighted by batch size as Lightning weights it, is summed
    here with one add per step, kept in checkpoints (a mid-epoch resume continues it) and
    logged once per epoch. The keys stay Lightning's: ``train_loss_step``, ``train_loss_epoch``.
    """

    _TRAIN_LOSS_KEY = "ardrop_train_loss_sum"

    def log_train_loss(self, loss: torch.Tensor, batch_size: int) -> bool:
        """Add the step's loss to the epoch mean; log it on a writing step. True when it logged."""
        acc = getattr(self, "_train_loss_sum", None)
        step_sum = loss.detach() * batch_size
        self._train_loss_sum = (step_sum, batch_size) if acc is None else (acc[0] + step_sum, acc[1] + batch_size)
        if not _writes_this_step(self.trainer):
            return False
        self.log("train_loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)
        return True

    def on_train_epoch_start(self):
        self._train_loss_sum = None

    def on_train_epoch_end(self):
        acc = getattr(self, "_train_loss_sum", None)
        if acc is not None and acc[1] > 0:
            self.log("train_loss_epoch", acc[0] / acc[1], on_step=False, on_epoch=True, prog_bar=True)
        self._train_loss_sum = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        acc = getattr(self, "_train_loss_sum", None)
        checkpoint[self._TRAIN_LOSS_KEY] = None if acc is None else [float(acc[0]), int(acc[1])]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get(self._TRAIN_LOSS_KEY)
        self._train_loss_sum = None if saved is None else (torch.tensor(saved[0]), saved[1])
