"""`trainer=ddp`: two CPU processes (gloo) through Lightning's DDP; every rank must apply the
same pattern at every step (the sequence is a pure function of seed, site and step) and,
with gradients all-reduced, hold identical weights afterwards."""
from __future__ import annotations

import torch

import pytest

from conftest import run_cli, small_overrides


# Each case starts two processes (~30 s on 2 cores): the default run keeps one, `-m slow` the others.
@pytest.mark.parametrize("dropout, optimizer", [pytest.param("tile", "sgd", marks=pytest.mark.slow), ("row", "lazy_sgd"),
                                               pytest.param("tile", "lazy_sgd", marks=pytest.mark.slow)])
def test_ddp_two_cpu_ranks_agree(synth_data, tmp_path, dropout, optimizer):
    probe = tmp_path / "probe"
    args = [
        "trainer=ddp", f"hydra.run.dir={tmp_path / 'run'}",
        *[o for o in small_overrides(synth_data, tmp_path) if not o.startswith("output_dir=")],
        f"dropout={dropout}", f"model.optimizer={optimizer}", "trainer.max_epochs=2", "trainer.limit_train_batches=3", "data.val_size=100",
        "callbacks.pattern.verify_ranks=true", "logger=tensorboard",
        "+callbacks.probe._target_=conftest.PatternProbe", f"+callbacks.probe.path={probe}",
    ]
    res = run_cli(args, cwd=tmp_path, timeout=240)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    r0, r1 = torch.load(probe / "rank0.pt"), torch.load(probe / "rank1.pt")
    assert len(r0["steps"]) == 6
    assert r0["steps"] == r1["steps"]
    assert len({p for _, p in r0["steps"]}) > 1  # patterns did change between steps
    for name, w in r0["weights"].items():
        assert torch.equal(w, r1["weights"][name]), name
    assert "test_acc" in res.stdout
    assert "distributed_backend=gloo" in res.stdout + res.stderr
