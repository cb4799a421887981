"""Word-level LSTM language model (paper Table 2) with dropout on non-recurrent connections.

The recurrent state is carried across consecutive BPTT windows (detached), which is what
the column layout of `datamodules.PTBDataModule` is for; it is reset at every epoch start.
"""
from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_map
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity

from ardrop.nn import ApproxLSTMLM
from models.common import LogsTrainLoss, SkipsZeroGradientBlocks, check_optimizer, hparams_of, plain


def _detach(state):
    return tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, state)


class LSTMLanguageModel(LogsTrainLoss, SkipsZeroGradientBlocks, pl.LightningModule):
    """Defaults follow Zaremba et al. 2014 (medium): plain SGD lr 1.0, no momentum,
    lr / 1.2 per epoch from epoch 6, gradient norm clipped at 5 (`trainer.gradient_clip_val`,
    set by the lstm model configs)."""

    def __init__(
        self,
        vocab_size: int,
        lr: float = 1.0,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        optimizer: str = "lazy_sgd",
        schedule: str = "step",
        decay: float = 1 / 1.2,
        decay_start: int = 6,
        **net,
    ):
        """``net``: `ardrop.nn.ApproxLSTMLM`'s arguments (hidden_size, num_layers, kind, rates,
        tile, tie_weights, backend, groups, init_range), with its defaults."""
        super().__init__()
        check_optimizer(optimizer)
        self.save_hyperparameters(hparams_of(locals()))
        self.net = ApproxLSTMLM(vocab_size, **plain(net))
        self.val_ppl, self.test_ppl = Perplexity(), Perplexity()
        acc = dict(num_classes=vocab_size, average="micro")
        self.val_acc, self.test_acc = MulticlassAccuracy(**acc), MulticlassAccuracy(**acc)
        self._state = {}

    def forward(self, tokens: torch.Tensor, state=None):
        return self.net(tokens, state)

    @staticmethod
    def samples_in(batch) -> int:
        """Throughput is counted in tokens."""
        return int(batch[0].numel())

    @property
    def chance_loss(self) -> float:
        """Cross-entropy of a uniform guess over the vocabulary, ``ln(V)``."""
        return math.log(self.hparams.vocab_size)

    def _run(self, batch, stage: str):
        x, y = batch
        logits, state = self(x, self._state.get(stage))
        self._state[stage] = _detach(state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        return logits, y, loss

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._state.pop("train", None)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The hidden state carried from batch to batch: a mid-epoch resume continues it
        # (Lightning skips on_train_epoch_start then), so the resumed run equals the whole one.
        super().on_save_checkpoint(checkpoint)
        state = self._state.get("train")
        checkpoint["ardrop_lstm_train_state"] = None if state is None else [t.detach().cpu() for t in state]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("ardrop_lstm_train_state")
        if state is None:
            self._state.pop("train", None)
        else:
            self._restored_state = tuple(state)

    def on_train_start(self):
        restored = getattr(self, "_restored_state", None)
        if restored is not None:  # moved to the model's device now that it is placed
            self._state["train"] = tuple(t.to(self.device) for t in restored)
            self._restored_state = None

    def on_validation_epoch_start(self):
        self._state.pop("val", None)

    def on_test_epoch_start(self):
        self._state.pop("test", None)

    def training_step(self, batch, batch_idx):
        _, y, loss = self._run(batch, "train")
        if self.log_train_loss(loss, y.numel()):  # a writing step (the cadence): the perplexity too
            self.log("train_ppl", math.exp(min(loss.item(), 50.0)), on_step=True, on_epoch=False, batch_size=y.numel())
        return loss

    def _eval(self, batch, stage: str, ppl, acc):
        logits, y, loss = self._run(batch, stage)
        # Perplexity wants [batch, seq, vocab]; token order does not matter for the mean NLL.
        ppl(logits.detach().float(), y)
        acc(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        n = y.numel()
        self.log(f"{stage}_loss", loss, on_epoch=True, batch_size=n)
        self.log(f"{stage}_ppl", ppl, on_epoch=True, prog_bar=True, batch_size=n)
        self.log(f"{stage}_acc", acc, on_epoch=True, prog_bar=True, batch_size=n)

    def validation_step(self, batch, batch_idx):
        self._eval(batch, "val", self.val_ppl, self.val_acc)

    def test_step(self, batch, batch_idx):
        self._eval(batch, "test", self.test_ppl, self.test_acc)
