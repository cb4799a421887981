"""An interrupted-and-resumed run replays exactly the uninterrupted run (patterns and weights)."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from ardrop.train import run
from conftest import compose_cfg, small_overrides

EPOCHS = 3


class StopAfterEpoch(pl.Callback):
    """Simulates an interruption: stop once the checkpoint of `epoch` has been written."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def _cfg(synth_data, out, probe, extra=(), dropout="tile"):
    return compose_cfg(small_overrides(synth_data, out) + [
        f"trainer.max_epochs={EPOCHS}", "logger=none", f"dropout={dropout}", "test=false",
        "trainer.limit_train_batches=4", "data.val_size=100",
        "+callbacks.probe._target_=conftest.PatternProbe", f"+callbacks.probe.path={probe}", *extra,
    ])


@pytest.mark.parametrize("dropout, optimizer", [pytest.param("tile", "sgd", marks=pytest.mark.slow), ("row", "lazy_sgd"),
                                               ("tile", "lazy_sgd"), ("bernoulli", "sgd")])
def test_resume_replays_patterns_and_weights(synth_data, tmp_path, dropout, optimizer):
    """With LazySGD too: saving a checkpoint folds its pending update into the weights in
    the uninterrupted run at the same step, so the resumed run starts from the same values."""
    opt = [f"model.optimizer={optimizer}"]
    run(_cfg(synth_data, tmp_path / "full", tmp_path / "p_full", opt, dropout))

    cfg = _cfg(synth_data, tmp_path / "cut", tmp_path / "p_cut",
               ["+callbacks.stop._target_=test_resume.StopAfterEpoch", "+callbacks.stop.epoch=0", *opt], dropout)
    run(cfg)
    ckpt = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 4  # where the cut run stopped (end of epoch 0)
    run(_cfg(synth_data, tmp_path / "resumed", tmp_path / "p_resumed", [f"ckpt_path={ckpt}", *opt], dropout))

    full = torch.load(tmp_path / "p_full" / "rank0.pt")
    cut = torch.load(tmp_path / "p_cut" / "rank0.pt")
    resumed = torch.load(tmp_path / "p_resumed" / "rank0.pt")
    assert len(full["steps"]) == 4 * EPOCHS
    assert len(cut["steps"]) == 4
    assert cut["steps"] + resumed["steps"] == full["steps"]
    if dropout != "bernoulli":  # the sequence really varies, so equality above is not vacuous
        assert len({p for _, p in full["steps"]}) > 3
    for name, w in full["weights"].items():
        assert torch.equal(w, resumed["weights"][name]), name
    # ... and the resumed part did train: the cut run's weights are not the final ones
    assert any(not torch.equal(w, cut["weights"][n]) for n, w in full["weights"].items())


def test_resume_rejects_a_different_model(synth_data, tmp_path):
    run(_cfg(synth_data, tmp_path / "a", tmp_path / "pa", ["trainer.max_epochs=1"]))
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    cfg = _cfg(synth_data, tmp_path / "b", tmp_path / "pb", [f"ckpt_path={ckpt}", "dropout=row"])
    with pytest.raises(ValueError, match="used tile patterns, the model now uses row"):
        run(cfg)


@pytest.mark.parametrize("change, match", [("rate=0.3", "rate was 0.5, now 0.3"),
                                           ("search.max_dp=4", r"search.max_dp \(largest dp\) was 3, now 4"),  # auto: 3 at rate 0.5
                                           ("seed=5", "seed was 0, now 5")])
def test_resume_rejects_a_changed_plan(synth_data, tmp_path, change, match):
    """A resume continues the checkpoint's sequence: a changed rate, max_dp or seed is an error, not ignored."""
    run(_cfg(synth_data, tmp_path / "a", tmp_path / "pa", ["trainer.max_epochs=1", "rate=0.5"]))
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    cfg = _cfg(synth_data, tmp_path / "b", tmp_path / "pb", [f"ckpt_path={ckpt}", "rate=0.5", change])
    with pytest.raises(ValueError, match=match):
        run(cfg)


def test_callback_state_roundtrip(synth_data, tmp_path):
    """PatternCallback.state_dict -> load_state_dict restores the same sequences."""
    cfg = _cfg(synth_data, tmp_path / "s", tmp_path / "ps", ["trainer.max_epochs=1"])
    run(cfg)
    state = torch.load(tmp_path / "s" / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    pstate = next(v for k, v in state.items() if k.startswith("PatternCallback"))
    cb = instantiate(cfg.callbacks.pattern)
    cb.load_state_dict(pstate)
    assert cb._restored["sequences"].keys() == pstate["sequences"].keys()
    for name, seq in pstate["sequences"].items():
        assert seq["total_steps"] == 4 and seq["position"] == 4


class KillAtStep(pl.Callback):
    """A job killed hard (SIGKILL: no clean shutdown, no final checkpoint) at a training step."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("model, dropout, limit, kill_at", [("mlp_1024x64", "row", 8, 13), ("lstm2", "tile", 6, 10)])
def test_a_killed_run_resumes_mid_epoch_bit_exact(synth_data, tmp_path, model, dropout, limit, kill_at):
    """Step-interval checkpoints inside the epoch; the process is killed after one; the resumed
    run continues data order, patterns, optimiser and LSTM state, and ends with the same weights."""
    from conftest import run_cli

    def args(out, probe, extra=()):
        return small_overrides(synth_data, out, model, dropout) + [
            "trainer.max_epochs=2", f"trainer.limit_train_batches={limit}", "logger=none", "test=false",
            "callbacks.interval_checkpoint.train_time_interval=null",
            "callbacks.interval_checkpoint.every_n_train_steps=4",
            "+callbacks.probe._target_=conftest.PatternProbe", f"+callbacks.probe.path={probe}", *extra]

    full = run_cli(args(tmp_path / "full", tmp_path / "p_full"), cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run_cli(args(tmp_path / "cut", tmp_path / "p_cut",
                          ["+callbacks.kill._target_=test_resume.KillAtStep", f"+callbacks.kill.step={kill_at}"]),
                     cwd=tmp_path)
    assert killed.returncode != 0  # really killed
    ckpt = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    assert saved["global_step"] == 4 * (kill_at // 4) and saved["global_step"] % limit != 0  # inside an epoch
    resumed = run_cli(args(tmp_path / "resumed", tmp_path / "p_resumed", [f"ckpt_path={ckpt}"]), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want = torch.load(tmp_path / "p_full" / "rank0.pt")
    got = torch.load(tmp_path / "p_resumed" / "rank0.pt")
    assert got["steps"] == want["steps"][saved["global_step"]:]  # the same patterns at the same steps
    assert got["batches"] == want["batches"][saved["global_step"]:]  # the same data in the same order
    for name, w in want["weights"].items():
        assert torch.equal(w, got["weights"][name]), name


def test_one_last_checkpoint_holds_the_newest_state(synth_data, tmp_path):
    """The epoch-end checkpoint and the interval checkpoint share last.ckpt: a crash after a
    mid-epoch save resumes from that save, not from a last.ckpt left at the previous epoch's end
    (Lightning would otherwise version the second writer's file as last-v1.ckpt)."""
    run(_cfg(synth_data, tmp_path / "a", tmp_path / "pa", [
        "trainer.max_epochs=2", "callbacks.interval_checkpoint.train_time_interval=null",
        "callbacks.interval_checkpoint.every_n_train_steps=3"]))
    names = sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir())
    assert [n for n in names if n.startswith("last")] == ["last.ckpt"], names
    assert torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2 * 4
