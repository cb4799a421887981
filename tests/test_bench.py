import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ardrop import native

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--models", "mlp48x40,lstm2", "--lstm-hidden", "16", "--vocab", "40", "--seq-len", "4", "--lstm-batch", "3",
         "--batch-size", "8", "--repeats", "3", "--rounds", "1", "--warmup", "1", "--tile", "8",
         "--rates", "0.5", "--kinds", "row,tile", "--threads", "1"]


def _run(args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "ardrop.bench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)


def test_bench_smoke_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run([*SMALL, "--json", str(out), "--optimizers", "sgd,fused,lazy"])
    assert proc.returncode == 0, proc.stderr
    assert "speedup" in proc.stdout and "ideal" in proc.stdout
    data = json.loads(out.read_text())
    # raised glibc's thresholds in its own process (no MALLOC_* in this test's environment)
    assert data["config"]["large_buffers_kept"] is True
    assert all(v is None for v in data["config"]["allocator_env"].values())
    assert data["config"]["denormals"] == "flush"
    assert data["config"]["native_kernels"] == (native.compiler() is not None)  # recorded, on where it can build
    rows = data["results"]
    assert {(r["model"], r["kind"], r["optimizer"]) for r in rows} == {
        (m, k, o) for m in ("mlp48x40", "lstm2") for k in ("row", "tile") for o in ("sgd", "fused", "lazy")
    }
    for r in rows:
        assert r["base_ms"] > 0 and r["approx_ms"] > 0 and r["ideal_flop_ratio"] > 1.0
        assert r["expected_ideal_flop_ratio"] > 1.0 and r["steps"] == 3
        assert len(r["approx_times_s"]) == 1 and len(r["approx_times_s"][0]) == 3
        assert all(abs(s["error"]) < 1e-2 for s in r["search"].values())


@pytest.mark.parametrize("bad, match", [(["--kinds", "bernoulli"], "--kinds"), (["--models", "resnet"], "unknown model"),
                                        (["--optimizers", "adam"], "--optimizers"), (["--clip", "0"], "--clip"),
                                        (["--momentum", "1.5"], "--momentum")])
def test_bench_rejects_bad_options(bad, match):
    proc = _run([*SMALL, *bad, "--json", os.devnull])
    assert proc.returncode != 0 and match in proc.stderr


@pytest.mark.parametrize("interleave", ["period", "step"])
def test_time_pair_order(interleave):
    """Which side runs when, with which pattern position: the timing protocol itself."""
    from ardrop.bench_core import time_pair

    calls, pos = [], [None]

    def side(name):
        return lambda: calls.append((name, pos[0]))

    times = time_pair(side("b"), side("a"), lambda s: pos.__setitem__(0, s), steps=3, rounds=2, warmup=0,
                      interleave=interleave)
    assert [len(r) for r in times["base"]] == [3, 3] and [len(r) for r in times["approx"]] == [3, 3]
    if interleave == "step":
        assert calls == [("b", 0), ("a", 0), ("a", 1), ("b", 1), ("b", 2), ("a", 2)] * 2
    else:  # one untimed step at the period's last position, then the period; order swaps per round
        b, a = [("b", 2), ("b", 0), ("b", 1), ("b", 2)], [("a", 2), ("a", 0), ("a", 1), ("a", 2)]
        assert calls == b + a + a + b


@pytest.mark.parametrize("rate", [0.5, 0.7])
def test_expected_flop_ratio_matches_closed_form(rate):
    """Row MLP: E[flops] = 2b(2*784*E[k1] + 3*E[k1]E[k2] + 3*10*E[k2]), E[k] = H * sum_dp p/dp."""
    from ardrop import bench_core
    from ardrop.search import search

    h, b = 96, 8
    spec = bench_core.ModelSpec("mlp", "mlp", sizes=(784, h, h, 10), batch=b)
    p = search(rate, 8).probs
    ek = h * sum(q / dp for dp, q in enumerate(p, 1))
    expected = 2 * b * (2 * 784 * ek + 3 * ek * ek + 3 * 10 * ek)
    dense = 2 * b * (2 * 784 * h + 3 * h * h + 3 * 10 * h)
    assert bench_core.expected_flop_ratio(spec, "row", [p, p], 8) == pytest.approx(dense / expected, rel=1e-12)


def test_default_period_samples_the_joint_distribution():
    """The MLP default period's realised FLOP ratio is close to the expectation; 24 steps is not always."""
    from ardrop import bench, bench_core

    args = bench.parser().parse_args(["--models", "mlp2048", "--rates", "0.5"])
    spec = bench_core.parse_model("mlp2048", args)
    _, approx = bench_core.build_pair(spec, "row", 0.5, 32)
    dense = bench_core.gemm_flops(spec, "row", [None, None], 32)

    def realised(steps, seed):
        args.seed = seed
        seqs, searches = bench_core.site_sequences(approx, 0.5, steps, args)
        flops = sum(bench_core.gemm_flops(spec, "row", [seq[s] for _, seq in seqs], 32) for s in range(steps)) / steps
        return dense / flops, [v["probs"] for v in searches.values()]

    _, probs = realised(8, 0)
    exact = bench_core.expected_flop_ratio(spec, "row", probs, 32)
    period = bench_core.DEFAULT_PERIOD["mlp"]
    long_err = [abs(realised(period, seed)[0] / exact - 1) for seed in range(4)]
    short_err = [abs(realised(24, seed)[0] / exact - 1) for seed in range(4)]
    assert max(long_err) < 0.06 and max(short_err) > 0.06


def test_allocator_keeps_large_buffers_in_process():
    """mallopt from inside the process: a freed 64 MB buffer is reused, not unmapped and page-faulted back.

    Checked through glibc's own statistics (no timing): after freeing, the heap still holds it.
    """
    code = (
        "import ctypes, torch\n"
        "from ardrop.allocator import keep_large_buffers\n"
        "assert keep_large_buffers()\n"
        "class M(ctypes.Structure):\n"
        "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena','ordblks','smblks','hblks','hblkhd','usmblks',"
        "'fsmblks','uordblks','fordblks','keepcost')]\n"
        "libc = ctypes.CDLL('libc.so.6'); libc.mallinfo2.restype = M\n"
        "a = torch.empty(16 << 20); a.fill_(1); del a\n"
        "info = libc.mallinfo2()\n"
        "print(info.hblkhd, info.fordblks)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    mmapped, free_in_heap = map(int, proc.stdout.split())
    assert mmapped < (16 << 20) and free_in_heap >= (64 << 20)  # kept in the heap, not in an mmap, not trimmed


def test_loop_bench_runs_the_real_trainer_beside_the_core(tmp_path):
    """``--loop trainer``: both sides through Trainer.fit on the shipped configs, the core bench beside them."""
    out = tmp_path / "loop.json"
    proc = _run(["--loop", "trainer", "--models", "mlp1024x64", "--rates", "0.5", "--kinds", "row", "--loop-steps", "3",
                 "--loop-warmup", "1", "--rounds", "1", "--repeats", "2", "--warmup", "1", "--threads", "1",
                 "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loop/core" in proc.stdout
    (row,) = json.loads(out.read_text())["results"]
    assert row["model"] == "mlp_1024x64" and row["kind"] == "row" and row["optimizer"] == "LazySGD"  # the configs' default
    assert len(row["per_round_s"]["bernoulli"]) == 1 and len(row["per_round_s"]["row"]) == 1
    for key in ("loop_bern_ms", "loop_approx_ms", "core_bern_ms", "core_approx_ms"):
        assert row[key] > 0
    assert row["loop_over_core"] == row["loop_approx_ms"] / row["core_approx_ms"]
    # the core side trains with the config's recipe, so loop/core is the loop's own overhead
    assert row["core_recipe"] == {"momentum": 0.9, "weight_decay": 5e-4, "clip": 1.0}


def test_loop_bench_rejects_a_model_without_config():
    proc = _run(["--loop", "trainer", "--models", "mlp77x5", "--json", os.devnull])
    assert proc.returncode != 0 and "shipped model config" in proc.stderr


def test_the_three_bench_tables_share_one_printer(capsys):
    """CPU, GPU and loop tables come from bench_core.format_table: columns line up with the header,
    ratios get an x, a missing value prints n/a (the GPU table when cuda_ext is unavailable)."""
    from ardrop.bench_core import format_table

    rows = [{"m": "mlp2048", "a": 58.125, "r": 1.984}, {"m": "lstm2", "a": None, "r": 0.5}]
    lines = format_table(rows, [("model", -10, "m", ""), ("", 2, None, ""), ("ms", 8, "a", ".2f"), ("x", 7, "r", ".2fx")])
    assert lines[0] == "model     " + "  " + "      ms" + "      x"
    assert lines[1] == "-" * len(lines[0])
    assert lines[2] == "mlp2048   " + "  " + "   58.12" + "  1.98x"
    assert lines[3] == "lstm2     " + "  " + "     n/a" + "  0.50x"
    assert all(len(line) == len(lines[0]) for line in lines)
