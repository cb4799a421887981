"""MNIST datamodule: IDX parsing, checksums, split sizes, deterministic epoch shuffling."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_mnist, write_idx
from datamodules import DataError, MNISTDataModule, resolve_data_dir
from datamodules.mnist import MNIST_FILES, read_idx
from datamodules.sampling import EpochShuffleSampler

REAL = resolve_data_dir(None) / "mnist"
have_real = all((REAL / n).is_file() for n in MNIST_FILES)


def test_idx_roundtrip_and_header_checks(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x", a)
    assert np.array_equal(read_idx(tmp_path / "x", 3), a)
    with pytest.raises(DataError, match="bad IDX header"):
        read_idx(tmp_path / "x", 1)
    (tmp_path / "y").write_bytes((tmp_path / "x").read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(tmp_path / "y", 3)


def test_split_sizes_and_normalisation(tmp_path):
    make_mnist(tmp_path, n_train=300, n_test=50)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=60, batch_size=32, verify=False)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (240, 60, 50)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 784) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(dm.train_set.tensors[0].mean())) < 3  # normalised, not raw bytes


def test_checksum_mismatch_names_file_and_fix(tmp_path):
    make_mnist(tmp_path, n_train=20, n_test=10)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=5, verify=True)
    with pytest.raises(DataError) as err:
        dm.check_files()
    msg = str(err.value)
    assert "corrupt" in msg and "idx" in msg and "python -m datamodules.fetch mnist" in msg


def test_missing_file_and_missing_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist.*datamodules.fetch mnist"):
        MNISTDataModule(data_dir=str(tmp_path / "nope")).check_files()
    make_mnist(tmp_path, n_train=20, n_test=10)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is missing.*datamodules.fetch mnist"):
        MNISTDataModule(data_dir=str(tmp_path), verify=False).check_files()


def test_label_image_count_mismatch(tmp_path):
    make_mnist(tmp_path, n_train=20, n_test=10)
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte", np.zeros(19, np.uint8))
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=5, verify=False)
    with pytest.raises(DataError, match="20 images but .* 19 labels"):
        dm.setup("fit")


def test_env_var_sets_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ARDROP_DATA_DIR", str(tmp_path))
    assert MNISTDataModule().data_dir == tmp_path.resolve()


def test_epoch_sampler_is_pure_in_seed_and_epoch():
    data = list(range(50))
    a, b = EpochShuffleSampler(data, seed=3), EpochShuffleSampler(data, seed=3)
    first = list(a)
    assert sorted(first) == data
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)  # a fresh sampler (a resumed run) gives the same order


@pytest.mark.skipif(not have_real, reason="real MNIST not fetched (python -m datamodules.fetch mnist)")
def test_real_mnist_files():
    dm = MNISTDataModule(val_size=5000)
    dm.check_files()  # MD5s
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    labels = dm.test_set.tensors[1]
    assert set(labels.tolist()) == set(range(10))
