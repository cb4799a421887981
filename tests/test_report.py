"""`summary.json` (callbacks.RunSummary) and `python -m ardrop.report`, end to end.

Real 2-step training runs (tiny models, synthetic data) go through the experiment configs
as Hydra multiruns; the report is built from their summaries, and every number the tests
check in the tables is recomputed here from the summary files themselves.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from ardrop import paper_numbers
from ardrop.report import ReportError, build_report, time_to, value_at
from ardrop.train import run
from conftest import REPO, compose_cfg, run_cli, small_overrides

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MLP_ARGS = ["model=mlp_1024x64", "rate=0.5,0.7", "seed=0,1", "data.batch_size=64", "data.val_size=100",
            "data.eval_batch_size=100", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
            "trainer.val_check_interval=1", "trainer.limit_test_batches=1"]
LSTM_ARGS = ["dropout=row,bernoulli", "model.hidden_size=16", "data.batch_size=4", "data.eval_batch_size=4",
             "data.seq_len=8", "trainer.limit_train_batches=2", "trainer.val_check_interval=1",
             "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]


def _common(data):
    """Tiny-run settings: no logger, no checkpoint files (test on the last weights), the exact search (fast)."""
    return [f"data_dir={data}", "data.verify=false", "logger=none", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1", "search=maxent",
            "callbacks.checkpoint=null", "callbacks.interval_checkpoint=null", "+trainer.enable_checkpointing=false"]


@pytest.fixture(scope="module")
def sweeps(synth_data, tmp_path_factory):
    """experiment=table1 (MLP: bernoulli/row/tile x 2 rates x 2 seeds) and experiment=fig6 (LSTM row vs
    bernoulli), each one `python -m ardrop.train -m` multirun with command-line overrides of its sweep lists."""
    root = tmp_path_factory.mktemp("sweeps")
    out = {}
    for name, args in (("table1", MLP_ARGS), ("fig6", LSTM_ARGS)):
        res = run_cli(["-m", f"experiment={name}", f"hydra.sweep.dir={root / name}", *_common(synth_data), *args],
                      cwd=root, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        out[name] = root / name
    return out


def _summaries(folder):
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("summary.json"))]


# -- the summary file ---------------------------------------------------------------------
def test_report_and_callback_agree_on_the_file():
    from ardrop import report
    from callbacks import run_summary

    assert (run_summary.FORMAT, run_summary.SUMMARY_NAME) == (report.SUMMARY_FORMAT, report.SUMMARY_NAME)


def test_summary_contents(sweeps):
    mlp = _summaries(sweeps["table1"])
    assert len(mlp) == 12
    assert {(d["choices"]["dropout"], d["choices"]["rate"], d["choices"]["seed"]) for d in mlp} == {
        (k, r, s) for k in ("bernoulli", "row", "tile") for r in (0.5, 0.7) for s in (0, 1)}
    for d in mlp:
        assert d["status"] == "tested" and d["choices"]["experiment"] == "table1"
        assert d["choices"]["arch"] == "1024x64" and d["config"]["trainer"]["limit_train_batches"] == 2
        assert 0.0 <= d["final"]["test_acc"] <= 1.0 and d["final"]["best_val"]["metric"] == "val_acc"
        assert d["final"]["best_val"]["value"] == max(p["val_acc"] for p in d["curve"])
        t = d["timing"]
        assert t["steps"] == 2 and t["train_time_s"] > 0 and t["step_median_s"] > 0
        assert [p["step"] for p in d["curve"]] == [1, 2]  # validation after each step
        assert d["curve"][0]["train_time_s"] < d["curve"][1]["train_time_s"] <= t["train_time_s"] + 1e-3
        assert [p[0] for p in d["loss_curve"]["points"]] == [1, 2]
        assert d["machine"]["torch"] and d["machine"]["torch_threads"] >= 1 and d["machine"]["cpu_count"] >= 1
        assert len(json.dumps(d)) < 20_000  # kB, not MB
        sites = d["patterns"]
        assert len(sites) == 2 and {s["kind"] for s in sites} == {d["choices"]["dropout"]}
        for s in sites:
            if s["kind"] == "bernoulli":
                assert "probs" not in s
                continue
            probs = np.array(s["probs"])
            assert s["N"] == len(probs) and abs(probs.sum() - 1) < 1e-4
            achieved = float(probs @ ((np.arange(1, s["N"] + 1) - 1) / np.arange(1, s["N"] + 1)))
            assert abs(achieved - s["achieved_rate"]) < 1e-4 and abs(achieved - s["rate"]) < 2e-3
    lstm = _summaries(sweeps["fig6"])
    assert sorted(d["choices"]["dropout"] for d in lstm) == ["bernoulli", "row"]  # the command line's list
    for d in lstm:
        assert d["choices"]["family"] == "lstm" and d["choices"]["arch"] == "3x16"  # experiment=fig6 is lstm3
        assert d["choices"]["rate"] == 0.5 and "test_ppl" in d["final"] and len(d["curve"]) == 2


class SleepyCallback(pl.Callback):
    """Sleeps in every validation batch (must not count as training time) and after every training
    batch (must count); records the wall time between train start and end as seen from outside."""

    def __init__(self, val_sleep: float, train_sleep: float, record: str):
        self.val_sleep, self.train_sleep, self.record = val_sleep, train_sleep, record

    def on_train_start(self, trainer, pl_module):
        self.t0 = time.perf_counter()
        self.val_starts = []

    def on_validation_start(self, trainer, pl_module):
        self.val_starts.append(time.perf_counter() - self.t0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.train_sleep)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        time.sleep(self.val_sleep)

    def on_train_end(self, trainer, pl_module):
        with open(self.record, "w") as fh:
            json.dump({"wall": time.perf_counter() - self.t0, "val_starts": self.val_starts,
                       "val_batches": trainer.num_val_batches}, fh)


def test_train_time_excludes_validation(synth_data, tmp_path):
    val_sleep, train_sleep = 0.4, 0.15
    record = tmp_path / "wall.json"
    cfg = compose_cfg(small_overrides(synth_data, tmp_path / "o") + [
        "logger=none", "trainer.limit_train_batches=2", "trainer.val_check_interval=1", "data.val_size=100",
        "test=false", "+callbacks.sleepy._target_=test_report.SleepyCallback", f"+callbacks.sleepy.val_sleep={val_sleep}",
        f"+callbacks.sleepy.train_sleep={train_sleep}", f"+callbacks.sleepy.record={record}"])
    run(cfg)
    d = json.loads((tmp_path / "o" / "summary.json").read_text())
    outside = json.loads(record.read_text())
    slept_in_val = val_sleep * 2 * outside["val_batches"][0]  # 2 validations
    t = d["timing"]
    assert d["status"] == "fit" and "test_acc" not in d["final"]  # test=false: the after-fit summary
    assert t["train_time_s"] >= 2 * train_sleep  # training-side time counts
    assert t["validation_s"] >= slept_in_val
    assert t["train_time_s"] <= outside["wall"] - slept_in_val + 0.05  # validation time does not
    # each curve point's clock stops at its validation's start and excludes the validations before it
    per_val = slept_in_val / 2
    for i, (point, seen_outside) in enumerate(zip(d["curve"], outside["val_starts"])):
        assert (i + 1) * train_sleep <= point["train_time_s"] <= seen_outside - i * per_val + 0.05


class SpinnerCallback(pl.Callback):
    """Runs a busy-looping process beside training (another job on the machine) while the
    training process itself mostly sleeps."""

    def __init__(self, train_sleep: float):
        self.train_sleep, self.proc = train_sleep, None

    def on_train_start(self, trainer, pl_module):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.train_sleep)

    def on_train_end(self, trainer, pl_module):
        self.proc.kill()
        self.proc.wait()


def test_cpu_share_counts_other_work_only():
    from callbacks.run_summary import CpuShare

    ticks = iter([(100.0, 10.0), (103.0, 11.5), (110.0, 12.0), (112.5, 12.5)])
    walls = iter([0.0, 2.0, 5.0, 7.0])
    share = CpuShare(clock=lambda: next(ticks), wall=lambda: next(walls))
    share.start()
    share.stop()  # 3 s of machine time, 1.5 of them ours, over 2 s of wall time
    assert share.cores() == 0.75
    resumed = CpuShare(clock=lambda: next(ticks), wall=lambda: next(walls))
    resumed.restore(share.state())  # a checkpoint's totals carry over
    resumed.start()
    resumed.stop()  # 2.5 - 0.5 = 2 s more over 2 s
    assert resumed.cores() == round((1.5 + 2.0) / 4.0, 3)
    blind = CpuShare(clock=lambda: None)
    blind.start()
    blind.stop()
    assert blind.cores() is None  # no /proc/stat: unknown, not zero


def test_summary_names_the_commit_of_a_copy_without_git(monkeypatch):
    """A lent GPU machine gets a copy of the checkout without .git; its summaries must still name the code."""
    from callbacks import run_summary

    monkeypatch.setattr(run_summary, "REPO", run_summary.Path("/nonexistent-checkout"))
    monkeypatch.delenv("ARDROP_GIT_COMMIT", raising=False)
    assert run_summary.machine_info()["git_commit"] is None
    monkeypatch.setenv("ARDROP_GIT_COMMIT", "0123abcd+dirty")
    info = run_summary.machine_info()
    assert (info["git_commit"], info["git_dirty"]) == ("0123abcd", True)
    monkeypatch.setenv("ARDROP_GIT_COMMIT", "0123abcd")
    assert run_summary.machine_info()["git_dirty"] is False
    monkeypatch.undo()  # a real checkout: git wins over the variable
    monkeypatch.setenv("ARDROP_GIT_COMMIT", "0123abcd")
    assert run_summary.machine_info()["git_commit"] != "0123abcd"


def test_gpu_training_time_waits_for_queued_kernels(monkeypatch, tmp_path):
    """CUDA work is asynchronous: the clock must wait for it at train end and validation start."""
    from types import SimpleNamespace

    from callbacks.run_summary import RunSummary

    queued = {"s": 0.0}
    calls = []

    def synchronize(device=None):  # stands in for the GPU draining its queue
        calls.append(device)
        time.sleep(queued["s"])
        queued["s"] = 0.0

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    module = SimpleNamespace(device=torch.device("cuda", 0))
    trainer = SimpleNamespace(global_step=3, sanity_checking=False)
    cb = RunSummary(str(tmp_path))
    cb.on_train_start(trainer, module)
    queued["s"] = 0.3  # three steps' kernels still running when the host reaches the end
    cb.on_train_end(trainer, module)
    assert cb.train_time_s >= 0.3, cb.train_time_s
    assert calls and all(d == torch.device("cuda", 0) for d in calls)
    cpu = RunSummary(str(tmp_path))
    calls.clear()
    cpu.on_train_start(trainer, SimpleNamespace(device=torch.device("cpu")))
    cpu.on_train_end(trainer, SimpleNamespace(device=torch.device("cpu")))
    assert calls == []  # CPU runs never touch CUDA


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_summary_names_a_run_that_shared_the_cpus(synth_data, tmp_path):
    cfg = compose_cfg(small_overrides(synth_data, tmp_path / "o") + [
        "logger=none", "trainer.limit_train_batches=4", "data.val_size=100", "test=false", "search=maxent",
        "+callbacks.spin._target_=test_report.SpinnerCallback", "+callbacks.spin.train_sleep=0.3"])
    run(cfg)
    d = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert d["timing"]["other_cpu_cores"] >= 0.5  # the spinner held about one core
    res = build_report([tmp_path / "o"], tmp_path / "rep")
    assert any("CPU cores busy while it trained" in n for n in res["notes"])
    rows = list(csv.DictReader(open(tmp_path / "rep" / "runs.csv")))
    assert float(rows[0]["other_cpu_cores"]) == d["timing"]["other_cpu_cores"]


class StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


class FailAtStep(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"injected failure at step {self.step}")


def test_resumed_run_continues_clock_and_curves(synth_data, tmp_path):
    """Checkpoints carry the summary's clock: a stopped run resumed from last.ckpt reports the whole run."""
    base = small_overrides(synth_data, tmp_path / "o") + [
        "logger=none", "trainer.max_epochs=2", "trainer.limit_train_batches=2", "data.val_size=100", "test=false",
        "search=maxent", "callbacks.interval_checkpoint=null"]
    run(compose_cfg(base + ["+callbacks.stop._target_=test_report.StopAfterFirstEpoch"]))
    first = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert first["timing"]["steps"] == 2 and len(first["curve"]) == 1
    run(compose_cfg(base + [f"ckpt_path={tmp_path / 'o' / 'checkpoints' / 'last.ckpt'}"]))
    d = json.loads((tmp_path / "o" / "summary.json").read_text())
    t = d["timing"]
    assert t["steps"] == 4 and t["resumed_from_step"] == 2
    assert [p["step"] for p in d["curve"]] == [2, 4] and d["curve"][0] == first["curve"][0]
    assert t["train_time_s"] > d["curve"][0]["train_time_s"] and d["curve"][1]["train_time_s"] > d["curve"][0]["train_time_s"]
    assert [p[0] for p in d["loss_curve"]["points"]] == [1, 2, 3, 4]


