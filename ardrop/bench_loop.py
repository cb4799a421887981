"""``python -m ardrop.bench --loop trainer``: the real Lightning loop, Bernoulli vs approximate dropout.

Holds: ``run_loop_bench`` and the config plumbing around it. Imports: torch, stdlib and,
inside functions, hydra, pytorch_lightning, ``ardrop.train`` and ``ardrop.bench_core``.

Why beside the core bench: a user runs ``python -m ardrop.train``, and what they pay per
step there includes everything around forward/backward/step (callbacks, logging, metrics,
clipping, the data loader). This command builds each side exactly as ``ardrop.train``
does from the shipped configs (``conf/``, composed with ``hydra.compose``), runs
``Trainer.fit`` for a few steps, and times every step from one ``on_train_batch_start``
to the next (the whole loop iteration) and from batch start to batch end (the part
Lightning calls the step).

Method: both sides run in one process. A round fits the Bernoulli model and then the
approximate one (the order swaps every round) for ``--loop-steps`` timed steps after
``--loop-warmup`` untimed ones; each fit starts from a fresh model and trainer, so the
rounds interleave the sides the way the core bench's periods do. The figure per side is
the median over rounds of each fit's median step. Validation, checkpoints and the test
split are off (they are not training time); the progress bar is off (its output is
throttled and would interleave with this table). After the loop rounds the core bench
(``ardrop.bench_core.bench_one``) times the same model, rate and optimiser with its own method, so the
loop's overhead over the core is one column: ``loop/core``. The core side then takes the
config's momentum, weight decay and gradient clipping too (they are the recipe, not the
loop), so that column is what Lightning and the callbacks add.
"""
from __future__ import annotations

import os
import re
import statistics
import tempfile
import time
from pathlib import Path


CONF = Path(__file__).resolve().parents[1] / "conf"
NAMED = {"mlp2048": "mlp_2048x2048", "mlp4096": "mlp_4096x4096"}


def config_model_name(name: str) -> str:
    """The config name for a bench model name: mlp2048 -> mlp_2048x2048, mlp1024x64 -> mlp_1024x64."""
    name = NAMED.get(name, name)
    if m := re.fullmatch(r"mlp(\d+x\d+)", name):
        name = f"mlp_{m.group(1)}"
    if not (CONF / "model" / f"{name}.yaml").is_file():
        known = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
        raise ValueError(f"--loop trainer needs a shipped model config; {name!r} is not one of {known}")
    return name


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


