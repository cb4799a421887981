"""The TensorBoard event files hold the training scalars and the pattern histograms."""
from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ardrop.train import run
from conftest import compose_cfg, small_overrides


def test_tensorboard_scalars_and_histograms(synth_data, tmp_path):
    out = tmp_path / "out"
    cfg = compose_cfg(small_overrides(synth_data, out) + ["trainer.max_epochs=2", "logger=tensorboard"])
    run(cfg)
    acc = EventAccumulator(str(out / "tb"), size_guidance={"histograms": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars, hists = set(tags["scalars"]), set(tags["histograms"])
    sites = sorted({t.split("/")[1] for t in scalars if t.startswith("pattern/") and t.endswith("/drop_rate")})
    assert len(sites) == 2, scalars
    for s in sites:
        for key in ("drop_rate", "realized_rate", "search_rate", "search_error", "search_entropy"):
            assert f"pattern/{s}/{key}" in scalars
        assert f"pattern/{s}/dp_used" in hists
        assert f"pattern/{s}/searched_distribution" in hists
        used = acc.Histograms(f"pattern/{s}/dp_used")
        assert len(used) == 2  # one per epoch
        assert used[0].histogram_value.num == 8  # 500 train examples / batch 64 -> 8 steps
        searched = acc.Histograms(f"pattern/{s}/searched_distribution")[0].histogram_value
        assert abs(sum(searched.bucket) - 1.0) < 1e-9
        realized = acc.Scalars(f"pattern/{s}/realized_rate")
        assert 0.0 <= realized[-1].value < 1.0
    for key in ("train_loss_step", "train_loss_epoch", "val_acc", "val_loss", "test_acc", "time/step_ms",
                "time/samples_per_s", "time/epoch_s", "lr-LazySGD"):
        assert key in scalars, key


def test_site_diagnostics_log_norms_against_dp(synth_data, tmp_path):
    """The opt-in diagnostics callback: per-site dp, weight-gradient norm and the clip ratio, for both families."""
    for model, dropout in (("mlp_1024x64", "tile"), ("lstm2", "row")):
        out = tmp_path / model
        cfg = compose_cfg(small_overrides(synth_data, out, model, dropout)
                          + ["trainer.max_epochs=1", "trainer.limit_train_batches=4", "logger=tensorboard",
                             "test=false", "+callbacks.diagnostics._target_=callbacks.SiteDiagnostics"])
        run(cfg)
        acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
        acc.Reload()
        scalars = set(acc.Tags()["scalars"])
        assert "diag/grad_norm" in scalars and "diag/grad_norm_over_clip" in scalars, model
        sites = {t.split("/")[1] for t in scalars if t.startswith("diag/") and t.endswith("/dp")}
        assert len(sites) == (2 if model.startswith("mlp") else 3), sites
        for s in sites:
            assert f"diag/{s}/weight_grad_norm" in scalars
            dps = [e.value for e in acc.Scalars(f"diag/{s}/dp")]
            assert all(v >= 1 for v in dps) and len(dps) == 4


class LossRecorder:
    """Records every training step's loss and batch size (instantiated from the config by Hydra)."""

    seen: list = []

    def __new__(cls):
        import pytorch_lightning as pl

        class _Rec(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                LossRecorder.seen.append((trainer.current_epoch, float(outputs["loss"]), len(batch[1])))

        return _Rec()


def test_train_loss_logged_at_the_cadence_with_the_weighted_epoch_mean(synth_data, tmp_path):
    """``train_loss_step`` holds the loss of the writing steps, ``train_loss_epoch`` the batch-size-weighted mean.

    The models sum the epoch mean themselves and log the step loss only on the steps Lightning
    writes (`models.common.LogsTrainLoss`); the values must be what ``self.log`` every step gave.
    """
    out = tmp_path / "out"
    LossRecorder.seen.clear()
    cfg = compose_cfg(small_overrides(synth_data, out) + [
        "trainer.max_epochs=2", "trainer.log_every_n_steps=3", "logger=tensorboard", "test=false",
        "+callbacks.rec._target_=test_tensorboard.LossRecorder"])
    run(cfg)
    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    seen = LossRecorder.seen
    assert len(seen) == 16 and {n for _, _, n in seen} == {64, 52}  # 500 examples: 7 x 64 + 52 per epoch
    step_vals = [e.value for e in acc.Scalars("train_loss_step")]
    assert len(step_vals) == 5  # steps 3, 6, ..., 15 of 16
    for logged, (_, loss, _) in zip(step_vals, seen[2::3]):
        assert abs(logged - loss) <= 1e-6 * max(1.0, abs(loss))
    epoch_vals = [e.value for e in acc.Scalars("train_loss_epoch")]
    assert len(epoch_vals) == 2
    for epoch, logged in enumerate(epoch_vals):
        rows = [(loss, n) for e, loss, n in seen if e == epoch]
        mean = sum(loss * n for loss, n in rows) / sum(n for _, n in rows)
        assert abs(logged - mean) <= 1e-5 * mean, (epoch, logged, mean)