def test_failed_run_leaves_a_summary(synth_data, tmp_path):
    cfg = compose_cfg(small_overrides(synth_data, tmp_path / "o") + [
        "logger=none", "trainer.limit_train_batches=4", "data.val_size=100", "search=maxent",
        "+callbacks.fail._target_=test_report.FailAtStep", "+callbacks.fail.step=2"])
    with pytest.raises(RuntimeError, match="injected failure"):
        run(cfg)
    d = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert d["status"] == "failed" and "injected failure at step 2" in d["error"]
    assert d["timing"]["steps"] == 2 and d["timing"]["train_time_s"] > 0
    res = build_report([tmp_path / "o"], tmp_path / "rep")  # listed, left out of the tables
    assert "table1.md" in res["skipped"] and any("status failed" in n for n in res["notes"])
    assert "failed" in (tmp_path / "rep" / "runs.csv").read_text()


# -- the report -----------------------------------------------------------------------------
def _cells(md: str, first: str) -> list[list[str]]:
    """Rows of the markdown tables in ``md`` whose first cell is ``first``."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines() if line.startswith("|")]
    return [r for r in rows if r[0] == first]


def _parse(cell: str) -> tuple[float, float | None, int]:
    m = re.fullmatch(r"x?([-+]?[\d.]+)(?: ± ([\d.]+))? \(n=(\d+)\)", cell)
    assert m, cell
    return float(m[1]), (float(m[2]) if m[2] else None), int(m[3])


def test_report_numbers_match_the_summaries(sweeps, tmp_path):
    out = tmp_path / "results"
    lines = []
    res = build_report([sweeps["table1"], sweeps["fig6"]], out, fig5_arch="1024x64", progress=lines.append)
    assert res["runs"] == 14
    names = {p.name for p in res["written"]}
    assert {"table1.md", "table2.md", "fig5.png", "fig6.png", "patterns.png", "runs.csv", "report.md"} <= names
    assert any("wrote" in s and "table1.md" in s for s in lines)

    docs = [d for d in _summaries(sweeps["table1"])]
    by = {(d["choices"]["dropout"], d["choices"]["rate"], d["choices"]["seed"]): d for d in docs}
    header = next(r for r in ([c.strip() for c in line.strip().strip("|").split("|")]
                              for line in (out / "table1.md").read_text().splitlines()) if r[0] == "rate")
    col = {name: i for i, name in enumerate(header)}
    rows = _cells((out / "table1.md").read_text(), "0.5") + _cells((out / "table1.md").read_text(), "0.7")
    assert len(rows) == 4  # 2 rates x (row, tile)
    for row in rows:
        rate, kind = float(row[col["rate"]]), row[col["kind"]]
        assert row[col["size"]] == "1024x64"
        for label, k in (("Bernoulli acc %", "bernoulli"), ("approx acc %", kind)):
            accs = [100 * by[(k, rate, s)]["final"]["test_acc"] for s in (0, 1)]
            mean, std, n = _parse(row[col[label]])
            assert n == 2 and mean == pytest.approx(statistics.fmean(accs), abs=0.006)
            assert std == pytest.approx(statistics.stdev(accs), abs=0.006)
        ratios = [by[("bernoulli", rate, s)]["timing"]["train_time_s"] / by[(kind, rate, s)]["timing"]["train_time_s"]
                  for s in (0, 1)]
        mean, std, n = _parse(row[col["speedup"]])
        assert n == 2 and mean == pytest.approx(statistics.fmean(ratios), abs=0.006)
        # accuracy at equal wall time, recomputed with numpy's interpolation; a pair whose shorter
        # training time ends before one run's first validation has no value there
        deltas = []
        for s in (0, 1):
            b, a = by[("bernoulli", rate, s)], by[(kind, rate, s)]
            t = min(b["timing"]["train_time_s"], a["timing"]["train_time_s"])
            if any(t < d["curve"][0]["train_time_s"] for d in (a, b)):
                continue
            interp = [np.interp(t, [p["train_time_s"] for p in d["curve"]], [p["val_acc"] for p in d["curve"]])
                      for d in (a, b)]
            deltas.append(100 * (interp[0] - interp[1]))
        cell = row[col["Δ pp at equal time"]]
        if deltas:
            mean, _, n = _parse(cell)
            assert n == len(deltas) and mean == pytest.approx(statistics.fmean(deltas), abs=0.006)
        else:
            assert cell == "—"
        paper = paper_numbers.TABLE1[("1024x64", rate, kind)]
        assert row[col["paper Bernoulli %"]] == f"{paper[0]:.2f}" and row[col["paper speedup"]] == f"x{paper[2]:.2f}"

    t2 = (out / "table2.md").read_text()
    lstm = {d["choices"]["dropout"]: d for d in _summaries(sweeps["fig6"])}
    (row,) = _cells(t2, "3x16")
    assert row[2] == "row"
    assert _parse(row[3])[0] == pytest.approx(lstm["bernoulli"]["final"]["test_ppl"], abs=0.006)
    assert _parse(row[4])[0] == pytest.approx(lstm["row"]["final"]["test_ppl"], abs=0.006)
    ratio = lstm["bernoulli"]["timing"]["train_time_s"] / lstm["row"]["timing"]["train_time_s"]
    assert _parse(row[9]) == (pytest.approx(ratio, abs=0.006), None, 1)
    assert row[-1] == "—"  # 16 units: the paper's 1000-unit numbers are not shown

    for name in ("fig5.png", "fig6.png", "patterns.png"):
        blob = (out / name).read_bytes()
        assert blob.startswith(PNG_MAGIC) and len(blob) > 10_000, name
    with open(out / "runs.csv") as fh:
        listed = list(csv.DictReader(fh))
    assert len(listed) == 14 and {r["status"] for r in listed} == {"tested"}


def _coverage_rows(md: str) -> dict[str, str]:
    part = md.split("## Coverage of the paper's rows", 1)[1]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in part.splitlines()
            if line.startswith("|") and not line.startswith("|---")]
    return {r[0]: r[1] for r in rows[1:]}


def test_tables_say_which_paper_rows_have_no_tested_pair(sweeps, tmp_path):
    """Every row of the paper's Tables 1 and 2 is listed with the seeds we have for it; a pair counts only
    when both runs were tested. One run's test result is removed from a copy of the sweep to check that."""
    copy = tmp_path / "runs"
    shutil.copytree(sweeps["table1"], copy)
    for f in copy.rglob("summary.json"):
        d = json.loads(f.read_text())
        c = d["choices"]
        if (c["dropout"], c["rate"], c["seed"]) == ("tile", 0.7, 1):
            d["final"].pop("test_acc")
            f.write_text(json.dumps(d))
    out = tmp_path / "o"
    build_report([copy, sweeps["fig6"]], out)
    cov = _coverage_rows((out / "table1.md").read_text())
    assert set(cov) == {f"{a} / {r} / {k}" for a, r, k in paper_numbers.TABLE1}
    for (arch, rate, kind) in paper_numbers.TABLE1:
        cell = cov[f"{arch} / {rate} / {kind}"]
        if arch != "1024x64":
            assert cell == "**no tested pair**"
        elif (rate, kind) == (0.7, "tile"):
            assert cell.endswith("seed 0")
        else:
            assert cell.endswith("seeds 0, 1")
    assert "4 of the paper's 16 rows have at least one tested pair" in (out / "table1.md").read_text()
    # the LSTM runs have 16 units: none of the paper's 1000-unit rows is covered
    cov2 = _coverage_rows((out / "table2.md").read_text())
    assert len(cov2) == 2 * len(paper_numbers.TABLE2) and set(cov2.values()) == {"**no tested pair**"}


