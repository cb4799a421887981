"""Epoch-seeded shuffling, so that a resumed run sees exactly the same batches.

A plain `shuffle=True` draws each epoch's order from the global RNG, which a checkpoint does
not capture; after a resume the order differs. This sampler's order is a pure function of
(seed, epoch); Lightning calls `set_epoch` at every epoch start (also after a resume).
It subclasses RandomSampler so that under DDP Lightning recognises it as shuffled and
substitutes its own DistributedSampler (which is likewise seeded by epoch).
"""
from __future__ import annotations

import torch
from torch.utils.data import RandomSampler

from ardrop.checks import check_int


class EpochShuffleSampler(RandomSampler):
    def __init__(self, data_source, seed: int = 0):
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=g).tolist()

    def __len__(self) -> int:
        return len(self.data_source)


class TensorBatchDataset(torch.utils.data.Dataset):
    """Tensors indexed a whole batch at a time (`__getitems__`), not sample by sample.

    Per-sample indexing plus default_collate costs about as much as an MLP step on 2 cores.
    """

    def __init__(self, *tensors: torch.Tensor):
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            raise ValueError("all tensors must have the same first dimension")
        self.tensors = tensors

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __getitem__(self, i):
        return tuple(t[i] for t in self.tensors)

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[idx] for t in self.tensors)


def collate_batched(batch):
    """The dataset already returned a stacked batch; pass it through."""
    return batch


class ResumableLoader(torch.utils.data.DataLoader):
    """A training DataLoader that resumes inside an epoch.

    Why: a checkpoint written mid-epoch (a time-based one, a killed job) must resume with
    the next unseen batch, not restart the epoch: the pattern sequence continues by
    ``global_step``, and data seen twice would break both the data order and the exact
    replay. The order is a pure function of (seed, epoch), so skipping the batches the
    interrupted run consumed reproduces the rest of its epoch exactly.

    The count comes from ``position()`` (Lightning's own count of batches run this epoch,
    so a batch the fetcher prefetched but the loop never ran is not skipped). It reaches
    the next epoch's first ``next()`` by two routes, which give the same number: the
    loader's own ``state_dict`` (Lightning's stateful-loader protocol) and the datamodule's
    (``ResumesMidEpoch``), because Lightning sets the loaders up before it restores loop
    state when ``configure_optimizers`` reads ``trainer.estimated_stepping_batches``, and
    then never hands the loader its state.
    """

    def __init__(self, *args, position=None, pending=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.position = position  # () -> batches run this epoch, or None outside a Trainer
        self.pending = pending  # () -> batches to skip at the next start (read once), or 0
        self._skip = 0

    def state_dict(self) -> dict:
        return {"batches_done": self.position() if self.position is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self._skip = check_batches_done(state.get("batches_done"))

    def __iter__(self):
        return self._iterate()

    def _iterate(self):
        # Taken when iteration really starts (the first next()), not at iter(): by then
        # Lightning has restored the checkpoint.
        skip = max(self._skip, self.pending() if self.pending is not None else 0)
        self._skip = 0
        it = super().__iter__()
        for _ in range(skip):
            if next(it, _END) is _END:
                return
        yield from it


_END = object()


def check_batches_done(done) -> int:
    if done is None:
        return 0
    check_int("the checkpoint's data position batches_done", done, 0, hint=" (the checkpoint is corrupt)")
    return done


def batches_done(trainer) -> int | None:
    """Training batches the fit loop has run in the current epoch (0 at an epoch boundary)."""
    if trainer is None:
        return None
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    total = trainer.num_training_batches
    if isinstance(total, int) and total > 0:
        done %= total
    return int(done)


class ResumesMidEpoch:
    """LightningDataModule mixin: the training position goes into checkpoints (``state_dict``).

    Lightning restores a datamodule's state before training starts, whatever order it
    sets up loaders in; the train loader (`train_loader`) reads it at its first batch.
    """

    _resume_skip = 0

    def state_dict(self) -> dict:
        return {"batches_done": batches_done(getattr(self, "trainer", None))}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume_skip = check_batches_done(state_dict.get("batches_done"))

    def _take_resume_skip(self) -> int:
        skip, self._resume_skip = self._resume_skip, 0
        return skip

    def train_loader(self, *args, **kwargs) -> ResumableLoader:
        return ResumableLoader(*args, position=lambda: batches_done(getattr(self, "trainer", None)),
                               pending=self._take_resume_skip, **kwargs)
