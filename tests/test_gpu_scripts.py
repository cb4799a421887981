"""scripts/gpu_check.sh and gpu_carry.sh: the prepared GPU session, checked where no GPU is.

A lent GPU machine lives for minutes, so a typo in the script costs the whole lease: the
script must parse, every default step must have a case, and each step must give its
command to the right tool. Run with a CPU-only torch, every step fails fast with the
tools' own "needs a CUDA device" errors, which is enough to show the plumbing works.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _run_script(tmp_path, steps: str, deadline: int) -> tuple[str, str]:
    """gpu_check.sh with these STEPS into tmp_path (OUT=out/, W=w/): its steps.log and stdout."""
    env = dict(os.environ, OUT=str(tmp_path / "out"), W=str(tmp_path / "w"), STEPS=steps, DEADLINE=str(deadline),
               PY=sys.executable)
    res = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=deadline + 80)
    return (tmp_path / "out" / "steps.log").read_text(), res.stdout


def test_scripts_parse():
    for name in ("gpu_check.sh", "gpu_carry.sh"):
        subprocess.run(["bash", "-n", str(REPO / "scripts" / name)], check=True)


def test_every_default_step_has_a_case():
    text = SCRIPT.read_text()
    default = re.search(r'STEPS=\$\{STEPS:-"([^"]+)"\}', text).group(1).split()
    cases = set(re.findall(r"^\s+([a-z0-9_]+)\) ", text, flags=re.M))
    generic = re.compile(r"sweep:(table1|table2|fig5|fig6):[a-z0-9_]+:0\.[0-9]+")
    assert default and {s for s in default if not generic.fullmatch(s)} <= cases, set(default) - cases
    for s in default:
        if s.startswith("sweep:"):
            _, exp, model, _ = s.split(":")
            assert (REPO / "conf" / "experiment" / f"{exp}.yaml").exists(), s
            assert (REPO / "conf" / "model" / f"{model}.yaml").exists(), s


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_step_runs_and_is_packed_without_a_gpu(tmp_path):
    """Without a GPU the bench refuses with its own error; the step records rc=1 and the log is packed."""
    steps, stdout = _run_script(tmp_path, "bench_mlp bogus", deadline=60)
    assert "end bench_mlp rc=1" in steps and "unknown step bogus" in steps, steps + stdout
    assert "needs a CUDA device" in (tmp_path / "w" / "logs" / "bench_mlp.log").read_text()
    listing = subprocess.run(["tar", "tzf", str(tmp_path / "out" / "all.tgz")], capture_output=True, text=True,
                             check=True).stdout
    assert "logs/bench_mlp.log" in listing


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_generic_sweep_step_reaches_the_trainer(tmp_path):
    """`sweep:EXPERIMENT:MODEL:RATE` becomes that experiment's trainer=gpu multirun, named after its parts."""
    steps, stdout = _run_script(tmp_path, "sweep:table1:mlp_1024x64:0.5", deadline=120)
    assert "end table1_mlp_1024x64_0.5 rc=1" in steps, steps + stdout
    log = (tmp_path / "w" / "logs" / "table1_mlp_1024x64_0.5.log").read_text()
    assert "rate=0.5" in log and "model=mlp_1024x64" in log and "trainer=gpu" in log, log[-2000:]
