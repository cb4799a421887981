import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    # re-executed itself under the allocator settings
    assert all(v is not None for v in data["config"]["allocator_env"].values())
    rows = data["results"]
    assert {(r["model"], r["kind"], r["optimizer"]) for r in rows} == {
        (m, k, o) for m in ("mlp48x40", "lstm2") for k in ("row", "tile") for o in ("sgd", "fused", "lazy")
    }
    for r in rows:
        assert r["base_ms"] > 0 and r["approx_ms"] > 0 and r["ideal_flop_ratio"] > 1.0
        assert len(r["approx_times_s"]) == 1 and len(r["approx_times_s"][0]) == 3
        assert all(abs(s["error"]) < 1e-2 for s in r["search"].values())


@pytest.mark.parametrize("bad, match", [(["--kinds", "bernoulli"], "--kinds"), (["--models", "resnet"], "unknown model"),
                                        (["--optimizers", "adam"], "--optimizers")])
def test_bench_rejects_bad_options(bad, match):
    proc = _run([*SMALL, *bad, "--json", os.devnull])
    assert proc.returncode != 0 and match in proc.stderr


@pytest.mark.parametrize("interleave", ["period", "step"])
def test_time_pair_order(interleave):
    """Which side runs when, with which pattern position: the timing protocol itself."""
    from ardrop.bench import time_pair

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
