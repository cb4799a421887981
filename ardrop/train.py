"""`python -m ardrop.train [group=option ...] [key=value ...]`: compose, seed, build, fit, test.

Everything is built from the Hydra tree in `conf/` with `hydra.utils.instantiate`; this file
only fixes the order, so that bad input fails before any data is read or step is taken:
config values -> callbacks -> data files -> model -> trainer -> fit -> test.
Returns the monitored validation metric so that Hydra sweepers can optimise it.
"""
from __future__ import annotations

import logging

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

from ardrop.allocator import keep_large_buffers
from ardrop.checks import site_rates
from callbacks import RunSummary

log = logging.getLogger(__name__)


def _build_all(section: DictConfig | None) -> list:
    """Instantiate every entry of a name -> config mapping; `name=null` disables one."""
    if not section:
        return []
    return [instantiate(c) for c in section.values() if c is not None]


def run(cfg: DictConfig) -> float | None:
    keep_large_buffers()  # as MALLOC_*_THRESHOLD_ would: no page faults on every step's large buffers
    site_rates(cfg.rate, None, name="rate")  # values now; their count once the model says how many sites
    pl.seed_everything(cfg.seed, workers=True)
    loggers = _build_all(cfg.get("logger"))
    callbacks = _build_all(cfg.get("callbacks"))
    RunSummary.attach(callbacks, cfg)  # summary.json records the composed config
    if not loggers:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    datamodule = instantiate(cfg.data)
    datamodule.check_files()
    model = instantiate(cfg.model, **datamodule.model_kwargs())
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if loggers:
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    ckpt = trainer.checkpoint_callback
    metric = cfg.monitor.metric
    if isinstance(ckpt, ModelCheckpoint) and ckpt.monitor == metric and ckpt.best_model_score is not None:
        score = float(ckpt.best_model_score)
    else:
        value = trainer.callback_metrics.get(metric)
        score = None if value is None else float(value)
    log.info("%s = %s", metric, score)

    if cfg.get("test", True):
        use_best = cfg.get("test_ckpt") == "best" and isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path
        # The best checkpoint's path itself: "best" makes Lightning warn when, as here, the
        # interval checkpoint is a second ModelCheckpoint.
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt.best_model_path if use_best else None)
    return score


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    main()