def test_tables_lead_with_their_own_experiment(sweeps, tmp_path):
    """Table 2 opens with the `table2` protocol even where another protocol's name sorts first: the paper's
    protocol is the table, a learning check beside it is not."""
    src = tmp_path / "runs"
    src.mkdir()
    for d in _summaries(sweeps["fig6"]):
        for exp, max_steps in (("learning_lstm", 7), ("table2", None)):
            doc = json.loads(json.dumps(d))
            doc["choices"]["experiment"] = exp
            doc["run_id"] = f"{exp}-{doc['run_id']}"
            if max_steps is not None:
                doc["config"]["trainer"]["max_steps"] = max_steps
            (src / f"{doc['run_id']}.json").write_text(json.dumps(doc))
    build_report([src], tmp_path / "o")
    heads = re.findall(r"^## Protocol `([^`]+)`", (tmp_path / "o" / "table2.md").read_text(), flags=re.M)
    assert heads == ["table2", "learning_lstm"]


def _first_time_at_or_below(curve: list[tuple[float, float]], target: float) -> float:
    for i, (t, v) in enumerate(curve):
        if v <= target:
            if i == 0:
                return t
            (t0, v0) = curve[i - 1]
            return t0 + (t - t0) * (v0 - target) / (v0 - v)
    raise AssertionError("never reached")


