"""`RunSummary`: one small `summary.json` per run, the only input of `python -m ardrop.report`.

Why: the paper's tables compare training *time* and quality across dozens of runs. Reading
them back from TensorBoard events or checkpoints is slow and fragile, and the events mix in
validation and test time. This callback measures what the report needs while the run
happens and writes it as a few kB of JSON into the run's output directory, so the results
can be copied, committed and rebuilt into tables without the runs themselves.

Training wall time (``timing.train_time_s``) is the time from Lightning's
``on_train_start`` (after the sanity check and the dropout plan's search) to
``on_train_end``, minus every validation interval. A validation interval starts at
``on_validation_start`` and ends when training resumes (the next training batch, epoch end
or train end), so the checkpoint writes that a validation triggers count as validation.
It therefore includes data loading, forward, backward, optimiser steps, clipping, logging
and any checkpoint written on a training-step cadence. Test runs after ``on_train_end`` and
never counts. The curve points' ``train_time_s`` is this clock at the start of each
validation, so curves of different runs share one time axis.
On a GPU the clock is read after ``torch.cuda.synchronize`` at train start, at each
validation start and at train end, so queued kernels count where they ran; the per-step
``step_times`` stay host-side (launch-bound steps read short, queue-bound ones are exact).

While training runs it also measures how many CPU cores *other* work kept busy
(``timing.other_cpu_cores``: the machine's busy time from ``/proc/stat`` minus this process's
own CPU time, over the wall time from ``on_train_start`` to ``on_train_end``). A speedup
measured while another job shared the cores is not speed evidence, and the report says so;
``None`` where ``/proc/stat`` cannot be read. Data-loader worker processes count as other work.

The file is (re)written atomically after fit (``status: "fit"``), after each test
(``"tested"``) and when the run raises (``"failed"``, with the error), on global rank 0 only.
The timing state also goes into checkpoints, so a resumed run continues its clock and curves.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import tempfile
import time
import uuid
from array import array
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from ardrop.planning import pattern_sites
from callbacks._cadence import logs_this_step

# `ardrop.report` recognises summaries by this field (it keeps its own copy: the report
# imports nothing from the training stack; tests/test_report.py checks the two agree).
FORMAT = "ardrop-run-summary"
VERSION = 1
SUMMARY_NAME = "summary.json"
TRAIN_TIME_DEFINITION = (
    "seconds from on_train_start to on_train_end minus validation intervals (on_validation_start until training "
    "resumes); excludes sanity check, dropout-plan search and test"
)
REPO = Path(__file__).resolve().parents[1]


class RunSummary(pl.Callback):
    """Args:
        output_dir: where ``summary.json`` goes (the run's Hydra output directory).
        monitor, mode: the validation metric the run selects by (``monitor.metric`` / ``monitor.mode``),
            recorded as the best validation value.
        max_loss_points: the train-loss curve (one point per Lightning log step) is thinned
            by halves whenever it grows past this, so the file stays a few kB for any run length.
        config: the run's composed config; `ardrop.train` hands it over with `attach_config`.
    """

    def __init__(self, output_dir: str | os.PathLike, monitor: str | None = None, mode: str = "max",
                 max_loss_points: int = 200, config=None):
        if mode not in ("min", "max"):
            raise ValueError(f"RunSummary mode must be 'min' or 'max', got {mode!r}")
        if isinstance(max_loss_points, bool) or not isinstance(max_loss_points, int) or max_loss_points < 2:
            raise ValueError(f"RunSummary max_loss_points must be an integer >= 2, got {max_loss_points!r}")
        self.path = Path(output_dir) / SUMMARY_NAME
        self.monitor, self.mode, self.max_loss_points = monitor, mode, max_loss_points
        self.config: dict | None = None
        self.hydra: dict | None = None
        if config is not None:
            self.attach_config(config)
        self.run_id = uuid.uuid4().hex[:12]
        self._reset_clock()
        self.curve: list[dict] = []
        self.loss_curve: list[list[float]] = []
        self._loss_stride = 1  # keep every n-th log step once thinned
        self._loss_seen = 0
        self.test_metrics: dict[str, float] = {}
        self._machine: dict | None = None
        self._model_info: dict = {}
        self._sites: list = []
        self._restored: dict | None = None
        self._started = time.time()

    def _reset_clock(self) -> None:
        self._train_t0: float | None = None  # perf_counter at train start, minus restored train time
        self._val_s = 0.0  # validation time inside this process's fit
        self._val_t0: float | None = None  # start of the validation interval in progress
        self._restored_val_s = 0.0
        self._training = False
        self.train_time_s: float | None = None
        self.step_times = array("d")
        self._step_t0: float | None = None
        self.steps = 0
        self.resumed_from_step: int | None = None
        self._load = CpuShare()

    # -- configuration ----------------------------------------------------------------
    def attach_config(self, cfg) -> None:
        """Record the composed config (resolved) and, under `hydra.main`, Hydra's choices and overrides."""
        self.config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        self.hydra = _hydra_info(self.config.get("output_dir"))

    @staticmethod
    def attach(callbacks, cfg) -> None:
        """Hand ``cfg`` to every `RunSummary` among ``callbacks`` (what `ardrop.train` calls)."""
        for cb in callbacks:
            if isinstance(cb, RunSummary):
                cb.attach_config(cfg)

    # -- the training clock -------------------------------------------------------------
    def _train_time(self, now: float) -> float:
        spent = self._val_s + (now - self._val_t0 if self._val_t0 is not None else 0.0)
        return now - self._train_t0 - spent

    @staticmethod
    def _settled(pl_module) -> float:
        """perf_counter once the module's queued GPU work has finished.

        CUDA kernels run asynchronously: without this, the last training steps' device time
        would land in the validation interval (or after ``on_train_end``), and a GPU run's
        training time would read short. CPU modules read the clock directly."""
        device = getattr(pl_module, "device", None)
        if isinstance(device, torch.device) and device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def _close_validation(self) -> None:
        if self._val_t0 is not None:
            self._val_s += time.perf_counter() - self._val_t0
            self._val_t0 = None

    def on_fit_start(self, trainer, pl_module):
        self._sites = pattern_sites(pl_module)
        self._model_info = _model_info(pl_module, self._sites)
        if self._machine is None:
            self._machine = machine_info(trainer)

    def on_train_start(self, trainer, pl_module):
        restored, self._restored = self._restored, None
        self._reset_clock()
        self._training = True
        if restored is not None:  # a resumed run continues its clock and curves
            self.curve = list(restored["curve"])
            self.loss_curve = [list(p) for p in restored["loss_curve"]]
            self._loss_stride, self._loss_seen = restored["loss_stride"], restored["loss_seen"]
            self.step_times = array("d", restored["step_times"])
            self._restored_val_s = restored["validation_s"]
            self.resumed_from_step = trainer.global_step
            self._train_t0 = self._settled(pl_module) - restored["train_time_s"]
            self._load.restore(restored.get("other_cpu"))
        else:
            self._train_t0 = self._settled(pl_module)
        self._load.start()

    def on_train_epoch_start(self, trainer, pl_module):
        self._close_validation()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._close_validation()
        self._step_t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if self._step_t0 is not None:
            self.step_times.append(now - self._step_t0)
            self._step_t0 = None
        if not logs_this_step(trainer):
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        self._loss_seen += 1
        if (self._loss_seen - 1) % self._loss_stride:
            return
        self.loss_curve.append([trainer.global_step, round(self._train_time(now), 4), _finite(float(loss.detach()))])
        if len(self.loss_curve) > self.max_loss_points:  # thin by halves: the file stays small
            self.loss_curve = self.loss_curve[::2]
            self._loss_stride *= 2

    def on_train_epoch_end(self, trainer, pl_module):
        self._close_validation()

    def on_validation_start(self, trainer, pl_module):
        if self._training and not trainer.sanity_checking:
            self._close_validation()
            self._val_t0 = self._settled(pl_module)

    def on_validation_end(self, trainer, pl_module):
        if not self._training or trainer.sanity_checking or self._val_t0 is None:
            return
        point = {"step": trainer.global_step, "epoch": trainer.current_epoch,
                 "train_time_s": round(self._train_time(self._val_t0), 4)}
        point.update({k: _finite(float(v)) for k, v in sorted(trainer.callback_metrics.items())
                      if k.startswith("val_") and _scalar(v)})
        self.curve.append(point)

    def on_train_end(self, trainer, pl_module):
        now = self._settled(pl_module)
        self._close_validation()
        self._load.stop()
        self.train_time_s = self._train_time(now)
        self.steps = trainer.global_step
        self._training = False

    def on_fit_end(self, trainer, pl_module):
        self._write(trainer, pl_module, "fit")

    def on_test_end(self, trainer, pl_module):
        self.test_metrics = {k: _finite(float(v)) for k, v in sorted(trainer.callback_metrics.items())
                             if k.startswith("test_") and _scalar(v)}
        if not self._sites:  # a test-only run
            self._sites = pattern_sites(pl_module)
            self._model_info = _model_info(pl_module, self._sites)
        self._write(trainer, pl_module, "tested")

    def on_exception(self, trainer, pl_module, exception):
        if self._training:
            self._close_validation()
            self._load.stop()
            self.train_time_s = self._train_time(time.perf_counter())
            self.steps = trainer.global_step
            self._training = False
        self._write(trainer, pl_module, "failed", error=f"{type(exception).__name__}: {exception}")

    # -- checkpoint state ---------------------------------------------------------------
    def state_dict(self) -> dict:
        if self._training and self._train_t0 is not None:
            train_s = self._train_time(time.perf_counter())
        else:
            train_s = self.train_time_s or 0.0
        return {
            "train_time_s": train_s,
            "validation_s": self._restored_val_s + self._val_s,
            "curve": self.curve,
            "loss_curve": self.loss_curve,
            "loss_stride": self._loss_stride,
            "loss_seen": self._loss_seen,
            "step_times": list(self.step_times),
            "other_cpu": self._load.state(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = state_dict

    # -- the file -----------------------------------------------------------------------
    def summary(self, trainer, pl_module, status: str, error: str | None = None) -> dict:
        """The JSON document (also what the tests read)."""
        steps = list(self.step_times)
        # The first step of a process pays one-off costs (allocation, lazy init, the native
        # library's first call): left out of the step statistics when there are others.
        timed = steps[1:] if len(steps) > 1 else steps
        cfg = self.config or {}
        choices = {**self._model_info, "seed": cfg.get("seed"), "experiment": None}
        if self.hydra:
            choices["model_choice"] = self.hydra["choices"].get("model")
            choices["experiment"] = self.hydra["choices"].get("experiment")
        search = cfg.get("search") or {}
        choices["search"] = {k: search.get(k) for k in ("method", "max_dp")} if search else None
        final = dict(self.test_metrics)
        best = self._best_val()
        if best is not None:
            final["best_val"] = best
        return {
            "format": FORMAT,
            "version": VERSION,
            "run_id": self.run_id,
            "status": status,
            "error": error,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self._started)),
            "output_dir": str(self.path.parent),
            "choices": choices,
            "final": final,
            "timing": {
                "train_time_s": None if self.train_time_s is None else round(self.train_time_s, 4),
                "validation_s": round(self._restored_val_s + self._val_s, 4),
                "definition": TRAIN_TIME_DEFINITION,
                "steps": self.steps,
                "resumed_from_step": self.resumed_from_step,
                "timed_steps": len(timed),
                "step_median_s": round(statistics.median(timed), 6) if timed else None,
                "step_mean_s": round(statistics.fmean(timed), 6) if timed else None,
                "other_cpu_cores": self._load.cores(),
            },
            "curve": self.curve,
            "loss_curve": {"columns": ["step", "train_time_s", "loss"], "every_n_log_steps": self._loss_stride,
                           "points": self.loss_curve},
            "patterns": self._patterns(trainer),
            "machine": self._machine or machine_info(trainer),
            "hydra": self.hydra,
            "config": self.config,
        }

    def _best_val(self) -> dict | None:
        if not self.monitor:
            return None
        scored = [p for p in self.curve if p.get(self.monitor) is not None]
        if not scored:
            return None
        pick = (max if self.mode == "max" else min)(scored, key=lambda p: p[self.monitor])
        return {"metric": self.monitor, "mode": self.mode, "value": pick[self.monitor], "step": pick["step"],
                "train_time_s": pick["train_time_s"]}

    def _patterns(self, trainer) -> list[dict]:
        from callbacks.pattern import PatternCallback  # (the same package; imported late to keep the module light)

        owner = next((c for c in trainer.callbacks if isinstance(c, PatternCallback)), None)
        results = owner.results if owner is not None else {}
        realized = owner.realized if owner is not None else {}
        out = []
        for name, site in self._sites:
            entry = {"site": name, "kind": site.kind, "rate": site.rate}
            res = results.get(name)
            if res is not None:
                entry.update({
                    "method": res.get("method"), "N": len(res["probs"]),
                    "probs": [round(float(p), 6) for p in res["probs"]],
                    "achieved_rate": _finite(res.get("rate")), "error": _finite(res.get("error")),
                    "entropy": _finite(res.get("entropy")),
                })
            done = realized.get(name)
            if done and done[1]:
                entry["realized_rate"] = round(done[0] / done[1], 6)
            out.append(entry)
        return out

    def _write(self, trainer, pl_module, status: str, error: str | None = None) -> None:
        if not trainer.is_global_zero:
            return
        doc = self.summary(trainer, pl_module, status, error)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Atomic: a report reading while the run writes sees the old file or the new one.
        fd, tmp = tempfile.mkstemp(prefix=".summary.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=1, allow_nan=False)
                fh.write("\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _scalar(v) -> bool:
    return not isinstance(v, torch.Tensor) or v.numel() == 1


def _finite(x):
    """JSON has no NaN/inf: a diverged loss is written as null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _collapse(rates: list[float]):
    return rates[0] if rates and all(r == rates[0] for r in rates) else rates


def _model_info(pl_module, sites) -> dict:
    """What was trained, read from the model itself (so it holds whatever config built it)."""
    net = getattr(pl_module, "net", None)
    info: dict = {"class": type(pl_module).__name__}
    if hasattr(net, "sizes"):
        hidden = list(net.sizes[1:-1])
        info.update(family="mlp", arch="x".join(map(str, hidden)), sizes=list(net.sizes))
        info["model"] = f"mlp_{info['arch']}"
    elif hasattr(net, "num_layers") and hasattr(net, "hidden_size"):
        info.update(family="lstm", arch=f"{net.num_layers}x{net.hidden_size}", num_layers=net.num_layers,
                    hidden_size=net.hidden_size, vocab_size=getattr(net, "vocab_size", None))
        info["model"] = f"lstm{net.num_layers}"
    else:
        info.update(family="other", arch=type(net).__name__ if net is not None else None, model=info["class"])
    kinds = sorted({s.kind for _, s in sites})
    info["dropout"] = kinds[0] if len(kinds) == 1 else (",".join(kinds) or "none")
    info["rate"] = _collapse([s.rate for _, s in sites]) if sites else None
    structured = [s for _, s in sites if s.structured]
    info["groups"] = structured[0].groups if structured else None
    info["tile"] = structured[0].tile if structured and structured[0].kind == "tile" else None
    return info


def _hydra_info(output_dir) -> dict | None:
    """Hydra's group choices, overrides and job number, when this process runs under `hydra.main`.

    Checked against the run's ``output_dir``: in tests that compose configs in-process, a
    HydraConfig left by an earlier `hydra.main` call would describe another run.
    """
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        hc = HydraConfig.get()
        if output_dir is not None and str(Path(hc.runtime.output_dir).resolve()) != str(Path(output_dir).resolve()):
            return None
        return {
            "choices": {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")},
            "overrides": list(hc.overrides.task),
            "job_num": hc.job.get("num"),
            "mode": str(hc.mode).split(".")[-1] if hc.get("mode") is not None else None,
        }
    except Exception:  # noqa: BLE001 - Hydra's internals: the summary is still useful without them
        return None


def _cpu_clock() -> tuple[float, float] | None:
    """(seconds the machine's CPUs were busy since boot, seconds this process ran on a CPU), or None.

    Busy is every ``/proc/stat`` column but idle and iowait (user, nice, system, irq, softirq,
    steal: steal is a hypervisor's other guests, which slow this run as much as a local job).
    """
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
        ticks = [int(x) for x in fields[1:9]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if not fields or fields[0] != "cpu" or len(ticks) < 5 or hz <= 0:
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, time.process_time()


class CpuShare:
    """Cores kept busy by other work while a run trained, summed over start/stop windows."""

    def __init__(self, clock=_cpu_clock, wall=time.perf_counter):
        self._clock, self._wall = clock, wall
        self.other_s = 0.0  # CPU seconds of other work
        self.wall_s = 0.0
        self._t0: tuple[float, float, float] | None = None
        self.available = True

    def start(self) -> None:
        at = self._clock()
        self.available = self.available and at is not None
        self._t0 = (*at, self._wall()) if at is not None else None

    def stop(self) -> None:
        if self._t0 is None:
            return
        at, now = self._clock(), self._wall()
        if at is None:
            self.available, self._t0 = False, None
            return
        other_s, wall_s = self._window(at, now)
        self.other_s += other_s
        self.wall_s += wall_s
        self._t0 = None

    def _window(self, at: tuple[float, float], now: float) -> tuple[float, float]:
        """(other work's CPU seconds, wall seconds) of the open window up to ``at`` / ``now``."""
        busy0, own0, wall0 = self._t0
        # Clock ticks are 10 ms: a short window can read less machine time than own time.
        return max(0.0, (at[0] - busy0) - (at[1] - own0)), now - wall0

    def state(self) -> dict:
        """The totals including a window still open (what a checkpoint keeps)."""
        other_s, wall_s = self.other_s, self.wall_s
        if self._t0 is not None:
            at = self._clock()
            if at is not None:
                more_other, more_wall = self._window(at, self._wall())
                other_s, wall_s = other_s + more_other, wall_s + more_wall
        return {"other_s": other_s, "wall_s": wall_s, "available": self.available}

    def restore(self, state: dict | None) -> None:
        if state:  # checkpoints from before this field have none: the resumed part alone is measured
            self.other_s, self.wall_s = float(state["other_s"]), float(state["wall_s"])
            self.available = bool(state["available"])

    def cores(self) -> float | None:
        if not self.available or self.wall_s <= 0:
            return None
        return round(self.other_s / self.wall_s, 3)


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine_info(trainer=None) -> dict:
    """Where the run ran: enough to tell apart timings from different machines."""
    cuda = torch.cuda.is_available()
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    if commit is None and os.environ.get("ARDROP_GIT_COMMIT"):
        # A copy of the checkout without .git (a lent GPU machine): the commit it was copied
        # from, as scripts/gpu_carry.sh recorded it, so the summary still names its code.
        commit, _, flag = os.environ["ARDROP_GIT_COMMIT"].partition("+")
        dirty = flag == "dirty"
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "accelerator": type(trainer.accelerator).__name__ if trainer is not None else None,
        "world_size": trainer.world_size if trainer is not None else None,
        "git_commit": commit,
        "git_dirty": bool(dirty) if dirty is not None else None,
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ARDROP_NATIVE",
                                           "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
                if k in os.environ},
    }
