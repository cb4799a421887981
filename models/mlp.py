"""MNIST MLP classifier (paper Table 1): 784 -> h1 -> h2 -> 10, dropout on the hidden layers."""
from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from ardrop.nn import ApproxMLP
from models.common import LogsTrainLoss, SkipsZeroGradientBlocks, check_optimizer, hparams_of, plain


class MLPClassifier(LogsTrainLoss, SkipsZeroGradientBlocks, pl.LightningModule):
    """Defaults follow Caffe's MNIST solver, the paper's set-up: SGD lr 0.01, momentum 0.9,
    weight decay 5e-4, the `inv` policy (gamma 1e-4, power 0.75)."""

    def __init__(
        self,
        hidden: tuple[int, ...] = (1024, 1024),
        in_features: int = 784,
        num_classes: int = 10,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        nesterov: bool = False,
        optimizer: str = "lazy_sgd",
        schedule: str = "inv",
        gamma: float = 1e-4,
        power: float = 0.75,
        **net,
    ):
        """``net``: `ardrop.nn.ApproxMLP`'s dropout arguments (kind, rates, tile, backend, groups), its defaults."""
        super().__init__()
        check_optimizer(optimizer)
        hidden = tuple(plain(hidden))
        self.save_hyperparameters(hparams_of(locals(), hidden=list(hidden)))
        self.net = ApproxMLP(sizes=(in_features, *hidden, num_classes), **plain(net))
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))

    @staticmethod
    def samples_in(batch) -> int:
        return int(batch[0].shape[0])

    @property
    def chance_loss(self) -> float:
        """Cross-entropy of a uniform guess: a training loss above it means no learning."""
        return math.log(self.hparams.num_classes)

    def _step(self, batch, metric, stage: str):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        if stage == "train":  # both accumulated here, logged at the cadence and once per epoch
            self.log_train_loss(loss, len(y))
            metric.update(logits.detach(), y)
        else:
            self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
            metric(logits, y)
            self.log(f"{stage}_acc", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, self.train_acc, "train")

    def on_train_epoch_end(self):
        """The epoch's training accuracy, logged once: what ``self.log(metric, on_epoch=True)`` logs.

        Why not log the metric object every step: Lightning moves a logged Metric's whole
        state to the value's device on every ``self.log`` call (its result collection walks
        it with ``apply_to_collection``), measurable on the MLP's 10-15 ms steps.
        """
        super().on_train_epoch_end()
        self.log("train_acc", self.train_acc.compute(), prog_bar=True)
        self.train_acc.reset()

    def validation_step(self, batch, batch_idx):
        self._step(batch, self.val_acc, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, self.test_acc, "test")
