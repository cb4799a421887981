"""Shared pieces: rate validation and SGD with the paper-era learning-rate policies."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from ardrop.patterns import check_rate

SCHEDULES = ("none", "inv", "cosine", "step")


def plain(value):
    """OmegaConf containers -> plain Python (so hparams and layer args are ordinary lists)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def check_rates(rates, num_sites: int | None = None) -> float | tuple[float, ...]:
    """One rate for every site, or exactly one per site; each in [0, 1).

    Checked here, before any layer or data is built, so `rate=1.5` fails with a message
    naming `rate` rather than deep inside a layer constructor.
    """
    rates = plain(rates)
    if isinstance(rates, Sequence) and not isinstance(rates, str):
        if num_sites is not None and len(rates) != num_sites:
            raise ValueError(
                f"rate has {len(rates)} values but this model has {num_sites} dropout sites; "
                f"give one rate for all sites or exactly {num_sites}"
            )
        return tuple(check_rate(r, f"rate[{i}]") for i, r in enumerate(rates))
    return check_rate(rates, "rate")


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


class SkipsZeroGradientBlocks:
    """LightningModule mixin: ``trainer.gradient_clip_val`` (norm) clips through `ardrop.optim.clip`.

    Same result as Lightning's own clipping (``torch.nn.utils.clip_grad_norm_``), but the
    norm and the scale read only the gradient blocks the step wrote. Value clipping and
    anything unknown go to Lightning's ``clip_gradients``.
    """

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if gradient_clip_val and (gradient_clip_algorithm or "norm") == "norm":
            from ardrop.optim.clip import clip_grad_norm_

            params = [p for group in optimizer.param_groups for p in group["params"]]
            clip_grad_norm_(params, gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

