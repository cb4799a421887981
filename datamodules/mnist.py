"""MNIST from the four raw IDX files (see `python -m datamodules.fetch mnist`)."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from datamodules.paths import DataError, require_file, resolve_data_dir
from datamodules.sampling import EpochShuffleSampler, ResumesMidEpoch, TensorBatchDataset, collate_batched

MNIST_FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MEAN, STD = 0.1307, 0.3081


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes, checking header against payload size.

    The check catches truncated or foreign files even when checksums are not verified
    (e.g. synthetic test files).
    """
    raw = Path(path).read_bytes()
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is not an IDX file (only {len(raw)} bytes)")
    zero, dtype_code, got_ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or got_ndim != ndim:
        raise DataError(
            f"{path} has a bad IDX header (magic {raw[:4].hex()}, expected 0000080{ndim}: "
            f"unsigned bytes, {ndim} dims)"
        )
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    payload = raw[4 + 4 * ndim :]
    if len(payload) != int(np.prod(shape)):
        raise DataError(
            f"{path} is truncated or corrupt: header says shape {shape} "
            f"({int(np.prod(shape))} bytes) but payload is {len(payload)} bytes"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def load_split(folder: Path, prefix: str, data_dir: Path, verify: bool) -> tuple[torch.Tensor, torch.Tensor]:
    img_name, lbl_name = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    img_path = require_file(folder / img_name, "mnist", data_dir, MNIST_FILES[img_name] if verify else None)
    lbl_path = require_file(folder / lbl_name, "mnist", data_dir, MNIST_FILES[lbl_name] if verify else None)
    images, labels = read_idx(img_path, 3), read_idx(lbl_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{img_path} has {images.shape[0]} images but {lbl_path} has {labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise DataError(f"{lbl_path} has label {int(labels.max())} > 9: corrupt file")
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0).sub_(MEAN).div_(STD)
    return x.reshape(x.shape[0], -1), torch.from_numpy(labels.astype(np.int64))


class MNISTDataModule(ResumesMidEpoch, pl.LightningDataModule):
    """60000 train / 10000 test; `val_size` examples are carved from train with a fixed split.

    `verify=True` checks the published MD5s; tests with small synthetic files turn it off
    (the IDX header/size checks still apply).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        split_seed: int = 0,
        shuffle_seed: int = 0,
        verify: bool = True,
        num_workers: int = 0,
    ):
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1 (got {batch_size}, {eval_batch_size})")
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0 (got {val_size})")
        self.data_dir = resolve_data_dir(data_dir)
        self.folder = self.data_dir / "mnist"
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed, self.shuffle_seed = val_size, split_seed, shuffle_seed
        self.verify, self.num_workers = verify, num_workers
        self.train_set = self.val_set = self.test_set = None

    def model_kwargs(self) -> dict:
        return {"in_features": 784, "num_classes": 10}

    def check_files(self) -> None:
        """Existence and checksums only: cheap, called before any training starts."""
        for name, digest in MNIST_FILES.items():
            require_file(self.folder / name, "mnist", self.data_dir, digest if self.verify else None)

    def prepare_data(self) -> None:
        self.check_files()

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            x, y = load_split(self.folder, "train", self.data_dir, self.verify)
            if self.val_size >= x.shape[0]:
                raise ValueError(f"val_size={self.val_size} leaves no training data ({x.shape[0]} examples)")
            perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(self.split_seed))
            val_idx, train_idx = perm[: self.val_size], perm[self.val_size :]
            self.train_set = TensorBatchDataset(x[train_idx], y[train_idx])
            self.val_set = TensorBatchDataset(x[val_idx], y[val_idx])
        if stage in (None, "test") and self.test_set is None:
            self.test_set = TensorBatchDataset(*load_split(self.folder, "t10k", self.data_dir, self.verify))

    def _loader(self, ds, batch_size, shuffle):
        sampler = EpochShuffleSampler(ds, seed=self.shuffle_seed) if shuffle else None
        if not shuffle:
            return DataLoader(ds, batch_size=batch_size, collate_fn=collate_batched, num_workers=self.num_workers)
        return self.train_loader(ds, batch_size=batch_size, sampler=sampler, collate_fn=collate_batched,
                                 num_workers=self.num_workers)

    def train_dataloader(self):
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)
