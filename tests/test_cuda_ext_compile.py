"""Compile every cuda_ext kernel with nvcc (sm_80, sm_90) and the binding with g++.

Runs without a GPU: it proves the .cu files compile warning-free for both target
architectures with the flags torch uses for extensions, that they stay free of torch
headers, and that binding.cpp compiles against torch's headers with only
torch/extension.h (the CPU build of torch lacks a complete CUDA header set).
"""
from __future__ import annotations

import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "cuda_ext" / "kernels"
CU_FILES = sorted(KERNELS.glob("*.cu"))
NVCC = shutil.which("nvcc") or ("/usr/local/bin/nvcc" if Path("/usr/local/bin/nvcc").exists() else None)
# The defines torch.utils.cpp_extension passes to nvcc, plus warnings-as-errors.
NVCC_FLAGS = [
    "-std=c++17", "-O3", "--expt-relaxed-constexpr",
    "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
    "-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra,-Werror",
]


def test_kernel_sources_exist_and_are_torch_free():
    assert {p.name for p in CU_FILES} >= {"row_linear.cu", "tile_linear.cu"}
    for path in [*CU_FILES, *KERNELS.glob("*.cuh"), *KERNELS.glob("*.h")]:
        text = path.read_text()
        for banned in ("torch/", "ATen/", "c10/"):
            assert banned not in text, f"{path.name} includes a torch header ({banned})"


@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH or at /usr/local/bin/nvcc")
def test_nvcc_compiles_every_kernel_for_sm80_and_sm90(tmp_path):
    jobs = [(cu, arch) for cu in CU_FILES for arch in ("80", "90")]

    def compile_one(job):
        cu, arch = job
        out = tmp_path / f"{cu.stem}_sm{arch}.o"
        cmd = [NVCC, *NVCC_FLAGS, "-gencode", f"arch=compute_{arch},code=sm_{arch}",
               "-c", str(cu), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        return cu.name, arch, proc, out

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(compile_one, jobs))
    for name, arch, proc, out in results:
        assert proc.returncode == 0, f"nvcc {name} sm_{arch} failed:\n{proc.stderr}"
        assert not proc.stderr.strip(), f"nvcc {name} sm_{arch} warned:\n{proc.stderr}"
        assert out.stat().st_size > 0


def test_binding_compiles_against_torch_headers():
    from torch.utils.cpp_extension import include_paths

    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ not found: cannot syntax-check the torch binding")
    cmd = [cxx, "-std=c++20", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
           "-DTORCH_EXTENSION_NAME=ardrop_cuda_ext"]
    for inc in [*include_paths(), sysconfig.get_paths()["include"]]:
        cmd += ["-isystem", inc]
    cmd.append(str(ROOT / "cuda_ext" / "binding.cpp"))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"g++ failed on binding.cpp:\n{proc.stderr[-4000:]}"
    assert not proc.stderr.strip(), proc.stderr[-4000:]


def test_host_emulator_compiles_warning_free(tmp_path):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ not found: cannot compile the host emulator")
    src = ROOT / "cuda_ext" / "emulation" / "host_emulator.cpp"
    cmd = [cxx, "-std=c++17", "-O0", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas",
           "-pthread", "-c", str(src), "-o", str(tmp_path / "emu.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
