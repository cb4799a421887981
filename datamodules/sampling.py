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
