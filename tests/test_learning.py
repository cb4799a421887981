"""Training *learns* with approximate dropout, not just runs (issue 13).

Short seeded runs on the real data (`data/`, fetched by `scripts/setup.sh`): a small LSTM
LM on the start of Penn Treebank and an MLP on MNIST, through the real Lightning modules
and `PatternCallback`, at the configs' learning rates and clipping, with each family's
default ``groups`` (LSTM ``dp``, MLP 1) and the default search (``max_dp=auto``).
Approximate dropout must end within a stated bound of Bernoulli dropout at the same rate
and step.

LSTM: mean training loss over the last 15 steps, approximate minus Bernoulli (nats).
MLP: loss of the dense (evaluation-mode) model on the 5,000 validation images after 150
steps, approximate minus Bernoulli (nats); the training loss of a one-pattern step carries
that pattern's noise, so it is not compared. Measured on this code (2 CPU cores, seed 0):

| case | groups=1, N=8 | groups=1, N=auto | groups=dp, N=8 | groups=dp, N=auto | bound |
|---|---|---|---|---|---|
| LSTM 2x200, rate 0.7, lr 1, 60 steps, row (train loss) | +1.02 | +0.78 | +0.12 | -0.02 (default) | 0.3 |
| same, tile | (diverges too) | | +0.52 | -0.04 (default) | 0.3 |
| MLP 512x512, rate 0.5, 150 steps, row (validation loss) | +0.114 | +0.058 (default) | +0.013 | | 0.15 |
| same, tile | +0.116 | +0.061 (default) | +0.033 | | 0.15 |

The MLP's one pattern per step lags early and catches up: over the 20 epochs of
``experiment=table1`` (2048x2048, rate 0.7, N=auto) it ends 0.06 pp ahead of Bernoulli in
test accuracy at x4.61 training time (docs/learning.md). The single-pattern LSTM fails
its bound (``test_single_pattern_lstm_lags``), so the tests can fail.
"""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch

from callbacks import PatternCallback
from datamodules.paths import resolve_data_dir

DATA = resolve_data_dir()
needs_data = pytest.mark.skipif(
    not (DATA / "ptb" / "ptb.train.txt").exists() or not (DATA / "mnist").exists(),
    reason="real data missing: run `python -m datamodules.fetch all`",
)

LSTM_STEPS, MLP_STEPS, TAIL = 60, 150, 15
# How far approximate dropout may be above Bernoulli (nats): LSTM, mean training loss of the
# last TAIL steps; MLP, dense validation loss after MLP_STEPS steps.
LSTM_BOUND, MLP_BOUND = 0.3, 0.15


class _Losses(pl.Callback):
    def __init__(self):
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


def _fit(model, datamodule, steps: int, clip: float) -> list[float]:
    torch.manual_seed(0)
    losses = _Losses()
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, gradient_clip_val=clip,
                         callbacks=[PatternCallback({"method": "sgd"}, seed=0), losses])  # max_dp: the default
    trainer.fit(model, datamodule=datamodule)
    assert len(losses.values) == steps and all(math.isfinite(v) for v in losses.values)
    return losses.values


def _lstm_losses(kind: str, groups=None) -> list[float]:
    from datamodules import PTBDataModule
    from models import LSTMLanguageModel

    pl.seed_everything(0)
    dm = PTBDataModule(str(DATA), batch_size=20, seq_len=35)
    dm.setup("fit")
    model = LSTMLanguageModel(vocab_size=dm.vocab_size, hidden_size=200, num_layers=2, kind=kind, rates=0.7,
                              lr=1.0, groups=groups)
    return _fit(model, dm, LSTM_STEPS, clip=5.0)


def _tail(values: list[float]) -> float:
    return sum(values[-TAIL:]) / TAIL


@pytest.fixture(scope="module")
def lstm_bernoulli():
    return _tail(_lstm_losses("bernoulli"))


@needs_data
@pytest.mark.parametrize("kind", ["row", "tile"])
def test_lstm_learns_like_bernoulli(kind, lstm_bernoulli):
    values = _lstm_losses(kind)
    windows = [sum(values[i:i + 10]) / 10 for i in range(20, len(values) - 9)]
    assert max(windows) < math.log(10000), "a 10-step mean loss went above the uniform guess after warm-up"
    assert _tail(values) < lstm_bernoulli + LSTM_BOUND, (kind, _tail(values), lstm_bernoulli)


@needs_data
def test_single_pattern_lstm_lags(lstm_bernoulli):
    """The paper's one-pattern-per-step scheme fails the bound above: the test can fail."""
    assert _tail(_lstm_losses("row", groups=1)) > lstm_bernoulli + LSTM_BOUND


def _mlp_val_loss(kind: str, groups=None) -> float:
    """Dense validation loss after `MLP_STEPS` steps (``groups=None``: the family default)."""
    from datamodules import MNISTDataModule
    from models import MLPClassifier

    pl.seed_everything(0)
    dm = MNISTDataModule(str(DATA), batch_size=128, val_size=5000)
    model = MLPClassifier(hidden=(512, 512), kind=kind, rates=0.5, lr=0.05, momentum=0.9, weight_decay=5e-4,
                          schedule="none", groups=groups)
    _fit(model, dm, MLP_STEPS, clip=1.0)
    dm.setup("validate")
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in dm.val_dataloader():
            total += float(torch.nn.functional.cross_entropy(model(x), y, reduction="sum"))
            count += len(y)
    return total / count


@pytest.fixture(scope="module")
def mlp_bernoulli():
    return _mlp_val_loss("bernoulli")


@needs_data
@pytest.mark.parametrize("kind", ["row", "tile"])
def test_mlp_learns_like_bernoulli(kind, mlp_bernoulli):
    loss = _mlp_val_loss(kind)
    assert loss < mlp_bernoulli + MLP_BOUND, (kind, loss, mlp_bernoulli)
