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
