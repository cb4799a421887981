"""CPU-side behaviour of the cuda_ext loader: when it builds, how it fails, how to opt out."""
from __future__ import annotations

import warnings

import pytest
import torch

from ardrop.functional.kernel_check import run_self_check
from cuda_ext import loader


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch, tmp_path):
    monkeypatch.delenv("ARDROP_CUDA_EXT", raising=False)
    monkeypatch.setenv("ARDROP_CUDA_CACHE", str(tmp_path / "cache"))
    loader._reset_for_tests()
    loader.hand_over_self_check(run_self_check)  # as ardrop's dispatch does before its first CUDA call
    yield
    loader._reset_for_tests()


@pytest.fixture
def no_build(monkeypatch):
    """Fail the test if anything tries to compile."""
    from torch.utils import cpp_extension

    def boom(*a, **k):
        raise AssertionError("a build was attempted")

    monkeypatch.setattr(cpp_extension, "load", boom)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend CUDA and a toolkit exist, so the loader goes as far as building."""
    from torch.utils import cpp_extension

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/usr/local/cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_never_attempted_without_cuda(no_build):
    assert loader.available() is False
    reason = loader.unavailable_reason()
    assert "CUDA is not available" in reason and "torch.cuda.is_available()" in reason
    with pytest.raises(loader.CudaExtUnavailable, match="CUDA is not available"):
        loader.load()
    assert loader.status()["available"] is False
    from ardrop.functional import kernel_check

    assert kernel_check.main(["--quiet"]) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_public_ops_explain_missing_cuda(no_build):
    import cuda_ext

    x, w = torch.randn(2, 4), torch.randn(3, 4)
    with pytest.raises(cuda_ext.CudaExtUnavailable, match="CUDA is not available"):
        cuda_ext.compact_linear_cuda(x, w, None, 1, 0, 1, 0)
    with pytest.raises(cuda_ext.CudaExtUnavailable, match="CUDA is not available"):
        cuda_ext.tile_linear_cuda(x, w, None, 1, 0, 32, 1.0)


@pytest.mark.parametrize("value", ["0", "off", "False", " no "])
def test_env_opt_out_wins_even_with_cuda(monkeypatch, no_build, fake_cuda, value):
    monkeypatch.setenv("ARDROP_CUDA_EXT", value)
    assert loader.env_mode() == "off"
    assert loader.available() is False
    assert "ARDROP_CUDA_EXT=0" in loader.unavailable_reason()


def test_env_value_is_validated(monkeypatch):
    monkeypatch.setenv("ARDROP_CUDA_EXT", "maybe")
    with pytest.raises(ValueError, match="ARDROP_CUDA_EXT='maybe' is not understood.*require"):
        loader.env_mode()
    for value, mode in [("1", "auto"), ("auto", "auto"), ("", "auto"), ("REQUIRE", "require")]:
        monkeypatch.setenv("ARDROP_CUDA_EXT", value)
        assert loader.env_mode() == mode


def test_missing_toolkit_is_reported(monkeypatch, no_build):
    from torch.utils import cpp_extension

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    assert loader.available() is False
    assert "CUDA_HOME" in loader.unavailable_reason()


def test_build_failure_warns_once_with_clear_text(monkeypatch, fake_cuda):
    calls = []

    def failing_build(verbose):
        calls.append(verbose)
        raise RuntimeError("Error building extension 'ardrop_cuda_ext': nvcc fatal: bad arch")

    monkeypatch.setattr(loader, "_build", failing_build)
    with pytest.warns(RuntimeWarning) as record:
        assert loader.available() is False
    text = str(record[0].message)
    assert "building the ardrop CUDA extension failed" in text
    assert "nvcc fatal: bad arch" in text
    assert str(loader.build_directory()) in text
    assert "torch GPU path" in text and "ARDROP_CUDA_EXT=0" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second build
        assert loader.available() is False
    assert len(calls) == 1
    with pytest.raises(loader.CudaExtUnavailable, match="nvcc fatal"):
        loader.load()


def test_no_build_before_a_self_check_is_handed_over(monkeypatch, fake_cuda, no_build):
    """cuda_ext cannot check its kernels alone (the reference is ardrop's): without the check
    nothing is built or used, no warning, and the reason says how to hand it over."""
    monkeypatch.setattr(loader._KERNELS, "check", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loader.available() is False
    reason = loader.unavailable_reason()
    assert "no self-check has been handed" in reason and "hand_over_self_check" in reason
    calls = []
    monkeypatch.setattr(loader, "_build", lambda verbose: calls.append(verbose) or object())
    loader.hand_over_self_check(lambda module: None)  # not sticky: a later hand-over builds
    assert loader.available() is True and calls == [False]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_dispatch_falls_back_only_when_cuda_ext_is_unavailable(monkeypatch, no_build):
    """The operator table: a broken cuda_ext surfaces (ImportError); "unavailable" is the torch path."""
    import sys
    import types

    import ardrop.functional._common as common
    import cuda_ext

    on_cuda = types.SimpleNamespace(is_cuda=True)  # cuda_op reads only the device
    monkeypatch.setattr(common, "_CUDA_OPS", None)
    monkeypatch.setattr(loader._KERNELS, "check", None)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "cuda_ext", None)
        with pytest.raises(ImportError):
            common.cuda_op("compact_linear_cuda", on_cuda, "auto")
    assert common.cuda_op("compact_linear_cuda", on_cuda, "auto") is None  # no CUDA here: the torch path
    assert loader._KERNELS.check is run_self_check  # handed over on the first CUDA call
    assert common._cuda_ops() == {"compact_linear_cuda": cuda_ext.compact_linear_cuda,
                                  "tile_linear_cuda": cuda_ext.tile_linear_cuda}
    assert common.cuda_op("tile_linear_cuda", on_cuda, "torch") is None
    with pytest.raises(ValueError, match="no CUDA implementation of op 'grouped'"):
        common.cuda_op("grouped", on_cuda, "auto")
    monkeypatch.setenv("ARDROP_CUDA_EXT", "require")
    with pytest.raises(loader.CudaExtUnavailable, match="CUDA is not available"):
        common.cuda_op("compact_linear_cuda", on_cuda, "auto")


def test_require_mode_raises(monkeypatch, fake_cuda):
    monkeypatch.setenv("ARDROP_CUDA_EXT", "require")

    def failing_build(verbose):
        raise OSError("ninja not found")

    monkeypatch.setattr(loader, "_build", failing_build)
    with pytest.raises(loader.CudaExtUnavailable, match="ninja not found"):
        loader.available()


def test_cache_directory_is_keyed(monkeypatch, tmp_path):
    monkeypatch.setenv("ARDROP_CUDA_CACHE", str(tmp_path / "c"))
    d = loader.build_directory()
    assert d.parent == tmp_path / "c"
    assert loader.source_hash() in d.name and "torch" in d.name
    monkeypatch.delenv("ARDROP_CUDA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert loader.cache_root() == tmp_path / "xdg" / "ardrop" / "cuda_ext"


def test_built_module_must_pass_self_check(monkeypatch, fake_cuda, emulated_ext):
    """A correct module is accepted; a subtly wrong one is refused with a clear reason."""
    monkeypatch.setattr(loader, "_build", lambda verbose: emulated_ext)
    assert loader.available() is True
    assert loader.load() is emulated_ext

    class Wrong:
        emulated = True

        def __getattr__(self, name):
            return getattr(emulated_ext, name)

        def tile_forward(self, *args):
            return emulated_ext.tile_forward(*args) * 1.001

    loader._reset_for_tests()
    monkeypatch.setattr(loader, "_build", lambda verbose: Wrong())
    with pytest.warns(RuntimeWarning, match="failed its self-check.*tile forward"):
        assert loader.available() is False


def test_gpu_bench_plumbing_on_cpu(monkeypatch):
    """The GPU bench's variant wiring, interleaving and result rows (wall clock on CPU)."""
    from ardrop import bench_gpu
    from ardrop.bench import parser

    args = parser().parse_args(["--models", "mlp32x16", "--rates", "0.5", "--kinds", "row,tile",
                                "--repeats", "3", "--rounds", "2", "--warmup", "1",
                                "--batch-size", "4", "--tile", "8"])
    rows = bench_gpu._run(args, torch.device("cpu"), bench_gpu._WallTimer(), use_ext=False)
    assert [(r["kind"], r["rate"]) for r in rows] == [("row", 0.5), ("tile", 0.5)]
    for r in rows:
        assert r["bernoulli_ms"] > 0 and r["torch_ms"] > 0 and r["cuda_ext_ms"] is None
        assert len(r["torch_times_s"]) == 2 and len(r["torch_times_s"][0]) == 3
        assert r["ideal_flop_ratio"] > 1
    assert "ARDROP_CUDA_EXT" not in __import__("os").environ  # the torch-path switch is restored
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device"):
            bench_gpu.run_gpu_bench(args)


def test_missing_sources_are_a_clear_fallback_not_a_crash(monkeypatch, fake_cuda, no_build, tmp_path):
    """An incomplete install (kernel sources left out of a wheel): one warning, the torch path, no FileNotFoundError."""
    monkeypatch.setattr(loader, "SOURCES", (*loader.SOURCES, tmp_path / "kernels" / "row_linear.cu"))
    with pytest.raises(loader.CudaExtUnavailable, match="sources are missing.*reinstall"):
        loader.load()
    loader._reset_for_tests()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert loader.available() is False
        assert loader.available() is False
    assert len([w for w in caught if "sources are missing" in str(w.message)]) == 1


def test_wheel_carries_every_runtime_source(tmp_path):
    """``pip wheel .`` holds every kernel, header, emulator and native C source the loaders compile."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    import shutil

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"  # a clean copy: a stale build/ directory would hide missing package data
    shutil.copytree(root, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "outputs", "data", "*.egg-info",
                                                            "__pycache__", ".pytest_cache"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path), "-q"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("ardrop-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {str(p.relative_to(root)) for p in (*loader.SOURCES, *loader.HEADERS)}
    wanted |= {"cuda_ext/emulation/host_emulator.cpp", "ardrop/native/kernels.c"}
    assert wanted <= names, sorted(wanted - names)


@pytest.mark.parametrize("sm_count", [1, 1 << 20], ids=["128x128", "64x64"])
def test_self_check_covers_multi_block_grids_in_both_configs(emulated_ext, sm_count):
    """The widened self-check passes through the emulator with either row block configuration."""
    from cuda_ext.emulation import set_sm_count

    set_sm_count(emulated_ext, sm_count)
    try:
        run_self_check(emulated_ext)
    finally:
        set_sm_count(emulated_ext, 132)


def test_self_check_catches_an_error_outside_the_first_block(emulated_ext):
    """A kernel wrong only beyond the first 64 output rows passes a one-block check, not this one."""
    class WrongBeyondFirstBlock:
        emulated = True

        def __getattr__(self, name):
            return getattr(emulated_ext, name)

        def row_forward(self, *args):
            y = emulated_ext.row_forward(*args)
            if y.shape[0] > 64:
                y = y.clone()
                y[64:] *= 1.001
            return y

    with pytest.raises(AssertionError, match="multi-block"):
        run_self_check(WrongBeyondFirstBlock())