class LoopClock:
    """Per-step times inside ``Trainer.fit``: loop iteration (start to next start) and step (start to end)."""

    def __init__(self, warmup: int):
        import pytorch_lightning as pl

        clock = self

        class _Callback(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                now = time.perf_counter()
                if clock._start is not None and clock._seen > warmup:
                    clock.loop.append(now - clock._start)
                clock._start = now

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                clock._seen += 1
                if clock._seen > warmup:
                    clock.step.append(time.perf_counter() - clock._start)

        self.callback = _Callback()
        self._start, self._seen = None, 0
        self.loop: list[float] = []
        self.step: list[float] = []


def fit_once(model_name: str, dropout: str, rate: float, steps: int, warmup: int, extra: list[str], workdir: str):
    """One short ``Trainer.fit`` built as ``ardrop.train`` builds it; returns (loop s, step s) medians."""
    from hydra.utils import instantiate

    from ardrop.train import _build_all

    cfg = compose([f"model={model_name}", f"dropout={dropout}", f"rate={rate}", f"output_dir={workdir}",
                   f"trainer.max_steps={steps + warmup}", "trainer.max_epochs=-1", "trainer.limit_val_batches=0",
                   "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                   "callbacks.checkpoint=null", "test=false", *extra])
    import pytorch_lightning as pl

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    clock = LoopClock(warmup)
    loggers = _build_all(cfg.get("logger"))
    callbacks = _build_all(cfg.get("callbacks")) + [clock.callback]
    datamodule = instantiate(cfg.data)
    datamodule.check_files()
    model = instantiate(cfg.model, **datamodule.model_kwargs())
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    trainer.fit(model, datamodule=datamodule)
    if len(clock.step) < steps:
        raise RuntimeError(f"the fit ran {len(clock.step)} timed steps, expected {steps} (an epoch shorter than that?)")
    optimizer = type(trainer.optimizers[0]).__name__
    return statistics.median(clock.loop), statistics.median(clock.step), optimizer, cfg


def core_spec(cfg, model_name: str):
    """The core bench's ModelSpec for a composed config (same sizes, batch and sequence length)."""
    from ardrop.bench_core import MNIST_CLASSES, MNIST_IN, ModelSpec

    m = cfg.model
    if "hidden" in m:
        sizes = (MNIST_IN, *[int(h) for h in m.hidden], MNIST_CLASSES)
        return ModelSpec(model_name, "mlp", sizes=sizes, batch=int(cfg.data.batch_size))
    return ModelSpec(model_name, "lstm", layers=int(m.num_layers), hidden=int(m.hidden_size), vocab=10000,
                     seq_len=int(cfg.data.seq_len), batch=int(cfg.data.batch_size))


def run_loop_bench(args) -> dict:
    from ardrop.bench_core import bench_one

    import logging

    import pytorch_lightning  # noqa: F401  (sets its loggers to INFO on import: import first, then quieten)

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric",
                 "lightning_utilities"):  # one table, not a banner per fit
        logging.getLogger(name).setLevel(logging.WARNING)
    extra = list(args.override or [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="ardrop-loop-") as workdir:
        for name in args.models:
            model_name = config_model_name(name)
            lstm = model_name.startswith("lstm")
            steps = args.loop_steps or (20 if lstm else 60)
            for kind in args.kinds:
                for rate in args.rates:
                    per = {"bernoulli": [], kind: []}
                    opt_names = {}
                    cfg = None
                    for r in range(args.rounds):
                        order = ["bernoulli", kind] if r % 2 == 0 else [kind, "bernoulli"]
                        for side in order:
                            loop_s, step_s, opt_name, cfg_side = fit_once(
                                model_name, side, rate, steps, args.loop_warmup, extra, os.path.join(workdir, side))
                            per[side].append((loop_s, step_s))
                            opt_names[side] = opt_name
                            cfg = cfg_side if side == kind else cfg
                        print(f"# round {r + 1}: {model_name} {kind} {rate}: bernoulli "
                              f"{1e3 * per['bernoulli'][-1][0]:.2f} ms, {kind} {1e3 * per[kind][-1][0]:.2f} ms",
                              flush=True)
                    loop = {s: 1e3 * statistics.median(v[0] for v in per[s]) for s in per}
                    step = {s: 1e3 * statistics.median(v[1] for v in per[s]) for s in per}
                    optimizer = "lazy" if cfg.model.get("optimizer") == "lazy_sgd" else "sgd"
                    # The core bench's sides as the loop's: groups, momentum, weight decay and clipping
                    # from the config, so that loop/core is the loop's own overhead, not the recipe's.
                    args.groups = cfg.dropout.groups
                    args.momentum, args.weight_decay = float(cfg.model.momentum), float(cfg.model.weight_decay)
                    args.clip = cfg.trainer.get("gradient_clip_val") or None
                    core = bench_one(core_spec(cfg, model_name), kind, rate, optimizer, args)
                    rows.append({
                        "model": model_name, "kind": kind, "rate": rate, "optimizer": opt_names[kind],
                        "loop_bern_ms": loop["bernoulli"], "loop_approx_ms": loop[kind],
                        "loop_speedup": loop["bernoulli"] / loop[kind],
                        "step_bern_ms": step["bernoulli"], "step_approx_ms": step[kind],
                        "core_bern_ms": core["base_ms"], "core_approx_ms": core["approx_ms"],
                        "core_speedup": core["speedup"], "loop_over_core": loop[kind] / core["approx_ms"],
                        "core_recipe": {k: core[k] for k in ("momentum", "weight_decay", "clip")},
                        "loop_steps": steps, "rounds": args.rounds, "overrides": extra,
                        "per_round_s": {s: v for s, v in per.items()},
                    })
                    print_loop_row(rows[-1], header=len(rows) == 1)
    return {"results": rows}


LOOP_TABLE = [("model", -15, "model", ""), ("kind", -6, "kind", ""), ("rate", 5, "rate", ".2f"), ("", 2, None, ""),
              ("optimizer", -10, "optimizer", ""), ("loop bern", 10, "loop_bern_ms", ".2f"),
              ("loop appr", 10, "loop_approx_ms", ".2f"), ("loop x", 8, "loop_speedup", ".2fx"),
              ("core bern", 10, "core_bern_ms", ".2f"), ("core appr", 10, "core_approx_ms", ".2f"),
              ("core x", 8, "core_speedup", ".2fx"), ("loop/core", 10, "loop_over_core", ".2fx")]


def print_loop_row(r: dict, header: bool) -> None:
    """One row as soon as it is measured (a loop bench takes minutes), the header before the first."""
    from ardrop.bench_core import format_table

    lines = format_table([r], LOOP_TABLE)
    print("\n".join(lines if header else lines[2:]), flush=True)
