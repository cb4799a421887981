"""Every file of the Hydra tree composes, resolves and points at importable targets."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import get_class
from omegaconf import OmegaConf

from conftest import CONF, compose_cfg

# conf/hydra/ holds options of Hydra's own groups (hydra/launcher=slurm|local), composed in test_train.py
GROUPS = sorted(p.name for p in Path(CONF).iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((Path(CONF) / g).glob("*.yaml"))]
BASE = ["output_dir=/tmp/ardrop-config-test"]


def _targets(node, found):
    if isinstance(node, dict):
        if "_target_" in node:
            found.append(node["_target_"])
        for v in node.values():
            _targets(v, found)
    return found


def test_groups_are_the_documented_ones():
    assert set(GROUPS) == {"model", "dropout", "search", "data", "trainer", "logger", "callbacks", "experiment"}
    models = {o for g, o in OPTIONS if g == "model"}
    assert models == {"mlp", "mlp_1024x64", "mlp_1024x1024", "mlp_2048x2048", "mlp_4096x4096", "lstm", "lstm2", "lstm3"}
    assert {o for g, o in OPTIONS if g == "dropout"} == {"row", "tile", "bernoulli", "none"}
    assert {o for g, o in OPTIONS if g == "search"} == {"sgd", "maxent"}
    assert {o for g, o in OPTIONS if g == "trainer"} == {"cpu", "gpu", "ddp"}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_config_file_composes(group, option):
    cfg = compose_cfg(BASE + [f"{group}={option}"])
    container = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    for target in _targets(container, []):
        get_class(target)  # importable
    assert container["model"]["_target_"] in ("models.MLPClassifier", "models.LSTMLanguageModel")
    assert container["trainer"]["_target_"] == "pytorch_lightning.Trainer"
    assert container["monitor"]["mode"] in ("min", "max")


def test_models_pick_their_data():
    for model, data in [("mlp_1024x64", "MNIST"), ("mlp_4096x4096", "MNIST"), ("lstm2", "PTB"), ("lstm3", "PTB")]:
        cfg = compose_cfg(BASE + [f"model={model}"])
        assert data in cfg.data._target_
    cfg = compose_cfg(BASE + ["model=lstm3"])
    assert cfg.model.num_layers == 3 and cfg.trainer.gradient_clip_val == 5.0


def test_design_card_command_composes():
    cfg = compose_cfg(BASE + ["model=lstm3", "dropout=tile", "rate=0.7"])
    assert (cfg.model.kind, cfg.model.rates, cfg.model.num_layers) == ("tile", 0.7, 3)
    assert cfg.callbacks.pattern.search.method == "sgd"


def test_defaults_are_the_default_job():
    cfg = compose_cfg(BASE)
    assert cfg.model._target_ == "models.MLPClassifier" and cfg.model.kind == "row" and cfg.rate == 0.5
    assert "TensorBoardLogger" in cfg.logger.tensorboard._target_
    assert cfg.trainer.accelerator == "cpu"


def test_experiments_override_model():
    cfg = compose_cfg(BASE + ["experiment=paper_mlp"])
    assert list(cfg.model.hidden) == [2048, 2048] and cfg.trainer.max_steps == 60000
    cfg = compose_cfg(BASE + ["experiment=paper_lstm"])
    assert cfg.model.num_layers == 2 and cfg.data.seq_len == 35


def test_size_variants_are_thin():
    """Each size variant sets one key over its family base: the base holds everything else once."""
    for family, key, variants in [("mlp", "hidden", ["mlp_1024x64", "mlp_1024x1024", "mlp_2048x2048", "mlp_4096x4096"]),
                                  ("lstm", "num_layers", ["lstm2", "lstm3"])]:
        base = OmegaConf.to_container(compose_cfg(BASE + [f"model={family}"]))
        for variant in variants:
            text = (Path(CONF) / "model" / f"{variant}.yaml").read_text()
            assert f"- {family}" in text and "_target_" not in text, variant
            cfg = OmegaConf.to_container(compose_cfg(BASE + [f"model={variant}"]))
            differing = {k for k in cfg["model"] if cfg["model"][k] != base["model"][k]}
            assert differing <= {key}, (variant, differing)
            assert {k: v for k, v in cfg.items() if k != "model"} == {k: v for k, v in base.items() if k != "model"}


def test_ddp_trainer_uses_two_processes():
    cfg = compose_cfg(BASE + ["trainer=ddp"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2 and cfg.trainer.accelerator == "cpu"


def test_unknown_option_and_key_fail_in_hydra():
    with pytest.raises(MissingConfigException, match="dropout/nonsense"):
        compose_cfg(BASE + ["dropout=nonsense"])
    with pytest.raises(ConfigCompositionException, match="model.no_such_key"):
        compose_cfg(BASE + ["model.no_such_key=1"])
