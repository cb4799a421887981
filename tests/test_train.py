"""End-to-end `train` runs: every model family x every dropout kind, the CLI, a multirun sweep."""
from __future__ import annotations

import math

import pytest
import torch

from ardrop.train import run
from conftest import compose_cfg, run_cli, small_overrides

KINDS = ["row", "tile", "bernoulli", "none"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("model", ["mlp_1024x64", "lstm2"])
def test_train_end_to_end(model, kind, synth_data, tmp_path):
    out = tmp_path / "out"
    cfg = compose_cfg(small_overrides(synth_data, out, model=model, dropout=kind) + ["logger=csv"])
    score = run(cfg)
    assert score is not None and math.isfinite(score)
    if model.startswith("mlp"):
        assert 0.0 <= score <= 1.0
    else:
        assert 1.0 < score < 1e4  # validation perplexity
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    pattern_state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("PatternCallback"))
    n_sites = 2 if model.startswith("mlp") else 3
    assert len(pattern_state["sequences"]) == (n_sites if kind in ("row", "tile") else 0)
    metrics = (out / "csv" / "metrics.csv").read_text()
    assert "test_acc" in metrics
    if model == "lstm2":
        assert "test_ppl" in metrics


def test_train_learns_synthetic_mnist(synth_data, tmp_path):
    """Not just runs: a few epochs on the learnable fake digits beat chance by far."""
    cfg = compose_cfg(small_overrides(synth_data, tmp_path / "o") + ["trainer.max_epochs=4", "logger=none"])
    assert run(cfg) > 0.5


def test_per_site_rates(synth_data, tmp_path):
    cfg = compose_cfg(small_overrides(synth_data, tmp_path / "o") + ["rate=[0.3,0.6]", "logger=none"])
    run(cfg)
    ckpt = torch.load(tmp_path / "o" / "checkpoints" / "last.ckpt", weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("PatternCallback"))
    targets = sorted(r["target"] for r in state["results"].values())
    assert targets == [0.3, 0.6]


def test_cli_design_card_command(synth_data, tmp_path):
    """`python -m ardrop.train model=lstm3 dropout=tile rate=0.7`, shrunk to test size."""
    args = ["model=lstm3", "dropout=tile", "rate=0.7", "dropout.tile=8", f"hydra.run.dir={tmp_path / 'run'}",
            *[o for o in small_overrides(synth_data, tmp_path, model="lstm3", dropout="tile")
              if not o.startswith(("model=", "dropout=", "output_dir="))],
            "model.hidden_size=32"]
    res = run_cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "test_ppl" in res.stdout
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()


def test_multirun_sweep_over_rates_and_kinds(synth_data, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "rate=0.3,0.6", "dropout=row,tile,bernoulli", f"hydra.sweep.dir={sweep}",
            *[o for o in small_overrides(synth_data, tmp_path) if not o.startswith(("dropout=", "output_dir="))],
            "logger=csv", "trainer.limit_train_batches=3", "data.val_size=50"]
    res = run_cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 6
    seen = set()
    for job in jobs:
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        seen.add(tuple(line.strip("- \n") for line in overrides.splitlines() if line.startswith("- rate=")
                       or line.startswith("- dropout=")))
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert "test_acc" in (job / "csv" / "metrics.csv").read_text()
    assert len(seen) == 6


def test_lazy_sgd_trains_like_torch_sgd(synth_data, tmp_path):
    """model.optimizer=lazy_sgd through Lightning (closure, clipping, schedule, checkpoint):
    the same weights as torch's SGD, up to float32 rounding of the deferred updates."""
    weights = {}
    for opt in ("sgd", "lazy_sgd"):
        out = tmp_path / opt
        run(compose_cfg(small_overrides(synth_data, out) + [f"model.optimizer={opt}", "logger=none", "test=false"]))
        ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
        weights[opt] = ckpt["state_dict"]
        assert ckpt["optimizer_states"][0]["state"], "momentum buffers were checkpointed"
    for k, v in weights["sgd"].items():
        assert torch.allclose(v, weights["lazy_sgd"][k], rtol=1e-4, atol=1e-5), k


def test_weight_averaging_callback_sees_lazy_sgds_current_weights(synth_data, tmp_path):
    """Lightning's EMA callback reads the weights straight from the module after each step, past the
    read contract: with lazy_sgd it must average the same weights as with torch's SGD (the models fold
    LazySGD's pending updates after each step when such a callback is present)."""
    states = {}
    for opt in ("sgd", "lazy_sgd"):
        out = tmp_path / opt
        run(compose_cfg(small_overrides(synth_data, out) + [
            f"model.optimizer={opt}", "logger=none", "test=false",
            "+callbacks.ema._target_=pytorch_lightning.callbacks.EMAWeightAveraging", "+callbacks.ema.decay=0.5"]))
        ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
        states[opt] = ckpt["state_dict"]  # the callback puts the averaged weights here
        assert "current_model_state" in ckpt
    for k, v in states["sgd"].items():
        assert torch.allclose(v, states["lazy_sgd"][k], rtol=1e-4, atol=1e-5), k


def test_unknown_optimizer_is_a_clear_error(synth_data, tmp_path):
    cfg = compose_cfg(small_overrides(synth_data, tmp_path / "o") + ["model.optimizer=adam", "logger=none"])
    with pytest.raises(Exception, match="unknown optimizer 'adam': set model.optimizer"):  # via instantiate
        run(cfg)
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_submitit_local_sweep_runs_two_jobs(synth_data, tmp_path):
    """Hydra's submitit launcher (the cluster path) with its local executor: a 2-job sweep end to end."""
    from conftest import run_cli

    sweep = tmp_path / "sweep"
    args = [a for a in small_overrides(synth_data, tmp_path / "unused") if not a.startswith("output_dir=")]
    proc = run_cli(["-m", "hydra/launcher=local", "experiment=smoke", "logger=csv", "rate=0.3,0.5",
                    f"hydra.sweep.dir={sweep}", *args], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file(), sorted(p.name for p in sweep.iterdir())
    assert (sweep / ".submitit").is_dir()  # really went through submitit


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir

    from conftest import CONF

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.timeout_min == 240