def test_fig6_caption_speedup_is_the_time_to_target_ratio(sweeps):
    """fig6.png's caption puts our time-to-target ratio beside the paper's convergence speedup; recomputed here."""
    from ardrop.report import find_summaries
    from ardrop.report.figures import fig6_speedups

    runs, _ = find_summaries([sweeps["fig6"]])
    docs = {d["choices"]["dropout"]: d for d in _summaries(sweeps["fig6"])}
    curves = {k: [(p["train_time_s"], p["val_ppl"]) for p in d["curve"]] for k, d in docs.items()}
    target = max(min(v for _, v in c) for c in curves.values())  # the worse of the two best perplexities
    expected = _first_time_at_or_below(curves["bernoulli"], target) / _first_time_at_or_below(curves["row"], target)
    got = fig6_speedups(runs)
    assert list(got) == ["row"] and got["row"] == pytest.approx(expected, rel=1e-9)


def _value_at_time(curve: list[tuple[float, float]], t: float) -> float | None:
    """Linear between validations, the last value after the last one, None before the first (the report's rule)."""
    assert curve
    if t < curve[0][0]:
        return None
    for (t0, v0), (t1, v1) in zip(curve, curve[1:]):
        if t <= t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return curve[-1][1]


def test_table2_figure_pairs_match_the_summaries(sweeps, tmp_path):
    """table2.png draws each seed's pair: its speedup and equal-time perplexity difference, recomputed here."""
    from ardrop.report import find_summaries
    from ardrop.report.figures import table2_points

    runs, _ = find_summaries([sweeps["table1"], sweeps["fig6"]])
    notes = []
    protocol, points = table2_points(runs, notes)
    docs = {d["choices"]["dropout"]: d for d in _summaries(sweeps["fig6"])}
    tb, tr = (docs[k]["timing"]["train_time_s"] for k in ("bernoulli", "row"))
    curves = {k: sorted((p["train_time_s"], p["val_ppl"]) for p in d["curve"] if p.get("val_ppl") is not None)
              for k, d in docs.items()}
    t = min(tb, tr)
    assert protocol == "fig6" and notes == [] and len(points) == 1
    (p,) = points
    assert (p["arch"], p["rate"], p["variant"], p["seed"]) == ("3x16", 0.5, "row", 0)
    assert p["speedup"] == pytest.approx(tb / tr, rel=1e-12)
    vr, vb = _value_at_time(curves["row"], t), _value_at_time(curves["bernoulli"], t)
    # these tiny runs validate within milliseconds of their end, so timing noise can put the shorter run's
    # end before the other's first validation: then there is no equal-time value
    assert p["eq_val_ppl"] == (None if vr is None or vb is None else pytest.approx(vr - vb, rel=1e-9, abs=1e-9))

    src = tmp_path / "lstm_runs"  # the same runs, both timed past every validation: always drawable
    src.mkdir()
    end = 1.0 + max(pt["train_time_s"] for d in docs.values() for pt in d["curve"])
    for d in docs.values():
        d["timing"]["train_time_s"] = end
        (src / f"{d['run_id']}.json").write_text(json.dumps(d))
    build_report([src], tmp_path / "lstm")
    assert (tmp_path / "lstm" / "table2.png").read_bytes().startswith(PNG_MAGIC)
    res = build_report([sweeps["table1"]], tmp_path / "mlp")  # no LSTM runs: skipped, saying what to run
    assert "experiment=table2" in res["skipped"]["table2.png"] and not (tmp_path / "mlp" / "table2.png").exists()


