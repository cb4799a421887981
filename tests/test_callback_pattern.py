"""PatternCallback: plans one sequence per structured site over the trainer's steps and
injects `seq[global_step]` before every training batch; StepTimer logs throughput."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ardrop.nn import ApproxMLP, PatternSite
from ardrop.search import search
from ardrop.sequence import PatternSequence
from callbacks import PatternCallback, StepTimer


class Tiny(pl.LightningModule):
    def __init__(self, kind="row", rates=0.5):
        super().__init__()
        self.net = ApproxMLP(sizes=(8, 64, 48, 3), kind=kind, rates=rates, tile=8)
        self.seen = []

    def training_step(self, batch, batch_idx):
        pats = {n: (m.pattern.dp, m.pattern.offset) for n, m in self.named_modules()
                if isinstance(m, PatternSite) and m.structured and m.pattern is not None}
        self.seen.append((self.trainer.global_step, pats))
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        # eval mode: sites are dense whatever pattern they hold
        assert not any(m.training for m in self.modules() if isinstance(m, PatternSite))
        x, _ = batch
        self.net(x)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(n=40, bs=4):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)),
                      batch_size=bs)


def _fit(model, cb, epochs=2, **kw):
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[cb, StepTimer()], **kw)
    trainer.fit(model, _loader(), _loader(8))
    return trainer


@pytest.mark.parametrize("kind", ["row", "tile"])
def test_injects_the_sequence_element_of_each_step(kind):
    model = Tiny(kind=kind, rates=(0.5, 0.3))
    cb = PatternCallback(search={"method": "maxent", "max_dp": 6}, seed=7)
    _fit(model, cb)
    T = 20  # 40 examples / 4 per batch x 2 epochs
    sites = {n: m for n, m in model.named_modules() if isinstance(m, PatternSite)}
    assert len(model.seen) == T and set(cb.sequences) == set(sites)
    for name, site in sites.items():
        res = search(site.rate, min(6, site.max_dp), method="maxent")
        seq = PatternSequence(res.probs, T, seed=7, site=name, kind=kind, tile=8)  # rebuilt independently
        assert cb.sequences[name].total_steps == T
        for step, pats in model.seen:
            expect = seq[step]
            assert pats[name] == (expect.dp, expect.offset)
        used = [pats[name][0] for _, pats in model.seen]
        assert [used.count(k) for k in range(1, len(seq.counts) + 1)] == seq.counts  # exact counts over T
        assert abs(cb.realized[name][0] / T - sum(c * (k - 1) / k for k, c in enumerate(seq.counts, 1)) / T) < 1e-12


def test_sequence_is_planned_over_estimated_stepping_batches_with_accumulation():
    model = Tiny()
    cb = PatternCallback(search={"method": "maxent"}, seed=0)
    trainer = _fit(model, cb, epochs=1, accumulate_grad_batches=2)
    assert all(s.total_steps == trainer.estimated_stepping_batches == 5 for s in cb.sequences.values())


def test_different_seeds_give_different_sequences():
    a, b = Tiny(), Tiny()
    _fit(a, PatternCallback(search={"method": "maxent"}, seed=0), epochs=1)
    _fit(b, PatternCallback(search={"method": "maxent"}, seed=1), epochs=1)
    assert [p for _, p in a.seen] != [p for _, p in b.seen]


def test_non_structured_kinds_get_no_sequence():
    for kind in ("bernoulli", "none"):
        model = Tiny(kind=kind)
        cb = PatternCallback(search={"method": "sgd"})
        _fit(model, cb, epochs=1)
        assert cb.sequences == {} and all(p == {} for _, p in model.seen)


def test_without_the_callback_training_fails_clearly():
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(RuntimeError, match="no pattern"):
        trainer.fit(Tiny(), _loader())


def test_bad_search_settings_fail_at_construction():
    with pytest.raises(ValueError, match="unknown search.method"):
        PatternCallback(search={"method": "nope"})
    with pytest.raises(ValueError, match="max_dp must be an integer >= 1 or .auto."):
        PatternCallback(search={"method": "sgd", "max_dp": 0})
    with pytest.raises(ValueError, match="search config for method 'maxent'"):
        PatternCallback(search={"method": "maxent", "lam": 0.1})


def test_infinite_training_cannot_be_planned():
    trainer = pl.Trainer(max_epochs=-1, max_steps=-1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[PatternCallback(search={"method": "maxent"})])
    with pytest.raises(ValueError, match="set trainer.max_epochs or trainer.max_steps"):
        trainer.fit(Tiny(), _loader())