def test_report_cli_collect_and_missing_runs(sweeps, tmp_path):
    """The command as documented: default figure choices (no 2048x2048 runs -> fig5 skipped, saying why),
    --collect copies, and a report rebuilt from the copies alone gives the same tables."""
    out, copies = tmp_path / "a", tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "ardrop.report", str(sweeps["table1"]), str(sweeps["fig6"]),
                          "--out", str(out), "--collect", str(copies)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "skipped fig5.png" in res.stderr and "2048x2048" in res.stderr
    assert "fig5.png" in res.stdout  # the summary line names what was skipped
    assert "fig5.png" in (out / "report.md").read_text() and not (out / "fig5.png").exists()
    collected = sorted(copies.glob("*.json"))
    assert len(collected) == 14 and all(p.name.startswith(("table1-mlp_1024x64-", "fig6-lstm3-")) for p in collected)
    again = build_report([copies], tmp_path / "b")
    assert again["runs"] == 14
    for name in ("table1.md", "table2.md"):
        assert (tmp_path / "b" / name).read_text() == (out / name).read_text()
    # the sweep dir and its copies together: each run counted once
    assert build_report([sweeps["table1"], copies], tmp_path / "c")["runs"] == 14


def test_report_errors(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "other.json").write_text("{}")
    with pytest.raises(ReportError, match="no run summaries found under it.*summary.json"):
        build_report([empty], tmp_path / "out")
    with pytest.raises(ReportError, match="no such file or directory"):
        build_report([tmp_path / "nope"], tmp_path / "out")
    with pytest.raises(ReportError, match="not a run summary"):
        build_report([empty / "sub" / "other.json"], tmp_path / "out")
    res = subprocess.run([sys.executable, "-m", "ardrop.report", str(empty), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert res.returncode == 2 and "error:" in res.stderr and str(empty) in res.stderr


def test_curve_interpolation():
    curve = [(1.0, 0.5), (3.0, 0.9), (5.0, 0.8)]
    assert value_at(curve, 0.5) is None  # before the first validation: unknown
    assert value_at(curve, 2.0) == pytest.approx(0.7)
    assert value_at(curve, 9.0) == 0.8
    assert time_to(curve, 0.7, higher_is_better=True) == pytest.approx(2.0)
    assert time_to(curve, 0.5, higher_is_better=True) == 1.0
    assert time_to(curve, 0.95, higher_is_better=True) is None
    ppl = [(1.0, 300.0), (2.0, 200.0)]
    assert time_to(ppl, 250.0, higher_is_better=False) == pytest.approx(1.5)


def test_experiment_sweeps_compose():
    """`-m experiment=<name>` alone sweeps the documented lists; each experiment names its sweep dir
    outputs/multiruns/<name>/, which the composed config uses (conf/config.yaml lists the experiment after _self_)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from conftest import CONF

    expected = {
        "table1": {"model": "mlp_1024x64,mlp_1024x1024,mlp_2048x2048,mlp_4096x4096", "rate": "0.5,0.7",
                   "dropout": "bernoulli,row,tile", "seed": "0,1,2"},
        "fig5": {"rate": "0.3,0.4,0.5,0.6,0.7", "dropout": "bernoulli,row,tile", "seed": "0"},
        "table2": {"model": "lstm2,lstm3", "rate": "0.3,0.5,0.7", "dropout": "bernoulli,row,tile", "seed": "0"},
        "fig6": {"rate": "0.5", "dropout": "bernoulli,row,tile", "seed": "0"},
    }
    for name, params in expected.items():
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
        assert {k: str(v) for k, v in cfg.hydra.sweeper.params.items()} == params, name
        text = (REPO / "conf" / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_")
        assert OmegaConf.create(text).hydra.sweep.dir.startswith(f"outputs/multiruns/{name}/")
        assert cfg.hydra.sweep.dir.startswith(f"outputs/multiruns/{name}/"), cfg.hydra.sweep.dir
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        t2 = compose("config", overrides=["experiment=table2", "model=lstm3"])
        f6 = compose("config", overrides=["experiment=fig6"])
        f5 = compose("config", overrides=["experiment=fig5"])
    assert t2.model.num_layers == 3 and t2.trainer.limit_train_batches == 0.5 and t2.trainer.max_epochs == 1
    assert f6.model.num_layers == 3 and f6.trainer.val_check_interval == 0.1
    assert list(f5.model.hidden) == [2048, 2048] and f5.trainer.max_epochs == 20


# -- issue 13's learning check (learning.md / learning.png) ---------------------------------
def _learning_copy(doc, kind, run_id, losses, val_ppl, seed=0, every=1):
    """A copy of a real LSTM summary with the given per-step losses and final validation perplexity."""
    d = json.loads(json.dumps(doc))
    d["run_id"], d["choices"]["dropout"], d["choices"]["seed"] = run_id, kind, seed
    d["choices"]["vocab_size"] = 10000
    d["config"]["trainer"].update(max_steps=-1, limit_train_batches=None, log_every_n_steps=1)
    d["loss_curve"] = {"columns": ["step", "train_time_s", "loss"], "every_n_log_steps": every,
                       "points": [[s, 0.1 * s, x] for s, x in sorted(losses.items())][::every]}
    d["curve"] = [{"step": 600, "epoch": 0, "train_time_s": 60.0, "val_ppl": 2 * val_ppl},
                  {"step": 1200, "epoch": 0, "train_time_s": 120.0, "val_ppl": val_ppl}]
    return d


def test_learning_table_applies_issue_13s_criteria(sweeps, tmp_path):
    """Synthetic loss curves on real summaries: the table's maxima, ratios and verdicts against values
    computed here; a thinned curve is left out (it could hide a spike)."""
    lstm = {d["choices"]["dropout"]: d for d in _summaries(sweeps["fig6"])}
    base = {s: 9.0 - 2 * s / 1200 for s in range(1, 1201)}
    row = {s: x + 0.2 for s, x in base.items()}
    row[50] = 9.5  # above ln V before the warm-up ends: allowed
    tile = {s: x + 0.1 for s, x in base.items()}
    tile[500] = 9.3  # above ln V = 9.21 after it: fails
    src = tmp_path / "runs"
    src.mkdir()
    for name, doc in (("b", _learning_copy(lstm["bernoulli"], "bernoulli", "b0", base, 400.0)),
                      ("r", _learning_copy(lstm["row"], "row", "r0", row, 430.0)),
                      ("t", _learning_copy(lstm["row"], "tile", "t0", tile, 410.0)),
                      ("b1", _learning_copy(lstm["bernoulli"], "bernoulli", "b1", base, 400.0, seed=1)),
                      ("r1", _learning_copy(lstm["row"], "row", "r1", row, 430.0, seed=1, every=2))):
        (src / f"{name}.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    res = build_report([src], out)
    assert {"learning.md", "learning.png"} <= {p.name for p in res["written"]}
    assert (out / "learning.png").read_bytes().startswith(PNG_MAGIC)
    md = (out / "learning.md").read_text()
    rows = _cells(md, "3x16")
    assert [(r[2], r[3]) for r in rows] == [("row", "0"), ("tile", "0")]  # seed 1's thinned curve: no row
    (r_row, r_tile) = rows
    assert float(r_row[4]) == pytest.approx(max(row[s] for s in range(101, 1001)), abs=0.006)
    assert float(r_row[5]) == pytest.approx(math.log(10000), abs=0.006)
    assert float(r_row[6]) == pytest.approx(base[1000], abs=6e-4) and float(r_row[7]) == pytest.approx(row[1000], abs=6e-4)
    assert float(r_row[8]) == pytest.approx(row[1000] / base[1000], abs=6e-4)
    mean_b = statistics.fmean(base[s] for s in range(901, 1001))
    mean_r = statistics.fmean(row[s] for s in range(901, 1001))
    assert float(r_row[11]) == pytest.approx(mean_r / mean_b, abs=6e-4)
    assert float(r_row[14]) == pytest.approx(430 / 400, abs=6e-4)
    assert r_row[-1] == "✓"
    assert float(r_tile[4]) == pytest.approx(9.3, abs=0.006) and r_tile[-1] == "✗"
    # a rerun of the spiking tile run without the spike is listed beside it, not in its place
    rerun = _learning_copy(lstm["row"], "tile", "t0b", {s: x + 0.1 for s, x in base.items()}, 410.0)
    rerun["started_at"] = "2999-01-01T00:00:00+0000"
    (src / "t_rerun.json").write_text(json.dumps(rerun))
    build_report([src], out)
    tiles = [r for r in _cells((out / "learning.md").read_text(), "3x16") if r[2] == "tile"]
    assert [(r[3].split(" (")[0], r[-1]) for r in tiles] == [("0", "✗"), ("0", "✓")]
    assert "run 2 of 2, 2999-01-01" in tiles[1][3]
    (src / "t_rerun.json").unlink()
    # the same row with a one-epoch perplexity 12% above Bernoulli's fails on that criterion alone
    (src / "r.json").write_text(json.dumps(_learning_copy(lstm["row"], "row", "r0", row, 448.0)))
    build_report([src], out)
    assert _cells((out / "learning.md").read_text(), "3x16")[0][-1] == "✗"


def test_learning_figure_keeps_protocols_apart(sweeps, tmp_path):
    """A 1000-step pair and a one-epoch pair of one size and rate are two comparisons: two panels, not one
    panel with both Bernoulli curves drawn over each other."""
    from ardrop.report import find_summaries, learning_fig, learning_layout, learning_panels

    lstm = {d["choices"]["dropout"]: d for d in _summaries(sweeps["fig6"])}
    base = {s: 9.0 - 2 * s / 1200 for s in range(1, 1201)}
    src = tmp_path / "runs"
    src.mkdir()
    for proto, max_steps in (("a", -1), ("b", 1000)):
        for kind in ("bernoulli", "row"):
            doc = _learning_copy(lstm[kind], kind, f"{proto}{kind}", base, 400.0)
            doc["config"]["trainer"]["max_steps"] = max_steps
            (src / f"{proto}{kind}.json").write_text(json.dumps(doc))
    runs, _ = find_summaries([src])
    panels = learning_panels(runs)
    assert len(panels) == 2 and len({k[0] for k in panels}) == 2
    assert all(sorted(r.kind for r, _ in rs) == ["bernoulli", "row"] for rs in panels.values())
    where = learning_layout(panels)
    assert len(set(where.values())) == 2 and {j for _, j in where.values()} == {0}  # one rate: two rows
    assert learning_fig(runs, tmp_path / "l.png") is None and (tmp_path / "l.png").read_bytes().startswith(PNG_MAGIC)


def test_learning_table_reads_real_runs(sweeps):
    """The 2-step LSTM sweep (every step logged): the losses in the table are the runs' own."""
    from ardrop.report import find_summaries, learning_table

    runs, _ = find_summaries([sweeps["fig6"]])
    md = learning_table(runs, step=2, warmup=0)
    lstm = {d["choices"]["dropout"]: d for d in _summaries(sweeps["fig6"])}
    at2 = {k: next(p[2] for p in d["loss_curve"]["points"] if p[0] == 2) for k, d in lstm.items()}
    (row,) = _cells(md, "3x16")
    assert float(row[6]) == pytest.approx(at2["bernoulli"], abs=6e-4)
    assert float(row[7]) == pytest.approx(at2["row"], abs=6e-4)
    assert row[-1] in ("✓", "✗")  # 2 steps: not judged here, but not "too short"


def test_a_failed_variant_does_not_rename_the_usable_rows(sweeps, tmp_path):
    """A diverged run with other groups is listed under its own name; the tested rows keep their plain names."""
    docs = [d for d in _summaries(sweeps["fig6"]) if d["status"] in ("tested", "fit")]
    approx = next(d for d in docs if d["choices"]["dropout"] in ("row", "tile"))
    failed = copy.deepcopy(approx)
    failed.update(status="failed", error="TrainingDiverged: training diverged at step 3", run_id="diverged")
    failed["choices"]["groups"] = "other-groups"
    for i, d in enumerate(docs + [failed]):
        (tmp_path / f"{i}.json").write_text(json.dumps(d))
    from ardrop.report import find_summaries, label_variants
    runs, _ = find_summaries([tmp_path])
    label_variants(runs)
    kind = approx["choices"]["dropout"]
    assert {r.variant for r in runs if r.status != "failed" and r.kind == kind} == {kind}
    assert [r.variant for r in runs if r.status == "failed"] == [f"{kind} (groups=other-groups, "
                                                                    f"{approx['choices']['search']['method']}, "
                                                                    f"N={approx['choices']['search']['max_dp']})"]


def test_report_notes_a_run_collected_before_its_test(sweeps, tmp_path):
    """A summary copied while its run was still testing says so, instead of silently empty test columns."""
    doc = _summaries(sweeps["fig6"])[0]
    doc["status"] = "fit"
    doc["final"] = {k: v for k, v in doc["final"].items() if not k.startswith("test_")}
    (tmp_path / "a.json").write_text(json.dumps(doc))
    res = build_report([tmp_path / "a.json"], tmp_path / "out")
    assert any("trained but not tested yet" in n for n in res["notes"])
    doc["config"]["test"] = False  # a run told not to test: nothing to say
    (tmp_path / "a.json").write_text(json.dumps(doc))
    res = build_report([tmp_path / "a.json"], tmp_path / "out")
    assert not any("not tested" in n for n in res["notes"])


def test_collect_leaves_out_a_run_still_testing(sweeps, tmp_path):
    """A copy taken between fit and test would keep empty test columns in docs/results/runs until collected again."""
    from ardrop.report.build import collect
    from ardrop.report.runs import find_summaries

    doc = _summaries(sweeps["fig6"])[0]
    doc["status"] = "fit"
    doc["final"] = {k: v for k, v in doc["final"].items() if not k.startswith("test_")}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "testing.json").write_text(json.dumps(doc))
    untested = dict(doc, config=dict(doc["config"], test=False), run_id="f" * 32)
    (tmp_path / "in" / "untested.json").write_text(json.dumps(untested))
    runs, _ = find_summaries([tmp_path / "in"])
    said = []
    written = collect(runs, tmp_path / "out", said.append)
    assert len(runs) == 2 and len(written) == 1 == len(list((tmp_path / "out").glob("*.json")))
    assert json.loads(written[0].read_text())["config"]["test"] is False  # told not to test: finished as it is
    assert any("testing.json" in s and "not tested yet" in s for s in said)


def test_a_gpu_sweep_of_an_experiment_is_its_own_named_protocol(tmp_path):
    """trainer=gpu runs of table2 must not pool with the CPU table2 runs, nor rename them."""
    from pathlib import Path

    from ardrop.report.runs import Run, label_protocols

    def doc(acc, seed):
        return {"choices": {"experiment": "table2", "seed": seed},
                "config": {"seed": seed, "trainer": {"accelerator": acc, "max_epochs": 1}}}

    runs = [Run(Path(f"{acc}{s}.json"), doc(acc, s)) for acc in ("cpu", "gpu") for s in (0, 1)]
    label_protocols(runs)
    assert [r.protocol for r in runs] == ["table2", "table2", "table2 (gpu)", "table2 (gpu)"]


def test_protocol_line_says_when_runs_skipped_validation_or_test():
    """A run with `test=false trainer.limit_val_batches=0` (the learning check's 1000-step part) is not described
    as validated every half epoch and tested on its last weights."""
    from pathlib import Path

    from ardrop.report import Run, protocol_line

    def doc(**over):
        cfg = {"trainer": {"max_epochs": 1, "max_steps": 1000, "val_check_interval": 0.5, "gradient_clip_val": 5.0},
               "data": {"batch_size": 20, "seq_len": 35}, "model": {"optimizer": "lazy_sgd", "lr": 1.0},
               "test": True, "test_ckpt": "last"}
        for k, v in over.items():
            (cfg["trainer"] if k == "limit_val_batches" else cfg)[k] = v
        return {"config": cfg, "timing": {"steps": 1000}}

    tested = protocol_line([Run(Path("a"), doc())])
    assert "val_check_interval 0.5" in tested and "tested checkpoint: last" in tested
    bare = protocol_line([Run(Path("b"), doc(test=False, limit_val_batches=0))])
    assert "no validation" in bare and "val_check_interval" not in bare
    assert "tested checkpoint: not tested" in bare and "last" not in bare


def test_fig6_prefers_the_fig6_experiment_over_a_larger_table2_group(sweeps, tmp_path):
    """More seeds of the half-epoch Table 2 sweep must not push the one-epoch experiment=fig6 runs out of fig6.png."""
    from ardrop.report import find_summaries
    from ardrop.report.figures import fig6

    docs = _summaries(sweeps["fig6"])
    for seed in (0, 1):  # a Table 2 group of the same LSTM at the same rate, twice as many runs
        for i, d in enumerate(docs):
            d = copy.deepcopy(d)
            d["choices"]["experiment"] = "table2"
            d["config"]["seed"] = d["choices"]["seed"] = seed
            d["run_id"] = f"table2-{seed}-{i}"
            d["config"]["trainer"]["val_check_interval"] = 0.5  # another protocol
            (tmp_path / f"t2-{seed}-{i}.json").write_text(json.dumps(d))
    runs, _ = find_summaries([sweeps["fig6"], tmp_path])
    notes: list[str] = []
    assert fig6(runs, tmp_path / "fig6.png", 0.5, notes) is None
    (note,) = [n for n in notes if n.startswith("fig6.png:")]
    assert note.startswith("fig6.png: 3x16 (fig6) drawn"), note


def test_fig6_draws_every_seed_of_a_variant_in_its_own_style(sweeps, tmp_path, monkeypatch):
    """Five seeds used to cycle four line styles, so seed 4 was drawn exactly like seed 0."""
    import matplotlib.axes

    from ardrop.report import find_summaries
    from ardrop.report.figures import fig6

    docs = _summaries(sweeps["fig6"])
    for seed in range(5):
        for i, d in enumerate(docs):
            d = copy.deepcopy(d)
            d["config"]["seed"] = d["choices"]["seed"] = seed
            d["run_id"] = f"fig6-{seed}-{i}"
            (tmp_path / f"f6-{seed}-{i}.json").write_text(json.dumps(d))
    drawn: list[tuple[str, str, str]] = []
    plot = matplotlib.axes.Axes.plot

    def recording_plot(self, *args, **kwargs):
        lines = plot(self, *args, **kwargs)
        drawn.extend((ln.get_label(), ln.get_linestyle(), ln.get_marker()) for ln in lines)
        return lines

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", recording_plot)
    runs, _ = find_summaries([tmp_path])
    assert fig6(runs, tmp_path / "fig6.png", 0.5, []) is None
    by_variant: dict[str, list[tuple[str, str]]] = {}
    for label, style, marker in drawn:
        variant, _, seed = label.partition(", seed ")
        if seed:
            by_variant.setdefault(variant, []).append((style, marker))
    kinds = {d["choices"]["dropout"] for d in docs}
    assert len(by_variant) == len(kinds) >= 2 and all(len(v) == 5 for v in by_variant.values()), drawn
    for variant, looks in by_variant.items():
        assert len(set(looks)) == 5, (variant, looks)
